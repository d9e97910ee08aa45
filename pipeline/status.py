"""`run_pipeline.py status`: what is done in an output folder, and every failure with its reason.

Reads only the catalog (sqlite, WAL: safe while an `extract` writes the same folder) and imports
nothing heavy, so it answers in a fraction of a second.
"""
from __future__ import annotations

from pathlib import Path

from rich.console import Console
from rich.table import Table

from .catalog import Catalog
from .errors import NotFound


def print_status(out: Path, console: Console | None = None) -> int:
    """Counts per stage and every failed video with its reason; returns the number of failures."""
    console = console or Console()
    out = Path(out)
    if not (out / "catalog.sqlite").exists():
        raise NotFound(f"{out} has no catalog yet: run `run_pipeline.py scan --videos DIR --out {out}` first")
    catalog = Catalog(out / "catalog.sqlite", readonly=True)   # beside a running extract, no lock
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
        salvaged = [(v["video_id"], v.get("decode_warnings")) for v in videos if v.get("decode_warnings")]
        if salvaged:  # done, but a damaged file lost packets/frames on the way (pipeline.decode)
            wt = Table(title=f"{len(salvaged)} decoded with losses (salvaged)")
            for col in ("video", "decode_warnings"):
                wt.add_column(col, overflow="fold")
            for vid, warn in salvaged:
                wt.add_row(vid, ", ".join(f"{k}={n}" for k, n in sorted(warn.items())))
            console.print(wt)
        return len(failures)
    finally:
        catalog.close()
