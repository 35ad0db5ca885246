"""The runtime's ledger and paper book, on SQLite and on PostgreSQL (``MOOLA_TEST_POSTGRES_URL``;
CI sets it, a local run without it skips the PostgreSQL cases).

* signals: one row per (runtime, symbol, bar) however often it is written, the FIRST write kept;
  events in the order written, a retried event never doubled;
* the schema is versioned: migrate() is idempotent, a newer schema or a foreign database is refused;
* the database going away does not lose rows: a SQLite file locked by another connection
  (``BEGIN EXCLUSIVE``), a PostgreSQL backend terminated, a PostgreSQL server unreachable (a TCP
  proxy in front of the real server, taken down and brought back): writes go on in memory and
  land, in order, when it is back;
* the paper book: fills at the next bar's open with fees and slippage, positions and PnL net of
  costs, by hand on a few bars and against a mark-to-market identity on real BTC minutes;
  restored from the ledger after a "restart", it continues exactly as if never stopped.
"""

from __future__ import annotations

import json
import math
import os
import selectors
import signal
import socket
import sqlite3
import threading
import time
import traceback
from datetime import UTC, datetime, timedelta
from typing import IO

import numpy as np
import polars as pl
import pytest
import sqlalchemy as sa

from _real_data import load_crypto
from moola.data import TS_DTYPE
from moola.evaluation import CostConfig
from moola.runtime._ledger import (
    SCHEMA_VERSION,
    EventRow,
    Ledger,
    LedgerError,
    LedgerSchemaError,
    LedgerUnavailable,
    PositionRow,
    SignalRow,
    ledger_url,
)
from moola.runtime._paper import PaperBook, paper_ledger
from moola.runtime._retry import RetryConfig

T0 = datetime(2024, 3, 1, 12, 0, tzinfo=UTC)
MIN = timedelta(minutes=1)
# short tries so a test of an absent database takes well under a second
FAST = RetryConfig(timeout_s=0.1, max_retries=3, backoff_s=0.05, backoff_max_s=0.2)


def _members(p: float) -> dict[str, dict[str, object]]:
    return {"lstm": {"proba": p, "version": "3", "ok": True, "error": None},
            "tfm": {"proba": None, "version": "1", "ok": False, "error": "RuntimeError: nan"}}


def _signal(runtime: str, i: int, p: float = 0.6, symbol: str = "BTCUSDT") -> SignalRow:
    return SignalRow(runtime, symbol, T0 + i * MIN, "signal", proba_up=p, decision=1 if p > 0.55 else 0,
                     members=_members(p), latency_ms=2.5)


# ------------------------------------------------------------------------------ rows and schema


def test_a_signal_is_written_once_and_the_first_write_wins(db_url):
    led = Ledger(db_url, retry=FAST)
    assert led.migrate() == SCHEMA_VERSION
    warm = SignalRow.no_signal("rt", "BTCUSDT", T0, "warmup")
    led.write_signals([warm, _signal("rt", 1), _signal("rt", 2)])
    # a replayed bar (after kill -9) rewrites rows 1 and 2 with other numbers: nothing changes
    led.write_signals([_signal("rt", 1, p=0.1), _signal("rt", 2, p=0.2), _signal("rt", 3, p=0.7)])
    led.write_signals([_signal("other", 1, p=0.3), _signal("rt", 1, p=0.9, symbol="ETHUSDT")])
    got = led.signals("rt")
    assert got.height == 5  # rt: BTC bars 0..3 + ETH bar 1; the "other" runtime is apart
    btc = got.filter(pl.col("symbol") == "BTCUSDT")
    assert btc["bar_ts"].to_list() == [T0 + i * MIN for i in range(4)]
    assert btc["proba_up"].to_list() == [None, 0.6, 0.6, 0.7]  # first writes kept
    assert btc["status"].to_list() == ["no_signal", "signal", "signal", "signal"]
    assert btc["reason"].to_list() == ["warmup", None, None, None]
    assert btc["decision"].to_list() == [None, 1, 1, 1]
    assert json.loads(btc["members"][1]) == _members(0.6)
    assert got.schema["bar_ts"] == TS_DTYPE and got.schema["created_at"] == TS_DTYPE
    assert led.signals("rt", "ETHUSDT").height == 1 and led.signals("other").height == 1
    assert led.last_bar("rt", "BTCUSDT") == T0 + 3 * MIN
    assert led.last_bar("rt", "SOLUSDT") is None
    last = led.last_signal("rt", "BTCUSDT")
    assert last is not None and last.proba_up == 0.7 and last.members == _members(0.7)
    st = led.status("rt")
    assert st["symbols"]["BTCUSDT"]["rows"] == 4 and st["symbols"]["BTCUSDT"]["signals"] == 3
    assert st["symbols"]["BTCUSDT"]["no_signal"] == {"warmup": 1}
    assert (st["symbols"]["BTCUSDT"]["first_bar"], st["symbols"]["BTCUSDT"]["last_bar"]) == (T0, T0 + 3 * MIN)
    assert set(st["symbols"]) == {"BTCUSDT", "ETHUSDT"} and st["pending"] == 0
    assert led.runtimes() == ["other", "rt"]
    led.close()


