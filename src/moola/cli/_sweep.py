"""``moola sweep MATRIX.yaml``: an experiment matrix in parallel, with selection of the best run."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer


def register(app: typer.Typer) -> None:
    """Adds ``sweep`` to ``app``."""
    from moola.cli._app import _friendly_errors, console

    @app.command("sweep")
    @_friendly_errors
    def sweep(
        matrix: Annotated[Path, typer.Argument(help="Matrix YAML: base config + grid and/or variants.")],
        overrides: Annotated[
            list[str] | None, typer.Argument(help="key=value for every run, e.g. train.device=cuda")
        ] = None,
        out: Annotated[
            Path | None, typer.Option("--out", help="Parent directory of the sweep (default: the matrix's).")
        ] = None,
        parallel: Annotated[
            int | None, typer.Option("--parallel", min=1, help="Runs at once (default: the matrix's).")
        ] = None,
        backend: Annotated[str, typer.Option("--backend", help="local (process pool) | ray")] = "local",
        ray_address: Annotated[
            str | None, typer.Option("--ray-address", help="Ray cluster address (default: start one).")
        ] = None,
        select: Annotated[
            str | None, typer.Option("--select", help="METRIC:min|max over metrics.json (default: val loss).")
        ] = None,
        no_retry: Annotated[
            bool, typer.Option("--no-retry", help="Leave runs that failed before as failed.")
        ] = False,
    ) -> None:
        """Run every unfinished run of a matrix; a failed run is recorded and the others go on.
        Exit code 1 if any run failed."""
        from moola.sweeps import SweepLockedError, run_sweep

        if backend not in ("local", "ray"):
            raise ValueError(f"--backend {backend!r}: local or ray")
        try:
            res = run_sweep(matrix, parallel=parallel, backend=backend, ray_address=ray_address,  # type: ignore[arg-type]
                            select=select, console=console, retry_failed=not no_retry, out_dir=out,
                            run_overrides=overrides)
        except SweepLockedError as e:
            raise ValueError(str(e)) from None
        console.print(f"report: {res.report}")
        console.print(f"sweep directory: {res.sweep_dir} ({res.seconds:.1f} s)")
        if res.failed:
            raise typer.Exit(1)
