"""Console helpers: progress bars that switch off cleanly, and frames as tables."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator

import polars as pl
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table


@contextlib.contextmanager
def progress_bar(
    description: str, total: int | None, *, enabled: bool = True
) -> Iterator[Callable[[int], None]]:
    """Yield ``advance(n)``; the bar renders only when enabled (a no-op otherwise)."""
    if not enabled:
        yield lambda _n: None
        return
    with Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        transient=False,
    ) as prog:
        task = prog.add_task(description, total=total)
        yield lambda n: prog.advance(task, n)


def frame_table(df: pl.DataFrame, title: str | None = None, digits: int = 4) -> Table:
    """A polars frame as a rich table with rounded floats (polars' repr truncates columns)."""
    t = Table(title=title, title_justify="left")
    for c, dt in df.schema.items():
        t.add_column(c, justify="right" if dt.is_numeric() else "left")
    for row in df.iter_rows():
        t.add_row(*(f"{v:.{digits}f}" if isinstance(v, float) else ("" if v is None else str(v))
                    for v in row))
    return t
