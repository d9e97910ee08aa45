"""Importers: precomputed features (made elsewhere) into the feature store, so every model of
the project trains on them exactly as on features it extracted itself.

* `import_yt8m`: YouTube-8M TFRecord shards, read without TensorFlow (pipeline/tfrecord.py).
  Video-level `Example`s give pooled modalities `rgb` (1,024) and `audio` (128); frame-level
  `SequenceExample`s give per-frame sequences (quantized uint8, dequantized as the YouTube-8M
  starter code does) plus their mean as the pooled vector. Labels are multi-hot over the
  vocabulary, named from `vocabulary.csv`.
* `import_features`: generic `.npz` / `.npy` / CSV features described by a small YAML spec
  (see configs/importers/mosi.yaml): which file holds which split, which key/columns hold each
  modality, the id and the label.

Importers create catalog rows for videos that have no file (`path=None`), then write features
with `FeatureStore.writer`; the store is the only thing models read.
"""
from __future__ import annotations

import csv
import fnmatch
import random
import re
import time
from pathlib import Path
from typing import Iterable

import numpy as np
from omegaconf import OmegaConf

from .catalog import Catalog, VideoRow
from .errors import DataError
from .config import to_dict, versions
from .store import FeatureStore
from .timeline import sequence_times
from .tfrecord import CorruptRecord, TFRecordError, parse_sequence_example, read_records

ON_ERROR = ("raise", "skip_record", "skip_file")


# -- YouTube-8M -----------------------------------------------------------------------------------

def read_vocabulary(path: str | Path) -> list[str]:
    """Class names indexed by label id from YouTube-8M's vocabulary.csv (columns Index, Name).
    Ids without a name (the csv has a few blank ones) become "label_<id>" so names stay unique."""
    with open(path, newline="", encoding="utf-8") as f:
        rows = {int(r["Index"]): (r.get("Name") or "").strip() for r in csv.DictReader(f)}
    return [rows.get(i) or f"label_{i}" for i in range(max(rows) + 1)]


def dequantize(x: np.ndarray, max_value: float = 2.0, min_value: float = -2.0) -> np.ndarray:
    """uint8 -> float32, as `utils.Dequantize` of the YouTube-8M starter code: the centre of the
    quantization bin, value * range/255 + range/512 + min."""
    span = max_value - min_value
    return x.astype(np.float32) * (span / 255.0) + (span / 512.0 + min_value)


def _yt8m_options(cfg) -> dict:
    """`importers.yt8m` of the run's config (configs/importers/yt8m.yaml, then overrides)."""
    if cfg is None:
        from .config import load_config

        cfg = load_config()
    return to_dict(cfg.importers.yt8m)


def _decode_yt8m(context: dict, lists: dict, opts: dict) -> tuple[str, list[int], dict, dict]:
    """One record -> (video id, label ids, {modality: pooled}, {modality: sequence})."""
    if "id" not in context or not context["id"]:
        raise DataError("no 'id' feature")
    video_id = context["id"][0].decode("utf-8")
    labels = [int(x) for x in context.get("labels", [])]
    pooled, sequence = {}, {}
    if lists:  # frame-level SequenceExample: one quantized uint8 vector per frame
        for modality, name in opts["frame_features"].items():
            frames = lists.get(name)
            if not frames:
                raise DataError(f"no frame feature {name!r}")
            q = np.stack([np.frombuffer(f[0], np.uint8) for f in frames])
            sequence[modality] = dequantize(q, opts["max_quantized_value"], opts["min_quantized_value"])
            pooled[modality] = sequence[modality].mean(0)
    else:      # video-level Example: float lists
        for modality, name in opts["video_features"].items():
            if name not in context:
                raise DataError(f"no feature {name!r}")
            pooled[modality] = np.asarray(context[name], np.float32)
    return video_id, labels, pooled, sequence


