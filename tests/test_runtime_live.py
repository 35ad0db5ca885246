"""The dry-run runtime on the LIVE feed, end to end, on SQLite and PostgreSQL: a real ccxt
``binanceus`` client polling a local fake Binance US (tests/_fake_exchange.py) on a clock the test
owns (the feed's ``sleep`` moves it, so minutes of outage cost no real waiting), serving real BTC
minutes for two markets; an ensemble of an LSTM (streamed through its recurrent ring) and a
Transformer trained on those markets' earlier minutes.

* one scripted run survives timeouts and HTTP 500s for minutes then a paged, out-of-order
  backfill, malformed candles, duplicates and re-sent candles, a stalled symbol and a lagging one
  (clock skew): each fault is in ``events`` with its kind, the ledger holds exactly one row per
  (symbol, bar) of the period, and every row equals a replay of the same bars and every signal
  ``Ensemble.predict_frame`` (``moola predict --ensemble``) to 1e-6;
* a crash mid-tick (the tick never written) and a restart minutes later resume from the ledger,
  backfill, and leave the same ledger as an uninterrupted run;
* ``moola runtime status`` / ``moola runtime report`` on a live run's ledger.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import pytest

from _data_helpers import cli
from _fake_exchange import FakeClock, FakeExchange, ms, utc
from _real_data import load_crypto
from _runtime_members import train_members
from moola.data import TS_DTYPE, Store, Timeframe
from moola.inference import Ensemble, EnsembleConfig, Predictor
from moola.runtime import Ledger, LiveFeed, ReplayFeed, RetryConfig, Runtime, RuntimeConfig, Tick

pytestmark = pytest.mark.usefixtures("one_torch_thread")

MIN = timedelta(minutes=1)
T0 = utc(2023, 3, 1)  # first bundled BTCUSD minute: the fake's bars start here
SERVED = 2600  # minutes the fake serves per market
TRAIN = 2200  # the members learn on the first TRAIN minutes; the live run is after them
S = 2400  # the live run starts at T0 + S minutes (+ 30 s)
FAST = RetryConfig(timeout_s=1.0, max_retries=2, backoff_s=0.01, backoff_max_s=0.05)  # fake "timeout": 2.5 s
MARKETS = {"BTCUSD": ("BTC", "USD"), "ETHUSD": ("ETH", "USD")}
SYMBOLS = ["BTCUSD", "ETHUSD"]


def at(k: float) -> datetime:
    """Minute ``k`` of the run: T0 + (S + k) minutes."""
    return T0 + (S + k) * MIN


def two_markets(n: int) -> pl.DataFrame:
    """Real minutes for two markets on one clock: the bundled BTCUSD, and a later stretch of the
    same file moved onto BTCUSD's times as ETHUSD (as tests/test_runtime_feeds.py does)."""
    a = load_crypto(n)
    b = load_crypto(n, offset=7_000)
    shift = b.get_column("ts")[0] - a.get_column("ts")[0]
    b = b.with_columns((pl.col("ts") - shift).cast(TS_DTYPE), pl.lit("ETHUSD").alias("symbol"))
    return pl.concat([a, b]).sort("symbol", "ts")


@pytest.fixture(scope="module")
def ensemble(tmp_path_factory) -> tuple[Path, list[Path]]:
    """(ensemble.yaml, member run dirs): an LSTM and a causal Transformer, one epoch on the first
    TRAIN minutes of both markets (so they serve BTCUSD and ETHUSD)."""
    root = tmp_path_factory.mktemp("runtime_live")
    bars = two_markets(SERVED).filter(pl.col("ts") < T0 + TRAIN * MIN)
    Store(root / "store").write(bars, Timeframe("1m"))
    spec, members = train_members(root / "store", root, (0.4, 0.6))
    dirs = list(members.values())
    return spec, dirs


def _ensemble(spec: Path) -> Ensemble:
    cfg = EnsembleConfig.from_yaml(spec)
    return Ensemble.from_predictors(cfg, [Predictor.from_dir(m.ref) for m in cfg.members])


def _warmup(ens: Ensemble) -> int:
    """The bars of history the runtime's buffers need (what ``run_runtime`` asks the feed for)."""
    return max(p.feature_set_.max_lookback + p.window_ for p in ens.members_)


def _config(spec: Path, db: str) -> RuntimeConfig:
    return RuntimeConfig.from_dict({"name": "live", "ensemble": str(spec), "symbols": SYMBOLS,
                                    "feed": {"kind": "live", "exchange": "binanceus"}, "db": db,
                                    "thresholds": {"band": 0.0}})


