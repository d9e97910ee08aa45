"""Catalog and feature store round trips, crash leftovers, locking."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from pipeline.catalog import Catalog, OutputLock, StageUpdate, VideoRow
from pipeline.store import FeatureDataset, FeatureStore, collate_batch


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
        cat.commit_shard("s1", "a", {"pooled": ("a/pooled/shard-s1.npy", 1, 3)}, [("v0", 0)],
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