def _read_yt8m_file(path: str, on_error: str, opts: dict, names: list[str], seen: set, summary: dict,
                    report) -> tuple[list[VideoRow], list[tuple], int]:
    """(catalog rows, (video_id, pooled, sequence) features, records read) of one shard; `names`
    grows with label ids past the vocabulary, `report` gets every corrupt record."""
    rows, feats, read = [], [], 0
    for offset, data in read_records(path, on_error, report=report):
        read += 1
        try:
            video_id, label_ids, pooled, sequence = _decode_yt8m(*parse_sequence_example(data), opts)
        except ValueError as e:
            bad = CorruptRecord(path, offset, f"unusable record: {e}")
            if on_error == "raise":
                raise TFRecordError(bad) from e
            report(bad)
            if on_error == "skip_file":
                break
            continue
        if label_ids and max(label_ids) >= len(names):  # ids past the vocabulary keep a name
            names += [f"label_{i}" for i in range(len(names), max(label_ids) + 1)]
        summary["duplicates"] += video_id in seen
        seen.add(video_id)
        rows.append(VideoRow(video_id, labels=[names[i] for i in label_ids], split=summary["split"]))
        feats.append((video_id, pooled, sequence))
    return rows, feats, read


def _write_yt8m(store, writers: dict, feats: list[tuple], meta: dict, summary: dict) -> None:
    """Hand one shard's features to the writers (one per modality, opened on first sight)."""
    for video_id, pooled, sequence in feats:
        for modality, vector in pooled.items():
            if modality not in writers:
                dims = {"pooled": vector.shape[-1]}
                if modality in sequence:
                    dims["sequence"] = sequence[modality].shape[-1]
                writers[modality] = store.writer(modality, dims=dims, meta=meta)
                summary["layouts"].update(dims)
            layouts, times = {"pooled": vector}, None
            if modality in sequence:  # YouTube-8M frame features: one per second
                layouts["sequence"] = sequence[modality]
                times = sequence_times(len(sequence[modality]), fps=1.0)
            writers[modality].add(video_id, times=times, **layouts)


def import_yt8m(paths: Iterable[str | Path], out_dir: str | Path, vocabulary: str | Path | None = None,
                split: str | None = None, cfg=None, on_error: str | None = None) -> dict:
    """Import YouTube-8M TFRecord shards into OUT's store; returns a summary.

    Every problem (bad CRC, truncated record, unparseable or incomplete Example) is listed in
    `summary["corrupt_records"]` as "file @ byte offset: reason". `on_error` (default from
    configs/importers/yt8m.yaml: skip_file) decides what happens next: "raise" stops the import,
    "skip_record" goes on with the next record, "skip_file" with the next file. Records read
    before a problem are kept. The CLI exits non-zero when anything was reported.
    """
    opts = _yt8m_options(cfg)
    on_error = on_error or opts["on_error"]
    if on_error not in ON_ERROR:
        raise DataError(f"on_error must be one of {ON_ERROR}, got {on_error!r}")
    out_dir = Path(out_dir)
    cat, store = _open(cfg, out_dir)
    names = read_vocabulary(vocabulary) if vocabulary else list(cat.get_meta("class_names") or [])
    started = time.perf_counter()
    problems: list[CorruptRecord] = []
    writers: dict = {}
    seen: set[str] = set()
    summary = {"files": 0, "records": 0, "videos": 0, "duplicates": 0, "split": split, "layouts": set(),
               "per_file": {}}
    meta = {"source": "youtube-8m", "importer": "pipeline.importers.import_yt8m",
            "options": opts, "versions": versions()}
    try:
        for path in map(str, paths):
            rows, feats, read = _read_yt8m_file(path, on_error, opts, names, seen, summary, problems.append)
            cat.upsert_videos(rows)  # rows first: the store's feature rows point at them
            _write_yt8m(store, writers, feats, meta, summary)
            summary["files"] += 1
            summary["records"] += read
            summary["per_file"][path] = len(rows)
    finally:
        for w in writers.values():  # commit what was read, even when an error stops the import
            w.flush()
        if names:
            cat.set_class_names(names)
        cat.close()
    summary.update(videos=len(seen), layouts=sorted(summary["layouts"]), classes=len(names),
                   modalities={m: w.dims for m, w in writers.items()},
                   corrupt_records=[str(p) for p in problems], on_error=on_error,
                   seconds=round(time.perf_counter() - started, 2))
    return summary