def _runtime(spec: Path, db: str, on_tick: Callable[[Runtime, Tick, list], None] | None = None) -> Runtime:
    ens = _ensemble(spec)
    return Runtime(_config(spec, db), ens, [str(p.run_dir_) for p in ens.members_], on_tick=on_tick)


class Venue:
    """The fake exchange on a fake clock, and live feeds polling it through real ccxt."""

    def __init__(self, start: datetime) -> None:
        self.bars = two_markets(SERVED)
        self.clock = FakeClock(start)
        self.fx = FakeExchange(self.bars, self.clock, MARKETS)

    def feed(self, warmup: int, until: datetime) -> LiveFeed:
        return LiveFeed(self.fx.client(FAST.timeout_s), retries=FAST, warmup=warmup,
                        clock=self.clock.now, sleep=self.clock.sleep, poll_interval_s=30,
                        until=until)


@pytest.fixture
def venue() -> Iterator[Callable[[datetime], Venue]]:
    made: list[Venue] = []

    def make(start: datetime) -> Venue:
        made.append(Venue(start))
        return made[-1]

    yield make
    for v in made:
        assert v.fx.unknown == []  # ccxt asked nothing but markets and candles: no order path
        assert {p for p, _ in v.fx.requests} <= {"/api/v3/exchangeInfo", "/api/v3/klines"}
        v.fx.close()


class Script:
    """``on_tick``: runs each (minute, action) once, right after the first tick whose feed clock
    has reached that minute of the run, so faults start and end at known bars."""

    def __init__(self, steps: list[tuple[float, Callable[[], None]]]) -> None:
        self.steps = sorted(steps, key=lambda s: s[0])
        self.done = 0

    def __call__(self, _rt: Runtime, tick: Tick, _rows: list) -> None:
        while self.done < len(self.steps) and tick.now >= at(self.steps[self.done][0]):
            self.steps[self.done][1]()
            self.done += 1


def _reference(spec: Path, bars: pl.DataFrame, first: datetime, last: datetime, warmup: int,
               db: str) -> pl.DataFrame:
    """The ledger rows a replay of exactly ``bars`` gives over [first, last]: the live feed's
    history is ``warmup`` bars ending at its first period bar, the replay's ``warmup`` bars
    before ``start`` plus the start bar, hence one less."""
    feed = ReplayFeed(bars.filter(pl.col("ts") <= last), start=first, warmup=warmup - 1)
    _runtime(spec, db).run(feed, Ledger(db))
    with Ledger(db) as ledger:
        return ledger.signals("live")


def _minutes(first: datetime, last: datetime) -> list[datetime]:
    return [first + k * MIN for k in range(int((last - first) / MIN) + 1)]


def _same_rows(live: pl.DataFrame, ref: pl.DataFrame) -> None:
    """Row for row: the same (symbol, bar), status, reason and decision; P(up) to 1e-6."""
    keys = ["symbol", "bar_ts"]
    assert live.select(keys).equals(ref.select(keys))
    for col in ("status", "reason", "decision"):
        assert live[col].to_list() == ref[col].to_list(), col
    a = live["proba_up"].fill_null(np.nan).to_numpy()
    b = ref["proba_up"].fill_null(np.nan).to_numpy()
    np.testing.assert_allclose(a, b, rtol=0, atol=1e-6, equal_nan=True)


def _no_duplicates(ledger: Ledger) -> None:
    for frame in (ledger.signals("live"), ledger.positions("live")):
        assert frame.select("symbol", "bar_ts").is_duplicated().sum() == 0


