"""alpha360 against Qlib's names and order and an independent numpy reference on real adjusted
bars: every one of the 360 features at sampled rows, the warm-up, and no look-ahead (property,
with the truncation check of test_features_lookahead)."""

from __future__ import annotations

from functools import lru_cache

import numpy as np
import polars as pl
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from _real_data import clean_daily_symbols, load_daily
from moola.data._schema import Timeframe
from moola.features import FeatureMatrix, compute_features, get_feature_set
from moola.features.alpha360 import feature_set
from test_features_lookahead import _truncation_mismatch

FIELDS = ("CLOSE", "OPEN", "HIGH", "LOW", "VWAP", "VOLUME")


def _qlib_names(lags: int = 60) -> list[str]:
    """Alpha360DL.get_feature_config's names: per field, lags lags-1 .. 1, then 0."""
    return [f"{f}{i}" for f in FIELDS for i in [*range(lags - 1, 0, -1), 0]]


@lru_cache(maxsize=1)
def _bars() -> pl.DataFrame:
    """Three clean stocks plus BHF (zero-volume and missing-day warts), 260 days each."""
    return load_daily((*clean_daily_symbols(3), "BHF"), max_rows_per_symbol=260)


@lru_cache(maxsize=1)
def _features() -> FeatureMatrix:
    return compute_features(_bars(), get_feature_set("alpha360"), timeframe="1d")


def test_names_and_order_are_qlibs() -> None:
    fs = get_feature_set("alpha360")
    assert list(fs.names) == _qlib_names() and len(fs.names) == 360
    assert fs.kind == "per_symbol" and fs.max_lookback == 59 and dict(fs.params) == {"lags": 60}
    assert [s.lookback for s in fs.specs[:60]] == list(range(59, -1, -1))
    assert fs.specs[0].formula == "Ref($close, 59)/$close" and fs.specs[59].formula == "$close/$close"
    assert fs.specs[-1].formula == "$volume/($volume+1e-12)"
    fm = _features()
    assert fm.values.shape == (_bars().height, 360) and list(fm.names) == _qlib_names()
    small = fs.with_params(lags=5)
    assert list(small.names) == _qlib_names(5) and small.schema_hash != fs.schema_hash
    for bad in (0, -3, 2.5):
        with pytest.raises(ValueError, match="lags"):
            feature_set(lags=bad)  # type: ignore[arg-type]


def _reference(raw: pl.DataFrame, i: int, lags: int = 60) -> np.ndarray:
    """All features of one stock's row i, straight from Qlib's formulas on bars adjusted by
    adj_close / close (prices times it, volume divided by it); VWAP is (high + low + close) / 3."""
    f = (raw["adj_close"] / raw["close"]).to_numpy()
    o, h, lo, c = (raw[k].to_numpy() * f for k in ("open", "high", "low", "close"))
    v = raw["volume"].to_numpy() / f
    fields = {"CLOSE": c, "OPEN": o, "HIGH": h, "LOW": lo, "VWAP": (h + lo + c) / 3}
    out = [fields[name][i - d] / c[i] if i >= d else np.nan
           for name in FIELDS[:5] for d in range(lags - 1, -1, -1)]
    out += [v[i - d] / (v[i] + 1e-12) if i >= d else np.nan for d in range(lags - 1, -1, -1)]
    with np.errstate(divide="ignore", invalid="ignore"):
        arr = np.asarray(out, dtype=np.float64)
    return np.where(np.isfinite(arr), arr, np.nan)


@pytest.mark.parametrize("row", [0, 7, 59, 60, 143, 259])
def test_every_feature_equals_the_reference(row: int) -> None:
    fm, bars = _features(), _bars()
    for sym in bars["symbol"].unique().sort().to_list():
        raw = bars.filter(pl.col("symbol") == sym)
        got = fm.values[(fm.keys["symbol"] == sym).to_numpy()][row]
        np.testing.assert_allclose(got, _reference(raw, row), rtol=2e-6, equal_nan=True,
                                   err_msg=f"{sym} row {row}")


def test_a_hand_computed_value_and_the_unit_columns() -> None:
    fm, bars = _features(), _bars()
    sym = clean_daily_symbols(3)[0]
    raw = bars.filter(pl.col("symbol") == sym)
    x = fm.values[(fm.keys["symbol"] == sym).to_numpy()]  # (T, 360)
    col = list(fm.names).index
    t, d = 200, 17
    adj = raw["adj_close"] / raw["close"]
    hand = raw["open"][t - d] * adj[t - d] / raw["adj_close"][t]  # adjusted close = adj_close
    assert x[t, col("OPEN17")] == pytest.approx(hand, rel=1e-6)
    vwap = (raw["high"][t - d] + raw["low"][t - d] + raw["close"][t - d]) * adj[t - d] / 3
    assert x[t, col("VWAP17")] == pytest.approx(vwap / raw["adj_close"][t], rel=1e-6)
    hand_v = (raw["volume"][t - d] / adj[t - d]) / (raw["volume"][t] / adj[t] + 1e-12)
    assert x[t, col("VOLUME17")] == pytest.approx(hand_v, rel=1e-6)
    close0, known = fm.values[:, col("CLOSE0")], np.isfinite(bars["close"].to_numpy())
    assert known.any() and (close0[known] == 1.0).all()
    pos_vol = (bars["volume"] > 0).to_numpy()
    np.testing.assert_allclose(fm.values[pos_vol, col("VOLUME0")], 1.0, rtol=1e-6)


def test_warm_up_rows_are_nan_and_then_finite() -> None:
    fm = _features()
    sym = clean_daily_symbols(3)[1]
    x = fm.values[(fm.keys["symbol"] == sym).to_numpy()]  # (T, 360) of a stock with clean bars
    lookback = np.array([s.lookback for s in get_feature_set("alpha360").specs])
    rows = np.arange(x.shape[0])[:, None]
    assert np.isnan(x[rows < lookback]).all()
    assert np.isfinite(x[rows >= lookback]).all()


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_alpha360_has_no_lookahead(data: st.DataObject) -> None:
    """Features of bars truncated after a random time t equal the full run's up to t."""
    panel = _bars()
    symbols = data.draw(st.lists(st.sampled_from(sorted(set(panel["symbol"]))), min_size=1, max_size=2,
                                 unique=True), label="symbols")
    times = panel.filter(pl.col("symbol").is_in(symbols))["ts"].unique().sort()
    cut = times[data.draw(st.integers(0, len(times) - 1), label="cut index")]
    why = _truncation_mismatch(get_feature_set("alpha360"), panel, _features(), symbols, cut, Timeframe.D1)
    assert why is None, f"alpha360 truncated at {cut} for {symbols}: {why}"
