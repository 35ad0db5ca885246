"""WindowSet on real 1-minute BTC bars: zero-copy, exact content, and no dishonest windows."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from _datasets_data import (
    crypto_bars,
    crypto_matrix,
    matrix_from_bars,
    sp500_bars,
    sp500_calendar,
    sp500_matrix,
)
from moola.data._schema import Timeframe
from moola.datasets.windows import WindowSet
from moola.features._matrix import FeatureMatrix

MINUTE_NS = 60 * 10**9
W = 105


@pytest.fixture(scope="module")
def fm_one() -> FeatureMatrix:
    return crypto_matrix(("BTCUSD",))


# Daily panel with real warts: UA starts late and misses 5 days, MMC misses one, COH and
# LVLT stop early (and had duplicated keys).
DAILY = ["AAPL", "COH", "LVLT", "MMC", "UA"]


@pytest.fixture(scope="module")
def fm_daily() -> FeatureMatrix:
    return daily_matrix(DAILY)


def daily_matrix(symbols: list[str]) -> FeatureMatrix:
    fm = sp500_matrix(symbols)
    return FeatureMatrix(fm.keys, fm.values, fm.names, "test_daily")


# Rows 1000, 1001 and 5000 of BTCUSD removed: two real gaps (2 minutes and 1 minute missing).
DROPPED = (1000, 1001, 5000)


@pytest.fixture(scope="module")
def fm_gap() -> FeatureMatrix:
    return crypto_matrix(("BTCUSD",), drop_rows=DROPPED)


def _ts(fm: FeatureMatrix) -> np.ndarray:
    return fm.keys.get_column("ts").dt.epoch("ns").to_numpy()


def bar_positions(fm: FeatureMatrix) -> np.ndarray:
    """Each bar's step number on its own clock: minutes, or trading days of the full panel."""
    ts = _ts(fm)
    if fm.set_name.endswith("daily"):
        cal = sp500_calendar().dt.epoch("ns").to_numpy()
        return np.searchsorted(cal, ts)
    return ts // MINUTE_NS


def reference_starts(
    fm: FeatureMatrix, window: int, stride: int = 1, horizon: int = 0, allow_gaps: bool = False
) -> np.ndarray:
    """Brute force from timestamps (not gap flags): contiguous bars, no NaN, same symbol."""
    pos = bar_positions(fm)
    nan = np.isnan(fm.values).any(axis=1)
    sym = fm.keys.get_column("symbol").to_numpy()
    out = []
    n = len(pos)
    first = 0
    while first < n:
        last = first
        while last + 1 < n and sym[last + 1] == sym[first]:
            last += 1
        for s in range(first, last + 2 - window - horizon, stride):
            e = s + window - 1
            if nan[s : e + 1].any():
                continue
            if not allow_gaps and pos[e + horizon] - pos[s] != window - 1 + horizon:
                continue
            out.append(s)
        first = last + 1
    return np.array(out, dtype=np.int64)


def test_fixture_is_real_contiguous_data(fm_one: FeatureMatrix, fm_gap: FeatureMatrix) -> None:
    assert fm_one.values.shape == (30240, 4)
    assert not fm_one.keys.get_column("gap_before").any()
    gaps = np.flatnonzero(fm_gap.keys.get_column("gap_before").to_numpy())
    assert gaps.tolist() == [1000, 4998]  # positions after the removals


def test_views_share_memory_and_are_float32(fm_one: FeatureMatrix) -> None:
    ws = WindowSet.from_matrix(fm_one, W)
    w0 = ws[0]
    assert w0.dtype == np.float32
    assert w0.shape == (W, 4)
    assert np.shares_memory(w0, fm_one.values)
    arr = ws.array
    assert arr.shape == (len(ws), W, 4)
    assert arr.dtype == np.float32
    assert np.shares_memory(arr, fm_one.values)
    assert not arr.flags.writeable  # a window must never be able to edit the features
    with pytest.raises(ValueError):
        w0[0, 0] = 1.0
    assert ws.index_nbytes == 8 * len(ws)


def test_content_equals_base_rows(fm_one: FeatureMatrix) -> None:
    ws = WindowSet.from_matrix(fm_one, W, stride=7)
    rng = np.random.default_rng(0)
    idx = rng.choice(len(ws), size=50, replace=False)
    batch = ws.batch(idx)
    assert batch.shape == (50, W, 4)
    assert batch.flags["C_CONTIGUOUS"]
    assert not np.shares_memory(batch, fm_one.values)
    arr = ws.array
    for k, i in enumerate(idx):
        s = int(ws.starts[i])
        expect = fm_one.values[s : s + W]
        np.testing.assert_array_equal(ws[int(i)], expect)
        np.testing.assert_array_equal(arr[i], expect)
        np.testing.assert_array_equal(batch[k], expect)
    np.testing.assert_array_equal(ws.take(idx), batch)
    np.testing.assert_array_equal(ws[idx[:3]], batch[:3])


