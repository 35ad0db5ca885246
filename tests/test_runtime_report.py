"""``moola runtime report`` and ``moola runtime status`` on a realistic ledger.

The ledger is what a runtime would have written over 400 real BTC minutes for two symbols (the
bundled file and a later stretch of it): 30 warm-up bars per symbol, then an ensemble of two
members whose P(up) leans on the sign of the last return (a persistence signal, with noise), a
member failing for a while, a feed stall (stale rows) and a gap (two minutes the feed never
delivered: "gap" rows), the paper book computed by ``paper_ledger`` from those signals and bars,
and the events of all that. The report's first line is checked against a hit rate, a Wilson
interval and a PnL recomputed here by hand; a second runtime holds warm-up rows only.
"""

from __future__ import annotations

import math
import re
import shutil
import subprocess
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np
import polars as pl
import pytest
from rich.console import Console

from _real_data import two_crypto_symbols
from moola.evaluation import CostConfig
from moola.runtime import _report as report_module
from moola.runtime._ledger import EventRow, Ledger, LedgerError, SignalRow
from moola.runtime._paper import paper_ledger
from moola.runtime._report import (
    runtime_outcomes,
    runtime_summary,
    status_rows,
    status_table,
    wilson_interval,
    write_runtime_report,
)

RT = "desk"
N, WARMUP, BAND, NOTIONAL = 400, 30, 0.004, 1000.0
STALE = range(150, 156)        # BTCUSD_B: the feed stalled over these bars
FAILING = range(200, 260)      # BTCUSD: member "tcn" fails here, "lstm" votes alone
GAP = (300, 301)               # BTCUSD_B: minutes the feed never delivered
COSTS = CostConfig(fee_bps=10.0, slippage_bps=1.0)


def _feed_bars() -> pl.DataFrame:
    """The bars the runtime saw: real minutes, less the two the feed never delivered."""
    bars = two_crypto_symbols(N, 12_000)
    b = bars.filter(pl.col("symbol") == "BTCUSD_B")
    gone = [b["ts"][i] for i in GAP]
    return bars.filter(~((pl.col("symbol") == "BTCUSD_B") & pl.col("ts").is_in(gone)))


def _rows(bars: pl.DataFrame) -> tuple[list[SignalRow], list[EventRow]]:
    rng = np.random.default_rng(11)
    signals: list[SignalRow] = []
    times: list[datetime] = bars["ts"].sort().to_list()
    events = [EventRow(RT, "start", "runtime started (replay)", at=times[0] + timedelta(minutes=1))]
    for sym in ("BTCUSD", "BTCUSD_B"):
        full = two_crypto_symbols(N, 12_000).filter(pl.col("symbol") == sym)
        delivered = set(bars.filter(pl.col("symbol") == sym)["ts"].to_list())
        close = full["close"].to_numpy()
        ret = np.diff(np.log(close), prepend=np.log(close[0]))
        scale = float(np.std(ret[1:]))
        for i, ts in enumerate(full["ts"].to_list()):
            at = ts + timedelta(minutes=1, milliseconds=40)
            if ts not in delivered:
                signals.append(SignalRow.no_signal(RT, sym, ts, "gap"))
                events.append(EventRow(RT, "gap", f"{sym}: minute {ts:%H:%M} never delivered",
                                       symbol=sym, bar_ts=ts, at=at))
                continue
            if i < WARMUP:
                members: dict[str, dict[str, Any]] = {
                    m: {"proba": None, "version": v, "ok": True, "error": None}
                           for m, v in (("lstm", "3"), ("tcn", "1"))}
                signals.append(SignalRow.no_signal(RT, sym, ts, "warmup", members=members, latency_ms=0.4))
                continue
            if sym == "BTCUSD_B" and i in STALE:
                signals.append(SignalRow.no_signal(RT, sym, ts, "stale"))
                if i == STALE[0]:
                    events.append(EventRow(RT, "stale", f"{sym}: no new closed bar for 180 s",
                                           symbol=sym, bar_ts=ts, at=at))
                continue
            lean = 0.03 * math.tanh(ret[i] / scale)
            p_lstm = float(np.clip(0.5 + lean + rng.normal(0, 0.01), 0.01, 0.99))
            p_tcn = float(np.clip(0.5 + 0.7 * lean + rng.normal(0, 0.012), 0.01, 0.99))
            failing = sym == "BTCUSD" and i in FAILING
            members = {"lstm": {"proba": p_lstm, "version": "3", "ok": True, "error": None},
                       "tcn": ({"proba": None, "version": "1", "ok": False,
                                "error": "RuntimeError: CUDA error: device-side assert"} if failing else
                               {"proba": p_tcn, "version": "1", "ok": True, "error": None})}
            p = p_lstm if failing else 0.6 * p_lstm + 0.4 * p_tcn
            decision = 1 if p > 0.5 + BAND else (-1 if p < 0.5 - BAND else 0)
            signals.append(SignalRow(RT, sym, ts, "signal", proba_up=p, decision=decision,
                                     members=members, latency_ms=float(2 + rng.gamma(2.0, 0.5))))
            if failing and i == FAILING[0]:
                events.append(EventRow(RT, "member_failure", "tcn failed; its weight goes to lstm",
                                       symbol=sym, bar_ts=ts, at=at))
    events.append(EventRow(RT, "stop", "SIGTERM: stopped after the tick",
                           at=times[-1] + timedelta(minutes=1, seconds=1)))
    return signals, events


