"""Benchmark: alpha158 over the full S&P 500 daily panel (rows/s, seconds, peak RSS).

Usage: python benchmarks/bench_alpha158.py [PATH.parquet] [--repeat N] [--set NAME]
PATH defaults to $MOOLA_SHARED_DATA/sp500_daily_2012_2017.parquet, else ../shared/data/ beside the
repository root (columns symbol, date, open, high, low, close, adj_close, volume).
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import sys
import time
from pathlib import Path

import polars as pl

from moola.features import build_features

SHARED_DATA = Path(os.environ.get("MOOLA_SHARED_DATA")
                   or Path(__file__).resolve().parents[2] / "shared" / "data")
DEFAULT_PATH = SHARED_DATA / "sp500_daily_2012_2017.parquet"
PRICE_VOLUME = ("open", "high", "low", "close", "adj_close", "volume")


def load_panel(path: Path) -> pl.DataFrame:
    """Raw daily file -> canonical bars: ts as UTC ns, no all-null rows, unique sorted keys."""
    raw = pl.read_parquet(path)
    cols = [c for c in PRICE_VOLUME if c in raw.columns]
    return (
        raw.filter(~pl.all_horizontal(pl.col(cols).is_null()))
        .with_columns(pl.col("date").cast(pl.Datetime("ns", "UTC")).alias("ts"))
        .drop("date")
        .unique(["symbol", "ts"], keep="last")
        .sort("symbol", "ts")
        .select("symbol", "ts", *[pl.col(c).cast(pl.Float64) for c in cols])
    )


def peak_rss_mib() -> float:
    """Peak resident set size of this process (Linux reports ru_maxrss in KiB)."""
    kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return kib / 1024.0 if sys.platform != "darwin" else kib / 2**20


def main(argv: list[str] | None = None) -> int:
    """Time build_features on the panel; print one line per run and a summary."""
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("path", nargs="?", type=Path, default=DEFAULT_PATH)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--set", default="alpha158", dest="set_name")
    args = ap.parse_args(argv)

    df = load_panel(args.path)
    print(f"panel: {df.height:,} rows, {df['symbol'].n_unique()} symbols from {args.path}")
    print(f"peak RSS after loading the panel: {peak_rss_mib():.0f} MiB")
    print(f"cpus: {os.cpu_count()}, load average before: {os.getloadavg()}")
    walls: list[float] = []
    for i in range(args.repeat):
        cpu0, wall0 = os.times(), time.perf_counter()
        fm = build_features(df, args.set_name)
        wall = time.perf_counter() - wall0
        cpu1 = os.times()
        cpu = (cpu1.user - cpu0.user) + (cpu1.system - cpu0.system)
        walls.append(wall)
        print(
            f"run {i + 1}: {wall:.2f} s wall, {cpu:.2f} s cpu, {df.height / wall:,.0f} rows/s, "
            f"values {fm.values.shape} {fm.values.dtype}"
        )
        del fm  # peak RSS should reflect one build, not two results alive at once
    print(
        f"{args.set_name}: best {min(walls):.2f} s, median {statistics.median(walls):.2f} s, "
        f"{df.height / min(walls):,.0f} rows/s (best), peak RSS {peak_rss_mib():.0f} MiB "
        "(ru_maxrss, whole process)"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
