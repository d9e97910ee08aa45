"""The feature store: float16 `.npy` shards per modality, located through the catalog.

    OUT/store/<modality>/pooled/shard-<id>.npy             (N, D)      one vector per video
    OUT/store/<modality>/sequence/shard-<id>.npy           (sum T, D)  all videos' steps, stacked
    OUT/store/<modality>/sequence/shard-<id>.offsets.npy   (N + 1,)    video i = rows off[i]:off[i+1]

The store is the only contract between producing features (extraction, importers, completion)
and using them (models). A writer buffers up to `shard_size` videos, writes each shard file to a
temp name and `os.replace`s it, then commits the shard, each video's (shard, row) and the stage
statuses in one catalog transaction. Shards are immutable once committed: re-extracting a video
points its catalog row at a newer shard. Files not in the catalog are leftovers of a killed run
and are removed by `collect_garbage` (run when a stage starts, under the output lock).
"""
from __future__ import annotations

import os
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from .catalog import Catalog, StageUpdate

LAYOUTS = ("pooled", "sequence")


@dataclass
class ModalityInfo:
    name: str
    layouts: dict[str, int]  # layout -> feature dim
    meta: dict


def _atomic_save(path: Path, array: np.ndarray) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "wb") as f:
        np.save(f, array)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


class ShardWriter:
    """Buffers one modality's features and commits them shard by shard.

    `add(video_id, pooled=..., sequence=...)` takes the layouts this writer was opened with;
    `mark_missing` / `mark_failed` record a video that has no such feature, committed with the
    next shard so statuses and data never disagree. Use as a context manager: leaving it flushes.
    """

    def __init__(self, store: "FeatureStore", modality: str, dims: dict[str, int] | None, meta: dict | None,
                 stage: str | None, flush_seconds: float | None):
        self.store, self.modality, self.meta, self.stage = store, modality, meta or {}, stage
        self.flush_seconds = flush_seconds
        self.dims: dict[str, int] | None = None
        self._data: dict[str, list[np.ndarray]] = {}
        self._ids: list[str] = []
        self._updates: list[StageUpdate] = []
        self._since = time.monotonic()
        self.committed = 0
        if dims:
            self._set_dims(dims)

    def _set_dims(self, dims: dict[str, int]) -> None:
        for layout in dims:
            if layout not in LAYOUTS:
                raise ValueError(f"unknown layout {layout!r}; use one of {LAYOUTS}")
        self.dims = {layout: int(d) for layout, d in dims.items()}
        self._data = {layout: [] for layout in dims}
        for layout, dim in self.dims.items():
            self.store.record(("modality", self.modality, layout, dim, self.meta))

    def add(self, video_id: str, array: np.ndarray | None = None, **layouts: np.ndarray) -> None:
        if array is not None:
            if self.dims is None or len(self.dims) != 1:
                raise TypeError("pass the layouts by name (pooled=..., sequence=...)")
            layouts = {next(iter(self.dims)): array}
        if self.dims is None:  # opened without dims: the first video's arrays decide them
            self._set_dims({layout: np.shape(v)[-1] for layout, v in layouts.items()})
        if set(layouts) != set(self.dims):
            raise ValueError(f"{self.modality}: expected layouts {sorted(self.dims)}, got {sorted(layouts)}")
        for layout, value in layouts.items():
            value = np.asarray(value)
            want = 1 if layout == "pooled" else 2
            if value.ndim != want or value.shape[-1] != self.dims[layout]:
                raise ValueError(f"{self.modality}/{layout}: expected {'(D,)' if want == 1 else '(T, D)'} with "
                                 f"D={self.dims[layout]}, got shape {value.shape}")
            if not np.all(np.isfinite(value)):
                raise ValueError(f"{self.modality}/{layout} for {video_id}: non-finite values")
            self._data[layout].append(value.astype(self.store.dtype))
        self._ids.append(video_id)
        if self.stage:
            self._updates.append(StageUpdate(video_id, self.stage, "done"))
        self._maybe_flush()

    def mark_missing(self, video_id: str, reason: str) -> None:
        self._status(video_id, "missing", reason)

    def mark_failed(self, video_id: str, reason: str) -> None:
        self._status(video_id, "failed", reason)

    def _status(self, video_id: str, status: str, reason: str) -> None:
        if not self.stage:
            raise RuntimeError("open the writer with stage=... to record statuses")
        self._updates.append(StageUpdate(video_id, self.stage, status, reason))
        self._maybe_flush()

    def _maybe_flush(self) -> None:
        full = len(self._ids) >= self.store.shard_size
        old = self.flush_seconds is not None and time.monotonic() - self._since >= self.flush_seconds
        if full or (old and (self._ids or self._updates)):
            self.flush()

    def flush(self) -> None:
        self._since = time.monotonic()
        if not self._ids:
            if self._updates:
                self.store.record(("stages", self._updates))
                self._updates = []
            return
        shard_id = uuid.uuid4().hex[:12]
        files = {}
        for layout, rows in self._data.items():
            folder = self.store.root / self.modality / layout
            folder.mkdir(parents=True, exist_ok=True)
            path = folder / f"shard-{shard_id}.npy"
            if layout == "pooled":
                array = np.stack(rows)
            else:
                array = np.concatenate(rows) if rows else np.zeros((0, self.dims[layout]), self.store.dtype)
                offsets = np.zeros(len(rows) + 1, np.int64)
                offsets[1:] = np.cumsum([len(r) for r in rows])
                _atomic_save(path.with_suffix(".offsets.npy"), offsets)
            _atomic_save(path, array)
            files[layout] = (str(path.relative_to(self.store.root)), len(rows), self.dims[layout])
        self.store.record(("shard", shard_id, self.modality, files,
                           [(vid, i) for i, vid in enumerate(self._ids)], self._updates))
        self.committed += len(self._ids)
        self._ids, self._updates = [], []
        self._data = {layout: [] for layout in self.dims}

    def __enter__(self) -> "ShardWriter":
        return self

    def __exit__(self, exc_type, *_) -> None:
        # Commit what was finished even when the caller raised: it is complete work.
        self.flush()


