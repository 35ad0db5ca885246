"""`moola runs list|show|compare`: the MLflow record of train, pretrain, oof, sweep and tuning runs."""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from typing import TYPE_CHECKING, Annotated

import typer
from rich.cells import cell_len
from rich.console import Console, JustifyMethod
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from moola.cli._app import _friendly_errors, console

if TYPE_CHECKING:
    from moola.tracking import ComparedRun

runs_app = typer.Typer(help="Tracked runs (MLflow): list them, show one, compare their test results.",
                       no_args_is_help=True)

ExperimentOpt = Annotated[
    str | None,
    typer.Option("--experiment", "-e", help="Only this MLflow experiment (train, sweep/NAME ...)."),
]


def _when(ms: int | None) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).strftime("%Y-%m-%d %H:%M:%S") if ms else "-"


def _duration(start: int | None, end: int | None) -> str:
    if not start or not end:
        return "-"
    s = (end - start) / 1000
    return f"{s:.1f}s" if s < 120 else f"{s / 60:.1f} min"


def _value(v: float) -> str:
    return f"{v:.6g}"


def _kv_table(title: str, items: dict[str, str], key: str, value: str) -> Table | str:
    if not items:
        return f"{title}: none"
    t = Table(title=title, title_justify="left")
    t.add_column(key, overflow="fold")
    t.add_column(value, overflow="fold")
    for k, v in sorted(items.items()):
        t.add_row(escape(k), escape(v))
    return t


@runs_app.command("list")
@_friendly_errors
def runs_list(
    experiment: ExperimentOpt = None,
    limit: Annotated[int, typer.Option("--limit", "-n", min=1, help="At most this many runs.")] = 50,
) -> None:
    """Runs newest first with their headline metrics."""
    from moola.tracking import list_runs, tracking_uri

    frame = list_runs(experiment, max_results=limit)
    console.print(f"tracking store: {escape(tracking_uri())}", highlight=False, soft_wrap=True)
    if frame.height == 0:
        where = f" in experiment {experiment!r}" if experiment else ""
        console.print(f"no runs{escape(where)} yet: train, pretrain, oof, sweep or tune one "
                      "(MOOLA_TRACKING=off records nothing; MLFLOW_TRACKING_URI picks another store)")
        return
    t = Table(title=f"{frame.height} run(s), newest first", title_justify="left", box=None,
              pad_edge=False, header_style="bold underline")
    t.add_column("run id", no_wrap=True, min_width=32)
    for col in ("experiment", "name", "status", "command"):
        t.add_column(col, overflow="fold")
    t.add_column("start (UTC)", no_wrap=True)
    t.add_column("metrics", overflow="fold")
    for r in frame.iter_rows(named=True):
        start = r["start"].strftime("%Y-%m-%d %H:%M") if r["start"] else "-"
        style = {"FAILED": "red", "KILLED": "yellow", "RUNNING": "cyan"}.get(r["status"])
        t.add_row(r["run_id"], escape(r["experiment"]), escape(r["name"] or ""), r["status"],
                  escape(r["command"]), start, escape(r["metrics"].replace(" ", "\n")), style=style)
    console.print(t)


@runs_app.command("show")
@_friendly_errors
def runs_show(
    run: Annotated[str, typer.Argument(help="Run id, or run name (the newest run of that name).")],
    experiment: ExperimentOpt = None,
    history_key: Annotated[
        str, typer.Option("--history", help="Per-epoch metric to print epoch by epoch.")
    ] = "val_loss",
) -> None:
    """Status, tags, params, final metrics, the per-epoch val_loss and the artifacts of one run."""
    from moola.tracking import epoch_history, get_run, list_artifacts, tracking_uri

    rec = get_run(run, experiment)
    console.print(f"[bold]{escape(rec.name or '')}[/] ({rec.run_id})", highlight=False)
    facts = {
        "status": rec.status, "experiment": rec.experiment, "command": rec.command or "-",
        "start (UTC)": _when(rec.start_time), "end (UTC)": _when(rec.end_time),
        "duration": _duration(rec.start_time, rec.end_time), "tracking store": tracking_uri(),
        "artifact uri": rec.artifact_uri,
    }
    for k, v in facts.items():
        console.print(f"{k:>15}: {escape(str(v))}", highlight=False, soft_wrap=True)
    console.print(_kv_table("tags", rec.tags, "tag", "value"))
    console.print(_kv_table(f"params ({len(rec.params)})", rec.params, "param", "value"))
    console.print(_kv_table(f"final metrics ({len(rec.metrics)})",
                            {k: _value(v) for k, v in rec.metrics.items()}, "metric", "last value"))
    hist = epoch_history(rec, history_key)
    if hist:
        t = Table(title=f"{history_key} per epoch", title_justify="left")
        t.add_column("epoch", justify="right")
        t.add_column(history_key, justify="right")
        for step, value in hist:
            t.add_row(str(step), _value(value))
        console.print(t)
    t = Table(title="artifacts", title_justify="left")
    t.add_column("path", overflow="fold")
    t.add_column("bytes", justify="right")
    for a in list_artifacts(rec.run_id):
        # the top level is one folder per kind (run/, error/): show what each holds
        for e in list_artifacts(rec.run_id, a.path) if a.is_dir else [a]:
            t.add_row(escape(e.path + ("/" if e.is_dir else "")), "" if e.size is None else f"{e.size:,}")
    console.print(t if t.row_count else "artifacts: none")


