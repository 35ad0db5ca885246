"""alpha158: Qlib's Alpha158 factor set, formula for formula, as Polars expressions.

Formulas follow ``qlib/contrib/data/loader.py`` (``Alpha158DL.get_feature_config``) and the
operator semantics of ``qlib/data/ops.py``. Deviations, all deliberate:

* ``$vwap`` does not exist in our bars; VWAP0 uses the typical price (high + low + close) / 3.
* Qlib's rolling operators use ``min_periods=1``; we output NaN until the window is full
  (warm-up rows), and a window containing a missing or non-finite input gives NaN.
* Prices are split/dividend adjusted by the builder (factor = adj_close / close), as in Qlib.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import polars as pl

from moola.features._registry import FeatureSet, FeatureSpec

O, H, L, C, V = (pl.col(c) for c in ("open", "high", "low", "close", "volume"))
EPS = 1e-12
# Qlib sets Corr and Rsquare to NaN where a rolling std is np.isclose(.., 0, atol=2e-5).
STD_ATOL = 2e-5
DEFAULT_WINDOWS: tuple[int, ...] = (5, 10, 20, 30, 60)
_SHIFT = 2**32  # IdxMax/IdxMin key: rank in the high bits, reversed row index in the low bits

# ---- Qlib operators (one series, i.e. one instrument) -------------------------------------


def ref(x: pl.Expr, d: int) -> pl.Expr:
    """Ref(x, d): the value d bars ago."""
    return x.shift(d)


def mean(x: pl.Expr, d: int) -> pl.Expr:
    return x.rolling_mean(d)


def std(x: pl.Expr, d: int) -> pl.Expr:
    """Std(x, d): sample std (ddof=1), as pandas rolling std."""
    return x.rolling_std(d, ddof=1)


def rsum(x: pl.Expr, d: int) -> pl.Expr:
    return x.rolling_sum(d)


def rmax(x: pl.Expr, d: int) -> pl.Expr:
    return x.rolling_max(d)


def rmin(x: pl.Expr, d: int) -> pl.Expr:
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


def rank(x: pl.Expr, d: int) -> pl.Expr:
    """Rank(x, d): pandas ``rolling(d).rank(pct=True)``, the average rank of the last value / d."""
    return x.rolling_rank(d, method="average") / d


def _idx_extreme(x: pl.Expr, d: int, *, descending: bool) -> pl.Expr:
    """1-based window position of the first max (or min) of x over d bars: numpy argmax + 1.

    A rolling max over ``rank * 2^32 + (2^32 - 1 - row)`` picks the largest value and, among
    ties, the earliest row; decoding the low bits gives that row without a Python loop.
    """
    row = pl.int_range(pl.len(), dtype=pl.Int64)
    r = x.rank("dense", descending=descending).cast(pl.Int64)
    key = r * _SHIFT + (_SHIFT - 1 - row)
    best_row = (_SHIFT - 1) - key.rolling_max(d) % _SHIFT
    return (best_row - row + d).cast(pl.Float64)


def idxmax(x: pl.Expr, d: int) -> pl.Expr:
    return _idx_extreme(x, d, descending=False)


def idxmin(x: pl.Expr, d: int) -> pl.Expr:
    return _idx_extreme(x, d, descending=True)


def _centered_weights(d: int) -> tuple[list[float], float, float]:
    """Weights k - mean(k) for k = 1..d (oldest first), their mean and sum of squares."""
    kbar = (d + 1) / 2.0
    w = [k - kbar for k in range(1, d + 1)]
    return w, kbar, d * (d * d - 1) / 12.0


def weighted_sum(x: pl.Expr, weights: list[float]) -> pl.Expr:
    """Rolling sum of x * weights (oldest first); null in, null out for that window only.

    Polars' weighted rolling sum rejects nulls, so nulls travel as NaN and come back as null.
    """
    return x.fill_null(float("nan")).rolling_sum(len(weights), weights=weights).fill_nan(None)


def slope(x: pl.Expr, d: int) -> pl.Expr:
    """Slope(x, d): OLS slope of x on 1..d (a weighted rolling sum, no cancellation)."""
    w, _, sxx = _centered_weights(d)
    return weighted_sum(x, w) / sxx


def rsquare(x: pl.Expr, d: int) -> pl.Expr:
    """Rsquare(x, d): R^2 of that regression; NaN where Std(x, d) ~ 0, as Qlib."""
    w, _, sxx = _centered_weights(d)
    sxy = weighted_sum(x, w)
    r2 = sxy * sxy / (sxx * x.rolling_var(d, ddof=1) * (d - 1))
    return pl.when(std(x, d) <= STD_ATOL).then(None).otherwise(r2)


def resi(x: pl.Expr, d: int) -> pl.Expr:
    """Resi(x, d): residual of the last point, x - (slope * d + intercept)."""
    _, kbar, _ = _centered_weights(d)
    return x - (mean(x, d) + slope(x, d) * (d - kbar))


def corr(a: pl.Expr, b: pl.Expr, d: int) -> pl.Expr:
    """Corr(a, b, d): Pearson correlation; NaN where either Std ~ 0, as Qlib."""
    sa, sb = std(a, d), std(b, d)
    cov = (rsum(a * b, d) - rsum(a, d) * rsum(b, d) / d) / (d - 1)
    return pl.when((sa <= STD_ATOL) | (sb <= STD_ATOL)).then(None).otherwise(cov / (sa * sb))


# ---- the feature list -------------------------------------------------------------------


def _kbar_price() -> list[FeatureSpec]:
    hi_oc, lo_oc = pl.max_horizontal(O, C), pl.min_horizontal(O, C)
    rng = H - L + EPS
    vwap = (H + L + C) / 3.0
    return [
        FeatureSpec("KMID", "($close-$open)/$open", 0, (C - O) / O),
        FeatureSpec("KLEN", "($high-$low)/$open", 0, (H - L) / O),
        FeatureSpec("KMID2", "($close-$open)/($high-$low+1e-12)", 0, (C - O) / rng),
        FeatureSpec("KUP", "($high-Greater($open, $close))/$open", 0, (H - hi_oc) / O),
        FeatureSpec("KUP2", "($high-Greater($open, $close))/($high-$low+1e-12)", 0,
                    (H - hi_oc) / rng),
        FeatureSpec("KLOW", "(Less($open, $close)-$low)/$open", 0, (lo_oc - L) / O),
        FeatureSpec("KLOW2", "(Less($open, $close)-$low)/($high-$low+1e-12)", 0,
                    (lo_oc - L) / rng),
        FeatureSpec("KSFT", "(2*$close-$high-$low)/$open", 0, (2 * C - H - L) / O),
        FeatureSpec("KSFT2", "(2*$close-$high-$low)/($high-$low+1e-12)", 0,
                    (2 * C - H - L) / rng),
        FeatureSpec("OPEN0", "$open/$close", 0, O / C),
        FeatureSpec("HIGH0", "$high/$close", 0, H / C),
        FeatureSpec("LOW0", "$low/$close", 0, L / C),
        FeatureSpec("VWAP0", "$vwap/$close with $vwap := ($high+$low+$close)/3", 0, vwap / C),
    ]


# name -> (Qlib formula template, look-back as a function of d, expression builder)
_Rolling = tuple[str, Callable[[int], int], Callable[[int], pl.Expr]]


def _rolling_ops() -> dict[str, _Rolling]:
    dc = C - ref(C, 1)
    dv = V - ref(V, 1)
    up, down, absd = greater(dc, 0), greater(-dc, 0), dc.abs()
    vup, vdown, vabs = greater(dv, 0), greater(-dv, 0), dv.abs()
    ret = C / ref(C, 1)
    wv = finite((ret - 1).abs() * V)
    lvr = finite((V / ref(V, 1) + 1).log())
    cnt_up = (ref(C, 1) < C).cast(pl.Float64)
    cnt_dn = (ref(C, 1) > C).cast(pl.Float64)

    def full(d: int) -> int:
        return d - 1

    def diff(d: int) -> int:
        return d

    def rsv(d: int) -> pl.Expr:
        lo = rmin(L, d)
        return (C - lo) / (rmax(H, d) - lo + EPS)

    return {
        "ROC": ("Ref($close, {d})/$close", diff, lambda d: ref(C, d) / C),
        "MA": ("Mean($close, {d})/$close", full, lambda d: mean(C, d) / C),
        "STD": ("Std($close, {d})/$close", full, lambda d: std(C, d) / C),
        "BETA": ("Slope($close, {d})/$close", full, lambda d: slope(C, d) / C),
        "RSQR": ("Rsquare($close, {d})", full, lambda d: rsquare(C, d)),
        "RESI": ("Resi($close, {d})/$close", full, lambda d: resi(C, d) / C),
        "MAX": ("Max($high, {d})/$close", full, lambda d: rmax(H, d) / C),
        "MIN": ("Min($low, {d})/$close", full, lambda d: rmin(L, d) / C),
        "QTLU": ("Quantile($close, {d}, 0.8)/$close", full, lambda d: quantile(C, d, 0.8) / C),
        "QTLD": ("Quantile($close, {d}, 0.2)/$close", full, lambda d: quantile(C, d, 0.2) / C),
        "RANK": ("Rank($close, {d})", full, lambda d: rank(C, d)),
        "RSV": ("($close-Min($low, {d}))/(Max($high, {d})-Min($low, {d})+1e-12)", full, rsv),
        "IMAX": ("IdxMax($high, {d})/{d}", full, lambda d: idxmax(H, d) / d),
        "IMIN": ("IdxMin($low, {d})/{d}", full, lambda d: idxmin(L, d) / d),
        "IMXD": ("(IdxMax($high, {d})-IdxMin($low, {d}))/{d}", full,
                 lambda d: (idxmax(H, d) - idxmin(L, d)) / d),
        "CORR": ("Corr($close, Log($volume+1), {d})", full,
                 lambda d: corr(C, (V + 1).log(), d)),
        "CORD": ("Corr($close/Ref($close,1), Log($volume/Ref($volume, 1)+1), {d})", diff,
                 lambda d: corr(ret, lvr, d)),
        "CNTP": ("Mean($close>Ref($close, 1), {d})", diff, lambda d: mean(cnt_up, d)),
        "CNTN": ("Mean($close<Ref($close, 1), {d})", diff, lambda d: mean(cnt_dn, d)),
        "CNTD": ("Mean($close>Ref($close, 1), {d})-Mean($close<Ref($close, 1), {d})", diff,
                 lambda d: mean(cnt_up, d) - mean(cnt_dn, d)),
        "SUMP": ("Sum(Greater($close-Ref($close, 1), 0), {d})"
                 "/(Sum(Abs($close-Ref($close, 1)), {d})+1e-12)", diff,
                 lambda d: rsum(up, d) / (rsum(absd, d) + EPS)),
        "SUMN": ("Sum(Greater(Ref($close, 1)-$close, 0), {d})"
                 "/(Sum(Abs($close-Ref($close, 1)), {d})+1e-12)", diff,
                 lambda d: rsum(down, d) / (rsum(absd, d) + EPS)),
        "SUMD": ("(Sum(Greater($close-Ref($close, 1), 0), {d})"
                 "-Sum(Greater(Ref($close, 1)-$close, 0), {d}))"
                 "/(Sum(Abs($close-Ref($close, 1)), {d})+1e-12)", diff,
                 lambda d: (rsum(up, d) - rsum(down, d)) / (rsum(absd, d) + EPS)),
        "VMA": ("Mean($volume, {d})/($volume+1e-12)", full, lambda d: mean(V, d) / (V + EPS)),
        "VSTD": ("Std($volume, {d})/($volume+1e-12)", full, lambda d: std(V, d) / (V + EPS)),
        "WVMA": ("Std(Abs($close/Ref($close, 1)-1)*$volume, {d})"
                 "/(Mean(Abs($close/Ref($close, 1)-1)*$volume, {d})+1e-12)", diff,
                 lambda d: std(wv, d) / (mean(wv, d) + EPS)),
        "VSUMP": ("Sum(Greater($volume-Ref($volume, 1), 0), {d})"
                  "/(Sum(Abs($volume-Ref($volume, 1)), {d})+1e-12)", diff,
                  lambda d: rsum(vup, d) / (rsum(vabs, d) + EPS)),
        "VSUMN": ("Sum(Greater(Ref($volume, 1)-$volume, 0), {d})"
                  "/(Sum(Abs($volume-Ref($volume, 1)), {d})+1e-12)", diff,
                  lambda d: rsum(vdown, d) / (rsum(vabs, d) + EPS)),
        "VSUMD": ("(Sum(Greater($volume-Ref($volume, 1), 0), {d})"
                  "-Sum(Greater(Ref($volume, 1)-$volume, 0), {d}))"
                  "/(Sum(Abs($volume-Ref($volume, 1)), {d})+1e-12)", diff,
                  lambda d: (rsum(vup, d) - rsum(vdown, d)) / (rsum(vabs, d) + EPS)),
    }


ROLLING_OPERATORS: tuple[str, ...] = tuple(_rolling_ops())


def feature_set(windows: Sequence[int] = DEFAULT_WINDOWS) -> FeatureSet:
    """Build ``alpha158``: 9 KBAR + 4 PRICE + 29 rolling operators x ``windows`` (158 by default).

    Order matches Qlib: KBAR, PRICE, then operator-major, window-minor (ROC5, ROC10, ...).
    """
    wins = tuple(int(d) for d in windows)
    if not wins or min(wins) < 2 or len(set(wins)) != len(wins):
        raise ValueError(f"alpha158 windows must be distinct integers >= 2, got {windows}")
    specs = _kbar_price()
    for op, (template, lookback, build) in _rolling_ops().items():
        specs += [
            FeatureSpec(f"{op}{d}", template.format(d=d), lookback(d), build(d)) for d in wins
        ]
    return FeatureSet(
        name="alpha158",
        description=(
            "Qlib Alpha158: 9 candlestick (KBAR), 4 price and 29 rolling-operator factors over "
            f"windows {'/'.join(map(str, wins))}, with Qlib's formulas and names."
        ),
        specs=tuple(specs),
        params={"windows": list(wins)},
        kind="per_symbol",
        make=feature_set,
    )
