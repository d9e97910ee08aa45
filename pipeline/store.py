"""The feature store: float16 `.npy` shards per modality, located through the catalog.

    OUT/store/<modality>/pooled/shard-<id>.npy             (N, D)      one vector per video
    OUT/store/<modality>/sequence/shard-<id>.npy           (sum T, D)  all videos' steps, stacked
    OUT/store/<modality>/sequence/shard-<id>.offsets.npy   (N + 1,)    video i = rows off[i]:off[i+1]
    OUT/store/<modality>/sequence/shard-<id>.times.npy     (sum T, 2)  float64 start/end seconds per row

The store is the only contract between producing features (extraction, importers, completion)
and using them (models). A writer buffers up to `shard_size` videos, writes each shard file
atomically (`pipeline.io`), then commits the shard (with the sha256 of every file, its dtype and
shape), each video's (shard, row) and the stage statuses in one catalog transaction. Shards are
immutable once committed: re-extracting a video points its catalog row at a newer shard. Files
not in the catalog are leftovers of a killed run and are removed by `collect_garbage` (run when
a stage starts, under the output lock). `pipeline.verify` checks all of this after the fact.

One timeline: every sequence row carries its start and end time in seconds (`times`, NaN where
the producer did not know them). `read_aligned` resamples several sequence modalities onto one
grid of `step_s` seconds (mean over the overlap, presence per step), so visual, audio and text
steps that belong together line up. The torch Dataset over the store is `pipeline.dataset`.
"""
from __future__ import annotations

import errno
import hashlib
import io
import sqlite3
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from . import io as files
from .catalog import Catalog, StageUpdate
from .timeline import align, check_times

LAYOUTS = ("pooled", "sequence")
COMPANIONS = (".offsets.npy", ".times.npy")  # files beside a sequence shard


@dataclass
class ModalityInfo:
    name: str
    layouts: dict[str, int]  # layout -> feature dim
    meta: dict


class StoreWriteError(OSError):
    """A shard or its catalog record could not be written (disk full, read-only folder, ...).
    Nothing of the failed shard is committed; every earlier shard is, so a rerun resumes."""


def write_failure(path, exc: BaseException) -> StoreWriteError:
    """The one-line error for a failed store write, naming the file and what to do."""
    code = getattr(exc, "errno", None)
    if code == errno.ENOSPC or "disk is full" in str(exc):
        why = "the disk is full (ENOSPC); free space"
    elif code in (errno.EROFS, errno.EACCES, errno.EPERM) or "readonly" in str(exc):
        why = "the output folder is read-only; make it writable or use another --out"
    else:
        why = f"{type(exc).__name__}: {exc}; fix that"
    err = StoreWriteError(code or errno.EIO, f"cannot write {path}: {why}, then rerun the same command: "
                                             "committed videos are kept and the run resumes after them")
    err.__cause__ = exc
    return err


def _npy_bytes(array: np.ndarray) -> tuple[bytes, str]:
    buf = io.BytesIO()
    np.save(buf, array)
    data = buf.getvalue()
    return data, hashlib.sha256(data).hexdigest()


