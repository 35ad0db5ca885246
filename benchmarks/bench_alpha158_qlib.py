"""Benchmark: the whole ``moola features build --set alpha158`` command against pyqlib's Alpha158.

Usage: python benchmarks/bench_alpha158_qlib.py [PATH.parquet] [--repeat N] [--qlib-python PY]
       [--tile K] [--keep DIR]

Both sides read the same panel (default ../shared/data/sp500_daily_2012_2017.parquet). Untimed
setup: moola's own ingest makes the store; our converter writes Qlib's binary layout (adjusted
prices, ``factor``, ``vwap`` := (high+low+close)/3 as moola's VWAP0) in a temp directory. Timed,
each in its own child process, interleaved, ``--repeat`` times: (a) Qlib: ``qlib.init`` on that
directory, ``Alpha158`` handler with default settings over the whole period, ``fetch`` of the
features; (b) moola: the whole CLI command. Wall time from fork to reap; peak RSS and CPU from
``os.wait4``'s rusage (ru_maxrss is the largest single process of the child's tree, so Qlib's
worker processes are not summed). ``--tile K`` repeats the panel K times under renamed symbols.

pyqlib needs its own environment (it pins old NumPy/pandas): ``python3.11 -m venv /tmp/qlibenv &&
/tmp/qlibenv/bin/pip install pyqlib==0.9.7``, then pass ``--qlib-python /tmp/qlibenv/bin/python``
(or set $QLIB_PYTHON). Without it only moola is timed.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import polars as pl

from bench_alpha158 import DEFAULT_PATH, load_panel

QLIB_FIELDS = ("open", "high", "low", "close", "volume", "factor", "vwap")
QLIB_CHILD = """
import sys
import qlib
from qlib.constant import REG_US
from qlib.contrib.data.handler import Alpha158
qlib.init(provider_uri=sys.argv[1], region=REG_US)
h = Alpha158(instruments="all", start_time=sys.argv[2], end_time=sys.argv[3])
df = h.fetch(col_set="feature")
print("qlib alpha158", df.shape)
if len(sys.argv) > 4:  # --make-fixture: keep the values
    df.reset_index().to_parquet(sys.argv[4])
"""
# --make-fixture: symbols with missing days inside their span (BHF 531, UA 5, ESS 1, MMC 1),
# late starters (FTV, CSRA, HPE, KHC) and complete large caps; the union calendar is the full one.
FIXTURE_SYMBOLS = ("AAPL", "BHF", "CSRA", "ESS", "FTV", "GE", "HPE", "JPM", "KHC", "MMC", "MSFT",
                   "UA", "XOM")
FIXTURE_EVERY = 5  # stored rows: every 5th calendar day, plus the 70 days after a missing day


def tile_panel(df: pl.DataFrame, k: int) -> pl.DataFrame:
    """The panel k times, copy i's symbols suffixed ``_T{i}`` (copy 0 keeps the real names)."""
    if k <= 1:
        return df
    copies = [df] + [df.with_columns(pl.col("symbol") + f"_T{i}") for i in range(1, k)]
    return pl.concat(copies).sort("symbol", "ts")


def qlib_fields(df: pl.DataFrame) -> pl.DataFrame:
    """Qlib's stored fields: prices x factor, volume / factor (factor = adj_close / close)."""
    factor = pl.col("adj_close") / pl.col("close")
    adj = [(pl.col(c) * factor).alias(c) for c in ("open", "high", "low", "close")]
    return (
        df.select("symbol", pl.col("ts").dt.date().alias("date"), *adj,
                  (pl.col("volume") / factor).alias("volume"), factor.alias("factor"))
        .with_columns(((pl.col("high") + pl.col("low") + pl.col("close")) / 3).alias("vwap"))
    )


def write_qlib_dir(df: pl.DataFrame, root: Path) -> tuple[str, str]:
    """Qlib's binary layout: calendars/day.txt, instruments/all.txt, features/<sym>/<f>.day.bin.

    A .bin file is little-endian float32: the calendar index of the symbol's first day, then
    one value per calendar day up to its last; days a symbol lacks inside that span are NaN.
    Returns the first and last calendar day.
    """
    bars = qlib_fields(df)
    cal = bars.get_column("date").unique().sort()
    days = [d.isoformat() for d in cal.to_list()]
    (root / "calendars").mkdir(parents=True)
    (root / "instruments").mkdir()
    (root / "calendars" / "day.txt").write_text("\n".join(days) + "\n")
    index = {d: i for i, d in enumerate(cal.to_list())}
    spans = []
    for (sym,), part in bars.group_by("symbol", maintain_order=True):
        idx = np.fromiter((index[d] for d in part.get_column("date").to_list()), dtype=np.int64)
        first, last = int(idx[0]), int(idx[-1])
        spans.append(f"{sym}\t{days[first]}\t{days[last]}")
        out = root / "features" / str(sym).lower()
        out.mkdir(parents=True)
        for f in QLIB_FIELDS:
            col = np.full(last - first + 1, np.nan, dtype="<f4")
            col[idx - first] = part.get_column(f).to_numpy().astype("<f4")
            np.concatenate((np.array([first], dtype="<f4"), col)).tofile(out / f"{f}.day.bin")
    (root / "instruments" / "all.txt").write_text("\n".join(spans) + "\n")
    return days[0], days[-1]


