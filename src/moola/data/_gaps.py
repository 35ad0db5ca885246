"""Gap marking: the one place that decides whether two consecutive bars are adjacent."""

from __future__ import annotations

import numpy as np
import polars as pl

from moola.data._schema import Timeframe


def trading_calendar(df: pl.DataFrame) -> pl.Series:
    """The panel's own calendar: every distinct bar date seen for any symbol."""
    return df.get_column("ts").unique().sort()


def mark_gaps(
    df: pl.DataFrame, timeframe: Timeframe, calendar: pl.Series | None = None
) -> pl.DataFrame:
    """Add ``gap_before`` (bool) and ``missing_before`` (bars missing before this row).

    ``df`` must be sorted by (symbol, ts). Intraday bars are adjacent when exactly one step
    apart; daily bars when no calendar date lies strictly between them (``calendar``
    defaults to the panel's own dates, so weekends and holidays are never gaps).
    """
    if df.height == 0:
        return df.with_columns(
            gap_before=pl.lit(False, pl.Boolean), missing_before=pl.lit(0, pl.Int64)
        )
    if timeframe.is_intraday:
        step_ns = int(timeframe.step.total_seconds() * 1e9)
        diff = pl.col("ts").diff().over("symbol").dt.total_nanoseconds()
        missing = (diff // step_ns - 1).fill_null(0).clip(lower_bound=0)
        out = df.with_columns(missing_before=missing.cast(pl.Int64))
    else:
        cal = (calendar if calendar is not None else trading_calendar(df)).cast(df.schema["ts"])
        cal_ns = np.sort(cal.dt.epoch("ns").to_numpy())
        ts_ns = df.get_column("ts").dt.epoch("ns").to_numpy()
        pos = np.searchsorted(cal_ns, ts_ns)  # calendar position of each bar
        sym = df.get_column("symbol").to_numpy()
        prev_pos = np.empty_like(pos)
        prev_pos[1:] = pos[:-1]
        first = np.ones(len(pos), dtype=bool)
        first[1:] = sym[1:] != sym[:-1]
        n_missing = np.where(first, 0, np.maximum(pos - prev_pos - 1, 0))
        out = df.with_columns(missing_before=pl.Series(n_missing.astype(np.int64)))
    return out.with_columns(gap_before=pl.col("missing_before") > 0)
