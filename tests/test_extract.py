"""The extract stage (pipeline/extract.py): the decode pool (per-video time limit, decoder crashes,
order, look-ahead), worker steps, and the per-video retry after a batch raises."""
from __future__ import annotations

import faulthandler
import os
import signal
import time

import numpy as np
import pytest

import pipeline.extract as stages
from extractors.base import Extractor
from pipeline.decode import Clip, DecodeError, DecodeOptions
from pipeline.demo import moving_stripes, write_clip

real_task = stages._decode_task


def misbehaving_task(path, options, video_id, title, *rest):
    if video_id == "hang":
        time.sleep(120)                      # a decoder stuck forever
    if video_id == "crash" and options.backend != "pyav":
        faulthandler.disable()               # keep pytest's crash dump out of the log
        os.kill(os.getpid(), signal.SIGSEGV)  # a decoder that segfaults (decord does on some files)
    return real_task(path, options, video_id, title, *rest)


@pytest.fixture()
def clip_path(tmp_path):
    return str(write_clip(tmp_path / "ok.mp4", moving_stripes(12, 32, 48), 25))


def test_hung_and_crashing_decoders_are_recorded_and_the_stream_goes_on(monkeypatch, clip_path):
    # The pool forks its workers after this patch, so they run the misbehaving task.
    monkeypatch.setattr(stages, "_decode_task", misbehaving_task)
    videos = [{"video_id": vid, "path": clip_path, "title": None} for vid in ("a", "hang", "b", "crash", "c")]
    t0 = time.time()
    results = list(stages.decode_stream(videos, DecodeOptions(num_frames=4), workers=2, timeout_s=3, window=4))
    elapsed = time.time() - t0
    assert [v["video_id"] for v, _ in results] == ["a", "hang", "b", "crash", "c"]   # input order kept
    by_id = {v["video_id"]: r for v, r in results}
    assert isinstance(by_id["hang"], DecodeError) and "longer than 3 s" in str(by_id["hang"])
    # the crash was retried with PyAV alone, which works on this file
    assert isinstance(by_id["crash"], Clip) and by_id["crash"].backend == "pyav"
    assert all(isinstance(by_id[k], Clip) for k in "abc")
    assert elapsed < 60, "a hung decoder must not hold up the run"


def test_in_process_decoding_reports_errors(tmp_path, clip_path):
    empty = tmp_path / "empty.mp4"
    empty.write_bytes(b"")
    videos = [{"video_id": "ok", "path": clip_path, "title": "t"}, {"video_id": "empty", "path": str(empty), "title": None}]
    results = dict((v["video_id"], r) for v, r in stages.decode_stream(videos, DecodeOptions(num_frames=2), workers=0,
                                                                         timeout_s=5))
    assert isinstance(results["ok"], Clip) and results["ok"].title == "t"
    assert isinstance(results["empty"], DecodeError)


def frame_count(clip):
    return (os.getpid(), len(clip.frames))


def refuse(clip):
    raise ValueError(f"no step for {clip.video_id}")


@pytest.mark.parametrize("workers", [0, 2])
def test_worker_steps_run_where_the_clip_is_decoded_for_the_modalities_still_needed(clip_path, workers):
    videos = [{"video_id": "both", "path": clip_path, "title": None, "need": ["count", "fail"]},
              {"video_id": "count-done", "path": clip_path, "title": None, "need": ["fail"]}]
    results = {v["video_id"]: r for v, r in stages.decode_stream(
        videos, DecodeOptions(num_frames=3), workers=workers, timeout_s=30,
        prepare={"count": frame_count, "fail": refuse})}
    both, done = results["both"].meta["prepared"], results["count-done"].meta["prepared"]
    pid, frames = both["count"]
    assert frames == 3
    assert (pid == os.getpid()) == (workers == 0)          # ran in a decode worker when there are workers
    assert isinstance(both["fail"], ValueError) and "no step for both" in str(both["fail"])
    assert set(done) == {"fail"}                            # a finished modality is not prepared again


def test_trajectory_descriptors_from_the_decode_workers_equal_those_made_in_process(tmp_path):
    """The trajectory extractor hands its CPU flow + tracking to the decode workers
    (`worker_fn`); the features must be the very ones `extract` computes by itself."""
    from extractors import build_extractor

    videos = []
    for i, speed in enumerate((1, 2, 3)):
        path = write_clip(tmp_path / f"m{i}.mp4", moving_stripes(24, 64, 80, velocity=(speed, 0.0), seed=i), 25)
        videos.append({"video_id": f"m{i}", "path": str(path), "title": None, "need": ["trajectory"]})
    ext = build_extractor("trajectory", {"family": "dense_trajectory", "codebook_size": 8, "segments": 2}, "cpu")
    options = DecodeOptions(num_frames=12)
    plain = [c for _, c in stages.decode_stream(videos, options, workers=0, timeout_s=60)]
    ext.fit(plain)
    steps = stages.worker_steps({"trajectory": ext})
    assert set(steps) == {"trajectory"}
    prepared = [c for _, c in stages.decode_stream(videos, options, workers=2, timeout_s=60, prepare=steps)]
    assert all("trajectory" in c.meta["prepared"] for c in prepared)
    for a, b in zip(ext.extract(plain), ext.extract(prepared)):
        assert a.pooled.any()
        np.testing.assert_array_equal(a.pooled, b.pooled)
        np.testing.assert_array_equal(a.sequence, b.sequence)


class _Writer:
    def __init__(self):
        self.added, self.failed, self.missing = {}, {}, {}

    def add(self, video_id, **layouts):
        self.added[video_id] = layouts

    def mark_failed(self, video_id, reason):
        self.failed[video_id] = reason

    def mark_missing(self, video_id, reason):
        self.missing[video_id] = reason


class _PickyExtractor(Extractor):
    """Raises on any batch holding the "bad" clip; returns None (modality missing) for "silent"."""
    reads = "audio"   # Extractor.missing_reason: "no audio track" for a clip without one

    def __init__(self):
        super().__init__({})
        self.calls = []

    def extract(self, clips):
        from extractors.base import Features

        self.calls.append([c.video_id for c in clips])
        if any(c.video_id == "bad" for c in clips):
            raise RuntimeError("cannot handle this one")
        return [None if c.video_id == "silent" else Features(pooled=np.full(3, len(c.video_id), np.float32))
                for c in clips]


def test_a_batch_that_raises_is_retried_video_by_video():
    from types import SimpleNamespace

    clips = [SimpleNamespace(video_id=v, audio=None if v == "silent" else np.zeros(4), title="t", meta={})
             for v in ("a", "bad", "silent", "b")]
    ext, writer = _PickyExtractor(), _Writer()
    summary = stages.ExtractSummary()
    need = {c.video_id: ["audio"] for c in clips}
    need["b"] = []   # b does not need this modality: never extracted
    stages.extract_clips({"audio": ext}, clips, need, {"audio": writer}, summary)
    assert ext.calls == [["a", "bad", "silent"], ["a"], ["bad"], ["silent"]]   # one batch, then one by one
    assert set(writer.added) == {"a"} and writer.added["a"]["pooled"].tolist() == [1, 1, 1]
    assert writer.failed == {"bad": "RuntimeError: cannot handle this one"}
    assert writer.missing == {"silent": "no audio track"}
    assert summary.per_modality["audio"] == {"done": 1, "missing": 1, "failed": 1}
