"""ccxt fetch against recorded exchange responses: real ccxt parsing, no network, frozen clock."""

from __future__ import annotations

import csv
import json
import socket
import subprocess
import sys
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from http import HTTPStatus
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit

import ccxt
import polars as pl
import pytest

from moola.data import FetchError, FetchResult, Store, Timeframe, default_store_symbol, fetch_ohlcv

FIXTURES = Path(__file__).parent / "fixtures" / "ccxt"
CSV = Path(__file__).parents[1] / "data" / "bundled" / "binanceus_BTCUSD_1m.csv"
MIN = 60_000


# --------------------------------------------------------------------------- no network
@pytest.fixture(autouse=True)
def _no_network(monkeypatch: pytest.MonkeyPatch) -> None:
    """Belt and braces: any socket use in this module fails, even if the replay were bypassed."""

    def refuse(*_a: Any, **_k: Any) -> Any:
        raise AssertionError("network access attempted in a test")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket.socket, "connect_ex", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)


def test_sockets_are_blocked() -> None:
    with pytest.raises(AssertionError, match="network"):
        socket.create_connection(("api.binance.us", 443))


# ------------------------------------------------------------------------------ replay
def request_key(method: str, url: str) -> str:
    """``METHOD scheme://host/path?sorted-query``: the key recordings are stored under."""
    u = urlsplit(url)
    q = urlencode(sorted(parse_qsl(u.query, keep_blank_values=True)))
    return f"{method.upper()} {u.scheme}://{u.netloc}{u.path}" + (f"?{q}" if q else "")


class Replay:
    """Stands in for ccxt's HTTP layer (``Exchange.fetch``) on one instance.

    Recorded responses go through ccxt's own JSON decoding and error mapping
    (``handle_errors`` / ``handle_http_status_code``), so parsing and exception classes are
    ccxt's. A request with no recording fails the test; ``inject`` queues error responses.
    """

    def __init__(self, exchange: ccxt.Exchange, recording: dict[str, Any]) -> None:
        self.ex = exchange
        self.rec = recording
        self.calls: list[str] = []
        self.unrecorded: list[str] = []
        self._faults: list[tuple[str, dict[str, Any]]] = []
        exchange.fetch = self.fetch  # instance attribute shadows the HTTP method

    def inject(self, key: str, error: str, times: int = 1) -> None:
        """Answer the next ``times`` requests for ``key`` with a recorded error response."""
        self._faults += [(key, self.rec["errors"][error])] * times

    def fetch(self, url: str, method: str = "GET", headers: Any = None, body: Any = None) -> Any:
        key = request_key(method, url)
        self.calls.append(key)
        resp = None
        for i, (k, _) in enumerate(self._faults):
            if k == key:
                resp = self._faults.pop(i)[1]
                break
        if resp is None:
            resp = self.rec["responses"].get(key)
        if resp is None:
            self.unrecorded.append(key)
            pytest.fail(f"unrecorded request: {key}")
        status = int(resp["status"])
        text = resp["text"] if "text" in resp else json.dumps(resp["body"])
        reason = HTTPStatus(status).phrase
        parsed = self.ex.parse_json(text)
        if status >= 400:  # as ccxt's fetch does on requests' HTTPError
            if not self.ex.handle_errors(status, reason, url, method, {}, text, parsed,
                                         headers, body):
                self.ex.handle_http_status_code(status, reason, url, method, text)
            raise ccxt.ExchangeError(f"{self.ex.id} {method} {url}")
        self.ex.handle_errors(status, reason, url, method, {}, text, parsed, headers, body)
        return parsed

    def ohlcv_calls(self) -> list[str]:
        return [c for c in self.calls if "klines" in c or "OHLC" in c]


def load_recording(name: str) -> dict[str, Any]:
    return json.loads((FIXTURES / f"{name}.json").read_text())


Replayed = Callable[[str], tuple[ccxt.Exchange, Replay]]


@pytest.fixture
def replayed() -> Iterator[Replayed]:
    """Factory: a real ccxt exchange class whose HTTP is served from the recording.

    ccxt's own throttle is off: the pacing under test is fetch_ohlcv's injected ``sleep``.
    At teardown, any request that had no recording fails the test even if it was swallowed.
    """
    made: list[Replay] = []

    def make(name: str) -> tuple[ccxt.Exchange, Replay]:
        ex = getattr(ccxt, name)({"enableRateLimit": False})
        made.append(Replay(ex, load_recording(name)))
        return ex, made[-1]

    yield make
    for r in made:
        assert not r.unrecorded, f"unrecorded requests: {r.unrecorded}"


