"""Errors that name the file, line and column at fault; the CLI maps them to exit code 2."""

from __future__ import annotations

from pathlib import Path


class MoolaDataError(Exception):
    """Bad input data. ``str()`` is the one message a user needs to find and fix it."""

    def __init__(
        self,
        message: str,
        *,
        path: str | Path | None = None,
        line: int | None = None,
        column: str | None = None,
        hint: str | None = None,
    ) -> None:
        self.message = message
        self.path = str(path) if path is not None else None
        self.line = line
        self.column = column
        self.hint = hint
        super().__init__(self.format())

    def format(self) -> str:
        where = ""
        if self.path is not None:
            where = self.path
            if self.line is not None:
                where += f":{self.line}"
            where += ": "
        col = f"column '{self.column}': " if self.column is not None else ""
        hint = f" ({self.hint})" if self.hint else ""
        return f"{where}{col}{self.message}{hint}"


class IngestError(MoolaDataError):
    """A file could not be read into canonical bars."""


class ValidationFailed(MoolaDataError):
    """A validation finding whose policy is ``fail``."""


class StoreError(MoolaDataError):
    """The canonical store is missing, locked or inconsistent."""
