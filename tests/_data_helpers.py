"""Shared helpers for the data tests: real-price sources re-encoded in venue layouts, store
snapshots and a CLI runner that keeps stdout and stderr apart."""

from __future__ import annotations

import hashlib
import os
from datetime import UTC, datetime
from functools import lru_cache
from pathlib import Path
from typing import Any

import polars as pl
from typer.testing import CliRunner, Result

from _real_data import SHARED_DATA
from moola.cli import app

ROOT = Path(__file__).resolve().parents[1]
BUNDLED = ROOT / "data" / "bundled"
SP500_SUBSET = BUNDLED / "sp500_subset.parquet"
BTC_CSV = BUNDLED / "binanceus_BTCUSD_1m.csv"
SHARED = SHARED_DATA  # $MOOLA_SHARED_DATA or ../shared/data (tests/_real_data.py)
SHARED_PANEL = SHARED / "sp500_daily_2012_2017.parquet"
SHARED_CRYPTO = SHARED / "crypto"
CRYPTO_MARKETS = ("BTCUSD", "BTCUSDT", "BTCUSDC")

PRICE = ("open", "high", "low", "close")
OHLCV = ("open", "high", "low", "close", "volume")


def shared_crypto(market: str) -> Path:
    return SHARED_CRYPTO / f"binanceus_{market}_1m_2023-03-01_2023-03-21.csv"


# --------------------------------------------------------------------------- sources


@lru_cache(maxsize=8)
def btc_text_rows(n: int = 50, start: int = 0) -> tuple[tuple[int, tuple[str, ...]], ...]:
    """``n`` rows of the bundled BTC CSV: (epoch seconds, (o, h, l, c, v) as written)."""
    lines = BTC_CSV.read_text().splitlines()[1 + start : 1 + start + n]
    out = []
    for ln in lines:
        ts, *vals = ln.split(",")
        sec = int(datetime.fromisoformat(ts).timestamp())
        out.append((sec, tuple(vals)))
    return tuple(out)


def btc_frame(n: int = 50, start: int = 0) -> pl.DataFrame:
    """The same rows as canonical values (ts UTC ns, floats parsed from the source text)."""
    rows = btc_text_rows(n, start)
    return pl.DataFrame(
        {
            "ts": pl.Series([r[0] * 10**9 for r in rows]).cast(pl.Datetime("ns")).dt.replace_time_zone(
                "UTC"
            ),
            **{c: [float(r[1][i]) for r in rows] for i, c in enumerate(OHLCV)},
        }
    )


@lru_cache(maxsize=1)
def sp500_subset() -> pl.DataFrame:
    return pl.read_parquet(SP500_SUBSET)


def sp500_symbol(symbol: str, n: int | None = 50) -> pl.DataFrame:
    df = sp500_subset().filter(pl.col("symbol") == symbol)
    return df if n is None else df.head(n)


# ---------------------------------------------------------------- venue re-encodings


