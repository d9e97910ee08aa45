"""The learning task a catalog defines: labels, splits and the model inputs to load.

The task comes from the catalog: multi-label when the importer fixed a vocabulary
(`Catalog.set_class_names`, e.g. YouTube-8M) or when any video has more than one label, else
multi-class. Splits come from the catalog's split column when it is set ("val"/"validate"/
"validation" count as val), otherwise a seeded random split by `train.val_fraction` (stratified
for multi-class). `holdout_test` carves a stratified, seeded test split that training never
sees when the labels give none (`run.test_fraction`, used by `run_pipeline.py --videos DIR`).
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import torch

from .errors import DataError, UsageError

VAL_NAMES = {"val", "validate", "validation", "valid"}


def load_labels(catalog) -> dict:
    """Labeled videos of the catalog as a task: ids, multi-hot labels [N, C], splits, classes."""
    class_names = catalog.class_names()
    fixed = bool(catalog.get_meta("class_names"))
    rows = [(vid, labels, split) for vid, labels, split in catalog.labeled_videos() if labels]
    if not rows:
        raise DataError("the catalog has no labeled videos: nothing to train on (give --labels FILE, "
                        "put the videos in one sub-folder per class, or import labeled features)")
    index = {name: i for i, name in enumerate(class_names)}
    unknown = sorted({lab for _, labels, _ in rows for lab in labels if lab not in index})
    if unknown:
        raise DataError(f"{len(unknown)} labels are not in the catalog's class vocabulary, e.g. {unknown[:5]}")
    y = np.zeros((len(rows), len(class_names)), np.float32)
    for i, (_, labels, _) in enumerate(rows):
        y[i, [index[lab] for lab in labels]] = 1
    multilabel = fixed or bool((y.sum(1) > 1).any())
    return {"video_ids": [r[0] for r in rows], "labels": y, "splits": [r[2] for r in rows],
            "class_names": class_names, "multilabel": multilabel}


def split_names(task: dict) -> np.ndarray:
    """The catalog's split of every task row, lower-cased, val spellings as "val", unset as ""."""
    splits = np.array([(s or "").lower() for s in task["splits"]])
    return np.where(np.isin(splits, list(VAL_NAMES)), "val", splits)


def stratified_take(pool: np.ndarray, task: dict, fraction: float, seed: int, what: str) -> tuple[np.ndarray, np.ndarray]:
    """(rest, taken): a seeded `fraction` of `pool`, stratified when every class can give one
    video to each side (multi-class), else random."""
    from sklearn.model_selection import train_test_split

    if len(pool) < 2:
        raise DataError(f"only {len(pool)} labeled video(s) left: cannot hold out a {what} split")
    y = task["labels"][pool].argmax(1)
    n = min(len(pool) - 1, max(1, int(round(fraction * len(pool)))))
    classes, counts = np.unique(y, return_counts=True)
    stratify = y if not task["multilabel"] and counts.min() >= 2 and n >= len(classes) \
        and len(pool) - n >= len(classes) else None
    rest, taken = train_test_split(pool, test_size=n, random_state=seed, stratify=stratify)
    return np.sort(rest), np.sort(taken)


def split_indices(task: dict, val_fraction: float, seed: int) -> dict[str, np.ndarray]:
    """{"train", "val", "test"} row indices: the catalog's split column when set, else random."""
    splits = split_names(task)
    idx = np.arange(len(splits))
    test = idx[splits == "test"]
    val = idx[splits == "val"]
    pool = idx[(splits != "test") & (splits != "val")]   # "train" and unset
    if len(val) == 0:
        pool, val = stratified_take(pool, task, val_fraction, seed, "validation")
    return {"train": np.sort(pool), "val": np.sort(val), "test": test}


def holdout_test(task: dict, fraction: float, seed: int) -> tuple[dict, list[str]]:
    """The task with a test split when its labels give none: a stratified, seeded `fraction`
    of the labeled videos, marked "test" so that training (and its validation) never sees them.
    Returns (task, held-out video ids); unchanged (and []) when a test split exists."""
    splits = split_names(task)
    if (splits == "test").any():
        return task, []
    pool = np.flatnonzero(splits != "val")
    _, test = stratified_take(pool, task, fraction, seed, "test")
    new = list(task["splits"])
    for i in test:
        new[i] = "test"
    return {**task, "splits": new}, [task["video_ids"][i] for i in test]


def model_inputs(store, model_cfg, modalities: Sequence[str] | None,
                 use_completed: bool = False) -> tuple[dict, dict]:
    """({"pooled": [m...], "sequence": [m...]}, dims) to load for a model: its `input` layout
    when the store has it for a modality, else the other one (models/common.py adapts).
    With `use_completed`, a pooled-input model reads `<m>@completed` (written by the complete
    stage) instead of `<m>` wherever the store has it."""
    want = model_cfg.input
    if want not in ("pooled", "sequence"):
        raise UsageError(f"model input must be pooled or sequence, got {want!r}")
    infos = store.modalities()
    names = list(modalities) if modalities else sorted(m for m in infos if "@" not in m)
    if use_completed and want == "pooled":
        names = [f"{m}@completed" if f"{m}@completed" in infos else m for m in names]
    missing = [m for m in names if m not in infos]
    if missing:
        raise DataError(f"modalities {missing} are not in the store; it has {sorted(infos)}")
    if not names:
        raise DataError("the store has no features: run extract (or an importer) first")
    other = "sequence" if want == "pooled" else "pooled"
    inputs, dims = {"pooled": [], "sequence": []}, {"pooled": {}, "sequence": {}}
    for m in names:
        layout = want if want in infos[m].layouts else other
        inputs[layout].append(m)
        dims[layout][m] = infos[m].layouts[layout]
    return inputs, dims


