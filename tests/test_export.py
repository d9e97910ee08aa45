"""Export round trips: npy / hdf5 / parquet give back the store's values; missing stays missing."""
from __future__ import annotations

import json

import numpy as np
import pytest

from pipeline.catalog import Catalog, VideoRow
from pipeline.export import h5_key, import_parquet, npy_stems, run_export
from pipeline.store import FeatureStore

IDS = ["x/clip.avi", "x/clip.mp4", "y/clip.mp4", "z/deep/one.mp4", "z/none.mp4"]  # catalog order


@pytest.fixture()
def out(tmp_path):
    """A store with modality `vis` (pooled + sequence with times; missing for z/*) and `aud`
    (pooled only; missing for y/clip.mp4), labels and splits."""
    out = tmp_path / "out"
    cat = Catalog(out / "catalog.sqlite")
    cat.upsert_videos([VideoRow(v, labels=[["a"], ["b"], ["a", "b"], [], ["b"]][i], split=["train", "val"][i % 2])
                       for i, v in enumerate(IDS)])
    store = FeatureStore(out, cat, shard_size=2)
    rng = np.random.default_rng(0)
    with store.writer("vis", dims={"pooled": 6, "sequence": 6}, meta={"model": "test", "weights": "random"}) as w:
        for i, vid in enumerate(IDS[:3]):
            seq = rng.normal(size=(i + 2, 6)).astype(np.float32)
            t = np.stack([np.arange(i + 2) * 0.5, np.arange(i + 2) * 0.5 + 0.5], 1)
            w.add(vid, pooled=seq.mean(0), sequence=seq, times=t)
    with store.writer("aud", "pooled", 3, {"model": "test-audio"}) as w:
        for vid in [IDS[0], IDS[1], IDS[3], IDS[4]]:
            w.add(vid, rng.normal(size=3).astype(np.float32))
    cat.close()
    return out


def _store_values(out):
    cat = Catalog(out / "catalog.sqlite")
    store = FeatureStore(out, cat)
    vals = {}
    for m in ("vis", "aud"):
        _, x, present = store.read_pooled(m, IDS)
        vals[m] = (x.astype(np.float32), present)
    vals["vis_seq"] = store.read_sequences("vis", IDS)
    vals["vis_times"] = store.read_times("vis", IDS)
    cat.close()
    return vals


def test_npy_keeps_folders_and_never_collides(out, tmp_path):
    assert npy_stems(IDS)["x/clip.mp4"] == "x/clip.mp4" and npy_stems(IDS)["y/clip.mp4"] == "y/clip"
    summary = run_export(out, tmp_path / "npy", "npy")
    want = _store_values(out)
    index = json.loads((tmp_path / "npy" / "index.json").read_text())
    for i, vid in enumerate(IDS):
        files = index["videos"][vid]["files"]
        for m in ("vis", "aud"):
            x, present = want[m]
            if not present[i]:
                assert files[m] is None
                continue
            got = np.load(tmp_path / "npy" / files[m]["pooled"])
            np.testing.assert_array_equal(got, x[i])
        if want["vis_seq"][i] is not None:
            np.testing.assert_array_equal(np.load(tmp_path / "npy" / files["vis"]["sequence"]), want["vis_seq"][i])
            np.testing.assert_array_equal(np.load(tmp_path / "npy" / files["vis"]["times"]), want["vis_times"][i])
    assert (tmp_path / "npy" / "vis" / "y" / "clip_vis.npy").exists()
    assert (tmp_path / "npy" / "vis" / "x" / "clip.avi_vis.npy").exists()  # same stem as x/clip.mp4
    assert (tmp_path / "npy" / "vis" / "x" / "clip.mp4_timestamps_ms.npy").exists()
    assert not (tmp_path / "npy" / "vis" / "z").exists()  # vis is missing for z/*: no file, null in the index
    assert (tmp_path / "npy" / "aud" / "z" / "deep" / "one_pooled.npy").exists()
    assert summary["rows"] == 5 and summary["files"] == len([p for p in (tmp_path / "npy").rglob("*") if p.is_file()])


def test_hdf5_round_trip_with_nan_for_missing(out, tmp_path):
    import h5py

    summary = run_export(out, tmp_path / "f.h5", "hdf5")
    want = _store_values(out)
    with h5py.File(tmp_path / "f.h5", "r") as h5:
        assert [v.decode() for v in h5["video_ids"][:]] == IDS
        assert json.loads(h5["labels"][2]) == ["a", "b"]
        assert json.loads(h5["vis"].attrs["meta"])["weights"] == "random"
        assert "torch" in json.loads(h5.attrs["versions"])
        for m in ("vis", "aud"):
            x, present = want[m]
            np.testing.assert_array_equal(h5[m]["present"][:], present)
            np.testing.assert_array_equal(h5[m]["pooled"][:][present], x[present])
            assert np.isnan(h5[m]["pooled"][:][~present]).all()
        for i, vid in enumerate(IDS):
            if want["vis_seq"][i] is None:
                assert h5_key(vid) not in h5["vis"]["sequence"]
            else:
                np.testing.assert_array_equal(h5["vis"]["sequence"][h5_key(vid)][:], want["vis_seq"][i])
                np.testing.assert_array_equal(h5["vis"]["times"][h5_key(vid)][:], want["vis_times"][i])
    assert summary["files"] == 1 and summary["bytes"] > 0