class ShardWriter:
    """Buffers one modality's features and commits them shard by shard.

    `add(video_id, pooled=..., sequence=..., times=...)` takes the layouts this writer was opened
    with (`times`: (T, 2) seconds of the sequence rows; without them they are stored as unknown);
    `mark_missing` / `mark_failed` record a video that has no such feature, committed with the
    next shard so statuses and data never disagree. Use as a context manager: leaving it flushes.
    """

    def __init__(self, store: "FeatureStore", modality: str, dims: dict[str, int] | None, meta: dict | None,
                 stage: str | None, flush_seconds: float | None):
        self.store, self.modality, self.meta, self.stage = store, modality, meta or {}, stage
        self.flush_seconds = flush_seconds
        self.dims: dict[str, int] | None = None
        self._data: dict[str, list[np.ndarray]] = {}
        self._times: list[np.ndarray] = []
        self._segments: dict[str, list] = {}
        self._info: dict[str, dict] = {}
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

    def add(self, video_id: str, array: np.ndarray | None = None, *, times: np.ndarray | None = None,
            segments: list | None = None, info: dict | None = None, **layouts: np.ndarray) -> None:
        if array is not None:
            if self.dims is None or len(self.dims) != 1:
                raise TypeError("pass the layouts by name (pooled=..., sequence=...)")
            layouts = {next(iter(self.dims)): array}
        if self.dims is None:  # opened without dims: the first video's arrays decide them
            self._set_dims({layout: np.shape(v)[-1] for layout, v in layouts.items()})
        if set(layouts) != set(self.dims):
            raise ValueError(f"{self.modality}: expected layouts {sorted(self.dims)}, got {sorted(layouts)}")
        checked = {}
        for layout, value in layouts.items():
            value = np.asarray(value)
            want = 1 if layout == "pooled" else 2
            if value.ndim != want or value.shape[-1] != self.dims[layout]:
                raise ValueError(f"{self.modality}/{layout}: expected {'(D,)' if want == 1 else '(T, D)'} with "
                                 f"D={self.dims[layout]}, got shape {value.shape}")
            if not np.all(np.isfinite(value)):
                raise ValueError(f"{self.modality}/{layout} for {video_id}: non-finite values")
            checked[layout] = value.astype(self.store.dtype)
        if "sequence" in checked:
            n = len(checked["sequence"])
            checked_times = (np.full((n, 2), np.nan) if times is None
                             else check_times(times, n, f"{self.modality}/sequence for {video_id}"))
            self._times.append(checked_times)
        for layout, value in checked.items():
            self._data[layout].append(value)
        self._ids.append(video_id)
        if segments is not None:   # text the extractor made (a transcript): committed with the shard
            self._segments[video_id] = [(float(a), float(b), str(t)) for a, b, t in segments]
        if info:                   # per-video facts the extractor found (ASR: the detected language)
            self._info[video_id] = dict(info)
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

    def _drop_buffer(self) -> None:
        self._ids, self._updates, self._times, self._segments, self._info = [], [], [], {}, {}
        self._data = {layout: [] for layout in self.dims or {}}

    def flush(self) -> None:
        """Write the buffered shard and commit it. A failed write (full disk, read-only folder)
        raises StoreWriteError and drops the buffer: those videos stay pending in the catalog,
        so the next run redoes exactly them; the half-written files are garbage. After it, no
        writer of the store writes again (the error is not raised twice)."""
        self._since = time.monotonic()
        if self.store.write_error is not None:  # the run is stopping on that error: write no more
            self._drop_buffer()
            return
        try:
            if not self._ids:
                if self._updates:
                    self.store.record(("stages", self._updates))
                return
            shard_id = uuid.uuid4().hex[:12]
            files_ = {layout: self._write_layout(layout, shard_id) for layout in self._data}
            self.store.record(("shard", shard_id, self.modality, files_,
                               [(vid, i) for i, vid in enumerate(self._ids)], self._updates, self._segments, self._info))
            self.committed += len(self._ids)
        except (OSError, sqlite3.OperationalError) as e:
            if isinstance(e, StoreWriteError):
                self.store.write_error = e
                raise
            self.store.write_error = write_failure(getattr(e, "filename", None) or self.store.root / self.modality, e)
            raise self.store.write_error from e
        finally:
            self._drop_buffer()

    def _write_layout(self, layout: str, shard_id: str) -> dict:
        rows = self._data[layout]
        path = self.store.root / self.modality / layout / f"shard-{shard_id}.npy"
        aux = {}
        if layout == "pooled":
            array = np.stack(rows)
        else:
            array = np.concatenate(rows) if rows else np.zeros((0, self.dims[layout]), self.store.dtype)
            offsets = np.zeros(len(rows) + 1, np.int64)
            offsets[1:] = np.cumsum([len(r) for r in rows])
            times = np.concatenate(self._times) if self._times else np.zeros((0, 2))
            for suffix, companion in zip(COMPANIONS, (offsets, times)):
                rel, sha = self._save(path.with_suffix(suffix), companion)
                aux[rel] = sha
        rel, sha = self._save(path, array)
        return {"file": rel, "rows": len(rows), "dim": self.dims[layout], "dtype": str(array.dtype),
                "sha256": sha, "aux": aux}

    def _save(self, path: Path, array: np.ndarray) -> tuple[str, str]:
        data, sha = _npy_bytes(array)
        try:
            files.write_bytes(path, data)
        except OSError as e:
            raise write_failure(path, e) from e
        return str(path.relative_to(self.store.root)), sha

    def __enter__(self) -> "ShardWriter":
        return self

    def __exit__(self, exc_type, *_) -> None:
        # Commit what was finished even when the caller raised: it is complete work. After a
        # failed write the buffer is already dropped, so this does not retry it.
        self.flush()


