"""Real-data loaders for the feature tests: the bundled subsets, else the shared full files.

Both are converted to the canonical bar schema here (ts as UTC ns, all-null rows dropped,
duplicate (symbol, ts) keys resolved keeping the last, sorted by symbol and ts).
"""

from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path

import polars as pl
import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED_ENV = "MOOLA_SHARED_DATA"


def shared_data_dir() -> Path:
    """The shared real data (the folder holding ``sp500_daily_2012_2017.parquet``):
    ``$MOOLA_SHARED_DATA`` when set, else ``../shared/data`` beside the repository root."""
    env = os.environ.get(SHARED_ENV, "").strip()
    return Path(env).expanduser().resolve() if env else ROOT.parent / "shared" / "data"


def in_ci() -> bool:
    """CI sets ``CI`` (``true``/``1``); there the shared data must be present."""
    return os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")


def require_shared(path: Path) -> Path:
    """``path`` under the shared data, or a skip on a machine without it. Under CI a missing
    file fails the test instead: the assertions on the full data must never skip silently."""
    if path.exists():
        return path
    why = (f"{path} is missing: the shared data is found at {SHARED_ENV} or ../shared/data "
           "relative to the repository root")
    if in_ci():
        pytest.fail(f"{why}, and CI is set, where it must be present")
    pytest.skip(why)


SHARED_DATA = shared_data_dir()
BUNDLED_DAILY = ROOT / "data" / "bundled" / "sp500_subset.parquet"
SHARED_DAILY = SHARED_DATA / "sp500_daily_2012_2017.parquet"
BUNDLED_CRYPTO = ROOT / "data" / "bundled" / "binanceus_BTCUSD_1m.csv"
SHARED_CRYPTO = SHARED_DATA / "crypto" / "binanceus_BTCUSD_1m_2023-03-01_2023-03-21.csv"
DAILY_VALUES = ("open", "high", "low", "close", "adj_close", "volume")
OHLCV = ("open", "high", "low", "close", "volume")


def _first_existing(*paths: Path) -> Path:
    """The first path that exists; a missing fixture is a failure, never a skip."""
    for p in paths:
        if p.exists():
            return p
    raise FileNotFoundError(f"no real-data fixture found; looked for {[str(p) for p in paths]}")


@lru_cache(maxsize=1)
def _daily_all() -> pl.DataFrame:
    raw = pl.read_parquet(_first_existing(BUNDLED_DAILY, SHARED_DAILY))
    return (
        raw.filter(~pl.all_horizontal(pl.col(DAILY_VALUES).is_null()))
        .with_columns(pl.col("date").cast(pl.Datetime("ns", "UTC")).alias("ts"))
        .unique(["symbol", "ts"], keep="last", maintain_order=True)
        .sort("symbol", "ts")
        .select("symbol", "ts", *[pl.col(c).cast(pl.Float64) for c in DAILY_VALUES])
    )


def daily_symbols() -> list[str]:
    """Symbols of the daily fixture, sorted."""
    return sorted(_daily_all().get_column("symbol").unique().to_list())


def load_daily(
    symbols: tuple[str, ...] | None = None, max_rows_per_symbol: int | None = None
) -> pl.DataFrame:
    """Canonical daily stock bars (with adj_close), optionally a few symbols / first rows."""
    df = _daily_all()
    if symbols is not None:
        df = df.filter(pl.col("symbol").is_in(list(symbols)))
    if max_rows_per_symbol is not None:
        df = df.filter(pl.int_range(pl.len()).over("symbol") < max_rows_per_symbol)
    return df


def clean_daily_symbols(n: int) -> tuple[str, ...]:
    """``n`` symbols with no zero-volume bar and no flat (high == low) bar: no degenerate
    windows, so every feature must be finite after its warm-up."""
    stats = _daily_all().group_by("symbol").agg(
        ((pl.col("volume") <= 0) | (pl.col("high") == pl.col("low"))).sum().alias("bad"),
        pl.len().alias("n"),
    )
    ok = stats.filter((pl.col("bad") == 0) & (pl.col("n") >= 200)).get_column("symbol")
    return tuple(sorted(ok.to_list())[:n])


@lru_cache(maxsize=1)
def _crypto_all() -> pl.DataFrame:
    raw = pl.read_csv(_first_existing(BUNDLED_CRYPTO, SHARED_CRYPTO))
    return (
        raw.with_columns(
            pl.col("open_time").str.to_datetime(time_zone="UTC").cast(pl.Datetime("ns", "UTC"))
        )
        .select(
            pl.lit("BTCUSD").alias("symbol"),
            pl.col("open_time").alias("ts"),
            *[pl.col(c).cast(pl.Float64) for c in OHLCV],
        )
        .unique(["symbol", "ts"], keep="last", maintain_order=True)
        .sort("symbol", "ts")
    )


def load_crypto(n_rows: int | None = None, offset: int = 0) -> pl.DataFrame:
    """Canonical 1-minute BTCUSD bars (no adj_close), optionally a slice."""
    df = _crypto_all()
    return df.slice(offset, n_rows) if n_rows is not None else df.slice(offset)


def two_crypto_symbols(n_rows: int, offset_b: int) -> pl.DataFrame:
    """Two real 1-minute series as a two-symbol panel: BTCUSD and a later stretch of it
    relabelled ``BTCUSD_B`` (the bundled file holds one market)."""
    a = load_crypto(n_rows)
    b = load_crypto(n_rows, offset_b).with_columns(pl.lit("BTCUSD_B").alias("symbol"))
    return pl.concat([a, b]).sort("symbol", "ts")
