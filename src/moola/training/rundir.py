"""Run directories that are never silently overwritten.

A command writing a run into a directory that already holds one refuses, naming it, unless told
to resume it or to replace it. A replacement is written into a hidden sibling staging directory
and swapped in only when the run completes: until then the old run stays whole (a runtime can
keep serving it), and an interrupted or failed rerun leaves the old run exactly as it was, never a
mix of old weights and new config.
"""

from __future__ import annotations

import contextlib
import glob
import os
import secrets
import shutil
from collections.abc import Iterator
from pathlib import Path

__all__ = ["RunExistsError", "check_run_directory", "holds_run", "replace_directory", "run_directory"]

_STAGING = "staging"
_REPLACED = "replaced"


class RunExistsError(FileExistsError):
    """The run directory already holds a run and neither resume nor overwrite was asked for."""


def holds_run(path: Path) -> bool:
    """A directory with anything in it (a complete run, or what a failed one left)."""
    return path.is_dir() and any(path.iterdir())


def _describe(path: Path) -> str:
    if (path / "manifest.json").is_file():
        return "a complete run (manifest.json)"
    n = sum(1 for _ in path.iterdir())
    return f"an unfinished run or other files ({n} entr{'y' if n == 1 else 'ies'}, no manifest.json)"


def check_run_directory(final: Path, *, overwrite: bool = False, resume: bool = False,
                        flag: str = "--overwrite") -> None:
    """Raise ``RunExistsError`` (before any data is read) when ``final`` holds a run that would
    be overwritten: neither ``resume`` nor ``overwrite`` given."""
    if final.exists() and not final.is_dir():
        raise RunExistsError(f"{final} exists and is not a directory; give another name or remove it")
    if resume or overwrite or not holds_run(final):
        return
    hint = "--resume to continue it, " if (final / "ckpt").is_dir() else ""
    raise RunExistsError(
        f"run directory {final} already holds {_describe(final)}; pass {flag} to replace it (the old "
        f"run stays until the new one completes), {hint}or give another name (name=... or out_dir=...)")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _sweep_leftovers(final: Path) -> None:
    """Remove staging/replaced siblings of ``final`` left by a killed process on this host."""
    for p in final.parent.glob(f".{glob.escape(final.name)}.*-*-*"):
        kind, _, rest = p.name[len(final.name) + 2:].partition("-")
        pid = rest.split("-")[0]
        if kind in (_STAGING, _REPLACED) and pid.isdigit() and not _alive(int(pid)) and p.is_dir():
            shutil.rmtree(p, ignore_errors=True)


def _sibling(final: Path, kind: str) -> Path:
    return final.with_name(f".{final.name}.{kind}-{os.getpid()}-{secrets.token_hex(4)}")


def replace_directory(src: Path, dst: Path) -> None:
    """Move the complete directory ``src`` to ``dst``, replacing what is there.

    Two renames on one filesystem: ``dst`` is set aside, ``src`` takes its name, the old one is
    deleted; if the second rename fails the old directory is put back."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    if not dst.exists():
        src.rename(dst)
        return
    old = _sibling(dst, _REPLACED)
    dst.rename(old)
    try:
        src.rename(dst)
    except BaseException:
        old.rename(dst)
        raise
    shutil.rmtree(old, ignore_errors=True)


@contextlib.contextmanager
def run_directory(final: str | Path, *, overwrite: bool = False, resume: bool = False,
                  flag: str = "--overwrite") -> Iterator[Path]:
    """Yield the directory a run writes into.

    A new directory, or ``resume``: ``final`` itself (so an interrupted run can be resumed). An
    existing run with ``overwrite``: a staging sibling, swapped in for ``final`` when the block
    completes and deleted when it raises (the old run is then untouched). Otherwise
    ``RunExistsError``, raised before the block runs.
    """
    final = Path(final)
    if resume and overwrite:
        raise ValueError("resume and overwrite exclude each other: resume continues the run in "
                         f"{final}, overwrite replaces it")
    check_run_directory(final, overwrite=overwrite, resume=resume, flag=flag)
    if final.parent.is_dir():
        _sweep_leftovers(final)
    if resume or not holds_run(final):
        final.mkdir(parents=True, exist_ok=True)
        yield final
        return
    stage = _sibling(final, _STAGING)
    stage.mkdir(parents=True)
    try:
        yield stage
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)
        raise
    replace_directory(stage, final)
