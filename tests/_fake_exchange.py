"""A local fake of the Binance US spot REST API that ccxt's ``binanceus`` class is pointed at.

The live feed is tested through ccxt's real request building, JSON decoding, error mapping and
candle parsing, against real bars (the bundled BTCUSD minutes) served on a clock the test owns,
with scriptable faults: timeouts (a real sleep past the client's timeout), HTTP 5xx, malformed,
duplicate and out-of-order rows, skipped minutes, a stalled symbol and a lagging symbol. It binds
127.0.0.1 on a free port and never reaches the network. Every request is logged, so a test can
prove that only the public candle endpoints were ever called.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qsl, urlsplit, urlunsplit

import ccxt
import polars as pl

STEP_MS = 60_000
INTERVALS_MS = {"1m": 60_000, "5m": 300_000, "15m": 900_000, "1h": 3_600_000}


def ms(when: datetime) -> int:
    return int(when.timestamp() * 1000)


class FakeClock:
    """The time both the fake exchange and the feed under test see; ``sleep`` advances it."""

    def __init__(self, start: datetime) -> None:
        self._now = start
        self._lock = threading.Lock()
        self.slept: list[float] = []

    def now(self) -> datetime:
        with self._lock:
            return self._now

    def sleep(self, seconds: float) -> None:
        """The feed's ``sleep``: no real waiting, the clock jumps."""
        with self._lock:
            self.slept.append(seconds)
            self._now += timedelta(seconds=max(seconds, 0.0))

    def advance(self, **delta: float) -> None:
        with self._lock:
            self._now += timedelta(**delta)


@dataclass
class Faults:
    """What the server does wrong; every entry is keyed by the Binance market id (``BTCUSD``)."""

    # answers to the next klines requests, consumed in order: "timeout", 500 (Binance JSON
    # error), 502/503 (plain-text page); key None: any symbol
    errors: dict[str | None, list[str | int]] = field(default_factory=dict)
    malformed: dict[str, dict[int, str]] = field(default_factory=dict)  # id -> {ts ms: how}
    duplicated: dict[str, set[int]] = field(default_factory=dict)  # rows sent twice
    shuffled: set[str] = field(default_factory=set)  # rows of a response sent newest first
    skipped: dict[str, set[int]] = field(default_factory=dict)  # minutes never served
    stalled: dict[str, int] = field(default_factory=dict)  # id -> no bar at or after this ms
    lag_ms: dict[str, int] = field(default_factory=dict)  # id -> bars appear this late
    rewind_ms: dict[str, int] = field(default_factory=dict)  # id -> serve from startTime - this
    timeout_sleep_s: float = 2.5  # past the tests' 1 s client timeout, even on a loaded machine


