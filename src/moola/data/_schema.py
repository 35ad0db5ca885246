"""The canonical bar schema every reader produces and every consumer relies on."""

from __future__ import annotations

from datetime import timedelta
from enum import StrEnum

import polars as pl

TS_DTYPE = pl.Datetime("ns", "UTC")
PRICE_COLUMNS: tuple[str, ...] = ("open", "high", "low", "close")
REQUIRED_COLUMNS: tuple[str, ...] = ("symbol", "ts", "open", "high", "low", "close", "volume")
OPTIONAL_COLUMNS: tuple[str, ...] = ("adj_close", "trades", "is_filled")

CANONICAL_SCHEMA: dict[str, pl.DataType] = {
    "symbol": pl.String(),
    "ts": TS_DTYPE,
    "open": pl.Float64(),
    "high": pl.Float64(),
    "low": pl.Float64(),
    "close": pl.Float64(),
    "volume": pl.Float64(),
    "adj_close": pl.Float64(),
    "trades": pl.Int64(),
    "is_filled": pl.Boolean(),
}


class Timeframe(StrEnum):
    """Bar length. Intraday gaps are judged by the step; daily gaps by a trading calendar."""

    M1 = "1m"
    M5 = "5m"
    M15 = "15m"
    H1 = "1h"
    H4 = "4h"
    D1 = "1d"

    @property
    def step(self) -> timedelta:
        return {
            "1m": timedelta(minutes=1),
            "5m": timedelta(minutes=5),
            "15m": timedelta(minutes=15),
            "1h": timedelta(hours=1),
            "4h": timedelta(hours=4),
            "1d": timedelta(days=1),
        }[self.value]

    @property
    def is_intraday(self) -> bool:
        return self is not Timeframe.D1


def canonical_columns(df: pl.DataFrame) -> list[str]:
    """Canonical column order for the columns this frame has."""
    return [c for c in CANONICAL_SCHEMA if c in df.columns]


def conform(df: pl.DataFrame) -> pl.DataFrame:
    """Cast to canonical dtypes and order; extra columns are dropped."""
    cols = canonical_columns(df)
    return df.select([pl.col(c).cast(CANONICAL_SCHEMA[c]) for c in cols])


# Row faults a reader found in a line (``_fault`` column, with a ``_detail`` text); validation
# turns each into the validation reason of the same name and applies its policy.
FAULT_TIMESTAMP = "bad_timestamp"  # missing, unparseable or outside the ns range
FAULT_SYMBOL = "bad_symbol"  # outside the symbol alphabet or too long
FAULT_EMPTY = "empty_row"  # a blank line or a row of only delimiters
