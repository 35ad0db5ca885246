"""Benchmark (issue 11, §6): one runtime tick for 3 symbols x 3 members on one thread, the
single-member streaming step vs the full-window forward, and replay throughput.

Usage: python benchmarks/bench_runtime_tick.py [--ticks N] [--repeat R] [--bybit DIR]
       [--bybit-fraction F] [--skip-replay | --replay-only]

Members: the presets direction_lstm (2-layer LSTM 64, served through its recurrent ring),
direction_transformer and direction_bilstm (both read the whole window each tick), all on
crypto39 (look-back 138), window 60, trained one epoch (timings do not depend on training) on
three real 1-minute series: stretches of the bundled BTC minutes relabelled BTC_A/B/C and put on
one clock, as tests/test_runtime.py does. They share one feature set, so the runtime computes
each tick's features once for all three (``FeatureStream``).

Tick: ``moola runtime run`` (``run_runtime``) replays the last ``--ticks`` minutes into SQLite in
a temporary directory; each ``Runtime._tick`` is timed whole and split into the shared feature
update (``FeatureStream.update``), the members' steps (``StreamingMember.step_bars``: bar
bookkeeping + normaliser + model) and the ledger write (``Ledger.write``: one SQLite transaction
per tick). The first tick (it carries the warm-up history) is left out. Each repeat gives
p50/p99; the table shows min and median over repeats.

Step: the trained direction_lstm member alone, one bar: the ring step (what the runtime runs
per bar) vs the full-window forward at batch 1 and padded to ``MIN_BATCH`` (predict's path).

Replay: bars per second (symbols x bars / wall time) of ``run_runtime`` over the last
``--bybit-fraction`` of the Bybit month for BTCUSDT, ETHUSDT and SOLUSDT (members of the same
presets trained on the rest of the month's first 70%), when ``--bybit`` exists.
"""

from __future__ import annotations

import argparse
import io
import os
import statistics
import tempfile
import time
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import torch
from rich.console import Console

from moola.data import TS_DTYPE, Store, Timeframe
from moola.inference import MIN_BATCH, EnsembleConfig, Predictor
from moola.pipelines.runtime import run_runtime
from moola.pipelines.train import RunConfig, run_train
from moola.runtime import FeatureStream, Ledger, Runtime, RuntimeConfig, StreamingMember

ROOT = Path(__file__).resolve().parents[1]
BUNDLED = ROOT / "data" / "bundled" / "binanceus_BTCUSD_1m.csv"
BYBIT = ROOT.parent / "shared" / "data" / "crypto_bybit_1m"
TF = Timeframe("1m")
PRESETS = ("direction_lstm", "direction_transformer", "direction_bilstm")
WINDOW = 60
OHLCV = ("open", "high", "low", "close", "volume")


def _quiet() -> Console:
    return Console(file=io.StringIO(), width=200)


def bundled_three(rows: int) -> pl.DataFrame:
    """Three stretches of the bundled BTC minutes as BTC_A/B/C on the first stretch's clock."""
    raw = pl.read_csv(BUNDLED).select(
        pl.col("open_time").str.to_datetime(time_zone="UTC").cast(TS_DTYPE).alias("ts"),
        *[pl.col(c).cast(pl.Float64) for c in OHLCV],
    ).unique("ts", keep="last", maintain_order=True).sort("ts")
    clock = raw["ts"].head(rows)
    parts = [raw.slice(k * rows, rows).with_columns(ts=clock, symbol=pl.lit(name))
             for k, name in enumerate(("BTC_A", "BTC_B", "BTC_C"))]
    return pl.concat(parts).select("symbol", "ts", *OHLCV).sort("symbol", "ts")


def bybit_three(src: Path) -> pl.DataFrame:
    parts = []
    for sym in ("BTCUSDT", "ETHUSDT", "SOLUSDT"):
        df = pl.read_csv(src / f"{sym}_1m.csv")
        parts.append(df.select(
            pl.lit(sym).alias("symbol"),
            pl.col("timestamp").str.to_datetime(time_zone="UTC").cast(TS_DTYPE).alias("ts"),
            *[pl.col(c).cast(pl.Float64) for c in OHLCV]))
    return pl.concat(parts).sort("symbol", "ts")


def train_members(store: Path, out: Path, train_bars: int | None) -> Path:
    """Three preset members (one epoch) on the store; their ensemble YAML. ``train_bars``:
    train on that many first bars of each symbol only (a store of its own)."""
    data: dict[str, Any] = {"store": str(store), "timeframe": "1m", "stride": 20, "horizon": 1,
                            "feature_set": "crypto39", "window": WINDOW,
                            "split": {"val": 0.15, "test": 0.15, "embargo_bars": 5}}
    if train_bars is not None:
        bars = Store(store).read(TF)
        head = bars.filter(pl.int_range(pl.len()).over("symbol") < train_bars)
        Store(out / "train_store").write(head, TF)
        data["store"] = str(out / "train_store")
    runs = []
    for preset in PRESETS:
        cfg = {"name": preset, "preset": preset, "out_dir": str(out / "runs"), "baselines": ["majority"],
               "economics": None, "data": data,
               "train": {"epochs": 1, "batch_size": 64, "device": "cpu", "num_threads": 1,
                         "early_stopping": None}}
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            runs.append(run_train(RunConfig.from_dict(cfg), show_progress=False, console=_quiet()).run_dir)
    spec = out / "ensemble.yaml"
    members = [{"ref": str(r), "name": p, "weight": 1 / 3} for r, p in zip(runs, PRESETS, strict=True)]
    EnsembleConfig.from_dict({"weights": "fixed", "members": members}).to_yaml(spec)
    return spec