def test_live_run_survives_feed_faults_one_row_per_bar_equal_to_replay(ensemble, venue, db_url, tmp_path):
    """Timeouts + 500s for 7 minutes, a reversed backfill page, malformed candles, a duplicate
    and re-sent candles, a 6-minute stall of ETHUSD, 5 minutes of BTCUSD lagging 2.5 min (skew)."""
    spec, _ = ensemble
    v = venue(at(0.5))
    fx, f = v.fx, v.fx.faults
    # malformed candles inside the period: BTCUSD 4 and 5 (non-numeric close, high < low),
    # ETHUSD 7 (NaN open); ETHUSD 2 sent twice in its response
    f.malformed["BTCUSD"] = {ms(at(4)): "text", ms(at(5)): "high_low"}
    f.malformed["ETHUSD"] = {ms(at(7)): "nan"}
    f.duplicated["ETHUSD"] = {ms(at(2))}

    def outage() -> None:  # BTCUSD: three client timeouts in a row, then both markets 500
        fx.fail("timeout", "timeout", "timeout", symbol="BTCUSD")
        fx.fail(*[500] * 100_000)
        f.shuffled.add("BTCUSD")  # the catch-up page comes newest first

    def recover() -> None:
        f.errors.clear()

    def stall() -> None:
        f.shuffled.clear()
        f.stalled["ETHUSD"] = ms(at(19))

    held: list[pl.DataFrame] = []

    def during_stall() -> None:  # the ledger already accounts for the bars ETHUSD owes
        with Ledger(db_url) as ledger:
            held.append(ledger.signals("live").filter(pl.col("symbol") == "ETHUSD"))

    script = Script([
        (10, outage), (17, recover), (19, stall), (24.5, during_stall), (25, lambda: f.stalled.clear()),
        (27, lambda: f.rewind_ms.update(BTCUSD=3 * 60_000)),  # re-sends 3 delivered minutes
        (29, lambda: f.rewind_ms.clear()),
        (30, lambda: f.lag_ms.update(BTCUSD=150_000)),  # BTCUSD bars 2.5 min late: skew
        (35, lambda: f.lag_ms.clear()),
    ])
    rt = _runtime(spec, db_url, on_tick=script)
    warmup = _warmup(rt.ensemble) + 2
    summary = rt.run(v.feed(warmup, until=at(40)), Ledger(db_url))
    assert script.done == len(script.steps) and summary.stopped == "feed exhausted"
    with Ledger(db_url) as ledger:
        sig = ledger.signals("live")
        events = ledger.events("live")
        _no_duplicates(ledger)

    # every fault is in the events table, with its kind and symbol
    kinds = events.group_by("kind", "symbol").len()
    seen = {(k, s) for k, s, _ in kinds.iter_rows()}
    for kind, sym in [("timeout", "BTCUSD"), ("retry", "BTCUSD"), ("http_error", "BTCUSD"),
                      ("http_error", "ETHUSD"), ("recovered", "BTCUSD"), ("recovered", "ETHUSD"),
                      ("backfill", "BTCUSD"), ("backfill", "ETHUSD"), ("out_of_order", "BTCUSD"),
                      ("malformed", "BTCUSD"), ("malformed", "ETHUSD"), ("duplicate", "ETHUSD"),
                      ("duplicate", "BTCUSD"), ("gap", "BTCUSD"), ("gap", "ETHUSD"),
                      ("stale", "ETHUSD"), ("skew", "ETHUSD"), ("skew", "BTCUSD"),
                      ("start", None), ("stop", None)]:
        assert (kind, sym) in seen, (kind, sym)
    timeouts = events.filter(pl.col("kind") == "timeout")
    assert "RequestTimeout" in timeouts["message"][0]
    stale = events.filter(pl.col("kind") == "stale")
    stalled = [(sym, ts) for sym, ts, d in stale.select("symbol", "bar_ts", "detail").iter_rows()
               if not json.loads(d)["failing"]]
    assert stalled == [("ETHUSD", at(19))]  # the stall, at the bar it was waiting for
    # during the stall its owed bars were stale placeholders, up to the last bar closed then;
    # the backfill replaced them (below: no stale row is left, and they equal a replay)
    owed = held[0].filter(pl.col("bar_ts") >= at(19))
    assert owed["bar_ts"].to_list() == _minutes(at(19), at(23))
    assert set(owed["reason"]) == {"stale"} and set(owed["status"]) == {"no_signal"}
    gaps = events.filter(pl.col("kind") == "gap")
    assert sorted(zip(gaps["symbol"], gaps["bar_ts"], strict=True)) == [("BTCUSD", at(4)), ("ETHUSD", at(7))]
    bad = events.filter(pl.col("kind") == "malformed")
    assert {json.loads(d)["reason"] for d in bad["detail"]} == {
        "missing or non-numeric value", "high < low", "NaN or infinite value"}

    # exactly one row per (symbol, bar) of the period: the bar closed at start up to the last
    period = _minutes(at(-1), at(39))
    for sym in SYMBOLS:
        assert sig.filter(pl.col("symbol") == sym)["bar_ts"].to_list() == period, sym
    gap_rows = sig.filter(pl.col("reason") == "gap")
    assert {("BTCUSD", at(4)), ("BTCUSD", at(5)), ("ETHUSD", at(7))} <= set(
        zip(gap_rows["symbol"], gap_rows["bar_ts"], strict=True))
    assert set(sig.filter(pl.col("status") == "no_signal")["reason"]) == {"gap"}  # nothing else lost
    # the windows across a dropped minute are gap rows too (window 16): the rest are signals
    assert sig.filter(pl.col("status") == "signal").height >= 2 * 41 - 2 * 16 - 3

    # a replay of the bars the feed accepted (the malformed minutes never were) gives the same
    # ledger row for row, and the signals are the ensemble's predictions on those bars
    dropped = [("BTCUSD", at(4)), ("BTCUSD", at(5)), ("ETHUSD", at(7))]
    accepted = v.bars.filter(~pl.any_horizontal([(pl.col("symbol") == s) & (pl.col("ts") == t)
                                                 for s, t in dropped]))
    ref = _reference(spec, accepted, at(-1), at(39), warmup, f"sqlite:///{tmp_path / 'ref.sqlite'}")
    _same_rows(sig, ref)
    pred = rt.ensemble.predict_frame(accepted.filter(pl.col("ts") <= at(39)), since=at(-1))
    signals = sig.filter(pl.col("status") == "signal")
    assert signals.select("symbol", "bar_ts").equals(
        pred.select("symbol", pl.col("ts").alias("bar_ts")).sort("symbol", "bar_ts"))
    both = signals.join(pred.rename({"ts": "bar_ts"}), on=["symbol", "bar_ts"], suffix="_predict")
    np.testing.assert_allclose(both["proba_up"].to_numpy(), both["proba_up_predict"].to_numpy(),
                               rtol=0, atol=1e-6)
    for row in both.iter_rows(named=True):  # both members voted on every signal, as predict has them
        votes = json.loads(row["members"])
        for m in ("lstm", "transformer"):
            assert votes[m]["ok"]
            assert votes[m]["proba"] == pytest.approx(row[f"member_{m}_proba_up"], abs=1e-6)


