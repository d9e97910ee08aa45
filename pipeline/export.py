"""`run_pipeline.py export`: the store's features in formats other tools read, and back.

    npy      DEST/<modality>/<video folder>/<stem>_<modality>.npy      sequence (T, D) float32
             DEST/<modality>/<video folder>/<stem>_pooled.npy           pooled (D,)
             DEST/<modality>/<video folder>/<stem>_times.npy            (T, 2) start/end seconds
             DEST/<modality>/<video folder>/<stem>_timestamps_ms.npy    (T,) row starts, ms
             = video_features' `<stem>_<key>.npy` naming, with the video's relative folder kept (two
             clips named a.mp4 in different folders never collide; a.mp4 and a.avi in one folder
             keep their extension in the stem). DEST/index.json lists every video and file; a
             missing modality has no file and `null` in the index.
    hdf5     one file: /video_ids, /labels (JSON per video), /split; a group per modality with
             `pooled` (N, D) float32, NaN rows where missing, and `present` (N,) bool; `sequence/<id>`
             and `times/<id>` datasets per video (id URL-quoted: "/" is HDF5's separator); the
             producing config, weights and versions as JSON attributes.
    parquet  DEST/part-NNNNN.parquet, one row per video: video_id, labels, split, duration, each
             pooled modality a fixed_size_list<float32>[D] column, each sequence modality
             `<m>_sequence` list<fixed_size_list[D]> and `<m>_times` list<fixed_size_list[2]>;
             a missing modality is null (never zeros). Files hold at most `max_file_mb` each.
             Read by pandas, Hugging Face `datasets` (`load_dataset("parquet", data_dir=DEST)`),
             Spark and Ray Data; `import_parquet` reads it back into a store
             (`run_pipeline.py import features DEST`).
Every file is written through pipeline/io.py (atomic).
"""
from __future__ import annotations

import json
import time
import urllib.parse
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np

from .catalog import Catalog, VideoRow
from .config import versions
from .errors import DataError, NotFound, UsageError
from .io import atomic_write, save_npy, write_json
from .store import FeatureStore

FORMATS = ("npy", "hdf5", "parquet")
META_KEY = b"microvideo_pipeline"


@dataclass
class Source:
    """What an export reads: the videos (catalog order) and, per modality, the chosen layouts."""

    out_dir: Path
    store: FeatureStore
    videos: list[dict]
    layouts: dict[str, list[str]]                 # modality -> ["pooled", "sequence"] it has and we export
    meta: dict[str, dict] = field(default_factory=dict)

    @property
    def ids(self) -> list[str]:
        return [v["video_id"] for v in self.videos]

    def pooled(self, modality: str) -> tuple[np.ndarray, np.ndarray]:
        """(float32 [N, D], present [N]) in `ids` order."""
        _, x, present = self.store.read_pooled(modality, self.ids)
        return x.astype(np.float32), present

    def sequences(self, modality: str, ids: Sequence[str]) -> Iterator[tuple[np.ndarray | None, np.ndarray | None]]:
        for seq, times in zip(self.store.read_sequences(modality, ids), self.store.read_times(modality, ids)):
            yield (None, None) if seq is None else (np.asarray(seq, np.float32), np.asarray(times, np.float64))


def open_source(out_dir: str | Path, modalities: Sequence[str] | None = None,
                layouts: Sequence[str] = ("pooled", "sequence")) -> Source:
    out_dir = Path(out_dir)
    if not (out_dir / "catalog.sqlite").exists():
        raise NotFound(f"{out_dir} has no catalog.sqlite: run scan and extract (or import) first")
    catalog = Catalog(out_dir / "catalog.sqlite", readonly=True)  # a reader: runs beside an extract
    store = FeatureStore(out_dir, catalog)
    infos = store.modalities()
    names = list(modalities) if modalities else sorted(infos)
    unknown = [m for m in names if m not in infos]
    if unknown:
        raise UsageError(f"the store has no modality {unknown}; it has {sorted(infos)}")
    chosen = {m: [layout for layout in layouts if layout in infos[m].layouts] for m in names}
    chosen = {m: ls for m, ls in chosen.items() if ls}
    if not chosen:
        raise UsageError(f"none of {names} has a {' or '.join(layouts)} layout in the store")
    return Source(out_dir, store, catalog.videos(), chosen, {m: infos[m].meta for m in chosen})


