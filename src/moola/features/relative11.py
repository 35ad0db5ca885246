"""relative11: eleven scale-free descriptors of each bar, comparable across assets and eras."""

from __future__ import annotations

import polars as pl

from moola.features._registry import FeatureSet, FeatureSpec
from moola.features.alpha158 import mean
from moola.features.ohlc4 import ohlc_specs

OP, H, L, C, V = (pl.col(c) for c in ("open", "high", "low", "close", "volume"))
PREV_C = C.shift(1)
# Below this a rolling std of log-volume is treated as zero (constant volume: z-score 0).
STD_FLOOR = 1e-9


def true_range() -> pl.Expr:
    """Wilder's true range: the bar's range extended to the previous close (gaps count)."""
    return pl.max_horizontal(H, PREV_C) - pl.min_horizontal(L, PREV_C)


def feature_set(atr: int = 14, volume_z: int = 20, ret_z: int = 20) -> FeatureSet:
    """Build ``relative11``; the three windows are parameters so the schema hash covers them.

    Wicks are log ratios (high over the body top, body bottom over low), i.e. relative to the
    price level rather than to the bar's range, so a flat bar (high == low) gives 0, not 0/0.
    """
    if min(atr, volume_z, ret_z) < 2:
        raise ValueError(f"relative11 windows must be >= 2, got {atr=}, {volume_z=}, {ret_z=}")
    log_vol = V.log1p()
    vol_mean = mean(log_vol, volume_z)
    vol_std = log_vol.rolling_std(volume_z, ddof=0)
    close_lr = (C / PREV_C).log()
    rms = mean(close_lr**2, ret_z).sqrt()
    atr_expr = mean(true_range(), atr)
    specs = (
        *ohlc_specs(),
        FeatureSpec("body_lr", "log(close / open)", 0, (C / OP).log()),
        FeatureSpec(
            "upper_wick_lr", "log(high / max(open, close))", 0,
            (H / pl.max_horizontal(OP, C)).log(),
        ),
        FeatureSpec(
            "lower_wick_lr", "log(min(open, close) / low)", 0,
            (pl.min_horizontal(OP, C) / L).log(),
        ),
        FeatureSpec(
            f"range_atr{atr}",
            f"(high - low) / mean(true_range, {atr}); 0 when high == low",
            atr,
            pl.when(H == L).then(0.0).otherwise((H - L) / atr_expr),
        ),
        FeatureSpec(
            f"volume_z{volume_z}",
            f"z-score of log(1 + volume) over {volume_z} bars (ddof 0); 0 when constant",
            volume_z - 1,
            pl.when(vol_std < STD_FLOOR).then(0.0).otherwise((log_vol - vol_mean) / vol_std),
        ),
        FeatureSpec(
            "close_pos",
            "(close - low) / (high - low); 0.5 when high == low",
            0,
            pl.when(H == L).then(0.5).otherwise((C - L) / (H - L)),
        ),
        FeatureSpec(
            f"ret_z{ret_z}",
            f"close_lr / sqrt(mean(close_lr^2, {ret_z})); 0 when close_lr == 0",
            ret_z,
            pl.when(close_lr == 0).then(0.0).otherwise(close_lr / rms),
        ),
    )
    return FeatureSet(
        name="relative11",
        description=(
            "Eleven scale-free bar descriptors: OHLC log ratios to the previous close, body, "
            "wicks, range over ATR, log-volume z-score, close position in the range and the "
            "close return in units of recent volatility."
        ),
        specs=specs,
        params={"atr": atr, "volume_z": volume_z, "ret_z": ret_z},
        kind="per_symbol",
        make=feature_set,
    )