class FakeExchange:
    """Threaded HTTP server serving ``/api/v3/exchangeInfo``, ``/api/v3/klines``, ``/api/v3/time``.

    ``bars`` are canonical moola bars (``symbol``, ``ts`` and OHLCV) for 1-minute candles; the
    symbol column holds Binance market ids (``BTCUSD``), and ``markets`` maps each id to its
    (base, quote). A candle is visible once its open time has passed on ``clock``; the candle
    still forming is served as a real exchange serves it (open so far, partial volume).
    Any other path answers 404 and is kept in ``unknown``.
    """

    def __init__(self, bars: pl.DataFrame, clock: FakeClock,
                 markets: Mapping[str, tuple[str, str]]) -> None:
        self.clock = clock
        self.markets = dict(markets)
        self.faults = Faults()
        self.requests: list[tuple[str, dict[str, str]]] = []
        self.unknown: list[str] = []
        self._lock = threading.Lock()
        self._closing = threading.Event()
        self._rows: dict[str, list[list[Any]]] = {}
        for (sym,), grp in bars.sort("symbol", "ts").group_by("symbol", maintain_order=True):
            ts = grp.get_column("ts").dt.epoch("ms").to_list()
            vals = grp.select("open", "high", "low", "close", "volume").rows()
            self._rows[str(sym)] = [[t, *v] for t, v in zip(ts, vals, strict=True)]
        unknown = set(self._rows) - set(self.markets)
        if unknown:
            raise ValueError(f"bars for symbols with no market: {sorted(unknown)}")
        handler = type("Handler", (_Handler,), {"fake": self})
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.server.daemon_threads = True
        self._thread = threading.Thread(target=self.server.serve_forever,
                                        kwargs={"poll_interval": 0.05}, daemon=True)
        self._thread.start()

    # ------------------------------------------------------------------ wiring
    @property
    def url(self) -> str:
        host, port = self.server.server_address[:2]
        return f"http://{host!s}:{port}"

    def client(self, timeout_s: float = 0.2) -> ccxt.binanceus:
        """A real ccxt ``binanceus`` whose every API url points at this server."""
        ex = ccxt.binanceus({"enableRateLimit": False, "timeout": int(timeout_s * 1000)})
        local = urlsplit(self.url)

        def redirect(node: Any) -> Any:
            if isinstance(node, dict):
                return {k: redirect(v) for k, v in node.items()}
            if isinstance(node, str) and node.startswith("http"):
                u = urlsplit(node)
                return urlunsplit((local.scheme, local.netloc, u.path, u.query, u.fragment))
            return node

        ex.urls["api"] = redirect(ex.urls["api"])
        ex.session.trust_env = False  # no proxy from the environment between ccxt and 127.0.0.1
        return ex

    def close(self) -> None:
        self._closing.set()
        self.server.shutdown()
        self.server.server_close()

    # ---------------------------------------------------------------- scripting
    def fail(self, *answers: str | int, symbol: str | None = None) -> None:
        """The next klines requests (for ``symbol``, or any) answer these: "timeout", 500, 503."""
        with self._lock:
            self.faults.errors.setdefault(symbol, []).extend(answers)

    def klines_calls(self, symbol: str | None = None) -> list[dict[str, str]]:
        return [q for p, q in self.requests
                if p.endswith("/klines") and (symbol is None or q.get("symbol") == symbol)]

    # ------------------------------------------------------------------ serving
    def _next_error(self, symbol: str) -> str | int | None:
        with self._lock:
            for key in (symbol, None):
                queue = self.faults.errors.get(key)
                if queue:
                    return queue.pop(0)
        return None

    def klines(self, q: Mapping[str, str]) -> list[list[Any]]:
        sym = q["symbol"]
        interval = INTERVALS_MS[q.get("interval", "1m")]
        if interval != STEP_MS:
            raise KeyError(f"fake serves 1m candles only, asked {q.get('interval')}")
        now = ms(self.clock.now())
        start = int(q.get("startTime", 0)) - self.faults.rewind_ms.get(sym, 0)
        end = int(q["endTime"]) if "endTime" in q else None
        limit = min(int(q.get("limit", 500)), 1000)
        f = self.faults
        lag = f.lag_ms.get(sym, 0)
        stall = f.stalled.get(sym)
        skipped = f.skipped.get(sym, set())
        out: list[list[Any]] = []
        for row in self._rows.get(sym, []):
            t = row[0]
            if t < start or (end is not None and t > end) or t in skipped:
                continue
            if t > now or (stall is not None and t >= stall):
                break
            if lag and t + STEP_MS + lag > now:
                break
            if t + STEP_MS > now:  # still forming: open so far, part of the volume
                frac = (now - t) / STEP_MS
                row = [t, row[1], max(row[1], row[4]), min(row[1], row[4]), row[4],
                       row[5] * frac]
            out.append(row)
            if len(out) == limit:
                break
        rows = [self._wire(sym, r) for r in out]
        dup = f.duplicated.get(sym, set())
        rows = [x for r in rows for x in ([r, r] if r[0] in dup else [r])]
        if sym in f.shuffled:
            rows.reverse()
        return rows

    def _wire(self, sym: str, r: list[Any]) -> list[Any]:
        """One Binance kline row: [open ms, "o", "h", "l", "c", "v", close ms, ...]."""
        t = r[0]
        o, h, lo, c, v = (f"{x:.8f}" for x in r[1:6])
        how = self.faults.malformed.get(sym, {}).get(t)
        if how == "text":
            c = "n/a"
        elif how == "nan":
            o = "NaN"
        elif how == "high_low":
            h, lo = lo, h
        elif how == "short":
            return [t, o, h, lo]
        return [t, o, h, lo, c, v, t + STEP_MS - 1, "0", 1, "0", "0", "0"]

    def exchange_info(self) -> dict[str, Any]:
        return {
            "timezone": "UTC",
            "serverTime": ms(self.clock.now()),
            "rateLimits": [{"rateLimitType": "REQUEST_WEIGHT", "interval": "MINUTE",
                            "intervalNum": 1, "limit": 1200}],
            "exchangeFilters": [],
            "symbols": [
                {
                    "symbol": mid, "status": "TRADING", "baseAsset": base,
                    "baseAssetPrecision": 8, "quoteAsset": quote, "quotePrecision": 4,
                    "quoteAssetPrecision": 4, "baseCommissionPrecision": 8,
                    "quoteCommissionPrecision": 2, "orderTypes": ["LIMIT", "MARKET"],
                    "icebergAllowed": True, "ocoAllowed": True,
                    "isSpotTradingAllowed": True, "isMarginTradingAllowed": False,
                    "permissions": ["SPOT"],
                    "filters": [
                        {"filterType": "PRICE_FILTER", "minPrice": "0.01000000",
                         "maxPrice": "1000000.00000000", "tickSize": "0.01000000"},
                        {"filterType": "LOT_SIZE", "minQty": "0.00000100",
                         "maxQty": "9000.00000000", "stepSize": "0.00000100"},
                    ],
                }
                for mid, (base, quote) in self.markets.items()
            ],
        }