class Sleeps(list[float]):
    """Records the waits fetch_ohlcv asks for, without waiting."""

    def __call__(self, s: float) -> None:
        self.append(s)


def frozen(ms: int) -> Callable[[], float]:
    return lambda: ms / 1000


def csv_bars(first: int, n: int, symbol: str = "BTCUSD") -> pl.DataFrame:
    """Rows of the bundled real candles, as the store should hold them."""
    with CSV.open() as fh:
        rows = list(csv.DictReader(fh))[first:first + n]
    return pl.DataFrame(
        {
            "symbol": [symbol] * n,
            "ts": [datetime.fromisoformat(r["open_time"]) for r in rows],
            **{c: [float(r[c]) for r in rows] for c in ("open", "high", "low", "close",
                                                         "volume")},
        }
    ).with_columns(pl.col("ts").dt.cast_time_unit("ns").dt.convert_time_zone("UTC"))


def dt(ms: int) -> datetime:
    return datetime.fromtimestamp(ms / 1000, tz=UTC)


def binance_key(start_ms: int, limit: int = 1000) -> str:
    return ("GET https://api.binance.us/api/v3/klines?interval=1m"
            f"&limit={limit}&startTime={start_ms}&symbol=BTCUSD")


def kraken_key(start_ms: int) -> str:
    return ("GET https://api.kraken.com/0/public/OHLC?interval=1&pair=XXBTZUSD"
            f"&since={start_ms // 1000 - 60}")


def assert_clean_store(store: Store) -> None:
    """Every data file is referenced by the manifest; no temp files are left behind."""
    live = set()
    for p in store.manifest()["partitions"].values():
        live |= {p["file"], p["rejects"]}
    on_disk = {str(f.relative_to(store.root)) for f in store.root.rglob("*")
               if f.is_file() and f.name not in ("manifest.json", ".lock")}
    assert on_disk == live


def assert_contiguous(bars: pl.DataFrame) -> None:
    assert bars.get_column("ts").is_unique().all()
    assert (bars.get_column("ts").diff().drop_nulls() == timedelta(minutes=1)).all()


# ------------------------------------------------------------------------------- tests
def test_recordings_are_small_and_real() -> None:
    total = sum(f.stat().st_size for f in FIXTURES.glob("*.json"))
    assert total < 1_000_000
    rec = load_recording("binanceus")
    first = rec["responses"][binance_key(rec["first_ms"])]["body"][0]
    assert first[:6] == [1677628800000, "23144.78000000", "23152.48000000", "23133.11000000",
                         "23143.72000000", "3.91215600"]  # row 1 of the bundled CSV


def test_binance_paginates_without_holes_or_duplicates(tmp_path: Path, replayed: Replayed) -> None:
    ex, rp = replayed("binanceus")
    t0, as_of = rp.rec["first_ms"], rp.rec["as_of_ms"]
    sleeps = Sleeps()
    seen: list[tuple[int, int | None]] = []
    store = Store(tmp_path)
    res = fetch_ohlcv(ex, "BTC/USD", Timeframe.M1, store, since=dt(t0), sleep=sleeps,
                      clock=frozen(as_of), progress=lambda n, tot: seen.append((n, tot)))
    assert isinstance(res, FetchResult)
    # 2500 candles recorded, 3 pages of <= 1000; the 2500th is still forming at as_of
    assert rp.calls == ["GET https://api.binance.us/api/v3/exchangeInfo",
                        binance_key(t0), binance_key(t0 + 1000 * MIN), binance_key(t0 + 2000 * MIN)]
    assert (res.requests, res.retries, res.candles) == (3, 0, 2499)
    assert res.first_ts == dt(t0) and res.last_ts == dt(t0 + 2498 * MIN)
    assert res.store_symbol == "BTCUSD" and res.resumed_from is None
    assert sleeps == [ex.rateLimit / 1000] * 2  # between requests only
    assert [n for n, _ in seen] == [1000, 1000, 499] and {t for _, t in seen} == {2499}
    bars = store.read(Timeframe.M1, ["BTCUSD"])
    assert_contiguous(bars)
    assert bars.equals(csv_bars(0, 2499))  # ccxt parsed the wire format back to the real data
    assert len(res.writes) == 1 and res.writes[0].rows_new == 2499
    assert res.reports[0].totals() == {}
    assert_clean_store(store)


