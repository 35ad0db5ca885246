"""No look-ahead, for every feature set: features of data truncated at a random time t equal
the features of the full data up to t (a feature that peeks at later bars would differ)."""

from __future__ import annotations

from functools import lru_cache

import numpy as np
import polars as pl
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from _real_data import clean_daily_symbols, daily_symbols, load_daily, two_crypto_symbols
from moola.data._gaps import mark_gaps
from moola.data._schema import Timeframe
from moola.features import (
    FeatureMatrix,
    FeatureSet,
    FeatureSpec,
    compute_features,
    get_feature_set,
    list_feature_sets,
)

DATA_FOR_SET = {"ohlc4": "daily", "relative11": "daily", "alpha158": "daily", "alpha360": "daily",
                "crypto39": "crypto"}
TIMEFRAME = {"daily": Timeframe.D1, "crypto": Timeframe.M1}


@lru_cache(maxsize=2)
def _panel(kind: str) -> pl.DataFrame:
    """Real bars: four stocks x 220 days (one with zero-volume warts), or two 1-minute series
    x 400 bars."""
    if kind == "crypto":
        return two_crypto_symbols(400, 20_000)
    syms = list(clean_daily_symbols(3)) + [s for s in ("BHF",) if s in daily_symbols()]
    return load_daily(tuple(syms), max_rows_per_symbol=220)


@lru_cache(maxsize=8)
def _full(set_name: str) -> FeatureMatrix:
    return compute_features(_panel(DATA_FOR_SET[set_name]), get_feature_set(set_name))


def _truncation_mismatch(
    fs: FeatureSet, panel: pl.DataFrame, full: FeatureMatrix, symbols: list[str], cut: object,
    timeframe: Timeframe,
) -> str | None:
    """Why features of ``symbols`` truncated at ``cut`` differ from the full run, or None."""
    chosen = panel.filter(pl.col("symbol").is_in(symbols))
    truncated = chosen.filter(pl.col("ts") <= cut)
    got = compute_features(truncated, fs, timeframe=timeframe)
    keep = (full.keys["symbol"].is_in(symbols) & (full.keys["ts"] <= cut)).to_numpy()
    expected = full.values[keep]
    if not got.keys.select("symbol", "ts").equals(full.keys.filter(keep).select("symbol", "ts")):
        return "keys differ"
    gaps = mark_gaps(chosen, timeframe).filter(pl.col("ts") <= cut)["gap_before"]
    if not got.keys["gap_before"].equals(gaps):
        return "gap_before differs"
    bad = ~np.isclose(got.values, expected, rtol=1e-5, atol=1e-7, equal_nan=True)
    if bad.any():
        rows, cols = np.nonzero(bad)
        names = sorted({fs.names[c] for c in cols})
        return f"{int(bad.sum())} values differ, e.g. {names[:5]} at truncated rows {rows[:5]}"
    return None


def _check(set_name: str, data: st.DataObject) -> None:
    kind = DATA_FOR_SET[set_name]
    panel = _panel(kind)
    symbols = data.draw(
        st.lists(st.sampled_from(sorted(set(panel["symbol"]))), min_size=1, max_size=3,
                 unique=True),
        label="symbols",
    )
    times = panel.filter(pl.col("symbol").is_in(symbols))["ts"].unique().sort()
    cut = times[data.draw(st.integers(0, len(times) - 1), label="cut index")]
    why = _truncation_mismatch(
        get_feature_set(set_name), panel, _full(set_name), symbols, cut, TIMEFRAME[kind]
    )
    assert why is None, f"{set_name} truncated at {cut} for {symbols}: {why}"


SETTINGS = settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@SETTINGS
@given(data=st.data())
def test_ohlc4_has_no_lookahead(data: st.DataObject) -> None:
    _check("ohlc4", data)


@SETTINGS
@given(data=st.data())
def test_relative11_has_no_lookahead(data: st.DataObject) -> None:
    _check("relative11", data)


@SETTINGS
@given(data=st.data())
def test_crypto39_has_no_lookahead(data: st.DataObject) -> None:
    _check("crypto39", data)


@SETTINGS
@given(data=st.data())
def test_alpha158_has_no_lookahead(data: st.DataObject) -> None:
    _check("alpha158", data)


def test_every_set_is_covered() -> None:
    assert {fs.name for fs in list_feature_sets()} == set(DATA_FOR_SET)


@pytest.mark.parametrize("leak", ["shift(-1)", "centered window", "whole-series mean"])
def test_the_check_catches_a_leaky_feature(leak: str) -> None:
    """The same check flags features that read later bars, so the properties above can fail."""
    c = pl.col("close")
    expr = {
        "shift(-1)": c.shift(-1) / c,
        "centered window": c.rolling_mean(5, center=True) / c,
        "whole-series mean": c / c.mean(),
    }[leak]
    fs = FeatureSet(
        name="leaky", description="test only", specs=(FeatureSpec("x", leak, 2, expr),),
        params={}, kind="per_symbol", make=lambda: fs,
    )
    panel = _panel("daily")
    symbols = sorted(set(panel["symbol"]))[:2]
    full = compute_features(panel, fs)
    times = panel["ts"].unique().sort()
    cut = times[len(times) // 2]
    assert _truncation_mismatch(fs, panel, full, symbols, cut, Timeframe.D1) is not None
