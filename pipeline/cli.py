"""The command line: `run_pipeline.py --videos DIR` runs every stage; one subcommand per stage.

    run_pipeline.py --videos DIR [--labels FILE] [--out DIR] [--config YAML] [key=value ...]
    run_pipeline.py demo                      # synthetic demo set + the whole pipeline
    run_pipeline.py scan --videos DIR [--labels FILE] --out DIR
    run_pipeline.py extract --out DIR [--engine local|ray]
    run_pipeline.py complete --out DIR
    run_pipeline.py train --out DIR --model NAME [--folds K] [--nproc N]
    run_pipeline.py evaluate --out DIR --run NAME [--split val|test|train|all]
    run_pipeline.py predict --out DIR --run NAME [--videos DIR] [--top-k K]
    run_pipeline.py import yt8m SHARDS... --out DIR | import features SPEC.yaml --out DIR
    run_pipeline.py status --out DIR
    run_pipeline.py verify --out DIR [--repair]   # shards, checksums, rows, orphans, sqlite integrity

Every command takes the same options: --out, --config, --device, --progress/--no-progress,
--debug, and trailing `key=value` config overrides (read strictly: an unknown key is an error).
Exit status: 0 all good, 1 something failed (listed), 2 bad usage. An error is one red line;
`--debug` (or MICROVIDEO_DEBUG=1) adds the traceback.

Adding a command: a stage here, a tool in `cli_tools.py`; a function taking the option set of
`cli_common.py`, `cfg = make_cfg(...)` first, the module it runs imported inside it (so `scan`,
`status` and `--help` never import torch), its result printed with `show` (a rich table).
"""
from __future__ import annotations

import os
import sys
import traceback
from contextlib import nullcontext
from pathlib import Path
from typing import List, Optional

import typer

from . import cli_tools  # noqa: F401  (registers verify, import, serve, weights, export, report)
from .cli_common import (CONFIG, DEBUG, DEVICE, OUT, OVERRIDES, PROGRESS, RUNS, app, console, err_console, locked,
                         make_cfg, show, status_exit)
from .errors import UsageError, exit_code, one_line

_ARGV: list[str] = []   # what main() was given (torchrun's workers get it again)


# -- the stages ------------------------------------------------------------------------------
@app.command()
def scan(videos: Path = typer.Option(..., "--videos", "-v", help="Folder of videos (searched recursively)."),
         labels: Optional[Path] = typer.Option(None, "--labels", "-l", help="TSV (MultimodalVideoTag) / CSV / JSONL sidecar."),
         out: Path = OUT, config: Optional[Path] = CONFIG, device: Optional[str] = DEVICE, progress: bool = PROGRESS,
         debug: bool = DEBUG, overrides: Optional[List[str]] = OVERRIDES):
    """Index a videos folder (and titles/labels) into OUT/catalog.sqlite."""
    from .scan import run_scan

    cfg = make_cfg(config, overrides, device)
    with locked(out):
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
            debug: bool = DEBUG, overrides: Optional[List[str]] = OVERRIDES):
    """Decode and extract every configured modality for videos not done yet (resumable)."""
    if engine not in ("local", "ray"):
        raise UsageError(f"unknown engine {engine!r} (local | ray)")
    cfg = make_cfg(config, overrides, device)
    with locked(out):
        if engine == "ray":
            from .ray_engine import run_extract_ray

            s = run_extract_ray(cfg, out, address=address, limit=limit)
        else:
            from .extract import run_extract

            s = run_extract(cfg, out, progress=progress, limit=limit)
    console.print(f"extract: {s.decoded} decoded, {s.decode_failed} failed to decode, "
                  f"{s.videos_per_s:.2f} videos/s; " + ", ".join(
                      f"{m}: {c['done']} done/{c['missing']} missing/{c['failed']} failed" for m, c in s.per_modality.items()))
    status_exit(out)


@app.command()
def complete(out: Path = OUT, config: Optional[Path] = CONFIG, device: Optional[str] = DEVICE,
             progress: bool = PROGRESS, debug: bool = DEBUG, overrides: Optional[List[str]] = OVERRIDES):
    """Complete missing modalities by low-rank matrix factorization (new store version)."""
    from .complete import run_complete

    cfg = make_cfg(config, overrides, device)
    with locked(out):
        result = run_complete(cfg, out, progress=progress)
    show("complete", result)


