"""References to artifacts other commands made: ``sweep:NAME:best`` (or ``sweep:NAME:VARIANT``).

A sweep writes ``best.yaml`` and ``runs.yaml`` into its directory; any option that takes a
run or encoder directory also takes such a reference, resolved here to that directory.
"""

from __future__ import annotations

import os
from pathlib import Path

import yaml

__all__ = ["BEST_FILE", "RUNS_FILE", "RefError", "resolve_ref", "sweeps_root"]

BEST_FILE = "best.yaml"
RUNS_FILE = "runs.yaml"


class RefError(ValueError):
    """A reference that names no finished sweep or run."""


def sweeps_root() -> Path:
    """Where sweeps live unless a matrix says otherwise: ``MOOLA_SWEEPS_DIR`` or ./runs/sweeps."""
    return Path(os.environ.get("MOOLA_SWEEPS_DIR", "runs/sweeps"))


def resolve_ref(ref: str) -> str:
    """A plain path is returned unchanged; ``sweep:NAME:best`` -> the best run's artifact dir."""
    if not ref.startswith("sweep:"):
        return ref
    parts = ref.split(":")
    if len(parts) != 3 or not parts[1] or not parts[2]:
        raise RefError(f"{ref!r}: a sweep reference is sweep:NAME:best or sweep:NAME:VARIANT")
    _, name, which = parts
    sweep_dir = Path(name) if ("/" in name or Path(name).is_dir()) else sweeps_root() / name
    if which == "best":
        f = sweep_dir / BEST_FILE
        if not f.is_file():
            raise RefError(f"{ref!r}: {f} does not exist (has sweep {name!r} finished a run?)")
        best = yaml.safe_load(f.read_text())
        return str((sweep_dir / best["artifact"]).resolve())
    f = sweep_dir / RUNS_FILE
    if not f.is_file():
        raise RefError(f"{ref!r}: {f} does not exist")
    runs = yaml.safe_load(f.read_text()) or {}
    entry = runs.get(which)
    if entry is None:
        raise RefError(f"{ref!r}: sweep {name!r} has no run {which!r}; it has {', '.join(runs) or 'none'}")
    if entry.get("status") != "done":
        raise RefError(f"{ref!r}: run {which!r} of sweep {name!r} is {entry.get('status')}, not done")
    return str((sweep_dir / entry["artifact"]).resolve())