@pytest.fixture(scope="module")
def ledger(tmp_path_factory: pytest.TempPathFactory) -> tuple[Ledger, pl.DataFrame]:
    bars = _feed_bars()
    led = Ledger(f"sqlite:///{tmp_path_factory.mktemp('rt') / 'ledger.sqlite'}")
    led.migrate()
    signals, events = _rows(bars)
    led.write(signals=signals, events=events)
    booked = led.signals(RT).filter(pl.col("reason").fill_null("") != "gap")  # the book has no bar there
    paper = paper_ledger(booked, bars, COSTS, runtime=RT, notional=NOTIONAL)
    led.write(fills=paper.fills, positions=paper.positions)
    # a second runtime that never got past warm-up, with one bar never recorded
    ts = bars.filter(pl.col("symbol") == "BTCUSD")["ts"].to_list()[:20]
    led.write(signals=[SignalRow.no_signal("warm", "BTCUSD", t, "warmup")
                       for i, t in enumerate(ts) if i != 7])
    led.flush()
    return led, bars


def _hand_hits(led: Ledger, bars: pl.DataFrame) -> tuple[int, int, int]:
    """Hits, calls and unchanged next bars of the long/short calls, by plain loops."""
    hits = n = flat = 0
    for sym in ("BTCUSD", "BTCUSD_B"):
        b = bars.filter(pl.col("symbol") == sym)
        close = dict(zip(b["ts"].to_list(), b["close"].to_list(), strict=True))
        order = b["ts"].to_list()
        nxt = {order[i]: order[i + 1] for i in range(len(order) - 1)}
        for r in led.signals(RT, sym).iter_rows(named=True):
            if r["status"] != "signal" or r["decision"] == 0 or r["bar_ts"] not in nxt:
                continue
            move = np.sign(close[nxt[r["bar_ts"]]] - close[r["bar_ts"]])
            if move == 0:
                flat += 1
                continue
            n += 1
            hits += int(move == r["decision"])
    return hits, n, flat


def _wilson_by_roots(hits: int, n: int, z: float = 1.959963984540054) -> tuple[float, float]:
    """Wilson's interval as the two p with |hits/n - p| = z * sqrt(p (1 - p) / n)."""
    ph = hits / n
    lo, hi = sorted(np.roots([1 + z * z / n, -(2 * ph + z * z / n), ph * ph]).real)
    return float(lo), float(hi)


