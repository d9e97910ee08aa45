"""Damaged clips are salvaged the way ffmpeg salvages them (#12.3): rejected packets are skipped,
samples take the nearest decodable frame, the loss is recorded; only a clip with no decodable
video frame fails. The tests damage clips themselves and compare with ffmpeg / PyAV."""
from __future__ import annotations


import numpy as np
import pytest
from decode_clips import (damage_mdat, damage_packets, ffmpeg_frame_count, packet_spans, pyav_decodable,
                          write_gop_clip)

from pipeline.catalog import Catalog, VideoRow
from pipeline.decode import DecodeError, DecodeOptions, decode_video, nearest_indices, sample_times
from pipeline.demo import ffmpeg_run, moving_stripes, tone, write_clip


@pytest.fixture(scope="module")
def damaged(tmp_path_factory):
    """75 frames + audio (one GOP, as write_clip makes them), three spots of the mdat overwritten."""
    folder = tmp_path_factory.mktemp("salvage")
    src = write_clip(folder / "src.mp4", moving_stripes(75, 96, 128, velocity=(2, 1), seed=3), 25,
                     tone(3.0, 16000, 440))
    return damage_mdat(src, folder / "bad.mp4", spots=3, nbytes=400, seed=0)


def test_pyav_salvage_matches_ffmpeg(damaged):
    ref_frames, ref_times = pyav_decodable(damaged)
    decodable = ffmpeg_frame_count(damaged)
    assert decodable == len(ref_frames) < 75          # the damage bites; PyAV and ffmpeg agree
    clip = decode_video(damaged, DecodeOptions(backend="pyav", num_frames=12, short_side=None))
    assert clip.meta["decoded_frames"] == decodable
    assert clip.warnings["lost_frames"] == 75 - decodable
    assert clip.warnings["lost_packets"] >= 1
    # each sample is the decodable frame nearest its target time
    targets = sample_times(clip.duration, 12)
    nearest = nearest_indices(ref_times, targets)
    np.testing.assert_allclose(clip.frame_times, ref_times[nearest], atol=1e-6)
    assert np.abs(clip.frames.astype(np.int16) - ref_frames[nearest]).mean() < 1.0
    assert clip.has_audio and abs(len(clip.audio) / 16000 - 3.0) < 0.1


def test_auto_falls_back_to_pyav_salvage(damaged):
    clip = decode_video(damaged, DecodeOptions(num_frames=8))
    assert clip.backend == "pyav" and clip.meta["fallback_errors"][0].startswith("decord:")
    assert clip.warnings["lost_frames"] == 75 - ffmpeg_frame_count(damaged)
    assert clip.frames.shape == (8, 224, 298, 3)


@pytest.fixture(scope="module")
def damaged_gop(tmp_path_factory):
    """I-frame every 25 frames; three packets of the second GOP overwritten."""
    folder = tmp_path_factory.mktemp("gop")
    src = write_gop_clip(folder / "src.mp4", moving_stripes(75, 96, 128, velocity=(2, 0), seed=5), 25, gop=25)
    return damage_packets(src, folder / "bad.mp4", "video", which=[30, 31, 32])


def test_decord_salvage_reads_around_the_damage(damaged_gop):
    clip = decode_video(damaged_gop, DecodeOptions(backend="decord", num_frames=15, short_side=None))
    assert clip.backend == "decord"
    assert clip.warnings.get("unreadable_frames", 0) >= 1 and clip.warnings["moved_samples"] >= 1
    planned = nearest_indices(np.arange(75) / 25, sample_times(3.0, 15))
    # samples in the intact first and third GOP are (about) the planned frames, decoded correctly;
    # decord decodes ahead of the frame asked for, so a frame shortly before the damage can fail
    # on one run and not on the next: within 2 frames of the plan, not always on it
    ref_frames, ref_times = pyav_decodable(damaged_gop)
    intact = (planned < 25) | (planned >= 50)
    assert np.abs(clip.frame_indices[intact] - planned[intact]).max() <= 2
    assert (clip.frame_indices[planned >= 50] >= 50).all()      # read past the damage: a fresh reader
    ref = ref_frames[nearest_indices(ref_times, clip.frame_times[intact])]
    assert np.abs(clip.frames[intact].astype(np.int16) - ref).mean() < 3.0


def test_pyav_salvage_of_a_damaged_gop(damaged_gop):
    clip = decode_video(damaged_gop, DecodeOptions(backend="pyav", num_frames=15, short_side=None))
    assert clip.meta["decoded_frames"] == ffmpeg_frame_count(damaged_gop)
    assert clip.warnings["lost_frames"] == 75 - clip.meta["decoded_frames"]


