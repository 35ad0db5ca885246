"""alpha158: Qlib's Alpha158 factor set, formula for formula, as Polars expressions.

Formulas follow ``qlib/contrib/data/loader.py`` (``Alpha158DL.get_feature_config``) and the
operator semantics of ``qlib/data/ops.py``. Two alignments (the ``align`` parameter, part of the
schema hash):

* ``bars`` (default): a d-day window is the symbol's last d bars, so a window spans a missing
  day; NaN until the window is full (warm-up) and NaN if it holds a missing or non-finite input.
* ``calendar``: Qlib's semantics. Every symbol is laid on the panel's calendar (the union of
  the frame's dates) between its first and last bar, a missing day being an empty slot; rolling
  operators skip empty slots and need one value (pandas ``min_periods=1``; Std two, Slope and
  Corr two); ``$close>Ref($close, 1)`` on an empty slot counts as False, as NumPy compares NaN;
  IdxMax/IdxMin return the first empty slot of a window that holds one (``np.argmax`` on NaN).
  Rows are output for the real bars only.

``bars`` is evaluated by a compiled kernel (``_alpha158_numba``, the same formulas in one Numba
pass, 6.8x these expressions on the full panel); the expressions below are the definition,
which tests/test_alpha158_kernel.py holds the kernel to, and they evaluate ``calendar``.

Deviations, in both: ``$vwap`` does not exist in our bars, VWAP0 uses the typical price
(high + low + close) / 3; inf becomes NaN. Prices are split/dividend adjusted by the builder
(factor = adj_close / close), as in Qlib.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
import polars as pl

from moola.features._aot import kernel_function
from moola.features._build import BAR_COLUMNS
from moola.features._registry import FeatureSet, FeatureSpec

OP, H, L, C, V = (pl.col(c) for c in ("open", "high", "low", "close", "volume"))
EPS = 1e-12
# Qlib sets Corr and Rsquare to NaN where a rolling std is np.isclose(.., 0, atol=2e-5).
STD_ATOL = 2e-5
DEFAULT_WINDOWS: tuple[int, ...] = (5, 10, 20, 30, 60)
# compiled kernels this module runs: their source is part of the set's code hash
KERNEL_MODULES: tuple[str, ...] = ("moola.features._alpha158_numba",)
_SHIFT = 2**32  # IdxMax/IdxMin key: rank in the high bits, reversed row index in the low bits

# Helper columns computed once before the features (names start with "_").
_ROW = pl.col("_row")
_DC, _DV = pl.col("_dc"), pl.col("_dv")  # $close - Ref($close, 1), same for volume
_RET = pl.col("_ret")  # $close / Ref($close, 1)


def _aux() -> tuple[tuple[str, pl.Expr], ...]:
    """Row number, first differences and the IdxMax/IdxMin keys, shared by many features."""
    row = pl.int_range(pl.len(), dtype=pl.Int64)
    return (
        ("_row", row),
        ("_dc", C - C.shift(1)),
        ("_dv", V - V.shift(1)),
        ("_ret", C / C.shift(1)),
        ("_lvr", finite((V / V.shift(1) + 1).log())),
        ("_hkey", _extreme_key(H, row, descending=False)),
        ("_lkey", _extreme_key(L, row, descending=True)),
    )


def _aux_calendar() -> tuple[tuple[str, pl.Expr], ...]:
    """The calendar set's helpers: the differences, and Qlib's float32 arithmetic where it
    rounds a ratio near 1 (the return, the volume ratio) or takes a log (``_lv``)."""
    c32, v32 = C.cast(pl.Float32), V.cast(pl.Float32)
    return (
        ("_dc", C - C.shift(1)),
        ("_dv", V - V.shift(1)),
        ("_ret", c32 / c32.shift(1)),
        ("_lvr", finite((v32 / v32.shift(1) + 1).log())),
        ("_lv", (v32 + 1).log()),
        ("_wv", finite((c32 / c32.shift(1) - 1).abs() * v32)),
    )


# ---- Qlib operators ---------------------------------------------------------------------


def ref(x: pl.Expr, d: int) -> pl.Expr:
    """Ref(x, d): the value d bars ago."""
    return x.shift(d)


def mean(x: pl.Expr, d: int) -> pl.Expr:
    """Mean(x, d), from the direct window sum (see ``rsum``)."""
    return rsum(x, d) / d


def std(x: pl.Expr, d: int) -> pl.Expr:
    """Std(x, d): sample std (ddof=1), as pandas rolling std."""
    return x.rolling_std(d, ddof=1)


def rsum(x: pl.Expr, d: int) -> pl.Expr:
    """Sum(x, d), summed afresh for every window (see ``weighted_sum``)."""
    return weighted_sum(x, [1.0] * d)


def rmax(x: pl.Expr, d: int) -> pl.Expr:
    """Max(x, d): exact, a window's max does not depend on earlier bars."""
    return x.rolling_max(d)