class TickClock:
    """Per-tick wall time of ``Runtime._tick`` and of the parts inside it (class methods
    wrapped for the benchmark's duration)."""

    def __init__(self) -> None:
        self.ticks: list[dict[str, float]] = []
        self._cur: dict[str, float] | None = None

    @contextmanager
    def installed(self) -> Iterator[None]:
        saved = [(cls, name, getattr(cls, name)) for cls, name, _ in self._targets()]
        try:
            for cls, name, part in self._targets():
                setattr(cls, name, self._wrap(getattr(cls, name), part))
            yield
        finally:
            for cls, name, fn in saved:
                setattr(cls, name, fn)

    def _targets(self) -> list[tuple[type, str, str]]:
        return [(Runtime, "_tick", "tick"), (FeatureStream, "update", "features"),
                (StreamingMember, "step_bars", "members"), (Ledger, "write", "ledger")]

    def _wrap(self, fn: Callable[..., Any], part: str) -> Callable[..., Any]:
        def timed(*args: Any, **kwargs: Any) -> Any:
            if part == "tick":
                self._cur = dict.fromkeys(("features", "members", "ledger"), 0.0)
            t0 = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                dt = time.perf_counter() - t0
                if part == "tick" and self._cur is not None:
                    self._cur["tick"] = dt
                    self.ticks.append(self._cur)
                    self._cur = None
                elif self._cur is not None:
                    self._cur[part] += dt
        return timed


def pcts(values: list[float]) -> tuple[float, float]:
    a = np.asarray(values) * 1e3
    return float(np.percentile(a, 50)), float(np.percentile(a, 99))


def run_config(store: Path, spec: Path, db: str, symbols: list[str], fraction: float) -> RuntimeConfig:
    return RuntimeConfig.from_dict({
        "name": "bench", "ensemble": str(spec), "symbols": symbols,
        "feed": {"kind": "replay", "source": str(store), "last_fraction": fraction},
        "db": db, "thresholds": {"band": 0.0}})


def bench_ticks(store: Path, spec: Path, tmp: Path, ticks: int, repeat: int, rows: int
                ) -> list[tuple[str, float, float, float, float]]:
    fraction = ticks / rows
    per: dict[str, list[tuple[float, float]]] = {k: [] for k in ("features", "members", "ledger", "tick")}
    for r in range(repeat):
        clock = TickClock()
        with clock.installed():
            run_runtime(run_config(store, spec, f"sqlite:///{tmp / f'tick{r}.sqlite'}",
                                   ["BTC_A", "BTC_B", "BTC_C"], fraction), console=_quiet(), view=False)
        timed = clock.ticks[1:]  # the first tick carries the warm-up history
        for k in per:
            per[k].append(pcts([t[k] for t in timed]))
    names = {"features": "feature update (shared crypto39, 3 symbols)",
             "members": "inference: 3 members' steps (ring LSTM + 2 full-window)",
             "ledger": "ledger write (SQLite, one transaction)", "tick": "whole tick"}
    return [(names[k], min(p for p, _ in v), statistics.median(p for p, _ in v),
             min(q for _, q in v), statistics.median(q for _, q in v)) for k, v in per.items()]


def bench_step(run_dir: Path, bars: pl.DataFrame, n: int, repeat: int
               ) -> list[tuple[str, float, float, float, float]]:
    """The trained direction_lstm alone: ring step vs full-window forward, per bar."""
    p = Predictor.from_dir(run_dir)
    member = StreamingMember(p, recurrent=True)
    one = bars.filter(pl.col("symbol") == "BTC_A")
    fm = p.features(one, TF)
    v = fm.values[p.feature_set_.max_lookback:]
    x = torch.from_numpy(np.ascontiguousarray(p.normalizer_.transform(v), dtype=np.float32))
    model = p.model_.eval()
    ring, mlp = member._ring, member._mlp  # the runtime's own per-bar path
    assert ring is not None and mlp is not None
    state = ring.zeros()
    n = min(n, len(x) - WINDOW)

    def ring_step(t: int) -> float:
        top = ring.advance(state, x[t:t + 1])
        slot = (t + 1) % WINDOW
        out = float(torch.sigmoid(mlp(top[slot:slot + 1])).item())
        ring.restart(state, slot)
        return out

    def window_one(t: int) -> float:
        return float(torch.sigmoid(model({"x": x[t:t + WINDOW][None]})["direction"]).item())

    def window_padded(t: int) -> float:
        xb = x[t:t + WINDOW][None].expand(MIN_BATCH, -1, -1).contiguous()
        return float(torch.sigmoid(model({"x": xb})["direction"][0]).item())

    cases = [("streaming ring step (direction_lstm)", ring_step),
             ("full-window forward, batch 1", window_one),
             (f"full-window forward, padded to {MIN_BATCH} (predict's path)", window_padded)]
    out = []
    with torch.no_grad():
        for name, fn in cases:
            for t in range(20):
                fn(t)
            p50s, p99s = [], []
            for _ in range(repeat):
                times = []
                for t in range(n):
                    t0 = time.perf_counter()
                    fn(t)
                    times.append(time.perf_counter() - t0)
                a, b = pcts(times)
                p50s.append(a)
                p99s.append(b)
            out.append((name, min(p50s), statistics.median(p50s), min(p99s), statistics.median(p99s)))
    return out