def _write(path: Path, lines: list[str]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")
    return path


def write_binance_klines(path: Path, n: int = 50, unit: str = "ms") -> Path:
    """12 headerless columns: open time, o, h, l, c, v, close time, quote volume, trades,
    taker base, taker quote, ignore."""
    mult = {"ms": 1000, "us": 1_000_000}[unit]
    lines = []
    for i, (sec, (o, h, lo, c, v)) in enumerate(btc_text_rows(n)):
        t0 = sec * mult
        t1 = (sec + 60) * mult - 1
        quote = repr(float(v) * float(c))
        lines.append(f"{t0},{o},{h},{lo},{c},{v},{t1},{quote},{100 + i},{v},{quote},0")
    return _write(path, lines)


def write_binance6(path: Path, n: int = 50, header: bool = True) -> Path:
    lines = ["open_time,open,high,low,close,volume"] if header else []
    lines += [f"{sec * 1000},{o},{h},{lo},{c},{v}" for sec, (o, h, lo, c, v) in btc_text_rows(n)]
    return _write(path, lines)


def write_kraken(path: Path, n: int = 50) -> Path:
    """Kraken OHLCVT: unix seconds, o, h, l, c, volume, trades (headerless)."""
    lines = [f"{sec},{o},{h},{lo},{c},{v},{7 + i}"
             for i, (sec, (o, h, lo, c, v)) in enumerate(btc_text_rows(n))]
    return _write(path, lines)


def write_coinbase(path: Path, n: int = 50) -> Path:
    """Coinbase candles: time, LOW, HIGH, OPEN, close, volume (headerless, unix seconds)."""
    lines = [f"{sec},{lo},{h},{o},{c},{v}" for sec, (o, h, lo, c, v) in btc_text_rows(n)]
    return _write(path, lines)


def write_yahoo(path: Path, df: pl.DataFrame, *, name: bool = False) -> Path:
    """Yahoo daily CSV (``Date,Open,High,Low,Close,Adj Close,Volume[,Name]``), values by repr."""
    head = "Date,Open,High,Low,Close,Adj Close,Volume" + (",Name" if name else "")
    lines = [head]
    for r in df.iter_rows(named=True):
        vals = [r["date"].isoformat()] + [
            "" if r[c] is None else repr(r[c])
            for c in ("open", "high", "low", "close", "adj_close", "volume")
        ]
        if name:
            vals.append(r["symbol"])
        lines.append(",".join(vals))
    return _write(path, lines)


def write_csv_lines(path: Path, lines: list[str]) -> Path:
    return _write(path, lines)


def btc_csv_lines(n: int = 50, start: int = 0) -> list[str]:
    """Lines of the bundled CSV layout (header + ISO times), first ``n`` data rows."""
    lines = BTC_CSV.read_text().splitlines()
    return [lines[0], *lines[1 + start : 1 + start + n]]


# -------------------------------------------------------------------------- checks


def assert_canonical(df: pl.DataFrame) -> None:
    """The reader contract: UTC-ns timestamps, float prices/volume, source lines, a symbol."""
    assert df.schema["ts"] == pl.Datetime("ns", "UTC")
    for c in OHLCV:
        assert df.schema[c] == pl.Float64, (c, df.schema[c])
    assert df.schema["symbol"] == pl.String
    assert df.schema["_line"] == pl.Int64 and df.get_column("_line").null_count() == 0
    assert df.schema["_file"] == pl.String
    # a row the reader could not make a bar of is a located fault for validation to count
    if "_fault" in df.columns:
        faults = df.filter(pl.col("_fault").is_not_null())
        assert set(faults.get_column("_fault").to_list()) <= {"bad_timestamp", "bad_symbol", "empty_row"}
        assert faults.get_column("_detail").null_count() == 0
        df = df.filter(pl.col("_fault").is_null())
    assert df.get_column("symbol").null_count() == 0
    assert df.get_column("ts").null_count() == 0
    if "trades" in df.columns:
        assert df.schema["trades"] == pl.Int64


def snapshot(root: Path) -> dict[str, Any]:
    """Every path under ``root`` (dirs too) with a content hash for files."""
    out: dict[str, Any] = {}
    if not root.exists():
        return out
    for p in sorted(root.rglob("*")):
        rel = str(p.relative_to(root))
        out[rel] = hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "<dir>"
    return out


def listing(root: Path) -> set[str]:
    """Relative paths under ``root``, read without opening files (safe while a writer runs)."""
    out: set[str] = set()
    for dirpath, dirnames, filenames in os.walk(root):
        rel = os.path.relpath(dirpath, root)
        for n in dirnames + filenames:
            out.add(n if rel == "." else f"{rel}/{n}")
    return out


def unreferenced_files(root: Path) -> list[str]:
    """Partition files the manifest does not reference (orphans of a crashed write)."""
    import json

    m = json.loads((root / "manifest.json").read_text())
    live = set()
    for p in m["partitions"].values():
        live.add(p["file"])
        if p.get("rejects"):
            live.add(p["rejects"])
    return sorted(
        str(f.relative_to(root))
        for f in root.glob("timeframe=*/symbol=*/*")
        if str(f.relative_to(root)) not in live
    )


# ----------------------------------------------------------------------------- CLI

_runner = CliRunner()


def cli(*args: str | Path) -> Result:
    """Run ``moola ARGS`` in-process; ``result.stderr`` and ``result.stdout`` are separate."""
    return _runner.invoke(app, [str(a) for a in args], catch_exceptions=False)


def utc(*a: int) -> datetime:
    return datetime(*a, tzinfo=UTC)