def rmin(x: pl.Expr, d: int) -> pl.Expr:
    """Min(x, d)."""
    return x.rolling_min(d)


def greater(x: pl.Expr, value: float) -> pl.Expr:
    """Greater(x, value): elementwise max (a null stays null)."""
    return x.clip(lower_bound=value)


def finite(x: pl.Expr) -> pl.Expr:
    """x with inf/NaN turned into null, so a bad value only spoils the windows that hold it."""
    return pl.when(x.is_finite()).then(x)


def quantile(x: pl.Expr, d: int, q: float) -> pl.Expr:
    """Quantile(x, d, q): linear interpolation, as pandas rolling quantile."""
    return x.rolling_quantile(q, interpolation="linear", window_size=d)


def _rank_counts(x: np.ndarray, d: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Each window's last value and how many of the d - 1 values before it are below / equal
    (d - 1 vectorised shifted comparisons; NaN compares false). Needs len(x) >= d."""
    n = len(x)
    last = x[d - 1 :]
    below = np.zeros(n - d + 1)
    ties = np.zeros(n - d + 1)
    for k in range(1, d):
        prev = x[d - 1 - k : n - k]
        below += prev < last
        ties += prev == last
    return last, below, ties


def rolling_pct_rank(x: np.ndarray, d: int) -> np.ndarray:
    """Percentile rank of each value among the last d values (average ties), NaN-aware.

    d - 1 vectorised shifted comparisons over the whole array: exact, and for d <= 60 several
    times cheaper than a rolling sort. A window holding a NaN gives NaN.
    """
    n = len(x)
    out = np.full(n, np.nan)
    if n < d:
        return out
    _, below, ties = _rank_counts(x, d)
    bad = np.concatenate(([0], np.cumsum(np.isnan(x))))
    has_nan = (bad[d:] - bad[:-d]) > 0
    out[d - 1 :] = np.where(has_nan, np.nan, (below + 1.0 + 0.5 * ties) / d)
    return out


def rank(x: pl.Expr, d: int) -> pl.Expr:
    """Rank(x, d): pandas ``rolling(d).rank(pct=True)`` of the last value (average ties)."""
    return x.cast(pl.Float64).map_batches(
        lambda s: pl.Series(s.name, rolling_pct_rank(s.to_numpy(), d), nan_to_null=True),
        return_dtype=pl.Float64,
    )


def _extreme_key(x: pl.Expr, row: pl.Expr, *, descending: bool) -> pl.Expr:
    """``rank(x) * 2^32 + (2^32 - 1 - row)``: its rolling max is the first max of x in the window."""
    r = x.rank("dense", descending=descending).cast(pl.Int64)
    return r * _SHIFT + (_SHIFT - 1 - row)


def _idx_from_key(key: pl.Expr, d: int) -> pl.Expr:
    """1-based window position of the first extreme (numpy argmax + 1, as Qlib's IdxMax)."""
    best_row = (_SHIFT - 1) - key.rolling_max(d) % _SHIFT
    return (best_row - _ROW + d).cast(pl.Float64)


def idxmax_high(d: int) -> pl.Expr:
    """IdxMax($high, d)."""
    return _idx_from_key(pl.col("_hkey"), d)


def idxmin_low(d: int) -> pl.Expr:
    """IdxMin($low, d)."""
    return _idx_from_key(pl.col("_lkey"), d)


def _centered_weights(d: int) -> tuple[list[float], float, float]:
    """Weights k - mean(k) for k = 1..d (oldest first), their mean and sum of squares."""
    kbar = (d + 1) / 2.0
    return [k - kbar for k in range(1, d + 1)], kbar, d * (d * d - 1) / 12.0


def window_dot(x: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """out[i] = sum_j weights[j] * x[i - d + 1 + j] (weights oldest first); NaN until i >= d - 1.

    A direct convolution: every window is summed on its own, so a window of zeros sums to
    exactly 0 and a symbol's sums do not depend on the bars before its window. (Polars' plain
    rolling sum keeps a running total whose rounding residue, divided by Qlib's +1e-12
    denominators, turns flat windows into noise.) A NaN spoils only the windows holding it.
    """
    d = len(weights)
    if len(x) == 0:
        return np.empty(0)
    out = np.convolve(x, weights[::-1])[: len(x)]
    out[: d - 1] = np.nan
    return out


def weighted_sum(x: pl.Expr, weights: list[float]) -> pl.Expr:
    """Rolling sum of x * weights (oldest first), via ``window_dot``; null in, null out."""
    w = np.asarray(weights, dtype=np.float64)
    return x.cast(pl.Float64).map_batches(
        lambda s: pl.Series(s.name, window_dot(s.to_numpy(), w), nan_to_null=True),
        return_dtype=pl.Float64,
    )


def slope(x: pl.Expr, d: int) -> pl.Expr:
    """Slope(x, d): OLS slope of x on 1..d (a weighted rolling sum, no cancellation)."""
    w, _, sxx = _centered_weights(d)
    return weighted_sum(x, w) / sxx


def rsquare(x: pl.Expr, d: int) -> pl.Expr:
    """Rsquare(x, d): R^2 of that regression; NaN where Std(x, d) ~ 0, as Qlib."""
    w, _, sxx = _centered_weights(d)
    var = x.rolling_var(d, ddof=1)
    r2 = weighted_sum(x, w) ** 2 / (sxx * var * (d - 1))
    return pl.when(var <= STD_ATOL**2).then(None).otherwise(r2)


def resi(x: pl.Expr, d: int) -> pl.Expr:
    """Resi(x, d): residual of the last point, x - (slope * d + intercept)."""
    _, kbar, _ = _centered_weights(d)
    return x - (mean(x, d) + slope(x, d) * (d - kbar))


def corr(a: pl.Expr, b: pl.Expr, d: int) -> pl.Expr:
    """Corr(a, b, d): Pearson correlation; NaN where either Std ~ 0, as Qlib."""
    sa, sb = std(a, d), std(b, d)
    cov = (rsum(a * b, d) - rsum(a, d) * rsum(b, d) / d) / (d - 1)
    return pl.when((sa <= STD_ATOL) | (sb <= STD_ATOL)).then(None).otherwise(cov / (sa * sb))


# ---- Qlib's calendar semantics (align="calendar") ---------------------------------------
# The builder lays each symbol on the panel calendar and prepends ``max_lookback + 1`` padding
# rows (``_pad`` True): a window at a symbol's start then holds padding, which every operator
# below skips exactly as pandas/Qlib skip the slots before a series starts.

_PAD = pl.col("_pad")


def _valid(x: np.ndarray) -> np.ndarray:
    """1.0 where x holds a value, 0.0 at an empty slot (NaN)."""
    return (~np.isnan(x)).astype(np.float64)


def _skip_sums(x: np.ndarray, d: int) -> tuple[np.ndarray, np.ndarray]:
    """Direct window sums of the values present and their count (empty slots skipped)."""
    ones = np.ones(d)
    return window_dot(np.where(np.isnan(x), 0.0, x), ones), window_dot(_valid(x), ones)


def _np_op(x: pl.Expr, kernel: Callable[[np.ndarray], np.ndarray]) -> pl.Expr:
    """A NumPy window kernel over a float64 column; NaN out is null."""
    return x.cast(pl.Float64).map_batches(
        lambda s: pl.Series(s.name, kernel(s.to_numpy()), nan_to_null=True),
        return_dtype=pl.Float64,
    )


def cal_sum(x: pl.Expr, d: int) -> pl.Expr:
    """Sum(x, d), min_periods=1: the values present, NaN if none."""
    def kernel(a: np.ndarray) -> np.ndarray:
        total, n = _skip_sums(a, d)
        return np.where(n > 0, total, np.nan)
    return _np_op(x, kernel)


def cal_mean(x: pl.Expr, d: int) -> pl.Expr:
    """Mean(x, d), min_periods=1: mean of the values present."""
    def kernel(a: np.ndarray) -> np.ndarray:
        total, n = _skip_sums(a, d)
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(n > 0, total / n, np.nan)
    return _np_op(x, kernel)


def cal_std(x: pl.Expr, d: int) -> pl.Expr:
    """Std(x, d): sample std of the values present (two needed), as pandas."""
    return x.cast(pl.Float64).rolling_std(d, ddof=1, min_samples=1)


def cal_max(x: pl.Expr, d: int) -> pl.Expr:
    """Max(x, d), min_periods=1."""
    return x.cast(pl.Float64).rolling_max(d, min_samples=1)


def cal_min(x: pl.Expr, d: int) -> pl.Expr:
    """Min(x, d), min_periods=1."""
    return x.cast(pl.Float64).rolling_min(d, min_samples=1)


def cal_quantile(x: pl.Expr, d: int, q: float) -> pl.Expr:
    """Quantile(x, d, q), min_periods=1, linear interpolation over the values present."""
    return x.cast(pl.Float64).rolling_quantile(q, interpolation="linear", window_size=d,
                                               min_samples=1)


def cal_pct_rank(x: np.ndarray, d: int) -> np.ndarray:
    """pandas ``rolling(d, min_periods=1).rank(pct=True)``: rank of the last value among the
    values present (average ties) over their count; NaN where the last value is missing."""
    n = len(x)
    out = np.full(n, np.nan)
    if n < d:
        return out
    last, below, ties = _rank_counts(x, d)
    count = window_dot(_valid(x), np.ones(d))[d - 1 :]
    with np.errstate(invalid="ignore", divide="ignore"):
        out[d - 1 :] = np.where(np.isnan(last), np.nan, (below + 1.0 + 0.5 * ties) / count)
    return out


def cal_rank(x: pl.Expr, d: int) -> pl.Expr:
    """Rank(x, d) with Qlib's min_periods=1."""
    return _np_op(x, lambda a: cal_pct_rank(a, d))


def cal_first_extreme(x: np.ndarray, pad: np.ndarray, d: int, *, largest: bool) -> np.ndarray:
    """1-based position of ``np.argmax`` (or argmin) in each window of the slots after padding.

    An empty slot (NaN) wins, as np.argmax returns the first NaN; padding never does, and the
    position counts from the first slot after it (pandas hands min_periods=1 windows over).
    """
    n = len(x)
    out = np.full(n, np.nan)
    if n < d:
        return out
    win = np.inf if largest else -np.inf
    z = np.where(pad, -win, np.where(np.isnan(x), win, x))
    views = np.lib.stride_tricks.sliding_window_view(z, d)  # (n - d + 1, d)
    at = views.argmax(axis=1) if largest else views.argmin(axis=1)
    pads = window_dot(pad.astype(np.float64), np.ones(d))[d - 1 :]
    out[d - 1 :] = at - pads + 1.0
    out[pad] = np.nan
    return out


def _cal_idx(x: pl.Expr, d: int, *, largest: bool) -> pl.Expr:
    """IdxMax/IdxMin(x, d) under Qlib's calendar semantics (see ``cal_first_extreme``)."""
    return pl.struct(x.cast(pl.Float64).alias("x"), _PAD.alias("p")).map_batches(
        lambda s: pl.Series(s.name, cal_first_extreme(
            s.struct.field("x").to_numpy(), s.struct.field("p").to_numpy(), d, largest=largest,
        ), nan_to_null=True),
        return_dtype=pl.Float64,
    )


def _regression_sums(y: np.ndarray, d: int) -> tuple[np.ndarray, ...]:
    """n, sum k, sum k^2, sum y, sum k*y, sum y^2 over the values present, k = 1..d oldest first."""
    m = _valid(y)
    y0 = np.where(np.isnan(y), 0.0, y)
    k = np.arange(1, d + 1, dtype=np.float64)
    ones = np.ones(d)
    return (window_dot(m, ones), window_dot(m, k), window_dot(m, k * k), window_dot(y0, ones),
            window_dot(y0, k), window_dot(y0 * y0, ones))


def cal_regression(y: np.ndarray, d: int, what: str) -> np.ndarray:
    """Qlib's Cython rolling Slope / Rsquare / Resi: the values present regressed on their slot
    positions 1..d; NaN with fewer than two values (0/0)."""
    n, sk, skk, sy, sky, syy = _regression_sums(y, d)
    with np.errstate(invalid="ignore", divide="ignore"):
        num = n * sky - sk * sy
        den = n * skk - sk * sk
        b = np.where(n >= 2, num / den, np.nan)
        if what == "slope":
            return b
        if what == "rsquare":
            return num * num / (den * (n * syy - sy * sy)) * np.where(n >= 2, 1.0, np.nan)
        return y - (b * d + (sy / n - b * sk / n))


def cal_slope(x: pl.Expr, d: int) -> pl.Expr:
    """Slope(x, d), Qlib calendar semantics."""
    return _np_op(x, lambda a: cal_regression(a, d, "slope"))


def cal_rsquare(x: pl.Expr, d: int) -> pl.Expr:
    """Rsquare(x, d); NaN where Std(x, d) <= 2e-5, as Qlib."""
    r2 = _np_op(x, lambda a: cal_regression(a, d, "rsquare"))
    return pl.when(cal_std(x, d) <= STD_ATOL).then(None).otherwise(r2)


def cal_resi(x: pl.Expr, d: int) -> pl.Expr:
    """Resi(x, d), Qlib calendar semantics."""
    return _np_op(x, lambda a: cal_regression(a, d, "resi"))


def cal_corr(a: pl.Expr, b: pl.Expr, d: int) -> pl.Expr:
    """Corr(a, b, d) as pandas' rolling corr: pairwise-complete values; NaN where either
    series' own Std ~ 0, as Qlib. Computed in float64, as pandas upcasts float32."""
    a, b = a.cast(pl.Float64), b.cast(pl.Float64)
    both = a.is_not_null() & b.is_not_null()
    a2, b2 = pl.when(both).then(a), pl.when(both).then(b)
    n = both.cast(pl.Float64).rolling_sum(d, min_samples=1)
    cov = (cal_sum(a2 * b2, d) - cal_sum(a2, d) * cal_sum(b2, d) / n) / (n - 1)
    r = cov / (cal_std(a2, d) * cal_std(b2, d))
    return pl.when((cal_std(a, d) <= STD_ATOL) | (cal_std(b, d) <= STD_ATOL)).then(None).otherwise(r)


@dataclass(frozen=True)
class _Ops:
    """The rolling operators of one alignment."""

    rsum: Callable[[pl.Expr, int], pl.Expr]
    mean: Callable[[pl.Expr, int], pl.Expr]
    std: Callable[[pl.Expr, int], pl.Expr]
    rmax: Callable[[pl.Expr, int], pl.Expr]
    rmin: Callable[[pl.Expr, int], pl.Expr]
    quantile: Callable[[pl.Expr, int, float], pl.Expr]
    rank: Callable[[pl.Expr, int], pl.Expr]
    idxmax_high: Callable[[int], pl.Expr]
    idxmin_low: Callable[[int], pl.Expr]
    slope: Callable[[pl.Expr, int], pl.Expr]
    rsquare: Callable[[pl.Expr, int], pl.Expr]
    resi: Callable[[pl.Expr, int], pl.Expr]
    corr: Callable[[pl.Expr, pl.Expr, int], pl.Expr]


_BAR_OPS = _Ops(rsum, mean, std, rmax, rmin, quantile, rank, idxmax_high, idxmin_low, slope,
                rsquare, resi, corr)
_CALENDAR_OPS = _Ops(
    cal_sum, cal_mean, cal_std, cal_max, cal_min, cal_quantile, cal_rank,
    lambda d: _cal_idx(H, d, largest=True), lambda d: _cal_idx(L, d, largest=False),
    cal_slope, cal_rsquare, cal_resi, cal_corr,
)


# ---- the feature list -------------------------------------------------------------------


def _kbar_price() -> list[FeatureSpec]:
    """The 9 candlestick (KBAR) and 4 price features: single-bar ratios, no look-back."""
    hi_oc, lo_oc = pl.max_horizontal(OP, C), pl.min_horizontal(OP, C)
    rng = H - L + EPS
    vwap = (H + L + C) / 3.0
    return [
        FeatureSpec("KMID", "($close-$open)/$open", 0, (C - OP) / OP),
        FeatureSpec("KLEN", "($high-$low)/$open", 0, (H - L) / OP),
        FeatureSpec("KMID2", "($close-$open)/($high-$low+1e-12)", 0, (C - OP) / rng),
        FeatureSpec("KUP", "($high-Greater($open, $close))/$open", 0, (H - hi_oc) / OP),
        FeatureSpec("KUP2", "($high-Greater($open, $close))/($high-$low+1e-12)", 0,
                    (H - hi_oc) / rng),
        FeatureSpec("KLOW", "(Less($open, $close)-$low)/$open", 0, (lo_oc - L) / OP),
        FeatureSpec("KLOW2", "(Less($open, $close)-$low)/($high-$low+1e-12)", 0,
                    (lo_oc - L) / rng),
        FeatureSpec("KSFT", "(2*$close-$high-$low)/$open", 0, (2 * C - H - L) / OP),
        FeatureSpec("KSFT2", "(2*$close-$high-$low)/($high-$low+1e-12)", 0,
                    (2 * C - H - L) / rng),
        FeatureSpec("OPEN0", "$open/$close", 0, OP / C),
        FeatureSpec("HIGH0", "$high/$close", 0, H / C),
        FeatureSpec("LOW0", "$low/$close", 0, L / C),
        FeatureSpec("VWAP0", "$vwap/$close with $vwap := ($high+$low+$close)/3", 0, vwap / C),
    ]


# operator -> (Qlib formula template, look-back as a function of d, expression builder)
_Rolling = tuple[str, Callable[[int], int], Callable[[int], pl.Expr]]


def _full(d: int) -> int:
    """Look-back of a d-bar window over raw fields: the d - 1 previous bars."""
    return d - 1


def _diff(d: int) -> int:
    """Look-back of a d-bar window over first differences (or of Ref(x, d)): d bars."""
    return d


def _rolling_ops(align: str = "bars") -> dict[str, _Rolling]:
    """The 29 rolling operators in Qlib's order, each as (formula, look-back, builder)."""
    cal = align == "calendar"
    o = _CALENDAR_OPS if cal else _BAR_OPS
    up, down, absd = greater(_DC, 0), greater(-_DC, 0), _DC.abs()
    vup, vdown, vabs = greater(_DV, 0), greater(-_DV, 0), _DV.abs()
    wv = pl.col("_wv") if cal else finite((_RET - 1).abs() * V)
    log_v = pl.col("_lv") if cal else (V + 1).log()
    cnt_up = (_DC > 0).cast(pl.Float64)
    cnt_dn = (_DC < 0).cast(pl.Float64)
    if cal:  # NaN > x is False in NumPy: an empty slot counts as "not up"; padding is skipped
        cnt_up = pl.when(_PAD).then(None).otherwise(cnt_up.fill_null(0.0))
        cnt_dn = pl.when(_PAD).then(None).otherwise(cnt_dn.fill_null(0.0))
    memo: dict[tuple[str, int], pl.Expr] = {}

    def shared(key: str, x: pl.Expr, d: int) -> pl.Expr:
        """One Sum(x, d) expression object per (quantity, window): Polars' common-subexpression
        elimination then computes it once for all the features of a batch that use it."""
        if (key, d) not in memo:
            memo[key, d] = o.rsum(x, d)
        return memo[key, d]

    def sump(d: int) -> pl.Expr:
        return shared("up", up, d) / (shared("abs", absd, d) + EPS)

    def sumn(d: int) -> pl.Expr:
        return shared("down", down, d) / (shared("abs", absd, d) + EPS)

    def sumd(d: int) -> pl.Expr:
        return (shared("up", up, d) - shared("down", down, d)) / (shared("abs", absd, d) + EPS)

    def vsump(d: int) -> pl.Expr:
        return shared("vup", vup, d) / (shared("vabs", vabs, d) + EPS)

    def vsumn(d: int) -> pl.Expr:
        return shared("vdown", vdown, d) / (shared("vabs", vabs, d) + EPS)

    def vsumd(d: int) -> pl.Expr:
        num = shared("vup", vup, d) - shared("vdown", vdown, d)
        return num / (shared("vabs", vabs, d) + EPS)

    def count(d: int) -> pl.Expr | int:
        return shared("slots", (~_PAD).cast(pl.Float64), d) if cal else d

    def cntp(d: int) -> pl.Expr:
        return shared("cnt_up", cnt_up, d) / count(d)

    def cntn(d: int) -> pl.Expr:
        return shared("cnt_dn", cnt_dn, d) / count(d)

    def ma(d: int) -> pl.Expr:
        return o.mean(C, d) if cal else shared("close", C, d) / d

    def rsv(d: int) -> pl.Expr:
        lo = o.rmin(L, d)
        return (C - lo) / (o.rmax(H, d) - lo + EPS)

    return {
        "ROC": ("Ref($close, {d})/$close", _diff, lambda d: ref(C, d) / C),
        "MA": ("Mean($close, {d})/$close", _full, lambda d: ma(d) / C),
        "STD": ("Std($close, {d})/$close", _full, lambda d: o.std(C, d) / C),
        "BETA": ("Slope($close, {d})/$close", _full, lambda d: o.slope(C, d) / C),
        "RSQR": ("Rsquare($close, {d})", _full, lambda d: o.rsquare(C, d)),
        "RESI": ("Resi($close, {d})/$close", _full, lambda d: o.resi(C, d) / C),
        "MAX": ("Max($high, {d})/$close", _full, lambda d: o.rmax(H, d) / C),
        "MIN": ("Min($low, {d})/$close", _full, lambda d: o.rmin(L, d) / C),
        "QTLU": ("Quantile($close, {d}, 0.8)/$close", _full, lambda d: o.quantile(C, d, 0.8) / C),
        "QTLD": ("Quantile($close, {d}, 0.2)/$close", _full, lambda d: o.quantile(C, d, 0.2) / C),
        "RANK": ("Rank($close, {d})", _full, lambda d: o.rank(C, d)),
        "RSV": ("($close-Min($low, {d}))/(Max($high, {d})-Min($low, {d})+1e-12)", _full, rsv),
        "IMAX": ("IdxMax($high, {d})/{d}", _full, lambda d: o.idxmax_high(d) / d),
        "IMIN": ("IdxMin($low, {d})/{d}", _full, lambda d: o.idxmin_low(d) / d),
        "IMXD": ("(IdxMax($high, {d})-IdxMin($low, {d}))/{d}", _full,
                 lambda d: (o.idxmax_high(d) - o.idxmin_low(d)) / d),
        "CORR": ("Corr($close, Log($volume+1), {d})", _full,
                 lambda d: o.corr(C, log_v, d)),
        "CORD": ("Corr($close/Ref($close,1), Log($volume/Ref($volume, 1)+1), {d})", _diff,
                 lambda d: o.corr(_RET, pl.col("_lvr"), d)),
        "CNTP": ("Mean($close>Ref($close, 1), {d})", _diff, cntp),
        "CNTN": ("Mean($close<Ref($close, 1), {d})", _diff, cntn),
        "CNTD": ("Mean($close>Ref($close, 1), {d})-Mean($close<Ref($close, 1), {d})", _diff,
                 lambda d: cntp(d) - cntn(d)),
        "SUMP": ("Sum(Greater($close-Ref($close, 1), 0), {d})"
                 "/(Sum(Abs($close-Ref($close, 1)), {d})+1e-12)", _diff, sump),
        "SUMN": ("Sum(Greater(Ref($close, 1)-$close, 0), {d})"
                 "/(Sum(Abs($close-Ref($close, 1)), {d})+1e-12)", _diff, sumn),
        "SUMD": ("(Sum(Greater($close-Ref($close, 1), 0), {d})"
                 "-Sum(Greater(Ref($close, 1)-$close, 0), {d}))"
                 "/(Sum(Abs($close-Ref($close, 1)), {d})+1e-12)", _diff, sumd),
        "VMA": ("Mean($volume, {d})/($volume+1e-12)", _full, lambda d: o.mean(V, d) / (V + EPS)),
        "VSTD": ("Std($volume, {d})/($volume+1e-12)", _full, lambda d: o.std(V, d) / (V + EPS)),
        "WVMA": ("Std(Abs($close/Ref($close, 1)-1)*$volume, {d})"
                 "/(Mean(Abs($close/Ref($close, 1)-1)*$volume, {d})+1e-12)", _diff,
                 lambda d: o.std(wv, d) / (o.mean(wv, d) + EPS)),
        "VSUMP": ("Sum(Greater($volume-Ref($volume, 1), 0), {d})"
                  "/(Sum(Abs($volume-Ref($volume, 1)), {d})+1e-12)", _diff, vsump),
        "VSUMN": ("Sum(Greater(Ref($volume, 1)-$volume, 0), {d})"
                  "/(Sum(Abs($volume-Ref($volume, 1)), {d})+1e-12)", _diff, vsumn),
        "VSUMD": ("(Sum(Greater($volume-Ref($volume, 1), 0), {d})"
                  "-Sum(Greater(Ref($volume, 1)-$volume, 0), {d}))"
                  "/(Sum(Abs($volume-Ref($volume, 1)), {d})+1e-12)", _diff, vsumd),
    }


ROLLING_OPERATORS: tuple[str, ...] = tuple(_rolling_ops())


Align = Literal["bars", "calendar"]
ALIGNMENTS: tuple[str, ...] = ("bars", "calendar")


def _bars_kernel(windows: tuple[int, ...]) -> Callable[[pl.DataFrame], np.ndarray]:
    """The compiled evaluation of ``align="bars"``: adjusted bars -> (N, F) float32. Its
    ahead-of-time build when ``moola features compile`` made one (``_aot``), else Numba's JIT,
    imported on the first build, not with the package (~0.8 s and 170 MB)."""
    wins = np.asarray(windows, dtype=np.int64)
    width = 13 + len(ROLLING_OPERATORS) * len(wins)

    def kernel(bars: pl.DataFrame) -> np.ndarray:
        alpha158_bars = kernel_function(KERNEL_MODULES[0], "alpha158_bars")
        # adjusted bars are float64 already; a copy is writable and contiguous, null -> NaN
        cols = [np.array(bars.get_column(c).to_numpy(), dtype=np.float64) for c in BAR_COLUMNS]
        out = np.empty((bars.height, width), dtype=np.float32)
        alpha158_bars(*cols, wins, out)
        return out

    return kernel


def feature_set(windows: Sequence[int] = DEFAULT_WINDOWS, align: Align = "bars") -> FeatureSet:
    """Build ``alpha158``: 9 KBAR + 4 PRICE + 29 rolling operators x ``windows`` (158 by default).

    Order matches Qlib: KBAR, PRICE, then operator-major, window-minor (ROC5, ROC10, ...).
    ``align`` picks bar-count windows or Qlib's calendar-aligned ones (module docstring).
    """
    wins = tuple(int(d) for d in windows)
    if not wins or min(wins) < 2 or len(set(wins)) != len(wins):
        raise ValueError(f"alpha158 windows must be distinct integers >= 2, got {windows}")
    if align not in ALIGNMENTS:
        raise ValueError(f"alpha158 align must be one of {', '.join(ALIGNMENTS)}; got {align!r}")
    specs = _kbar_price()
    for op, (template, lookback, build) in _rolling_ops(align).items():
        specs += [
            FeatureSpec(f"{op}{d}", template.format(d=d), lookback(d), build(d)) for d in wins
        ]
    if align == "calendar":
        how = ("windows count days of the panel calendar, a missing day being an empty slot, and "
               "take partial windows as Qlib (min_periods=1)")
    else:
        how = ("windows are NaN until full (Qlib computes partial windows, min_periods=1) and "
               "NaN if they hold a missing or non-finite input")
    return FeatureSet(
        name="alpha158",
        description=(
            "Qlib Alpha158: 9 candlestick (KBAR), 4 price and 29 rolling-operator factors over "
            f"windows {'/'.join(map(str, wins))}, with Qlib's formulas and names. Deviations: "
            f"VWAP0 uses the typical price (high+low+close)/3 as $vwap; {how}; Corr/Rsquare "
            "are NaN where a std is <= 2e-5, as in Qlib."
        ),
        specs=tuple(specs),
        params={"windows": list(wins), "align": align},
        kind="per_symbol",
        make=feature_set,
        aux=_aux() if align == "bars" else _aux_calendar(),
        align=align,
        kernel=_bars_kernel(wins) if align == "bars" else None,
    )
