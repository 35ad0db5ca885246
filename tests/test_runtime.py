"""The dry-run runtime end to end, on SQLite and PostgreSQL: an ensemble of an LSTM (streamed
through its recurrent ring) and a Transformer, pooled over two real 1-minute BTC series, replayed
over the end of the data.

* one ledger row per symbol and bar of the period, and the signals equal ``moola predict
  --ensemble``'s probabilities on the same bars;
* ``kill -9`` at random moments, then restarts: afterwards exactly one row per (symbol, bar),
  none missing, and the paper book as if it had never stopped; SIGTERM finishes the tick;
* a member failing at run time is logged and its weight redistributed; members that cannot serve
  the feed are refused at start; a missing minute gets an explicit ``gap`` row.
"""

from __future__ import annotations

import io
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from rich.console import Console

from _real_data import two_crypto_symbols
from _runtime_members import train_members
from moola.config import ConfigError
from moola.data import Store, Timeframe
from moola.pipelines.predict import run_ensemble_predict
from moola.pipelines.runtime import run_runtime
from moola.runtime import Ledger, MemberMismatchError, RuntimeConfig, StreamingMember

pytestmark = pytest.mark.usefixtures("one_torch_thread")

ROWS = 3000  # bars per symbol
HOLE = ROWS - 60  # BTCUSD_B's bar removed from the store: a missing minute inside the period
FRACTION = 0.05  # the replayed period: the last 5% of the time span (~150 bars)


@pytest.fixture(scope="module")
def setup(tmp_path_factory) -> tuple[Path, Path, Path]:
    """(store, ensemble.yaml, members dir): two pooled members trained one epoch on both series."""
    root = tmp_path_factory.mktemp("runtime")
    pair = two_crypto_symbols(ROWS, 5000)  # BTCUSD and a later stretch as BTCUSD_B, put on one clock
    clock = pair.filter(pl.col("symbol") == "BTCUSD")["ts"]
    bars = pl.concat([pair.filter(pl.col("symbol") == "BTCUSD"),
                      pair.filter(pl.col("symbol") == "BTCUSD_B").with_columns(ts=clock)])
    idx = pl.int_range(pl.len()).over("symbol")
    bars = bars.filter(~((pl.col("symbol") == "BTCUSD_B") & (idx == HOLE)))
    Store(root / "store").write(bars, Timeframe("1m"))
    spec, _ = train_members(root / "store", root, (0.35, 0.65))
    return root / "store", spec, root / "runs"


def _config(store: Path, spec: Path, db: str, **kw: object) -> RuntimeConfig:
    base: dict = {"name": "rt", "ensemble": str(spec), "symbols": ["BTCUSD", "BTCUSD_B"],
                  "feed": {"kind": "replay", "source": str(store), "last_fraction": FRACTION},
                  "db": db, "thresholds": {"band": 0.0}}
    base.update(kw)
    return RuntimeConfig.from_dict(base)


def _period(store: Path) -> dict[str, list]:
    """The bar times the replay's period holds per symbol (ReplayFeed: the last FRACTION of the
    union span), plus the missing minute for BTCUSD_B."""
    bars = Store(store).read(Timeframe("1m"))
    ns = bars["ts"].dt.epoch("ns")
    lo, hi = int(ns.min()), int(ns.max())
    start = hi - int((hi - lo) * FRACTION)
    inside = bars.filter(ns >= start)
    clock = inside["ts"].unique().sort().to_list()
    return {s: clock for s in ("BTCUSD", "BTCUSD_B")}


def _quiet() -> Console:
    return Console(file=io.StringIO(), width=200)


