"""The runtime's ledger: every signal, event, paper fill and position, in SQLite or PostgreSQL.

SQLAlchemy Core over a versioned schema (``schema_version`` table, ``migrate()``). SQLite is the
default (a file; WAL so readers such as ``moola runtime status`` never block the runtime, and a
``busy_timeout`` so a briefly locked file is waited for); any PostgreSQL URL works the same.

Call order: ``Ledger(url)`` -> ``migrate()`` (creates or upgrades the schema; refuses a schema
newer than this code) -> ``last_bar`` per symbol (the resume point) -> per tick ``write(...)``
(or the ``write_*`` methods) -> ``close()`` (flushes what is buffered). Readers (``signals``,
``events``, ``status`` ...) work on a database that another process is writing.

Idempotence: ``signals``, ``paper_fills`` and ``positions`` have a unique key (runtime, symbol,
bar_ts) and every write is ``INSERT ... ON CONFLICT DO NOTHING``: **the first write wins**. After a
``kill -9`` the runtime resumes from the last recorded bar and may recompute a bar whose row had
already landed; the recomputation uses the same bars and members, so it yields the same numbers,
and keeping the first row keeps what was actually served at the time (its ``created_at`` and
``latency_ms``) and makes a ledger row immutable once written. The one exception is the
``stale`` placeholder, written for a bar a stalled feed owes so that the ledger accounts for every
bar even if the feed never comes back: the bar's own row (a signal or another no-signal reason)
replaces it when the candle is delivered later, and it does not count as the resume point
(``last_bar``). Events carry a client-made ``uid`` (unique) so a retried batch never doubles them.

The database going away (a SQLite file locked by another connection, a PostgreSQL server restarted
or unreachable) is not fatal: rows are queued in memory, in order, and each write tries the
database once, not more often than an exponential backoff allows (``RetryConfig``), so the tick
loop is not held up; when the database is back the whole queue lands, in order, in one
transaction, followed by a ``db_recovered`` event. ``flush()`` blocks and retries up to
``max_retries`` times and raises ``LedgerUnavailable`` if the database stays away (rows stay
queued). Reads see the database only, not the queue (``pending`` counts the queue).
"""

from __future__ import annotations

import importlib.util
import json
import math
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal, Protocol, TypeVar

import polars as pl
import sqlalchemy as sa
from sqlalchemy.dialects import postgresql as pg_dialect
from sqlalchemy.dialects import sqlite as sqlite_dialect
from sqlalchemy.engine import Connection, Dialect, Engine

from moola._io import dumps_json, redact_urls
from moola.data import TS_DTYPE
from moola.runtime._retry import RetryConfig, backoff_delays

__all__ = [
    "SCHEMA_VERSION",
    "EventRow",
    "FillRow",
    "Ledger",
    "LedgerError",
    "LedgerSchemaError",
    "LedgerUnavailable",
    "PositionRow",
    "SignalRow",
    "ledger_url",
]

SCHEMA_VERSION = 1
_T = TypeVar("_T")
SignalStatus = Literal["signal", "no_signal"]
SIGNAL_STATUSES: tuple[str, ...] = ("signal", "no_signal")
# reasons the runtime writes for a "no_signal" row (others are allowed; these are the known ones)
NO_SIGNAL_REASONS: tuple[str, ...] = ("warmup", "stale", "member_failure", "gap")
SIDES: tuple[str, ...] = ("buy", "sell")
# the ledger's own default: one try may hold the tick up for at most 2 s
DEFAULT_RETRY = RetryConfig(timeout_s=2.0, max_retries=5, backoff_s=0.5, backoff_max_s=30.0)


class LedgerError(ValueError):
    """A bad row, URL or database for the ledger; the text names the field or the database."""


class LedgerSchemaError(LedgerError):
    """The database's schema is not one this code can use (newer, missing, or not a ledger)."""


class LedgerUnavailable(RuntimeError):
    """The database stayed away through every retry; the unwritten rows are still queued."""


def _utcnow() -> datetime:
    return datetime.now(UTC)


def _aware(name: str, value: datetime | None, *, optional: bool = False) -> None:
    if value is None:
        if not optional:
            raise LedgerError(f"{name}: a timezone-aware datetime is required (got None)")
        return
    if not isinstance(value, datetime) or value.tzinfo is None:
        raise LedgerError(f"{name}: must be a timezone-aware datetime (UTC), got {value!r}")


def _text(where: str, **fields: str | None) -> None:
    """Non-empty (where required) and within the column's length (PostgreSQL enforces it, SQLite not)."""
    for name, value in fields.items():
        limit = _LENGTHS[name]
        if value is None:
            if name in _REQUIRED_TEXT:
                raise LedgerError(f"{where}: {name} must be a non-empty string (got None)")
            continue
        if not isinstance(value, str) or (name in _REQUIRED_TEXT and not value) or len(value) > limit:
            raise LedgerError(f"{where}: {name} must be a non-empty string of at most {limit} "
                              f"characters, got {value!r}")


