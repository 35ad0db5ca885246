"""`moola tune`: an Optuna study over `moola train` runs (see docs/tuning.md)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from moola.cli._app import _friendly_errors, console


def register(app: typer.Typer) -> None:
    """Adds the command to ``app``."""

    @app.command("tune")
    @_friendly_errors
    def tune(
        config: Annotated[Path, typer.Argument(help="Base run config YAML (as for moola train --config).")],
        space: Annotated[Path, typer.Option("--space", help="Search-space YAML (see docs/tuning.md).")],
        trials: Annotated[int, typer.Option("--trials", help="Total trials of the study (reruns "
                                            "continue it to this many).")],
        overrides: Annotated[
            list[str] | None, typer.Argument(help="key=value overrides of the base config")
        ] = None,
        storage: Annotated[str | None, typer.Option(
            "--storage", help="sqlite:///FILE or postgresql://USER:PW@HOST/DB (default OUT/optuna.db)."
        )] = None,
        study: Annotated[str | None, typer.Option(
            "--study", help="Study name (default: the config's name + '-tune').")] = None,
        jobs: Annotated[int, typer.Option("--jobs", help="Local worker processes on the study.")] = 1,
        pruner: Annotated[str, typer.Option("--pruner", help="median|hyperband|none")] = "median",
        sampler: Annotated[str, typer.Option("--sampler", help="tpe|random")] = "tpe",
        metric: Annotated[str, typer.Option(
            "--metric", help="Validation metric and direction, e.g. val_loss:min, val_accuracy:max.")
        ] = "val_loss:min",
        out: Annotated[Path, typer.Option("--out", help="Directory of the study's runs and files.")] = Path(
            "runs/tune"),
        seed: Annotated[int, typer.Option("--seed", help="Sampler seed.")] = 0,
        command: Annotated[str, typer.Option(
            "--command", help="train (moola train runs) or rank (moola rank train runs).")] = "train",
        heartbeat: Annotated[int, typer.Option(
            "--heartbeat", help="Seconds between heartbeats of a running trial.")] = 10,
        grace: Annotated[int, typer.Option(
            "--grace", help="Seconds without heartbeat before a running trial counts as dead.")] = 30,
    ) -> None:
        """Tune hyper-parameters with Optuna: every trial is a moola train (or, with --command rank,
        moola rank train) run, pruned on validation."""
        from moola.pipelines.rank import RankConfig
        from moola.pipelines.train import RunConfig
        from moola.sweeps import TuneOptions, load_space, run_tune

        options = TuneOptions(trials=trials, out=out, storage=storage, study=study, jobs=jobs,
                              pruner=pruner, sampler=sampler, metric=metric, seed=seed,
                              heartbeat_interval=heartbeat, grace_period=grace,
                              command="rank" if command == "rank" else "train")
        if command not in ("train", "rank"):
            raise typer.BadParameter(f"--command {command!r}: choose train or rank")
        base: RunConfig | RankConfig = (RankConfig if command == "rank" else RunConfig).from_yaml(
            config, overrides or [])
        run_tune(base, load_space(space), options, console=console)