def test_replay_writes_one_row_per_symbol_and_bar_equal_to_predict(setup, db_url, tmp_path):
    store, spec, _ = setup
    cfg = _config(store, spec, db_url)
    summary = run_runtime(cfg, console=_quiet(), view=False)
    with Ledger(db_url) as ledger:
        sig = ledger.signals("rt")
        fills, positions = ledger.fills("rt"), ledger.positions("rt")
        events = ledger.events("rt")
    period = _period(store)
    for sym, clock in period.items():
        rows = sig.filter(pl.col("symbol") == sym)
        assert rows["bar_ts"].to_list() == clock, sym  # every bar of the period, once, in order
    assert sig.select("symbol", "bar_ts").is_duplicated().sum() == 0
    # the signals are moola predict --ensemble's numbers, on exactly the bars it predicts: the
    # warm-up is history (no rows), the missing minute and the windows across it are gap rows
    pred = run_ensemble_predict(spec, store, tmp_path / "p.parquet").rename({"ts": "bar_ts"})
    signals = sig.filter(pl.col("status") == "signal")
    gaps = sig.filter(pl.col("status") == "no_signal")
    start = min(clock[0] for clock in period.values())
    in_period = pred.filter(pl.col("bar_ts") >= start)
    assert signals.select("symbol", "bar_ts").sort("symbol", "bar_ts").equals(
        in_period.select("symbol", "bar_ts").sort("symbol", "bar_ts"))
    assert set(gaps["symbol"]) == {"BTCUSD_B"} and set(gaps["reason"]) == {"gap"}
    hole = Store(store).read(Timeframe("1m")).filter(pl.col("symbol") == "BTCUSD")["ts"][HOLE]
    assert gaps["bar_ts"][0] == hole and 1 < gaps.height <= 16  # the minute, then windows across it
    assert summary.signals == signals.height and summary.no_signals == {"gap": gaps.height}
    both = signals.join(pred, on=["symbol", "bar_ts"], how="left", suffix="_predict")
    np.testing.assert_allclose(both["proba_up"].to_numpy(), both["proba_up_predict"].to_numpy(),
                               rtol=0, atol=1e-6)
    for row in both.iter_rows(named=True):  # each member's vote, with its version, is predict's
        votes = json.loads(row["members"])
        for m in ("lstm", "transformer"):
            assert votes[m]["ok"] and votes[m]["version"].endswith(m)
            assert votes[m]["proba"] == pytest.approx(row[f"member_{m}_proba_up"], abs=1e-6)
    # decisions at band 0: the sign of P(up) - 0.5; the paper book has a position row per bar
    np.testing.assert_array_equal(signals["decision"].to_numpy(),
                                  np.where(signals["proba_up"].to_numpy() > 0.5, 1, -1))
    assert positions.height == sig.height - 1 and fills.height > 0  # every bar but the missing one
    assert set(events["kind"]) >= {"start", "stop", "gap"}


def _rows(db: str) -> int:
    try:
        with Ledger(db) as ledger:
            return ledger.signals("rt").height
    except Exception:  # not created or not migrated yet
        return 0


def _wait_rows(db: str, more_than: int, proc: subprocess.Popen, timeout: float = 120.0) -> int:
    """Block until the running runtime has written more than ``more_than`` signal rows."""
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout and proc.poll() is None:
        n = _rows(db)
        if n > more_than:
            return n
        time.sleep(0.1)
    return _rows(db)


def _subprocess_run(cfg_path: Path, env: dict[str, str]) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "moola.cli", "runtime", "run", "--config", str(cfg_path),
                             "--no-view"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


@pytest.mark.slow
def test_kill_9_repeatedly_then_resume_leaves_exactly_one_row_per_bar(setup, db_url, tmp_path):
    """SIGKILL at random moments of a paced replay, four times, then a run to the end: the ledger
    holds each (symbol, bar) of the period exactly once and the paper book equals an unkilled run's."""
    store, spec, _ = setup
    cfg = _config(store, spec, db_url, feed={"kind": "replay", "source": str(store),
                                              "last_fraction": FRACTION, "pace_s": 0.01})
    cfg_path = tmp_path / "runtime.yaml"
    cfg.to_yaml(cfg_path)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MOOLA_TRACKING": "off"}
    rng = random.Random(7)
    kills = 0
    for _ in range(4):
        proc = _subprocess_run(cfg_path, env)
        _wait_rows(db_url, _rows(db_url), proc)  # it is ticking: new rows since the last kill
        time.sleep(rng.uniform(0.0, 0.4))  # then at a random moment of a tick
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            kills += 1
        proc.wait(timeout=60)
    final = _subprocess_run(cfg_path, env)
    _, err = final.communicate(timeout=300)
    assert final.returncode == 0, err.decode()[-2000:]
    assert kills == 4  # every kill hit a runtime that was writing rows
    with Ledger(db_url) as ledger:
        sig = ledger.signals("rt")
        positions = ledger.positions("rt")
        starts = ledger.events("rt").filter(pl.col("kind") == "start").height
    for sym, clock in _period(store).items():
        assert sig.filter(pl.col("symbol") == sym)["bar_ts"].to_list() == clock, sym
    assert starts == 5
    # an uninterrupted run into another database gives the same signals and the same paper book
    ref_db = f"sqlite:///{tmp_path / 'ref.sqlite'}"
    run_runtime(_config(store, spec, ref_db), console=_quiet(), view=False)
    with Ledger(ref_db) as ledger:
        ref_sig, ref_pos = ledger.signals("rt"), ledger.positions("rt")
    cols = ["symbol", "bar_ts", "status", "proba_up", "decision", "reason"]
    assert sig.select(cols).equals(ref_sig.select(cols))
    pcols = ["symbol", "bar_ts", "target", "position", "cash", "costs", "pnl"]
    assert positions.select(pcols).equals(ref_pos.select(pcols))


