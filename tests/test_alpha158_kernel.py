"""The compiled alpha158 kernel against alpha158's own Polars expressions (its definition).

``align="bars"`` runs the Numba kernel; ``dataclasses.replace(fs, kernel=None)`` runs the
expressions through the same builder. The two must agree on every row of real daily and crypto
bars, on warts (missing values, zero volume, zero and flat prices, short symbols), for other
windows than the default, and the kernel's source must be part of the set's code hash.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import polars as pl
import pytest

from _real_data import daily_symbols, load_crypto, load_daily
from moola.features import FeatureSet, _registry, compute_features, get_feature_set, serve_features

# The kernel is float64 throughout and rounds once; the expressions' one-pass covariance and
# Polars' running std differ from its two-pass/shifted moments in the last float64 digits.
RTOL, ATOL = 2e-6, 1e-7


def _both(df: pl.DataFrame, fs: FeatureSet) -> tuple[np.ndarray, np.ndarray]:
    assert fs.kernel is not None
    ref = compute_features(df, dataclasses.replace(fs, kernel=None), timeframe="1d").values
    got = compute_features(df, fs, timeframe="1d").values
    return ref, got


def _assert_equal(ref: np.ndarray, got: np.ndarray, names: tuple[str, ...]) -> None:
    for j, name in enumerate(names):
        a, b = ref[:, j], got[:, j]
        nan_a, nan_b = np.isnan(a), np.isnan(b)
        assert (nan_a == nan_b).all(), (
            f"{name}: NaN at different rows, expressions {np.flatnonzero(nan_a & ~nan_b)[:5]} "
            f"kernel {np.flatnonzero(nan_b & ~nan_a)[:5]}")
        np.testing.assert_allclose(b[~nan_b], a[~nan_a], rtol=RTOL, atol=ATOL, err_msg=name)
    assert not np.isinf(got).any()


def _daily_sample() -> pl.DataFrame:
    """Clean large caps plus the panel's warts: BHF's zero-volume stretch, UA's and ESS's
    missing days, late starters."""
    syms = [s for s in ("AAPL", "BHF", "ESS", "FTV", "KHC", "UA", "XOM") if s in daily_symbols()]
    return load_daily(tuple(syms))


def test_kernel_equals_the_expressions_on_real_daily_bars() -> None:
    fs = get_feature_set("alpha158")
    ref, got = _both(_daily_sample(), fs)
    _assert_equal(ref, got, fs.names)
    assert np.isfinite(got[-1]).sum() > 150  # a late row has (almost) every feature


def test_kernel_equals_the_expressions_on_one_minute_crypto() -> None:
    fs = get_feature_set("alpha158")
    df = load_crypto(3000)
    ref = compute_features(df, dataclasses.replace(fs, kernel=None)).values
    got = compute_features(df, fs).values
    _assert_equal(ref, got, fs.names)


def test_kernel_equals_the_expressions_on_bad_bars() -> None:
    """Missing closes, highs and opens (KUP2 then takes the close, as Polars' max_horizontal), a
    zero open, zero volume, flat prices and a symbol shorter than the longest window: the same
    NaN and the same values as the expressions, and no inf."""
    df = _daily_sample().filter(pl.col("symbol").is_in(["AAPL", "XOM"]))
    rows = df.height
    rng = np.random.default_rng(7)
    holes = rng.choice(rows, size=48, replace=False)
    idx = pl.int_range(pl.len())
    df = df.with_columns(
        pl.when(idx.is_in(holes[:10])).then(None).otherwise(pl.col("close")).alias("close"),
        pl.when(idx.is_in(holes[10:20])).then(None).otherwise(pl.col("high")).alias("high"),
        pl.when(idx.is_in(holes[20:25])).then(0.0)
        .when(idx.is_in(holes[40:48])).then(None).otherwise(pl.col("open")).alias("open"),
        pl.when(idx.is_in(holes[25:40]) | ((idx > 300) & (idx < 330)))
        .then(0.0).otherwise(pl.col("volume")).alias("volume"),
    )
    flat = df.filter(pl.col("symbol") == "XOM").head(90).with_columns(
        pl.lit("FLAT").alias("symbol"), pl.lit(50.0).alias("open"), pl.lit(50.0).alias("high"),
        pl.lit(50.0).alias("low"), pl.lit(50.0).alias("close"), pl.lit(50.0).alias("adj_close"))
    short = df.filter(pl.col("symbol") == "AAPL").head(25).with_columns(pl.lit("SHORT").alias("symbol"))
    df = pl.concat([df, flat, short]).sort("symbol", "ts")
    fs = get_feature_set("alpha158")
    ref, got = _both(df, fs)
    _assert_equal(ref, got, fs.names)
    sym = df.get_column("symbol").to_numpy()
    assert np.isnan(got[sym == "SHORT"][:, [fs.names.index("MA60")]]).all()
    flat_std = got[sym == "FLAT"][20:, fs.names.index("STD20")]
    assert (flat_std == 0.0).all()  # a flat window's std is exactly 0, not rounding residue


@pytest.mark.parametrize("windows", [(3, 7), (20, 5, 10), (2,)])
def test_kernel_equals_the_expressions_for_other_windows(windows: tuple[int, ...]) -> None:
    fs = get_feature_set("alpha158", windows=windows)
    assert fs.names[13:13 + len(windows)] == tuple(f"ROC{d}" for d in windows)
    df = _daily_sample().filter(pl.col("symbol").is_in(["AAPL", "BHF"]))
    ref, got = _both(df, fs)
    _assert_equal(ref, got, fs.names)


def test_serving_runs_the_same_kernel_bit_for_bit() -> None:
    fs = get_feature_set("alpha158")
    df = _daily_sample().filter(pl.col("symbol") == "AAPL").tail(200)
    a = compute_features(df, fs, timeframe="1d").values
    b = serve_features(df, fs, timeframe="1d").values
    np.testing.assert_array_equal(a, b)


def test_the_kernels_source_is_part_of_the_code_hash(monkeypatch: pytest.MonkeyPatch) -> None:
    from moola.features import alpha158

    fs = get_feature_set("alpha158")
    assert alpha158.KERNEL_MODULES == ("moola.features._alpha158_numba",)
    with_kernel = fs.code_hash
    _registry._code_hash.cache_clear()
    monkeypatch.setattr(alpha158, "KERNEL_MODULES", ())
    try:
        assert get_feature_set("alpha158").code_hash != with_kernel
        monkeypatch.setattr(alpha158, "KERNEL_MODULES", ("moola.features._no_such_kernel",))
        _registry._code_hash.cache_clear()
        with pytest.raises(RuntimeError, match="_no_such_kernel"):
            _ = get_feature_set("alpha158").code_hash
    finally:
        _registry._code_hash.cache_clear()


def test_a_kernel_is_refused_for_calendar_alignment() -> None:
    fs = get_feature_set("alpha158", align="calendar")
    assert fs.kernel is None
    bars_fs = get_feature_set("alpha158")
    with pytest.raises(ValueError, match="kernel evaluates bar-count windows only"):
        dataclasses.replace(fs, kernel=bars_fs.kernel)


def test_a_kernel_returning_the_wrong_shape_is_named() -> None:
    fs = get_feature_set("alpha158")
    bad = dataclasses.replace(fs, kernel=lambda bars: np.zeros((bars.height, 3), np.float32))
    df = _daily_sample().filter(pl.col("symbol") == "AAPL").head(100)
    with pytest.raises(RuntimeError, match=r"alpha158.*\(100, 3\).*\(100, 158\)"):
        compute_features(df, bad, timeframe="1d")


def test_the_kernel_checks_the_shape_of_its_output() -> None:
    from moola.features._alpha158_numba import alpha158_bars

    x = np.ones(10)
    with pytest.raises(ValueError, match="out must be"):
        alpha158_bars(x, x, x, x, x, np.array([5], np.int64), np.empty((10, 40), np.float32))