@dataclass(frozen=True)
class Run:
    wall: float
    cpu: float
    rss_mib: float


def timed_child(cmd: list[str]) -> Run:
    """Run cmd to completion; wall clock, CPU (user+sys) and peak RSS of its process tree."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    assert proc.stdout is not None
    out = proc.stdout.read()
    _, status, ru = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t0
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise RuntimeError(f"{cmd[0]} exited {proc.returncode}:\n{out.decode()[-3000:]}")
    return Run(wall, ru.ru_utime + ru.ru_stime, ru.ru_maxrss / 1024.0)


def moola_store(df: pl.DataFrame, tmp: Path) -> Path:
    """moola's own ingest of the (possibly tiled) panel into a store, untimed."""
    from moola.data import Store, ingest

    src = tmp / "panel.parquet"
    df.with_columns(pl.col("ts").dt.date().alias("date")).drop("ts").write_parquet(src)
    ingest([src], Store(tmp / "store"))
    return tmp / "store"


def prepare(path: Path, tile: int, out: Path, *, qlib: bool) -> None:
    """The untimed inputs in ``out``: moola's store and (``qlib``) Qlib's binary layout."""
    df = tile_panel(load_panel(path), tile)
    print(f"panel: {df.height:,} rows, {df['symbol'].n_unique()} symbols (tile {tile}) from {path}")
    from moola.features import compiled_kernels

    for module, build in compiled_kernels().items():  # the JIT's start costs ~0.8 s a run
        print(f"{module}: {'ahead-of-time build ' + build.name if build else 'Numba JIT (no build)'}")
    moola_store(df, out)
    start, end = df.get_column("ts").min(), df.get_column("ts").max()
    span = f"{start:%Y-%m-%d} {end:%Y-%m-%d}"
    if qlib:
        t0 = time.perf_counter()
        span = " ".join(write_qlib_dir(df, out / "qlib"))
        print(f"qlib binary layout written in {time.perf_counter() - t0:.1f} s ({span})")
    (out / "span.txt").write_text(span)


def qlib_python(arg: str | None) -> str | None:
    """The interpreter with pyqlib installed, or None (with how to install it) when there is none."""
    py = arg or os.environ.get("QLIB_PYTHON") or "/tmp/qlibenv/bin/python"
    ok = Path(py).exists() and subprocess.run(
        [py, "-c", "import qlib"], capture_output=True).returncode == 0
    if not ok:
        print(f"pyqlib not importable with {py}: install it with `python3.11 -m venv /tmp/qlibenv && "
              "/tmp/qlibenv/bin/pip install pyqlib==0.9.7` and pass --qlib-python; timing moola only")
        return None
    return py


def make_fixture(path: Path, py: str, out: Path) -> None:
    """Qlib's Alpha158 on FIXTURE_SYMBOLS, stored with the input bars and their provenance."""
    import json
    import platform

    df = load_panel(path).filter(pl.col("symbol").is_in(FIXTURE_SYMBOLS))
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="qlib_fixture_") as t:
        start, end = write_qlib_dir(df, Path(t) / "qlib")
        raw = Path(t) / "qlib_alpha158.parquet"
        timed_child([py, "-c", QLIB_CHILD, str(Path(t) / "qlib"), start, end, str(raw)])
        q = pl.read_parquet(raw).rename({"datetime": "date", "instrument": "symbol"})
    q = q.with_columns(pl.col("date").cast(pl.Date), pl.exclude("date", "symbol").cast(pl.Float32))
    cal = df.get_column("ts").dt.date().unique().sort().to_frame("date").with_row_index("ci")
    q = q.join(cal, on="date", how="left")
    real = df.select("symbol", pl.col("ts").dt.date().alias("date"), pl.lit(True).alias("real"))
    q = q.join(real, on=["symbol", "date"], how="left").with_columns(pl.col("real").fill_null(False))
    after_gap = (~pl.col("real")).cast(pl.Int32).rolling_max(70, min_samples=1).over("symbol") > 0
    keep = q.filter(pl.col("real") & ((pl.col("ci") % FIXTURE_EVERY == 0) | after_gap))
    keep = keep.drop("ci", "real").sort("symbol", "date")
    keep.write_parquet(out / "qlib_alpha158.parquet", compression="zstd")
    df.with_columns(pl.col("ts").dt.date().alias("date")).drop("ts").write_parquet(
        out / "bars.parquet", compression="zstd")
    version = subprocess.run([py, "-c", "import qlib; print(qlib.__version__)"],
                             capture_output=True, text=True, check=True).stdout.strip()
    meta = {
        "pyqlib": version,
        "python": subprocess.run([py, "-c", "import platform; print(platform.python_version())"],
                                 capture_output=True, text=True, check=True).stdout.strip(),
        "made_on": platform.platform(),
        "command": "python benchmarks/bench_alpha158_qlib.py --make-fixture tests/fixtures/qlib_alpha158 "
                   "--qlib-python /tmp/qlibenv/bin/python",
        "input": "../shared/data/sp500_daily_2012_2017.parquet (all-null rows dropped, duplicate "
                 "keys keep the last), symbols " + ", ".join(FIXTURE_SYMBOLS) + " -> bars.parquet",
        "qlib_data": "benchmarks/bench_alpha158_qlib.py write_qlib_dir: adjusted prices (x factor), "
                     "volume / factor, factor = adj_close / close, vwap = (high+low+close)/3",
        "handler": f"Alpha158(instruments='all', start_time='{start}', end_time='{end}'), "
                   "default settings, fetch(col_set='feature')",
        "rows": f"real bars on every {FIXTURE_EVERY}th calendar day, plus every real bar within 70 "
                "calendar days after a missing day; values float32",
        "shape": list(keep.shape),
    }
    (out / "provenance.json").write_text(json.dumps(meta, indent=2) + "\n")
    print(f"fixture: {keep.shape} -> {out}")


