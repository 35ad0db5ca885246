"""Database URLs shared by tuning studies and the MLflow tracking store: the installed driver
for a bare ``postgresql://`` and one cross-process lock, so that one-time work (creating a study,
migrating a fresh MLflow schema) and trial claims happen in one process at a time."""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from moola._io import redact_urls

__all__ = ["LOCKABLE_BACKENDS", "resolve_storage_url", "storage_lock"]

LOCKABLE_BACKENDS = ("sqlite", "postgresql")
# one advisory key for every moola lock on a PostgreSQL database (named for where it began)
_PG_KEY = int.from_bytes(hashlib.sha256(b"moola.tune").digest()[:8], "big", signed=True)
_ENGINES: dict[str, Any] = {}


def resolve_storage_url(url: str) -> str:
    """A bare ``postgresql://`` URL gets the installed driver: SQLAlchemy 2.1 defaults to psycopg 3,
    moola installs psycopg2-binary."""
    import importlib.util

    import sqlalchemy

    u = sqlalchemy.engine.make_url(url)
    if u.drivername == "postgresql" and importlib.util.find_spec("psycopg") is None \
            and importlib.util.find_spec("psycopg2") is not None:
        return u.set(drivername="postgresql+psycopg2").render_as_string(hide_password=False)
    return url


@contextlib.contextmanager
def storage_lock(url: str) -> Iterator[None]:
    """Exclusive across processes and hosts sharing ``url``; never nest two on one database.

    SQLite: ``fcntl.flock`` on ``DBFILE.lock``; PostgreSQL: a session ``pg_advisory_lock``.
    """
    import sqlalchemy

    u = sqlalchemy.engine.make_url(url)
    backend = u.get_backend_name()
    if backend == "sqlite":
        if not u.database or u.database == ":memory:":
            raise ValueError(f"storage {url}: an in-memory SQLite database cannot be shared; give a file")
        lock = Path(f"{u.database}.lock")
        lock.parent.mkdir(parents=True, exist_ok=True)
        with open(lock, "a") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(fh, fcntl.LOCK_UN)
    elif backend == "postgresql":
        with _pg_engine(resolve_storage_url(url)).connect() as conn:
            conn.execute(sqlalchemy.text("SELECT pg_advisory_lock(:k)"), {"k": _PG_KEY})
            try:
                yield
            finally:
                conn.execute(sqlalchemy.text("SELECT pg_advisory_unlock(:k)"), {"k": _PG_KEY})
    else:
        raise ValueError(f"storage {redact_urls(url)}: use sqlite:///FILE or postgresql://USER:PW@HOST/DB")


def _pg_engine(url: str) -> Any:
    """One lock engine per URL and process; NullPool so a closed connection drops its lock."""
    import sqlalchemy
    from sqlalchemy.pool import NullPool

    if url not in _ENGINES:
        _ENGINES[url] = sqlalchemy.create_engine(url, poolclass=NullPool)
    return _ENGINES[url]