def test_forming_candle_dropped_until_it_closes(tmp_path: Path, replayed: Replayed) -> None:
    ex, rp = replayed("binanceus")
    t0, as_of = rp.rec["first_ms"], rp.rec["as_of_ms"]
    last = t0 + 2499 * MIN  # opened 30 s before as_of
    res = fetch_ohlcv(ex, "BTC/USD", "1m", Store(tmp_path / "a"), since=dt(t0), sleep=Sleeps(),
                      clock=frozen(as_of))
    assert res.last_ts == dt(last - MIN)
    # the same answers judged one minute later: the candle has closed and is kept
    ex2, _ = replayed("binanceus")
    res2 = fetch_ohlcv(ex2, "BTC/USD", "1m", Store(tmp_path / "b"), since=dt(t0), sleep=Sleeps(),
                       clock=frozen(last + MIN))
    assert res2.last_ts == dt(last) and res2.candles == 2500 and res2.requests == 3


def test_kraken_paginates_with_its_own_wire_format(tmp_path: Path, replayed: Replayed) -> None:
    ex, rp = replayed("kraken")
    k0, as_of = rp.rec["first_ms"], rp.rec["as_of_ms"]
    sleeps = Sleeps()
    store = Store(tmp_path)
    res = fetch_ohlcv(ex, "BTC/USD", Timeframe.M1, store, since=dt(k0), limit=120,
                      sleep=sleeps, clock=frozen(as_of), store_symbol="XBTUSD")
    assert rp.ohlcv_calls() == [kraken_key(k0), kraken_key(k0 + 120 * MIN),
                                kraken_key(k0 + 240 * MIN)]
    assert (res.requests, res.candles) == (3, 299)  # Kraken's last row is the forming candle
    assert sleeps == [1.0, 1.0]  # kraken.rateLimit is 1000 ms
    bars = store.read(Timeframe.M1, ["XBTUSD"])
    assert_contiguous(bars)
    assert bars.equals(csv_bars(14400, 299, symbol="XBTUSD"))


def test_resume_requests_only_what_is_missing(tmp_path: Path, replayed: Replayed) -> None:
    ex, rp = replayed("binanceus")
    t0, as_of = rp.rec["first_ms"], rp.rec["as_of_ms"]
    t1 = t0 + 1500 * MIN  # mid-page: the second page's tail is cut at until
    store = Store(tmp_path / "resumed")
    r1 = fetch_ohlcv(ex, "BTC/USD", "1m", store, since=dt(t0), until=dt(t1), sleep=Sleeps(),
                     clock=frozen(as_of))
    assert (r1.requests, r1.candles, r1.last_ts) == (2, 1500, dt(t1 - MIN))
    assert store.last_ts("BTCUSD", "1m") == (t1 - MIN) * 1_000_000

    ex2, rp2 = replayed("binanceus")
    r2 = fetch_ohlcv(ex2, "BTC/USD", "1m", store, since=dt(t0), sleep=Sleeps(),
                     clock=frozen(as_of))  # the earlier since is ignored
    assert rp2.ohlcv_calls() == [binance_key(t1)]
    assert r2.resumed_from == dt(t1) and (r2.requests, r2.candles) == (1, 999)
    assert r2.writes[0].rows_replaced == 0 and r2.writes[0].rows_new == 999

    full = Store(tmp_path / "full")
    fetch_ohlcv(replayed("binanceus")[0], "BTC/USD", "1m", full, since=dt(t0), sleep=Sleeps(),
                clock=frozen(as_of))
    assert store.read("1m").equals(full.read("1m"))

    # up to date: no request at all, not even for the markets
    ex3, rp3 = replayed("binanceus")
    r3 = fetch_ohlcv(ex3, "BTC/USD", "1m", store, since=None, sleep=Sleeps(), clock=frozen(as_of))
    assert rp3.calls == [] and r3.requests == 0 and r3.candles == 0
    assert r3.resumed_from == dt(t0 + 2499 * MIN)


