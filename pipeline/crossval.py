"""k-fold cross-validation with held-out folds: `train --folds K`, `run.folds=K`.

Each fold's model trains on the other K-1 folds, early-stops on a validation split carved from
those (`train.val_fraction`, stratified, seeded) and is then scored with its best.pt on its own
fold, which neither training nor model selection saw. The report is the mean +- std of those
held-out scores (OUT/runs/<name>/cv.json); videos of the labels' test split are left out of
every fold.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
from omegaconf import DictConfig

from .config import resolve_device, to_dict, versions
from .distributed import rank_world
from .errors import UsageError
from .evaluate import load_runs, score_split
from .io import write_json
from .output import open_output
from .task import load_labels, split_names, stratified_take
from .train import run_train


def cv_folds(task: dict, folds: int, seed: int, val_fraction: float) -> list[dict]:
    """[{"train", "val", "test"} task row indices] per fold: "test" is the held-out fold, "val"
    the early-stopping split carved from the other folds (stratified for multi-class when every
    class has `folds` videos)."""
    from sklearn.model_selection import KFold, StratifiedKFold

    pool = np.flatnonzero(split_names(task) != "test")
    if folds < 2 or folds > len(pool):
        raise UsageError(f"folds={folds}: need 2 <= folds <= {len(pool)} (the labeled videos outside test)")
    y = task["labels"][pool].argmax(1)
    if not task["multilabel"] and np.bincount(y)[np.unique(y)].min() >= folds:
        folder = StratifiedKFold(folds, shuffle=True, random_state=seed).split(pool, y)
    else:
        folder = KFold(folds, shuffle=True, random_state=seed).split(pool)
    out = []
    for rest, held in folder:
        train, val = stratified_take(pool[rest], task, val_fraction, seed, "validation")
        out.append({"train": train, "val": val, "test": np.sort(pool[held])})
    return out


def _mean_std(rows: list[dict]) -> dict:
    keys = [k for k, v in rows[0].items() if isinstance(v, float) and k != "epoch"]
    return {k: {"mean": float(np.mean([r[k] for r in rows])), "std": float(np.std([r[k] for r in rows]))}
            for k in keys if all(isinstance(r.get(k), float) for r in rows)}


def run_cross_validation(cfg: DictConfig, out_dir: str | Path, model_name: str, folds: int = 5,
                         run_name: str | None = None) -> dict:
    """One run per fold under OUT/runs/<name>/fold-<i>; per fold the best.pt metrics on the
    held-out fold ("heldout") and the best validation metrics it selected on ("selection");
    their mean and standard deviation in "summary" (held out) and "selection_summary"."""
    out_dir = Path(out_dir)
    catalog, store = open_output(cfg, out_dir)
    try:
        task = load_labels(catalog)
        name = run_name or f"{model_name}-cv{folds}"
        device = resolve_device(cfg.device)
        per_fold, selection = [], []
        for i, split in enumerate(cv_folds(task, folds, int(cfg.seed), float(cfg.train.val_fraction))):
            result = run_train(cfg, out_dir, model_name, run_name=f"{name}/fold-{i}", fixed_split=split)
            metrics, n = score_split(cfg, store, task, load_runs([result["run_dir"]], device, store), "test", device)
            per_fold.append({"fold": i, "best_epoch": result["best_epoch"], "videos": n, **metrics})
            selection.append({"fold": i, **(result["best"] or {})})
    finally:
        catalog.close()
    report = {"model": model_name, "folds": folds, "split": "held-out fold", "per_fold": per_fold,
              "summary": _mean_std(per_fold), "selection_per_fold": selection, "selection_summary": _mean_std(selection),
              "monitor": result["monitor"], "config": to_dict(cfg), "versions": versions()}
    if rank_world()[0] == 0:
        write_json(out_dir / "runs" / name / "cv.json", report)
    return report
