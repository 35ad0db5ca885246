"""The ``moola`` command line: thin Typer wrappers over ``moola.pipelines`` and ``moola.sweeps``."""

from __future__ import annotations

from moola.cli import _export, _rank, _registry, _runs, _runtime, _sweep, _tune
from moola.cli._app import app

for _module in (_runs, _sweep, _tune, _registry, _runtime, _rank, _export):
    _module.register(app)

__all__ = ["app"]
