"""The CLI as a user runs it: bad inputs, SIGKILL in the middle of extraction, two runs at once."""
from __future__ import annotations

import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import run_cli

from pipeline.catalog import Catalog
from pipeline.demo import make_bad_inputs, make_demo_dataset
from pipeline.store import FeatureStore

ROOT = Path(__file__).resolve().parent.parent
# Small and fast, but every stage real: ResNet-18 (random weights, asked for explicitly),
# VGGish (random), MiniLM text (real weights), 4 frames at 64 px.
FAST = ["extract.modalities=[visual,audio,text]", "extractors.visual.weights=random", "extractors.visual.depth=18",
        "extractors.audio.weights=random", "decode.short_side=64", "decode.num_frames=4"]


def cli(*args, check=None) -> subprocess.CompletedProcess:
    proc = run_cli(*args)
    if check is not None:
        assert proc.returncode == check, proc.stdout + proc.stderr
    return proc


def test_bad_inputs_are_recorded_and_the_run_goes_on(tmp_path):
    root = tmp_path / "data"
    make_demo_dataset(root, per_class=1)
    make_bad_inputs(root / "videos" / "bad")
    out = tmp_path / "out"
    cli("scan", "--videos", root / "videos", "--labels", root / "labels.tsv", "--out", out, check=0)
    proc = cli("extract", "--out", out, "--no-progress", *FAST)
    assert proc.returncode == 1, proc.stdout + proc.stderr      # something failed: exit status says so
    text = proc.stdout
    for kind in ("zero_byte", "truncated", "text_as_mp4", "audio_only"):
        assert f"bad/{kind}.mp4" in text, text                   # the summary lists every failure
    assert "empty file" in text and "no video stream" in text
    cat = Catalog(out / "catalog.sqlite")
    failed = {vid: err for vid, _, stage, err in cat.failures() if stage == "decode"}
    assert set(failed) == {f"bad/{k}.mp4" for k in ("zero_byte", "truncated", "text_as_mp4", "audio_only")}
    assert cat.stage_status("extract:audio")["bad/no_audio.mp4"] == "missing"
    assert cat.stage_status("extract:visual")["bad/no_audio.mp4"] == "done"
    assert sum(v == "done" for v in cat.stage_status("extract:visual").values()) == 5   # 4 demo + no_audio
    # status repeats the failures and exits 1; a second extract has nothing left to do
    status = cli("status", "--out", out)
    assert status.returncode == 1 and "no video stream" in status.stdout
    again = cli("extract", "--out", out, "--no-progress", *FAST)
    assert again.returncode == 1 and "0 decoded" in again.stdout, again.stdout
    assert sum(v == "done" for v in Catalog(out / "catalog.sqlite").stage_status("extract:visual").values()) == 5


def _done(out: Path, stage: str) -> int:
    try:
        with sqlite3.connect(out / "catalog.sqlite", timeout=1) as c:
            return c.execute("SELECT COUNT(*) FROM stages WHERE stage=? AND status='done'", (stage,)).fetchone()[0]
    except sqlite3.Error:
        return 0


@pytest.mark.slow
def test_sigkill_then_resume_loses_and_duplicates_nothing(tmp_path):
    root = tmp_path / "data"
    make_demo_dataset(root, per_class=6)                 # 24 clips
    out = tmp_path / "out"
    cli("scan", "--videos", root / "videos", "--labels", root / "labels.tsv", "--out", out, check=0)
    args = [sys.executable, str(ROOT / "run_pipeline.py"), "extract", "--out", str(out), "--no-progress", *FAST,
            "store.shard_size=2", "extract.batch_videos=2"]
    victim = subprocess.Popen(args, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        deadline = time.time() + 300
        while _done(out, "extract:visual") < 4 and victim.poll() is None and time.time() < deadline:
            time.sleep(0.05)
        # a second run on the same folder while the first holds it: refused, nothing written
        second = cli("extract", "--out", out, "--no-progress", *FAST)
        assert second.returncode == 2 and "another run" in second.stdout + second.stderr, second.stdout + second.stderr
        victim.send_signal(signal.SIGKILL)
        victim.wait(30)
    finally:
        if victim.poll() is None:
            victim.kill()
    assert victim.returncode == -signal.SIGKILL
    cat = Catalog(out / "catalog.sqlite")
    before = {row[0]: row[1:] for row in cat.conn.execute(
        "SELECT video_id, shard_id, row FROM features WHERE modality='visual' AND layout='pooled'")}
    assert 4 <= len(before) < 24, "the kill must land in the middle of the run"
    cat.close()

    cli("extract", "--out", out, "--no-progress", *FAST, "store.shard_size=2", "extract.batch_videos=2", check=0)
    cat = Catalog(out / "catalog.sqlite")
    after = {row[0]: row[1:] for row in cat.conn.execute(
        "SELECT video_id, shard_id, row FROM features WHERE modality='visual' AND layout='pooled'")}
    assert len(after) == 24                                                     # nothing lost
    assert all(after[v] == loc for v, loc in before.items())                   # nothing finished was redone
    rows_in_shards = cat.conn.execute(
        "SELECT SUM(rows) FROM shards WHERE modality='visual' AND layout='pooled'").fetchone()[0]
    assert rows_in_shards == 24                                                 # nothing duplicated
    store = FeatureStore(out, cat)
    assert store.collect_garbage() == []                                        # no stray files left
    ids, arr, present = store.read_pooled("visual")
    assert len(ids) == 24 and present.all() and np.isfinite(arr.astype(np.float32)).all()
