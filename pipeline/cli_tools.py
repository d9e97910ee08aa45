"""The command line's tool commands: verify, import, serve, weights, export, report.

Registered on the same `app` as the stage commands of `pipeline/cli.py` (which imports this
module), with the same option set (`pipeline/cli_common.py`). Add a tool command here, a stage
command in cli.py; either way the module it runs is imported inside the function.
"""
from __future__ import annotations

import os
from contextlib import nullcontext
from pathlib import Path
from typing import List, Optional

import typer

from .cli_common import (CONFIG, DEBUG, DEVICE, OUT, OVERRIDES, PROGRESS, RUNS, app, console, import_app, locked,
                         make_cfg, show)
from .errors import UsageError


@app.command()
def verify(out: Path = OUT, repair: bool = typer.Option(False, "--repair", help="Remove orphan files and mark "
                                                       "broken videos pending for the next extract."),
           config: Optional[Path] = CONFIG, device: Optional[str] = DEVICE, progress: bool = PROGRESS,
           debug: bool = DEBUG, overrides: Optional[List[str]] = OVERRIDES):
    """Check the catalog and every shard (exists, shape, dtype, sha256, rows); exit 1 with the list."""
    from .verify import print_report, verify_output

    make_cfg(config, overrides, device)
    with (locked(out) if repair else nullcontext()):   # a plain verify reads only, beside any writer
        report = verify_output(out, repair=repair)
    if not print_report(report, console):
        raise typer.Exit(1)


@import_app.command("yt8m")
def import_yt8m_cmd(shards: List[Path] = typer.Argument(..., help="YouTube-8M TFRecord shards."),
                    out: Path = OUT, split: Optional[str] = typer.Option(None, help="train | val | test"),
                    vocabulary: Optional[Path] = typer.Option(None, help="vocabulary.csv (label names)."),
                    config: Optional[Path] = CONFIG, device: Optional[str] = DEVICE, progress: bool = PROGRESS,
                    debug: bool = DEBUG,
                    overrides: Optional[List[str]] = typer.Option(None, "--set", help="key=value config override "
                                                                                      "(repeatable; the shards take "
                                                                                      "the trailing arguments).")):
    """YouTube-8M video- or frame-level TFRecord shards (no TensorFlow needed)."""
    from .importers import import_yt8m

    cfg = make_cfg(config, overrides, device)
    with locked(out):
        summary = import_yt8m([str(s) for s in shards], out, vocabulary=vocabulary, split=split, cfg=cfg)
    show("import yt8m", summary)
    if summary.get("corrupt_records"):
        raise typer.Exit(1)


@import_app.command("features")
def import_features_cmd(spec: Path = typer.Argument(..., help="YAML spec (see configs/importers/)."),
                        out: Path = OUT, config: Optional[Path] = CONFIG, device: Optional[str] = DEVICE,
                        progress: bool = PROGRESS, debug: bool = DEBUG,
                        overrides: Optional[List[str]] = typer.Option(None, "--set", help="key=value config override.")):
    """Generic .npy / .npz / CSV features described by a YAML spec."""
    from .importers import import_features

    cfg = make_cfg(config, overrides, device)
    with locked(out):
        summary = import_features(spec, out, cfg=cfg)  # a malformed file or spec raises, naming it
    show("import features", summary)


@app.command()
def serve(out: Path = OUT, run: List[str] = RUNS,
          host: Optional[str] = typer.Option(None, help="Address to bind (default serve.host: 127.0.0.1)."),
          port: Optional[int] = typer.Option(None, help="Port (default serve.port)."),
          token: Optional[str] = typer.Option(None, help="Bearer token required on /v1/predict (default: the "
                                                         "environment variable named by serve.token_env)."),
          allow_root: Optional[Path] = typer.Option(None, "--allow-root", help="Also accept JSON requests naming a "
                                                                              "file under this folder."),
          config: Optional[Path] = CONFIG, device: Optional[str] = DEVICE, progress: bool = PROGRESS,
          debug: bool = DEBUG, overrides: Optional[List[str]] = OVERRIDES):
    """A tagging service: upload a video to POST /v1/predict, get predict's record (pipeline/serve.py)."""
    from .serve import serve as run_server

    cfg = make_cfg(config, overrides, device)
    run_dirs = [out / "runs" / r for r in run]
    for r in run_dirs:
        if not r.is_dir():
            raise UsageError(f"no run {r.name!r} under {out / 'runs'}")
    if allow_root is not None and not allow_root.is_dir():
        raise UsageError(f"--allow-root folder not found: {allow_root}")
    run_server(cfg, out, run_dirs, host or cfg.serve.host, port or int(cfg.serve.port),
               token=token or os.environ.get(cfg.serve.token_env) or None, allow_root=allow_root)


