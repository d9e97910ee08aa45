"""One timeline: every sequence row carries start/end seconds; aligned reads put the modalities
of a video on one grid. Synthetic features whose events happen at known times."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from pipeline.catalog import Catalog, VideoRow
from pipeline.dataset import FeatureDataset, collate_batch
from pipeline.store import FeatureStore
from pipeline.timeline import align, sequence_times

EVENT = (4.0, 6.0)  # seconds: something happens here, visible in both modalities


def visual_rows(duration=10.0, n=20):
    """One row per 0.5 s (frame spans); feature 0 is 1 while the event is on screen."""
    times = np.stack([np.arange(n) * duration / n, (np.arange(n) + 1) * duration / n], 1)
    seq = np.zeros((n, 3), np.float32)
    seq[(times[:, 0] >= EVENT[0]) & (times[:, 1] <= EVENT[1]), 0] = 1.0
    seq[:, 2] = times[:, 0]  # the row's own start time, to check the weighting
    return seq, times


def audio_rows(duration=10.0, hop=0.96):
    """VGGish-like 0.96 s examples; feature 1 is the loudness, high while the event sounds."""
    start = np.arange(0, duration - hop + 1e-9, hop)
    times = np.stack([start, start + hop], 1)
    seq = np.zeros((len(start), 2), np.float32)
    mid = times.mean(1)
    seq[(mid >= EVENT[0]) & (mid < EVENT[1]), 1] = 1.0
    return seq, times


def test_align_puts_the_event_in_the_same_steps():
    rows = {"visual": visual_rows(), "audio": audio_rows()}
    grid = align(rows, {"visual": 3, "audio": 2}, step_s=1.0)
    assert grid["times"].shape == (10, 2) and grid["times"][4].tolist() == [4.0, 5.0]
    v, a = grid["sequence"]["visual"], grid["sequence"]["audio"]
    assert v.shape == (10, 3) and a.shape == (10, 2)
    np.testing.assert_allclose(v[:, 0], [0, 0, 0, 0, 1, 1, 0, 0, 0, 0])
    assert np.argmax(a[:, 1]) in (4, 5) and a[4:6, 1].min() > 0.5 and a[[0, 1, 2, 8, 9], 1].max() == 0
    # mean over the overlap: step k holds rows starting at k and k + 0.5 -> mean start k + 0.25
    np.testing.assert_allclose(v[:, 2], np.arange(10) + 0.25, atol=1e-6)
    # the audio examples end at 9.6 s: the last step is only partly covered but still present
    assert grid["present"]["audio"].all() and grid["present"]["visual"].all()


def test_align_weights_by_overlap_and_marks_gaps():
    seq = np.array([[1.0], [3.0]], np.float32)
    times = np.array([[0.0, 1.5], [1.5, 2.0]])  # step [1, 2): 0.5 s of row 0 and 0.5 s of row 1
    grid = align({"m": (seq, times), "late": (np.ones((1, 1), np.float32), np.array([[3.2, 3.4]]))},
                 {"m": 1, "late": 1, "absent": 4}, step_s=1.0)
    np.testing.assert_allclose(grid["sequence"]["m"][:, 0], [1.0, 2.0, 0.0, 0.0])
    assert grid["present"]["m"].tolist() == [True, True, False, False]
    assert grid["present"]["late"].tolist() == [False, False, False, True]
    assert grid["sequence"]["absent"].shape == (4, 4) and not grid["present"]["absent"].any()
    point = align({"p": (np.ones((1, 1), np.float32), np.array([[2.0, 2.0]]))}, {"p": 1}, step_s=1.0)
    assert point["present"]["p"].tolist() == [False, False, True]  # a zero-length row counts


def test_align_refuses_rows_without_times():
    with pytest.raises(ValueError, match="no times recorded"):
        align({"old": (np.ones((2, 1), np.float32), np.full((2, 2), np.nan))}, {"old": 1}, 1.0)


def test_sequence_times_from_frame_rate():
    np.testing.assert_allclose(sequence_times(3, fps=2.0), [[0, 0.5], [0.5, 1.0], [1.0, 1.5]])


@pytest.fixture()
def timeline_store(tmp_path):
    cat = Catalog(tmp_path / "catalog.sqlite")
    cat.upsert_videos([VideoRow(v) for v in ("a", "b", "c")])
    store = FeatureStore(tmp_path, cat, shard_size=2)
    with store.writer("visual", dims={"pooled": 3, "sequence": 3}) as w:
        for vid in ("a", "b"):
            seq, times = visual_rows()
            w.add(vid, pooled=seq.mean(0), sequence=seq, times=times)
    with store.writer("audio", dims={"pooled": 2, "sequence": 2}) as w:
        seq, times = audio_rows()
        w.add("a", pooled=seq.mean(0), sequence=seq, times=times)
        seq, times = audio_rows(duration=3.0)
        w.add("c", pooled=seq.mean(0), sequence=seq, times=times)
    yield store
    cat.close()


def test_store_aligned_read(timeline_store):
    got = timeline_store.read_aligned(["visual", "audio"], ["a", "b", "c"], step_s=2.0)
    a, b, c = got
    assert a["times"].shape == (5, 2)
    assert a["sequence"]["visual"][2, 0] == 1.0 and a["sequence"]["audio"][2, 1] > 0.5  # [4, 6)
    assert not b["present"]["audio"].any() and b["present"]["visual"].all()  # b has no audio
    assert c["times"].shape == (2, 2) and not c["present"]["visual"].any()    # audio to 2.88 s only


def test_dataset_aligned_items_and_collate(timeline_store):
    ds = FeatureDataset(timeline_store, ["a", "b", "c"], pooled=["audio"], sequence=["visual", "audio"], step_s=1.0)
    batch = collate_batch([ds[i] for i in range(3)])
    assert batch["sequence"]["visual"].shape == (3, 10, 3) and batch["sequence"]["audio"].shape == (3, 10, 2)
    assert batch["times"].shape == (3, 10, 2) and batch["lengths"]["visual"].tolist() == [10, 10, 3]
    assert batch["step_present"]["audio"][0].all() and not batch["step_present"]["audio"][1].any()
    assert batch["step_present"]["visual"][2].tolist() == [False] * 10  # c: no visual; padding False
    assert batch["present"]["audio"].tolist() == [True, False, True]
    assert torch.equal(batch["sequence"]["visual"][0, 4:6, 0], torch.ones(2))
    plain = collate_batch([FeatureDataset(timeline_store, ["a"], sequence=["visual"])[0]])
    assert plain["sequence"]["visual"].shape == (1, 20, 3) and "times" not in plain


# -- the extractors fill Features.times ----------------------------------------------------------
def _clip(duration=4.0, frames=8, audio=True):
    from pipeline.decode import Clip

    rng = np.random.default_rng(0)
    t = (np.arange(frames) + 0.5) * duration / frames
    sr = 16000
    return Clip(video_id="x", frames=rng.integers(0, 255, (frames, 64, 64, 3), dtype=np.uint8), frame_times=t,
                frame_indices=np.arange(frames), audio=rng.standard_normal(int(sr * duration)).astype(np.float32) * 0.1
                if audio else None, sample_rate=sr, title="a cat on a mat", duration=duration, fps=25.0)


def _check_times(feats, clip):
    t = feats.times
    assert t.shape == (len(feats.sequence), 2) and np.all(np.isfinite(t))
    assert np.all(t[:, 1] >= t[:, 0]) and np.all(np.diff(t[:, 0]) >= 0)
    assert t.min() >= 0 and t.max() <= clip.duration + 1e-6


def test_resnet_times_are_frame_spans(one_thread):
    from extractors.resnet import ResNetExtractor

    clip = _clip()
    feats = ResNetExtractor({"depth": 18, "weights": "random", "precision": "fp32"}).extract([clip])[0]
    _check_times(feats, clip)
    np.testing.assert_allclose(feats.times, np.stack([np.arange(8), np.arange(1, 9)], 1) * 0.5)


def test_audio_dae_times_in_seconds(one_thread):
    from extractors.audio_dae import AudioDAEExtractor

    clip = _clip()
    ext = AudioDAEExtractor({"hidden": [16], "code_dim": 8, "layer_epochs": 1, "finetune_epochs": 1,
                             "segment_s": 1.0, "max_fit_frames": 500})
    ext.fit([clip])
    feats = ext.extract([clip])[0]
    _check_times(feats, clip)
    assert len(feats.times) == 4 and abs(feats.times[1, 0] - 1.0) < 0.05


def test_trajectory_times_are_segments(one_thread):
    from extractors.trajectory import TrajectoryExtractor

    clip = _clip(frames=24)
    ext = TrajectoryExtractor({"codebook_size": 4, "segments": 4, "track_length": 6, "grid_step": 16,
                               "short_side": 64, "max_fit_descriptors": 2000})
    ext.fit([clip])
    feats = ext.extract([clip])[0]
    _check_times(feats, clip)
    np.testing.assert_allclose(feats.times[:, 0], [0, 1, 2, 3], atol=1e-6)
    np.testing.assert_allclose(feats.times[-1, 1], 4.0, atol=1e-6)


def test_yt8m_frame_features_get_one_second_rows(tmp_path):
    from pipeline.importers import import_yt8m
    from pipeline.tfrecord import encode_sequence_example, write_records

    rng = np.random.default_rng(0)
    rgb, audio = rng.integers(0, 256, (3, 1024), dtype=np.uint8), rng.integers(0, 256, (3, 128), dtype=np.uint8)
    data = encode_sequence_example({"id": "y1", "labels": [0]}, {"rgb": [r.tobytes() for r in rgb],
                                                                 "audio": [a.tobytes() for a in audio]})
    write_records(tmp_path / "f.tfrecord", [data])
    import_yt8m([tmp_path / "f.tfrecord"], tmp_path / "out", split="train")
    cat = Catalog(tmp_path / "out" / "catalog.sqlite", readonly=True)
    try:
        (times,) = FeatureStore(tmp_path / "out", cat).read_times("rgb", ["y1"])
    finally:
        cat.close()
    np.testing.assert_array_equal(times, [[0, 1], [1, 2], [2, 3]])
