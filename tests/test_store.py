"""Catalog and feature store round trips, crash leftovers, locking."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from pipeline.catalog import Catalog, OutputLock, StageUpdate, VideoRow
from pipeline.dataset import FeatureDataset, collate_batch
from pipeline.store import FeatureStore, StoreWriteError


@pytest.fixture()
def store(tmp_path):
    cat = Catalog(tmp_path / "catalog.sqlite")
    cat.upsert_videos([VideoRow(f"v{i}", labels=["a"] if i % 2 else ["b", "c"]) for i in range(10)])
    yield FeatureStore(tmp_path, cat, shard_size=4)
    cat.close()


def test_pooled_and_sequence_round_trip(store):
    rng = np.random.default_rng(0)
    pooled = {f"v{i}": rng.standard_normal(6).astype(np.float32) for i in range(9)}
    seqs = {f"v{i}": rng.standard_normal((i + 1, 5)).astype(np.float32) for i in range(9)}
    with store.writer("vis", dims={"pooled": 6, "sequence": 5}, meta={"model": "x"}, stage="extract:vis") as w:
        for vid in pooled:
            w.add(vid, pooled=pooled[vid], sequence=seqs[vid])
        w.mark_missing("v9", "no audio track")
    # 9 videos with shard_size 4 -> 3 shards (4 + 4 + 1), each with its offsets file
    assert len(list((store.root / "vis" / "pooled").glob("shard-*.npy"))) == 3
    assert len(list((store.root / "vis" / "sequence").glob("shard-*.offsets.npy"))) == 3
    ids, arr, present = store.read_pooled("vis", ["v9", "v3", "v0"])
    assert arr.dtype == np.float16 and present.tolist() == [False, True, True]
    np.testing.assert_allclose(arr[1], pooled["v3"], atol=2e-3)
    assert not arr[0].any()
    got = store.read_sequences("vis", ["v7", "v9"])
    np.testing.assert_allclose(got[0], seqs["v7"], atol=2e-3) and got[1] is None
    assert store.modalities()["vis"].layouts == {"pooled": 6, "sequence": 5}
    assert store.modalities()["vis"].meta == {"model": "x"}
    counts = store.catalog.stage_counts()["extract:vis"]
    assert counts == {"done": 9, "missing": 1}


def test_text_segments_are_committed_with_their_shard(store):
    """Speech transcripts (Features.segments) land in the catalog in the shard's transaction;
    re-extracting a video replaces its segments instead of adding to them."""
    seg = [(0.0, 1.5, "hello there"), (1.5, 2.0, "again")]
    with store.writer("speech_text", dims={"pooled": 3, "sequence": 3}, stage="extract:speech_text") as w:
        w.add("v0", pooled=np.ones(3), sequence=np.ones((2, 3)), times=np.array([[0, 1.5], [1.5, 2.0]]), segments=seg)
        w.add("v1", pooled=np.ones(3), sequence=np.ones((1, 3)))
        assert store.catalog.segments("v0", "speech_text") == []      # not before the shard is committed
    assert store.catalog.segments("v0", "speech_text") == seg
    assert store.catalog.segments("v1", "speech_text") == []
    with store.writer("speech_text", stage="extract:speech_text") as w:
        w.add("v0", pooled=np.ones(3), sequence=np.ones((1, 3)), segments=[(0.0, 2.0, "once")])
    assert store.catalog.segments("v0", "speech_text") == [(0.0, 2.0, "once")]


def test_extractor_facts_per_video_are_committed_with_their_shard(store):
    """Features.info (the language Whisper detected per clip) lands in the catalog's feature_info
    with the shard; re-extracting replaces it, a changed video forgets it."""
    with store.writer("speech_text", dims={"pooled": 3}, stage="extract:speech_text") as w:
        w.add("v0", pooled=np.ones(3), info={"language": "en"})
        w.add("v1", pooled=np.ones(3), info={"language": "de"})
        w.add("v2", pooled=np.ones(3))
        assert store.catalog.feature_info("speech_text") == {}        # not before the shard is committed
    assert store.catalog.feature_info("speech_text") == {"v0": {"language": "en"}, "v1": {"language": "de"}}
    with store.writer("speech_text", stage="extract:speech_text") as w:
        w.add("v0", pooled=np.ones(3))                                 # re-extracted: no language this time
        w.add("v1", pooled=np.ones(3), info={"language": "fr"})
    assert store.catalog.feature_info("speech_text") == {"v1": {"language": "fr"}}
    store.catalog.forget_outputs(["v1"])
    assert store.catalog.feature_info("speech_text") == {}


def test_dataset_and_collate(store):
    with store.writer("a", "pooled", 3) as w:
        for i in range(0, 10, 2):
            w.add(f"v{i}", np.full(3, i, np.float32))
    with store.writer("s", "sequence", 2) as w:
        for i in range(3):
            w.add(f"v{i}", np.ones((i + 2, 2), np.float32) * i)
    ids = [f"v{i}" for i in range(4)]
    ds = FeatureDataset(store, ids, pooled=["a"], sequence=["s"], labels=np.eye(4, 3))
    batch = collate_batch([ds[i] for i in range(4)])
    assert batch["pooled"]["a"].shape == (4, 3) and batch["sequence"]["s"].shape == (4, 4, 2)
    assert batch["present"]["a"].tolist() == [True, False, True, False]
    assert batch["present"]["s"].tolist() == [True, True, True, False]
    assert batch["lengths"]["s"].tolist() == [2, 3, 4, 0]
    assert torch.equal(batch["pooled"]["a"][2], torch.full((3,), 2.0))
    assert batch["labels"].shape == (4, 3)


def test_shape_and_value_checks(store):
    with store.writer("a", "pooled", 3) as w:
        with pytest.raises(ValueError, match="expected"):
            w.add("v0", np.zeros(4, np.float32))
        with pytest.raises(ValueError, match="non-finite"):
            w.add("v0", np.array([1, np.nan, 0], np.float32))
    with pytest.raises(ValueError, match="dim"):
        store.writer("a", "pooled", 5)


def test_uncommitted_shard_files_are_garbage(store):
    with store.writer("a", "pooled", 3) as w:
        w.add("v0", np.zeros(3, np.float32))
    stray = store.root / "a" / "pooled" / "shard-deadbeef0000.npy"
    np.save(stray, np.zeros((2, 3), np.float16))
    tmp = store.root / "a" / "pooled" / ".shard-x.npy.123.tmp"
    tmp.write_bytes(b"partial")
    removed = store.collect_garbage()
    assert set(removed) == {stray, tmp}
    assert store.read_pooled("a")[0] == ["v0"]


def test_commit_is_all_or_nothing(store):
    """A failure inside the commit transaction leaves neither shard rows nor statuses."""
    cat = store.catalog
    with pytest.raises(Exception):
        cat.commit_shard("s1", "a", {"pooled": {"file": "a/pooled/shard-s1.npy", "rows": 1, "dim": 3}}, [("v0", 0)],
                         [StageUpdate("v0", "extract:a", "bogus-status")])
    assert cat.shard_files() == set()
    assert cat.stage_counts() == {}


def test_class_names_and_labels(store):
    cat = store.catalog
    assert cat.class_names() == ["a", "b", "c"]
    cat.set_class_names(["z", "y"])
    assert cat.class_names() == ["z", "y"]
    assert ("v1", ["a"], None) in cat.labeled_videos()


def test_lock_refuses_second_writer(tmp_path):
    with OutputLock(tmp_path):
        with pytest.raises(RuntimeError, match="another run"):
            with OutputLock(tmp_path):
                pass
    with OutputLock(tmp_path):  # released: usable again
        pass


def test_times_checksums_and_dtype_are_recorded(store):
    seq = np.ones((3, 2), np.float32)
    times = np.array([[0.0, 0.5], [0.5, 1.0], [1.0, 1.5]])
    with store.writer("s", dims={"pooled": 2, "sequence": 2}) as w:
        w.add("v0", pooled=seq.mean(0), sequence=seq, times=times)
        w.add("v1", pooled=seq.mean(0), sequence=seq[:2])  # a producer that knows no times
        with pytest.raises(ValueError, match="times"):
            w.add("v2", pooled=seq.mean(0), sequence=seq, times=times[::-1, ::-1])  # end < start
    got = store.read_times("s", ["v0", "v1", "v9"])
    np.testing.assert_array_equal(got[0], times)
    assert got[1].shape == (2, 2) and np.isnan(got[1]).all() and got[2] is None
    rows = store.catalog.conn.execute("SELECT layout, dtype, sha256, aux FROM shards ORDER BY layout").fetchall()
    assert [r[0] for r in rows] == ["pooled", "sequence"]
    import hashlib
    import json
    for layout, dtype, sha, aux in rows:
        file = store.root / store.catalog.conn.execute(
            "SELECT file FROM shards WHERE layout=?", (layout,)).fetchone()[0]
        assert dtype == "float16" and sha == hashlib.sha256(file.read_bytes()).hexdigest()
        for rel, aux_sha in json.loads(aux).items():
            assert hashlib.sha256((store.root / rel).read_bytes()).hexdigest() == aux_sha
    assert len(json.loads(rows[1][3])) == 2  # offsets + times


def test_old_catalog_gains_the_new_columns(tmp_path):
    import sqlite3

    conn = sqlite3.connect(tmp_path / "catalog.sqlite")
    conn.execute("CREATE TABLE shards (shard_id TEXT PRIMARY KEY, modality TEXT NOT NULL, layout TEXT NOT NULL,"
                 " file TEXT NOT NULL, rows INTEGER NOT NULL, dim INTEGER NOT NULL, created_at REAL)")
    conn.execute("INSERT INTO shards VALUES ('x:pooled', 'a', 'pooled', 'a/pooled/shard-x.npy', 1, 3, 0)")
    conn.commit()
    conn.close()
    cat = Catalog(tmp_path / "catalog.sqlite")
    row = cat.conn.execute("SELECT file, sha256, dtype FROM shards").fetchone()
    assert row == ("a/pooled/shard-x.npy", None, None)
    cat.close()


def _full_disk_after(monkeypatch, n_ok: int):
    """Make the shard writer's file writes fail with ENOSPC after `n_ok` successful ones."""
    import errno

    import pipeline.io

    real, calls = pipeline.io.write_bytes, []

    def write_bytes(path, data):
        calls.append(path)
        if len(calls) > n_ok:
            path.parent.mkdir(parents=True, exist_ok=True)
            with open(path.with_name(f".{path.name}.partial.tmp"), "wb") as f:
                f.write(data[:10])  # what a full disk leaves behind
            raise OSError(errno.ENOSPC, "No space left on device", str(path))
        return real(path, data)

    monkeypatch.setattr(pipeline.io, "write_bytes", write_bytes)