def test_last_bar_matches_raw_csv(fm_one: FeatureMatrix) -> None:
    """Window content and end_ts agree with the raw bars, not just with the matrix."""
    ws = WindowSet.from_matrix(fm_one, W, stride=1000)
    bars = crypto_bars("BTCUSD")
    close = bars.get_column("close").to_numpy()
    ts = bars.get_column("ts")
    meta = ws.meta
    for i in range(len(ws)):
        end_ts = meta["end_ts"][i]
        j = int(ts.search_sorted(end_ts))
        assert ts[j] == end_ts
        expect = np.float32(np.log(close[j] / close[j - 1]))
        assert ws[i][-1, 3] == pytest.approx(expect, rel=1e-6)


def test_no_window_crosses_symbols(fm_daily: FeatureMatrix) -> None:
    ws = WindowSet.from_matrix(fm_daily, W)
    meta = ws.meta
    sym = fm_daily.keys.get_column("symbol")
    assert (sym.gather(meta["start_row"]) == sym.gather(meta["end_row"])).all()
    assert (meta["symbol"] == sym.gather(meta["end_row"])).all()
    counts = dict(meta.group_by("symbol").len().iter_rows())
    assert counts["AAPL"] == 1260 - 1 - W + 1  # full history, first row is warm-up NaN
    assert counts["UA"] < 615 - W  # the missing days cost UA windows
    np.testing.assert_array_equal(ws.starts, reference_starts(fm_daily, W))
    with pytest.raises(ValueError, match="regular stride"):
        _ = ws.array  # several symbols: starts jump at each boundary
    aapl = ws.subset(meta["symbol"].to_numpy() == "AAPL")
    assert aapl.array.shape == (counts["AAPL"], W, 4)
    assert np.shares_memory(aapl.array, fm_daily.values)


def test_count_formula_known_example(fm_one: FeatureMatrix) -> None:
    """200 bars, window 10, stride 3, horizon 2: starts 0,3,...,186 minus the NaN start 0."""
    small = FeatureMatrix(
        fm_one.keys.head(200), np.ascontiguousarray(fm_one.values[:200]), fm_one.names,
        fm_one.set_name,
    )
    ws = WindowSet.from_matrix(small, 10, stride=3, horizon=2)
    n, w, s, h = 200, 10, 3, 2
    assert len(ws) == (n - w - h) // s + 1 - 1 == 62
    assert ws.starts.tolist() == list(range(3, 187, 3))
    assert ws.end_rows[-1] == 186 + 9
    assert ws.regular_step() == 3


def test_gaps_excluded_by_default_and_kept_when_allowed(fm_gap: FeatureMatrix) -> None:
    ws = WindowSet.from_matrix(fm_gap, W)
    n = fm_gap.values.shape[0]
    # each gap row kills the 104 windows that hold it as a non-first row
    assert len(ws) == (n - 1 - W + 1) - 2 * (W - 1)
    np.testing.assert_array_equal(ws.starts, reference_starts(fm_gap, W))
    span = ws.meta.select((pl.col("end_ts") - pl.col("start_ts")).dt.total_minutes())
    assert (span.to_series() == W - 1).all()  # never silently spans missing minutes
    assert 1000 in ws.starts  # a window may start right after a gap
    assert not np.isin(np.arange(1000 - W + 1, 1000), ws.starts).any()

    loose = WindowSet.from_matrix(fm_gap, W, allow_gaps=True)
    assert len(loose) == n - 1 - W + 1
    spans = loose.meta.select((pl.col("end_ts") - pl.col("start_ts")).dt.total_minutes())
    assert spans.to_series().max() == W - 1 + 2
    np.testing.assert_array_equal(loose.starts, reference_starts(fm_gap, W, allow_gaps=True))


def test_nan_warmup_and_holes_excluded(fm_one: FeatureMatrix) -> None:
    values = fm_one.values.copy()
    values[:20] = np.nan  # a 20-bar warm-up
    values[3000, 2] = np.nan  # one missing feature value
    fm = FeatureMatrix(fm_one.keys, values, fm_one.names, fm_one.set_name)
    ws = WindowSet.from_matrix(fm, W)
    assert ws.starts[0] == 20
    assert not np.isin(np.arange(3000 - W + 1, 3001), ws.starts).any()
    assert 3001 in ws.starts
    np.testing.assert_array_equal(ws.starts, reference_starts(fm, W))
    assert not np.isnan(ws.batch(np.arange(0, len(ws), 37))).any()


