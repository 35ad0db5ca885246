"""Benchmark: one streaming step vs one full-window forward of direction_lstm, on one thread.

Usage: python benchmarks/bench_runtime_step.py [--bars N] [--repeat R]

direction_lstm (2-layer LSTM 64, MLP 64) on the 39 crypto39 features of the bundled BTC
minutes (z-scored), window 60, seeded initial weights (timings do not depend on training).
Per bar:
* ring step: what ``StreamingMember`` runs per bar on the recurrent path: one batched LSTM step
  per layer over the 60 staggered states, the emitted state through the head's MLP, sigmoid;
* full window, batch 1: ``model({"x": window})`` on the (1, 60, 39) window;
* full window, the Predictor's single-window engine: what ``Predictor.predict_windows`` runs
  for a tick's few windows now (``build_engine``: ONNX Runtime where installed);
* full window padded to ``MIN_BATCH`` rows: the eager batched path, which
  ``Predictor.predict_windows`` ran for one window before issue 16 and still runs for more
  than ``SMALL_BATCH`` windows;
* features: crypto39 on the bars one tick reads (look-back + 1 bars for the ring, look-back +
  window for the full window), which the runtime pays once per tick for all its symbols.
Each repeat times every bar; the table gives p50/p99 per repeat, min and median over repeats.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import polars as pl
import torch

from moola.data import Timeframe, mark_gaps
from moola.features import compute_features, get_feature_set
from moola.inference import MIN_BATCH, build_engine, head_values
from moola.models import build_model, preset_config
from moola.runtime._streaming import _Ring

ROOT = Path(__file__).resolve().parents[1]
BARS = ROOT / "data" / "bundled" / "binanceus_BTCUSD_1m.csv"
WINDOW = 60


def load_bars(n: int) -> pl.DataFrame:
    raw = pl.read_csv(BARS, n_rows=n)
    return raw.select(
        pl.lit("BTCUSD").alias("symbol"),
        pl.col("open_time").str.to_datetime(time_zone="UTC").cast(pl.Datetime("ns", "UTC")).alias("ts"),
        *[pl.col(c).cast(pl.Float64) for c in ("open", "high", "low", "close", "volume")],
    ).unique(["symbol", "ts"], keep="last", maintain_order=True).sort("ts")


def percentiles(times: list[float]) -> tuple[float, float]:
    a = np.asarray(times) * 1e3
    return float(np.percentile(a, 50)), float(np.percentile(a, 99))


def timed(fn: Callable[[int], object], n: int) -> list[float]:
    out = []
    for t in range(n):
        t0 = time.perf_counter()
        fn(t)
        out.append(time.perf_counter() - t0)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--bars", type=int, default=2000, help="bars timed per repeat")
    ap.add_argument("--repeat", type=int, default=5)
    args = ap.parse_args()
    torch.set_num_threads(1)
    fs = get_feature_set("crypto39")
    tf = Timeframe("1m")
    bars = load_bars(fs.max_lookback + WINDOW + args.bars + 10)
    v = compute_features(mark_gaps(bars, tf), fs).values[fs.max_lookback:]
    x = torch.from_numpy(((v - v.mean(0)) / (v.std(0) + 1e-6)).astype(np.float32))  # (N, 39)
    torch.manual_seed(0)
    model = build_model(preset_config("direction_lstm", n_features=39)).eval()
    ring = _Ring(model.encoder.rnn, WINDOW)  # type: ignore[arg-type]
    mlp = model.heads["direction"].mlp  # type: ignore[union-attr]
    state = ring.zeros()
    n = min(args.bars, len(x) - WINDOW)

    def ring_step(t: int) -> float:
        top = ring.advance(state, x[t:t + 1])
        slot = (t + 1) % WINDOW
        p = float(torch.sigmoid(mlp(top[slot:slot + 1])).item())
        ring.restart(state, slot)
        return p

    def window_one(t: int) -> float:
        return float(torch.sigmoid(model({"x": x[t:t + WINDOW][None]})["direction"]).item())

    def window_padded(t: int) -> float:
        xb = x[t:t + WINDOW][None].expand(MIN_BATCH, -1, -1).contiguous()
        return float(torch.sigmoid(model({"x": xb})["direction"][0]).item())

    cfg = preset_config("direction_lstm", n_features=39)

    def eager(xw: np.ndarray, ids: np.ndarray | None) -> np.ndarray:
        with torch.no_grad():
            return head_values(model({"x": torch.from_numpy(xw)}), cfg)

    xn = x.numpy()
    engine = build_engine(model, cfg, window=WINDOW, n_symbols=1, eager=eager,
                          windows=(np.stack([xn[t:t + WINDOW] for t in range(4)]), None))

    def window_engine(t: int) -> float:
        return float(engine.run(xn[t:t + WINDOW][None], None)[0, 1])

    tail_ring, tail_full = fs.max_lookback + 1, fs.max_lookback + WINDOW

    def features(rows: int) -> Callable[[int], object]:
        return lambda t: compute_features(mark_gaps(bars.slice(t % 10, rows), tf), fs)

    cases: list[tuple[str, Callable[[int], object], int]] = [
        ("ring step (streaming, model only)", ring_step, n),
        ("full-window forward, batch 1", window_one, n),
        (f"full-window forward, the Predictor's single-window engine ({engine.name})", window_engine, n),
        (f"full-window forward, padded to {MIN_BATCH} (eager batched path)", window_padded, n),
        (f"crypto39 features on {tail_ring} bars (ring tick)", features(tail_ring), max(n // 20, 20)),
        (f"crypto39 features on {tail_full} bars (full-window tick)", features(tail_full), max(n // 20, 20)),
    ]
    with torch.no_grad():
        for _, fn, _k in cases:  # warm-up
            for t in range(20):
                fn(t)
        rows = []
        for name, fn, k in cases:
            p50s, p99s = [], []
            for _ in range(args.repeat):
                p50, p99 = percentiles(timed(fn, k))
                p50s.append(p50)
                p99s.append(p99)
            rows.append((name, k, min(p50s), statistics.median(p50s), min(p99s), statistics.median(p99s)))
    print(f"direction_lstm, 39 features, window {WINDOW}, torch {torch.__version__}, 1 thread; "
          f"{args.repeat} repeats")
    print()
    print("| step | calls/repeat | p50 ms (min) | p50 ms (median) | p99 ms (min) | p99 ms (median) |")
    print("|---|---|---|---|---|---|")
    for name, k, a, b, c, d in rows:
        print(f"| {name} | {k} | {a:.3f} | {b:.3f} | {c:.3f} | {d:.3f} |")


if __name__ == "__main__":
    main()