@app.command()
def train(out: Path = OUT, model: str = typer.Option("nmcl", "--model", "-m"),
          run_name: Optional[str] = typer.Option(None, "--run", help="Run folder name (default: the model name)."),
          resume: Optional[Path] = typer.Option(None, help="Checkpoint (or run folder) to resume from."),
          folds: int = typer.Option(1, help="k-fold cross-validation when > 1 (held-out folds)."),
          nproc: int = typer.Option(1, help="Processes for DistributedDataParallel (torchrun)."),
          config: Optional[Path] = CONFIG, device: Optional[str] = DEVICE, progress: bool = PROGRESS,
          debug: bool = DEBUG, overrides: Optional[List[str]] = OVERRIDES):
    """Train a classifier on the store: best/last checkpoints, metrics.json, TensorBoard logs."""
    from .distributed import is_worker, launch_distributed, rank_world, teardown_distributed

    cfg = make_cfg(config, [*(overrides or []), *([] if progress else ["train.progress=false"])], device)
    if nproc > 1 and not is_worker():   # this process holds the folder; the workers skip the lock
        if not _ARGV:
            raise UsageError("train --nproc N starts `run_pipeline.py train ...` again N times: run it from the "
                             "command line (pipeline.cli.main), not from an embedded typer app")
        with locked(out):
            code = launch_distributed(nproc, _ARGV)
        raise typer.Exit(code)
    with (nullcontext() if is_worker() else locked(out)):
        if folds > 1:
            from .crossval import run_cross_validation

            result = run_cross_validation(cfg, out, model, folds=folds, run_name=run_name)
            title, shown = f"{model}: {folds}-fold cross-validation, held-out folds", result["summary"]
        else:
            from .train import run_train

            result = run_train(cfg, out, model, run_name=run_name, resume=resume)
            title = f"{model}: best epoch {result['best_epoch'] + 1} on val ({result['run_dir']})"
            shown = {k: v for k, v in (result["best"] or {}).items() if k != "epoch"}
    if rank_world()[0] == 0:   # torchrun workers: rank 0 speaks for all
        show(title, shown)
    teardown_distributed()


@app.command()
def evaluate(out: Path = OUT, run: List[str] = RUNS,
             split: str = typer.Option("val", help="val | test | train | all"),
             config: Optional[Path] = CONFIG, device: Optional[str] = DEVICE, progress: bool = PROGRESS,
             debug: bool = DEBUG, overrides: Optional[List[str]] = OVERRIDES):
    """Metrics of a trained run (or of the ensemble of several) on a split: printed as a table and
    saved as JSON (OUT/runs/RUN/eval-SPLIT.json; ensembles: OUT/ensembles/A+B/eval-SPLIT.json)."""
    from .evaluate import run_evaluate

    cfg = make_cfg(config, overrides, device)
    run_evaluate(cfg, out, [out / "runs" / r for r in run], split=split)


@app.command()
def predict(out: Path = OUT,
            run: Optional[List[str]] = typer.Option(None, "--run", help="Run folder name under OUT/runs; several: "
                                                    "their ensemble (mean probability). Not with --zero-shot."),
            output: Optional[Path] = typer.Option(None, help="JSONL file (default OUT/runs/RUN/predictions.jsonl, "
                                                             "ensembles OUT/ensembles/A+B/predictions.jsonl)."),
            zero_shot: bool = typer.Option(False, "--zero-shot", help="No trained run: score each video's image_text "
                                           "embedding against label prompts (pipeline/zeroshot.py)."),
            labels_from: Optional[Path] = typer.Option(None, "--labels-from", help="Zero-shot labels: one per line "
                                                       "(or a .json list)."),
            template: Optional[str] = typer.Option(None, "--template", help="Zero-shot prompt with {label} (default "
                                                   "extractors.image_text.zero_shot.template: 'a video of {label}')."),
            videos: Optional[Path] = typer.Option(None, "--videos", help="New videos, kept apart from the training "
                                                                         "set (pipeline/predict.py)."),
            top_k: Optional[int] = typer.Option(None, "--top-k", help="Labels per video (default: run.top_k)."),
            threshold: Optional[float] = typer.Option(None, help="Keep labels with p >= this (default: run.threshold)."),
            config: Optional[Path] = CONFIG, device: Optional[str] = DEVICE, progress: bool = PROGRESS,
            debug: bool = DEBUG, overrides: Optional[List[str]] = OVERRIDES):
    """Top-k / thresholded labels with scores per video (JSONL, MultimodalVideoTag style)."""
    cfg = make_cfg(config, overrides, device)
    top_k = cfg.run.top_k if top_k is None else top_k
    threshold = cfg.run.threshold if threshold is None else threshold
    if zero_shot:
        from .config import resolve_device
        from .zeroshot import read_labels, run_zero_shot

        if labels_from is None or run:
            raise UsageError("--zero-shot needs --labels-from FILE and takes no --run")
        path = run_zero_shot(cfg, out, read_labels(labels_from), output, template=template, top_k=top_k,
                             threshold=threshold, device=resolve_device(cfg.device))
        console.print(f"zero-shot predictions written to {path}")
        return
    if not run:
        raise UsageError("predict needs --run NAME (or --zero-shot --labels-from FILE)")
    run_dirs = [out / "runs" / r for r in run]
    if videos is not None:
        from .predict import predict_videos

        path = predict_videos(cfg, out, run_dirs, videos, output, top_k=top_k, threshold=threshold, progress=progress)
    else:
        from .evaluate import ensemble_dir, run_predict

        folder = run_dirs[0] if len(run_dirs) == 1 else ensemble_dir(out, run_dirs)
        path = run_predict(cfg, out, run_dirs, output or folder / "predictions.jsonl", top_k=top_k, threshold=threshold)
    console.print(f"predictions written to {path}")