_LENGTHS = {"runtime": 200, "symbol": 100, "kind": 50, "reason": 100}
_REQUIRED_TEXT = frozenset({"runtime", "symbol", "kind"})


def _finite(name: str, value: float | None, *, optional: bool = True) -> None:
    if value is None:
        if not optional:
            raise LedgerError(f"{name}: a number is required (got None)")
        return
    if not math.isfinite(float(value)):
        raise LedgerError(f"{name}: must be finite, got {value!r}")


# ----------------------------------------------------------------------------------- row types


@dataclass(frozen=True)
class SignalRow:
    """One (runtime, symbol, bar) of the ensemble: a signal, or an explicit "no_signal" with why.

    ``bar_ts`` is the OPEN time of the bar whose close the signal is computed at (moola's bar
    convention). ``members``: ``{name: {"proba": p | None, "version": str, "ok": bool,
    "error": str | None}}``. A "signal" row has ``proba_up`` in [0, 1] and ``decision`` in
    {-1, 0, +1}; a "no_signal" row has a ``reason`` (see ``NO_SIGNAL_REASONS``) and no decision.
    """

    runtime: str
    symbol: str
    bar_ts: datetime
    status: SignalStatus
    proba_up: float | None = None
    decision: int | None = None
    reason: str | None = None
    members: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    latency_ms: float | None = None
    created_at: datetime = field(default_factory=_utcnow)

    def __post_init__(self) -> None:
        where = f"signal row ({self.runtime!r}, {self.symbol!r}, {self.bar_ts})"
        _text(where, runtime=self.runtime, symbol=self.symbol, reason=self.reason)
        _aware(f"{where}: bar_ts", self.bar_ts)
        _aware(f"{where}: created_at", self.created_at)
        if self.status not in SIGNAL_STATUSES:
            raise LedgerError(f"{where}: status {self.status!r} is not one of {list(SIGNAL_STATUSES)}")
        if self.status == "signal":
            if self.proba_up is None or not 0.0 <= float(self.proba_up) <= 1.0:
                raise LedgerError(f"{where}: status 'signal' needs proba_up in [0, 1], got {self.proba_up!r}")
            if self.decision not in (-1, 0, 1):
                raise LedgerError(
                    f"{where}: status 'signal' needs decision in [-1, 0, 1], got {self.decision!r}")
        else:
            if not self.reason:
                raise LedgerError(
                    f"{where}: status 'no_signal' needs a reason, e.g. one of {list(NO_SIGNAL_REASONS)}")
            if self.decision is not None:
                raise LedgerError(
                    f"{where}: status 'no_signal' must have decision None, got {self.decision!r}")
            if self.proba_up is not None and not 0.0 <= float(self.proba_up) <= 1.0:
                raise LedgerError(f"{where}: proba_up must be in [0, 1] or None, got {self.proba_up!r}")
        _finite(f"{where}: latency_ms", self.latency_ms)

    @classmethod
    def no_signal(cls, runtime: str, symbol: str, bar_ts: datetime, reason: str, *,
                  members: Mapping[str, Mapping[str, Any]] | None = None,
                  latency_ms: float | None = None) -> SignalRow:
        """The explicit row for a bar without a usable signal (warm-up, stale feed, failures)."""
        return cls(runtime, symbol, bar_ts, "no_signal", reason=reason, members=members or {},
                   latency_ms=latency_ms)


class FeedEventLike(Protocol):
    """What ``EventRow.from_feed`` reads (the feed's ``FeedEvent`` has these fields)."""

    @property
    def kind(self) -> str: ...
    @property
    def symbol(self) -> str | None: ...
    @property
    def message(self) -> str: ...
    @property
    def ts(self) -> datetime | None: ...
    @property
    def detail(self) -> Mapping[str, Any]: ...


@dataclass(frozen=True)
class EventRow:
    """Something that happened to the runtime: a feed fault, a retry, a member failure, a start or
    stop. ``uid`` makes a retried write idempotent; ``id`` (the order of writing) is the database's."""

    runtime: str
    kind: str
    message: str
    symbol: str | None = None
    bar_ts: datetime | None = None
    detail: Mapping[str, Any] = field(default_factory=dict)
    at: datetime = field(default_factory=_utcnow)
    uid: str = field(default_factory=lambda: uuid.uuid4().hex)

    def __post_init__(self) -> None:
        where = f"event row ({self.runtime!r}, {self.kind!r})"
        _text(where, runtime=self.runtime, kind=self.kind)
        if self.symbol is not None:
            _text(where, symbol=self.symbol)
        _aware(f"{where}: at", self.at)
        _aware(f"{where}: bar_ts", self.bar_ts, optional=True)

    @classmethod
    def from_feed(cls, runtime: str, event: FeedEventLike, *, at: datetime | None = None) -> EventRow:
        """A feed's event as a ledger row (``ts`` -> ``bar_ts``)."""
        return cls(runtime, event.kind, event.message, symbol=event.symbol, bar_ts=event.ts,
                   detail=dict(event.detail), at=at or _utcnow())