def test_events_keep_their_order_and_a_retried_event_is_not_doubled(db_url):
    led = Ledger(db_url, retry=FAST)
    led.migrate()
    evs = [EventRow("rt", "start", "runtime started", detail={"symbols": ["BTCUSDT"]}),
           EventRow("rt", "gap", "BTCUSDT missed a minute", symbol="BTCUSDT", bar_ts=T0 + MIN,
                    detail={"missing": 1, "ratio": float("nan")}),
           EventRow("rt", "retry", "timeout, retrying in 0.5 s", symbol="BTCUSDT")]
    led.write_events(evs[:2])
    led.write(events=[evs[1], evs[2]])  # evs[1] again (same uid): kept once
    got = led.events("rt")
    assert got["kind"].to_list() == ["start", "gap", "retry"]
    assert got["id"].is_sorted() and got["id"].n_unique() == 3
    assert got["bar_ts"].to_list() == [None, T0 + MIN, None]
    detail = json.loads(got["detail"][1])
    assert detail["missing"] == 1 and detail["ratio"] is None and "ratio" in detail["_nulls"]
    st = led.status("rt")
    assert st["events"] == {"gap": 1, "retry": 1, "start": 1} and st["last_event"]["kind"] == "retry"
    led.close()


def test_migrate_is_idempotent_and_a_newer_or_foreign_schema_is_refused(db_url, tmp_path):
    led = Ledger(db_url, retry=FAST)
    with pytest.raises(LedgerSchemaError, match=r"schema is missing.*migrate"):
        led.signals("rt")  # nothing there yet: a reader does not create the schema
    assert led.schema_version() is None
    assert led.migrate() == SCHEMA_VERSION and led.migrate() == SCHEMA_VERSION
    assert led.schema_version() == SCHEMA_VERSION
    with led.engine.begin() as c:
        assert c.execute(sa.text("SELECT count(*) FROM schema_version")).scalar() == SCHEMA_VERSION
        c.execute(sa.text("INSERT INTO schema_version (version, applied_at) VALUES (:v, :t)"),
                  {"v": SCHEMA_VERSION + 1, "t": datetime(2030, 1, 1)})
    led.close()
    newer = Ledger(db_url, retry=FAST)
    with pytest.raises(LedgerSchemaError, match=f"version {SCHEMA_VERSION + 1}, newer than this moola"):
        newer.migrate()
    with pytest.raises(LedgerSchemaError, match="newer"):
        newer.signals("rt")
    newer.engine.dispose()
    # a database that holds a "signals" table of its own is not taken over
    foreign = f"sqlite:///{tmp_path / 'foreign.sqlite'}"
    with sa.create_engine(foreign).begin() as c:
        c.execute(sa.text("CREATE TABLE signals (x INTEGER)"))
    with pytest.raises(LedgerSchemaError, match=r"\['signals'\] exist but there is no schema_version"):
        Ledger(foreign, retry=FAST).migrate()


