"""Inputs users have (#12.4): animated GIF, sidecar and embedded subtitles, through scan and decode."""
from __future__ import annotations

from pathlib import Path

import av
import numpy as np
import pytest
from omegaconf import OmegaConf

from pipeline.catalog import Catalog
from pipeline.decode import DecodeError, DecodeOptions, decode_video, nearest_indices
from pipeline.demo import ffmpeg_run, moving_stripes, tone, write_clip
from pipeline.scan import read_subtitles, scan_folder

SRT = """1
00:00:00,200 --> 00:00:00,900
Hello <b>world</b>

2
00:00:01,000 --> 00:00:01,800
Second line
"""
VTT = """WEBVTT

00:00.500 --> 00:01.250
a <i>web</i> caption
"""
EXPECTED = [(0.2, 0.9, "Hello world"), (1.0, 1.8, "Second line")]


def ffmpeg(*inputs, out, **options):
    """ffmpeg -i INPUT... [options] OUT, through ffmpeg-python (pipeline.demo.ffmpeg_run)."""
    import ffmpeg as ff

    ffmpeg_run(ff.output(*[ff.input(str(i)) for i in inputs], str(out), **options))


@pytest.fixture(scope="module")
def gif(tmp_path_factory):
    folder = tmp_path_factory.mktemp("gif")
    src = write_clip(folder / "src.mp4", moving_stripes(20, 48, 64, velocity=(2, 0)), 10)
    ffmpeg(src, out=folder / "anim.gif")
    return folder / "anim.gif"


def test_animated_gif_decodes_without_audio(gif):
    with av.open(str(gif)) as c:
        ref = [f.to_ndarray(format="rgb24") for f in c.decode(video=0)]
    assert len(ref) == 20
    clip = decode_video(gif, DecodeOptions(num_frames=5, short_side=None))
    assert clip.backend == "pyav"                    # decord cannot read GIFs: the fallback is recorded
    assert clip.audio is None and not clip.has_audio
    assert clip.frames.shape == (5, 48, 64, 3) and clip.duration == pytest.approx(2.0)
    np.testing.assert_array_equal(clip.frame_indices, [2, 6, 10, 14, 18])
    assert np.abs(clip.frames.astype(int) - np.stack(ref)[clip.frame_indices]).mean() < 1


def test_animated_webp_decodes_with_its_frame_durations(tmp_path):
    """PyAV's FFmpeg has no animated-WebP decoder: Pillow reads it, times from the ANMF headers."""
    from PIL import Image

    frames = moving_stripes(8, 40, 56, velocity=(3, 0))
    durations = [100, 200, 100, 300, 100, 100, 200, 100]          # ms, uneven on purpose
    Image.fromarray(frames[0]).save(tmp_path / "anim.webp", save_all=True, lossless=True, duration=durations, loop=0,
                                    append_images=[Image.fromarray(f) for f in frames[1:]])
    clip = decode_video(tmp_path / "anim.webp", DecodeOptions(num_frames=4, short_side=None))
    assert clip.backend == "pillow" and clip.audio is None
    assert clip.duration == pytest.approx(1.2)
    starts = np.concatenate([[0], np.cumsum(durations)[:-1]]) / 1000
    np.testing.assert_allclose(clip.frame_times, starts[clip.frame_indices])
    np.testing.assert_array_equal(clip.frame_indices, nearest_indices(starts, [0.15, 0.45, 0.75, 1.05]))
    assert np.abs(clip.frames.astype(int) - frames[clip.frame_indices]).max() <= 2
    Image.fromarray(frames[0]).save(tmp_path / "still.webp")
    with pytest.raises(DecodeError, match="still WebP image"):
        decode_video(tmp_path / "still.webp")


def test_scan_finds_gif_with_the_default_extensions(gif, tmp_path):
    cfg = OmegaConf.load(Path(__file__).resolve().parent.parent / "configs" / "pipeline.yaml")
    cat = Catalog(tmp_path / "catalog.sqlite")
    s = scan_folder(cat, gif.parent, None, cfg.scan.extensions)
    assert s.found == 2 and {v["video_id"] for v in cat.videos()} == {"anim.gif", "src.mp4"}
    assert {".gif", ".webp"} <= set(cfg.scan.extensions)


def test_read_subtitles_formats(tmp_path):
    (tmp_path / "a.srt").write_text(SRT)
    (tmp_path / "b.vtt").write_text(VTT)
    assert read_subtitles(tmp_path / "a.srt") == EXPECTED
    assert read_subtitles(tmp_path / "b.vtt") == [(0.5, 1.25, "a web caption")]


def test_scan_records_sidecar_subtitles(tmp_path):
    root = tmp_path / "videos"
    for name in ("one", "two", "three", "four"):
        write_clip(root / f"{name}.mp4", moving_stripes(5, 32, 32), 25)
    (root / "one.srt").write_text(SRT)
    (root / "two.en.vtt").write_text(VTT)                       # language-tagged
    (root / "three.srt").write_bytes(b"\xff\xfe\x00garbage")     # unreadable: the scan goes on
    (root / "one_more.srt").write_text(SRT)                     # another stem: belongs to nobody
    cat = Catalog(tmp_path / "catalog.sqlite")
    s = scan_folder(cat, root, None, [".mp4"])
    subs = {v["video_id"]: v["subtitles"] for v in cat.videos()}
    assert subs["one.mp4"] == [list(e) for e in EXPECTED]
    assert subs["two.mp4"] == [[0.5, 1.25, "a web caption"]]
    assert subs["three.mp4"] is None and subs["four.mp4"] is None
    assert s.subtitled == 2 and len(s.subtitle_errors) == 1 and s.subtitle_errors[0].startswith("three.srt")


def test_embedded_subtitles_and_sidecar_priority(tmp_path):
    src = write_clip(tmp_path / "src.mp4", moving_stripes(50, 32, 32), 25, tone(2, 16000, 300))
    (tmp_path / "s.srt").write_text(SRT)
    for codec, name in (("mov_text", "sub.mp4"), ("srt", "sub.mkv"), ("ass", "sub_ass.mkv")):
        ffmpeg(src, tmp_path / "s.srt", out=tmp_path / name, c="copy", **{"c:s": codec})
        clip = decode_video(tmp_path / name, DecodeOptions(num_frames=4))
        assert clip.subtitles == EXPECTED, codec
    sidecar = [(0.0, 1.0, "from the sidecar")]
    clip = decode_video(tmp_path / "sub.mkv", DecodeOptions(num_frames=4), subtitles=sidecar)
    assert clip.subtitles == sidecar
    assert decode_video(src, DecodeOptions(num_frames=4)).subtitles is None