def test_sigterm_finishes_the_tick_and_records_a_stop_event(setup, tmp_path):
    store, spec, _ = setup
    db = f"sqlite:///{tmp_path / 'term.sqlite'}"
    cfg = _config(store, spec, db, feed={"kind": "replay", "source": str(store),
                                          "last_fraction": FRACTION, "pace_s": 0.05})
    cfg.to_yaml(tmp_path / "rt.yaml")
    proc = _subprocess_run(tmp_path / "rt.yaml", {**os.environ, "OMP_NUM_THREADS": "1"})
    assert _wait_rows(db, 10, proc) > 10  # ticking
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err.decode()[-2000:]
    with Ledger(db) as ledger:
        stop = ledger.events("rt").filter(pl.col("kind") == "stop")
        sig = ledger.signals("rt")
    assert stop.height == 1 and "SIGTERM" in stop["message"][0]
    assert 0 < sig.height < 2 * len(_period(store)["BTCUSD"])  # stopped mid-period
    # whole ticks only: both symbols reach the same last bar
    last = sig.group_by("symbol").agg(pl.col("bar_ts").max())["bar_ts"].unique()
    assert last.len() == 1


def test_a_failing_member_is_logged_and_its_weight_redistributed(setup, tmp_path, monkeypatch):
    store, spec, _ = setup
    db = f"sqlite:///{tmp_path / 'fail.sqlite'}"
    original = StreamingMember.step_bars
    calls = {"n": 0}

    def flaky(self, bars):
        if self.predictor.run_dir_.name == "transformer":
            calls["n"] += 1
            if calls["n"] == 40:
                raise RuntimeError("simulated member failure")
        return original(self, bars)

    monkeypatch.setattr(StreamingMember, "step_bars", flaky)
    run_runtime(_config(store, spec, db), console=_quiet(), view=False)
    with Ledger(db) as ledger:
        sig = ledger.signals("rt")
        ev = ledger.events("rt")
    failures = ev.filter(pl.col("kind") == "member_failure")
    assert failures.height == 1 and "simulated member failure" in failures["message"][0]
    members = [json.loads(m) for m in sig.filter(pl.col("status") == "signal")["members"]]
    solo = [m for m in members if not m["transformer"]["ok"]]
    assert solo  # bars served by the LSTM alone while the transformer warmed up again
    for row, m in zip(sig.filter(pl.col("status") == "signal").iter_rows(named=True), members, strict=True):
        if not m["transformer"]["ok"]:
            assert row["proba_up"] == pytest.approx(m["lstm"]["proba"], abs=1e-12)  # weight 1


def test_members_that_cannot_serve_the_feed_are_refused_at_start(setup, tmp_path):
    store, spec, _ = setup
    db = f"sqlite:///{tmp_path / 'x.sqlite'}"
    with pytest.raises(MemberMismatchError, match="trained on 1m bars, the feed is 5m"):
        run_runtime(_config(store, spec, db, timeframe="5m"), console=_quiet(), view=False)
    with pytest.raises(MemberMismatchError, match="symbol 'ETHUSD': no member was trained on it"):
        run_runtime(_config(store, spec, db, symbols=["BTCUSD", "ETHUSD"]), console=_quiet(), view=False)


def test_a_bad_runtime_config_lists_every_problem():
    with pytest.raises(ConfigError) as e:
        RuntimeConfig.from_dict({"name": "bad name", "ensemble": "e.yaml", "symbols": ["A", "A"],
                                 "feed": {"kind": "live", "options": {"secret": "x"}},
                                 "thresholds": {"band": 0.7}, "timeframe": "7m"})
    msg = str(e.value)
    for needle in ("name", "symbols repeat", "timeframe '7m'", "credentials", "thresholds.band"):
        assert needle in msg, needle
    with pytest.raises(ConfigError, match="feed"):
        RuntimeConfig.from_dict({"name": "x", "ensemble": "e.yaml", "symbols": ["A"],
                                 "feed": {"kind": "paper_trading"}})
