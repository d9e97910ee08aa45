"""Rich progress bars with videos/s and ETA, shared by every stage."""
from __future__ import annotations

from contextlib import contextmanager
from typing import Callable, Iterator

from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TaskProgressColumn, TextColumn,
                           TimeElapsedColumn, TimeRemainingColumn)


def bar_columns(label: str) -> tuple:
    """The columns every bar starts with: label, bar, done/total, elapsed."""
    return TextColumn(f"[bold]{label}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn()


@contextmanager
def video_progress(label: str, total: int, enabled: bool = True, unit: str = "videos") -> Iterator[Callable[[int], None]]:
    """`with video_progress("extract", n) as advance: advance(k)` draws
    `extract ━━━━ 12/300 4% 3.1 videos/s 0:00:04 eta 0:01:33`; a no-op when disabled."""
    if not enabled:
        yield lambda n=1: None
        return
    columns = (*bar_columns(label), TaskProgressColumn(), TextColumn("[cyan]{task.fields[rate]}"),
               TextColumn("eta"), TimeRemainingColumn())
    with Progress(*columns, transient=False) as bar:
        task = bar.add_task(label, total=total, rate=f"- {unit}/s")

        def advance(n: int = 1) -> None:
            bar.advance(task, n)
            speed = bar.tasks[task].speed
            bar.update(task, rate=f"{speed:.1f} {unit}/s" if speed else f"- {unit}/s")

        yield advance
