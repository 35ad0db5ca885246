"""Download OHLCV candles through ccxt into the canonical store: paged, rate-limited, resumable.

Bars are stored under ``store_symbol``, by default the ccxt symbol without its slashes
(``BTC/USD`` -> ``BTCUSD``, ``BTC/USDT:USDT`` -> ``BTCUSDT:USDT``), so a fetched market and
an ingested export of the same market land in the same partition.

A fetch writes every ``chunk_pages`` pages (validate, then one atomic ``Store.write``), so an
interrupted download keeps every committed chunk, and a re-run starts after the last stored bar
instead of downloading stored history again.
"""

from __future__ import annotations

import difflib
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import partial
from typing import TYPE_CHECKING, Any, TypeVar

import polars as pl

from moola.data._errors import MoolaDataError
from moola.data._schema import TS_DTYPE, Timeframe
from moola.data._store import Store, WriteSummary
from moola.data._validate import Policy, ValidationReport, validate_raw

if TYPE_CHECKING:  # ccxt takes about a second to import: only a fetch pays for it
    import ccxt

T = TypeVar("T")


def _retryable() -> tuple[type[BaseException], ...]:
    """Errors worth waiting out: rate limits (RateLimitExceeded, DDoSProtection), timeouts and
    outages (RequestTimeout, ExchangeNotAvailable) are all ``ccxt.NetworkError`` subclasses."""
    import ccxt

    return (ccxt.RateLimitExceeded, ccxt.DDoSProtection, ccxt.NetworkError)


class FetchError(MoolaDataError):
    """The exchange, market or timeframe is unusable, or the exchange kept failing."""


@dataclass(frozen=True)
class FetchResult:
    """What one fetch did: requests made, candles written, and each chunk's write/report."""

    exchange: str
    symbol: str
    store_symbol: str
    timeframe: Timeframe
    requests: int  # OHLCV pages received (retried attempts are counted in ``retries``)
    retries: int
    candles: int  # closed candles handed to validation and the store
    first_ts: datetime | None
    last_ts: datetime | None
    resumed_from: datetime | None  # start taken from the store's last bar, if any
    writes: list[WriteSummary] = field(default_factory=list)
    reports: list[ValidationReport] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    @property
    def rows_new(self) -> int:
        return sum(w.rows_new for w in self.writes)


def default_store_symbol(symbol: str) -> str:
    """``BTC/USD`` -> ``BTCUSD``: the store symbol used when none is given."""
    return symbol.replace("/", "")


def make_exchange(exchange: str | ccxt.Exchange) -> ccxt.Exchange:
    """A ccxt exchange by id (with ccxt's own rate limiter on), or the given instance as is."""
    import ccxt

    if not isinstance(exchange, str):
        return exchange
    name = exchange.strip().lower()
    if name not in ccxt.exchanges:
        close = difflib.get_close_matches(name, ccxt.exchanges, n=5, cutoff=0.6)
        raise FetchError(
            f"unknown exchange '{exchange}'",
            hint=f"did you mean {', '.join(close)}?" if close
            else f"ccxt {ccxt.__version__} knows {len(ccxt.exchanges)} exchanges, "
                 "listed in ccxt.exchanges",
        )
    return getattr(ccxt, name)({"enableRateLimit": True})


def _ms(when: datetime) -> int:
    """Epoch ms; a naive datetime is taken as UTC."""
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return int(when.timestamp() * 1000)


def _dt(ms: int) -> datetime:
    return datetime.fromtimestamp(ms / 1000, tz=UTC)


def _check_capabilities(ex: ccxt.Exchange, tf: Timeframe) -> None:
    """Fail before any request when the exchange cannot serve these candles at all."""
    if not ex.has.get("fetchOHLCV"):
        raise FetchError(f"exchange '{ex.id}' does not serve OHLCV candles (no fetchOHLCV)")
    tfs = ex.timeframes or {}
    if tf.value not in tfs:
        raise FetchError(
            f"exchange '{ex.id}' has no {tf.value} candles",
            hint=f"it offers {', '.join(tfs) or 'none'}; moola knows "
                 f"{', '.join(t.value for t in Timeframe)}",
        )


