"""The ``moola`` command line: thin Typer wrappers over ``moola.pipelines``."""

from __future__ import annotations

from moola.cli._app import app

__all__ = ["app"]