class FeatureStore:
    """`catalog=None` makes a worker-side store (e.g. a Ray actor): shard files are written the
    same way, but what would be committed is kept in `pending`; the driver, the one catalog
    writer, applies it with `apply(pending)`. Files whose records never arrive are garbage.
    A store over a read-only catalog (`Catalog(path, readonly=True)`) reads only."""

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
        # The first failed write (StoreWriteError): later flushes of any writer of this store
        # write nothing, so the run stops on that one error and its videos stay pending.
        self.write_error: StoreWriteError | None = None

    def writer(self, modality: str, layout: str | None = None, dim: int | None = None, meta: dict | None = None,
               *, dims: dict[str, int] | None = None, stage: str | None = None) -> ShardWriter:
        """`writer("rgb", "pooled", 1024, meta)`, `writer("visual", dims={"pooled": 2048,
        "sequence": 2048}, meta=..., stage="extract:visual")`, or without dims: then the first
        `add(video_id, pooled=..., sequence=..., times=...)` fixes the layouts and dims."""
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
            try:
                if kind == "modality":
                    self.catalog.register_modality(*args)
                elif kind == "stages":
                    self.catalog.set_stages(*args)
                elif kind == "shard":
                    self.catalog.commit_shard(*args)
                else:
                    raise ValueError(f"unknown store record {kind!r}")
            except sqlite3.OperationalError as e:  # disk full / read-only: the transaction rolled back
                raise write_failure(self.catalog.path, e) from e

    # -- reading ----------------------------------------------------------------------------
    def modalities(self) -> dict[str, ModalityInfo]:
        out: dict[str, ModalityInfo] = {}
        for modality, layout, dim, meta in self.catalog.modality_rows():
            info = out.setdefault(modality, ModalityInfo(modality, {}, meta))
            info.layouts[layout] = dim
        return out

    def dim(self, modality: str, layout: str) -> int:
        """Feature dim of `modality`/`layout`; KeyError naming what the store has otherwise."""
        infos = self.modalities()
        if modality not in infos or layout not in infos[modality].layouts:
            raise KeyError(f"the store has no {layout} features for modality {modality!r}; "
                           f"it has {sorted(infos)}")
        return infos[modality].layouts[layout]

    def locations(self, modality: str, layout: str) -> dict[str, tuple[str, int]]:
        """{video_id: (shard file, row)} of every live video with this feature (committed only)."""
        return {vid: (file, row) for vid, file, row in self.catalog.feature_locations(modality, layout)}

    def _array(self, rel: str) -> np.ndarray:
        if rel not in self._mmaps:
            self._mmaps[rel] = np.load(self.root / rel, mmap_mode="r")
        return self._mmaps[rel]

    def read_pooled(self, modality: str, video_ids: Sequence[str] | None = None):
        """(video_ids, float16 [N, D], present bool [N]). Without `video_ids`: every video that
        has the feature. With them: that order, zeros and present=False where missing."""
        dim = self.dim(modality, "pooled")
        where = self.locations(modality, "pooled")
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
        self.dim(modality, "sequence")
        where = self.locations(modality, "sequence")
        return [self.sequence_at(where[vid]) if vid in where else None for vid in video_ids]

    def read_times(self, modality: str, video_ids: Sequence[str]) -> list[np.ndarray | None]:
        """(T, 2) start/end seconds of each video's sequence rows (NaN where not recorded)."""
        self.dim(modality, "sequence")
        where = self.locations(modality, "sequence")
        return [self.times_at(where[vid]) if vid in where else None for vid in video_ids]

    def sequence_at(self, location: tuple[str, int]) -> np.ndarray:
        """The steps of one video, from `locations()`: rows off[row]:off[row+1] of its shard."""
        file, row = location
        offsets = self._array(file.replace(".npy", ".offsets.npy"))
        return np.asarray(self._array(file)[offsets[row]:offsets[row + 1]])

    def times_at(self, location: tuple[str, int]) -> np.ndarray:
        file, row = location
        offsets = self._array(file.replace(".npy", ".offsets.npy"))
        n = int(offsets[row + 1] - offsets[row])
        if not (self.root / file.replace(".npy", ".times.npy")).exists():  # a shard older than times
            return np.full((n, 2), np.nan)
        return np.asarray(self._array(file.replace(".npy", ".times.npy"))[offsets[row]:offsets[row + 1]])

    def read_aligned(self, modalities: Sequence[str], video_ids: Sequence[str], step_s: float) -> list[dict]:
        """Every requested sequence modality of each video on one grid of `step_s` seconds:
        [{"times": (K, 2), "sequence": {m: float32 (K, D)}, "present": {m: bool (K,)}}], K
        covering the latest row end of any modality of that video (see `align`)."""
        where = {m: self.locations(m, "sequence") for m in modalities}
        dims = {m: self.dim(m, "sequence") for m in modalities}
        out = []
        for vid in video_ids:
            rows = {m: (self.sequence_at(where[m][vid]), self.times_at(where[m][vid]))
                    for m in modalities if vid in where[m]}
            out.append(align(rows, dims, step_s, where=vid))
        return out

    # -- maintenance ------------------------------------------------------------------------
    def collect_garbage(self) -> list[Path]:
        """Remove shard files the catalog does not know (written by a run killed before its
        commit) and shards whose rows have all been superseded by newer ones."""
        if not self.root.exists():
            return []
        self.catalog.drop_unreferenced_shards()
        known = self.catalog.shard_files()
        known |= {k.replace(".npy", suffix) for k in known for suffix in COMPANIONS}
        removed = []
        for path in self.root.rglob("*"):
            if path.is_file() and (str(path.relative_to(self.root)) not in known or files.is_temp(path)
                                   or path.name.startswith(".")):
                path.unlink()
                removed.append(path)
        return removed