def test_horizon_reserves_label_bars(fm_one: FeatureMatrix, fm_gap: FeatureMatrix) -> None:
    n = fm_one.values.shape[0]
    ws = WindowSet.from_matrix(fm_one, W, horizon=5)
    assert ws.end_rows.max() == n - 1 - 5
    assert len(ws) == n - 1 - W - 5 + 1

    no_h = WindowSet.from_matrix(fm_gap, W)
    with_h = WindowSet.from_matrix(fm_gap, W, horizon=5)
    # window ending just before the gap is fine alone but its label would cross the gap
    assert 999 in no_h.end_rows and 999 not in with_h.end_rows
    assert 994 in with_h.end_rows and 995 not in with_h.end_rows
    np.testing.assert_array_equal(with_h.starts, reference_starts(fm_gap, W, horizon=5))


def test_allow_filled(fm_one: FeatureMatrix) -> None:
    bars = crypto_bars("BTCUSD")
    filled = np.zeros(bars.height, dtype=bool)
    filled[[500, 501]] = True  # pretend these were synthetic gap fills
    fm = matrix_from_bars(bars, Timeframe.M1, is_filled=filled)
    assert len(WindowSet.from_matrix(fm, W)) == len(WindowSet.from_matrix(fm_one, W))
    strict = WindowSet.from_matrix(fm, W, allow_filled=False)
    held = (strict.starts[:, None] <= [500, 501]) & (strict.end_rows[:, None] >= [500, 501])
    assert not held.any()
    assert len(strict) == len(WindowSet.from_matrix(fm_one, W)) - (W + 1)


def test_meta_and_spans(fm_one: FeatureMatrix) -> None:
    ws = WindowSet.from_matrix(fm_one, W, stride=10, horizon=3)
    meta = ws.meta
    assert meta.columns == ["symbol", "start_ts", "end_ts", "start_row", "end_row"]
    ts = fm_one.keys.get_column("ts")
    assert (meta["end_ts"] == ts.gather(meta["start_row"] + W - 1)).all()
    assert (meta["end_row"] - meta["start_row"] == W - 1).all()
    start, end = ws.to_spans()
    assert start.dtype == np.int64 and end.dtype == np.int64
    np.testing.assert_array_equal(start, meta["start_ts"].dt.epoch("ns").to_numpy())
    np.testing.assert_array_equal(end - start, np.full(len(ws), (W - 1 + 3) * MINUTE_NS))
    _, end0 = ws.to_spans(horizon=0)
    np.testing.assert_array_equal(end0, meta["end_ts"].dt.epoch("ns").to_numpy())
    with pytest.raises(ValueError, match="runs past"):
        WindowSet.from_matrix(fm_one, W).to_spans(horizon=1)  # last window has no next bar


def test_bad_arguments(fm_one: FeatureMatrix) -> None:
    for kwargs in ({"stride": 0}, {"horizon": -1}):
        with pytest.raises(ValueError):
            WindowSet.from_matrix(fm_one, W, **kwargs)
    with pytest.raises(ValueError):
        WindowSet.from_matrix(fm_one, 0)
    keys = fm_one.keys.drop("gap_before")
    fm = FeatureMatrix(keys, fm_one.values, fm_one.names, fm_one.set_name)
    with pytest.raises(ValueError, match="gap_before"):
        WindowSet.from_matrix(fm, W)
    assert len(WindowSet.from_matrix(fm_one, 40000)) == 0


@settings(max_examples=40, deadline=None)
@given(
    window=st.integers(1, 30),
    stride=st.integers(1, 5),
    horizon=st.integers(0, 4),
    allow_gaps=st.booleans(),
    drops=st.lists(st.integers(0, 299), max_size=8, unique=True),
)
def test_matches_brute_force(
    window: int, stride: int, horizon: int, allow_gaps: bool, drops: list[int]
) -> None:
    # UA's first 150 days hold its real missing day 2015-11-09; MMC's 2015-04-28 too.
    bars = pl.concat([
        sp500_bars(["MMC"]).filter(pl.col("ts").dt.year() == 2015).head(150),
        sp500_bars(["UA"]).head(150),
    ])
    keep = np.ones(bars.height, dtype=bool)
    keep[drops] = False
    fm = matrix_from_bars(bars.filter(pl.Series(keep)), Timeframe.D1, sp500_calendar())
    fm = FeatureMatrix(fm.keys, fm.values, fm.names, "test_daily")
    ws = WindowSet.from_matrix(
        fm, window, stride=stride, horizon=horizon, allow_gaps=allow_gaps
    )
    ref = reference_starts(fm, window, stride, horizon, allow_gaps)
    np.testing.assert_array_equal(ws.starts, ref)