def test_full_disk_stops_with_one_line_and_loses_no_committed_video(store, monkeypatch):
    _full_disk_after(monkeypatch, n_ok=1)  # shard 1 (v0..v3) fits, shard 2 does not
    with pytest.raises(StoreWriteError) as info:
        with store.writer("a", "pooled", 3, stage="extract:a") as w:
            for i in range(8):
                w.add(f"v{i}", np.full(3, i, np.float32))
    msg = str(info.value)
    assert "\n" not in msg and "disk is full" in msg and "rerun" in msg
    assert store.read_pooled("a")[0] == ["v0", "v1", "v2", "v3"]
    assert store.catalog.stage_status("extract:a") == {f"v{i}": "done" for i in range(4)}
    with store.writer("a", "pooled", 3, stage="extract:a") as w:  # this run writes nothing more
        w.add("v7", np.zeros(3, np.float32))
    assert len(store.read_pooled("a")[0]) == 4
    monkeypatch.undo()  # space freed: the next run collects the garbage and does the rest
    store = FeatureStore(store.out_dir, store.catalog, shard_size=4)
    assert [p.name for p in store.collect_garbage()] and not list(store.root.rglob(".*"))
    todo = [f"v{i}" for i in range(8) if f"v{i}" not in store.catalog.stage_status("extract:a")]
    with store.writer("a", "pooled", 3, stage="extract:a") as w:
        for vid in todo:
            w.add(vid, np.full(3, int(vid[1:]), np.float32))
    ids, arr, _ = store.read_pooled("a")
    assert ids == [f"v{i}" for i in range(8)] and arr[:, 0].tolist() == list(range(8))


