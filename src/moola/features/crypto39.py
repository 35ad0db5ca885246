"""crypto39: 39 causal intraday features for 1-minute crypto candles.

Every feature uses a finite look-back window (EMAs are truncated at ``4 * span`` bars and
renormalised), so a live runtime holding the last ``max_lookback + 1`` bars reproduces the batch
values. Sums and means come from the Qlib operator kernels in ``alpha158`` (summed afresh per
window). Degenerate windows (no price move, no volume) get a defined neutral value instead
of NaN, so NaN only marks warm-up rows.
"""

from __future__ import annotations

import math

import polars as pl

from moola.features._registry import FeatureSet, FeatureSpec
from moola.features.alpha158 import mean, rsum, weighted_sum

OP, H, L, C, V = (pl.col(c) for c in ("open", "high", "low", "close", "volume"))
PREV_C = C.shift(1)
R1 = (C / PREV_C).log()
TP = (H + L + C) / 3.0
# Below these a rolling std or realised volatility counts as zero (a flat window).
STD_FLOOR = 1e-9
RVOL_FLOOR = 1e-12

RET_LAGS: tuple[int, ...] = (1, 2, 3, 5, 10, 15, 30, 60)
RVOL_WINDOWS: tuple[int, ...] = (5, 15, 30, 60)
EMA_SPAN_FACTOR = 4  # truncated EMA: 4 * span bars carry all but ~3e-4 of the weight


def ema_weights(span: int) -> list[float]:
    """Weights (oldest first) of an EMA truncated at ``EMA_SPAN_FACTOR * span`` bars."""
    alpha = 2.0 / (span + 1.0)
    n = EMA_SPAN_FACTOR * span
    w = [alpha * (1.0 - alpha) ** (n - 1 - k) for k in range(n)]
    total = math.fsum(w)
    return [x / total for x in w]


def truncated_ema(x: pl.Expr, span: int) -> pl.Expr:
    """Finite-window EMA: equal to the recursive EMA up to a 3e-4 tail, but history-free."""
    return weighted_sum(x, ema_weights(span))


def _zscore(x: pl.Expr, n: int) -> pl.Expr:
    """z-score of x over the last n bars (ddof 0); 0 for a constant window."""
    sd = x.rolling_std(n, ddof=0)
    return pl.when(sd < STD_FLOOR).then(0.0).otherwise((x - mean(x, n)) / sd)


def _safe_div(num: pl.Expr, den: pl.Expr, fallback: float, floor: float = 0.0) -> pl.Expr:
    """num / den, or ``fallback`` where |den| <= floor (a degenerate window)."""
    return pl.when(den.abs() <= floor).then(fallback).otherwise(num / den)


def _rvol(n: int) -> pl.Expr:
    """Realised volatility: root of the summed squared 1-bar log returns over n bars."""
    return rsum(R1**2, n).sqrt()


