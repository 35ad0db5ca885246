"""Ingest + validate of the full shared S&P panel (608k rows): wall time and peak RSS.

Usage: python benchmarks/bench_ingest.py [PANEL.parquet]
"""

from __future__ import annotations

import resource
import shutil
import sys
import tempfile
import time
from pathlib import Path

from moola.data import Store, Timeframe, ingest, validate_bars

DEFAULT = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "sp500_daily_2012_2017.parquet"


def main() -> None:
    path = Path(sys.argv[1]) if len(sys.argv) > 1 else DEFAULT
    if not path.is_file():
        sys.exit(f"panel not found: {path} (pass its path)")
    tmp = Path(tempfile.mkdtemp(prefix="moola-bench-"))
    try:
        t0 = time.perf_counter()
        res = ingest([path], Store(tmp / "store"))
        t_ingest = time.perf_counter() - t0
        t1 = time.perf_counter()
        again = ingest([path], Store(tmp / "store"))
        t_reingest = time.perf_counter() - t1
        t2 = time.perf_counter()
        store = Store(tmp / "store")
        rep = validate_bars(store.read(Timeframe.D1), Timeframe.D1, store.read_rejects(Timeframe.D1))
        t_validate = time.perf_counter() - t2
        rows = next(iter(res.reports.values())).rows_in
        rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        unchanged = len(next(iter(again.writes.values())).unchanged)
        print(f"rows                       {rows}")
        print(f"ingest (read+validate+write) {t_ingest:.2f} s  ({rows / t_ingest:,.0f} rows/s)")
        print(f"re-ingest (no change)      {t_reingest:.2f} s  ({unchanged} partitions unchanged)")
        print(f"validate --store           {t_validate:.2f} s")
        print(f"findings                   {rep.totals()}")
        print(f"peak RSS                   {rss:.0f} MiB")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