def test_the_first_line_says_how_the_period_went(ledger, tmp_path):
    led, bars = ledger
    hits, n, flat = _hand_hits(led, bars)
    assert n > 200 and 0 < hits < n  # a real test: many calls, some right, some wrong
    s = runtime_summary(led, RT, bars=bars)
    assert (s.hit.hits, s.hit.n, s.hit.flat_next) == (hits, n, flat)
    lo, hi = _wilson_by_roots(hits, n)
    assert s.hit.wilson == pytest.approx((lo, hi), abs=1e-12)
    assert wilson_interval(hits, n) == pytest.approx((lo, hi), abs=1e-12)
    assert s.hit.bootstrap is not None and s.hit.bootstrap.estimate == pytest.approx(hits / n)
    # the persistence lean of the synthetic members: calls are ~ last-return signs; whatever
    # minute BTC did, the verdict must match the interval
    verdict = ("above 0.5" if lo > 0.5 else "below 0.5" if hi < 0.5 else "not distinguishable from 0.5")
    assert s.hit.verdict() == verdict

    by = {x.symbol: x for x in s.symbols}
    assert by["BTCUSD"].rows == N and by["BTCUSD_B"].rows == N  # every bar accounted for
    assert by["BTCUSD"].missing == 0 and by["BTCUSD_B"].missing == 0
    assert by["BTCUSD"].no_signal == {"warmup": WARMUP}
    assert by["BTCUSD_B"].no_signal == {"warmup": WARMUP, "stale": len(STALE), "gap": len(GAP)}
    assert by["BTCUSD_B"].signals == N - WARMUP - len(STALE) - len(GAP)
    assert s.notional == pytest.approx(NOTIONAL)

    pos = led.positions(RT)
    pnl = {sym: float(pos.filter(pl.col("symbol") == sym)["pnl"][-1]) for sym in by}
    costs = {sym: float(pos.filter(pl.col("symbol") == sym)["costs"][-1]) for sym in by}
    fills = led.fills(RT)
    for sym in by:  # costs by hand: every fill pays fee + slippage bps of its traded value
        f = fills.filter(pl.col("symbol") == sym)
        traded = float((f["qty"] * f["price"]).sum())
        assert costs[sym] == pytest.approx(traded * (COSTS.fee_bps + COSTS.slippage_bps) / 1e4)
        assert by[sym].pnl == pytest.approx(pnl[sym]) and by[sym].fills == f.height > 10

    line = s.headline()
    assert line.startswith(f"Runtime {RT}: BTCUSD 400 bars from 2023-03-01 00:00 to 2023-03-01 06:39 UTC (")
    assert (f"hit rate {hits / n:.3f} on {n:,} long/short calls (95% Wilson CI {lo:.3f}-{hi:.3f}): "
            f"{verdict}") in line
    b = led.signals(RT, "BTCUSD_B")["bar_ts"]  # the two symbols cover different real periods
    assert (f"BTCUSD_B 400 bars from {b.min():%Y-%m-%d %H:%M} to {b.max():%Y-%m-%d %H:%M} UTC "
            "(362 signals, 38 no-signal: gap 2, stale 6, warmup 30)") in line
    for sym in by:
        assert f"{sym} {100 * pnl[sym] / NOTIONAL:+.3f}% (costs {100 * costs[sym] / NOTIONAL:.3f}%)" in line

    out = write_runtime_report(led, RT, tmp_path / "report.html", bars=bars)
    text = out.read_text()
    first = re.search(r"<div class='verdict'[^>]*><p[^>]*><b>(.*?)</b>", text)
    assert first is not None and first.group(1) == line.replace("&", "&amp;")
    assert text.index("class='verdict'") < text.index("<h2>")  # the first thing under the title
    pngs = sorted(p.name for p in tmp_path.glob("*.png"))
    assert pngs == ["report_equity.png", "report_events.png", "report_hit_rate.png",
                    "report_price_BTCUSD.png", "report_price_BTCUSD_B.png", "report_reliability.png"]
    for p in pngs:
        assert f'src="{p}"' in text and (tmp_path / p).stat().st_size > 5_000
    # member status: listed on every row that had members (not stale or gap rows); lstm voted
    # on every signal, tcn on all but the FAILING bars; both silent in warm-up
    listed = 2 * N - len(STALE) - len(GAP)
    voted = 2 * (N - WARMUP) - len(STALE) - len(GAP)
    assert "RuntimeError: CUDA error: device-side assert" in text
    for name, version, v, failed in (("lstm", 3, voted, 0), ("tcn", 1, voted - len(FAILING), len(FAILING))):
        cells = f"<td>{name}</td><td>{version}</td><td>{listed}</td><td>{v}</td><td>{v / (2 * N):.4f}</td>"
        assert f"{cells}<td>{failed}</td><td>{2 * WARMUP}</td>" in text
    for kind in ("start", "stop", "gap", "stale", "member_failure"):
        assert f"<td>{kind}</td>" in text