def test_read_only_output_folder_is_one_line(store, monkeypatch):
    import errno

    import pipeline.io

    def refuse(path, data):
        raise PermissionError(errno.EROFS, "Read-only file system", str(path))

    monkeypatch.setattr(pipeline.io, "write_bytes", refuse)
    with pytest.raises(StoreWriteError, match="read-only") as info:
        with store.writer("a", "pooled", 3, stage="extract:a") as w:
            w.add("v0", np.zeros(3, np.float32))
    assert "\n" not in str(info.value)
    assert store.catalog.stage_counts() == {}


def test_read_only_catalog_sees_only_committed_data_and_takes_no_lock(store, tmp_path):
    with store.writer("a", "pooled", 3) as w:
        w.add("v0", np.zeros(3, np.float32))
    with OutputLock(tmp_path):  # a writer holds the folder ...
        reader = FeatureStore(tmp_path, Catalog(tmp_path / "catalog.sqlite", readonly=True))
        tx = store.catalog.transaction()
        conn = tx.__enter__()  # ... and is in the middle of a commit
        conn.execute("INSERT INTO features VALUES ('v1', 'a', 'pooled', 'nope:pooled', 0)")
        assert reader.read_pooled("a")[0] == ["v0"]  # not blocked, sees the committed state
        tx.__exit__(None, None, None)
        with pytest.raises(Exception, match="readonly"):
            reader.catalog.set_meta("x", 1)
        reader.catalog.close()


