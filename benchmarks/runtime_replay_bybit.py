"""Issue 11 acceptance on real data, and the replay throughput a user waits for.

Replays the last 15% of the Bybit month for BTCUSDT, ETHUSDT and SOLUSDT through an ensemble of
promoted members into a ledger (SQLite, or PostgreSQL by URL), then checks:

* exactly one ``signals`` row per symbol and bar of the period (no duplicate, none missing);
* every ``signal`` row equals what ``moola predict`` gives on the same bars: each member's vote
  is that member's ``Predictor.predict_frame`` probability (to 1e-6), and the ensemble P(up) is
  the fixed-weight average of the members that voted, renormalised over them.

Prints the wall time of ``moola runtime run`` (its ``run_runtime``), bars per second, and
per-tick latency percentiles from the ledger.

Usage (the registry of the desk sweep, BENCHMARKS.md):
  MLFLOW_TRACKING_URI=sqlite:///mlflow.db python benchmarks/runtime_replay_bybit.py \\
      --ensemble ensemble_bybit.yaml --store runs/store_bybit --db sqlite:///bybit_runtime.sqlite
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import polars as pl
from rich.console import Console

from moola.inference import EnsembleConfig, Predictor
from moola.pipelines.runtime import run_runtime
from moola.registry import resolve_model_ref
from moola.runtime import Ledger, RuntimeConfig

SYMBOLS = ["BTCUSDT", "ETHUSDT", "SOLUSDT"]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--ensemble", required=True)
    ap.add_argument("--store", required=True)
    ap.add_argument("--db", required=True)
    ap.add_argument("--fraction", type=float, default=0.15)
    ap.add_argument("--name", default="bybit_replay")
    args = ap.parse_args()
    cfg = RuntimeConfig.from_dict({
        "name": args.name, "ensemble": args.ensemble, "symbols": SYMBOLS, "db": args.db,
        "feed": {"kind": "replay", "source": args.store, "last_fraction": args.fraction},
        "thresholds": {"band": "validation"}})
    t0 = time.perf_counter()
    summary = run_runtime(cfg, console=Console(), view=False)
    wall = time.perf_counter() - t0
    with Ledger(args.db) as ledger:
        sig = ledger.signals(args.name)
    bars = int(sig.height)
    dup = int(sig.select("symbol", "bar_ts").is_duplicated().sum())
    print(f"{summary.ticks:,} ticks, {bars:,} rows ({summary.signals:,} signals, no-signal "
          f"{summary.no_signals or 'none'}); duplicates {dup}; wall {wall:.1f} s = "
          f"{bars / wall:,.0f} bars/s ({summary.ticks / wall:,.1f} ticks/s)")
    # one row per bar of the period: the store's bars from the period's start on, per symbol
    from moola.data import Store, Timeframe

    store_bars = Store(args.store).read(Timeframe("1m"), SYMBOLS)
    ns = store_bars["ts"].dt.epoch("ns")
    lo, hi = int(ns.min()), int(ns.max())
    start = hi - int((hi - lo) * args.fraction)
    for sym in SYMBOLS:
        want = store_bars.filter((pl.col("symbol") == sym) & (ns >= start))["ts"].to_list()
        got = sig.filter(pl.col("symbol") == sym)["bar_ts"].to_list()
        print(f"  {sym}: {len(got):,} rows for {len(want):,} bars of the period; identical bar list: "
              f"{got == want}")
    # parity with moola predict, member by member and for the ensemble
    ens = EnsembleConfig.from_yaml(args.ensemble)
    w = ens.normalised_weights()
    assert w is not None, "fixed weights only"
    weights = dict(zip(ens.member_names(), w.tolist(), strict=True))
    preds = {}
    for name, m in zip(ens.member_names(), ens.members, strict=True):
        p = Predictor.from_dir(resolve_model_ref(m.ref))
        preds[name] = p.predict_frame(Path(args.store)).select("symbol", "ts", "proba_up")
    signals = sig.filter(pl.col("status") == "signal")
    votes = [json.loads(m) for m in signals["members"]]
    frame = signals.select("symbol", "bar_ts", "proba_up")
    num = np.zeros(signals.height)
    den = np.zeros(signals.height)
    worst_member = 0.0
    for name in ens.member_names():
        v = np.array([np.nan if (x.get(name) or {}).get("proba") is None else x[name]["proba"]
                      for x in votes], dtype=np.float64)  # (N,) this member's vote, NaN: none
        ref = frame.join(preds[name].rename({"ts": "bar_ts", "proba_up": "ref"}),
                         on=["symbol", "bar_ts"], how="left")["ref"].to_numpy().astype(np.float64)
        voted = ~np.isnan(v)
        assert not np.isnan(ref[voted]).any(), f"{name} voted on a bar moola predict has no row for"
        worst_member = max(worst_member, float(np.abs(v[voted] - ref[voted]).max(initial=0.0)))
        num += np.where(voted, weights[name] * np.nan_to_num(v), 0.0)
        den += np.where(voted, weights[name], 0.0)
    worst_ens = float(np.abs(num / den - signals["proba_up"].to_numpy()).max(initial=0.0))
    print(f"parity on {signals.height:,} signal rows: max |member vote - moola predict| = "
          f"{worst_member:.2e}, max |ensemble - weighted members| = {worst_ens:.2e}")
    lat = sig["latency_ms"].drop_nulls().to_numpy()
    if lat.size:
        print(f"per-tick member latency (ms, in the ledger): p50 {np.percentile(lat, 50):.1f}, "
              f"p99 {np.percentile(lat, 99):.1f}")


if __name__ == "__main__":
    main()