class _Handler(BaseHTTPRequestHandler):
    fake: FakeExchange

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def _send(self, status: int, body: Any) -> None:
        data = (body if isinstance(body, str) else json.dumps(body)).encode()
        try:
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)
        except (BrokenPipeError, ConnectionResetError):  # the client timed out and left
            pass

    def do_GET(self) -> None:
        fake = self.fake
        u = urlsplit(self.path)
        q = dict(parse_qsl(u.query))
        fake.requests.append((u.path, q))
        if u.path == "/api/v3/exchangeInfo":
            self._send(200, fake.exchange_info())
        elif u.path == "/api/v3/time":
            self._send(200, {"serverTime": ms(fake.clock.now())})
        elif u.path == "/api/v3/klines":
            err = fake._next_error(q.get("symbol", ""))
            if err == "timeout":
                fake._closing.wait(fake.faults.timeout_sleep_s)
                self._send(200, [])
            elif err == 500:  # Binance's own answer to an internal failure
                self._send(500, {"code": -1001, "msg": "Internal error; unable to process "
                                                       "your request. Please try again."})
            elif isinstance(err, int):  # a load balancer's plain-text page
                self._send(err, "<html><body><h1>503 Service Temporarily Unavailable</h1>"
                                "</body></html>")
            else:
                try:
                    self._send(200, fake.klines(q))
                except (KeyError, ValueError) as e:
                    self._send(400, {"code": -1100, "msg": f"Illegal characters: {e}"})
        else:
            fake.unknown.append(self.path)
            self._send(404, {"code": -1, "msg": "not found"})

    do_POST = do_GET
    do_DELETE = do_GET


def utc(year: int, month: int, day: int, hour: int = 0, minute: int = 0) -> datetime:
    return datetime(year, month, day, hour, minute, tzinfo=UTC)
