"""Salvage, sidecar subtitles and views through the real scan + extract stages (#12.3, #12.4, #14)."""
from __future__ import annotations

import pytest
from decode_clips import damage_mdat, damage_packets

from pipeline.catalog import Catalog
from pipeline.demo import moving_stripes, tone, write_clip

pytestmark = pytest.mark.slow   # scan + extract of 4 clips in a decode worker

SRT = "1\n00:00:00,100 --> 00:00:00,800\nhello there\n"


@pytest.fixture(scope="module")
def out(tmp_path_factory):
    from pipeline.config import load_config
    from pipeline.extract import run_extract
    from pipeline.scan import run_scan

    root = tmp_path_factory.mktemp("stage")
    videos = root / "videos"
    good = write_clip(videos / "good.mp4", moving_stripes(50, 64, 96, velocity=(2, 0)), 25, tone(2, 16000, 300))
    (videos / "good.srt").write_text(SRT)
    src = write_clip(root / "src.mp4", moving_stripes(75, 96, 128, velocity=(2, 1), seed=3), 25, tone(3, 16000, 440))
    damage_mdat(src, videos / "damaged.mp4")
    damage_packets(good, videos / "mute.mp4", "audio")                    # audio undecodable
    damage_packets(good, videos / "hopeless.mp4", "video")                # no video frame at all
    cfg = load_config(None, ["extract.modalities=[audio_mfcc]", "decode.workers=1", "decode.num_frames=4"])
    run_scan(cfg, root / "out", videos)
    run_extract(cfg, root / "out", progress=False)
    return root / "out"


def test_stage_records_salvage_subtitles_and_failures(out):
    cat = Catalog(out / "catalog.sqlite", readonly=True)
    videos = {v["video_id"]: v for v in cat.videos()}
    decode = cat.stage_status("decode")
    reasons = dict(cat.conn.execute("SELECT video_id, error FROM stages WHERE stage='decode'").fetchall())
    audio = dict(cat.conn.execute("SELECT video_id, error FROM stages WHERE stage='extract:audio_mfcc'").fetchall())
    audio_status = cat.stage_status("extract:audio_mfcc")
    cat.close()
    assert decode == {"good.mp4": "done", "damaged.mp4": "done", "mute.mp4": "done", "hopeless.mp4": "failed"}, reasons
    assert videos["damaged.mp4"]["decode_warnings"]["lost_frames"] >= 1
    assert videos["good.mp4"]["decode_warnings"] is None
    assert videos["good.mp4"]["subtitles"] == [[0.1, 0.8, "hello there"]]
    assert audio_status["mute.mp4"] == "missing" and "audio stream cannot be decoded" in audio["mute.mp4"]
    assert audio_status["damaged.mp4"] == "done"


def test_extract_decodes_the_views_extractors_declare(out):
    from pipeline.config import load_config
    from pipeline.decode import DecodeOptions
    from pipeline.extract import build_extractors, decode_stream
    from pipeline.views import collect_views

    cfg = load_config(None, ["extractors.video3d.weights=random", "decode.num_frames=4"])
    extractors = build_extractors(cfg, ["video3d"], "cpu")
    views = collect_views(extractors)
    (key, view), = views.items()
    assert view.kind == "window" and view.num_frames == 16
    cat = Catalog(out / "catalog.sqlite", readonly=True)
    rows = [v for v in cat.videos() if v["video_id"] == "good.mp4"]
    cat.close()
    (_, clip), = decode_stream(rows, DecodeOptions.from_config(cfg.decode, views=views), 0, 60)
    # 2.0 s at 15 fps = 30 grid frames: 0-1.07 s, then the last window ending at the clip's end
    assert clip.views[key].shape[:2] == (2, 16) and clip.subtitles == [(0.1, 0.8, "hello there")]