def test_bad_rows_and_urls_say_what_is_wrong(tmp_path):
    with pytest.raises(LedgerError, match=r"status 'maybe' is not one of \['signal', 'no_signal'\]"):
        SignalRow("rt", "BTC", T0, "maybe")  # type: ignore[arg-type]
    with pytest.raises(LedgerError, match="needs proba_up in"):
        SignalRow("rt", "BTC", T0, "signal", proba_up=1.5, decision=1)
    with pytest.raises(LedgerError, match=r"needs decision in \[-1, 0, 1\]"):
        SignalRow("rt", "BTC", T0, "signal", proba_up=0.5, decision=2)
    with pytest.raises(LedgerError, match=r"needs a reason, e.g. one of.*warmup"):
        SignalRow("rt", "BTC", T0, "no_signal")
    with pytest.raises(LedgerError, match="bar_ts: must be a timezone-aware"):
        SignalRow.no_signal("rt", "BTC", datetime(2024, 1, 1), "stale")
    with pytest.raises(LedgerError, match="latency_ms: must be finite"):
        SignalRow("rt", "BTC", T0, "signal", proba_up=0.5, decision=0, latency_ms=math.nan)
    with pytest.raises(LedgerError, match="symbol must be a non-empty string of at most 100"):
        SignalRow.no_signal("rt", "X" * 101, T0, "stale")  # PostgreSQL would refuse it, SQLite not
    with pytest.raises(LedgerError, match="kind must be a non-empty string"):
        EventRow("rt", "", "no kind")
    with pytest.raises(LedgerError, match="backend 'mysql' is not supported; use 'sqlite"):
        Ledger("mysql://u@h/db")
    with pytest.raises(LedgerError, match="in-memory SQLite"):
        Ledger("sqlite://")
    assert ledger_url(tmp_path / "sub" / "l.sqlite") == f"sqlite:///{tmp_path / 'sub' / 'l.sqlite'}"
    assert (tmp_path / "sub").is_dir()
    assert ledger_url("postgresql://u:p@h:5/d").startswith("postgresql+psycopg2://u:p@h:5/d")


# ------------------------------------------------------------------------- the database away


def _sqlite_path(url: str) -> str:
    return sa.engine.make_url(url).database or ""


def test_a_locked_sqlite_file_buffers_rows_in_memory_and_they_land_in_order(tmp_path):
    url = f"sqlite:///{tmp_path / 'ledger.sqlite'}"
    led = Ledger(url, retry=FAST)
    led.migrate()
    led.write(signals=[_signal("rt", 0)], events=[EventRow("rt", "start", "started")])
    other = sqlite3.connect(_sqlite_path(url), isolation_level=None)
    assert other.execute("PRAGMA journal_mode").fetchone()[0] == "wal"  # the ledger set it
    other.execute("BEGIN EXCLUSIVE")  # another process holds the write lock
    t = time.monotonic()
    for i in range(1, 21):
        led.write(events=[EventRow("rt", "tick", f"tick {i}")], signals=[_signal("rt", i)])
    held_up = time.monotonic() - t
    assert held_up < 3.0  # each write tried at most once per backoff, never the whole schedule
    assert led.pending == 40 and not led.available and "locked" in (led.last_error or "")
    # readers are not blocked (WAL): they see what landed before the lock, not the queue
    assert led.signals("rt").height == 1
    assert led.last_bar("rt", "BTCUSDT") == T0 + 20 * MIN  # the queue counts for the resume point
    with pytest.raises(LedgerUnavailable, match=r"after 4 tries.*40 rows stay queued"):
        led.flush()  # blocking: max_retries=3 -> 4 tries, then gives up, keeping the rows
    assert led.pending == 40
    other.execute("COMMIT")
    other.close()
    led.flush()
    assert led.pending == 0 and led.available
    sig = led.signals("rt")
    assert sig["bar_ts"].to_list() == [T0 + i * MIN for i in range(21)]
    ev = led.events("rt")
    assert ev["message"].to_list()[:21] == ["started"] + [f"tick {i}" for i in range(1, 21)]
    assert ev["kind"][-1] == "db_recovered"
    rec = json.loads(ev["detail"][-1])
    assert rec["rows"] == 40 and rec["failures"] >= 4 and "locked" in rec["last_error"]
    led.close()