def test_parquet_round_trip_pandas_datasets_and_import(out, tmp_path):
    import pandas as pd
    import pyarrow.parquet as pq

    summary = run_export(out, tmp_path / "pq", "parquet", max_file_mb=0.0002)  # ~2 rows per file
    parts = sorted((tmp_path / "pq").glob("part-*.parquet"))
    assert len(parts) > 1 and summary["files"] == len(parts)
    want = _store_values(out)
    df = pd.concat([pd.read_parquet(p) for p in parts], ignore_index=True)
    assert list(df.video_id) == IDS and list(df.labels[2]) == ["a", "b"] and df.split[1] == "val"
    for i in range(len(IDS)):
        for m in ("vis", "aud"):
            x, present = want[m]
            if present[i]:
                np.testing.assert_array_equal(np.asarray(df[m][i], np.float32), x[i])
            else:
                assert df[m][i] is None  # null, not zeros
        if want["vis_seq"][i] is None:
            assert df["vis_sequence"][i] is None and df["vis_times"][i] is None
        else:
            np.testing.assert_array_equal(np.stack(df["vis_sequence"][i]).astype(np.float32), want["vis_seq"][i])
    assert pq.read_schema(parts[0]).field("aud").type.list_size == 3
    try:
        import datasets
    except ImportError:
        datasets = None
    if datasets is not None:  # Hugging Face datasets reads the folder as it is
        ds = datasets.load_dataset("parquet", data_dir=str(tmp_path / "pq"), split="train",
                                   cache_dir=str(tmp_path / "hf-cache"))
        assert ds["video_id"] == IDS and getattr(ds.features["aud"], "length", None) == 3
        assert ds[2]["aud"] is None and np.allclose(ds[0]["aud"], want["aud"][0][0])
    # ... and back into a fresh store, through `run_pipeline.py import features DEST`'s function
    from pipeline.importers import import_features

    back = tmp_path / "back"
    result = import_features(tmp_path / "pq", back)
    assert result["videos"] == 5 and result["features"] == {"vis/pooled": 3, "vis/sequence": 3, "aud/pooled": 4}
    got = _store_values(back)
    for m in ("vis", "aud"):
        np.testing.assert_array_equal(got[m][1], want[m][1])
        np.testing.assert_array_equal(got[m][0], want[m][0])
    for a, b in zip(got["vis_seq"] + got["vis_times"], want["vis_seq"] + want["vis_times"]):
        assert (a is None and b is None) or np.array_equal(a, b)
    cat = Catalog(back / "catalog.sqlite")
    assert [(v["video_id"], v["labels"], v["split"]) for v in cat.videos()][1] == ("x/clip.mp4", ["b"], "val")
    cat.close()


def test_export_choices_and_errors(out, tmp_path):
    s = run_export(out, tmp_path / "p", "parquet", modalities=["vis"], layouts=("pooled",))
    import pyarrow.parquet as pq

    assert pq.read_schema(tmp_path / "p" / "part-00000.parquet").names == ["video_id", "labels", "split", "duration", "vis"]
    assert s["columns"] == 5
    with pytest.raises(ValueError, match="no modality"):
        run_export(out, tmp_path / "q", "npy", modalities=["nope"])
    with pytest.raises(ValueError, match="format"):
        run_export(out, tmp_path / "q", "csv")
    with pytest.raises(ValueError, match="sequence"):
        run_export(out, tmp_path / "q", "npy", modalities=["aud"], layouts=("sequence",))


def test_import_parquet_refuses_foreign_files(out, tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    run_export(out, tmp_path / "p", "parquet", modalities=["aud"])
    assert import_parquet(tmp_path / "p" / "part-00000.parquet", tmp_path / "b")["features"] == {"aud/pooled": 4}
    pq.write_table(pa.table({"video_id": ["a"]}), tmp_path / "foreign.parquet")
    with pytest.raises(ValueError, match="not a microvideo-pipeline export"):
        import_parquet(tmp_path / "foreign.parquet", tmp_path / "c")


def test_cli_export_and_import(out, tmp_path, capsys):
    from pipeline.cli import main

    def cli(args):
        with pytest.raises(SystemExit) as e:
            main(args)
        return e.value.code or 0

    assert cli(["export", str(tmp_path / "cli"), "--out", str(out), "--format", "parquet", "--pooled",
                "--modalities", "aud,vis"]) == 0
    assert "rows" in capsys.readouterr().out
    assert cli(["import", "features", str(tmp_path / "cli"), "--out", str(tmp_path / "again")]) == 0
    assert cli(["export", str(tmp_path / "x"), "--out", str(out), "--pooled", "--sequence"]) == 2
    assert cli(["export", str(tmp_path / "x"), "--out", str(out), "--modalities", "nope"]) == 2
    err = capsys.readouterr().err
    assert "exclude each other" in err and "no modality ['nope']" in err and "Traceback" not in err