@pytest.mark.parametrize("name", ["binanceus", "kraken"])
def test_rate_limited_request_is_retried_with_backoff(
    tmp_path: Path, name: str, replayed: Replayed
) -> None:
    ex, rp = replayed(name)
    t0, as_of = rp.rec["first_ms"], rp.rec["as_of_ms"]
    limit = 1000 if name == "binanceus" else 120
    second = binance_key(t0 + 1000 * MIN) if name == "binanceus" else kraken_key(t0 + 120 * MIN)
    rp.inject(second, "rate_limited", times=2)
    sleeps = Sleeps()
    res = fetch_ohlcv(ex, "BTC/USD", "1m", Store(tmp_path), since=dt(t0), limit=limit,
                      sleep=sleeps, clock=frozen(as_of), backoff=1.5)
    rate = ex.rateLimit / 1000
    assert sleeps == [rate, 1.5, 3.0, rate]  # pace, back off x2, pace
    assert rp.ohlcv_calls().count(second) == 3
    assert res.retries == 2 and res.requests == 3
    assert res.candles == (2499 if name == "binanceus" else 299)


def test_retry_catches_ccxt_rate_limit_classes(replayed: Replayed) -> None:
    """The recorded error bodies map (through ccxt) to the exception classes we retry."""
    for name, cls in (("binanceus", ccxt.DDoSProtection), ("kraken", ccxt.DDoSProtection)):
        ex, rp = replayed(name)
        key = next(iter(rp.rec["responses"]))
        rp.inject(key, "rate_limited")
        with pytest.raises(cls):
            ex.load_markets()


def test_persistent_failure_raises_and_keeps_received_pages(tmp_path: Path, replayed: Replayed) -> None:
    ex, rp = replayed("binanceus")
    t0, as_of = rp.rec["first_ms"], rp.rec["as_of_ms"]
    rp.inject(binance_key(t0 + 2000 * MIN), "unavailable", times=4)
    sleeps = Sleeps()
    store = Store(tmp_path)
    with pytest.raises(FetchError, match=r"still failing after 4 attempts.*ExchangeNotAvailable"):
        fetch_ohlcv(ex, "BTC/USD", "1m", store, since=dt(t0), sleep=sleeps, retries=3,
                    clock=frozen(as_of))
    assert sleeps == [0.05, 0.05, 1.0, 2.0, 4.0]
    bars = store.read("1m")
    assert bars.height == 2000 and bars.equals(csv_bars(0, 2000))  # both pages received
    assert_clean_store(store)
    # the next run picks up where the failure stopped
    ex2, rp2 = replayed("binanceus")
    fetch_ohlcv(ex2, "BTC/USD", "1m", store, since=dt(t0), sleep=Sleeps(), clock=frozen(as_of))
    assert rp2.ohlcv_calls() == [binance_key(t0 + 2000 * MIN)]
    assert store.read("1m").equals(csv_bars(0, 2499))


def test_interrupted_fetch_keeps_committed_chunks_only(tmp_path: Path, replayed: Replayed) -> None:
    ex, rp = replayed("binanceus")
    t0, as_of = rp.rec["first_ms"], rp.rec["as_of_ms"]
    store = Store(tmp_path)

    def sleep(_s: float) -> None:
        if len(rp.ohlcv_calls()) == 2:
            raise KeyboardInterrupt  # Ctrl-C before the third page

    with pytest.raises(KeyboardInterrupt):
        fetch_ohlcv(ex, "BTC/USD", "1m", store, since=dt(t0), sleep=sleep, chunk_pages=1,
                    clock=frozen(as_of))
    assert store.read("1m").equals(csv_bars(0, 2000))
    assert_clean_store(store)


def test_unknown_exchange_suggests_close_names(tmp_path: Path) -> None:
    with pytest.raises(FetchError, match=r"unknown exchange 'binanse'.*did you mean.*binance"):
        fetch_ohlcv("binanse", "BTC/USD", "1m", Store(tmp_path), since=datetime(2023, 3, 1))
    assert not (tmp_path / "manifest.json").exists()


