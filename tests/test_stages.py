"""The decode pool: per-video time limit, decoder crashes, order and look-ahead."""
from __future__ import annotations

import faulthandler
import os
import signal
import time

import pytest

import pipeline.stages as stages
from pipeline.decode import Clip, DecodeError, DecodeOptions
from pipeline.demo import moving_stripes, write_clip

real_task = stages._decode_task


def misbehaving_task(path, options, video_id, title):
    if video_id == "hang":
        time.sleep(120)                      # a decoder stuck forever
    if video_id == "crash" and options.backend != "pyav":
        faulthandler.disable()               # keep pytest's crash dump out of the log
        os.kill(os.getpid(), signal.SIGSEGV)  # a decoder that segfaults (decord does on some files)
    return real_task(path, options, video_id, title)


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