def _frame(candles: list[list[Any]], store_symbol: str, source: str) -> pl.DataFrame:
    """ccxt ``[ms, o, h, l, c, v]`` rows -> the raw frame ``validate_raw`` expects."""
    cols: list[Sequence[Any]] = list(zip(*candles, strict=True)) if candles else [[]] * 6
    num = pl.Float64
    df = pl.DataFrame(
        {
            "ts": pl.Series(cols[0], dtype=pl.Int64),
            "open": pl.Series(cols[1], dtype=num, strict=False),
            "high": pl.Series(cols[2], dtype=num, strict=False),
            "low": pl.Series(cols[3], dtype=num, strict=False),
            "close": pl.Series(cols[4], dtype=num, strict=False),
            "volume": pl.Series(cols[5], dtype=num, strict=False),
        }
    )
    return df.select(
        pl.lit(store_symbol).alias("symbol"),
        pl.from_epoch("ts", time_unit="ms").dt.replace_time_zone("UTC").cast(TS_DTYPE),
        "open", "high", "low", "close", "volume",
        pl.lit(source).alias("_file"),
        pl.lit(None, pl.Int64).alias("_line"),
    )


def fetch_ohlcv(
    exchange: str | ccxt.Exchange,
    symbol: str,
    timeframe: Timeframe | str,
    store: Store,
    *,
    since: datetime | None,
    until: datetime | None = None,
    limit: int = 1000,
    policy: Policy | None = None,
    sleep: Callable[[float], None] = time.sleep,
    progress: Callable[[int, int | None], None] | None = None,
    store_symbol: str | None = None,
    chunk_pages: int = 10,
    retries: int = 5,
    backoff: float = 1.0,
    clock: Callable[[], float] = time.time,
) -> FetchResult:
    """Download closed candles in ``[since, until)`` into ``store``; resumes after stored bars.

    ``exchange`` is a ccxt id (created with ``enableRateLimit=True``) or a ready instance.
    Start: the last stored bar of (store_symbol, timeframe) + one step when the store has
    bars (a ``since`` before that is ignored; a later one wins), else ``since`` (required
    then). Naive datetimes are UTC; ``until`` is exclusive. Candles still forming at
    ``clock()`` are never stored. ``sleep`` waits ``exchange.rateLimit`` ms between requests
    and ``backoff * 2**k`` s (at least the rate limit) before retry k of a rate-limited or
    failed request; after ``retries`` retries a ``FetchError`` is raised, once the pages
    already received are written. ``progress(new_candles, expected_total)`` runs per page.
    """
    import ccxt

    if limit < 1:
        raise ValueError("limit must be at least 1")
    if chunk_pages < 1:
        raise ValueError("chunk_pages must be at least 1")
    tf = Timeframe(timeframe)
    ex = make_exchange(exchange)
    _check_capabilities(ex, tf)
    ssym = store_symbol or default_store_symbol(symbol)
    step = int(tf.step.total_seconds() * 1000)
    now = int(clock() * 1000)
    end = _ms(until) if until is not None else None

    last_ns = store.last_ts(ssym, tf)
    resumed_from: datetime | None = None
    if last_ns is not None:
        start = last_ns // 1_000_000 + step
        resumed_from = _dt(start)
        if since is not None and _ms(since) > start:
            start, resumed_from = _ms(since), None
    elif since is None:
        raise FetchError(
            f"no {tf.value} bars stored for {ssym} yet, so there is nowhere to resume from",
            path=store.root, hint="pass since (--since) for the first fetch",
        )
    else:
        start = _ms(since)

    rate_s = max(float(ex.rateLimit or 0), 0.0) / 1000.0
    counters = {"retries": 0}
    retryable = _retryable()

    def call(fn: Callable[[], T], what: str) -> T:
        """Run one request, waiting out rate limits and network trouble a bounded number of times."""
        for attempt in range(retries + 1):
            try:
                return fn()
            except retryable as e:
                if attempt == retries:
                    raise FetchError(
                        f"{ex.id}: {what} still failing after {retries + 1} attempts "
                        f"({type(e).__name__}: {e})",
                        hint="rate-limited or unreachable; run again later, the fetch resumes "
                             "after the last stored bar",
                    ) from e
                counters["retries"] += 1
                sleep(max(backoff, rate_s) * 2**attempt)
            except ccxt.BaseError as e:
                raise FetchError(f"{ex.id}: {what} failed ({type(e).__name__}: {e})") from e
        raise AssertionError("unreachable")

    horizon = min(end, now) if end is not None else now
    expected = max(0, (horizon - start) // step) if horizon > start else 0
    writes: list[WriteSummary] = []
    reports: list[ValidationReport] = []
    warnings: list[str] = []
    buffer: list[list[Any]] = []
    pages_buffered = 0
    written = 0
    first_ms: int | None = None
    last_ms: int | None = None
    source = f"{ex.id}:{symbol}"

    def flush() -> None:
        """Validate and atomically write the buffered pages (one store commit)."""
        nonlocal buffer, pages_buffered, written, first_ms, last_ms
        if not buffer:
            pages_buffered = 0
            return
        v = validate_raw(_frame(buffer, ssym, source), tf, policy)
        writes.append(store.write(v.bars, tf, v.rejects))
        reports.append(v.report)
        written += len(buffer)
        first_ms = buffer[0][0] if first_ms is None else first_ms
        last_ms = buffer[-1][0]
        buffer, pages_buffered = [], 0

    def result(requests: int) -> FetchResult:
        return FetchResult(
            exchange=ex.id, symbol=symbol, store_symbol=ssym, timeframe=tf,
            requests=requests, retries=counters["retries"], candles=written,
            first_ts=_dt(first_ms) if first_ms is not None else None,
            last_ts=_dt(last_ms) if last_ms is not None else None,
            resumed_from=resumed_from, writes=writes, reports=reports, warnings=warnings,
        )

    cursor = start
    requests = 0
    if (end is not None and cursor >= end) or cursor + step > now:
        return result(0)  # already up to date: no request at all

    call(ex.load_markets, "loading markets")
    if symbol not in (ex.markets or {}):
        close = difflib.get_close_matches(symbol, list(ex.markets or {}), n=5)
        raise FetchError(
            f"exchange '{ex.id}' has no market '{symbol}'",
            hint=f"did you mean {', '.join(close)}?" if close else "use a ccxt symbol like BTC/USD",
        )

    try:
        while True:
            if end is not None and cursor >= end:
                break
            if cursor + step > now:
                break  # any candle from here on is still forming
            if requests:
                sleep(rate_s)
            asked = cursor
            page = call(partial(ex.fetch_ohlcv, symbol, tf.value, since=asked, limit=limit),
                        f"fetch_ohlcv {symbol} {tf.value} since {_dt(asked).isoformat()}")
            requests += 1
            kept: list[list[Any]] = []
            for c in sorted(page or [], key=lambda c: c[0]):
                ts = int(c[0])
                if ts < cursor or (end is not None and ts >= end) or ts + step > now:
                    continue  # before the cursor (or a repeat), past until, or still forming
                kept.append([ts, *c[1:6]])
                cursor = ts + step
            if requests == 1 and kept and kept[0][0] - asked >= limit * step:
                warnings.append(
                    f"{ex.id} returned candles from {_dt(kept[0][0]).isoformat()} although "
                    f"asked from {_dt(asked).isoformat()}: earlier history is not available"
                )
            if progress is not None:
                progress(len(kept), expected)
            if not kept:
                break  # empty page, or nothing new: the exchange has no more closed candles
            buffer.extend(kept)
            pages_buffered += 1
            if pages_buffered >= chunk_pages:
                flush()
    except FetchError:
        flush()  # keep the pages received before the exchange gave up on us
        raise
    flush()
    return result(requests)
