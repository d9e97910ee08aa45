"""`run_pipeline.py --videos DIR`: every stage in order on one output folder, in one process, timed.

scan -> decode + extract -> complete -> train (or k-fold cross-validation) -> predict -> evaluate.
Each stage is the same function its subcommand calls, so a run interrupted anywhere can be
finished stage by stage. A stage that fails is reported and the run goes on with the stages
that do not need it (train does not need complete; nothing runs without scan and extract).

The headline score is held out: on the labels' `test` split when they give one, otherwise on a
stratified, seeded `run.test_fraction` of the labeled videos that training never sees (its ids
are in the summary); with `run.folds=K` it is the K-fold mean +- std on held-out folds. The
validation split, on which early stopping selects, is reported beside it as "selection".
The summary (OUT/summaries/run-*.json) says which split every number is on, lists what failed
and why, and has per-stage wall times.
"""
from __future__ import annotations

import time
import traceback
from dataclasses import asdict
from pathlib import Path

from rich.console import Console
from rich.table import Table

from .config import to_dict, versions
from .errors import UsageError, exit_code, one_line
from .io import write_json
from .scan import run_scan

# A stage runs only when the stage it needs finished (complete is optional for train).
NEEDS = {"extract": "scan", "complete": "extract", "split": "extract", "cross-validation": "split",
         "train": "split", "predict": "train", "evaluate test": "train", "evaluate val": "train"}


class Stages:
    """Runs named stages, timing each; a failed stage is recorded and its dependants skipped."""

    def __init__(self, console: Console):
        self.console, self.seconds, self.failed, self.skipped = console, {}, {}, []

    def __call__(self, name: str, fn):
        need = NEEDS.get(name)
        if need in self.failed or need in self.skipped:
            self.skipped.append(name)
            self.console.print(f"[yellow]{name} skipped:[/] it needs {need}, which did not finish")
            return None
        self.console.rule(f"[bold]{name}")
        t0 = time.perf_counter()
        try:
            return fn()
        except Exception as e:  # reported, never hidden; the stages that do not need it go on
            self.failed[name] = {"error": f"{type(e).__name__}: {one_line(e)}",
                                 **({} if exit_code(e) is not None else {"traceback": traceback.format_exc()})}
            self.console.print(f"[red]{name} failed:[/] {one_line(e)}")
            return None
        finally:
            self.seconds[name] = time.perf_counter() - t0


def _test_split(cfg, out: Path) -> tuple[dict, dict]:
    """(training split: {"train", "val", "test"} task rows, how the test split was chosen)."""
    from .output import open_output
    from .task import holdout_test, load_labels, split_indices

    catalog, _ = open_output(cfg, out)
    try:
        task = load_labels(catalog)
    finally:
        catalog.close()
    held_task, held = holdout_test(task, float(cfg.run.test_fraction), int(cfg.seed))
    split = split_indices(held_task, float(cfg.train.val_fraction), int(cfg.seed))
    info = ({"test_split": "held out", "test_fraction": float(cfg.run.test_fraction), "seed": int(cfg.seed),
             "test_ids": held} if held else {"test_split": "labels"})
    return split, {**info, "videos": {k: int(len(v)) for k, v in split.items()}}


def _train_and_score(cfg, out: Path, model: str, folds: int, stage: Stages, report: dict) -> None:
    from .crossval import run_cross_validation
    from .evaluate import run_evaluate, run_predict
    from .train import run_train

    split_info = stage("split", lambda: _test_split(cfg, out))
    split, report["split"] = split_info if split_info is not None else ({"test": []}, None)
    if folds > 1:
        cv = stage("cross-validation", lambda: run_cross_validation(cfg, out, model, folds=folds))
        if cv is not None:
            report["headline"] = {"split": f"held-out folds ({folds}-fold mean ± std)", "metrics": cv["summary"]}
            report["selection"] = {"split": "val (inner, per fold)", "metrics": cv["selection_summary"]}
    result = stage("train", lambda: run_train(cfg, out, model, run_name=model, fixed_split=split))
    report["train"] = {k: v for k, v in result.items() if k not in ("config", "versions")} if result else None
    run_dir = out / "runs" / model
    path = stage("predict", lambda: run_predict(cfg, out, run_dir, run_dir / "predictions.jsonl",
                                                top_k=cfg.run.top_k, threshold=cfg.run.threshold))
    report["predictions"] = str(path) if path else None
    source = (report["split"] or {}).get("test_split")
    if len(split["test"]):
        test = stage("evaluate test", lambda: run_evaluate(cfg, out, run_dir, split="test", show=False))
        if test is not None:
            report["headline" if folds <= 1 else "test"] = {"split": f"test ({source})", "metrics": test["metrics"]}
    val = stage("evaluate val", lambda: run_evaluate(cfg, out, run_dir, split="val", show=False))
    if val is not None and folds <= 1:
        report["selection"] = {"split": "val (early stopping selects on it)", "metrics": val["metrics"]}