class FeatureStore:
    """`catalog=None` makes a worker-side store (e.g. a Ray actor): shard files are written the
    same way, but what would be committed is kept in `pending`; the driver, the one catalog
    writer, applies it with `apply(pending)`. Files whose records never arrive are garbage."""

    def __init__(self, out_dir: str | Path, catalog: Catalog | None, shard_size: int = 256, dtype: str = "float16",
                 flush_seconds: float | None = None):
        self.out_dir = Path(out_dir)
        self.root = self.out_dir / "store"
        self.catalog = catalog
        self.pending: list[tuple] = []
        self.shard_size = int(shard_size)
        self.dtype = np.dtype(dtype)
        self.flush_seconds = flush_seconds
        self._mmaps: dict[str, np.ndarray] = {}

    def writer(self, modality: str, layout: str | None = None, dim: int | None = None, meta: dict | None = None,
               *, dims: dict[str, int] | None = None, stage: str | None = None) -> ShardWriter:
        """`writer("rgb", "pooled", 1024, meta)`, `writer("visual", dims={"pooled": 2048,
        "sequence": 2048}, meta=..., stage="extract:visual")`, or without dims: then the first
        `add(video_id, pooled=..., sequence=...)` fixes the layouts and dims."""
        if dims is None and layout is not None:
            if dim is None:
                raise TypeError("give layout and dim, or dims={layout: dim}")
            dims = {layout: dim}
        return ShardWriter(self, modality, dims, meta, stage, self.flush_seconds)

    def record(self, item: tuple) -> None:
        """Commit one writer record to the catalog now, or keep it for the driver."""
        if self.catalog is None:
            self.pending.append(item)
        else:
            self.apply([item])

    def apply(self, items: list[tuple]) -> None:
        for item in items:
            kind, *args = item
            if kind == "modality":
                self.catalog.register_modality(*args)
            elif kind == "stages":
                self.catalog.set_stages(*args)
            elif kind == "shard":
                self.catalog.commit_shard(*args)
            else:
                raise ValueError(f"unknown store record {kind!r}")

    # -- reading ----------------------------------------------------------------------------
    def modalities(self) -> dict[str, ModalityInfo]:
        out: dict[str, ModalityInfo] = {}
        for modality, layout, dim, meta in self.catalog.modality_rows():
            info = out.setdefault(modality, ModalityInfo(modality, {}, meta))
            info.layouts[layout] = dim
        return out

    def _array(self, rel: str) -> np.ndarray:
        if rel not in self._mmaps:
            self._mmaps[rel] = np.load(self.root / rel, mmap_mode="r")
        return self._mmaps[rel]

    def _locations(self, modality: str, layout: str) -> dict[str, tuple[str, int]]:
        return {vid: (file, row) for vid, file, row in self.catalog.feature_locations(modality, layout)}

    def _dim(self, modality: str, layout: str) -> int:
        info = self.modalities().get(modality)
        if info is None or layout not in info.layouts:
            raise KeyError(f"the store has no {layout} features for modality {modality!r}; "
                           f"it has {sorted(self.modalities())}")
        return info.layouts[layout]

    def read_pooled(self, modality: str, video_ids: Sequence[str] | None = None):
        """(video_ids, float16 [N, D], present bool [N]). Without `video_ids`: every video that
        has the feature. With them: that order, zeros and present=False where missing."""
        dim = self._dim(modality, "pooled")
        where = self._locations(modality, "pooled")
        ids = list(where) if video_ids is None else list(video_ids)
        out = np.zeros((len(ids), dim), self.dtype)
        present = np.zeros(len(ids), bool)
        by_file: dict[str, list[tuple[int, int]]] = {}
        for i, vid in enumerate(ids):
            if vid in where:
                file, row = where[vid]
                by_file.setdefault(file, []).append((i, row))
        for file, pairs in by_file.items():
            dst, src = np.array(pairs).T
            out[dst] = self._array(file)[src]
            present[dst] = True
        return ids, out, present

    def read_sequences(self, modality: str, video_ids: Sequence[str]) -> list[np.ndarray | None]:
        self._dim(modality, "sequence")
        where = self._locations(modality, "sequence")
        out: list[np.ndarray | None] = []
        for vid in video_ids:
            if vid not in where:
                out.append(None)
                continue
            out.append(self._slice(*where[vid]))
        return out

    def _slice(self, file: str, row: int) -> np.ndarray:
        """Row `row` of a sequence shard: its steps, via the shard's offsets."""
        offsets = self._array(file.replace(".npy", ".offsets.npy"))
        return np.asarray(self._array(file)[offsets[row]:offsets[row + 1]])

    # -- maintenance ------------------------------------------------------------------------
    def collect_garbage(self) -> list[Path]:
        """Remove shard files the catalog does not know (written by a run killed before its
        commit) and shards whose rows have all been superseded by newer ones."""
        if not self.root.exists():
            return []
        self.catalog.drop_unreferenced_shards()
        known = self.catalog.shard_files()
        known |= {k.replace(".npy", ".offsets.npy") for k in known}
        removed = []
        for path in self.root.rglob("*"):
            if path.is_file() and (str(path.relative_to(self.root)) not in known or path.name.startswith(".")):
                path.unlink()
                removed.append(path)
        return removed