def test_a_write_lands_by_itself_once_the_lock_is_released(tmp_path):
    """No explicit flush: the next write after the backoff takes the whole queue along."""
    url = f"sqlite:///{tmp_path / 'ledger.sqlite'}"
    led = Ledger(url, retry=FAST)
    led.migrate()
    other = sqlite3.connect(_sqlite_path(url), isolation_level=None)
    other.execute("BEGIN EXCLUSIVE")
    led.write_signals([_signal("rt", 0)])
    led.write_signals([_signal("rt", 1)])
    assert led.pending == 2
    other.execute("ROLLBACK")
    other.close()
    time.sleep(FAST.backoff_max_s + 0.05)
    led.write_signals([_signal("rt", 2)])
    assert led.pending == 0 and led.signals("rt").height == 3
    led.close()


def test_postgres_backends_terminated_the_ledger_reconnects(pg_url):
    db_url = pg_url
    led = Ledger(db_url, retry=FAST)
    led.migrate()
    led.write_signals([_signal("rt", 0)])
    admin = sa.create_engine(db_url)
    with admin.connect() as c:  # what a server restart does to the ledger's open connections
        killed = c.execute(sa.text(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
            "WHERE application_name = 'moola-ledger' AND pid <> pg_backend_pid()")).scalar()
    assert killed and killed >= 1
    led.write_signals([_signal("rt", 1)])
    led.flush()
    assert led.signals("rt")["bar_ts"].to_list() == [T0, T0 + MIN]
    admin.dispose()
    led.close()


class _Proxy:
    """A TCP proxy on 127.0.0.1 in front of the PostgreSQL server: ``down()`` closes the port and
    every connection through it (the server is unreachable), ``up()`` opens the same port again."""

    def __init__(self, host: str, port: int) -> None:
        self.target = (host, port)
        probe = socket.socket()
        probe.bind(("127.0.0.1", 0))
        self.port = probe.getsockname()[1]
        probe.close()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []

    def up(self) -> None:
        self._stop.clear()
        self._listener = socket.socket()
        self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._listener.bind(("127.0.0.1", self.port))
        self._listener.listen(16)
        self._listener.settimeout(0.05)
        self._threads = [threading.Thread(target=self._accept, daemon=True)]
        self._threads[0].start()

    def down(self) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(5)
        self._listener.close()

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                client, _ = self._listener.accept()
            except TimeoutError:
                continue
            t = threading.Thread(target=self._pump, args=(client,), daemon=True)
            self._threads.append(t)
            t.start()

    def _pump(self, client: socket.socket) -> None:
        upstream = socket.create_connection(self.target)
        sel = selectors.DefaultSelector()
        sel.register(client, selectors.EVENT_READ, upstream)
        sel.register(upstream, selectors.EVENT_READ, client)
        try:
            while not self._stop.is_set():
                for key, _ in sel.select(0.05):
                    data = key.fileobj.recv(65536)  # type: ignore[union-attr]
                    if not data:
                        return
                    key.data.sendall(data)
        except OSError:
            return
        finally:
            sel.close()
            client.close()
            upstream.close()


def test_postgres_server_unreachable_rows_wait_in_memory_and_land_in_order(pg_url):
    u = sa.engine.make_url(pg_url)
    proxy = _Proxy(u.host or "127.0.0.1", u.port or 5432)
    proxy.up()
    led = Ledger(u.set(host="127.0.0.1", port=proxy.port).render_as_string(hide_password=False), retry=FAST)
    try:
        led.migrate()
        led.write(signals=[_signal("rt", 0)], events=[EventRow("rt", "start", "started")])
        proxy.down()
        for i in range(1, 11):
            led.write(events=[EventRow("rt", "tick", f"tick {i}")], signals=[_signal("rt", i)])
        assert led.pending == 20 and not led.available
        with pytest.raises(LedgerUnavailable, match="20 rows stay queued"):
            led.flush()
        proxy.up()
        led.flush()
        assert led.pending == 0 and led.available
        assert led.signals("rt")["bar_ts"].to_list() == [T0 + i * MIN for i in range(11)]
        ev = led.events("rt")
        assert ev["message"].to_list()[:11] == ["started"] + [f"tick {i}" for i in range(1, 11)]
        assert ev["kind"][-1] == "db_recovered"
    finally:
        led.engine.dispose()
        proxy.down()