@dataclass(frozen=True)
class FillRow:
    """A paper fill: ``qty`` units bought or sold at ``price`` (the open of bar ``bar_ts``, the bar
    after the decision's bar ``signal_ts``); ``fee`` and ``slippage`` in quote currency."""

    runtime: str
    symbol: str
    bar_ts: datetime
    signal_ts: datetime
    side: Literal["buy", "sell"]
    qty: float
    price: float
    fee: float
    slippage: float

    def __post_init__(self) -> None:
        where = f"fill row ({self.runtime!r}, {self.symbol!r}, {self.bar_ts})"
        _text(where, runtime=self.runtime, symbol=self.symbol)
        _aware(f"{where}: bar_ts", self.bar_ts)
        _aware(f"{where}: signal_ts", self.signal_ts)
        if self.side not in SIDES:
            raise LedgerError(f"{where}: side {self.side!r} is not one of {list(SIDES)}")
        for name in ("qty", "price", "fee", "slippage"):
            _finite(f"{where}: {name}", getattr(self, name), optional=False)
        if self.qty <= 0 or self.price <= 0 or self.fee < 0 or self.slippage < 0:
            raise LedgerError(f"{where}: qty and price must be > 0, fee and slippage >= 0")


@dataclass(frozen=True)
class PositionRow:
    """The paper book of one symbol after bar ``bar_ts``: ``position`` units held (signed),
    ``target`` the decision in effect (-1/0/+1), ``cash`` in quote currency, ``costs`` the fees and
    slippage paid so far, ``pnl`` = cash + position * close of the bar (net of costs)."""

    runtime: str
    symbol: str
    bar_ts: datetime
    target: int
    position: float
    cash: float
    costs: float
    pnl: float

    def __post_init__(self) -> None:
        where = f"position row ({self.runtime!r}, {self.symbol!r}, {self.bar_ts})"
        _text(where, runtime=self.runtime, symbol=self.symbol)
        _aware(f"{where}: bar_ts", self.bar_ts)
        if self.target not in (-1, 0, 1):
            raise LedgerError(f"{where}: target must be in [-1, 0, 1], got {self.target!r}")
        for name in ("position", "cash", "costs", "pnl"):
            _finite(f"{where}: {name}", getattr(self, name), optional=False)


# -------------------------------------------------------------------------------------- schema


class UTCDateTime(sa.types.TypeDecorator[datetime]):
    """Timezone-aware UTC datetimes on both backends (SQLite keeps no zone: stored as naive UTC)."""

    impl = sa.DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")  # SQLite autoincrements INTEGER keys
metadata = sa.MetaData()
schema_version_t = sa.Table(
    "schema_version", metadata,
    sa.Column("version", sa.Integer, primary_key=True, autoincrement=False),
    sa.Column("applied_at", UTCDateTime, nullable=False),
)
signals_t = sa.Table(
    "signals", metadata,
    sa.Column("runtime", sa.String(200), nullable=False),
    sa.Column("symbol", sa.String(100), nullable=False),
    sa.Column("bar_ts", UTCDateTime, nullable=False),
    sa.Column("status", sa.String(16), nullable=False),
    sa.Column("reason", sa.String(100)),
    sa.Column("proba_up", sa.Double),
    sa.Column("decision", sa.SmallInteger),
    sa.Column("members", sa.Text, nullable=False),
    sa.Column("latency_ms", sa.Double),
    sa.Column("created_at", UTCDateTime, nullable=False),
    sa.PrimaryKeyConstraint("runtime", "symbol", "bar_ts", name="signals_key"),
)
events_t = sa.Table(
    "events", metadata,
    sa.Column("id", _ID, primary_key=True, autoincrement=True),
    sa.Column("uid", sa.String(32), nullable=False, unique=True),
    sa.Column("runtime", sa.String(200), nullable=False),
    sa.Column("at", UTCDateTime, nullable=False),
    sa.Column("kind", sa.String(50), nullable=False),
    sa.Column("symbol", sa.String(100)),
    sa.Column("bar_ts", UTCDateTime),
    sa.Column("message", sa.Text, nullable=False),
    sa.Column("detail", sa.Text, nullable=False),
    sa.Index("events_runtime", "runtime", "id"),
)
fills_t = sa.Table(
    "paper_fills", metadata,
    sa.Column("runtime", sa.String(200), nullable=False),
    sa.Column("symbol", sa.String(100), nullable=False),
    sa.Column("bar_ts", UTCDateTime, nullable=False),
    sa.Column("signal_ts", UTCDateTime, nullable=False),
    sa.Column("side", sa.String(4), nullable=False),
    sa.Column("qty", sa.Double, nullable=False),
    sa.Column("price", sa.Double, nullable=False),
    sa.Column("fee", sa.Double, nullable=False),
    sa.Column("slippage", sa.Double, nullable=False),
    sa.PrimaryKeyConstraint("runtime", "symbol", "bar_ts", name="paper_fills_key"),
)
positions_t = sa.Table(
    "positions", metadata,
    sa.Column("runtime", sa.String(200), nullable=False),
    sa.Column("symbol", sa.String(100), nullable=False),
    sa.Column("bar_ts", UTCDateTime, nullable=False),
    sa.Column("target", sa.SmallInteger, nullable=False),
    sa.Column("position", sa.Double, nullable=False),
    sa.Column("cash", sa.Double, nullable=False),
    sa.Column("costs", sa.Double, nullable=False),
    sa.Column("pnl", sa.Double, nullable=False),
    sa.PrimaryKeyConstraint("runtime", "symbol", "bar_ts", name="positions_key"),
)
_KEYED = {"signals": signals_t, "paper_fills": fills_t, "positions": positions_t}
def _is_placeholder(status: Any, reason: Any) -> Any:
    """SQL: the row is a ``stale`` placeholder (replaceable by the bar's own row)."""
    return sa.and_(status == "no_signal", reason == "stale")


