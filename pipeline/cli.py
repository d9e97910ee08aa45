"""The command line: `run_pipeline.py --videos DIR` runs every stage; one subcommand per stage.

    run_pipeline.py --videos DIR [--labels FILE] [--out DIR] [--config YAML] [key=value ...]
    run_pipeline.py demo                      # synthetic demo set + the whole pipeline
    run_pipeline.py scan --videos DIR [--labels FILE] --out DIR
    run_pipeline.py extract --out DIR [--engine local|ray]
    run_pipeline.py complete --out DIR
    run_pipeline.py train --out DIR --model NAME [--folds K] [--nproc N]
    run_pipeline.py evaluate --out DIR --run NAME
    run_pipeline.py predict --out DIR --run NAME [--videos DIR]
    run_pipeline.py import yt8m SHARDS... --out DIR | import features SPEC.yaml --out DIR
    run_pipeline.py status --out DIR

Every command takes trailing `key=value` config overrides and `--device auto|cpu|cuda`.
Exit status: 0 all good, 1 something failed (listed in the summary), 2 bad usage.
"""
from __future__ import annotations

import os
import sys
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import List, Optional

import typer
from rich.console import Console
from rich.table import Table

from .catalog import Catalog, OutputLock
from .config import load_config

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Raw micro-videos in, multimodal features and trained classifiers out.")
import_app = typer.Typer(add_completion=False, no_args_is_help=True, help="Import precomputed features into a store.")
app.add_typer(import_app, name="import")
console = Console()

OUT = typer.Option(Path("out"), "--out", "-o", help="Output folder (catalog, store, runs).")
CONFIG = typer.Option(None, "--config", "-c", help="YAML merged over configs/.")
DEVICE = typer.Option(None, "--device", help="auto | cpu | cuda")
OVERRIDES = typer.Argument(None, help="Config overrides, key=value (e.g. train.epochs=5).")
PROGRESS = typer.Option(True, "--progress/--no-progress", help="Show progress bars.")


def _cfg(config: Optional[Path], overrides: Optional[List[str]], device: Optional[str]):
    overrides = list(overrides or [])
    if device:
        overrides.append(f"device={device}")
    try:
        return load_config(config, overrides)
    except Exception as e:
        console.print(f"[red]config error:[/] {e}")
        raise typer.Exit(2)


@contextmanager
def _locked(out: Path):
    """Hold the output folder's lock; a second run on the same folder exits with a message."""
    try:
        lock = OutputLock(out).__enter__()
    except RuntimeError as e:
        console.print(f"[red]refusing to run:[/] {e}")
        raise typer.Exit(2)
    try:
        yield lock
    finally:
        lock.__exit__(None, None, None)


def print_status(out: Path) -> int:
    """Counts per stage and every failed video with its reason; returns the number of failures."""
    if not (out / "catalog.sqlite").exists():
        console.print(f"[red]{out} has no catalog yet[/] (run scan first)")
        return 0
    catalog = Catalog(out / "catalog.sqlite")
    try:
        videos = catalog.videos()
        counts = catalog.stage_counts()
        table = Table(title=f"{out}: {len(videos)} videos")
        for col in ("stage", "done", "missing", "failed", "pending"):
            table.add_column(col, justify="right" if col != "stage" else "left")
        table.add_row("scan", str(len(videos)), "", "", "")
        for stage in sorted(counts, key=lambda s: (s != "decode", s)):
            c = counts[stage]
            pending = len(videos) - sum(c.values())
            table.add_row(stage, str(c.get("done", 0)), str(c.get("missing", 0)), str(c.get("failed", 0)),
                          str(max(pending, 0)))
        console.print(table)
        failures = catalog.failures()
        if failures:
            ft = Table(title=f"{len(failures)} failures")
            for col in ("video", "stage", "reason"):
                ft.add_column(col, overflow="fold")
            for vid, _path, stage, error in failures:
                ft.add_row(vid, stage, error or "")
            console.print(ft)
        return len(failures)
    finally:
        catalog.close()


@app.command()
def scan(videos: Path = typer.Option(..., "--videos", "-v", help="Folder of videos (searched recursively)."),
         labels: Optional[Path] = typer.Option(None, "--labels", "-l", help="TSV (MultimodalVideoTag) / CSV / JSONL sidecar."),
         out: Path = OUT, config: Optional[Path] = CONFIG, device: Optional[str] = DEVICE,
         overrides: Optional[List[str]] = OVERRIDES):
    """Index a videos folder (and titles/labels) into OUT/catalog.sqlite."""
    from .stages import run_scan

    cfg = _cfg(config, overrides, device)
    with _locked(out):
        s = run_scan(cfg, out, videos, labels)
    console.print(f"scan: {s.found} videos ({s.new} new, {s.changed} changed, {s.unchanged} unchanged, "
                  f"{s.deleted} deleted); {s.labeled} labeled, {s.titled} titled")
    if s.unmatched_sidecar:
        console.print(f"[yellow]{len(s.unmatched_sidecar)} labels-file entries match no video:[/] "
                      f"{', '.join(s.unmatched_sidecar[:10])}{' …' if len(s.unmatched_sidecar) > 10 else ''}")