class CompareFormat(StrEnum):
    table = "table"
    csv = "csv"
    json = "json"


def _middle(text: str, width: int) -> str:
    """``text`` cut in the middle to ``width`` characters, so both its ends stay readable."""
    if len(text) <= width:
        return text
    head = (width - 1) // 2 + (width - 1) % 2
    return text[:head] + "…" + text[len(text) - (width - 1 - head):]


def _num(v: float | None, signed: bool = False) -> str:
    return "-" if v is None else (f"{v:+.4f}" if signed else f"{v:.4f}")


def _diff(r: ComparedRun) -> str:
    """The signed difference with its mark: ✓ beats the best baseline, ✗ does not."""
    if r.difference is None:
        return "-"
    mark = "[green]✓[/]" if r.beats_baseline else "[red]✗[/]"
    return f"{_num(r.difference, signed=True)} {mark}"


def _start(iso: str | None) -> str:
    return "-" if iso is None else iso[:16].replace("T", " ")


def _model(r: ComparedRun) -> str:
    return f"{r.model} ({r.arm})" if r.arm else (r.model or "-")


def _baseline(r: ComparedRun) -> str:
    return "-" if r.best_baseline_value is None else f"{_num(r.best_baseline_value)} {r.best_baseline}"


@dataclass
class _Column:
    """A column of the comparison: ``wrap`` columns may break at spaces (and fold long names)."""

    header: str
    cells: list[str]  # rich markup
    wrap: bool
    justify: JustifyMethod = "left"

    def _lengths(self, words: bool) -> list[int]:
        texts = [self.header, *(Text.from_markup(c).plain for c in self.cells)]
        parts = [w for t in texts for w in (t.split() if words else t.splitlines())]
        return [cell_len(w) for w in parts] or [1]

    @property
    def natural(self) -> int:
        return max(self._lengths(words=False))

    @property
    def longest_word(self) -> int:
        """The narrowest width that still only breaks lines at spaces."""
        return self.natural if not self.wrap else max(self._lengths(words=True))

    @property
    def minimum(self) -> int:
        """A numeric column its longest value; a text column its longest header word and at
        least its longest word up to ``_MIN_TEXT`` (names longer than that are folded)."""
        if not self.wrap:
            return self.natural
        header = max(cell_len(w) for w in self.header.split())
        return max(header, min(self.longest_word, _MIN_TEXT))


_MIN_TEXT = 8
_GAP = 1  # spaces between columns
# when breaking at spaces is not enough, names fold first, then where and what the run was
_FOLD_ORDER = (("run", "model"), ("experiment",), ("kind",))