def test_without_bars_the_outcomes_come_from_the_paper_marks(ledger, tmp_path):
    led, bars = ledger
    out, source = runtime_outcomes(led.signals(RT), led.positions(RT))
    assert source == "paper marks"
    marked = out.filter(pl.col("close").is_not_null())
    assert marked.height > 100
    real = marked.join(bars.select("symbol", pl.col("ts").alias("bar_ts"), pl.col("close").alias("real")),
                       on=["symbol", "bar_ts"])
    np.testing.assert_allclose(real["close"].to_numpy(), real["real"].to_numpy(), rtol=1e-9)
    s = runtime_summary(led, RT)
    with_bars = runtime_summary(led, RT, bars=bars)
    assert 0 < s.hit.n < with_bars.hit.n  # only bars the book held a position over have a close
    assert "(outcomes from the paper book's marks)" in s.headline()
    path = write_runtime_report(led, RT, tmp_path / "nobars.html")
    assert (tmp_path / "nobars_price_BTCUSD.png").exists() and path.exists()
    assert not (tmp_path / "nobars_price_BTCUSD_last.png").exists()


def test_a_long_period_gets_an_overview_and_a_close_up_of_its_last_bars(ledger, tmp_path, monkeypatch):
    led, bars = ledger
    monkeypatch.setattr(report_module, "DETAIL_BARS", 120)
    text = write_runtime_report(led, RT, tmp_path / "long.html", bars=bars).read_text()
    for sym in ("BTCUSD", "BTCUSD_B"):
        assert f'src="long_price_{sym}.png"' in text and f'src="long_price_{sym}_last.png"' in text
    assert "the last 120 bars" in text


def test_a_warm_up_only_runtime_renders_not_measured(ledger, tmp_path):
    led, _ = ledger
    s = runtime_summary(led, "warm")
    assert not s.hit.measured and s.hit.rate is None and s.hit.verdict() == "not measured"
    assert s.symbols[0].missing == 1  # the bar never recorded
    line = s.headline()
    assert line.startswith("Runtime warm, 2023-03-01 00:00 to 2023-03-01 00:19 UTC: "
                           "BTCUSD 19 bars (0 signals, 19 no-signal: warmup 19, 1 bar missing)")
    assert "hit rate not measured" in line
    assert "Paper PnL after costs (no paper positions): not measured" in line
    assert "1 bar missing" in line
    out = write_runtime_report(led, "warm", tmp_path / "warm.html")
    text = out.read_text()
    assert "Hit rate not measured" in text and "Calibration not measured" in text
    assert "Paper equity not measured" in text and "No events recorded" in text
    assert not (tmp_path / "warm_reliability.png").exists()
    with pytest.raises(LedgerError, match=r"several runtimes \['desk', 'warm'\]"):
        write_runtime_report(led, None, tmp_path / "x.html")
    with pytest.raises(LedgerError, match=r"no runtime 'nope'.*'desk', 'warm'"):
        runtime_summary(led, "nope")


