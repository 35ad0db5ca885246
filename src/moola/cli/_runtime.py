"""`moola runtime run|status|report`: the dry-run runtime (no command places an order)."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape

from moola.cli._app import _friendly_errors, console

runtime_app = typer.Typer(help="The dry-run runtime: serve a promoted ensemble on a feed into a ledger "
                               "(dry run only: no order is ever placed).", no_args_is_help=True)


@runtime_app.command("run")
@_friendly_errors
def runtime_run(
    config: Annotated[Path, typer.Option("--config", help="Runtime config YAML (see docs/runtime.md).")],
    overrides: Annotated[list[str] | None, typer.Argument(help="key=value overrides")] = None,
    iterations: Annotated[int | None, typer.Option("--iterations", min=1, help="Stop after N ticks.")] = None,
    until: Annotated[
        datetime | None, typer.Option("--until", help="Stop once the feed's clock reaches TS (UTC).")
    ] = None,
    view: Annotated[bool, typer.Option("--view/--no-view", help="Live terminal table.")] = True,
) -> None:
    """Run the ensemble on the feed, one ledger row per symbol and bar; resumes after any kill."""
    from moola.pipelines.runtime import run_runtime
    from moola.runtime import RuntimeConfig

    run_runtime(RuntimeConfig.from_yaml(config, overrides or []), iterations=iterations, until=until,
                console=console, view=view)


@runtime_app.command("status")
@_friendly_errors
def runtime_status_cmd(
    db: Annotated[str, typer.Option("--db", help="Ledger URL: sqlite:///FILE or postgresql://...")],
) -> None:
    """Per runtime and symbol: last bar, rows, no-signal reasons, last event."""
    from moola.runtime import Ledger, status_table

    with Ledger(db) as ledger:
        console.print(status_table(ledger))


@runtime_app.command("report")
@_friendly_errors
def runtime_report_cmd(
    db: Annotated[str, typer.Option("--db", help="Ledger URL: sqlite:///FILE or postgresql://...")],
    out: Annotated[Path, typer.Option("--out", help="HTML file to write.")] = Path("runtime_report.html"),
    runtime: Annotated[
        str | None, typer.Option("--runtime", help="Runtime name (default: the only one).")
    ] = None,
    bars: Annotated[Path | None, typer.Option("--bars", help="A moola store with the bars (price panels, "
                                                       "realised outcomes).")] = None,
    timeframe: Annotated[str | None, typer.Option("--timeframe", help="The store's timeframe to read "
                                                  "(when it holds several).")] = None,
) -> None:
    """The runtime's HTML report: prices and signals, hit rate and calibration, paper equity, events."""
    from moola.pipelines.runtime import runtime_report

    path = runtime_report(db, out, runtime=runtime, bars=bars, timeframe=timeframe)
    console.print(f"report: {escape(str(path))}", highlight=False)


def register(app: typer.Typer) -> None:
    """Adds ``moola runtime`` to ``app``."""
    app.add_typer(runtime_app, name="runtime")