# -- generic .npz / .npy / CSV --------------------------------------------------------------------

def _load_table(entry: dict, root: Path) -> dict[str, np.ndarray]:
    """The named arrays of one spec entry: an .npz's arrays, a CSV's columns, and/or .npy files
    listed under `arrays:` (name -> file)."""
    table: dict[str, np.ndarray] = {}
    path = entry.get("path")
    if path:
        path = root / path
        if path.suffix == ".npz":
            with np.load(path, allow_pickle=False) as z:
                table.update({k: z[k] for k in z.files})
        elif path.suffix == ".csv":
            with open(path, newline="", encoding="utf-8") as f:
                reader = csv.reader(f)
                header = next(reader)
                cols = list(zip(*reader)) or [()] * len(header)
            for name, values in zip(header, cols):
                table[name] = _column(values)
        elif path.suffix == ".npy":
            table[path.stem] = np.load(path, allow_pickle=False)
        else:
            raise DataError(f"{path}: unsupported file type (use .npz, .npy or .csv)")
    for name, file in (entry.get("arrays") or {}).items():
        table[name] = np.load(root / file, allow_pickle=False)
    return table


def _column(values: tuple[str, ...]) -> np.ndarray:
    """A CSV column as float32 when every cell is a number (empty cells -> NaN = missing), else str."""
    try:
        return np.array([float(v) if v.strip() else np.nan for v in values], np.float32)
    except ValueError:
        return np.array(values, dtype=str)


def _select(table: dict[str, np.ndarray], selector, what: str) -> np.ndarray:
    """[N, D] float32 from a key (2-D array or 1-D column), a list of keys, or a glob such as
    "audio_*" matching several columns (in file order)."""
    if isinstance(selector, str) and selector in table:
        keys = [selector]
    elif isinstance(selector, str):
        keys = [k for k in table if fnmatch.fnmatchcase(k, selector)]
    else:
        keys = list(selector)
    missing = [k for k in keys if k not in table]
    if not keys or missing:
        raise KeyError(f"{what}: {selector!r} matches no key/column (missing {missing}); have {sorted(table)}")
    parts = [np.asarray(table[k], np.float32).reshape(len(table[k]), -1) for k in keys]
    return np.concatenate(parts, axis=1)


def _labels(values: np.ndarray, spec: dict) -> list[list[str]]:
    names = spec.get("label_names")
    sep = spec.get("label_separator")
    out = []
    for v in values:
        items = str(v).split(sep) if sep else [v]
        labels = []
        for item in items:
            if isinstance(item, str):
                item = item.strip()
                if not item:
                    continue
            if names is not None:  # integer class ids -> names (a dict or a list indexed by id)
                item = names[int(float(item))]
            elif isinstance(item, (np.floating, float)) and float(item).is_integer():
                item = int(item)
            labels.append(str(item))
        out.append(labels)
    return out


def _carve_validation(rows: list[VideoRow], opts: dict) -> int:
    """Move a seeded fraction of split `from` to split `name`, by group (e.g. a speaker) when
    `group` (a regex whose first group names it, applied to the id) is given, so no group is in
    both (MOSI's official split is speaker-independent; model selection should be too)."""
    source, fraction, seed = opts.get("from", "train"), float(opts["fraction"]), int(opts.get("seed", 0))
    pattern = re.compile(opts["group"]) if opts.get("group") else None

    def group(row: VideoRow) -> str:
        m = pattern.match(row.video_id) if pattern else None
        return m.group(1) if m else row.video_id

    groups = sorted({group(r) for r in rows if r.split == source})
    chosen = set(random.Random(seed).sample(groups, round(len(groups) * fraction)))
    moved = 0
    for r in rows:
        if r.split == source and group(r) in chosen:
            r.split = opts.get("name", "val")
            moved += 1
    return moved


