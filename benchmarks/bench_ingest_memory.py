"""Peak memory and wall time of the whole ``moola data ingest`` command on a large CSV.

The CSV is made of real rows: one shared 1-minute BTC export repeated, each copy shifted by the
export's length so rows stay unique and on the 1-minute grid (one symbol); price and volume text
is copied as written. Each run ingests into a fresh store in a subprocess whose peak RSS comes
from ``wait4``. ``--baseline-rev`` also runs the command of an older commit (its ``src`` tree from
``git archive``), e.g. the whole-file reader before the streaming one.

Usage: python benchmarks/bench_ingest_memory.py [--mb 200 1000] [--repeats 3] [--source CSV]
       [--rev REV] [--baseline-rev REV] [--baseline-max-mb 1000] [--phases]
"""

from __future__ import annotations

import argparse
import io
import os
import shutil
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import polars as pl

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_SOURCE = ROOT.parent / "shared" / "data" / "crypto" / "binanceus_BTCUSD_1m_2023-03-01_2023-03-21.csv"
TS_FORMAT_IN = "%Y-%m-%d %H:%M:%S%:z"
TS_FORMAT_OUT = "%Y-%m-%d %H:%M:%S+00:00"


@dataclass(frozen=True)
class Run:
    wall_s: float
    peak_rss_mib: float


def make_csv(source: Path, dest: Path, target_mb: float) -> tuple[int, int]:
    """Repeat ``source``'s rows (timestamps shifted by its length) until ``dest`` holds
    ``target_mb`` MB; returns (rows, bytes)."""
    src = pl.read_csv(source, infer_schema=False)
    ts_col = src.columns[0]
    ts = src.get_column(ts_col).str.to_datetime(TS_FORMAT_IN)
    minutes = src.height  # the export is a full 1-minute grid: shift by its length in minutes
    rows = 0
    with dest.open("w", encoding="utf-8", newline="") as fh:
        k = 0
        while k == 0 or fh.tell() < target_mb * 1e6:
            shifted = (ts + pl.duration(minutes=k * minutes)).dt.strftime(TS_FORMAT_OUT)
            block = src.with_columns(shifted.alias(ts_col))
            buf = io.StringIO()
            block.write_csv(buf, include_header=k == 0)
            fh.write(buf.getvalue())
            rows += block.height
            k += 1
    return rows, dest.stat().st_size


def run_ingest(csv_path: Path, store: Path, pythonpath: str | None) -> Run:
    """One ``moola data ingest`` in a child process: wall time and its own peak RSS."""
    env = dict(os.environ)
    if pythonpath is not None:
        env["PYTHONPATH"] = pythonpath
    cmd = [sys.executable, "-c", "from moola.cli import app; app()", "data", "ingest",
           str(csv_path), "--store", str(store)]
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    assert proc.stdout is not None
    out = proc.stdout.read()
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t0
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        sys.exit(f"ingest failed ({proc.returncode}):\n{out.decode(errors='replace')[-2000:]}")
    return Run(wall_s=wall, peak_rss_mib=usage.ru_maxrss / 1024)


_PHASES = """
import resource, sys, time
t = time.perf_counter()
from pathlib import Path
from moola.data import Store, Timeframe, read_file, validate_raw
import moola.cli

def step(name, t0):
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"  {name:<22} {time.perf_counter() - t0:6.1f} s   peak so far {peak:8,.0f} MiB")

step("import moola.cli", t)
t = time.perf_counter(); raw = read_file(Path(sys.argv[1])); step("read_file", t)
t = time.perf_counter(); v = validate_raw(raw.frame, Timeframe.M1); step("validate_raw", t)
del raw
t = time.perf_counter(); Store(sys.argv[2]).write_many({Timeframe.M1: (v.bars, v.rejects)})
step("Store.write_many", t)
"""