@app.command()
def status(out: Path = OUT, config: Optional[Path] = CONFIG, device: Optional[str] = DEVICE,
           progress: bool = PROGRESS, debug: bool = DEBUG, overrides: Optional[List[str]] = OVERRIDES):
    """Counts per stage and the failed videos with their reasons (exit 1 when any failed)."""
    if config or overrides or device:   # only read the config (omegaconf) when asked: status starts fast
        make_cfg(config, overrides, device)   # a mistyped key is an error here too
    status_exit(out)


@app.command("demo-data")
def demo_data(folder: Path = typer.Argument(Path("demo_data")), per_class: int = typer.Option(12),
              debug: bool = DEBUG):
    """Write the labeled synthetic micro-video set (h264 + AAC mp4, titles, some silent/untitled)."""
    from .demo import make_demo_dataset

    labels = make_demo_dataset(folder, per_class=per_class)
    console.print(f"demo videos in {folder / 'videos'}, labels/titles in {labels}")


@app.command()
def run(videos: Path = typer.Option(..., "--videos", "-v"), labels: Optional[Path] = typer.Option(None, "--labels", "-l"),
        out: Path = OUT, model: Optional[str] = typer.Option(None, "--model", "-m", help="Default: run.model."),
        folds: Optional[int] = typer.Option(None, help="k-fold cross-validation (default: run.folds)."),
        config: Optional[Path] = CONFIG, device: Optional[str] = DEVICE, progress: bool = PROGRESS,
        debug: bool = DEBUG, overrides: Optional[List[str]] = OVERRIDES):
    """Every stage in one process: scan, decode+extract, complete, train, predict, evaluate (held out)."""
    from .run import run_all

    cfg = make_cfg(config, overrides, device)
    with locked(out):
        ok = run_all(cfg, out, videos, labels, model=model, folds=folds, progress=progress, console=console)
    raise typer.Exit(0 if ok else 1)


@app.command()
def demo(data: Path = typer.Option(Path("demo_data"), help="Where the synthetic videos go."),
         out: Path = typer.Option(Path("demo_out"), "--out", "-o"), per_class: int = typer.Option(12),
         config: Optional[Path] = CONFIG, device: Optional[str] = DEVICE, progress: bool = PROGRESS,
         debug: bool = DEBUG, overrides: Optional[List[str]] = OVERRIDES):
    """The built-in demo: synthetic labeled videos, then every stage (configs/presets/demo.yaml,
    then --config on top)."""
    from .config import CONFIG_DIR
    from .demo import make_demo_dataset
    from .run import run_all

    cfg = make_cfg([CONFIG_DIR / "presets" / "demo.yaml", *([config] if config else [])], overrides, device)
    labels = make_demo_dataset(data, per_class=per_class)
    with locked(out):
        ok = run_all(cfg, out, data / "videos", labels, progress=progress, console=console)
    raise typer.Exit(0 if ok else 1)


# -- the entry point -------------------------------------------------------------------------
def _weights_dir(argv: list[str]) -> list[str]:
    """`--weights-dir DIR` anywhere on the line (any command): DIR becomes TORCH_HOME and HF_HOME
    before anything imports torch or transformers (pipeline/weights.py)."""
    for i, arg in enumerate(argv):
        if arg == "--weights-dir" or arg.startswith("--weights-dir="):
            value = arg.split("=", 1)[1] if "=" in arg else (argv[i + 1] if i + 1 < len(argv) else None)
            if not value:   # left for typer to report as a bad option
                return argv
            from .weights import use_weights_dir

            use_weights_dir(value)
            return argv[:i] + argv[i + (1 if "=" in arg else 2):]
    return argv


def _commands() -> set[str]:
    """Every subcommand and command group registered on `app` (so adding one needs no list)."""
    names = {c.name or c.callback.__name__.replace("_", "-") for c in app.registered_commands}
    return names | {g.name for g in app.registered_groups} | {"--help", "-h"}


def main(argv: list[str] | None = None) -> None:
    """`run_pipeline.py ...`: project errors become one red line and exit 1 (failure) or 2
    (usage); anything else is a bug and keeps its traceback."""
    global _ARGV
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv or os.environ.get("MICROVIDEO_DEBUG", "") not in ("", "0")
    argv = _weights_dir(argv)
    if argv and argv[0] == "--debug":   # `run_pipeline.py --debug CMD ...`: the option belongs to CMD
        argv = argv[1:] + ["--debug"]
    # `run_pipeline.py --videos DIR ...` (no subcommand) means `run`.
    if argv and argv[0] not in _commands():
        argv = ["run"] + argv
    _ARGV = argv
    try:
        app(args=argv, prog_name="run_pipeline.py")
    except Exception as e:
        code = exit_code(e)
        if code is None or debug:
            traceback.print_exc()
        if code is None:
            sys.exit(1)
        err_console.print(f"[red]error:[/] {one_line(e)}", highlight=False, soft_wrap=True)
        sys.exit(code)