def _writer(url: str, n: int, out: int) -> None:
    """A runtime's ledger life: resume from the last recorded bar, write one tick per bar, report
    each committed tick on ``out``."""
    led = Ledger(url)
    led.migrate()
    last = led.last_bar("rt", "BTCUSDT")
    start = 0 if last is None else (last - T0) // MIN  # the last bar again: it may be half done
    for i in range(start, n):
        ts = T0 + i * MIN
        led.write(signals=[SignalRow("rt", "BTCUSDT", ts, "signal", proba_up=0.5, decision=0)],
                  positions=[PositionRow("rt", "BTCUSDT", ts, 0, 0.0, float(i), 0.0, float(i))])
        os.write(out, f"{i}\n".encode())
    led.close()
    os.write(out, b"done\n")


def _start_writer(url: str, n: int) -> tuple[int, IO[str]]:
    """The writer in a forked process (a real process to kill, without re-importing moola)."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: never returns into pytest
        os.close(r)
        code = 0
        try:
            _writer(url, n, w)
        except BaseException:
            traceback.print_exc()
            code = 1
        os._exit(code)
    os.close(w)
    return pid, os.fdopen(r)


def test_kill_9_mid_write_then_resume_leaves_one_row_per_bar(db_url):
    """A writer killed at random points and restarted from ``last_bar``: each tick (signal +
    position, one ``write``) is whole or absent, and in the end every bar is there exactly once."""
    n, rng = 150, np.random.default_rng(11)
    first = Ledger(db_url)
    first.migrate()
    first.engine.dispose()  # nothing open across a fork
    written = -1
    for _ in range(4):
        pid, lines = _start_writer(db_url, n)
        # kill it a random few ticks into this life, somewhere inside a write or between two
        kill_after = written + int(rng.integers(3, 25))
        while (line := lines.readline().strip()) and int(line) < kill_after:
            pass
        time.sleep(float(rng.uniform(0, 0.003)))
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        lines.close()
        led = Ledger(db_url)
        sig, pos = led.signals("rt"), led.positions("rt")
        led.engine.dispose()
        assert sig["bar_ts"].to_list() == pos["bar_ts"].to_list()  # no half-written tick
        assert sig["bar_ts"].to_list() == [T0 + i * MIN for i in range(sig.height)]
        assert kill_after < sig.height < n
        written = sig.height - 1
    pid, lines = _start_writer(db_url, n)
    out = lines.read().split()
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0 and out[-1] == "done"
    assert out[0] == str(written)  # resumed at the last recorded bar (rewritten: the first row kept)
    led = Ledger(db_url)
    sig, pos = led.signals("rt"), led.positions("rt")
    assert sig["bar_ts"].to_list() == [T0 + i * MIN for i in range(n)] == pos["bar_ts"].to_list()
    assert pos["cash"].to_list() == [float(i) for i in range(n)]
    led.engine.dispose()


# --------------------------------------------------------------------------------- paper book


def _bars(opens: list[float], closes: list[float], symbol: str = "BTCUSDT") -> pl.DataFrame:
    n = len(opens)
    return pl.DataFrame({"symbol": [symbol] * n, "ts": [T0 + i * MIN for i in range(n)],
                         "open": opens, "close": closes},
                        schema={"symbol": pl.String, "ts": TS_DTYPE, "open": pl.Float64, "close": pl.Float64})


def _decisions(decisions: list[int | None], symbol: str = "BTCUSDT") -> pl.DataFrame:
    return pl.DataFrame({"symbol": [symbol] * len(decisions),
                         "bar_ts": [T0 + i * MIN for i in range(len(decisions))], "decision": decisions},
                        schema={"symbol": pl.String, "bar_ts": TS_DTYPE, "decision": pl.Int8})


def test_the_paper_book_by_hand():
    """fee 10 bps + slippage 2 bps, notional 1: long at bar 0's close, hold through a no-signal
    bar, flip short at bar 3, flat at bar 4."""
    bars = _bars([100.0, 110.0, 120.0, 125.0, 100.0, 90.0], [105.0, 115.0, 118.0, 124.0, 95.0, 92.0])
    res = paper_ledger(_decisions([1, 1, None, -1, 0, 0]), bars, CostConfig(fee_bps=10, slippage_bps=2),
                       runtime="rt")
    # bar 1: buy 1/110 at 110: fee 0.001, slippage 0.0002, cash -1.0012
    # bar 4: sell 1/110 + 1/100 at 100: traded 100/110 + 1 = 1.909091 -> fee 0.0019091, slip 0.00038182
    #        cash = -1.0012 + 1.909091 - 0.00229091 = 0.90560000 (sells receive qty * price)
    # bar 5: buy 1/100 at 90: traded 0.9 -> fee 0.0009, slip 0.00018; cash 0.9056 - 0.9 - 0.00108
    f = res.fills
    assert [(x.bar_ts, x.signal_ts, x.side) for x in f] == [
        (T0 + MIN, T0, "buy"), (T0 + 4 * MIN, T0 + 3 * MIN, "sell"), (T0 + 5 * MIN, T0 + 4 * MIN, "buy")]
    assert [x.price for x in f] == [110.0, 100.0, 90.0]
    assert f[0].qty == pytest.approx(1 / 110) and f[0].fee == pytest.approx(0.001)
    assert f[0].slippage == pytest.approx(0.0002)
    assert f[1].qty == pytest.approx(1 / 110 + 1 / 100) and f[1].fee == pytest.approx(0.0019090909)
    assert f[2].qty == pytest.approx(1 / 100) and f[2].fee == pytest.approx(0.0009)
    p = res.positions
    assert [x.target for x in p] == [0, 1, 1, 1, -1, 0]
    assert [x.position for x in p] == pytest.approx([0, 1 / 110, 1 / 110, 1 / 110, -1 / 100, 0])
    cash = [0.0, -1.0012, -1.0012, -1.0012, 0.9056, 0.9056 - 0.9 - 0.00108]
    assert [x.cash for x in p] == pytest.approx(cash)
    pnl = [0.0, -1.0012 + 115 / 110, -1.0012 + 118 / 110, -1.0012 + 124 / 110, 0.9056 - 95 / 100, cash[5]]
    assert [x.pnl for x in p] == pytest.approx(pnl)
    assert p[-1].costs == pytest.approx(0.0012 + 0.0022909091 + 0.00108)
    # without costs the same trades earn exactly the price moves: 1/110*(100-110) + 1/100*(100-90)
    free = paper_ledger(_decisions([1, 1, None, -1, 0, 0]), bars, CostConfig(fee_bps=0, slippage_bps=0),
                        runtime="rt")
    assert free.positions[-1].pnl == pytest.approx(-10 / 110 + 10 / 100)


def test_the_paper_book_on_real_minutes_obeys_mark_to_market():
    """On real BTC minutes with a decision that changes often: each bar's PnL change is the held
    units times the price moves (last close -> open, open -> close) minus that bar's costs."""
    bars = load_crypto(400, offset=1000).with_columns(pl.lit("BTCUSDT").alias("symbol"))
    close = bars["close"].to_numpy()
    ret = np.diff(np.log(close), prepend=np.log(close[0]))
    dec = np.sign(ret).astype(int)  # momentum of the last minute: long, short or flat
    dec[::7] = 0
    signals = _decisions(dec.tolist()).with_columns(bar_ts=bars["ts"])
    costs = CostConfig(fee_bps=5.5, slippage_bps=1)
    res = paper_ledger(signals, bars, costs, runtime="rt", notional=1000.0)
    assert len(res.positions) == 400 and len(res.fills) > 50
    pos = np.array([x.position for x in res.positions])
    pnl = np.array([x.pnl for x in res.positions])
    paid = np.diff([0.0] + [x.costs for x in res.positions])
    o = bars["open"].to_numpy()
    expect = np.r_[0.0, pos[:-1] * (o[1:] - close[:-1])] + pos * (close - o) - paid
    expect[0] = 0.0
    np.testing.assert_allclose(np.diff(np.r_[0.0, pnl]), expect, atol=1e-9)
    fills = {f.bar_ts: f for f in res.fills}
    for i in range(1, 400):  # a fill exactly when the previous bar's decision differs from the target
        traded = res.positions[i].target != res.positions[i - 1].target
        assert (bars["ts"][i] in fills) == traded
    cost_rate = (costs.fee_bps + costs.slippage_bps) / 1e4
    assert res.positions[-1].costs == pytest.approx(sum(f.qty * f.price for f in res.fills) * cost_rate)


