"""What every command shares: the typer app, the one option set, reading the config, the
output folder's lock and printing a result as a table. Imports nothing heavy (typer, rich)."""
from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path
from typing import List, Optional

import typer
from rich.console import Console
from rich.table import Table

from .errors import UsageError

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Raw micro-videos in, multimodal features and trained classifiers out.")
import_app = typer.Typer(add_completion=False, no_args_is_help=True, help="Import precomputed features into a store.")
app.add_typer(import_app, name="import")
console = Console()
err_console = Console(stderr=True)

# -- the one option set ----------------------------------------------------------------------
OUT = typer.Option(Path("out"), "--out", "-o", help="Output folder (catalog, store, runs).")
CONFIG = typer.Option(None, "--config", "-c", help="YAML merged over configs/.")
DEVICE = typer.Option(None, "--device", help="auto | cpu | cuda (sets the config's `device`).")
PROGRESS = typer.Option(True, "--progress/--no-progress", help="Show progress bars.")
DEBUG = typer.Option(False, "--debug", help="Show the traceback of an error (or MICROVIDEO_DEBUG=1).")
OVERRIDES = typer.Argument(None, help="Config overrides, key=value (e.g. train.epochs=5).", show_default=False)
RUNS = typer.Option(..., "--run", help="Run folder name under OUT/runs; give it several times for their ensemble "
                                       "(mean probability).")


def make_cfg(config: Optional[Path], overrides: Optional[List[str]], device: Optional[str]):
    from .config import load_config

    overrides = list(overrides or [])
    if device:
        overrides.append(f"device={device}")
    return load_config(config, overrides)


@contextmanager
def locked(out: Path):
    """Hold the output folder's lock; a second run on the same folder exits with a message."""
    from .catalog import OutputLock

    try:
        lock = OutputLock(out).__enter__()
    except RuntimeError as e:
        raise UsageError(f"refusing to run: {e}") from None
    try:
        yield lock
    finally:
        lock.__exit__(None, None, None)


def show(title: str, result: dict) -> None:
    """A result as a two-column rich table (nested dicts as `key.sub` rows)."""
    table = Table(title=title, show_header=False)
    table.add_column("what", style="bold")
    table.add_column("value", overflow="fold")

    def rows(d: dict, prefix: str = ""):
        for k, v in d.items():
            if isinstance(v, dict) and v and len(prefix.split(".")) < 3:
                yield from rows(v, f"{prefix}{k}.")
            elif isinstance(v, float):
                yield f"{prefix}{k}", f"{v:.4g}"
            elif isinstance(v, (list, tuple)) and len(v) > 8:
                yield f"{prefix}{k}", f"{', '.join(map(str, v[:8]))} … ({len(v)})"
            else:
                yield f"{prefix}{k}", str(v)

    for k, v in rows(result):
        table.add_row(k, v)
    console.print(table)


def status_exit(out: Path) -> None:
    from .status import print_status

    if print_status(out, console):
        raise typer.Exit(1)
