"""Real-data loaders for the datasets tests: bars -> gap-marked FeatureMatrix, no features pkg."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import numpy as np
import polars as pl

from _real_data import SHARED_DATA
from moola.data._gaps import mark_gaps
from moola.data._schema import TS_DTYPE, Timeframe
from moola.features._matrix import FeatureMatrix

ROOT = Path(__file__).resolve().parents[1]
BUNDLED = ROOT / "data" / "bundled"
SHARED = SHARED_DATA  # $MOOLA_SHARED_DATA or ../shared/data (tests/_real_data.py)
FEATURE_NAMES = ("log_open", "log_high", "log_low", "log_close")


def _first_existing(*paths: Path) -> Path:
    for p in paths:
        if p.exists():
            return p
    raise FileNotFoundError(f"none of {[str(p) for p in paths]} exists")


def sp500_path() -> Path:
    return _first_existing(
        BUNDLED / "sp500_subset.parquet", SHARED / "sp500_daily_2012_2017.parquet"
    )


def crypto_path(market: str = "BTCUSD") -> Path:
    return _first_existing(
        BUNDLED / f"binanceus_{market}_1m.csv",
        SHARED / "crypto" / f"binanceus_{market}_1m_2023-03-01_2023-03-21.csv",
    )


@lru_cache(maxsize=1)
def _sp500_all() -> pl.DataFrame:
    df = pl.read_parquet(sp500_path())
    prices = ["open", "high", "low", "close", "adj_close", "volume"]
    df = df.filter(~pl.all_horizontal(pl.col(prices).is_null()))  # the all-null rows
    df = df.unique(subset=["symbol", "date"], keep="first", maintain_order=True)
    ratio = pl.col("adj_close") / pl.col("close")  # split/dividend adjustment factor
    return df.select(
        "symbol",
        pl.col("date").cast(pl.Datetime("ns")).dt.replace_time_zone("UTC").alias("ts"),
        *[(pl.col(c) * ratio).alias(c) for c in ("open", "high", "low", "close")],
        "volume",
    ).sort("symbol", "ts")


def sp500_bars(symbols: list[str] | None = None) -> pl.DataFrame:
    """Adjusted daily bars (symbol, ts, open, high, low, close, volume), cleaned."""
    df = _sp500_all()
    return df if symbols is None else df.filter(pl.col("symbol").is_in(symbols))


def sp500_calendar() -> pl.Series:
    """Union of all dates in the full file: a dropped row is a gap against this calendar."""
    return _sp500_all().get_column("ts").unique().sort()


@lru_cache(maxsize=4)
def crypto_bars(market: str = "BTCUSD") -> pl.DataFrame:
    """One market's 1-minute bars with a ``symbol`` column, cleaned."""
    df = pl.read_csv(crypto_path(market))
    df = df.select(
        pl.lit(market).alias("symbol"),
        pl.col("open_time").str.to_datetime(time_unit="ns", time_zone="UTC").alias("ts"),
        *[pl.col(c).cast(pl.Float64) for c in ("open", "high", "low", "close", "volume")],
    )
    df = df.filter(~pl.all_horizontal(pl.col("open", "high", "low", "close").is_null()))
    return df.unique(subset=["symbol", "ts"], keep="first").sort("symbol", "ts")


def log_ratio_features(bars: pl.DataFrame) -> np.ndarray:
    """(N, 4) float32 log(o,h,l,c / previous close of the same symbol); NaN on first rows."""
    ohlc = bars.select("open", "high", "low", "close").to_numpy().astype(np.float64)
    close = ohlc[:, 3]
    prev = np.empty_like(close)
    prev[0] = np.nan
    prev[1:] = close[:-1]
    sym = bars.get_column("symbol").to_numpy()
    first = np.ones(len(sym), dtype=bool)
    first[1:] = sym[1:] != sym[:-1]
    prev[first] = np.nan
    with np.errstate(invalid="ignore", divide="ignore"):
        out = np.log(ohlc / prev[:, None])
    return np.ascontiguousarray(out.astype(np.float32))


def matrix_from_bars(
    bars: pl.DataFrame,
    timeframe: Timeframe,
    calendar: pl.Series | None = None,
    is_filled: np.ndarray | None = None,
) -> FeatureMatrix:
    """FeatureMatrix of log ratios with keys gap-marked by the data package's ``mark_gaps``."""
    bars = bars.sort("symbol", "ts").with_columns(pl.col("ts").cast(TS_DTYPE))
    marked = mark_gaps(bars, timeframe, calendar)
    filled = np.zeros(bars.height, dtype=bool) if is_filled is None else is_filled
    keys = marked.select("symbol", "ts", "gap_before").with_columns(
        is_filled=pl.Series(filled, dtype=pl.Boolean)
    )
    return FeatureMatrix(
        keys=keys,
        values=log_ratio_features(bars),
        names=FEATURE_NAMES,
        set_name="test_log_ratios",
        params={},
    )


def crypto_matrix(
    markets: tuple[str, ...] = ("BTCUSD",), drop_rows: tuple[int, ...] = ()
) -> FeatureMatrix:
    """1-minute matrix; ``drop_rows`` (positions in the concatenated bars) become real gaps."""
    bars = pl.concat([crypto_bars(m) for m in markets]).sort("symbol", "ts")
    if drop_rows:
        keep = np.ones(bars.height, dtype=bool)
        keep[list(drop_rows)] = False
        bars = bars.filter(pl.Series(keep))
    return matrix_from_bars(bars, Timeframe.M1)


def sp500_matrix(symbols: list[str]) -> FeatureMatrix:
    """Daily matrix for a few symbols, gaps judged against the full file's calendar."""
    return matrix_from_bars(sp500_bars(symbols), Timeframe.D1, sp500_calendar())