def _open(cfg, out_dir: Path) -> tuple[Catalog, FeatureStore]:
    """OUT's catalog and store with the config's store settings (the defaults when cfg is None)."""
    from .config import load_config
    from .output import open_output

    return open_output(cfg if cfg is not None else load_config(), out_dir)


def _read_spec_files(spec: dict, root: Path) -> tuple[list[VideoRow], dict[str, list[np.ndarray]]]:
    """(catalog rows, {modality: [array per file]}) of every file the spec lists."""
    rows: list[VideoRow] = []
    features: dict[str, list[np.ndarray]] = {m: [] for m in spec["modalities"]}
    for entry in spec["files"]:
        table = _load_table(entry, root)
        n = len(next(iter(table.values())))
        ids = ([str(x) for x in table[spec["id"]]] if spec.get("id")
               else [f"{entry.get('split') or 'all'}-{i:06d}" for i in range(n)])
        labels = _labels(table[spec["label"]], spec) if spec.get("label") else [[] for _ in range(n)]
        rows += [VideoRow(vid, labels=lab, split=entry.get("split")) for vid, lab in zip(ids, labels)]
        for modality, selector in spec["modalities"].items():
            x = _select(table, selector, f"{entry.get('path')} modality {modality}")
            if len(x) != n:
                raise DataError(f"{entry.get('path')}: modality {modality} has {len(x)} rows, ids have {n}")
            features[modality].append(x)
    return rows, features


def import_features(spec_yaml: str | Path, out_dir: str | Path, root: str | Path | None = None, cfg=None) -> dict:
    """Import the feature set a YAML spec describes (see configs/importers/mosi.yaml).

    Relative file paths resolve against `root` (argument, else the spec's `root:`, itself relative
    to the spec file's folder). Rows whose modality has any NaN are recorded as missing that
    modality (not written), so models see them as absent.
    """
    from .export import import_parquet, is_parquet_export

    if is_parquet_export(spec_yaml):  # this project's own Parquet export (pipeline/export.py)
        return import_parquet(spec_yaml, out_dir)
    spec_path = Path(spec_yaml)
    spec = to_dict(OmegaConf.load(spec_path))
    root = Path(root) if root is not None else (spec_path.parent / spec.get("root", ".")).resolve()
    out_dir = Path(out_dir)
    started = time.perf_counter()
    rows, features = _read_spec_files(spec, root)
    ids = [r.video_id for r in rows]
    if len(set(ids)) != len(ids):
        dup = sorted({v for v in ids if ids.count(v) > 1})[:5]
        raise DataError(f"video ids are not unique across the spec's files (e.g. {dup})")
    moved = _carve_validation(rows, spec["validation"]) if spec.get("validation") else 0

    cat, store = _open(cfg, out_dir)
    meta = {"source": spec.get("name", spec_path.stem), "spec": spec, "spec_file": str(spec_path),
            "importer": "pipeline.importers.import_features", "versions": versions()}
    missing = {}
    try:
        cat.upsert_videos(rows)
        if spec.get("multilabel") and spec.get("label_names") is not None:
            # A fixed vocabulary tells the trainer the task is multi-label (pipeline/train.py);
            # single-label sets keep the default: the sorted labels that occur.
            names = spec["label_names"]
            cat.set_class_names(list(names.values()) if isinstance(names, dict) else list(names))
        for modality, parts in features.items():
            x = np.concatenate(parts)
            ok = np.isfinite(x).all(axis=1)
            missing[modality] = int((~ok).sum())
            with store.writer(modality, "pooled", x.shape[1], meta) as w:
                for vid, vector, good in zip(ids, x, ok):
                    if good:
                        w.add(vid, vector)
    finally:
        cat.close()
    splits: dict[str, int] = {}
    for r in rows:
        splits[str(r.split)] = splits.get(str(r.split), 0) + 1
    return {"videos": len(rows), "splits": splits, "moved_to_validation": moved,
            "modalities": {m: int(np.concatenate(p).shape[1]) for m, p in features.items()},
            "missing": missing, "classes": sorted({l for r in rows for l in r.labels}),
            "seconds": round(time.perf_counter() - started, 2)}