# -- ecosystem: weights, export, report (pipeline/weights.py, export.py, report.py) ----------
weights_app = typer.Typer(add_completion=False, no_args_is_help=True,
                          help="Pretrained files of the configured extractors: list, fetch ahead, verify. "
                               "Any command takes --weights-dir DIR (a folder filled by `weights fetch --to DIR`).")
app.add_typer(weights_app, name="weights")


def _weight_files(config, overrides, device):
    from .weights import collect

    return collect(make_cfg(config, overrides, device))


@weights_app.command("list")
def weights_list(config: Optional[Path] = CONFIG, device: Optional[str] = DEVICE, progress: bool = PROGRESS,
                 debug: bool = DEBUG, overrides: Optional[List[str]] = OVERRIDES):
    """Every file / Hugging Face repo the configured extractors need: size, sha256 or revision, folder, present."""
    from .weights import print_list

    print_list(_weight_files(config, overrides, device), console=console)


@weights_app.command("fetch")
def weights_fetch(to: Optional[Path] = typer.Option(None, "--to", help="Fill this folder (copy it to an offline "
                                                                      "machine, use it there with --weights-dir)."),
                  config: Optional[Path] = CONFIG, device: Optional[str] = DEVICE, progress: bool = PROGRESS,
                  debug: bool = DEBUG, overrides: Optional[List[str]] = OVERRIDES):
    """Download what is missing (progress bar, sha256 checked, atomic); exit 1 if a required file is still absent."""
    from .weights import print_fetch

    if print_fetch(_weight_files(config, overrides, device), to, console=console, progress=progress):
        raise typer.Exit(1)


@weights_app.command("verify")
def weights_verify(config: Optional[Path] = CONFIG, device: Optional[str] = DEVICE, progress: bool = PROGRESS,
                   debug: bool = DEBUG, overrides: Optional[List[str]] = OVERRIDES):
    """Re-hash every present file; exit 1 when one is corrupt or a required one is missing."""
    from .weights import print_verify

    if print_verify(_weight_files(config, overrides, device), console=console):
        raise typer.Exit(1)


@app.command()
def export(dest: Path = typer.Argument(..., help="Folder (npy, parquet) or .h5 file (hdf5)."), out: Path = OUT,
           fmt: str = typer.Option("parquet", "--format", "-f", help="npy | hdf5 | parquet"),
           modalities: Optional[str] = typer.Option(None, "--modalities", help="Comma-separated (default: all)."),
           pooled: bool = typer.Option(False, "--pooled", help="Only the pooled vectors."),
           sequence: bool = typer.Option(False, "--sequence", help="Only the sequences (with their times)."),
           config: Optional[Path] = CONFIG, device: Optional[str] = DEVICE, progress: bool = PROGRESS,
           debug: bool = DEBUG, overrides: Optional[List[str]] = OVERRIDES):
    """The store's features as npy (video_features layout), one HDF5 file, or Parquet parts."""
    from .export import run_export

    make_cfg(config, overrides, device)   # a mistyped key is an error here too
    if pooled and sequence:
        raise UsageError("--pooled and --sequence exclude each other (give neither for both)")
    layouts = ("pooled",) if pooled else ("sequence",) if sequence else ("pooled", "sequence")
    names = [m.strip() for m in modalities.split(",") if m.strip()] if modalities else None
    show(f"export {fmt}", run_export(out, dest, fmt, modalities=names, layouts=layouts))


@app.command()
def report(out: Path = OUT, run: Optional[str] = typer.Option(None, "--run", help="Run folder name under OUT/runs "
                                                                              "(default: the latest)."),
           output: Optional[Path] = typer.Option(None, "--output", help="HTML file (default OUT/report.html)."),
           config: Optional[Path] = CONFIG, device: Optional[str] = DEVICE, progress: bool = PROGRESS,
           debug: bool = DEBUG, overrides: Optional[List[str]] = OVERRIDES):
    """One self-contained HTML report: catalog, data, features, completion, the run, config and versions."""
    from .report import write_report

    path = write_report(out, run=run, output=output, cfg=make_cfg(config, overrides, device))
    console.print(f"report written to {path}")
