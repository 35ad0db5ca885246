"""ohlc4: the four prices as log ratios to the previous close, the pattern models' input."""

from __future__ import annotations

import polars as pl

from moola.features._registry import FeatureSet, FeatureSpec

PRICES: tuple[str, ...] = ("open", "high", "low", "close")


def log_ratio_to_prev_close(price: str) -> pl.Expr:
    """log(price_t / close_{t-1}): scale-free, so one model serves every price level."""
    return (pl.col(price) / pl.col("close").shift(1)).log()


def ohlc_specs() -> tuple[FeatureSpec, ...]:
    """The four OHLC log-ratio specs; shared with ``relative11``."""
    return tuple(
        FeatureSpec(
            name=f"{p}_lr",
            formula=f"log({p}_t / close_(t-1))",
            lookback=1,
            expr=log_ratio_to_prev_close(p),
        )
        for p in PRICES
    )


def feature_set() -> FeatureSet:
    """Build the ``ohlc4`` set (it has no parameters)."""
    return FeatureSet(
        name="ohlc4",
        description="Open/high/low/close as log ratios to the previous close (look-back 1).",
        specs=ohlc_specs(),
        params={},
        kind="per_symbol",
        make=feature_set,
    )