def _row(name: str, runs: list[Run]) -> str:
    w, r, c = [x.wall for x in runs], [x.rss_mib for x in runs], [x.cpu for x in runs]
    return (f"| {name} | {min(w):.2f} | {statistics.median(w):.2f} | {statistics.median(c):.1f} | "
            f"{min(r):.0f} | {max(r):.0f} |")


def main(argv: list[str] | None = None) -> int:
    """Convert once, then time Qlib and moola children interleaved; print a Markdown table."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("path", nargs="?", type=Path, default=DEFAULT_PATH)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--qlib-python", default=None)
    ap.add_argument("--tile", type=int, default=1, help="repeat the panel K times (renamed symbols)")
    ap.add_argument("--no-qlib", action="store_true", help="time moola only")
    ap.add_argument("--prepare", type=Path, default=None, metavar="DIR", help=argparse.SUPPRESS)
    ap.add_argument("--make-fixture", type=Path, default=None, metavar="DIR",
                    help="store Qlib's values on a few symbols (the parity test's reference)")
    args = ap.parse_args(argv)

    py = None if args.no_qlib else qlib_python(args.qlib_python)
    if args.make_fixture is not None:
        if py is None:
            return 1
        make_fixture(args.path, py, args.make_fixture)
        return 0
    if args.prepare is not None:
        prepare(args.path, args.tile, args.prepare, qlib=py is not None)
        return 0
    moola = str(Path(sys.executable).parent / "moola")
    runs: dict[str, list[Run]] = {"qlib": [], "moola": []}
    with tempfile.TemporaryDirectory(prefix="bench_a158_") as t:
        tmp = Path(t)
        # the inputs are made in a child: a forked child starts with its parent's pages, so a
        # parent holding the panel would inflate every timed child's peak RSS
        cmd = [sys.executable, __file__, str(args.path), "--tile", str(args.tile), "--prepare", t]
        subprocess.run(cmd + (["--no-qlib"] if py is None else ["--qlib-python", py]), check=True)
        start, end = (tmp / "span.txt").read_text().split()
        for i in range(args.repeat):
            load = os.getloadavg()
            if py is not None:
                runs["qlib"].append(timed_child([py, "-c", QLIB_CHILD, str(tmp / "qlib"), start, end]))
                print(f"repeat {i + 1}: qlib {runs['qlib'][-1]}")
            runs["moola"].append(timed_child([moola, "features", "build", "--set", "alpha158",
                                              "--store", str(tmp / "store"),
                                              "--out", str(tmp / "out.parquet")]))
            print(f"repeat {i + 1}: moola {runs['moola'][-1]} (load before {load})")
    print(f"\ncpus: {os.cpu_count()}, load average after: {os.getloadavg()}\n")
    print("| command | wall min s | wall median s | CPU median s | peak RSS min MiB | peak RSS max MiB |")
    print("|---|---|---|---|---|---|")
    if runs["qlib"]:
        print(_row("pyqlib 0.9.7 Alpha158 handler + fetch", runs["qlib"]))
    print(_row("moola features build --set alpha158", runs["moola"]))
    if runs["qlib"]:
        q, m = runs["qlib"], runs["moola"]
        speed_min = min(x.wall for x in q) / min(x.wall for x in m)
        speed_med = statistics.median(x.wall for x in q) / statistics.median(x.wall for x in m)
        rss = statistics.median(x.rss_mib for x in m) / statistics.median(x.rss_mib for x in q)
        print(f"\nspeed-up (qlib / moola wall): min {speed_min:.1f}x, median {speed_med:.1f}x; "
              f"moola peak RSS = {rss:.2f} of Qlib's (medians)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
