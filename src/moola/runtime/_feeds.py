"""Bar feeds for the dry-run runtime: a deterministic replay and a live ccxt poller.

Both hand the runtime the same thing at every tick: the bars that CLOSED since the previous tick,
for all symbols, sorted by (symbol, ts), each (symbol, ts) at most once over the feed's life, with
an event for everything odd on the way (gaps, retries, malformed/duplicate/out-of-order candles,
stale or lagging symbols, backfills). The runtime then never has to second-guess its input.

History: the first tick a symbol takes part in also holds up to ``warmup`` bars of history
before its start, so the runtime can fill its rolling buffers at once. On a resume
(``since[symbol]`` set) those are the ``warmup`` bars at or before ``since[symbol]``: bars the
ledger already holds, meant for the buffers only (a consumer skips writing them: ``ts <= since``).

Dry run only: the live feed calls nothing but ``load_markets`` and ``fetch_ohlcv``.
"""

from __future__ import annotations

import bisect
import contextlib
import difflib
import itertools
import math
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

import polars as pl

from moola.data import (
    REQUIRED_COLUMNS,
    TS_DTYPE,
    MoolaDataError,
    Store,
    Timeframe,
    read_file,
    validate_raw,
)
from moola.runtime._retry import RetryConfig, backoff_delays

if TYPE_CHECKING:  # ccxt takes about a second to import: only a live feed pays for it
    import ccxt

T = TypeVar("T")

EVENT_KINDS = ("retry", "timeout", "http_error", "malformed", "duplicate", "out_of_order", "gap",
               "stale", "backfill", "recovered", "skew")
BAR_SCHEMA: dict[str, pl.DataType] = {
    "symbol": pl.String(), "ts": TS_DTYPE, "open": pl.Float64(), "high": pl.Float64(),
    "low": pl.Float64(), "close": pl.Float64(), "volume": pl.Float64(),
}
_VALUES = ("open", "high", "low", "close", "volume")


class FeedError(RuntimeError):
    """A feed cannot start or go on: bad source, unknown symbol or timeframe, exchange down."""


@dataclass(frozen=True)
class FeedEvent:
    """Something the ledger's events table should show; ``kind`` is one of EVENT_KINDS."""

    kind: str
    symbol: str | None
    message: str
    ts: datetime | None = None  # the bar concerned, if any
    detail: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Tick:
    """One step of a feed: its clock, the bars closed since the previous tick, the events."""

    now: datetime
    bars: pl.DataFrame  # BAR_SCHEMA, sorted (symbol, ts); several bars per symbol on backfill
    events: list[FeedEvent]
    # per symbol the feed holds stale: the last bar that has closed by ``now`` (within the
    # feed's period); its bars after the last delivered one up to this are overdue
    overdue: dict[str, datetime] = field(default_factory=dict)


class Feed(Protocol):
    """Call order: ``start(symbols, timeframe, since)`` once, then ``next_tick()`` until it
    returns None (replay exhausted / ``until`` reached), then ``close()``."""

    def start(self, symbols: Sequence[str], timeframe: Timeframe,
              since: Mapping[str, datetime | None]) -> None: ...

    def next_tick(self) -> Tick | None: ...

    def live_from(self, symbol: str) -> datetime | None:
        """After ``start``: the first bar of ``symbol`` that belongs to the period (bars before
        it are history for the buffers); None when every bar delivered does."""
        ...

    def close(self) -> None: ...


def utcnow() -> datetime:
    return datetime.now(UTC)


def empty_bars() -> pl.DataFrame:
    return pl.DataFrame(schema=BAR_SCHEMA)


def _utc(when: datetime) -> datetime:
    """Naive datetimes are UTC."""
    return when.replace(tzinfo=UTC) if when.tzinfo is None else when.astimezone(UTC)


def _epoch_ns(when: datetime) -> int:
    """Exact integer ns since the epoch (a float timestamp would lose the last digits)."""
    delta = _utc(when) - datetime(1970, 1, 1, tzinfo=UTC)
    return (delta.days * 86_400 + delta.seconds) * 1_000_000_000 + delta.microseconds * 1000