def test_no_decodable_video_frame_fails(tmp_path):
    src = write_clip(tmp_path / "src.mp4", moving_stripes(20, 64, 64), 25, tone(0.8, 16000, 300))
    bad = damage_packets(src, tmp_path / "bad.mp4", "video")
    with pytest.raises(DecodeError, match="no video frame can be decoded"):
        decode_video(bad, DecodeOptions(backend="pyav"))
    with pytest.raises(DecodeError, match="no video frame can be decoded"):
        decode_video(bad)


def test_damaged_audio_gives_what_decodes_on_time(tmp_path):
    src = write_clip(tmp_path / "src.mp4", moving_stripes(50, 64, 64), 25, tone(2.0, 16000, 300))
    n_audio = len(packet_spans(src, "audio"))
    bad = damage_packets(src, tmp_path / "bad.mp4", "audio", which=list(range(5, n_audio, 6)))
    clean = decode_video(src, DecodeOptions(num_frames=4))
    clip = decode_video(bad, DecodeOptions(num_frames=4))
    assert clip.warnings["lost_audio_packets"] >= 1
    assert clip.has_audio and abs(len(clip.audio) - len(clean.audio)) < 0.02 * 16000   # gaps kept as silence
    np.testing.assert_array_equal(clip.frames, clean.frames)                          # video untouched


def test_undecodable_audio_is_a_missing_modality_with_reason(tmp_path):
    src = write_clip(tmp_path / "src.mp4", moving_stripes(30, 64, 64), 25, tone(1.2, 16000, 300))
    bad = damage_packets(src, tmp_path / "bad.mp4", "audio")
    clip = decode_video(bad, DecodeOptions(num_frames=4))
    assert clip.audio is None and "audio stream cannot be decoded" in clip.meta["audio_error"]
    assert clip.frames.shape[0] == 4


def test_truncated_media_data_is_salvaged(tmp_path):
    """moov in front, media data cut in half: the frames before the cut are what ffmpeg decodes."""
    src = write_clip(tmp_path / "src.mp4", moving_stripes(50, 64, 96, velocity=(2, 0)), 25, tone(2, 16000, 300))
    fast = tmp_path / "fast.mp4"
    import ffmpeg

    ffmpeg_run(ffmpeg.input(str(src)).output(str(fast), c="copy", movflags="+faststart"))
    data = fast.read_bytes()
    cut = tmp_path / "cut.mp4"
    cut.write_bytes(data[: int(len(data) * 0.5)])
    decodable = ffmpeg_frame_count(cut)
    assert 0 < decodable < 50
    clip = decode_video(cut, DecodeOptions(num_frames=8))
    assert clip.meta["decoded_frames"] == decodable and clip.warnings["lost_frames"] == 50 - decodable
    _, times = pyav_decodable(cut)
    assert np.isin(np.round(clip.frame_times, 6), np.round(times, 6)).all()   # only decoded frames


def test_catalog_records_warnings(tmp_path, damaged):
    clip = decode_video(damaged, DecodeOptions(num_frames=4))
    cat = Catalog(tmp_path / "catalog.sqlite")
    cat.upsert_videos([VideoRow("bad.mp4", str(damaged)), VideoRow("good.mp4", "/x.mp4")])
    cat.record_decodes([(clip.video_id, clip.duration, clip.fps, clip.width, clip.height, clip.has_audio, clip.warnings),
                        ("good.mp4", 1.0, 25.0, 64, 64, False, {})])
    rows = {v["video_id"]: v for v in cat.videos()}
    assert rows["bad.mp4"]["decode_warnings"] == clip.warnings and rows["good.mp4"]["decode_warnings"] is None
    assert cat.stage_status("decode") == {"bad.mp4": "done", "good.mp4": "done"}


def test_status_lists_salvaged_videos(tmp_path, damaged):
    from rich.console import Console

    from pipeline.status import print_status

    clip = decode_video(damaged, DecodeOptions(num_frames=4))
    cat = Catalog(tmp_path / "catalog.sqlite")
    cat.upsert_videos([VideoRow("bad.mp4", str(damaged))])
    cat.record_decodes([(clip.video_id, clip.duration, clip.fps, clip.width, clip.height, clip.has_audio, clip.warnings)])
    cat.close()
    console = Console(record=True, width=200)
    assert print_status(tmp_path, console) == 0                  # salvaged is not failed
    text = console.export_text()
    assert "1 decoded with losses" in text and f"lost_frames={clip.warnings['lost_frames']}" in text