def _replacing_placeholders(ins: Any) -> Any:
    """Signals insert: first write wins, except that a row replaces a ``stale`` placeholder."""
    new = ins.excluded
    keep = set(_CONFLICT["signals"])
    return ins.on_conflict_do_update(
        index_elements=_CONFLICT["signals"],
        set_={col.name: new[col.name] for col in signals_t.c if col.name not in keep},
        where=sa.and_(_is_placeholder(signals_t.c.status, signals_t.c.reason),
                      sa.not_(_is_placeholder(new.status, new.reason))))


_CONFLICT = {"signals": ["runtime", "symbol", "bar_ts"], "paper_fills": ["runtime", "symbol", "bar_ts"],
             "positions": ["runtime", "symbol", "bar_ts"], "events": ["uid"]}
_TABLES = {**_KEYED, "events": events_t}


def _migrate_1(conn: Connection) -> None:
    """v1: the four ledger tables. (The metadata above is the newest schema; when v2 changes a
    table, this step must keep creating the v1 form and ``_migrate_2`` alter it.)"""
    for t in (signals_t, events_t, fills_t, positions_t):
        t.create(conn)


MIGRATIONS: dict[int, Callable[[Connection], None]] = {1: _migrate_1}
assert sorted(MIGRATIONS) == list(range(1, SCHEMA_VERSION + 1))


# ------------------------------------------------------------------------------------- engine


def ledger_url(target: str | Path) -> str:
    """A database URL from a URL or a plain file path (-> a SQLite file, parent created).
    A bare ``postgresql://`` gets the installed driver (SQLAlchemy 2.1 defaults to psycopg 3;
    moola installs psycopg2)."""
    text = str(target)
    if "://" not in text:
        path = Path(text).expanduser().resolve()
        path.parent.mkdir(parents=True, exist_ok=True)
        return f"sqlite:///{path}"
    try:
        u = sa.engine.make_url(text)
    except sa.exc.ArgumentError as e:
        raise LedgerError(f"ledger database URL {redact_urls(text)!r} is not a valid URL: "
                          f"{redact_urls(str(e))}") from None
    backend = u.get_backend_name()
    if backend not in ("sqlite", "postgresql"):
        raise LedgerError(f"ledger database URL {redact_urls(text)!r}: backend "
                          f"{backend!r} is not supported; use 'sqlite:///path' or 'postgresql://...'")
    if backend == "sqlite":
        if u.database in (None, "", ":memory:"):
            raise LedgerError("ledger database URL: an in-memory SQLite ledger would vanish at exit; "
                              "give a file, e.g. 'sqlite:///runtime.sqlite'")
        Path(u.database or "").expanduser().resolve().parent.mkdir(parents=True, exist_ok=True)
    if u.drivername == "postgresql" and importlib.util.find_spec("psycopg") is None \
            and importlib.util.find_spec("psycopg2") is not None:
        u = u.set(drivername="postgresql+psycopg2")
    return u.render_as_string(hide_password=False)


def _make_engine(url: str, retry: RetryConfig) -> Engine:
    u = sa.engine.make_url(url)
    ms = max(1, int(retry.timeout_s * 1000))
    if u.get_backend_name() == "sqlite":
        engine = sa.create_engine(u, connect_args={"timeout": retry.timeout_s})

        @sa.event.listens_for(engine, "connect")
        def _sqlite_connect(dbapi_conn: Any, _record: Any) -> None:
            # the driver's own transaction handling skips DDL; SQLAlchemy's recipe: let the
            # driver autocommit and emit BEGIN ourselves (the "begin" listener below)
            dbapi_conn.isolation_level = None
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute(f"PRAGMA busy_timeout={ms}")
            cur.execute("PRAGMA synchronous=NORMAL")  # durable against a killed process in WAL
            cur.close()

        @sa.event.listens_for(engine, "begin")
        def _sqlite_begin(conn: Connection) -> None:
            # a writing transaction takes the write lock up front (waits busy_timeout, then fails
            # cleanly) instead of failing on a lock upgrade half-way
            mode = "BEGIN IMMEDIATE" if conn.get_execution_options().get("moola_write") else "BEGIN"
            conn.exec_driver_sql(mode)

        return engine
    engine = sa.create_engine(
        u, pool_pre_ping=True, pool_size=2, max_overflow=2,
        connect_args={"connect_timeout": max(2, math.ceil(retry.timeout_s)),
                      "application_name": "moola-ledger",
                      "keepalives": 1, "keepalives_idle": 5, "keepalives_interval": 2,
                      "keepalives_count": 2})

    @sa.event.listens_for(engine, "connect")
    def _pg_connect(dbapi_conn: Any, _record: Any) -> None:
        cur = dbapi_conn.cursor()
        cur.execute(f"SET statement_timeout = {ms}")
        cur.close()
        dbapi_conn.commit()

    return engine


