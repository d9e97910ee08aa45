"""Export round trip on a real store: rows, columns, bytes and seconds per format, and a check
that every exported value equals the store's (missing = no file / NaN / null).

    python run_pipeline.py scan --videos ../shared/data/fight --out /tmp/eco_fight
    python run_pipeline.py extract --out /tmp/eco_fight 'extract.modalities=[visual,audio,text]' \
        extractors.visual.weights=random extractors.audio.weights=random decode.num_frames=4
    python bench/export.py /tmp/eco_fight          # -> bench/results/export.json
"""
from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from pipeline.catalog import Catalog  # noqa: E402
from pipeline.export import h5_key, run_export  # noqa: E402
from pipeline.io import write_json  # noqa: E402
from pipeline.store import FeatureStore  # noqa: E402


def store_values(out: Path) -> dict:
    cat = Catalog(out / "catalog.sqlite", readonly=True)
    store = FeatureStore(out, cat)
    ids = [v["video_id"] for v in cat.videos()]
    vals = {"ids": ids}
    for m, info in store.modalities().items():
        if "pooled" in info.layouts:
            _, x, present = store.read_pooled(m, ids)
            vals[m] = (x.astype(np.float32), present)
        if "sequence" in info.layouts:
            vals[m + "/sequence"] = store.read_sequences(m, ids)
    cat.close()
    return vals


def check_parquet(dest: Path, want: dict) -> int:
    import pyarrow.parquet as pq

    table = pq.read_table(dest)
    assert table.column("video_id").to_pylist() == want["ids"]
    checked = 0
    for m, v in want.items():
        if m == "ids" or "/" in m:
            continue
        col = table.column(m).to_pylist()
        x, present = v
        for i, row in enumerate(col):
            assert (row is None) == (not present[i]), (m, i)
            if row is not None:
                assert np.array_equal(np.asarray(row, np.float32), x[i])
                checked += 1
    return checked


def check_hdf5(path: Path, want: dict) -> int:
    import h5py

    checked = 0
    with h5py.File(path, "r") as h5:
        assert [s.decode() for s in h5["video_ids"][:]] == want["ids"]
        for m, v in want.items():
            if m == "ids":
                continue
            if m.endswith("/sequence"):
                name = m.split("/")[0]
                for vid, seq in zip(want["ids"], v):
                    assert (h5_key(vid) in h5[name]["sequence"]) == (seq is not None)
                    if seq is not None:
                        assert np.array_equal(h5[name]["sequence"][h5_key(vid)][:], np.asarray(seq, np.float32))
                continue
            x, present = v
            assert np.array_equal(h5[m]["present"][:], present)
            assert np.array_equal(h5[m]["pooled"][:][present], x[present]) and np.isnan(h5[m]["pooled"][:][~present]).all()
            checked += int(present.sum())
    return checked


def check_npy(dest: Path, want: dict) -> int:
    index = json.loads((dest / "index.json").read_text())["videos"]
    checked = 0
    for m, v in want.items():
        if m == "ids" or "/" in m:
            continue
        x, present = v
        for i, vid in enumerate(want["ids"]):
            entry = index[vid]["files"].get(m)
            assert (entry is None) == (not present[i])
            if entry:
                assert np.array_equal(np.load(dest / entry["pooled"]), x[i])
                checked += 1
    return checked


def main(out: str) -> None:
    out = Path(out)
    from pipeline.config import versions

    versions()  # imports transformers etc. once (every export records them), outside the timings
    want = store_values(out)
    results = {"store": str(out), "videos": len(want["ids"]), "formats": {}}
    with tempfile.TemporaryDirectory() as tmp:
        for layouts, tag in ((("pooled", "sequence"), "pooled+sequence"), (("pooled",), "pooled")):
            for fmt, dest, check in (("parquet", Path(tmp) / f"pq-{tag}", check_parquet),
                                     ("hdf5", Path(tmp) / f"{tag}.h5", check_hdf5),
                                     ("npy", Path(tmp) / f"npy-{tag}", check_npy)):
                r = run_export(out, dest, fmt, layouts=layouts)
                r["values_checked_equal"] = check(dest, want if tag != "pooled" else
                                                  {k: v for k, v in want.items() if "/" not in k})
                r.pop("dest")
                results["formats"][f"{fmt} ({tag})"] = r
                print(f"{fmt:8s} {tag:16s} rows {r['rows']} columns {r['columns']} files {r['files']} "
                      f"bytes {r['bytes']:,} seconds {r['seconds']} checked {r['values_checked_equal']}")
    path = write_json(ROOT / "bench" / "results" / "export.json", results)
    print(f"saved {path}")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "/tmp/eco_fight")
