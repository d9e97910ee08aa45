"""`verify`: damaged shards, deleted shards, orphans, a truncated catalog; `--repair`."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

from pipeline.catalog import Catalog, StageUpdate, VideoRow
from pipeline.store import FeatureStore
from pipeline.verify import verify_output

ROOT = __import__("pathlib").Path(__file__).resolve().parent.parent


@pytest.fixture()
def out(tmp_path):
    """6 videos, modality "v" (pooled + sequence with times) in shards of 2, "a" pooled."""
    cat = Catalog(tmp_path / "catalog.sqlite")
    cat.upsert_videos([VideoRow(f"v{i}") for i in range(6)])
    store = FeatureStore(tmp_path, cat, shard_size=2)
    with store.writer("v", dims={"pooled": 4, "sequence": 4}, stage="extract:v") as w:
        for i in range(6):
            seq = np.full((i + 1, 4), i, np.float32)
            w.add(f"v{i}", pooled=seq[0], sequence=seq, times=np.stack([np.arange(i + 1), np.arange(1, i + 2)], 1))
    with store.writer("a", "pooled", 3, stage="extract:a") as w:
        for i in range(6):
            w.add(f"v{i}", np.full(3, i, np.float32))
    cat.close()
    return tmp_path


def shard_of(out, video_id, modality="v", layout="pooled"):
    cat = Catalog(out / "catalog.sqlite", readonly=True)
    try:
        return dict((v, f) for v, f, _ in cat.feature_locations(modality, layout))[video_id]
    finally:
        cat.close()


def kinds(report):
    return sorted({p.kind for p in report.problems})


def test_clean_folder(out):
    report = verify_output(out)
    assert report.ok, report.problems
    assert report.integrity == ["ok"] and report.checked_shards == 3 * 2 + 3 and report.checked_rows == 18


def test_flipped_byte_is_a_checksum_error_and_repair_redoes_its_videos(out):
    rel, seq_rel = shard_of(out, "v2"), shard_of(out, "v2", layout="sequence")
    path = out / "store" / rel
    data = bytearray(path.read_bytes())
    data[-3] ^= 0xFF  # a value in the last row: shape and dtype still look right
    path.write_bytes(bytes(data))
    report = verify_output(out)
    assert kinds(report) == ["checksum"] and report.problems[0].where == rel
    assert sorted(report.broken_videos()) == [("v2", "v"), ("v3", "v")]
    fixed = verify_output(out, repair=True)
    assert fixed.repaired["marked_pending"] == 2
    # the damaged pooled shard and the healthy sequence shard of v2/v3 are used by no video now
    assert {rel, seq_rel} <= set(fixed.repaired["removed_files"])
    cat = Catalog(out / "catalog.sqlite")
    assert {k: s for k, s in cat.stage_status("extract:v").items()} == {f"v{i}": "done" for i in (0, 1, 4, 5)}
    assert len(cat.stage_status("extract:a")) == 6  # nothing else is touched
    store = FeatureStore(out, cat, shard_size=2)
    with store.writer("v", dims={"pooled": 4, "sequence": 4}, stage="extract:v") as w:  # the next extract
        for i in (2, 3):
            w.add(f"v{i}", pooled=np.full(4, i, np.float32), sequence=np.full((1, 4), i, np.float32),
                  times=np.array([[0.0, 1.0]]))
    cat.close()
    assert verify_output(out).ok


def test_deleted_shard_and_bad_offsets(out):
    (out / "store" / shard_of(out, "v0")).unlink()
    seq = out / "store" / shard_of(out, "v4", layout="sequence")
    offsets = seq.with_name(seq.name.replace(".npy", ".offsets.npy"))
    np.save(offsets, np.array([0, 9, 2], np.int64))
    report = verify_output(out)
    assert kinds(report) == ["checksum", "missing"]
    assert ("v0", "v") in report.broken_videos() and ("v4", "v") in report.broken_videos()


def test_orphans_rows_outside_and_done_without_rows(out):
    stray = out / "store" / "v" / "pooled" / "shard-deadbeef0000.npy"
    np.save(stray, np.zeros((2, 4), np.float16))
    (out / "store" / "a" / "pooled" / ".shard-x.npy.77.tmp").write_bytes(b"half")
    cat = Catalog(out / "catalog.sqlite")
    cat.conn.execute("UPDATE features SET row=7 WHERE video_id='v5' AND modality='a'")
    cat.conn.execute("DELETE FROM features WHERE video_id='v1' AND modality='a'")
    cat.set_stages([StageUpdate("v1", "extract:a", "done")])
    cat.close()
    report = verify_output(out)
    assert kinds(report) == ["orphan", "row", "undone"]
    assert {p.where for p in report.problems if p.kind == "orphan"} == {
        "v/pooled/shard-deadbeef0000.npy", "a/pooled/.shard-x.npy.77.tmp"}
    assert report.broken_videos() == {("v5", "a"), ("v1", "a")}
    verify_output(out, repair=True)
    assert not stray.exists() and verify_output(out).ok


def test_truncated_catalog_copy(out, tmp_path_factory):
    copy = tmp_path_factory.mktemp("copy")
    cat = Catalog(out / "catalog.sqlite")
    cat.conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    cat.close()
    shutil.copytree(out / "store", copy / "store")
    data = (out / "catalog.sqlite").read_bytes()
    (copy / "catalog.sqlite").write_bytes(data[: len(data) // 2])
    report = verify_output(copy)
    assert kinds(report) == ["catalog"] and report.integrity != ["ok"]
    assert verify_output(copy, repair=True).repaired == {}  # repair refuses to touch it


def test_cli_exit_codes(out):
    def run(*args):
        return subprocess.run([sys.executable, str(ROOT / "run_pipeline.py"), "verify", "--out", str(out), *args],
                              capture_output=True, text=True, cwd=ROOT, timeout=120,
                              env={**os.environ, "COLUMNS": "250"})

    ok = run()
    assert ok.returncode == 0, ok.stdout + ok.stderr
    (out / "store" / "v" / "pooled" / "shard-deadbeef0000.npy").write_bytes(b"x")
    bad = run()
    assert bad.returncode == 1 and "shard-deadbeef0000.npy" in bad.stdout and "Traceback" not in bad.stderr
    assert run("--repair").returncode == 1 and run().returncode == 0