def test_stall_that_never_recovers_leaves_a_stale_row_for_every_bar_owed(ensemble, venue, db_url):
    """ETHUSD stops delivering at minute 12 for good: every bar it owes until the feed's end is an
    explicit stale row, BTCUSD keeps its signals, and a restart resumes before the placeholders."""
    spec, _ = ensemble
    v = venue(at(0.5))
    v.fx.faults.stalled["ETHUSD"] = ms(at(12))
    rt = _runtime(spec, db_url)
    summary = rt.run(v.feed(_warmup(rt.ensemble) + 2, until=at(20)), Ledger(db_url))
    period = _minutes(at(-1), at(19))
    with Ledger(db_url) as ledger:
        sig = ledger.signals("live")
        _no_duplicates(ledger)
        assert ledger.last_bar("live", "ETHUSD") == at(11)  # the placeholders are not a resume point
    eth = sig.filter(pl.col("symbol") == "ETHUSD")
    assert eth["bar_ts"].to_list() == period
    owed = eth.filter(pl.col("bar_ts") >= at(12))
    assert set(owed["reason"]) == {"stale"} and owed["proba_up"].null_count() == owed.height
    assert summary.no_signals["stale"] == owed.height == 8
    btc = sig.filter(pl.col("symbol") == "BTCUSD")
    assert btc["bar_ts"].to_list() == period and set(btc["status"]) == {"signal"}
    assert eth.filter(pl.col("bar_ts") < at(12))["status"].to_list() == ["signal"] * 13

    # the exchange delivers again; a restart backfills ETHUSD from minute 12: its own rows
    # replace the placeholders, and the ledger equals a replay of the same bars
    v.fx.faults.stalled.clear()
    rt2 = _runtime(spec, db_url)
    rt2.run(v.feed(_warmup(rt2.ensemble) + 2, until=at(20)), Ledger(db_url))
    with Ledger(db_url) as ledger:
        after = ledger.signals("live")
        _no_duplicates(ledger)
    assert after.filter(pl.col("reason") == "stale").is_empty()
    for sym in SYMBOLS:
        assert after.filter(pl.col("symbol") == sym)["bar_ts"].to_list() == period
    assert set(after["status"]) == {"signal"}


class Killed(RuntimeError):
    """The process died in the middle of a tick."""


