"""Console helpers: progress bars that switch off cleanly, and frames as tables."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import polars as pl
from rich.console import Console, ConsoleOptions, RenderResult
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


@contextlib.contextmanager
def named_steps(description: str, total: int, *, enabled: bool = True,
                console: Console | None = None) -> Iterator[Callable[[str], None]]:
    """Yield ``step(name)``: the bar counts finished steps and names the one running, with the
    time elapsed, so a slow step (a baseline fitting for a minute) is visibly the one at work."""
    if not enabled:
        yield lambda _name: None
        return
    with Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                  TextColumn("{task.fields[current]}"), TimeElapsedColumn(), transient=False,
                  console=console) as prog:
        task = prog.add_task(description, total=total, current="")
        started = [False]

        def step(name: str) -> None:
            if started[0]:
                prog.advance(task, 1)
            started[0] = True
            prog.update(task, current=name)

        yield step
        if started[0]:
            prog.advance(task, 1)
        prog.update(task, current="done")


@dataclass
class FrameTable:
    """A polars frame as rich tables that fit the terminal: headers wrap at their words, a number
    is never cut, and columns that do not fit beside the first (key) column go to a continuation
    table with the key repeated."""

    frame: pl.DataFrame
    title: str | None = None
    digits: int = 4

    def _cells(self) -> list[list[str]]:
        return [[f"{v:.{self.digits}f}" if isinstance(v, float) else ("" if v is None else str(v))
                 for v in row] for row in self.frame.iter_rows()]

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        cells = self._cells()
        names = self.frame.columns
        numeric = [dt.is_numeric() for dt in self.frame.schema.values()]
        headers = [c.replace("_", " ") for c in names]
        # what a column takes: its widest cell or its header (a long header wraps at its words),
        # plus padding and a border
        need = [max([len(r[i]) for r in cells]
                    + [len(h) if len(h) <= 12 else max(map(len, h.split())) + 2]) + 3
                for i, h in enumerate(headers)]
        key = 0 if names and not numeric[0] else None
        budget = options.max_width - 2 - (need[key] if key is not None else 0)
        groups: list[list[int]] = [[]]
        used = 0
        for i in range(len(names)):
            if i == key:
                continue
            if groups[-1] and used + need[i] > budget:
                groups.append([])
                used = 0
            groups[-1].append(i)
            used += need[i]
        for g, cols in enumerate(groups):
            shown = ([key] if key is not None else []) + cols
            part = f" ({g + 1}/{len(groups)})" if len(groups) > 1 and self.title else ""
            t = Table(title=f"{self.title}{part}" if self.title else None, title_justify="left")
            for i in shown:  # min_width: a header wraps at its words, a cell is never cut
                t.add_column(headers[i], justify="right" if numeric[i] else "left",
                             min_width=need[i] - 3, overflow="fold")
            for r in cells:
                t.add_row(*(r[i] for i in shown))
            yield t


def frame_table(df: pl.DataFrame, title: str | None = None, digits: int = 4) -> FrameTable:
    """A polars frame as tables that fit the console (polars' repr truncates columns)."""
    return FrameTable(df, title, digits)