def test_a_restored_book_continues_as_if_never_stopped(db_url):
    bars = load_crypto(120, offset=5000).with_columns(pl.lit("ETHUSDT").alias("symbol"))
    rng = np.random.default_rng(3)
    dec: list[int | None] = [int(x) for x in rng.integers(-1, 2, 120)]
    dec[10:14] = [None] * 4
    signals = _decisions(dec, "ETHUSDT").with_columns(bar_ts=bars["ts"])
    costs = CostConfig()
    whole = paper_ledger(signals, bars, costs, runtime="rt")
    # first life: 70 bars into the ledger, then the process dies
    led = Ledger(db_url, retry=FAST)
    led.migrate()
    book = PaperBook(costs, runtime="rt")
    for i, (ts, o, c) in enumerate(bars.select("ts", "open", "close").head(70).iter_rows()):
        fill, pos = book.on_bar("ETHUSDT", ts, o, c, dec[i])
        row = (SignalRow("rt", "ETHUSDT", ts, "signal", proba_up=0.5, decision=dec[i]) if dec[i] is not None
               else SignalRow.no_signal("rt", "ETHUSDT", ts, "stale"))
        led.write(signals=[row], fills=[fill] if fill else [], positions=[pos])
    led.engine.dispose()
    # second life: restore from the ledger and go on
    led = Ledger(db_url, retry=FAST)
    led.migrate()
    last = led.last_position("rt", "ETHUSDT")
    assert last is not None and last.bar_ts == bars["ts"][69]
    sig = led.signal_at("rt", "ETHUSDT", last.bar_ts)
    assert sig is not None and sig == led.last_signal("rt", "ETHUSDT") and sig.decision == dec[69]
    assert led.signal_at("rt", "ETHUSDT", T0) is None
    book = PaperBook(costs, runtime="rt")
    book.restore(last, sig.decision)
    for i, (ts, o, c) in enumerate(bars.select("ts", "open", "close").slice(70).iter_rows(), start=70):
        fill, pos = book.on_bar("ETHUSDT", ts, o, c, dec[i])
        led.write(fills=[fill] if fill else [], positions=[pos])
    got = led.positions("rt")
    assert got.height == 120
    assert got["pnl"].to_list() == pytest.approx([p.pnl for p in whole.positions], abs=1e-12)
    assert got["position"].to_list() == pytest.approx([p.position for p in whole.positions], abs=1e-15)
    fills = led.fills("rt")
    assert fills["bar_ts"].to_list() == [f.bar_ts for f in whole.fills]
    assert fills["price"].to_list() == [f.price for f in whole.fills]
    assert led.status("rt")["symbols"]["ETHUSDT"]["pnl"] == pytest.approx(whole.positions[-1].pnl)
    led.close()


