"""105-bar windows over the three 1-minute BTC markets: time, peak RSS, and O(base) memory.

Usage: python benchmarks/bench_windows.py [DATA_DIR]   (holds binanceus_*_1m*.csv)
"""

from __future__ import annotations

import resource
import sys
import time
import tracemalloc
from pathlib import Path

import numpy as np
import polars as pl

from moola.data._gaps import mark_gaps
from moola.data._schema import Timeframe
from moola.datasets.windows import WindowSet
from moola.features._matrix import FeatureMatrix

ROOT = Path(__file__).resolve().parents[1]
CANDIDATES = (ROOT.parent / "shared" / "data" / "crypto", ROOT / "data" / "bundled")
WINDOW = 105
BATCH = 256


def load_matrix(data_dir: Path) -> FeatureMatrix:
    """Bars of every ``binanceus_<MARKET>_1m*.csv`` -> 4 log ratios to previous close."""
    files = sorted(data_dir.glob("binanceus_*_1m*.csv"))
    if not files:
        sys.exit(f"no binanceus_*_1m*.csv in {data_dir} (pass the folder)")
    frames = []
    for f in files:
        market = f.name.split("_")[1]
        frames.append(
            pl.read_csv(f).select(
                pl.lit(market).alias("symbol"),
                pl.col("open_time").str.to_datetime(time_unit="ns", time_zone="UTC").alias("ts"),
                *[pl.col(c).cast(pl.Float64) for c in ("open", "high", "low", "close")],
            )
        )
    bars = pl.concat(frames).drop_nulls().unique(["symbol", "ts"]).sort("symbol", "ts")
    keys = mark_gaps(bars, Timeframe.M1).select(
        "symbol", "ts", "gap_before", is_filled=pl.lit(False)
    )
    ohlc = bars.select("open", "high", "low", "close").to_numpy()  # (N, 4) float64
    prev = np.roll(ohlc[:, 3], 1)
    sym = bars.get_column("symbol").to_numpy()
    prev[np.r_[True, sym[1:] != sym[:-1]]] = np.nan  # no previous close across symbols
    values = np.ascontiguousarray(np.log(ohlc / prev[:, None]), dtype=np.float32)
    return FeatureMatrix(keys, values, ("lo", "lh", "ll", "lc"), "bench_log_ratios")


def main() -> None:
    if len(sys.argv) > 1:
        data_dir = Path(sys.argv[1])
    else:
        data_dir = next((d for d in CANDIDATES if d.is_dir()), CANDIDATES[-1])
    t0 = time.perf_counter()
    fm = load_matrix(data_dir)
    t_load = time.perf_counter() - t0
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

    times = []
    for _ in range(5):
        t = time.perf_counter()
        ws = WindowSet.from_matrix(fm, WINDOW)
        times.append(time.perf_counter() - t)

    tracemalloc.start()
    before, _ = tracemalloc.get_traced_memory()
    ws = WindowSet.from_matrix(fm, WINDOW)
    after, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()

    rng = np.random.default_rng(0)
    t = time.perf_counter()
    n_batches = 200
    for _ in range(n_batches):
        xb = ws.batch(rng.integers(0, len(ws), BATCH))  # (B, T, F) gathered copy
    t_batch = (time.perf_counter() - t) / n_batches
    per_symbol = [
        ws.subset(ws.symbol_codes() == k).array for k in range(len(ws.symbols()))
    ]
    assert all(np.shares_memory(a, fm.values) for a in per_symbol)
    rss_after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

    base = fm.values.nbytes
    dense = len(ws) * WINDOW * fm.values.shape[1] * 4
    print(f"data                        {data_dir} ({fm.keys.height:,} bars, "
          f"{len(ws.symbols())} symbols, {fm.values.shape[1]} features)")
    print(f"load + features             {t_load:.2f} s")
    print(f"windows                     {len(ws):,} x {WINDOW} x {fm.values.shape[1]} float32")
    print(f"WindowSet.from_matrix       {np.median(times) * 1e3:.1f} ms (median of 5)")
    print(f"batch({BATCH}) gather          {t_batch * 1e3:.2f} ms  ({xb.nbytes / 1e6:.2f} MB)")
    print(f"base array                  {base / 1e6:.2f} MB")
    print(f"windowing retained extra    {(after - before) / 1e6:.2f} MB "
          f"(index: {ws.index_nbytes / 1e6:.2f} MB = 8 B/window; "
          f"{(after - before) / base:.2f} x base)")
    print(f"windowing peak extra        {(peak - before) / 1e6:.2f} MB "
          f"({(peak - before) / base:.2f} x base, temporaries included)")
    print(f"dense copy would be         {dense / 1e6:.1f} MB ({dense / base:.0f} x base)")
    print(f"per-symbol .array views     {len(per_symbol)} zero-copy "
          f"(shares_memory with base: True)")
    print(f"peak RSS (ru_maxrss)        {rss_before:.0f} MiB after load, "
          f"{rss_after:.0f} MiB after windowing")


if __name__ == "__main__":
    main()