def _dt_ns(ns: int) -> datetime:
    return datetime(1970, 1, 1, tzinfo=UTC) + timedelta(microseconds=ns // 1000)


def _step_ns(tf: Timeframe) -> int:
    return int(tf.step.total_seconds()) * 1_000_000_000


def _check_symbols(symbols: Sequence[str], since: Mapping[str, datetime | None]) -> list[str]:
    syms = list(symbols)
    if not syms:
        raise FeedError("no symbols to feed: pass at least one")
    dup = sorted({s for s in syms if syms.count(s) > 1})
    if dup:
        raise FeedError(f"symbols listed twice: {dup}")
    extra = sorted(set(since) - set(syms))
    if extra:
        raise FeedError(f"since names symbols that are not fed: {extra}; fed: {sorted(syms)}")
    return sorted(syms)


# ================================================================================== replay
class ReplayFeed:
    """Recorded bars replayed on the union clock of the symbols; deterministic.

    Each tick is one timestamp of the union of the symbols' bar times (from ``start`` to
    ``end``, both inclusive: the first and last bar to replay; or the last ``last_fraction`` of
    the bars' time span) and holds each symbol's bar at that time; a symbol without one has no
    bar in that tick and a "gap" event instead (so do minutes missing for every symbol, on
    intraday timeframes). ``now`` is the bar's close (ts + step). ``pace`` None replays as fast
    as possible; ``pace`` seconds sleeps that long before every tick after the first.
    ``bars_source``: a moola store directory, a bar file moola reads (validated with the
    default policy), or a canonical frame (symbol, ts, open, high, low, close, volume).
    """

    def __init__(self, bars_source: str | Path | pl.DataFrame, *, start: datetime | None = None,
                 end: datetime | None = None, pace: float | None = None, warmup: int = 0,
                 last_fraction: float | None = None,
                 sleep: Callable[[float], None] = time.sleep) -> None:
        if last_fraction is not None and (start is not None or not 0 < last_fraction <= 1):
            raise FeedError(f"last_fraction must be in (0, 1] and not given with start "
                            f"(got {last_fraction}, start {start})")
        if warmup < 0:
            raise FeedError(f"warmup must be >= 0 (got {warmup})")
        if pace is not None and pace < 0:
            raise FeedError(f"pace must be None or >= 0 seconds (got {pace})")
        if start is not None and end is not None and _utc(end) < _utc(start):
            raise FeedError(f"end {end} is before start {start}")
        self.source = bars_source
        self.start_at = None if start is None else _utc(start)
        self.end_at = None if end is None else _utc(end)
        self.pace = pace
        self.warmup = warmup
        self.last_fraction = last_fraction
        self.sleep = sleep
        self._started = False

    # ------------------------------------------------------------------------ loading
    def _load(self, symbols: list[str], tf: Timeframe) -> pl.DataFrame:
        src = self.source
        name = "the bars frame" if isinstance(src, pl.DataFrame) else str(src)
        try:
            if isinstance(src, pl.DataFrame):
                missing = [c for c in REQUIRED_COLUMNS if c not in src.columns]
                if missing:
                    raise FeedError(f"{name} lacks columns {missing}; "
                                    f"a bar frame has {list(REQUIRED_COLUMNS)}")
                df = src
            else:
                path = Path(src)
                if path.is_dir():
                    store = Store(path)
                    if not store.exists():
                        raise FeedError(f"{path} is a folder but not a moola store "
                                        "(no manifest); pass a store or a bar file")
                    stored = store.symbols(tf)
                    absent = sorted(set(symbols) - set(stored))
                    if absent:
                        raise FeedError(f"{path}: no {tf.value} bars for {absent}; "
                                        f"the store has {stored or 'none at ' + tf.value}")
                    df = store.read(tf, symbols)
                elif path.is_file():
                    raw = read_file(path)
                    if raw.timeframe is not None and raw.timeframe is not tf:
                        raise FeedError(f"{path} holds {raw.timeframe.value} bars, "
                                        f"the feed runs at {tf.value}")
                    df = validate_raw(raw.frame, tf).bars
                else:
                    raise FeedError(f"bar source {path} does not exist")
        except MoolaDataError as e:
            raise FeedError(f"cannot read bars from {name}: {e}") from e
        df = df.select(pl.col("symbol").cast(pl.String), pl.col("ts").cast(TS_DTYPE),
                       *[pl.col(c).cast(pl.Float64) for c in _VALUES])
        have = set(df.get_column("symbol").unique().to_list())
        missing = sorted(set(symbols) - have)
        if missing:
            raise FeedError(f"{name}: no bars for {missing}; it has {sorted(have)}")
        df = df.filter(pl.col("symbol").is_in(symbols))
        if self.end_at is not None:
            df = df.filter(pl.col("ts") <= self.end_at)
        df = df.unique(["symbol", "ts"], keep="last", maintain_order=True).sort("symbol", "ts")
        if tf.is_intraday:
            step = _step_ns(tf)
            off = df.filter(pl.col("ts").dt.epoch("ns") % step != 0)
            if off.height:
                r = off.row(0, named=True)
                raise FeedError(f"{name}: {off.height} bar(s) not on the {tf.value} grid, "
                                f"first {r['symbol']} at {r['ts']}; is the timeframe right?")
        return df

    # --------------------------------------------------------------------------- feed
    def start(self, symbols: Sequence[str], timeframe: Timeframe,
              since: Mapping[str, datetime | None]) -> None:
        if self._started:
            raise FeedError("start() called twice on one feed")
        syms = _check_symbols(symbols, since)
        tf = Timeframe(timeframe)
        df = self._load(syms, tf)
        self._tf = tf
        self._step = _step_ns(tf)
        self._frame = df  # sorted (symbol, ts): a tick gathers row numbers of it
        ts_all = df.get_column("ts").dt.epoch("ns").to_list()
        sym_all = df.get_column("symbol").to_list()
        start_ns = None if self.start_at is None else _epoch_ns(self.start_at)
        if self.last_fraction is not None and ts_all:
            lo, hi = min(ts_all), max(ts_all)
            start_ns = hi - int((hi - lo) * self.last_fraction)
        self._syms = syms
        self._ts: dict[str, list[int]] = {}  # per symbol: bar times
        self._row0: dict[str, int] = {}  # per symbol: row number of its first bar in _frame
        for i, (s, t) in enumerate(zip(sym_all, ts_all, strict=True)):
            if s not in self._ts:
                self._ts[s], self._row0[s] = [], i
            self._ts[s].append(t)
        self._first_live: dict[str, int] = {}  # per symbol: first bar time it is fed live
        for s in syms:
            lo = start_ns if start_ns is not None else -(2**62)
            sn = since.get(s)
            if sn is not None:
                lo = max(lo, _epoch_ns(_utc(sn)) + 1)
            self._first_live[s] = lo
        # the union clock: every bar time at or after the earliest first live time
        first = min(self._first_live.values())
        self._clock = sorted({t for t in ts_all if t >= first})
        self._pos = 0
        self._ptr = {s: bisect.bisect_left(self._ts[s], self._first_live[s]) for s in syms}
        self._history_sent: set[str] = set()
        self._last: dict[str, int | None] = {}
        self._reported: dict[str, int | None] = {s: None for s in syms}
        for s in syms:
            p = self._ptr[s]
            self._last[s] = self._ts[s][p - 1] if p > 0 else None
        self._started = True

    def next_tick(self) -> Tick | None:
        if not self._started:
            raise FeedError("next_tick() before start()")
        if self._pos >= len(self._clock):
            return None
        if self.pace and self._pos > 0:
            self.sleep(self.pace)
        c = self._clock[self._pos]
        self._pos += 1
        rows: list[int] = []
        events: list[FeedEvent] = []
        for s in self._syms:
            if c < self._first_live[s]:
                continue
            ts = self._ts[s]
            if s not in self._history_sent:
                self._history_sent.add(s)
                p = self._ptr[s]
                rows.extend(self._row0[s] + i for i in range(max(0, p - self.warmup), p))
            p = self._ptr[s]
            has = p < len(ts) and ts[p] == c
            ev = self._gap(s, c, has, ts)
            if ev is not None:
                events.append(ev)
            if has:
                rows.append(self._row0[s] + p)
                self._ptr[s] = p + 1
                self._last[s] = c
        bars = self._frame[rows] if rows else empty_bars()
        return Tick(now=_dt_ns(c + self._step), bars=bars, events=events)

    def live_from(self, symbol: str) -> datetime | None:
        """The first bar time of ``symbol`` in the period (start / last_fraction / after since)."""
        lo = self._first_live[symbol]
        return None if lo <= -(2**62) else _dt_ns(lo)

    def _gap(self, s: str, c: int, has: bool, ts: list[int]) -> FeedEvent | None:
        """A "gap" for the minutes of ``s`` missing up to clock step ``c`` not reported yet."""
        last, rep = self._last[s], self._reported[s]
        if last is None or (not has and (not ts or c > ts[-1])):
            return None  # before its first bar, or after its last one: not a gap
        if self._tf.is_intraday:
            first_missing = max(last, rep if rep is not None else last) + self._step
        else:
            first_missing = c
        last_missing = c - self._step if has else c
        if last_missing < first_missing:
            return None
        self._reported[s] = last_missing
        n = (last_missing - first_missing) // self._step + 1 if self._tf.is_intraday else 1
        a, b = _dt_ns(first_missing), _dt_ns(last_missing)
        return FeedEvent("gap", s, f"{s}: {n} bar(s) missing from {a:%Y-%m-%d %H:%M} "
                         f"to {b:%Y-%m-%d %H:%M}", ts=a,
                         detail={"missing": n, "first": a.isoformat(), "last": b.isoformat()})

    def close(self) -> None:
        self._pos = len(getattr(self, "_clock", []))


# ==================================================================================== live
@dataclass
class _SymbolState:
    market: str  # the ccxt unified symbol polled
    cursor: int  # ms: open time of the next bar wanted
    last: int | None  # ms: the last bar delivered (or recorded, on resume)
    history_upto: int | None  # ms: bars at or before this are resume history (first tick only)
    recent: deque[int] = field(default_factory=lambda: deque(maxlen=4096))
    down_since: datetime | None = None  # first failed poll of the current outage
    failed_polls: int = 0
    stale: bool = False
    skewed: bool = False
    first: bool = True  # no poll yet
    resumed: bool = False  # started from a recorded bar: its first catch-up is a backfill


class LiveFeed:
    """Closed candles polled from an exchange through ccxt ``fetch_ohlcv``; dry run only.

    ``exchange``: a ccxt instance, or ``(id, config)`` to build one with ccxt's rate limiter on.
    Each ``next_tick`` sleeps until the next bar of some symbol should have closed (plus
    ``settle_s``, and never sooner than ``poll_interval_s`` after the previous poll), then polls
    every symbol from the bar after its last delivered one, page by page (``page_limit``), so an
    outage of any length is backfilled in order once the exchange answers again. The candle
    still forming (``ts + step > now``) is never delivered. Timeouts and other recoverable
    ccxt errors (``ccxt.OperationFailed``: 5xx, network, rate limits, bad responses) are retried
    with exponential backoff; each failed try is an event: "retry" when a retry follows, else
    "timeout"/"http_error" (the poll gives up; the next poll resumes where it stopped).
    Malformed rows (non-numeric or NaN values, wrong length, off-grid time, high < low, open or
    close outside [low, high], negative volume) are dropped, duplicates kept once (the last
    sent), out-of-order rows sorted or, when older than the last delivered bar, dropped, each
    with an event. A symbol with no new closed bar for ``stale_after`` after one was due gets a
    "stale" event (once per episode), one whose last bar trails the others' by ``skew_after`` a
    "skew" event, and one that comes back a "recovered" event (and "backfill" for several bars).
    ``markets`` maps feed symbols to ccxt symbols; by default a feed symbol is a ccxt symbol,
    or a market whose symbol without slashes (moola's store name, ``BTC/USD`` -> ``BTCUSD``)
    or exchange id matches. ``until`` (exclusive bar open time) ends the feed.
    """

    def __init__(
        self,
        exchange: ccxt.Exchange | tuple[str, Mapping[str, Any]],
        *,
        retries: RetryConfig,
        warmup: int = 0,
        clock: Callable[[], datetime] = utcnow,
        sleep: Callable[[float], None] = time.sleep,
        poll_interval_s: float = 2.0,
        settle_s: float = 1.0,
        stale_after: timedelta | None = None,
        skew_after: timedelta | None = None,
        page_limit: int = 1000,
        until: datetime | None = None,
        markets: Mapping[str, str] | None = None,
    ) -> None:
        if warmup < 0:
            raise FeedError(f"warmup must be >= 0 (got {warmup})")
        if page_limit < 1:
            raise FeedError(f"page_limit must be >= 1 (got {page_limit})")
        if poll_interval_s < 0 or settle_s < 0:
            raise FeedError("poll_interval_s and settle_s must be >= 0")
        self._exchange_arg = exchange
        self.retries = retries
        self.warmup = warmup
        self.clock = clock
        self.sleep = sleep
        self.poll_interval_s = poll_interval_s
        self.settle_s = settle_s
        self.stale_after_arg = stale_after
        self.skew_after_arg = skew_after
        self.page_limit = page_limit
        self.until = None if until is None else _utc(until)
        self.market_map = dict(markets or {})
        self._started = False
        self._raw: list[list[Any]] | None = None

    # ------------------------------------------------------------------------ exchange
    def _make_exchange(self) -> ccxt.Exchange:
        import ccxt

        arg = self._exchange_arg
        if not isinstance(arg, tuple):
            return arg
        ex_id, config = arg
        if ex_id not in ccxt.exchanges:
            close = difflib.get_close_matches(ex_id, ccxt.exchanges, n=5, cutoff=0.6)
            raise FeedError(f"unknown ccxt exchange '{ex_id}'"
                            + (f"; did you mean {', '.join(close)}?" if close else
                               f"; ccxt {ccxt.__version__} lists its ids in ccxt.exchanges"))
        ex: ccxt.Exchange = getattr(ccxt, ex_id)({"enableRateLimit": True, **dict(config)})
        return ex

    def _capture(self, ex: ccxt.Exchange) -> None:
        """Keep the rows as the exchange sent them: ccxt's ``parse_ohlcvs`` sorts and drops
        rows before ``since`` or without a time silently, and the feed reports those."""
        orig = ex.parse_ohlcvs

        def parse_ohlcvs(ohlcvs: Any, market: Any = None, *args: Any, **kwargs: Any) -> Any:
            rows = [] if ohlcvs is None else [ex.parse_ohlcv(o, market) for o in ohlcvs]
            self._raw = rows
            return orig(ohlcvs, market, *args, **kwargs)

        ex.parse_ohlcvs = parse_ohlcvs

    def _call(self, what: str, symbol: str | None, fn: Callable[[], T],
              events: list[FeedEvent]) -> tuple[bool, T | None]:
        """``fn()`` with retries on recoverable ccxt errors: (True, result) or (False, None)."""
        import ccxt

        delays = backoff_delays(self.retries)
        attempt = 0
        while True:
            attempt += 1
            try:
                return True, fn()
            except ccxt.OperationFailed as e:
                kind = "timeout" if isinstance(e, ccxt.RequestTimeout) else "http_error"
                delay = next(delays, None)
                info = {"error": kind, "exception": type(e).__name__, "attempt": attempt,
                        "max_retries": self.retries.max_retries}
                text = str(e)[:300]
                if delay is None:
                    events.append(FeedEvent(kind, symbol, f"{what} failed after {attempt} "
                                            f"tries ({type(e).__name__}): {text}", detail=info))
                    return False, None
                events.append(FeedEvent("retry", symbol, f"{what}: {type(e).__name__}, retry "
                                        f"{attempt}/{self.retries.max_retries} in {delay:g}s: "
                                        f"{text}", detail={**info, "delay_s": delay}))
                self.sleep(delay)
            except ccxt.BaseError as e:  # permanent: bad symbol, bad request, auth
                raise FeedError(f"{self._ex.id}: {what} failed ({type(e).__name__}): {e}") from e

    def _resolve(self, symbol: str) -> str:
        mk = self._ex.markets or {}
        if symbol in self.market_map:
            m = self.market_map[symbol]
            if m not in mk:
                raise FeedError(f"markets maps {symbol} to '{m}', which {self._ex.id} does not "
                                f"list; close: {difflib.get_close_matches(m, list(mk), n=5)}")
            return m
        if symbol in mk:
            return symbol
        hits = sorted({u for u, m in mk.items()
                       if u.replace("/", "") == symbol or m.get("id") == symbol})
        if len(hits) == 1:
            return hits[0]
        if len(hits) > 1:
            raise FeedError(f"{symbol} matches several {self._ex.id} markets {hits}; "
                            "name one in markets")
        close = difflib.get_close_matches(symbol, list(mk), n=5, cutoff=0.5)
        raise FeedError(f"{self._ex.id} has no market for {symbol}"
                        + (f"; close: {close}" if close else f" ({len(mk)} markets listed)"))

    # ----------------------------------------------------------------------------- feed
    def start(self, symbols: Sequence[str], timeframe: Timeframe,
              since: Mapping[str, datetime | None]) -> None:
        if self._started:
            raise FeedError("start() called twice on one feed")
        syms = _check_symbols(symbols, since)
        tf = Timeframe(timeframe)
        ex = self._make_exchange()
        self._ex = ex
        ex.timeout = int(self.retries.timeout_s * 1000)
        if not ex.has.get("fetchOHLCV"):
            raise FeedError(f"exchange '{ex.id}' serves no candles (no fetchOHLCV)")
        if tf.value not in (ex.timeframes or {}):
            raise FeedError(f"exchange '{ex.id}' has no {tf.value} candles; it offers "
                            f"{', '.join(ex.timeframes or {}) or 'none'}")
        self._tf = tf
        self._step = int(tf.step.total_seconds()) * 1000
        self._pending: list[FeedEvent] = []
        ok, _ = self._call("load_markets", None, ex.load_markets, self._pending)
        if not ok:
            raise FeedError(f"{ex.id}: could not load markets after "
                            f"{self.retries.max_retries} retries: "
                            + "; ".join(e.message for e in self._pending[-1:]))
        self._capture(ex)  # stays on the instance: the feed owns it from here on
        now = self._now_ms()
        last_closed = (now // self._step) * self._step - self._step
        self._state: dict[str, _SymbolState] = {}
        self._live_from: dict[str, datetime] = {}
        for s in syms:
            market = self._resolve(s)
            sn = since.get(s)
            if sn is None:
                hist = max(self.warmup, 0)
                cursor = last_closed - (hist - 1) * self._step if hist else last_closed + self._step
                st = _SymbolState(market, cursor=cursor, last=None, history_upto=None)
            else:
                rec = _epoch_ns(_utc(sn)) // 1_000_000 // self._step * self._step
                cursor = rec - (self.warmup - 1) * self._step if self.warmup else rec + self._step
                st = _SymbolState(market, cursor=cursor, last=rec, history_upto=rec,
                                  resumed=True)
            self._state[s] = st
            # the period starts at the last bar closed at start (fresh) or after the resume point
            self._live_from[s] = _dt_ns((last_closed if sn is None else rec + self._step) * 1_000_000)
        self.stale_after = self.stale_after_arg or 3 * tf.step
        self.skew_after = self.skew_after_arg or 2 * tf.step
        self._last_poll: float | None = None
        self._started = True

    def live_from(self, symbol: str) -> datetime | None:
        """The last bar closed at start (fresh) or the bar after the resume point."""
        return self._live_from[symbol]

    def _now_ms(self) -> int:
        return _epoch_ns(_utc(self.clock())) // 1_000_000

    def _until_ms(self) -> int | None:
        return None if self.until is None else _epoch_ns(self.until) // 1_000_000

    def _done(self, now: int) -> bool:
        u = self._until_ms()
        if u is None:
            return False
        if all(st.cursor >= u for st in self._state.values()):
            return True
        return now >= u + int(self.stale_after.total_seconds() * 1000)

    def _wait(self) -> None:
        """Sleep until the next bar of some symbol is due (and the poll interval has passed)."""
        if self._last_poll is None:
            return
        now = self._now_ms()
        u = self._until_ms()
        due = min(st.cursor + self._step for st in self._state.values()
                  if u is None or st.cursor < u)
        target = max(due + int(self.settle_s * 1000),
                     int(self._last_poll + self.poll_interval_s * 1000))
        if target > now:
            self.sleep((target - now) / 1000)

    def next_tick(self) -> Tick | None:
        if not self._started:
            raise FeedError("next_tick() before start()")
        if self._last_poll is not None and self._done(self._now_ms()):
            return None
        self._wait()
        events, self._pending = self._pending, []
        now = self._now_ms()
        if self._last_poll is not None and self._done(now):
            return None
        self._last_poll = now
        frames: list[pl.DataFrame] = []
        for s, st in self._state.items():
            rows = self._poll(s, st, now, events)
            if rows:
                frames.append(pl.DataFrame(
                    {"symbol": [s] * len(rows), "ts": [r[0] for r in rows],
                     **{c: [float(r[i + 1]) for r in rows] for i, c in enumerate(_VALUES)}},
                    schema_overrides={"ts": pl.Int64},
                ).with_columns(pl.from_epoch("ts", time_unit="ms").dt.replace_time_zone("UTC")
                               .cast(TS_DTYPE)).select(list(BAR_SCHEMA)))
        self._skew(events)
        bars = pl.concat(frames).sort("symbol", "ts") if frames else empty_bars()
        return Tick(now=_dt_ns(now * 1_000_000), bars=bars, events=events, overdue=self._overdue(now))

    def _overdue(self, now: int) -> dict[str, datetime]:
        """Per stale symbol with a bar missing: the last bar closed by ``now`` (before ``until``)."""
        closed = now // self._step * self._step - self._step
        u = self._until_ms()
        if u is not None:
            closed = min(closed, (u - 1) // self._step * self._step)
        return {s: _dt_ns(closed * 1_000_000) for s, st in self._state.items()
                if st.stale and st.cursor <= closed}

    # --------------------------------------------------------------------------- polling
    def _poll(self, s: str, st: _SymbolState, now: int, events: list[FeedEvent]
              ) -> list[list[Any]]:
        """Every closed bar of ``s`` from its cursor on, page by page; updates its state."""
        out: list[list[Any]] = []
        u = self._until_ms()
        hist_upto = st.history_upto
        failed = False
        for _ in range(10_000):  # pages; an outage of a week at 1m is 10 pages of 1000
            if st.cursor + self._step > now or (u is not None and st.cursor >= u):
                break
            since = st.cursor
            self._raw = None
            ok, got = self._call(
                f"fetch_ohlcv {st.market} {self._tf.value} since {_dt_ns(since * 1_000_000)}",
                s, partial(self._ex.fetch_ohlcv, st.market, self._tf.value, since=since,
                           limit=self.page_limit), events)
            if not ok:
                failed = True
                break
            raw = self._raw if self._raw is not None else list(got or [])
            page = self._accept(s, st, raw, now, events)
            out.extend(page)
            if len(raw) < self.page_limit or not page:
                break
        if u is not None:
            out = [r for r in out if r[0] < u]
        new = [r for r in out if hist_upto is None or r[0] > hist_upto]
        self._after_poll(s, st, now, out, new, failed, events)
        return out

    def _accept(self, s: str, st: _SymbolState, raw: list[list[Any]], now: int,
                events: list[FeedEvent]) -> list[list[Any]]:
        """Validate one page, report what is wrong, return its new closed bars in order."""
        step = self._step
        good: list[list[Any]] = []
        for r in raw:
            why = _malformed(r, step)
            if why is not None:
                t = r[0] if isinstance(r, list | tuple) and r and isinstance(r[0], int) else None
                events.append(FeedEvent("malformed", s, f"{s}: candle dropped, {why}: {r!r}"[:300],
                                        ts=None if t is None else _dt_ns(t * 1_000_000),
                                        detail={"row": repr(r)[:200], "reason": why}))
                continue
            good.append([int(r[0]), *(float(x) for x in r[1:6])])
        inversions = sum(1 for a, b in itertools.pairwise(good) if b[0] < a[0])
        if inversions:
            events.append(FeedEvent("out_of_order", s, f"{s}: {inversions} candle(s) out of "
                                    "order in one response; sorted", detail={"count": inversions}))
            good.sort(key=lambda r: r[0])  # stable: the later-sent copy of a time stays last
        by_ts: dict[int, list[Any]] = {}
        for r in good:
            if r[0] in by_ts:
                same = by_ts[r[0]] == r
                events.append(FeedEvent("duplicate", s, f"{s}: candle sent twice in one "
                                        f"response ({'identical' if same else 'conflicting'}); "
                                        "kept the last", ts=_dt_ns(r[0] * 1_000_000),
                                        detail={"identical": same}))
            by_ts[r[0]] = r
        accepted: list[list[Any]] = []
        for t in sorted(by_ts):
            r = by_ts[t]
            if t + step > now:
                continue  # still forming
            if t < st.cursor:
                seen = t in st.recent or (st.last is not None and t == st.last)
                kind = "duplicate" if seen else "out_of_order"
                events.append(FeedEvent(kind, s, f"{s}: candle {_dt_ns(t * 1_000_000)} "
                                        + ("already delivered; dropped" if seen else
                                           "older than the last delivered one; dropped"),
                                        ts=_dt_ns(t * 1_000_000), detail={"cursor": st.cursor}))
                continue
            hist = st.history_upto is not None and t <= st.history_upto
            if not hist:
                expected = st.last + step if st.last is not None else st.cursor
                if t > expected:
                    n = (t - expected) // step
                    a, b = _dt_ns(expected * 1_000_000), _dt_ns((t - step) * 1_000_000)
                    events.append(FeedEvent("gap", s, f"{s}: {n} bar(s) missing from "
                                            f"{a:%Y-%m-%d %H:%M} to {b:%Y-%m-%d %H:%M}", ts=a,
                                            detail={"missing": n, "first": a.isoformat(),
                                                    "last": b.isoformat()}))
                st.last = t
            st.recent.append(t)
            st.cursor = t + step
            accepted.append(r)
        if st.history_upto is not None and st.cursor > st.history_upto:
            st.history_upto = None  # resume history delivered
        return accepted

    def _after_poll(self, s: str, st: _SymbolState, now: int, out: list[list[Any]],
                    new: list[list[Any]], failed: bool, events: list[FeedEvent]) -> None:
        """Outage, recovery, backfill and staleness bookkeeping after one symbol's poll."""
        when = _dt_ns(now * 1_000_000)
        if out and not failed and not st.first and (st.down_since is not None or st.stale):
            why = "outage" if st.down_since is not None else "stale feed"
            since = st.down_since or when
            events.append(FeedEvent("recovered", s, f"{s}: bars again after {why}",
                                    detail={"after": why, "down_since": since.isoformat(),
                                            "failed_polls": st.failed_polls, "bars": len(out)}))
            st.down_since, st.failed_polls = None, 0
        if out:
            st.stale = False
        if len(new) > 1 and (not st.first or st.resumed):
            a, b = _dt_ns(new[0][0] * 1_000_000), _dt_ns(new[-1][0] * 1_000_000)
            events.append(FeedEvent("backfill", s, f"{s}: {len(new)} bars delivered at once, "
                                    f"{a:%Y-%m-%d %H:%M} to {b:%Y-%m-%d %H:%M}", ts=a,
                                    detail={"bars": len(new), "first": a.isoformat(),
                                            "last": b.isoformat()}))
        if failed:
            if st.down_since is None:
                st.down_since = when
            st.failed_polls += 1
        if not out and not st.stale:
            lag_ms = now - (st.cursor + self._step)  # since the awaited bar should have closed
            if lag_ms >= self.stale_after.total_seconds() * 1000:
                st.stale = True
                last = None if st.last is None else _dt_ns(st.last * 1_000_000).isoformat()
                events.append(FeedEvent("stale", s, f"{s}: no new closed bar for "
                                        f"{lag_ms / 1000:.0f}s after one was due"
                                        + (" (exchange failing)" if st.down_since else ""),
                                        ts=_dt_ns(st.cursor * 1_000_000),
                                        detail={"last_bar": last, "lag_s": lag_ms / 1000,
                                                "failing": st.down_since is not None}))
        st.first = False

    def _skew(self, events: list[FeedEvent]) -> None:
        lasts = {s: st.last for s, st in self._state.items() if st.last is not None}
        if len(lasts) < 2:
            return
        lead_sym = max(lasts, key=lambda k: lasts[k])
        lead = lasts[lead_sym]
        limit = int(self.skew_after.total_seconds() * 1000)
        for s, last in lasts.items():
            st = self._state[s]
            behind = lead - last
            if behind >= limit and not st.skewed:
                st.skewed = True
                events.append(FeedEvent("skew", s, f"{s}: last bar {behind // self._step} "
                                        f"bar(s) behind {lead_sym}",
                                        ts=_dt_ns(last * 1_000_000),
                                        detail={"behind_bars": behind // self._step,
                                                "leader": lead_sym}))
            elif behind < limit:
                st.skewed = False

    def close(self) -> None:
        ex = getattr(self, "_ex", None)
        if ex is not None and hasattr(ex, "close"):
            with contextlib.suppress(Exception):  # closing must not mask how the run ended
                ex.close()


def _malformed(r: Any, step_ms: int) -> str | None:
    """Why a parsed ``[ms, o, h, l, c, v]`` candle is unusable, or None."""
    if not isinstance(r, list | tuple) or len(r) < 6:
        return "wrong length"
    t = r[0]
    if not isinstance(t, int) or isinstance(t, bool) or t <= 0:
        return "no valid time"
    if t % step_ms:
        return "time off the bar grid"
    vals = r[1:6]
    if any(not isinstance(v, int | float) or isinstance(v, bool) for v in vals):
        return "missing or non-numeric value"
    if any(not math.isfinite(v) for v in vals):
        return "NaN or infinite value"
    o, h, lo, c, v = (float(x) for x in vals)
    if h < lo:
        return "high < low"
    if min(o, h, lo, c) <= 0:
        return "non-positive price"
    if not (lo <= o <= h and lo <= c <= h):
        return "open or close outside [low, high]"
    if v < 0:
        return "negative volume"
    return None
