"""Scalers on real features: train-only statistics, NaN ignored, exact JSON round trip."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from sklearn.base import clone
from sklearn.exceptions import NotFittedError

from _datasets_data import crypto_matrix, sp500_matrix
from moola.datasets.normalize import RobustScaler, Standardizer, load_scaler, scaler_from_dict
from moola.datasets.windows import WindowSet
from moola.features._matrix import FeatureMatrix

SCALERS = [Standardizer, RobustScaler]


@pytest.fixture(scope="module")
def fm() -> FeatureMatrix:
    return crypto_matrix(("BTCUSD",))


@pytest.fixture(scope="module")
def split(fm: FeatureMatrix) -> tuple[np.ndarray, np.ndarray]:
    """Time split: first 60% train (includes the NaN warm-up row), rest validation."""
    cut = int(fm.values.shape[0] * 0.6)
    return fm.values[:cut], fm.values[cut:]


def test_standardizer_uses_train_stats_only(split: tuple[np.ndarray, np.ndarray]) -> None:
    train, val = split
    sc = Standardizer().fit(train)
    t64 = train.astype(np.float64)
    np.testing.assert_allclose(sc.mean_, np.nanmean(t64, axis=0), rtol=1e-12)
    np.testing.assert_allclose(sc.scale_, np.nanstd(t64, axis=0), rtol=1e-12)
    assert sc.n_features_in_ == 4
    # the validation period (USDC de-peg week) has different stats: they must not leak in
    full = np.nanstd(np.concatenate([t64, val]), axis=0)
    assert not np.allclose(sc.scale_, full, rtol=1e-3)
    out = sc.transform(val)
    assert out.dtype == np.float32 and out.shape == val.shape
    expect = (val.astype(np.float64) - np.nanmean(t64, axis=0)) / np.nanstd(t64, axis=0)
    np.testing.assert_allclose(out, expect, rtol=1e-4, atol=1e-5)
    z = sc.transform(train)
    np.testing.assert_allclose(np.nanmean(z, axis=0), 0, atol=1e-4)
    np.testing.assert_allclose(np.nanstd(z, axis=0), 1, atol=1e-4)


def test_robust_scaler_median_iqr(split: tuple[np.ndarray, np.ndarray]) -> None:
    train, val = split
    sc = RobustScaler().fit(train)
    q25, med, q75 = np.nanpercentile(train.astype(np.float64), [25, 50, 75], axis=0)
    np.testing.assert_allclose(sc.center_, med, rtol=1e-12)
    np.testing.assert_allclose(sc.scale_, q75 - q25, rtol=1e-12)
    spiked = train.copy()
    spiked[100:110] = 1e3  # fat-tail outliers barely move a robust fit
    np.testing.assert_allclose(RobustScaler().fit(spiked).center_, med, rtol=1e-2, atol=1e-7)
    wide = RobustScaler(quantile_range=(5.0, 95.0)).fit(train)
    assert (wide.scale_ > sc.scale_).all()
    np.testing.assert_allclose(
        sc.transform(val), (val - med) / (q75 - q25), rtol=1e-4, atol=1e-4
    )


@pytest.mark.parametrize("cls", SCALERS)
def test_nan_ignored(cls: type, split: tuple[np.ndarray, np.ndarray]) -> None:
    train, _ = split
    assert np.isnan(train[0]).all()  # the real warm-up row
    holey = train.copy()
    holey[np.random.default_rng(0).choice(len(train), 500, replace=False), 1] = np.nan
    a = cls().fit(train[1:])
    b = cls().fit(train)
    np.testing.assert_array_equal(a.scale_, b.scale_)
    np.testing.assert_array_equal(a.center, b.center)
    c = cls().fit(holey)
    assert np.isfinite(c.center).all() and np.isfinite(c.scale_).all()
    assert c.n_samples_seen_[1] == len(train) - 1 - 500
    out = b.transform(train)
    assert np.isnan(out[0]).all() and np.isfinite(out[1:]).all()


@pytest.mark.parametrize("cls", SCALERS)
def test_windows_transform_like_rows(cls: type, fm: FeatureMatrix) -> None:
    ws = WindowSet.from_matrix(fm, 30, stride=101)
    sc = cls().fit(fm.values[:10000])
    win = sc.transform(ws.array)  # (n, T, F) strided view in, float32 copy out
    assert win.shape == ws.shape and win.dtype == np.float32
    rows = sc.transform(fm.values)
    np.testing.assert_array_equal(win, rows[ws.starts[:, None] + np.arange(30)])
    # fitting on windows sees the same per-feature values (here each row at most once)
    np.testing.assert_allclose(
        cls().fit(ws.array).center, cls().fit(ws.batch().reshape(-1, 4)).center
    )


@pytest.mark.parametrize("cls", SCALERS)
def test_roundtrip_dict_and_json(cls: type, split: tuple, tmp_path: Path) -> None:
    train, val = split
    sc = cls().fit(train, feature_names=["o", "h", "l", "c"])
    d = json.loads(json.dumps(sc.to_dict()))  # must be JSON-able
    back = cls.from_dict(d)
    np.testing.assert_array_equal(back.center, sc.center)
    np.testing.assert_array_equal(back.scale_, sc.scale_)
    assert list(back.feature_names_in_) == ["o", "h", "l", "c"]
    np.testing.assert_array_equal(back.transform(val), sc.transform(val))
    path = sc.save(tmp_path / "sub" / "scaler.json")
    loaded = cls.load(path)
    np.testing.assert_array_equal(loaded.transform(val), sc.transform(val))
    assert type(load_scaler(path)) is cls
    assert type(scaler_from_dict(d)) is cls
    assert loaded.get_params() == sc.get_params()
    other = RobustScaler if cls is Standardizer else Standardizer
    with pytest.raises(ValueError, match="not"):
        other.from_dict(d)


def test_zero_variance_gets_scale_one() -> None:
    fm = sp500_matrix(["AAPL"])
    X = fm.values.copy()
    X[:, 2] = 0.25  # constant feature
    for cls in SCALERS:
        sc = cls().fit(X)
        assert sc.scale_[2] == 1.0
        out = sc.transform(X)
        assert np.isfinite(out[1:]).all()
        np.testing.assert_array_equal(out[:, 2], 0.0)


def test_errors(split: tuple[np.ndarray, np.ndarray]) -> None:
    train, _ = split
    with pytest.raises(NotFittedError, match="not fitted"):
        Standardizer().transform(train)
    with pytest.raises(NotFittedError):
        RobustScaler().to_dict()
    sc = Standardizer().fit(train)
    with pytest.raises(ValueError, match=r"3 features.*expected 4"):
        sc.transform(train[:, :3])
    with pytest.raises(TypeError, match="object"):
        Standardizer().fit(train.astype(object))
    with pytest.raises(TypeError, match="<U"):
        RobustScaler().fit(np.array([["a", "b"], ["c", "d"]]))
    with pytest.raises(TypeError, match="dtype"):
        Standardizer().fit(pl.DataFrame({"a": [1.0, 2.0], "b": ["x", "y"]}))
    all_nan = train.copy()
    all_nan[:, 3] = np.nan
    with pytest.raises(ValueError, match=r"\[3\]"):
        Standardizer().fit(all_nan)
    with_inf = train.copy()
    with_inf[5, 0] = np.inf
    with pytest.raises(ValueError, match="inf"):
        RobustScaler().fit(with_inf)
    with pytest.raises(ValueError, match="shape"):
        Standardizer().fit(train[:, 0])


def test_feature_names_and_sklearn_clone(split: tuple[np.ndarray, np.ndarray]) -> None:
    train, val = split
    df = pl.DataFrame(train[1:], schema=["o", "h", "l", "c"], orient="row")
    sc = Standardizer().fit(df)
    assert list(sc.feature_names_in_) == ["o", "h", "l", "c"]
    np.testing.assert_array_equal(sc.transform(df), sc.transform(train[1:]))
    with pytest.raises(ValueError, match="feature names differ"):
        sc.transform(df.rename({"o": "open"}))
    rs = clone(RobustScaler(quantile_range=(10.0, 90.0)))
    assert rs.quantile_range == (10.0, 90.0) and not hasattr(rs, "scale_")
    inv = sc.inverse_transform(sc.transform(val))
    np.testing.assert_allclose(inv, val, rtol=1e-5, atol=1e-6)