@app.command()
def extract(out: Path = OUT, engine: str = typer.Option("local", help="local | ray"),
            address: Optional[str] = typer.Option(None, help="Ray cluster address (engine=ray)."),
            limit: Optional[int] = typer.Option(None, help="Process at most this many videos."),
            config: Optional[Path] = CONFIG, device: Optional[str] = DEVICE, progress: bool = PROGRESS,
            overrides: Optional[List[str]] = OVERRIDES):
    """Decode and extract every configured modality for videos not done yet (resumable)."""
    cfg = _cfg(config, overrides, device)
    with _locked(out):
        if engine == "ray":
            from .ray_engine import run_extract_ray

            s = run_extract_ray(cfg, out, address=address, limit=limit)
        elif engine == "local":
            from .stages import run_extract

            s = run_extract(cfg, out, progress=progress, limit=limit)
        else:
            console.print(f"[red]unknown engine {engine!r}[/] (local | ray)")
            raise typer.Exit(2)
    console.print(f"extract: {s.decoded} decoded, {s.decode_failed} failed to decode, "
                  f"{s.videos_per_s:.2f} videos/s; " + ", ".join(
                      f"{m}: {c['done']} done/{c['missing']} missing/{c['failed']} failed" for m, c in s.per_modality.items()))
    if print_status(out):
        raise typer.Exit(1)


@app.command()
def complete(out: Path = OUT, config: Optional[Path] = CONFIG, device: Optional[str] = DEVICE,
             overrides: Optional[List[str]] = OVERRIDES):
    """Complete missing modalities by low-rank matrix factorization (new store version)."""
    from .complete import run_complete

    cfg = _cfg(config, overrides, device)
    with _locked(out):
        result = run_complete(cfg, out)
    console.print(result)


@app.command()
def train(out: Path = OUT, model: str = typer.Option("nmcl", "--model", "-m"),
          run_name: Optional[str] = typer.Option(None, "--run", help="Run folder name (default: the model name)."),
          resume: Optional[Path] = typer.Option(None, help="Checkpoint to resume from."),
          folds: int = typer.Option(1, help="k-fold cross-validation when > 1."),
          nproc: int = typer.Option(1, help="Processes for DistributedDataParallel (torchrun)."),
          config: Optional[Path] = CONFIG, device: Optional[str] = DEVICE,
          overrides: Optional[List[str]] = OVERRIDES):
    """Train a classifier on the store: best/last checkpoints, metrics.json, TensorBoard logs."""
    from . import train as training

    if nproc > 1:  # this process holds the folder; the torchrun workers it starts skip the lock
        with _locked(out):
            code = training.launch_distributed(nproc, sys.argv[1:])
        raise typer.Exit(code)
    cfg = _cfg(config, overrides, device)
    with (nullcontext() if "WORLD_SIZE" in os.environ else _locked(out)):
        if folds > 1:
            result = training.run_cross_validation(cfg, out, model, folds=folds)
        else:
            result = training.run_train(cfg, out, model, run_name=run_name, resume=resume)
    console.print({k: v for k, v in result.items() if not isinstance(v, (list, dict))} if isinstance(result, dict) else result)


@app.command()
def evaluate(out: Path = OUT, run: List[str] = typer.Option(..., "--run", help="Run folder name under OUT/runs; "
                                                           "give it several times to evaluate their ensemble."),
             split: str = typer.Option("val"), config: Optional[Path] = CONFIG, device: Optional[str] = DEVICE,
             overrides: Optional[List[str]] = OVERRIDES):
    """Metrics of a trained run (or of the ensemble of several) on a split: printed as a table and
    saved as JSON (OUT/runs/RUN/eval-SPLIT.json; ensembles: OUT/ensembles/A+B/eval-SPLIT.json)."""
    from .train import run_evaluate

    cfg = _cfg(config, overrides, device)
    run_evaluate(cfg, out, [out / "runs" / r for r in run], split=split)