def phases(csv_path: Path, store: Path, pythonpath: str | None) -> str:
    """The command's steps in one child process: the peak after each says which step sets it."""
    env = dict(os.environ)
    if pythonpath is not None:
        env["PYTHONPATH"] = pythonpath
    shutil.rmtree(store, ignore_errors=True)
    out = subprocess.run([sys.executable, "-c", _PHASES, str(csv_path), str(store)], env=env,
                         check=True, capture_output=True, text=True).stdout
    shutil.rmtree(store, ignore_errors=True)
    return out


def baseline_tree(rev: str, dest: Path) -> str:
    """``src`` of an older commit, unpacked for PYTHONPATH."""
    data = subprocess.run(["git", "-C", str(ROOT), "archive", rev, "src"], check=True,
                          capture_output=True).stdout
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        tar.extractall(dest, filter="data")
    return str(dest / "src")


def measure(csv_path: Path, tmp: Path, repeats: int, pythonpath: str | None) -> list[Run]:
    runs = []
    for _ in range(repeats):
        store = tmp / "store"
        shutil.rmtree(store, ignore_errors=True)
        runs.append(run_ingest(csv_path, store, pythonpath))
    shutil.rmtree(tmp / "store", ignore_errors=True)
    return runs


def row(label: str, mb: float, rows: int, runs: list[Run], startup_mib: float) -> str:
    """A table row; the last column is the peak above a 2 MB ingest's (imports, store), per MB."""
    walls = [r.wall_s for r in runs]
    rss = statistics.median(r.peak_rss_mib for r in runs)
    above = (rss - startup_mib) * 1.048576 / mb  # MiB -> MB
    return (f"| {label} | {mb:.0f} | {rows:,} | {min(walls):.1f} | {statistics.median(walls):.1f} | "
            f"{min(r.peak_rss_mib for r in runs):,.0f} | {rss:,.0f} | {above:.1f}x |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--mb", type=float, nargs="+", default=[200.0, 1000.0])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--source", type=Path, default=DEFAULT_SOURCE)
    ap.add_argument("--rev", help="measure this commit's moola instead of the working tree")
    ap.add_argument("--baseline-rev", help="also run this commit's moola (e.g. the old reader)")
    ap.add_argument("--phases", action="store_true",
                    help="also print each step's peak (read, validate, write) for the measured tree")
    ap.add_argument("--baseline-max-mb", type=float, default=float("inf"),
                    help="skip the baseline above this size (it may need many times the file)")
    args = ap.parse_args()
    if not args.source.is_file():
        sys.exit(f"source CSV not found: {args.source} (pass --source)")
    tmp = Path(tempfile.mkdtemp(prefix="moola-ingest-mem-"))
    try:
        trees: dict[str, str | None] = {f"`{args.rev}`" if args.rev else "working tree":
                                         baseline_tree(args.rev, tmp / "new") if args.rev else None}
        if args.baseline_rev:
            trees[f"`{args.baseline_rev}`"] = baseline_tree(args.baseline_rev, tmp / "base")
        csv_path = tmp / "BTCUSD_1m.csv"
        make_csv(args.source, csv_path, 0)  # one copy of the source: the fixed cost of the command
        fixed = {label: statistics.median(r.peak_rss_mib for r in measure(csv_path, tmp, args.repeats, tree))
                 for label, tree in trees.items()}
        print(f"fixed cost (one {args.source.stat().st_size / 1e6:.1f} MB copy of the source): "
              + ", ".join(f"{label} {v:,.0f} MiB" for label, v in fixed.items()))
        print("| command | file MB | rows | wall min s | wall median s | peak RSS min MiB | "
              "peak RSS median MiB | (RSS - fixed) / file |")
        print("|---|---|---|---|---|---|---|---|")
        for mb in args.mb:
            rows, size = make_csv(args.source, csv_path, mb)
            for i, (label, tree) in enumerate(trees.items()):
                if i > 0 and mb > args.baseline_max_mb:
                    continue
                runs = measure(csv_path, tmp, args.repeats, tree)
                print(row(label, size / 1e6, rows, runs, fixed[label]), flush=True)
            if args.phases:
                first = next(iter(trees.values()))
                print(f"steps at {size / 1e6:.0f} MB:\n{phases(csv_path, tmp / 'store', first)}", flush=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