def test_ccxt_is_imported_only_by_a_fetch() -> None:
    """ccxt costs about a second to import: the CLI, the data package and every other command
    must not pay for it; the first fetch call does (checked in a fresh interpreter)."""
    code = (
        "import sys\n"
        "import moola.cli, moola.data, moola.pipelines.data\n"
        "from moola.cli import app\n"
        "assert 'ccxt' not in sys.modules, 'ccxt imported at import time'\n"
        "from moola.data import make_exchange\n"
        "make_exchange('kraken')\n"
        "assert 'ccxt' in sys.modules\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr


def test_exchange_by_name_gets_ccxt_rate_limiter() -> None:
    from moola.data import make_exchange

    ex = make_exchange("kraken")
    assert isinstance(ex, ccxt.kraken) and ex.enableRateLimit


def test_unsupported_timeframe_and_missing_ohlcv(tmp_path: Path) -> None:
    with pytest.raises(FetchError, match=r"'coinbase' has no 4h candles.*offers 1m"):
        fetch_ohlcv("coinbase", "BTC/USD", "4h", Store(tmp_path), since=datetime(2023, 3, 1))
    with pytest.raises(FetchError, match="does not serve OHLCV"):
        fetch_ohlcv("bitflyer", "BTC/JPY", "1h", Store(tmp_path), since=datetime(2023, 3, 1))


def test_unknown_market_and_missing_since(tmp_path: Path, replayed: Replayed) -> None:
    ex, rp = replayed("binanceus")
    as_of = rp.rec["as_of_ms"]
    with pytest.raises(FetchError, match=r"no market 'BTC/USDX'.*BTC/USD"):
        fetch_ohlcv(ex, "BTC/USDX", "1m", Store(tmp_path), since=dt(as_of - 5 * MIN),
                    clock=frozen(as_of), sleep=Sleeps())
    with pytest.raises(FetchError, match="pass since"):
        fetch_ohlcv(ex, "BTC/USD", "1m", Store(tmp_path), since=None, clock=frozen(as_of))
    assert rp.ohlcv_calls() == []


def test_default_store_symbol() -> None:
    assert default_store_symbol("BTC/USD") == "BTCUSD"
    assert default_store_symbol("BTC/USDT:USDT") == "BTCUSDT:USDT"


# ------------------------------------------- loop guards, with a scripted exchange stand-in
class Scripted:
    """Minimal ccxt-like exchange returning scripted pages (for loop-termination edge cases)."""

    id = "scripted"
    rateLimit = 10
    has: dict[str, Any] = {"fetchOHLCV": True}  # noqa: RUF012
    timeframes: dict[str, str] = {"1m": "1m"}  # noqa: RUF012
    markets: dict[str, Any] = {"X/Y": {}}  # noqa: RUF012

    def __init__(self, pages: list[list[list[Any]]]) -> None:
        self.pages = pages
        self.asked: list[int] = []

    def load_markets(self) -> dict[str, Any]:
        return self.markets

    def fetch_ohlcv(self, symbol: str, timeframe: str, since: int, limit: int) -> list[Any]:
        self.asked.append(since)
        return self.pages.pop(0) if self.pages else []


def candle(i: int) -> list[Any]:
    return [i * MIN, 10.0 + i, 11.0 + i, 9.0 + i, 10.5 + i, 1.0]


def test_stops_on_empty_page_and_on_page_that_does_not_advance(tmp_path: Path) -> None:
    far = frozen(10_000 * MIN)
    ex = Scripted([[candle(i) for i in range(3)], []])
    res = fetch_ohlcv(ex, "X/Y", "1m", Store(tmp_path / "a"), since=dt(0), clock=far,
                      sleep=Sleeps())
    assert ex.asked == [0, 3 * MIN] and res.candles == 3
    # second page repeats the first (exchange ignores since): nothing new, stop
    ex = Scripted([[candle(i) for i in range(3)], [candle(i) for i in range(3)],
                   [candle(9)]])
    res = fetch_ohlcv(ex, "X/Y", "1m", Store(tmp_path / "b"), since=dt(0), clock=far,
                      sleep=Sleeps())
    assert ex.asked == [0, 3 * MIN] and res.candles == 3 and res.requests == 2


def test_overlapping_pages_are_deduplicated(tmp_path: Path) -> None:
    ex = Scripted([[candle(i) for i in range(3)], [candle(i) for i in range(2, 5)]])
    store = Store(tmp_path)
    res = fetch_ohlcv(ex, "X/Y", "1m", store, since=dt(0), clock=frozen(10_000 * MIN),
                      sleep=Sleeps())
    assert res.candles == 5
    assert_contiguous(store.read("1m"))


def test_late_history_is_reported(tmp_path: Path) -> None:
    ex = Scripted([[candle(i) for i in range(500, 503)]])
    res = fetch_ohlcv(ex, "X/Y", "1m", Store(tmp_path), since=dt(0), limit=100,
                      clock=frozen(10_000 * MIN), sleep=Sleeps())
    assert res.warnings and "earlier history is not available" in res.warnings[0]