def bench_replay(src: Path, tmp: Path, fraction: float) -> tuple[int, int, float, str]:
    """(ticks, bars served, wall s, what) of run_runtime over the Bybit month's last fraction."""
    store = tmp / "bybit_store"
    bars = bybit_three(src)
    Store(store).write(bars, TF)
    per_symbol = int(bars.group_by("symbol").len()["len"].min())
    spec = train_members(store, tmp / "bybit", train_bars=int(per_symbol * 0.7))
    cfg = run_config(store, spec, f"sqlite:///{tmp / 'bybit.sqlite'}", ["BTCUSDT", "ETHUSDT", "SOLUSDT"],
                     fraction)
    t0 = time.perf_counter()
    summary = run_runtime(cfg, console=_quiet(), view=False)
    wall = time.perf_counter() - t0
    with Ledger(cfg.db) as ledger:
        served = ledger.signals("bench").height
    return summary.ticks, served, wall, f"Bybit BTCUSDT/ETHUSDT/SOLUSDT, last {fraction:.0%} of the month"


def table(rows: list[tuple[str, float, float, float, float]]) -> list[str]:
    out = ["| measured | p50 ms (min) | p50 ms (median) | p99 ms (min) | p99 ms (median) |",
           "|---|---|---|---|---|"]
    out += [f"| {n} | {a:.3f} | {b:.3f} | {c:.3f} | {d:.3f} |" for n, a, b, c, d in rows]
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--ticks", type=int, default=300, help="ticks timed per repeat")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--steps", type=int, default=2000, help="bars timed per repeat (single member)")
    ap.add_argument("--bybit", type=Path, default=BYBIT)
    ap.add_argument("--bybit-fraction", type=float, default=0.15)
    ap.add_argument("--skip-replay", action="store_true")
    ap.add_argument("--replay-only", action="store_true", help="only the Bybit replay throughput")
    args = ap.parse_args()
    torch.set_num_threads(1)
    if args.replay_only:
        with tempfile.TemporaryDirectory() as d:
            print_replay(bench_replay(args.bybit, Path(d), args.bybit_fraction))
        return
    rows = 6000
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        bars = bundled_three(rows)
        store = tmp / "store"
        Store(store).write(bars, TF)
        t0 = time.perf_counter()
        spec = train_members(store, tmp, train_bars=None)
        print(f"trained {len(PRESETS)} members in {time.perf_counter() - t0:.0f} s")
        tick_rows = bench_ticks(store, spec, tmp, args.ticks, args.repeat, rows)
        lstm = next((tmp / "runs").glob("direction_lstm*"))
        step_rows = bench_step(lstm, bars, args.steps, args.repeat)
        replay = None
        if not args.skip_replay and args.bybit.is_dir():
            replay = bench_replay(args.bybit, tmp, args.bybit_fraction)
    print(f"torch {torch.__version__}, polars {pl.__version__}, 1 torch thread, POLARS_MAX_THREADS="
          f"{os.environ.get('POLARS_MAX_THREADS')}, {args.repeat} repeats; load average "
          + " ".join(f"{x:.2f}" for x in os.getloadavg()))
    print()
    print(f"Tick: 3 symbols x 3 members ({', '.join(PRESETS)}; crypto39, window 60), "
          f"{args.ticks} ticks per repeat, SQLite")
    print()
    print("\n".join(table(tick_rows)))
    print()
    print(f"Single member, per bar ({args.steps} bars per repeat)")
    print()
    print("\n".join(table(step_rows)))
    if replay is not None:
        print_replay(replay)


def print_replay(replay: tuple[int, int, float, str]) -> None:
    ticks, served, wall, what = replay
    print()
    print(f"Replay throughput ({what}): {ticks:,} ticks, {served:,} signal rows in {wall:.1f} s = "
          f"{served / wall:,.0f} bars/s ({ticks / wall:,.1f} ticks/s), training excluded; load average "
          + " ".join(f"{x:.2f}" for x in os.getloadavg()))


if __name__ == "__main__":
    main()
