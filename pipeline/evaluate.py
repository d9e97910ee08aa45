"""Score trained runs on the store: evaluate (metrics on a split), predict (labels per video),
and ensembles of several runs (the mean of their probabilities).

    run_evaluate(cfg, out, run_dir, "val")  -> metrics table + OUT/runs/<run>/eval-val.json
    run_evaluate(cfg, out, [run_a, run_b])  -> the same for the ensemble in OUT/ensembles/a+b/
    run_predict(cfg, out, run_dir, path)    -> JSONL {"video_id": ..., "labels": [[label, prob], ...]}

Only videos already in the store are scored here; new videos go through `pipeline/predict.py`.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from omegaconf import DictConfig

from .checkpoint import checkpoint_path, load_model
from .config import resolve_device, to_dict, versions
from .errors import DataError, UsageError
from .io import atomic_write, write_json
from .metrics import compute_metrics
from .output import open_output
from .task import load_labels, make_dataset, split_names, to_device


def autocast(device: str, enabled: bool):
    """bf16 autocast on `device` when `train.amp` asks for it (the extractors' helper)."""
    from extractors.base import autocast as precision_autocast

    return precision_autocast(torch.device(device), "bf16" if enabled else "fp32")


@torch.no_grad()
def predict_scores(model, loader, device: str, multilabel: bool, amp: bool = False):
    """(video_ids, probabilities [N, C], labels [N, C] or None, mean task loss or None)."""
    from models.common import probabilities, task_loss

    model.eval()
    ids, scores, labels, losses = [], [], [], []
    for batch in loader:
        batch = to_device(batch, device)
        with autocast(device, amp):
            logits = model(batch)["logits"].float()
        ids += batch["video_ids"]
        scores.append(probabilities(logits, multilabel).cpu())
        if "labels" in batch:
            labels.append(batch["labels"].cpu())
            losses.append(task_loss(logits, batch["labels"], multilabel, reduction="none").cpu())
    y = torch.cat(labels).numpy() if labels else None
    loss = float(torch.cat(losses).mean()) if losses else None
    return ids, torch.cat(scores).numpy(), y, loss


def eval_loader(dataset, tcfg):
    from .dataset import collate_batch

    return torch.utils.data.DataLoader(dataset, batch_size=int(tcfg.eval_batch_size), collate_fn=collate_batch,
                                       num_workers=int(tcfg.num_workers))


def check_store(store, ckpt: dict) -> None:
    """The store must have every input the model was trained on, with the same dims."""
    infos = store.modalities()
    for layout, dims in ckpt["dims"].items():
        for m, d in dims.items():
            have = infos.get(m).layouts.get(layout) if m in infos else None
            if have != d:
                raise DataError(f"the model was trained on {m}/{layout} with dim {d}; this store has "
                                f"{'none' if have is None else have} (extract the same modalities first)")


def load_runs(run_dirs, device: str, store) -> list[tuple[torch.nn.Module, dict]]:
    """best.pt (else last.pt) of each run, checked against the store and against each other: an
    ensemble needs one task (classes, multi-label or not)."""
    loaded = [load_model(checkpoint_path(Path(r)), device) for r in run_dirs]
    first = loaded[0][1]
    for r, (_, ckpt) in zip(run_dirs, loaded):
        check_store(store, ckpt)
        if ckpt["class_names"] != first["class_names"] or ckpt["multilabel"] != first["multilabel"]:
            raise UsageError(f"{r} was trained on other classes than {run_dirs[0]}: they cannot be ensembled")
    return loaded


def as_run_dirs(run_dir) -> list[Path]:
    return [Path(r) for r in ([run_dir] if isinstance(run_dir, (str, Path)) else run_dir)]


def ensemble_dir(out_dir: str | Path, run_dirs: Sequence) -> Path:
    """Where the files of an ensemble of runs go: OUT/ensembles/<run>+<run>+..."""
    return Path(out_dir) / "ensembles" / "+".join(Path(r).name for r in run_dirs)


def ensemble_scores(loaded, store, ids, labels, cfg, device: str):
    """(video_ids, probabilities [N, C], mean task loss or None) of one run, or of several as the
    mean of their probabilities (sigmoids / softmaxes), with the loss of that mean."""
    multilabel = loaded[0][1]["multilabel"]
    per_run = [predict_scores(model, eval_loader(make_dataset(store, list(ids), ckpt["inputs"], labels), cfg.train),
                              device, multilabel, bool(cfg.train.amp)) for model, ckpt in loaded]
    if len(per_run) == 1:
        got_ids, scores, _, loss = per_run[0]
        return got_ids, scores, loss
    scores = np.mean([s for _, s, _, _ in per_run], 0)
    loss = None
    if labels is not None:
        p, y = np.clip(scores, 1e-7, 1 - 1e-7), labels.astype(np.float64)
        per_video = -(y * np.log(p) + (1 - y) * np.log(1 - p)).sum(1) if multilabel else -(y * np.log(p)).sum(1)
        loss = float(per_video.mean())
    return per_run[0][0], scores, loss


def split_ids(task: dict, loaded, split: str) -> list[str]:
    """The labeled videos of `split`: the runs' own train / val ids (what they trained and
    selected on), every labeled video for "all", else the catalog's split column."""
    ckpt = loaded[0][1]
    if split in ("train", "val", "test") and split in ckpt["split_ids"]:
        ids = ckpt["split_ids"][split]
        if any(c["split_ids"].get(split) != ids for _, c in loaded):
            raise UsageError(f"the runs were trained on different {split} splits: an ensemble cannot be scored on them")
    elif split == "all":
        ids = task["video_ids"]
    else:
        ids = [vid for vid, s in zip(task["video_ids"], split_names(task)) if s == split]
    row = {vid: i for i, vid in enumerate(task["video_ids"])}
    ids = [vid for vid in ids if vid in row]
    if not ids:
        raise DataError(f"no labeled videos in split {split!r}")
    return ids


def score_split(cfg: DictConfig, store, task: dict, loaded, split: str, device: str) -> tuple[dict, int]:
    """(metrics with "loss", number of videos) of loaded run(s) on one split."""
    ids = split_ids(task, loaded, split)
    row = {vid: i for i, vid in enumerate(task["video_ids"])}
    labels = task["labels"][[row[v] for v in ids]]
    _, scores, loss = ensemble_scores(loaded, store, ids, labels, cfg, device)
    metrics = compute_metrics(scores, labels, loaded[0][1]["multilabel"], float(cfg.train.threshold),
                              int(cfg.train.metric_k), cfg.train.hit_at)
    return {**metrics, "loss": loss}, len(ids)


def run_evaluate(cfg: DictConfig, out_dir: str | Path, run_dir, split: str = "val", show: bool = True) -> dict:
    """Metrics of a trained run (best.pt) on `split` (train / val / test / all labeled videos):
    printed as a table and written to RUN/eval-<split>.json. Several runs (a list) are evaluated
    as one ensemble, the mean of their probabilities, written to OUT/ensembles/<a>+<b>/; train /
    val then have to be the same videos for every run (a video one run trained on would be
    scored as unseen)."""
    run_dirs = as_run_dirs(run_dir)
    device = resolve_device(cfg.device)
    catalog, store = open_output(cfg, out_dir, readonly=True)   # a reader: runs beside an extract
    try:
        loaded = load_runs(run_dirs, device, store)
        ckpt = loaded[0][1]
        task = load_labels(catalog)
        if task["class_names"] != ckpt["class_names"]:
            raise DataError("the catalog's classes differ from the ones the model was trained on")
        metrics, n = score_split(cfg, store, task, loaded, split, device)
        names = [c["model_name"] for _, c in loaded]
        one = len(run_dirs) == 1
        result = {"run": str(run_dirs[0]) if one else [str(r) for r in run_dirs], "split": split, "videos": n,
                  "checkpoint_epoch": ckpt["epoch"] if one else [c["epoch"] for _, c in loaded],
                  "model": names[0] if one else names, "multilabel": ckpt["multilabel"],
                  "metrics": metrics, "config": to_dict(cfg), "versions": versions()}
        write_json((run_dirs[0] if one else ensemble_dir(out_dir, run_dirs)) / f"eval-{split}.json", result)
        if show:
            print_metrics(f"{' + '.join(names)} on {split} ({n} videos)", metrics)
        return result
    finally:
        catalog.close()


def print_metrics(title: str, metrics: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=title)
    table.add_column("metric")
    table.add_column("value", justify="right")
    for k, v in metrics.items():
        table.add_row(k, f"{v:.4f}" if isinstance(v, float) else str(v))
    Console().print(table)


def _stored_ids(catalog, loaded) -> list[str]:
    """Every video of the store that has at least one of the models' input modalities."""
    have = set()
    for _, ckpt in loaded:
        for layout, names in ckpt["inputs"].items():
            for m in names:
                have |= {vid for vid, _, _ in catalog.feature_locations(m, layout)}
    return sorted(have)


def write_predictions(output: str | Path, ids, scores: np.ndarray, names: list[str], top_k: int | None,
                      threshold: float | None) -> Path:
    """One JSON object a line, {"video_id": ..., "labels": [[label, prob], ...]}, labels sorted by
    probability: the top_k best (None = all) of those with prob >= threshold (None = all)."""
    with atomic_write(output, "w") as f:
        for vid, s in zip(ids, scores):
            order = np.argsort(-s, kind="stable")
            if threshold is not None:
                order = order[s[order] >= threshold]
            if top_k is not None:
                order = order[:top_k]
            f.write(json.dumps({"video_id": vid, "labels": [[names[j], round(float(s[j]), 6)] for j in order]}) + "\n")
    return Path(output)


def run_predict(cfg: DictConfig, out_dir: str | Path, run_dir: str | Path, output: str | Path, top_k: int | None = 5,
                threshold: float | None = None, video_ids: Sequence[str] | None = None) -> Path:
    """Labels with probabilities per video, one JSON object a line (MultimodalVideoTag style):
    {"video_id": ..., "labels": [[label, prob], ...]} sorted by probability; the top_k best
    (None = all) of those with prob >= threshold (None = no threshold). Default videos: every
    video of the store that has at least one of the model's input modalities. Several runs (a
    list) predict as one ensemble, the mean of their probabilities."""
    device = resolve_device(cfg.device)
    catalog, store = open_output(cfg, out_dir, readonly=True)   # a reader: runs beside an extract
    try:
        loaded = load_runs(as_run_dirs(run_dir), device, store)
        ids = video_ids if video_ids is not None else _stored_ids(catalog, loaded)
        ids, scores, _ = ensemble_scores(loaded, store, ids, None, cfg, device)
        write_predictions(output, ids, scores, loaded[0][1]["class_names"], top_k, threshold)
        return Path(output)
    finally:
        catalog.close()
