"""`moola runs list|show`: the MLflow record of train, pretrain, oof, sweep and tuning runs."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated

import typer
from rich.markup import escape
from rich.table import Table

from moola.cli._app import _friendly_errors, console

runs_app = typer.Typer(help="Tracked runs (MLflow): list them, show one.", no_args_is_help=True)

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


def register(app: typer.Typer) -> None:
    """Adds ``moola runs`` to ``app``."""
    app.add_typer(runs_app, name="runs")