def _transient(err: BaseException) -> bool:
    """A database that is away or busy (retry later), as opposed to a bug (raise now)."""
    if isinstance(err, sa.exc.DBAPIError) and err.connection_invalidated:
        return True
    return isinstance(err, sa.exc.OperationalError | sa.exc.InterfaceError | sa.exc.TimeoutError)


# ------------------------------------------------------------------------------------- ledger


def _signal_params(r: SignalRow) -> dict[str, Any]:
    return {"runtime": r.runtime, "symbol": r.symbol, "bar_ts": r.bar_ts, "status": r.status,
            "reason": r.reason, "proba_up": None if r.proba_up is None else float(r.proba_up),
            "decision": r.decision, "members": dumps_json(dict(r.members), indent=None),
            "latency_ms": r.latency_ms, "created_at": r.created_at}


def _event_params(r: EventRow) -> dict[str, Any]:
    return {"uid": r.uid, "runtime": r.runtime, "at": r.at, "kind": r.kind, "symbol": r.symbol,
            "bar_ts": r.bar_ts, "message": r.message, "detail": dumps_json(dict(r.detail), indent=None)}


class Ledger:
    """The runtime's database (see the module docstring for the call order and semantics).

    ``url``: ``sqlite:///path`` (default backend), a plain path (-> SQLite), or a PostgreSQL URL.
    ``retry``: ``timeout_s`` bounds one try (SQLite busy_timeout, PostgreSQL connect and statement
    timeouts); the backoff spaces the tries while the database is away; ``max_retries`` bounds
    the blocking ``flush()`` / reads / ``migrate()``.
    """

    def __init__(self, url: str | Path, *, retry: RetryConfig | None = None) -> None:
        self.url = ledger_url(url)
        self.retry = retry or DEFAULT_RETRY
        self.engine = _make_engine(self.url, self.retry)
        self.backend: str = self.engine.dialect.name
        self._queue: list[tuple[str, dict[str, Any]]] = []
        self._lock = threading.RLock()
        self._failures = 0
        self._down_since: float | None = None
        self._next_try = 0.0
        self.last_error: str | None = None
        self._schema_ok = False
        insert = sqlite_dialect.insert if self.backend == "sqlite" else pg_dialect.insert
        self._inserts = {name: insert(t).on_conflict_do_nothing(index_elements=_CONFLICT[name])
                         for name, t in _TABLES.items()}
        self._inserts["signals"] = _replacing_placeholders(insert(signals_t))

    def __repr__(self) -> str:
        return f"Ledger({self.masked_url!r}, pending={self.pending})"

    @property
    def masked_url(self) -> str:
        return redact_urls(self.url)

    # ---- schema

    def migrate(self) -> int:
        """Create the schema or upgrade it to ``SCHEMA_VERSION``; returns the version. Refuses a
        database whose schema is newer than this code, or one that holds other tables named like
        the ledger's without a ``schema_version``. Retried while the database is away."""
        return self._retrying(self._migrate_once, "migrate")

    def _migrate_once(self) -> int:
        with self.engine.connect() as conn:
            conn = conn.execution_options(moola_write=True)
            with conn.begin():
                if self.backend == "postgresql":  # two runtimes migrating at once: one at a time
                    conn.execute(sa.text("SELECT pg_advisory_xact_lock(7426010011)"))
                current = self._version(conn)
                if current is None:
                    clash = [t for t in _TABLES if sa.inspect(conn).has_table(t)]
                    if clash:
                        raise LedgerSchemaError(
                            f"{self.masked_url}: tables {clash} exist but there is no schema_version "
                            "table; this database is not a moola ledger (use another database)")
                    schema_version_t.create(conn)
                    current = 0
                for v in range(current + 1, SCHEMA_VERSION + 1):
                    MIGRATIONS[v](conn)
                    conn.execute(schema_version_t.insert().values(version=v, applied_at=_utcnow()))
        self._schema_ok = True
        return SCHEMA_VERSION

    def _version(self, conn: Connection) -> int | None:
        if not sa.inspect(conn).has_table("schema_version"):
            return None
        v = conn.execute(sa.select(sa.func.max(schema_version_t.c.version))).scalar()
        current = int(v or 0)
        if current > SCHEMA_VERSION:
            raise LedgerSchemaError(
                f"{self.masked_url}: the ledger's schema is version {current}, newer than this "
                f"moola knows (up to {SCHEMA_VERSION}); upgrade moola to use this database")
        return current

    def schema_version(self) -> int | None:
        """The database's schema version (None: no ledger there yet)."""
        def once() -> int | None:
            with self.engine.connect() as conn:
                return self._version(conn)
        return self._retrying(once, "read the schema version")

    def _check_schema(self, conn: Connection) -> None:
        if self._schema_ok:
            return
        v = self._version(conn)
        if v != SCHEMA_VERSION:
            raise LedgerSchemaError(
                f"{self.masked_url}: ledger schema is {'missing' if v is None else f'version {v}'}, "
                f"this moola needs version {SCHEMA_VERSION}; run Ledger.migrate() (the runtime does "
                "at start)")
        self._schema_ok = True

    # ---- writes

    @property
    def pending(self) -> int:
        """Rows queued in memory, not yet in the database."""
        return len(self._queue)

    @property
    def available(self) -> bool:
        """False while the last try at the database failed."""
        return self._failures == 0

    def write(self, *, signals: Sequence[SignalRow] = (), events: Sequence[EventRow] = (),
              fills: Sequence[FillRow] = (), positions: Sequence[PositionRow] = ()) -> None:
        """Queue one tick's rows (events, signals, fills, positions, in that order) and try to
        write the queue once; rows of one call land in one transaction, so a killed process
        leaves a tick either whole or absent. Never raises for a database that is away."""
        with self._lock:
            self._queue.extend(("events", _event_params(r)) for r in events)
            self._queue.extend(("signals", _signal_params(r)) for r in signals)
            self._queue.extend(("paper_fills", asdict(r)) for r in fills)
            self._queue.extend(("positions", asdict(r)) for r in positions)
            self._try_flush()

    def write_signals(self, rows: Sequence[SignalRow]) -> None:
        self.write(signals=rows)

    def write_events(self, rows: Sequence[EventRow]) -> None:
        self.write(events=rows)

    def write_fills(self, rows: Sequence[FillRow]) -> None:
        self.write(fills=rows)

    def write_positions(self, rows: Sequence[PositionRow]) -> None:
        self.write(positions=rows)

    def _try_flush(self) -> None:
        if not self._queue or time.monotonic() < self._next_try:
            return
        try:
            self._flush_once()
        except Exception as e:
            if not _transient(e):
                raise
            self._failed(e)

    def _failed(self, err: BaseException) -> float:
        self._failures += 1
        if self._down_since is None:
            self._down_since = time.monotonic()
        self.last_error = f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"
        delay = min(self.retry.backoff_s * 2 ** (self._failures - 1), self.retry.backoff_max_s)
        self._next_try = time.monotonic() + delay
        return delay

    def _flush_once(self) -> None:
        batch = list(self._queue)
        recovered: list[EventRow] = []
        if self._failures:
            down = time.monotonic() - (self._down_since or time.monotonic())
            runtimes = list(dict.fromkeys(p["runtime"] for _, p in batch))
            recovered = [EventRow(r, "db_recovered",
                                  f"ledger database back after {self._failures} failed tries over "
                                  f"{down:.1f} s; {len(batch)} queued rows written in order",
                                  detail={"failures": self._failures, "seconds": round(down, 3),
                                          "rows": len(batch), "last_error": self.last_error})
                         for r in runtimes]
            batch += [("events", _event_params(e)) for e in recovered]
        with self.engine.connect() as conn:
            self._check_schema(conn)
            conn = conn.execution_options(moola_write=True)
            with conn.begin():
                for name, rows in _runs(batch):
                    conn.execute(self._inserts[name], rows)
        del self._queue[: len(batch) - len(recovered)]
        self._failures, self._down_since, self._next_try = 0, None, 0.0

    def flush(self) -> None:
        """Write everything queued now, retrying with backoff; raises ``LedgerUnavailable`` after
        ``max_retries`` (the rows stay queued for a later flush)."""
        with self._lock:
            if self._queue:
                self._retrying(self._flush_once, "write the queued rows", count=True)

    def close(self) -> None:
        """Flush (raises ``LedgerUnavailable`` if the database stays away) and release connections."""
        try:
            self.flush()
        finally:
            self.engine.dispose()

    def __enter__(self) -> Ledger:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _retrying(self, fn: Callable[[], _T], what: str, *, count: bool = False) -> _T:
        started = time.monotonic()
        delays = backoff_delays(self.retry)
        tries = 0
        while True:
            tries += 1
            try:
                return fn()
            except Exception as e:
                if not _transient(e):
                    raise
                if count:
                    self._failed(e)
                delay = next(delays, None)
                if delay is None:
                    raise LedgerUnavailable(
                        f"{self.masked_url}: could not {what} after {tries} tries over "
                        f"{time.monotonic() - started:.1f} s ({type(e).__name__}: "
                        f"{str(e).splitlines()[0] if str(e) else ''}); {self.pending} rows stay queued "
                        "in memory") from e
                time.sleep(delay)

    # ---- reads (the database only; see ``pending`` for the queue)

    def _read(self, stmt: sa.Select[Any]) -> list[Any]:
        def once() -> list[Any]:
            with self.engine.connect() as conn:
                self._check_schema(conn)
                return list(conn.execute(stmt))
        return self._retrying(once, "read the ledger")

    def runtimes(self) -> list[str]:
        """The runtime names that have signals or events, sorted."""
        q = sa.union(sa.select(signals_t.c.runtime), sa.select(events_t.c.runtime)).subquery()
        return sorted(r[0] for r in self._read(sa.select(q.c.runtime)))

    def last_bar(self, runtime: str, symbol: str) -> datetime | None:
        """The last bar with a signal row for (runtime, symbol), stale placeholders aside: where a
        restart resumes. Rows still queued count too (they will land), so a running runtime never
        repeats a bar."""
        c = signals_t.c
        rows = self._read(sa.select(sa.func.max(c.bar_ts)).where(
            c.runtime == runtime, c.symbol == symbol, sa.not_(_is_placeholder(c.status, c.reason))))
        db = rows[0][0] if rows else None
        with self._lock:
            queued = [p["bar_ts"] for name, p in self._queue
                      if name == "signals" and p["runtime"] == runtime and p["symbol"] == symbol
                      and not (p["status"] == "no_signal" and p["reason"] == "stale")]
        best = max([t for t in [db, *queued] if t is not None], default=None)
        return None if best is None else best.astimezone(UTC)

    def last_signal(self, runtime: str, symbol: str) -> SignalRow | None:
        """The signal row of ``last_bar`` in the database (None if none)."""
        return self._one_signal(runtime, symbol, None)

    def signal_at(self, runtime: str, symbol: str, bar_ts: datetime) -> SignalRow | None:
        """The signal row of one bar (None if none). After a restart ``PaperBook.restore`` takes
        the decision of the signal at the last POSITION row's bar: a later gap row has no bar."""
        return self._one_signal(runtime, symbol, bar_ts)

    def _one_signal(self, runtime: str, symbol: str, bar_ts: datetime | None) -> SignalRow | None:
        c = signals_t.c
        q = sa.select(signals_t).where(c.runtime == runtime, c.symbol == symbol)
        q = q.order_by(c.bar_ts.desc()).limit(1) if bar_ts is None else q.where(c.bar_ts == bar_ts)
        rows = self._read(q)
        if not rows:
            return None
        r = rows[0]._mapping
        return SignalRow(r["runtime"], r["symbol"], r["bar_ts"], r["status"], proba_up=r["proba_up"],
                         decision=r["decision"], reason=r["reason"], members=json.loads(r["members"]),
                         latency_ms=r["latency_ms"], created_at=r["created_at"])

    def last_position(self, runtime: str, symbol: str) -> PositionRow | None:
        """The paper book's last row for (runtime, symbol): what ``PaperBook.restore`` takes."""
        c = positions_t.c
        rows = self._read(sa.select(positions_t).where(c.runtime == runtime, c.symbol == symbol)
                          .order_by(c.bar_ts.desc()).limit(1))
        if not rows:
            return None
        r = rows[0]._mapping
        return PositionRow(**{col.name: r[col.name] for col in positions_t.c})

    def _frame(self, table: sa.Table, runtime: str, symbol: str | None, order: Iterable[str],
               schema: Mapping[str, pl.DataType]) -> pl.DataFrame:
        # timestamps skip the per-value Python conversion (a month of bars is ~10^5 rows): SQLite's
        # text is parsed by polars, psycopg2's datetimes are taken as they come
        sqlite = self.backend == "sqlite"
        cols: list[Any] = []
        for name, dtype in schema.items():
            c = table.c[name]
            raw = sa.String() if sqlite else sa.DateTime(timezone=True)
            cols.append(sa.type_coerce(c, raw).label(name) if isinstance(dtype, pl.Datetime) else c)
        q = sa.select(*cols).where(table.c.runtime == runtime)
        if symbol is not None:
            q = q.where(table.c.symbol == symbol)
        q = q.order_by(*(table.c[c] for c in order))
        rows = [tuple(r) for r in self._read(q)]
        init = {k: (pl.String() if sqlite else pl.Datetime("us", "UTC")) if isinstance(v, pl.Datetime) else v
                for k, v in schema.items()}
        frame = pl.DataFrame(rows, schema=init, orient="row")
        return frame.with_columns(
            (pl.col(k).str.to_datetime(_SQLITE_TS, time_unit="us", time_zone="UTC") if sqlite else pl.col(k))
            .cast(v) if isinstance(v, pl.Datetime) else pl.col(k).cast(v)
            for k, v in schema.items())

    def signals(self, runtime: str, symbol: str | None = None) -> pl.DataFrame:
        """Signal rows sorted by (symbol, bar_ts); ``bar_ts`` in moola's TS_DTYPE, ``members`` JSON text."""
        return self._frame(signals_t, runtime, symbol, ("symbol", "bar_ts"), SIGNAL_SCHEMA)

    def events(self, runtime: str) -> pl.DataFrame:
        """Events in the order they were written (``id``); ``detail`` JSON text."""
        return self._frame(events_t, runtime, None, ("id",), EVENT_SCHEMA)

    def fills(self, runtime: str, symbol: str | None = None) -> pl.DataFrame:
        return self._frame(fills_t, runtime, symbol, ("symbol", "bar_ts"), FILL_SCHEMA)

    def positions(self, runtime: str, symbol: str | None = None) -> pl.DataFrame:
        return self._frame(positions_t, runtime, symbol, ("symbol", "bar_ts"), POSITION_SCHEMA)

    def status(self, runtime: str) -> dict[str, Any]:
        """A summary for ``moola runtime status``: per symbol the first and last bar, row counts,
        signals vs no-signal rows by reason, the paper PnL; the event count by kind and the last event."""
        s = signals_t.c
        per = self._read(sa.select(s.symbol, s.status, s.reason, sa.func.count(),
                                   sa.func.min(s.bar_ts), sa.func.max(s.bar_ts))
                         .where(s.runtime == runtime).group_by(s.symbol, s.status, s.reason))
        symbols: dict[str, dict[str, Any]] = {}
        for sym, status, reason, n, first, last in per:
            d = symbols.setdefault(sym, {"first_bar": first, "last_bar": last, "rows": 0,
                                         "signals": 0, "no_signal": {}, "pnl": None, "position": None})
            d["first_bar"], d["last_bar"] = min(d["first_bar"], first), max(d["last_bar"], last)
            d["rows"] += n
            if status == "signal":
                d["signals"] += n
            else:
                d["no_signal"][reason] = d["no_signal"].get(reason, 0) + n
        for sym, d in symbols.items():
            pos = self.last_position(runtime, sym)
            if pos is not None:
                d["pnl"], d["position"] = pos.pnl, pos.position
        e = events_t.c
        kinds = {k: n for k, n in self._read(sa.select(e.kind, sa.func.count())
                                              .where(e.runtime == runtime).group_by(e.kind))}
        last = self._read(sa.select(events_t).where(e.runtime == runtime).order_by(e.id.desc()).limit(1))
        last_event = None
        if last:
            m = last[0]._mapping
            last_event = {"at": m["at"], "kind": m["kind"], "symbol": m["symbol"], "message": m["message"]}
        return {"runtime": runtime, "database": self.masked_url, "schema_version": SCHEMA_VERSION,
                "symbols": dict(sorted(symbols.items())), "events": dict(sorted(kinds.items())),
                "last_event": last_event, "pending": self.pending, "available": self.available}


