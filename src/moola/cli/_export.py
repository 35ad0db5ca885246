"""`moola export RUN_DIR --format onnx|torchscript --out DIR`: a run as one self-contained model
file and its export.json (docs/manifest.md, "Export")."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape

from moola.cli._app import _friendly_errors, console

_FORMATS = "onnx|torchscript"


def export_cmd(
    run_dir: Annotated[Path, typer.Argument(help="A `moola train` run directory.")],
    fmt: Annotated[str, typer.Option("--format", help=f"{_FORMATS}: model.onnx (needs the onnx package) "
                                     "or model.pt (TorchScript).")],
    out: Annotated[Path, typer.Option("--out", help="Directory to write (model file, export.json, "
                                      "manifest.json).")],
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace a non-empty --out (atomically).")
                         ] = False,
) -> None:
    """Export a run's model, normaliser and calibration as one file that maps raw feature windows
    (batch, window, features) to calibrated probabilities, checked against the run before writing."""
    from moola.inference import EXPORT_FILES, EXPORT_FORMATS, ExportError, export_run

    if fmt not in EXPORT_FORMATS:
        raise ExportError(f"--format {fmt!r} is not an export format; valid formats: "
                          f"{', '.join(EXPORT_FORMATS)}")
    written = export_run(run_dir, fmt, out, overwrite=overwrite)
    console.print(f"{fmt} model of {escape(str(run_dir))} -> {escape(str(written / EXPORT_FILES[fmt]))} "
                  f"(inputs, outputs, features, classes, normaliser, temperature: "
                  f"{escape(str(written / 'export.json'))})", highlight=False, soft_wrap=True)


def register(app: typer.Typer) -> None:
    """Adds ``moola export`` to ``app``."""
    app.command("export")(_friendly_errors(export_cmd))
