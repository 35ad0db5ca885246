"""``serve_features`` (the runtime's small-frame path) equals ``compute_features``.

The schema hash covers ``compute_features``' source, not ``serve_features``', so this is what
keeps the served values those the model was trained on: every registered set, on real bars
(1-minute BTC with real gaps, daily stocks with ``adj_close``), on frames of the sizes a serving
tick reads and on arbitrary slices (hypothesis), including dropped bars, NaN prices, infinities
and rows of one bar per symbol.

Bit for bit on one Polars thread (checked in a subprocess with ``POLARS_MAX_THREADS=1``). With
more threads ``compute_features``' lazy query runs on Polars' streaming engine, whose rolling
windows follow the morsel split, and a value at a cancellation point can differ in its last
bits (seen: one value of 1e-16 in 155k); there the NaN pattern is exact and values agree to 1e-6.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from _real_data import load_daily, two_crypto_symbols
from moola.data import Timeframe, mark_gaps
from moola.features import compute_features, list_feature_sets, serve_features

SETS = [fs.name for fs in list_feature_sets()]


ONE_THREAD = pl.thread_pool_size() == 1


def _same(a, b) -> None:
    assert a.names == b.names and a.schema_hash == b.schema_hash
    assert a.keys.equals(b.keys)
    assert a.values.dtype == b.values.dtype == np.float32
    assert np.array_equal(np.isnan(a.values), np.isnan(b.values))  # NaN exactly where NaN
    if ONE_THREAD:
        assert np.array_equal(a.values, b.values, equal_nan=True)  # bit for bit
    else:
        np.testing.assert_allclose(a.values, b.values, rtol=1e-6, atol=1e-9, equal_nan=True)


@pytest.fixture(scope="module")
def crypto() -> pl.DataFrame:
    return mark_gaps(two_crypto_symbols(1500, 6000), Timeframe("1m"))


@pytest.fixture(scope="module")
def daily() -> pl.DataFrame:
    df = load_daily(max_rows_per_symbol=400)
    syms = df.get_column("symbol").unique().sort().head(4).to_list()
    return mark_gaps(df.filter(pl.col("symbol").is_in(syms)), Timeframe("1d"))


@pytest.mark.parametrize("name", SETS)
@pytest.mark.parametrize("rows", [1, 2, 139, 198, 700])
def test_tick_sized_frames_equal_compute_features(name, rows, crypto, daily) -> None:
    fs = next(f for f in list_feature_sets() if f.name == name)
    for bars in (crypto, daily):
        tail = bars.filter(pl.int_range(pl.len()).over("symbol") >= pl.len().over("symbol") - rows)
        _same(serve_features(tail, fs), compute_features(tail, fs))


@pytest.mark.parametrize("name", SETS)
def test_dropped_bars_and_nan_prices_equal_compute_features(name, crypto) -> None:
    """Holes inside the frame (gap flags from the timeframe) and a NaN close spoil the same rows."""
    fs = next(f for f in list_feature_sets() if f.name == name)
    idx = pl.int_range(pl.len()).over("symbol")
    holed = crypto.filter(~idx.is_between(300, 309) & (idx % 97 != 5)).drop("gap_before")
    at = idx.over("symbol")
    holed = holed.with_columns(  # a NaN close; a stretch of zero opens (ratios to the open -> inf)
        pl.when(at == 450).then(float("nan")).otherwise(pl.col("close")).alias("close"),
        pl.when(at.is_between(600, 640)).then(0.0).otherwise(pl.col("open")).alias("open"),
    )
    a = serve_features(holed, fs, timeframe="1m")
    b = compute_features(holed, fs, timeframe="1m")
    _same(a, b)
    assert a.keys.get_column("gap_before").sum() > 0
    assert not np.isinf(a.values).any()
    if name != "alpha360":  # alpha360 divides by the close and volume only, never by the open
        assert np.isnan(a.values[620]).any()  # a ratio to the zero open: inf became NaN


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(start=st.integers(0, 1400), length=st.integers(1, 400), which=st.sampled_from(SETS),
       daily_bars=st.booleans())
def test_any_real_slice_equals_compute_features(start, length, which, daily_bars, crypto, daily) -> None:
    fs = next(f for f in list_feature_sets() if f.name == which)
    bars = daily if daily_bars else crypto
    idx = pl.int_range(pl.len()).over("symbol")
    part = bars.filter(idx.is_between(start, start + length - 1))
    if part.is_empty():
        return
    _same(serve_features(part, fs), compute_features(part, fs))


def test_bad_input_is_refused_the_same_way(crypto) -> None:
    fs = list_feature_sets()[0]
    unsorted = crypto.sort("ts", descending=True)
    with pytest.raises(ValueError, match="sorted by"):
        serve_features(unsorted, fs)
    with pytest.raises(ValueError, match="lack required columns"):
        serve_features(crypto.drop("close"), fs)


BIT_FOR_BIT = """
import sys
sys.path.insert(0, sys.argv[1])
import numpy as np, polars as pl
from _real_data import load_daily, two_crypto_symbols
from moola.data import Timeframe, mark_gaps
from moola.features import compute_features, list_feature_sets, serve_features
assert pl.thread_pool_size() == 1
daily = load_daily(max_rows_per_symbol=400)
daily = mark_gaps(daily.filter(pl.col("symbol").is_in(daily["symbol"].unique().sort().head(4))),
                  Timeframe("1d"))
crypto = mark_gaps(two_crypto_symbols(1500, 6000), Timeframe("1m"))
n = 0
for fs in list_feature_sets():
    for bars in (crypto, daily):
        for rows in (1, 139, 198, 700):
            tail = bars.filter(pl.int_range(pl.len()).over("symbol") >= pl.len().over("symbol") - rows)
            a, b = serve_features(tail, fs).values, compute_features(tail, fs).values
            assert np.array_equal(a, b, equal_nan=True), (fs.name, rows)
            n += 1
print(n)
"""


def test_bit_for_bit_on_one_polars_thread() -> None:
    """The claim the runtime docs make, checked where it holds: every set, both kinds of bars."""
    env = {**os.environ, "POLARS_MAX_THREADS": "1"}
    here = Path(__file__).resolve().parent
    out = subprocess.run([sys.executable, "-c", BIT_FOR_BIT, str(here)], env=env,
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.strip() == str(len(SETS) * 2 * 4)