def _runs(batch: Sequence[tuple[str, dict[str, Any]]]) -> Iterable[tuple[str, list[dict[str, Any]]]]:
    """Consecutive rows of one table grouped (one executemany each), the order kept."""
    run: list[dict[str, Any]] = []
    name = ""
    for n, p in batch:
        if run and n != name:
            yield name, run
            run = []
        name = n
        run.append(p)
    if run:
        yield name, run


# how SQLAlchemy's SQLite DateTime stores a value (naive UTC here; see UTCDateTime)
_SQLITE_TS = "%Y-%m-%d %H:%M:%S%.f"


_TS = TS_DTYPE
SIGNAL_SCHEMA: dict[str, pl.DataType] = {
    "runtime": pl.String(), "symbol": pl.String(), "bar_ts": _TS, "status": pl.String(),
    "reason": pl.String(), "proba_up": pl.Float64(), "decision": pl.Int8(), "members": pl.String(),
    "latency_ms": pl.Float64(), "created_at": _TS}
EVENT_SCHEMA: dict[str, pl.DataType] = {
    "id": pl.Int64(), "runtime": pl.String(), "at": _TS, "kind": pl.String(), "symbol": pl.String(),
    "bar_ts": _TS, "message": pl.String(), "detail": pl.String(), "uid": pl.String()}
FILL_SCHEMA: dict[str, pl.DataType] = {
    "runtime": pl.String(), "symbol": pl.String(), "bar_ts": _TS, "signal_ts": _TS,
    "side": pl.String(), "qty": pl.Float64(), "price": pl.Float64(), "fee": pl.Float64(),
    "slippage": pl.Float64()}
POSITION_SCHEMA: dict[str, pl.DataType] = {
    "runtime": pl.String(), "symbol": pl.String(), "bar_ts": _TS, "target": pl.Int8(),
    "position": pl.Float64(), "cash": pl.Float64(), "costs": pl.Float64(), "pnl": pl.Float64()}