def run_export(out_dir, dest, fmt: str, modalities: Sequence[str] | None = None,
               layouts: Sequence[str] = ("pooled", "sequence"), max_file_mb: float = 256) -> dict:
    """Export; returns {"format", "dest", "rows", "columns", "bytes", "files", "seconds"}."""
    if fmt not in FORMATS:
        raise UsageError(f"--format must be one of {FORMATS}, got {fmt!r}")
    t0 = time.perf_counter()
    src = open_source(out_dir, modalities, layouts)
    dest = Path(dest)
    writer = {"npy": export_npy, "hdf5": export_hdf5, "parquet": export_parquet}[fmt]
    files = writer(src, dest, max_file_mb) if fmt == "parquet" else writer(src, dest)
    columns = 4 + sum(len(ls) + ("sequence" in ls) for ls in src.layouts.values())  # + times per sequence
    return {"format": fmt, "dest": str(dest), "rows": len(src.videos), "columns": columns,
            "modalities": src.layouts, "files": len(files), "bytes": sum(f.stat().st_size for f in files),
            "seconds": round(time.perf_counter() - t0, 2)}


def _provenance(src: Source) -> dict:
    return {"source": str(src.out_dir.resolve()), "exported_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "versions": versions(), "modalities": {m: {"layouts": ls, "meta": src.meta[m]} for m, ls in src.layouts.items()}}


# -- npy -----------------------------------------------------------------------------------------
def npy_stems(video_ids: Sequence[str]) -> dict[str, str]:
    """video id (relative path) -> relative path of its files without the `_<key>.npy` suffix."""
    stems = {vid: str(Path(vid).with_suffix("")) for vid in video_ids}
    counts: dict[str, int] = {}
    for s in stems.values():
        counts[s] = counts.get(s, 0) + 1
    return {vid: (s if counts[s] == 1 else vid) for vid, s in stems.items()}


def export_npy(src: Source, dest: Path) -> list[Path]:
    stems = npy_stems(src.ids)
    files: list[Path] = []
    index = {"videos": {vid: {"labels": v["labels"], "split": v["split"], "duration": v.get("duration"), "files": {}}
                        for vid, v in zip(src.ids, src.videos)}, **_provenance(src)}
    for m, layouts in src.layouts.items():
        folder = dest / m
        if "pooled" in layouts:
            x, present = src.pooled(m)
            for vid, row, ok in zip(src.ids, x, present):
                index["videos"][vid]["files"].setdefault(m, None)
                if ok:
                    files.append(save_npy(folder / f"{stems[vid]}_pooled.npy", row))
                    index["videos"][vid]["files"][m] = {"pooled": str(files[-1].relative_to(dest))}
        if "sequence" in layouts:
            for vid, (seq, times) in zip(src.ids, src.sequences(m, src.ids)):
                index["videos"][vid]["files"].setdefault(m, None)
                if seq is None:
                    continue
                base = folder / stems[vid]
                new = [save_npy(f"{base}_{m}.npy", seq), save_npy(f"{base}_times.npy", times),
                       save_npy(f"{base}_timestamps_ms.npy", times[:, 0] * 1000.0)]
                files += new
                entry = index["videos"][vid]["files"][m] or {}
                entry.update(sequence=str(new[0].relative_to(dest)), times=str(new[1].relative_to(dest)))
                index["videos"][vid]["files"][m] = entry
    files.append(write_json(dest / "index.json", index))
    return files


# -- hdf5 ----------------------------------------------------------------------------------------
def h5_key(video_id: str) -> str:
    return urllib.parse.quote(video_id, safe="")


def export_hdf5(src: Source, dest: Path) -> list[Path]:
    import h5py

    if dest.suffix not in (".h5", ".hdf5"):
        dest = dest / "features.h5"
    with atomic_write(dest, "w+b") as f, h5py.File(f, "w") as h5:  # h5py reads back what it writes
        h5.create_dataset("video_ids", data=np.array(src.ids, dtype=object), dtype=h5py.string_dtype())
        h5.create_dataset("labels", data=np.array([json.dumps(v["labels"]) for v in src.videos], dtype=object),
                          dtype=h5py.string_dtype())
        h5.create_dataset("split", data=np.array([v["split"] or "" for v in src.videos], dtype=object),
                          dtype=h5py.string_dtype())
        h5.create_dataset("duration", data=np.array([np.nan if v.get("duration") is None else v["duration"]
                                                      for v in src.videos], np.float64))
        prov = _provenance(src)
        h5.attrs.update(source=prov["source"], exported_at=prov["exported_at"], versions=json.dumps(prov["versions"]))
        for m, layouts in src.layouts.items():
            g = h5.create_group(m)
            g.attrs["meta"] = json.dumps(src.meta[m], default=str)
            if "pooled" in layouts:
                x, present = src.pooled(m)
                x[~present] = np.nan  # missing is NaN + present=False, never a row of zeros
                g.create_dataset("pooled", data=x, compression="gzip", compression_opts=4)
                g.create_dataset("present", data=present)
            if "sequence" in layouts:
                seqs, times = g.create_group("sequence"), g.create_group("times")
                for vid, (seq, t) in zip(src.ids, src.sequences(m, src.ids)):
                    if seq is not None:
                        seqs.create_dataset(h5_key(vid), data=seq)
                        times.create_dataset(h5_key(vid), data=t)
    return [dest]


# -- parquet -------------------------------------------------------------------------------------
def parquet_schema(src: Source):
    import pyarrow as pa

    fields = [pa.field("video_id", pa.string(), nullable=False), pa.field("labels", pa.list_(pa.string())),
              pa.field("split", pa.string()), pa.field("duration", pa.float64())]
    for m, layouts in src.layouts.items():
        dims = src.store.modalities()[m].layouts
        if "pooled" in layouts:
            fields.append(pa.field(m, pa.list_(pa.float32(), dims["pooled"])))
        if "sequence" in layouts:
            fields.append(pa.field(f"{m}_sequence", pa.list_(pa.list_(pa.float32(), dims["sequence"]))))
            fields.append(pa.field(f"{m}_times", pa.list_(pa.list_(pa.float64(), 2))))
    meta = {META_KEY: json.dumps(_provenance(src), default=str).encode()}
    return pa.schema(fields, metadata=meta)


def _row_bytes(src: Source) -> float:
    """Rough uncompressed bytes per row (float32 pooled + sequence steps of the first videos)."""
    dims = src.store.modalities()
    total = 64.0
    sample = src.ids[:32]
    for m, layouts in src.layouts.items():
        if "pooled" in layouts:
            total += 4 * dims[m].layouts["pooled"]
        if "sequence" in layouts and sample:
            steps = [len(s) for s, _ in src.sequences(m, sample) if s is not None] or [1]
            total += (4 * dims[m].layouts["sequence"] + 16) * float(np.mean(steps))
    return total


def _fixed_lists(x: np.ndarray, present: np.ndarray, dtype):
    """(N, D) array -> fixed_size_list[D] column, null where not `present` (no Python lists)."""
    import pyarrow as pa

    values = pa.array(np.ascontiguousarray(x, dtype).ravel())
    return pa.FixedSizeListArray.from_arrays(values, x.shape[1], mask=pa.array(~np.asarray(present, bool)))


def _nested_lists(arrays: list[np.ndarray | None], dim: int, dtype):
    """[(T_i, dim) or None] -> list<fixed_size_list[dim]> column, null for None."""
    import pyarrow as pa

    lengths = [0 if a is None else len(a) for a in arrays]
    offsets = np.zeros(len(arrays) + 1, np.int32)
    offsets[1:] = np.cumsum(lengths)
    rows = [a for a in arrays if a is not None and len(a)]
    flat = np.concatenate(rows).astype(dtype) if rows else np.zeros((0, dim), dtype)
    inner = pa.FixedSizeListArray.from_arrays(pa.array(flat.ravel()), dim)
    return pa.ListArray.from_arrays(pa.array(offsets), inner, mask=pa.array([a is None for a in arrays]))


def _parquet_batch(src: Source, ids: list[str], rows: list[dict], schema):
    import pyarrow as pa

    cols = {"video_id": pa.array(ids, pa.string()), "labels": pa.array([v["labels"] for v in rows], pa.list_(pa.string())),
            "split": pa.array([v["split"] for v in rows], pa.string()),
            "duration": pa.array([v.get("duration") for v in rows], pa.float64())}
    dims = src.store.modalities()
    for m, layouts in src.layouts.items():
        if "pooled" in layouts:
            _, x, present = src.store.read_pooled(m, ids)
            cols[m] = _fixed_lists(x, present, np.float32)
        if "sequence" in layouts:
            pairs = list(src.sequences(m, ids))
            cols[f"{m}_sequence"] = _nested_lists([s for s, _ in pairs], dims[m].layouts["sequence"], np.float32)
            cols[f"{m}_times"] = _nested_lists([t for _, t in pairs], 2, np.float64)
    return pa.table([cols[name] for name in schema.names], schema=schema)


def export_parquet(src: Source, dest: Path, max_file_mb: float = 256) -> list[Path]:
    import pyarrow.parquet as pq

    schema = parquet_schema(src)
    per_file = max(1, int(max_file_mb * 1e6 // _row_bytes(src)))
    files = []
    for part, start in enumerate(range(0, max(len(src.ids), 1), per_file)):
        ids, rows = src.ids[start:start + per_file], src.videos[start:start + per_file]
        table = _parquet_batch(src, ids, rows, schema)
        path = dest / f"part-{part:05d}.parquet"
        with atomic_write(path, "wb") as f:
            pq.write_table(table, f, compression="zstd")
        files.append(path)
    for stale in sorted(dest.glob("part-*.parquet")):  # a former, larger export's extra parts
        if stale not in files:
            stale.unlink()
    return files


def is_parquet_export(path: str | Path) -> bool:
    path = Path(path)
    return path.suffix == ".parquet" or (path.is_dir() and any(path.glob("*.parquet")))


def import_parquet(path: str | Path, out_dir: str | Path, modalities: Sequence[str] | None = None) -> dict:
    """Read this project's Parquet export (a file or a folder of parts) into OUT's catalog and
    store: videos with labels / split, every pooled and sequence column (nulls stay missing)."""
    import pyarrow.parquet as pq

    path = Path(path)
    parts = [path] if path.is_file() else sorted(path.glob("*.parquet"))
    if not parts:
        raise NotFound(f"{path}: no .parquet files")
    schema = pq.read_schema(parts[0])
    prov = json.loads((schema.metadata or {}).get(META_KEY, b"{}"))
    if not prov:
        raise DataError(f"{parts[0]} is not a microvideo-pipeline export (no {META_KEY.decode()} schema metadata)")
    mods = {m: v["layouts"] for m, v in prov["modalities"].items() if not modalities or m in modalities}
    dims = {(m, layout): _list_size(schema, m if layout == "pooled" else f"{m}_sequence")
            for m, layouts in mods.items() for layout in layouts}
    out_dir = Path(out_dir)
    catalog = Catalog(out_dir / "catalog.sqlite")
    store = FeatureStore(out_dir, catalog)
    counts = {f"{m}/{layout}": 0 for m, layout in dims}
    rows = 0
    try:
        # One writer per layout: a video may have a modality's pooled vector and no sequence.
        writers = {key: store.writer(key[0], key[1], dim, meta={**prov["modalities"][key[0]]["meta"],
                                                                "imported_from": str(path)})
                   for key, dim in dims.items()}
        for part in parts:
            table = pq.read_table(part)
            ids = table.column("video_id").to_pylist()
            labels, splits = table.column("labels").to_pylist(), table.column("split").to_pylist()
            catalog.upsert_videos([VideoRow(v, labels=lab or [], split=s) for v, lab, s in zip(ids, labels, splits)])
            rows += len(ids)
            for (m, layout), w in writers.items():
                counts[f"{m}/{layout}"] += _import_column(w, table, m, layout, ids)
        for w in writers.values():
            w.flush()
    finally:
        catalog.close()
    return {"videos": rows, "features": counts, "source": str(path)}


def _list_size(schema, column: str) -> int:
    t = schema.field(column).type
    while getattr(t, "list_size", -1) in (-1, None):  # list<fixed_size_list[D]>: look inside
        t = t.value_type
    return int(t.list_size)


def _import_column(writer, table, m: str, layout: str, ids: list[str]) -> int:
    n = 0
    if layout == "pooled":
        for vid, p in zip(ids, table.column(m).to_pylist()):
            if p is not None:
                writer.add(vid, pooled=np.asarray(p, np.float32))
                n += 1
        return n
    for vid, s, t in zip(ids, table.column(f"{m}_sequence").to_pylist(), table.column(f"{m}_times").to_pylist()):
        if s is not None:
            seq = np.asarray(s, np.float32).reshape(len(s), writer.dims["sequence"])
            times = None if t is None else np.asarray(t, np.float64).reshape(-1, 2)
            writer.add(vid, sequence=seq, times=times if times is not None and np.isfinite(times).all() else None)
            n += 1
    return n