def print_scores(report: dict, console: Console) -> None:
    """One table: each metric on the headline (held-out) split beside the selection split."""
    head, sel, test = report.get("headline"), report.get("selection"), report.get("test")
    cols = [c for c in (head, test, sel) if c]
    if not cols:
        return
    table = Table(title=f"{report['model']}: scores (headline = {head['split'] if head else 'none'})")
    table.add_column("metric")
    for c in cols:
        table.add_column(c["split"], justify="right")

    def fmt(v):
        if isinstance(v, dict):
            return f"{v['mean']:.4f} ± {v['std']:.4f}"
        return f"{v:.4f}" if isinstance(v, float) else ("" if v is None else str(v))

    for key in cols[0]["metrics"]:
        table.add_row(key, *[fmt(c["metrics"].get(key)) for c in cols])
    console.print(table)


def _stage_table(seconds: dict, console: Console) -> None:
    table = Table(title="time per stage")
    table.add_column("stage")
    table.add_column("seconds", justify="right")
    for name, sec in seconds.items():
        table.add_row(name, f"{sec:.1f}")
    console.print(table)


def run_all(cfg, out: Path, videos: Path, labels: Path | None = None, model: str | None = None,
            folds: int | None = None, progress: bool = True, console: Console | None = None) -> bool:
    """Every stage; True when every stage finished and no video failed."""
    from .extract import run_extract
    from .status import print_status

    console = console or Console()
    if not Path(videos).is_dir():   # usage errors stop before any stage starts
        raise UsageError(f"--videos {videos}: no such folder")
    if labels is not None and not Path(labels).is_file():
        raise UsageError(f"--labels {labels}: no such file")
    out, model, folds = Path(out), model or cfg.run.model, int(folds or cfg.run.folds)
    report: dict = {"videos": str(videos), "labels": str(labels) if labels else None, "model": model, "folds": folds}
    stage = Stages(console)
    s = stage("scan", lambda: run_scan(cfg, out, videos, labels))
    if s is not None:
        report["scan"] = asdict(s)
        console.print(f"{s.found} videos, {s.labeled} labeled, {s.titled} titled")
    e = stage("extract", lambda: run_extract(cfg, out, progress=progress))
    report["extract"] = asdict(e) if e is not None else None
    if cfg.run.complete:
        from .complete import run_complete

        report["complete"] = stage("complete", lambda: run_complete(cfg, out, progress=progress))
    _train_and_score(cfg, out, model, folds, stage, report)
    from .report import write_report  # OUT/report.html: catalog, data, features, this run (pipeline/report.py)

    trained = (out / "runs" / model / "metrics.json").exists()
    html = stage("report", lambda: write_report(out, run=model if trained else None, cfg=cfg))
    report["report"] = str(html) if html else None
    failures = print_status(out, console) if (out / "catalog.sqlite").exists() else 0
    print_scores(report, console)
    _stage_table(stage.seconds, console)
    ok = not stage.failed and failures == 0
    report.update({"ok": ok, "failed_stages": stage.failed, "skipped_stages": stage.skipped, "failed_videos": failures,
                   "seconds": stage.seconds, "config": to_dict(cfg), "versions": versions()})
    path = write_json(out / "summaries" / f"run-{time.strftime('%Y%m%d-%H%M%S')}.json", report)
    if stage.failed:
        lines = [f"{name} ({info['error']})" for name, info in stage.failed.items()]
        console.print("[red]failed stages:[/] " + "; ".join(lines))
    console.print(f"summary: {path}" + ("" if ok else "  [red](something failed: see above)[/]"))
    return ok