def _compare_columns(rows: Sequence[ComparedRun], width: int) -> list[_Column]:
    exp_width = max(12, width // 8)
    return [
        _Column("run", [escape(r.run_name or "-") for r in rows], wrap=True),
        _Column("id", [r.run_id[:8] for r in rows], wrap=False),
        _Column("experiment", [escape(_middle(r.experiment, exp_width)) for r in rows], wrap=True),
        _Column("kind", [escape(r.kind or "-") for r in rows], wrap=True),
        _Column("model", [escape(_model(r)) for r in rows], wrap=True),
        _Column("start (UTC)", [_start(r.start_time) for r in rows], wrap=True),
        _Column("test", [_num(r.value) for r in rows], wrap=False, justify="right"),
        _Column("best baseline", [escape(_baseline(r)) for r in rows], wrap=True),
        _Column("diff", [_diff(r) for r in rows], wrap=False, justify="right"),
        _Column("status", [r.status for r in rows], wrap=False),
    ]


def _fit_widths(cols: Sequence[_Column], width: int) -> list[int] | None:
    """Each column's width so a row fits ``width``: text first breaks at spaces (widest column
    first), then names fold (``_FOLD_ORDER``), never below a column's minimum; numbers, ids and
    statuses keep their width. None when even that does not fit."""
    widths = [c.natural for c in cols]
    room = width - _GAP * (len(cols) - 1)

    def shrink(candidates: list[int], floor: list[int]) -> None:
        while sum(widths) > room:
            ok = [i for i in candidates if widths[i] > floor[i]]
            if not ok:
                return
            widths[max(ok, key=widths.__getitem__)] -= 1

    shrink([i for i, c in enumerate(cols) if c.wrap], [c.longest_word for c in cols])
    for group in _FOLD_ORDER:
        shrink([i for i, c in enumerate(cols) if c.header in group], [c.minimum for c in cols])
    return widths if sum(widths) <= room else None


def _compare_table(rows: Sequence[ComparedRun], cols: Sequence[_Column], widths: Sequence[int]) -> Table:
    t = Table(title=_title(rows), title_justify="left", box=None, pad_edge=False,
              padding=(0, _GAP, 0, 0), header_style="bold underline")
    for c, w in zip(cols, widths, strict=True):
        t.add_column(c.header, width=w, justify=c.justify, no_wrap=not c.wrap, overflow="fold")
    for i, r in enumerate(rows):
        style = {"FAILED": "red", "KILLED": "yellow", "RUNNING": "cyan"}.get(r.status)
        t.add_row(*(c.cells[i] for c in cols), style=style)
    return t


def _title(rows: Sequence[ComparedRun]) -> str:
    metric = rows[0].metric if rows else ""
    return (f"{len(rows)} run(s), newest first: test {metric} of the model and of the best "
            "baseline; diff = model - best baseline, ✓ beats it")


def _compare_records(rows: Sequence[ComparedRun]) -> list[str]:
    """One block per run, for a terminal too narrow for the table's numbers and ids."""
    out = []
    for r in rows:
        out.append(f"[bold]{escape(r.run_name or '-')}[/] {r.run_id[:8]} {escape(r.experiment)} "
                   f"{escape(r.kind or '-')} {escape(_model(r))} {_start(r.start_time)} {r.status}")
        out.append(f"  test {_num(r.value)}, best baseline {escape(_baseline(r))}, diff {_diff(r)}")
    return out


def print_comparison(rows: Sequence[ComparedRun], out: Console) -> None:
    """The table at widths fitted to ``out`` (numbers and ids whole), else one block per run."""
    cols = _compare_columns(rows, out.width)
    widths = _fit_widths(cols, out.width)
    if widths is not None:
        out.print(_compare_table(rows, cols, widths))
        return
    out.print(_title(rows), highlight=False)
    for line in _compare_records(rows):
        out.print(line, highlight=False)


def _cell(v: object) -> object:
    """csv cells as json spells them: empty for no value, true/false for a verdict."""
    return "" if v is None else str(v).lower() if isinstance(v, bool) else v


def comparison_csv(rows: Sequence[ComparedRun]) -> str:
    """One line per run, the columns of ``ComparedRun.to_dict``; empty cells for no value."""
    from moola.tracking import ComparedRun

    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=list(ComparedRun.__dataclass_fields__), lineterminator="\n")
    w.writeheader()
    for r in rows:
        w.writerow({k: _cell(v) for k, v in r.to_dict().items()})
    return buf.getvalue()


@runs_app.command("compare")
@_friendly_errors
def runs_compare(
    experiment: ExperimentOpt = None,
    fmt: Annotated[CompareFormat, typer.Option("--format", "-f", help="table (for reading), csv or json.")
                   ] = CompareFormat.table,
    metric: Annotated[str, typer.Option("--metric", "-m", help="Test metric to compare (balanced_accuracy, "
                                        "accuracy, macro_f1, roc_auc, log_loss, brier, ece).")
                      ] = "balanced_accuracy",
    limit: Annotated[int, typer.Option("--limit", "-n", min=1, help="At most this many runs.")] = 50,
) -> None:
    """Runs side by side: test metric, the best baseline's value and name, the difference."""
    from moola.tracking import compare_runs, tracking_uri

    rows = compare_runs(experiment, metric=metric, max_results=limit)
    if fmt is CompareFormat.json:
        typer.echo(json.dumps([r.to_dict() for r in rows], indent=2))
        return
    if fmt is CompareFormat.csv:
        typer.echo(comparison_csv(rows), nl=False)
        return
    console.print(f"tracking store: {escape(tracking_uri())}", highlight=False, soft_wrap=True)
    if not rows:
        where = f" in experiment {experiment!r}" if experiment else ""
        console.print(f"no runs{escape(where)} yet: train, pretrain, oof, sweep or tune one")
        return
    print_comparison(rows, console)


def register(app: typer.Typer) -> None:
    """Adds ``moola runs`` to ``app``."""
    app.add_typer(runs_app, name="runs")