class FeatureDataset(torch.utils.data.Dataset):
    """Features of `video_ids` for models: pooled modalities are read into memory once, sequences
    are sliced from memory-mapped shards per item. Missing features give zeros and present=False.

    For a completed modality ("visual@completed", written by the complete stage) `observed` says
    which rows were really observed, so a model can still tell imputed from measured values.
    """

    def __init__(self, store: FeatureStore, video_ids: Sequence[str], pooled: Sequence[str] = (),
                 sequence: Sequence[str] = (), labels: np.ndarray | None = None):
        self.store, self.video_ids = store, list(video_ids)
        self.pooled_names, self.sequence_names = list(pooled), list(sequence)
        if labels is not None and len(labels) != len(self.video_ids):
            raise ValueError(f"{len(labels)} label rows for {len(self.video_ids)} videos")
        self.labels = None if labels is None else np.asarray(labels, np.float32)
        self.pooled, self.present, self.observed = {}, {}, {}
        infos = store.modalities()
        for m in self.pooled_names:
            _, self.pooled[m], self.present[m] = store.read_pooled(m, self.video_ids)
        self.seq_where = {}
        self.seq_dims = {}
        for m in self.sequence_names:
            self.seq_dims[m] = store._dim(m, "sequence")
            self.seq_where[m] = store._locations(m, "sequence")
            present = np.array([vid in self.seq_where[m] for vid in self.video_ids])
            self.present[m] = self.present[m] & present if m in self.present else present
        for m in self.present:
            source = infos[m].meta.get("observed_mask_of") if m in infos else None
            if source:
                _, _, self.observed[m] = store.read_pooled(source, self.video_ids)

    def __len__(self) -> int:
        return len(self.video_ids)

    def __getitem__(self, i: int) -> dict:
        vid = self.video_ids[i]
        item = {"video_id": vid, "pooled": {}, "sequence": {}, "present": {}, "observed": {}}
        for m in self.pooled_names:
            item["pooled"][m] = torch.from_numpy(self.pooled[m][i].astype(np.float32))
        for m in self.sequence_names:
            if vid in self.seq_where[m]:
                file, row = self.seq_where[m][vid]
                seq = self.store._slice(file, row)
                item["sequence"][m] = torch.from_numpy(seq.astype(np.float32))
            else:
                item["sequence"][m] = torch.zeros(0, self.seq_dims[m])
        for m, present in self.present.items():
            item["present"][m] = bool(present[i])
            item["observed"][m] = bool(self.observed[m][i]) if m in self.observed else bool(present[i])
        if self.labels is not None:
            item["labels"] = torch.from_numpy(self.labels[i])
        return item


def collate_batch(items: list[dict]) -> dict:
    """Stack pooled vectors, zero-pad sequences to the longest (at least one step), and give
    lengths and presence masks per modality."""
    batch = {"video_ids": [it["video_id"] for it in items], "pooled": {}, "sequence": {}, "lengths": {},
             "present": {}, "observed": {}}
    first = items[0]
    for m in first["pooled"]:
        batch["pooled"][m] = torch.stack([it["pooled"][m] for it in items])
    for m in first["sequence"]:
        seqs = [it["sequence"][m] for it in items]
        lengths = torch.tensor([len(s) for s in seqs], dtype=torch.long)
        padded = torch.zeros(len(items), max(1, int(lengths.max())), seqs[0].shape[-1])
        for j, s in enumerate(seqs):
            padded[j, : len(s)] = s
        batch["sequence"][m], batch["lengths"][m] = padded, lengths
    for key in ("present", "observed"):
        for m in first[key]:
            batch[key][m] = torch.tensor([it[key][m] for it in items], dtype=torch.bool)
    if "labels" in first:
        batch["labels"] = torch.stack([it["labels"] for it in items])
    return batch
