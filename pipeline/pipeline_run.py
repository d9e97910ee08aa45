"""`run_pipeline.py --videos DIR`: every stage in order on one output folder, timed.

scan -> decode + extract -> complete -> train (or k-fold cross-validation) -> predict -> evaluate.
Each stage is the same function its subcommand calls, so a run interrupted anywhere can be
finished stage by stage. Returns False when any video failed or a stage raised; the summary
(OUT/summaries/run-*.json) lists what failed and why, with per-stage wall times.
"""
from __future__ import annotations

import time
import traceback
from dataclasses import asdict
from pathlib import Path

from rich.console import Console
from rich.table import Table

from .config import to_dict, versions
from .stages import run_extract, run_scan, write_json


def run_all(cfg, out: Path, videos: Path, labels: Path | None = None, model: str | None = None,
            folds: int | None = None, progress: bool = True, console: Console | None = None) -> bool:
    from .cli import print_status

    console = console or Console()
    out = Path(out)
    model = model or cfg.run.model
    folds = int(folds or cfg.run.folds)
    times: dict[str, float] = {}
    report: dict = {"videos": str(videos), "labels": str(labels) if labels else None, "model": model, "folds": folds}
    ok = True

    def stage(name: str, fn):
        nonlocal ok
        t0 = time.perf_counter()
        console.rule(f"[bold]{name}")
        try:
            result = fn()
        except Exception as e:  # a stage that breaks stops the run, reported, never hidden
            ok = False
            report[name] = {"error": f"{type(e).__name__}: {e}", "traceback": traceback.format_exc()}
            console.print(f"[red]{name} failed:[/] {type(e).__name__}: {e}")
            result = None
        times[name] = time.perf_counter() - t0
        return result

    s = stage("scan", lambda: run_scan(cfg, out, videos, labels))
    if s is not None:
        report["scan"] = asdict(s)
        console.print(f"{s.found} videos, {s.labeled} labeled, {s.titled} titled")
    e = stage("extract", lambda: run_extract(cfg, out, progress=progress)) if ok else None
    if e is not None:
        report["extract"] = asdict(e)
    if ok and cfg.run.complete:
        from .complete import run_complete

        report["complete"] = stage("complete", lambda: run_complete(cfg, out))
    if ok:
        from . import train as training

        if folds > 1:
            report["train"] = stage("train", lambda: training.run_cross_validation(cfg, out, model, folds=folds))
            run_dir = out / "runs" / model
            if ok:
                report["train_final"] = stage("train (final model)", lambda: training.run_train(cfg, out, model, run_name=model))
        else:
            report["train"] = stage("train", lambda: training.run_train(cfg, out, model, run_name=model))
            run_dir = out / "runs" / model
        if ok:
            path = stage("predict", lambda: training.run_predict(cfg, out, run_dir, run_dir / "predictions.jsonl",
                                                                 top_k=cfg.run.top_k))
            report["predictions"] = str(path) if path else None
        if ok:
            report["evaluate"] = stage("evaluate", lambda: training.run_evaluate(cfg, out, run_dir, split="val"))

    failures = print_status(out)
    ok = ok and failures == 0
    table = Table(title="time per stage")
    table.add_column("stage")
    table.add_column("seconds", justify="right")
    for name, sec in times.items():
        table.add_row(name, f"{sec:.1f}")
    console.print(table)
    report.update({"ok": ok, "failed_videos": failures, "seconds": times, "config": to_dict(cfg), "versions": versions()})
    path = write_json(out / "summaries" / f"run-{time.strftime('%Y%m%d-%H%M%S')}.json", report)
    console.print(f"summary: {path}" + ("" if ok else "  [red](something failed: see above)[/]"))
    return ok
