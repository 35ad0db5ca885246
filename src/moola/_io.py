"""The package's one place for durable writes and provenance: atomic text/JSON/bytes writers,
the git SHA the code ran from and content fingerprints of arrays.

Atomic means: write a temp file named uniquely for this process and thread beside the target,
fsync it, then ``os.replace`` it into place, so a reader sees the old file or the new one and a
crash leaves no half-written target. JSON is strict (``allow_nan=False``): a NaN or infinity is
written as ``null`` and its path is listed under ``"_nulls"`` with the reason, never as the
non-standard ``NaN`` token other JSON readers reject.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import subprocess
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

__all__ = [
    "NULLS_KEY",
    "JsonFileError",
    "atomic_write",
    "atomic_write_bytes",
    "atomic_write_json",
    "atomic_write_text",
    "data_fingerprint",
    "did_you_mean",
    "dumps_json",
    "git_sha",
    "json_safe",
    "read_json",
    "redact_urls",
    "temp_path",
]

NULLS_KEY = "_nulls"


def temp_path(path: Path) -> Path:
    """A sibling temp name no other process or thread uses at the same time."""
    return path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")


def atomic_write(path: str | Path, write: Callable[[Path], None]) -> Path:
    """Let ``write(tmp)`` create the file at ``tmp``, fsync it, then rename it onto ``path``.

    For writers that want a path (Parquet, safetensors, matplotlib); the temp file is removed
    when ``write`` fails.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_path(path)
    try:
        write(tmp)
        fd = os.open(tmp, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def atomic_write_bytes(path: str | Path, data: bytes) -> Path:
    def write(tmp: Path) -> None:
        with open(tmp, "wb") as fh:
            fh.write(data)

    return atomic_write(path, write)


def atomic_write_text(path: str | Path, text: str) -> Path:
    return atomic_write_bytes(path, text.encode("utf-8"))


def json_safe(obj: Any) -> tuple[Any, dict[str, str]]:
    """``obj`` with numpy scalars/arrays as plain values and every NaN/inf as ``None``; plus
    ``{dotted.path: reason}`` for each value so replaced."""
    nulls: dict[str, str] = {}

    def walk(o: Any, path: str) -> Any:
        if isinstance(o, np.ndarray):
            o = o.tolist()
        elif isinstance(o, np.generic):
            o = o.item()
        if isinstance(o, float) and not math.isfinite(o):
            nulls[path or "$"] = "NaN" if math.isnan(o) else ("+inf" if o > 0 else "-inf")
            return None
        if isinstance(o, dict):
            return {str(k): walk(v, f"{path}.{k}" if path else str(k)) for k, v in o.items()}
        if isinstance(o, list | tuple):
            return [walk(v, f"{path}[{i}]") for i, v in enumerate(o)]
        if isinstance(o, Path):
            return str(o)
        return o

    return walk(obj, ""), nulls


def dumps_json(obj: Any, *, indent: int | None = 2) -> str:
    """Strict JSON text (see the module docstring for NaN); a dict gains ``"_nulls"`` when needed."""
    safe, nulls = json_safe(obj)
    if nulls:
        if isinstance(safe, dict):
            safe = {**safe, NULLS_KEY: {**safe.get(NULLS_KEY, {}), **nulls}}
        else:
            safe = {"value": safe, NULLS_KEY: nulls}
    return json.dumps(safe, indent=indent, allow_nan=False, default=str)


def atomic_write_json(path: str | Path, obj: Any, *, indent: int | None = 2) -> Path:
    return atomic_write_text(path, dumps_json(obj, indent=indent))


class JsonFileError(ValueError):
    """A JSON file moola reads back is unreadable, not JSON or lacks a key; the text names the file."""


def read_json(path: str | Path, *, keys: Sequence[str] = ()) -> Any:
    """Parse a JSON file, saying which file and what is wrong (position, missing key) on failure.

    ``keys``: the file must hold an object with each of these keys. A missing file stays a
    ``FileNotFoundError`` (callers often test for it).
    """
    path = Path(path)
    try:
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as e:
        raise JsonFileError(f"{path}: not valid JSON (not UTF-8 text at byte {e.start})") from None
    if not text.strip():
        raise JsonFileError(f"{path}: not valid JSON (the file is empty)")
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise JsonFileError(f"{path}: not valid JSON at line {e.lineno} column {e.colno} ({e.msg})") from None
    if keys:
        if not isinstance(data, dict):
            raise JsonFileError(f"{path}: expected a JSON object with keys {', '.join(map(repr, keys))}, "
                                f"found a {type(data).__name__}")
        missing = [k for k in keys if k not in data]
        if missing:
            s = "s" if len(missing) > 1 else ""
            raise JsonFileError(f"{path}: missing key{s} {', '.join(map(repr, missing))}")
    return data


# scheme://user:password@host -> scheme://user:***@host (any scheme: postgresql+psycopg2, mysql, redis ...);
# the password runs to the last "@" before the host, so one with a raw "@" in it is hidden whole
_URL_PASSWORD = re.compile(r"(?P<head>\b[A-Za-z][A-Za-z0-9+.-]*://[^\s:/@'\"]*:)[^\s/'\"]+(?=@)")
_DSN_PASSWORD = re.compile(r"(?P<head>\bpassword\s*=\s*)[^\s'\"]+", re.IGNORECASE)  # libpq key=value form


def did_you_mean(name: str, choices: Sequence[str]) -> str:
    """' (did you mean X?)' for the closest valid name, or '' when none is close: a typo gets its fix."""
    import difflib

    close = difflib.get_close_matches(name, list(choices), n=1, cutoff=0.6)
    return f" (did you mean {close[0]}?)" if close else ""


def redact_urls(text: str) -> str:
    """``text`` with the password of every ``scheme://user:password@host`` (and ``password=...``)
    replaced by ``***``; every message that may quote a database URL goes through this."""
    return _DSN_PASSWORD.sub(r"\g<head>***", _URL_PASSWORD.sub(r"\g<head>***", text))


def git_sha(mark_dirty: bool = False) -> str:
    """The repository commit the code ran from, or 'unknown' outside a git checkout;
    ``mark_dirty`` appends ``+dirty`` when tracked files have uncommitted changes."""
    here = Path(__file__).parent
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True,
                             timeout=5, check=False)
        sha = out.stdout.strip()
        if sha and mark_dirty:
            status = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=here,
                                    capture_output=True, text=True, timeout=5, check=False)
            sha += "+dirty" if status.stdout.strip() else ""
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    return sha or "unknown"


def data_fingerprint(*arrays: Any) -> str:
    """Content hash of arrays (numpy or torch): equal fingerprints mean the same data."""
    h = hashlib.sha256()
    for a in arrays:
        arr = a.detach().cpu().numpy() if hasattr(a, "detach") else np.asarray(a)
        h.update(str(arr.dtype).encode() + str(arr.shape).encode())
        h.update(np.ascontiguousarray(arr).tobytes())
    return h.hexdigest()[:16]