def feature_set() -> FeatureSet:
    """Build ``crypto39`` (fixed windows, no parameters)."""
    specs: list[FeatureSpec] = []
    add = specs.append

    for k in RET_LAGS:
        add(FeatureSpec(f"ret_{k}", f"log(close / close_(t-{k}))", k, (C / C.shift(k)).log()))
    for n in RVOL_WINDOWS:
        add(FeatureSpec(f"rvol_{n}", f"sqrt(sum(ret_1^2, {n}))", n, _rvol(n)))
    rms5, rms60 = _rvol(5) / math.sqrt(5), _rvol(60) / math.sqrt(60)
    add(FeatureSpec(
        "rvol_ratio_5_60", "rms(ret_1, 5) / rms(ret_1, 60); 1 when flat", 60,
        _safe_div(rms5, rms60, 1.0, RVOL_FLOOR),
    ))

    diff = C - PREV_C
    gain_sum = rsum(diff.clip(lower_bound=0.0), 14)
    move_sum = rsum(diff.abs(), 14)
    add(FeatureSpec(
        "rsi_14", "sum(up moves, 14) / sum(|moves|, 14) (Cutler RSI / 100); 0.5 when flat", 14,
        _safe_div(gain_sum, move_sum, 0.5),
    ))

    macd = (truncated_ema(C, 12) - truncated_ema(C, 26)) / C
    signal = truncated_ema(macd, 9)
    lb_macd = EMA_SPAN_FACTOR * 26 - 1
    lb_signal = lb_macd + EMA_SPAN_FACTOR * 9 - 1
    add(FeatureSpec("macd", "(EMA12(close) - EMA26(close)) / close", lb_macd, macd))
    add(FeatureSpec("macd_signal", "EMA9(macd)", lb_signal, signal))
    add(FeatureSpec("macd_hist", "macd - macd_signal", lb_signal, macd - signal))

    ma20, sd20 = mean(C, 20), C.rolling_std(20, ddof=0)
    add(FeatureSpec(
        "bb_pctb_20", "(close - (MA20 - 2 SD20)) / (4 SD20); 0.5 when flat", 19,
        pl.when(sd20 < STD_FLOOR * C).then(0.5).otherwise((C - ma20 + 2.0 * sd20) / (4.0 * sd20)),
    ))
    add(FeatureSpec("bb_width_20", "4 SD20 / MA20", 19, 4.0 * sd20 / ma20))

    tr = pl.max_horizontal(H, PREV_C) - pl.min_horizontal(L, PREV_C)
    add(FeatureSpec("atr_14", "mean(true_range, 14) / close", 14, mean(tr, 14) / C))
    add(FeatureSpec("hl_range", "log(high / low)", 0, (H / L).log()))
    add(FeatureSpec("body", "log(close / open)", 0, (C / OP).log()))
    add(FeatureSpec("upper_wick", "log(high / max(open, close))", 0,
                    (H / pl.max_horizontal(OP, C)).log()))
    add(FeatureSpec("lower_wick", "log(min(open, close) / low)", 0,
                    (pl.min_horizontal(OP, C) / L).log()))
    add(FeatureSpec("close_pos", "(close - low) / (high - low); 0.5 when high == low", 0,
                    pl.when(H == L).then(0.5).otherwise((C - L) / (H - L))))

    log_vol = V.log1p()
    for n in (20, 60):
        add(FeatureSpec(f"vol_z_{n}", f"z-score of log(1 + volume) over {n} bars", n - 1,
                        _zscore(log_vol, n)))
    for n in (30, 60):
        vol_n = rsum(V, n)
        vwap = pl.when(vol_n > 0).then(rsum(TP * V, n) / vol_n).otherwise(mean(TP, n))
        add(FeatureSpec(
            f"vwap_dist_{n}",
            f"log(close / VWAP_{n}), VWAP over the last {n} bars of typical price "
            "(mean typical price when no volume)",
            n - 1, (C / vwap).log(),
        ))
    add(FeatureSpec(
        "volume_share_5_60", "sum(volume, 5) / sum(volume, 60); 5/60 when no volume", 59,
        _safe_div(rsum(V, 5), rsum(V, 60), 5.0 / 60.0),
    ))

    add(FeatureSpec("dist_max_60", "log(close / max(high, 60))", 59, (C / H.rolling_max(60)).log()))
    add(FeatureSpec("dist_min_60", "log(close / min(low, 60))", 59, (C / L.rolling_min(60)).log()))
    add(FeatureSpec("ma_dist_60", "log(close / mean(close, 60))", 59,
                    (C / mean(C, 60)).log()))
    add(FeatureSpec("up_frac_30", "mean(close > close_(t-1), 30)", 30,
                    mean((C > PREV_C).cast(pl.Float64), 30)))
    add(FeatureSpec(
        "efficiency_30", "|log(close / close_(t-30))| / sum(|ret_1|, 30); 0 when flat", 30,
        _safe_div((C / C.shift(30)).log().abs(), rsum(R1.abs(), 30), 0.0, RVOL_FLOOR),
    ))

    minute = pl.col("ts").dt.hour().cast(pl.Float64) * 60.0 + pl.col("ts").dt.minute()
    tod = minute * (2.0 * math.pi / 1440.0)
    dow = (pl.col("ts").dt.weekday().cast(pl.Float64) - 1.0) * (2.0 * math.pi / 7.0)
    add(FeatureSpec("tod_sin", "sin(2 pi minute_of_day_utc / 1440)", 0, tod.sin()))
    add(FeatureSpec("tod_cos", "cos(2 pi minute_of_day_utc / 1440)", 0, tod.cos()))
    add(FeatureSpec("dow_sin", "sin(2 pi (weekday - 1) / 7), Monday = 1", 0, dow.sin()))
    add(FeatureSpec("dow_cos", "cos(2 pi (weekday - 1) / 7), Monday = 1", 0, dow.cos()))

    return FeatureSet(
        name="crypto39",
        description=(
            "39 causal intraday features for 1-minute candles: multi-lag log returns, realised "
            "volatility, RSI, MACD, Bollinger, ATR, bar shape, volume z-scores, rolling VWAP "
            "distance, range position, and UTC time-of-day / day-of-week cycles."
        ),
        specs=tuple(specs),
        params={},
        kind="per_symbol",
        make=feature_set,
    )