# -- whole runs: a full disk mid-way, a reader beside the writer ----------------------------------
FAST = ["extract.modalities=[visual,audio]", "extractors.visual.weights=random", "extractors.visual.depth=18",
        "extractors.audio.weights=random", "decode.short_side=64", "decode.num_frames=4", "decode.workers=0",
        "store.shard_size=2", "extract.batch_videos=2"]


@pytest.mark.slow
def test_extract_on_a_full_disk_stops_in_one_line_and_the_next_run_resumes(demo_dataset, tmp_path, monkeypatch, capsys):
    from pipeline.cli import main
    from pipeline.verify import verify_output

    out = tmp_path / "out"
    with pytest.raises(SystemExit) as code:
        main(["scan", "--videos", str(demo_dataset / "videos"), "--labels", str(demo_dataset / "labels.tsv"),
              "--out", str(out)])
    assert code.value.code in (0, None)
    _full_disk_after(monkeypatch, n_ok=6)  # a few shards fit, then the disk is full
    with pytest.raises(SystemExit) as code:
        main(["extract", "--out", str(out), "--no-progress", *FAST])
    err = capsys.readouterr().err
    assert code.value.code == 1 and "Traceback" not in err
    assert "disk is full" in err and len([line for line in err.splitlines() if line.strip()]) == 1, err
    cat = Catalog(out / "catalog.sqlite", readonly=True)
    done_before = {m: {v for v, s in cat.stage_status(f"extract:{m}").items() if s == "done"} for m in ("visual", "audio")}
    located = {v for v, _, _ in cat.feature_locations("visual", "pooled")}
    cat.close()
    assert 0 < len(done_before["visual"]) and done_before["visual"] == located   # consistent: done = has rows
    report = verify_output(out)
    assert {p.kind for p in report.problems} <= {"orphan"}   # only the full disk's leftovers
    monkeypatch.undo()
    with pytest.raises(SystemExit) as code:
        main(["extract", "--out", str(out), "--no-progress", *FAST])
    assert code.value.code in (0, None, 1)  # 1 only if a demo clip has a failure to list (none expected)
    cat = Catalog(out / "catalog.sqlite", readonly=True)
    n = len(cat.videos())
    assert sum(s == "done" for s in cat.stage_status("extract:visual").values()) == n
    rows = cat.conn.execute("SELECT COUNT(*) FROM features WHERE modality='visual' AND layout='pooled'").fetchone()[0]
    cat.close()
    assert rows == n and verify_output(out).ok  # nothing lost, nothing duplicated, no garbage left


@pytest.mark.slow
def test_readers_beside_a_running_extract_see_only_committed_shards(demo_dataset, tmp_path):
    import os
    import subprocess
    import sys
    import time
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent
    out = tmp_path / "out"

    def cli(*args, **kw):
        return subprocess.Popen([sys.executable, str(root / "run_pipeline.py"), *map(str, args)], cwd=root,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                env={**os.environ, "COLUMNS": "200"}, **kw)

    scan = cli("scan", "--videos", demo_dataset / "videos", "--out", out)
    assert scan.wait(120) == 0
    writer = cli("extract", "--out", out, "--no-progress", "--limit", 5, *FAST, "store.shard_size=1",
                 "extract.batch_videos=1")
    seen, status = [], None
    while writer.poll() is None:
        if not (out / "catalog.sqlite").exists():
            time.sleep(0.05)
            continue
        reader = FeatureStore(out, Catalog(out / "catalog.sqlite", readonly=True))
        try:
            if "visual" in reader.modalities():
                ids, arr, present = reader.read_pooled("visual")   # every located row is in a whole shard
                assert present.all() and np.isfinite(arr.astype(np.float32)).all()
                seen.append(len(ids))
        finally:
            reader.catalog.close()
        if status is None and seen and seen[-1] > 0:
            status = cli("status", "--out", out)   # runs while we keep polling
        time.sleep(0.1)
    assert writer.returncode == 0, writer.stderr.read()
    assert seen == sorted(seen) and any(0 < n < seen[-1] for n in seen), seen   # whole shards, in commit order
    assert status.wait(120) in (0, 1) and "refusing" not in status.stderr.read()  # no lock taken, no refusal