def test_the_paper_book_refuses_bad_input():
    book = PaperBook(CostConfig(), runtime="rt")
    book.on_bar("BTC", T0, 100.0, 101.0, 1)
    with pytest.raises(LedgerError, match="time order"):
        book.on_bar("BTC", T0, 100.0, 101.0, 1)
    with pytest.raises(LedgerError, match="decision must be -1, 0, 1 or None"):
        book.on_bar("BTC", T0 + MIN, 100.0, 101.0, 2)
    with pytest.raises(LedgerError, match="1 decisions have no bar with open and close, first BTCUSDT"):
        paper_ledger(_decisions([1, 0, 1]), _bars([1.0, 2.0], [1.0, 2.0]), CostConfig(), runtime="rt")
    # a no-signal row without its bar (a gap) is skipped: the decision of bar 0 fills at bar 2
    gap = paper_ledger(_decisions([1, None, 0]), _bars([1.0, 2.0, 4.0], [1.0, 2.0, 4.0]).filter(
        pl.col("ts") != T0 + MIN), CostConfig(fee_bps=0, slippage_bps=0), runtime="rt")
    assert [p.bar_ts for p in gap.positions] == [T0, T0 + 2 * MIN]
    assert [(f.bar_ts, f.signal_ts, f.price) for f in gap.fills] == [(T0 + 2 * MIN, T0, 4.0)]
    with pytest.raises(LedgerError, match=r"bars frame lacks columns \['open'\]"):
        paper_ledger(_decisions([1]), _bars([1.0], [1.0]).drop("open"), CostConfig(), runtime="rt")
