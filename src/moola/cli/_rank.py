"""`moola rank train|compare|evaluate|predict`: cross-sectional ranking of a daily stock panel."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape

from moola.cli._app import _friendly_errors, console

rank_app = typer.Typer(help="Cross-sectional ranking: a temporal encoder with graph attention across "
                            "each day's stocks, judged beside LightGBM on the same rows.",
                       no_args_is_help=True)

Overrides = Annotated[list[str] | None, typer.Argument(help="key=value overrides, e.g. train.epochs=5")]
ConfigOpt = Annotated[Path, typer.Option("--config", help="Ranking config YAML (see docs/ranking.md).")]
DeviceOpt = Annotated[str | None, typer.Option("--device", help="auto|cpu|cuda")]
OverwriteOpt = Annotated[bool, typer.Option(
    "--overwrite", help="Replace a run directory that already holds a run (the old one stays until "
    "the new one completes); without it such a directory is refused.")]


def _config(config: Path, overrides: list[str] | None, device: str | None) -> object:
    from moola.pipelines.rank import RankConfig

    extra = list(overrides or [])
    if device is not None:
        extra.append(f"train.device={device}")
    return RankConfig.from_yaml(config, extra)


@rank_app.command("train")
@_friendly_errors
def rank_train(config: ConfigOpt, overrides: Overrides = None, device: DeviceOpt = None,
               overwrite: OverwriteOpt = False) -> None:
    """Train one ranking model (one seed), score val and test, write the run directory and report."""
    from moola.pipelines.rank import RankConfig, run_rank_train

    cfg = _config(config, overrides, device)
    assert isinstance(cfg, RankConfig)
    out = run_rank_train(cfg, console=console, overwrite=overwrite)
    console.print(f"run: {escape(str(out.run_dir))}" + (f"  report: {escape(str(out.report))}"
                                                         if out.report else ""), highlight=False)


@rank_app.command("compare")
@_friendly_errors
def rank_compare(config: ConfigOpt, overrides: Overrides = None, device: DeviceOpt = None,
                 overwrite: OverwriteOpt = False) -> None:
    """The model over its seeds beside the no-graph encoder, LightGBM, ridge and an MLP on the same
    rows: per-horizon table (mean +- std), paired verdict against LightGBM, HTML report."""
    from moola.pipelines.rank import RankConfig, run_rank_compare

    cfg = _config(config, overrides, device)
    assert isinstance(cfg, RankConfig)
    out = run_rank_compare(cfg, console=console, overwrite=overwrite)
    console.print(f"comparison: {escape(str(out.run_dir))}  report: {escape(str(out.report))}",
                  highlight=False)


@rank_app.command("evaluate")
@_friendly_errors
def rank_evaluate(
    run_dir: Annotated[Path, typer.Argument(help="A run directory written by moola rank train.")],
    split: Annotated[str, typer.Option("--split", help="val|test")] = "test",
) -> None:
    """Re-score a trained ranking run on its val or test dates (a test look is recorded)."""
    from moola.pipelines.rank import run_rank_evaluate

    metrics = run_rank_evaluate(run_dir, split=split, console=console)
    console.print(f"{len(metrics)} horizon(s) evaluated on {split}", highlight=False)


@rank_app.command("predict")
@_friendly_errors
def rank_predict(
    run_dir: Annotated[Path, typer.Argument(help="A run directory written by moola rank train.")],
    out: Annotated[Path, typer.Option("--out", help="Parquet file of per-(date, symbol) scores.")],
    store: Annotated[str | None, typer.Option("--store", help="Daily bars (default: the run's store).")
                     ] = None,
    start: Annotated[str | None, typer.Option("--from", help="First date to score (ISO).")] = None,
) -> None:
    """Per-(date, symbol) scores, one column per horizon, from the bars of a store."""
    from moola.pipelines.rank import run_rank_predict

    path = run_rank_predict(run_dir, out, store=store, start=start, console=console)
    console.print(f"scores: {escape(str(path))}", highlight=False)


def register(app: typer.Typer) -> None:
    """Adds ``moola rank`` to ``app``."""
    app.add_typer(rank_app, name="rank")