@app.command()
def predict(out: Path = OUT, run: List[str] = typer.Option(..., "--run", help="Run folder name under OUT/runs; "
                                                          "several: their ensemble (mean probability)."),
            output: Optional[Path] = typer.Option(None, help="JSONL file (default OUT/runs/RUN/predictions.jsonl, "
                                                             "ensembles OUT/ensembles/A+B/predictions.jsonl)."),
            videos: Optional[Path] = typer.Option(None, "--videos", help="New videos: scanned and extracted first."),
            top_k: int = typer.Option(5), threshold: Optional[float] = typer.Option(None),
            config: Optional[Path] = CONFIG, device: Optional[str] = DEVICE, progress: bool = PROGRESS,
            overrides: Optional[List[str]] = OVERRIDES):
    """Top-k / thresholded labels with scores per video (JSONL, MultimodalVideoTag style)."""
    from .train import ensemble_dir, run_predict

    cfg = _cfg(config, overrides, device)
    video_ids = None
    if videos is not None:
        from .scan import find_videos
        from .stages import run_extract, run_scan

        with _locked(out):
            run_scan(cfg, out, videos)
            run_extract(cfg, out, progress=progress)
        root = videos.resolve()
        video_ids = [p.relative_to(root).as_posix() for p in find_videos(root, cfg.scan.extensions)]
    run_dirs = [out / "runs" / r for r in run]
    folder = run_dirs[0] if len(run_dirs) == 1 else ensemble_dir(out, run_dirs)
    path = run_predict(cfg, out, run_dirs, output or folder / "predictions.jsonl",
                       top_k=top_k, threshold=threshold, video_ids=video_ids)
    console.print(f"predictions written to {path}")


@app.command()
def status(out: Path = OUT):
    """Counts per stage and the failed videos with their reasons."""
    if print_status(out):
        raise typer.Exit(1)


@import_app.command("yt8m")
def import_yt8m_cmd(shards: List[Path] = typer.Argument(..., help="YouTube-8M TFRecord shards."),
                    out: Path = OUT, split: Optional[str] = typer.Option(None, help="train | val | test"),
                    vocabulary: Optional[Path] = typer.Option(None, help="vocabulary.csv (label names)."),
                    config: Optional[Path] = CONFIG,
                    overrides: Optional[List[str]] = typer.Option(None, "--set", help="key=value config override (repeatable).")):
    """YouTube-8M video- or frame-level TFRecord shards (no TensorFlow needed)."""
    from .importers import import_yt8m

    cfg = _cfg(config, overrides, None)
    with _locked(out):
        summary = import_yt8m([str(s) for s in shards], out, vocabulary=vocabulary, split=split, cfg=cfg)
    console.print(summary)
    if summary.get("corrupt_records"):
        raise typer.Exit(1)


@import_app.command("features")
def import_features_cmd(spec: Path = typer.Argument(..., help="YAML spec (see configs/importers/)."),
                        out: Path = OUT):
    """Generic .npy / .npz / CSV features described by a YAML spec."""
    from .importers import import_features

    with _locked(out):
        summary = import_features(spec, out)  # a malformed file or spec raises, naming it
    console.print(summary)


@app.command("demo-data")
def demo_data(folder: Path = typer.Argument(Path("demo_data")), per_class: int = typer.Option(12)):
    """Write the labeled synthetic micro-video set (h264 + AAC mp4, titles, some silent/untitled)."""
    from .demo import make_demo_dataset

    labels = make_demo_dataset(folder, per_class=per_class)
    console.print(f"demo videos in {folder / 'videos'}, labels/titles in {labels}")


@app.command()
def run(videos: Path = typer.Option(..., "--videos", "-v"), labels: Optional[Path] = typer.Option(None, "--labels", "-l"),
        out: Path = OUT, model: Optional[str] = typer.Option(None, "--model", "-m", help="Default: cfg.run.model."),
        folds: Optional[int] = typer.Option(None, help="k-fold cross-validation (default: cfg.run.folds)."),
        config: Optional[Path] = CONFIG, device: Optional[str] = DEVICE, progress: bool = PROGRESS,
        overrides: Optional[List[str]] = OVERRIDES):
    """Every stage: scan, decode+extract, complete, train, predict, evaluate."""
    from .pipeline_run import run_all

    cfg = _cfg(config, overrides, device)
    with _locked(out):
        ok = run_all(cfg, out, videos, labels, model=model, folds=folds, progress=progress, console=console)
    raise typer.Exit(0 if ok else 1)


@app.command()
def demo(data: Path = typer.Option(Path("demo_data"), help="Where the synthetic videos go."),
         out: Path = typer.Option(Path("demo_out"), "--out", "-o"), per_class: int = typer.Option(12),
         device: Optional[str] = DEVICE, progress: bool = PROGRESS, overrides: Optional[List[str]] = OVERRIDES):
    """The built-in demo: synthetic labeled videos, then every stage (configs/presets/demo.yaml)."""
    from .config import CONFIG_DIR
    from .demo import make_demo_dataset
    from .pipeline_run import run_all

    labels = make_demo_dataset(data, per_class=per_class)
    cfg = _cfg(CONFIG_DIR / "presets" / "demo.yaml", overrides, device)
    with _locked(out):
        ok = run_all(cfg, out, data / "videos", labels, progress=progress, console=console)
    raise typer.Exit(0 if ok else 1)


COMMANDS = {"scan", "extract", "complete", "train", "evaluate", "predict", "status", "import", "demo",
            "demo-data", "run", "--help", "-h"}


def main(argv: list[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    # `run_pipeline.py --videos DIR ...` (no subcommand) means `run`.
    if argv and argv[0] not in COMMANDS:
        argv = ["run"] + argv
    app(args=argv, prog_name="run_pipeline.py")