def test_crash_mid_live_run_then_restart_resumes_without_duplicates(ensemble, venue, db_url, tmp_path):
    """The 9th tick dies before its rows reach the ledger; the process is down 4 minutes; a new
    runtime and feed resume from the ledger's last bar, backfill, and run on: the ledger equals an
    uninterrupted run's (a replay of the same bars), one row per (symbol, bar)."""
    spec, _ = ensemble
    v = venue(at(0.5))
    first = _runtime(spec, db_url)
    warmup = _warmup(first.ensemble) + 2
    ledger = Ledger(db_url)
    real_write = ledger.write
    calls = {"ticks": 0}

    def dying_write(**rows: Any) -> None:
        if rows.get("signals"):
            calls["ticks"] += 1
            if calls["ticks"] == 9:
                raise Killed("killed mid-tick")
        real_write(**rows)

    ledger.write = dying_write  # type: ignore[method-assign]
    with pytest.raises(Killed):
        first.run(v.feed(warmup, until=at(30)), ledger)
    ledger.close()
    with Ledger(db_url) as led:
        before = led.signals("live")
        resume = {s: led.last_bar("live", s) for s in SYMBOLS}
    assert resume == {"BTCUSD": at(6), "ETHUSD": at(6)}  # ticks 1..8: bars -1..6, tick 9 absent
    v.clock.advance(minutes=4)  # down for four minutes
    second = _runtime(spec, db_url)
    summary = second.run(v.feed(warmup, until=at(30)), Ledger(db_url))
    assert summary.resumed_from == {s: at(6).isoformat() for s in SYMBOLS}
    with Ledger(db_url) as led:
        sig = led.signals("live")
        events = led.events("live")
        _no_duplicates(led)
    for sym in SYMBOLS:
        assert sig.filter(pl.col("symbol") == sym)["bar_ts"].to_list() == _minutes(at(-1), at(29)), sym
    assert sig.filter(pl.col("bar_ts") <= at(6)).drop("created_at", "latency_ms").equals(
        before.drop("created_at", "latency_ms"))  # the first run's rows untouched
    assert events.filter(pl.col("kind") == "start").height == 2
    back = events.filter(pl.col("kind") == "backfill")
    assert sorted(zip(back["symbol"], back["bar_ts"], strict=True)) == [
        ("BTCUSD", at(7)), ("ETHUSD", at(7))]  # the missed minutes 7..10, at once, from the ledger's bar
    assert set(sig["status"]) == {"signal"}
    ref = _reference(spec, v.bars, at(-1), at(29), warmup, f"sqlite:///{tmp_path / 'ref.sqlite'}")
    _same_rows(sig, ref)


def test_runtime_status_and_report_cli_on_a_live_ledger(ensemble, venue, db_url, tmp_path):
    spec, _ = ensemble
    v = venue(at(0.5))
    v.fx.faults.malformed["ETHUSD"] = {ms(at(3)): "short"}
    rt = _runtime(spec, db_url)
    rt.run(v.feed(_warmup(rt.ensemble) + 2, until=at(12)), Ledger(db_url))
    result = cli("runtime", "status", "--db", db_url)
    assert result.exit_code == 0, result.output
    cells = {}
    for line in result.stdout.splitlines():  # the table's body rows: runtime | symbol | last bar | ...
        row = [c.strip() for c in line.split("│")[1:-1]]
        if len(row) == 9 and row[1] in SYMBOLS:
            cells[row[1]] = row
    assert set(cells) == set(SYMBOLS), result.stdout
    last = f"{at(11):%Y-%m-%d %H:%M}"  # the period: bar -1 (closed at start) to 11 (until 12)
    assert cells["BTCUSD"][:6] == ["live", "BTCUSD", last, "13", "13", "-"]
    # the short candle at 3, then the windows across it: bars -1..2 signals, 3..11 gap rows
    assert cells["ETHUSD"][:6] == ["live", "ETHUSD", last, "13", "4", "gap 9"]
    assert cells["ETHUSD"][7].startswith("gap ")  # its last event: the minute the feed dropped
    out = tmp_path / "report.html"
    result = cli("runtime", "report", "--db", db_url, "--out", out)
    assert result.exit_code == 0, result.output
    html = out.read_text()
    assert html.lstrip().lower().startswith("<!doctype html") or "<html" in html[:500].lower()
    for needle in ("BTCUSD", "ETHUSD", "malformed", "live"):
        assert needle in html, needle