def test_status_table_counts_per_runtime_and_symbol(ledger):
    led, bars = ledger
    last = bars.filter(pl.col("symbol") == "BTCUSD_B")["ts"].max()
    assert isinstance(last, datetime)
    now = last + timedelta(minutes=3, seconds=5)
    rows = {(r["runtime"], r["symbol"]): r for r in status_rows(led, now=now)}
    assert set(rows) == {(RT, "BTCUSD"), (RT, "BTCUSD_B"), ("warm", "BTCUSD")}
    b = rows[(RT, "BTCUSD_B")]
    assert (b["rows"], b["signals"]) == (N, N - WARMUP - len(STALE) - len(GAP))
    assert b["no_signal"] == {"warmup": WARMUP, "stale": len(STALE), "gap": len(GAP)}
    assert b["last_bar"] == last and b["lag"] == timedelta(minutes=3, seconds=5)
    assert b["last_event"]["kind"] == "gap"  # the symbol's own last event
    assert rows[("warm", "BTCUSD")]["rows"] == 19 and rows[("warm", "BTCUSD")]["signals"] == 0

    console = Console(record=True, width=260)
    console.print(status_table(led, now=now))
    text = console.export_text()
    line = next(ln for ln in text.splitlines() if "BTCUSD_B" in ln)
    assert "400" in line and f"{N - WARMUP - len(STALE) - len(GAP)}" in line
    assert "gap 2, stale 6, warmup 30" in line and "3m 5s" in line
    warm = next(ln for ln in text.splitlines() if " warm " in f" {ln} ")
    assert "warmup 19" in warm
    only = Console(record=True, width=260)
    only.print(status_table(led, "warm", now=now))
    assert "BTCUSD_B" not in only.export_text()


@pytest.mark.skipif(shutil.which("chromium") is None, reason="headless chromium not installed")
def test_the_report_renders_in_a_browser(ledger, tmp_path):
    led, bars = ledger
    out = write_runtime_report(led, RT, tmp_path / "report.html", bars=bars)
    png = tmp_path / "page.png"
    subprocess.run(["chromium", "--headless", "--no-sandbox", "--disable-gpu", f"--screenshot={png}",
                    "--window-size=1200,2400", out.as_uri()], check=True, capture_output=True, timeout=60)
    assert png.stat().st_size > 20_000


def test_wilson_interval_edges():
    assert wilson_interval(0, 5)[0] == 0.0 and wilson_interval(5, 5)[1] == 1.0
    lo, hi = wilson_interval(50, 100)
    assert lo < 0.5 < hi and hi - 0.5 == pytest.approx(0.5 - lo)
    with pytest.raises(ValueError, match="n must be >= 1"):
        wilson_interval(0, 0)


def test_a_runtime_with_events_only_renders_and_shows_in_status(tmp_path):
    led = Ledger(f"sqlite:///{tmp_path / 'idle.sqlite'}")
    led.migrate()
    t0 = datetime(2024, 5, 1, 9, 0, tzinfo=UTC)
    led.write(events=[EventRow("idle", "start", "runtime started (live)", at=t0),
                      EventRow("idle", "timeout", "fetch_ohlcv timed out after 10 s", symbol="ETHUSDT",
                               at=t0 + timedelta(seconds=12))])
    led.flush()
    s = runtime_summary(led, bars=_feed_bars())
    assert s.symbols == [] and not s.hit.measured and s.events == {"start": 1, "timeout": 1}
    assert s.headline() == ("Runtime idle: no bars in the ledger yet; hit rate and paper PnL "
                            "not measured.")
    text = write_runtime_report(led, None, tmp_path / "idle.html").read_text()
    assert "No signal rows in the ledger yet." in text and "<td>timeout</td>" in text
    rows = status_rows(led, now=t0 + timedelta(minutes=1))
    assert [(r["runtime"], r["symbol"], r["rows"]) for r in rows] == [("idle", None, 0)]
    assert rows[0]["last_event"]["kind"] == "timeout"