def label_extra(model_name: str, model_cfg, class_names: list[str], train_labels: np.ndarray, device: str) -> dict:
    """What a label-graph model (MARNet) needs besides the features: class-name embeddings from
    the text extractor and co-occurrence counts of the *training* labels."""
    from models import model_class

    extra: dict = {"class_names": list(class_names),
                   "label_prior": torch.from_numpy(np.asarray(train_labels, np.float32).mean(0))}
    if not getattr(model_class(model_name), "uses_label_graph", False):
        return extra
    y = torch.from_numpy(train_labels)
    extra["label_cooccurrence"] = (y.T @ y).float()
    if model_cfg.label_embeddings == "text":
        try:
            from extractors.text import embed_texts
            extra["label_embeddings"] = torch.from_numpy(np.asarray(embed_texts(list(class_names), device=device)))
        except Exception as e:
            raise DataError(f"{model_name} embeds the class names with the text extractor, which failed: {e}. "
                            f"Set models.{model_name}.label_embeddings=random to use fixed random label "
                            "embeddings instead (recorded in the run's config).") from e
    return extra


def input_stats(dataset) -> dict:
    """Per-dimension mean and standard deviation of every input of a FeatureDataset (the training
    split), for `train.standardize` (models/standardize.py): pooled inputs over the videos that
    have them, sequences over all their steps; float64 sums. {layout: {m: (mean f32[D], std f32[D])}}."""
    def moments(total, squares, n):
        mean = total / max(n, 1)
        std = np.sqrt(np.maximum(squares / max(n, 1) - mean ** 2, 0.0))
        return torch.from_numpy(mean.astype(np.float32)), torch.from_numpy(std.astype(np.float32))

    stats: dict = {"pooled": {}, "sequence": {}}
    for m in dataset.pooled_names:
        x = dataset.pooled[m][dataset.present[m]].astype(np.float64)
        stats["pooled"][m] = moments(x.sum(0), (x ** 2).sum(0), len(x))
    for m in dataset.sequence_names:
        total, squares, n = np.zeros(dataset.seq_dims[m]), np.zeros(dataset.seq_dims[m]), 0
        for vid in dataset.video_ids:
            if vid in dataset.seq_where[m]:
                x = dataset.store.sequence_at(dataset.seq_where[m][vid]).astype(np.float64)
                total, squares, n = total + x.sum(0), squares + (x ** 2).sum(0), n + len(x)
        stats["sequence"][m] = moments(total, squares, n)
    return stats


def make_dataset(store, video_ids, inputs: dict, labels=None):
    from .dataset import FeatureDataset

    return FeatureDataset(store, video_ids, pooled=inputs["pooled"], sequence=inputs["sequence"], labels=labels)


def to_device(batch: dict, device) -> dict:
    out = {}
    for k, v in batch.items():
        if isinstance(v, torch.Tensor):
            out[k] = v.to(device, non_blocking=True)
        elif isinstance(v, dict):
            out[k] = {m: t.to(device, non_blocking=True) for m, t in v.items()}
        else:
            out[k] = v
    return out


def mixup(batch: dict, alpha: float) -> dict:
    """mixup (Zhang et al., ICLR 2018, Eq. 1): every example of the batch becomes
    lam * x_i + (1 - lam) * x_j with its labels mixed the same way, j a random permutation and
    lam ~ Beta(alpha, alpha) once per batch. Pooled vectors and padded sequences are mixed alike
    (a mixed sequence is as long as the longer of the two); a modality counts as present only
    where it is present in both, since mixing with a missing one would halve the vector. Draws
    from torch's global generator, which the checkpoints save, so a resumed run mixes the same."""
    lam = float(torch.distributions.Beta(alpha, alpha).sample())
    j = torch.randperm(len(batch["video_ids"]), device=batch["labels"].device)
    out = dict(batch)
    out["pooled"] = {m: lam * x + (1 - lam) * x[j] for m, x in batch["pooled"].items()}
    out["sequence"] = {m: lam * x + (1 - lam) * x[j] for m, x in batch["sequence"].items()}
    out["lengths"] = {m: torch.maximum(n, n[j]) for m, n in batch["lengths"].items()}
    for key in ("present", "observed"):
        out[key] = {m: p & p[j] for m, p in batch[key].items()}
    out["labels"] = lam * batch["labels"].float() + (1 - lam) * batch["labels"][j].float()
    return out
