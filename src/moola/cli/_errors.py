"""What the CLI prints when a command fails (docs/errors.md): a foreseeable failure is one line,
a bug a traceback and a request to report it; every text shown goes through ``redact_urls``."""

from __future__ import annotations

import errno
import os
import traceback
from collections.abc import Iterator

from moola import __version__
from moola._io import redact_urls

__all__ = ["BUG_EXIT", "USER_EXIT", "bug_report", "user_message"]

USER_EXIT = 2  # bad input, usage, or the environment (disk, permissions, database, corrupt files)
BUG_EXIT = 3  # an error moola did not foresee: a bug to report

# errno -> what to do, after the OS's own wording (os.strerror, lower-cased)
_OS_HINTS: dict[int, str] = {
    errno.EACCES: "is the directory read-only or owned by another user?",
    errno.EPERM: "is the directory read-only or owned by another user?",
    errno.EROFS: "write the output somewhere writable",
    errno.ENOSPC: "free some space (or point the output elsewhere) and run again",
    errno.EDQUOT: "free some space (or point the output elsewhere) and run again",
    errno.ENAMETOOLONG: "shorten the run name or output path",
    errno.EMFILE: "raise the limit (ulimit -n) or run fewer jobs at once",
}
# exception class names of database drivers and SQLAlchemy that mean "the database is away or
# refused us", as opposed to a mistake in moola's SQL (ProgrammingError, IntegrityError: bugs)
_DB_ERRORS = {"OperationalError", "InterfaceError", "ArgumentError", "NoSuchModuleError",
              "StorageInternalError"}
_DB_MODULES = ("sqlalchemy", "psycopg", "psycopg2", "sqlite3", "optuna", "mlflow")


def _chain(exc: BaseException) -> Iterator[BaseException]:
    """``exc``, then its causes and contexts, each once."""
    seen: set[int] = set()
    cur: BaseException | None = exc
    while cur is not None and id(cur) not in seen:
        seen.add(id(cur))
        yield cur
        cur = cur.__cause__ or (None if cur.__suppress_context__ else cur.__context__)


def _first_line(text: str) -> str:
    lines = [ln.strip() for ln in text.strip().splitlines() if ln.strip()]
    # SQLAlchemy appends "(Background on this error at: https://sqlalche.me/...)": not for users
    lines = [ln for ln in lines if not ln.startswith("(Background on this error")]
    return " ".join(lines[:2]) if lines else ""


def _os_message(e: OSError) -> str:
    if e.errno is None:  # raised by moola with its own text
        return str(e)
    name = e.filename if e.filename is not None else e.filename2
    hint = _OS_HINTS.get(e.errno, "")
    what = (os.strerror(e.errno) if hint else e.strerror or os.strerror(e.errno)).lower()
    where = ""
    if name is not None:
        where = f" while writing {name}" if e.errno in (errno.ENOSPC, errno.EDQUOT) else f": {name}"
        if e.errno == errno.ENAMETOOLONG:
            longest = max((len(p) for p in str(name).split(os.sep)), default=0)
            where += f" ({len(str(name))} characters, {longest} characters in its longest part)"
    return f"{what}{where}" + (f"; {hint}" if hint else "")


def _known(e: BaseException) -> str | None:
    """The one-line message for ``e`` alone, or None when ``e`` is not a foreseeable failure."""
    from moola.config import ConfigError
    from moola.data import MoolaDataError

    if isinstance(e, MoolaDataError | ConfigError):
        return str(e)
    if isinstance(e, MemoryError) or type(e).__name__ == "OutOfMemoryError":  # torch's CUDA OOM
        return (f"out of memory ({_first_line(str(e)) or type(e).__name__}); reduce train.batch_size, "
                "the model size or data.window")
    if isinstance(e, OSError):  # FileNotFoundError, PermissionError, disk full, name too long ...
        return _os_message(e)
    if isinstance(e, KeyError):  # a subclass with its own message (unknown preset ...) says it
        if type(e).__str__ is not KeyError.__str__:
            return str(e)
        return str(e.args[0]) if e.args else "KeyError"
    if isinstance(e, ValueError):  # moola's own input errors (CheckpointError, JsonFileError ...)
        return str(e)
    cls = type(e)
    if cls.__name__ in _DB_ERRORS and cls.__module__.split(".")[0] in _DB_MODULES:
        orig = getattr(e, "orig", None)  # SQLAlchemy's wrapper: the driver's own text is clearer
        return f"database error: {_first_line(str(orig if orig is not None else e))}"
    if cls.__name__ == "SafetensorError":
        return f"a weights file is truncated or corrupt ({_first_line(str(e))})"
    if cls.__name__ == "MlflowException":
        return f"MLflow: {_first_line(str(e))}"
    return None


def user_message(exc: BaseException) -> str | None:
    """The redacted one-line message for a foreseeable failure, None for a bug.

    A failure may sit under another exception (``raise X from OSError``): the chain is searched,
    and when the outer error is moola's own its text, which adds what moola was doing, is kept."""
    for e in _chain(exc):
        msg = _known(e)
        if msg is None:
            continue
        if e is not exc and type(exc).__module__.startswith("moola.") and str(exc):
            msg = str(exc)
        return redact_urls(msg)
    return None


def bug_report(exc: BaseException) -> str:
    """The redacted traceback and the request to report it."""
    text = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
    return redact_urls(text.rstrip()) + (
        f"\n\nThis is a bug in moola {__version__}: please report it to the moola maintainers with "
        "the traceback above and the command you ran.")
