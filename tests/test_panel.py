"""DayPanel on real daily bars: presence mask, missing stocks, aligned targets, batch shapes."""

from __future__ import annotations

from datetime import UTC, datetime

import numpy as np
import polars as pl
import pytest

from _datasets_data import sp500_bars, sp500_matrix
from moola.datasets.panel import DayPanel
from moola.datasets.windows import WindowSet
from moola.features._matrix import FeatureMatrix

W = 10
# UA starts 2015-07-01 and misses 5 days; MMC misses 2015-04-28; COH/LVLT stop in Oct/Nov 2017.
SYMBOLS = ["AAPL", "COH", "LVLT", "MMC", "UA"]


def ns(y: int, m: int, d: int) -> int:
    return int(datetime(y, m, d, tzinfo=UTC).timestamp()) * 10**9


@pytest.fixture(scope="module")
def fm() -> FeatureMatrix:
    return sp500_matrix(SYMBOLS)


@pytest.fixture(scope="module")
def target(fm: FeatureMatrix) -> np.ndarray:
    """Forward 1-bar log return of the adjusted close, NaN on each symbol's last bar."""
    bars = sp500_bars(SYMBOLS).sort("symbol", "ts")
    fwd = bars.select(
        (pl.col("close").shift(-1).over("symbol") / pl.col("close")).log().alias("t")
    )
    return fwd.get_column("t").fill_null(np.nan).to_numpy().astype(np.float64)


def _day_index(panel: DayPanel, y: int, m: int, d: int) -> int:
    i = int(np.searchsorted(panel.dates, ns(y, m, d)))
    assert panel.dates[i] == ns(y, m, d)
    return i


def test_mask_matches_presence(fm: FeatureMatrix, target: np.ndarray) -> None:
    panel = DayPanel.from_matrix(fm, W, horizon=1, min_stocks=1, target=target)
    ws = WindowSet.from_matrix(fm, W, horizon=1)
    ok = ~np.isnan(target[ws.end_rows])
    meta = ws.meta.filter(pl.Series(ok))
    expected = set(
        zip(meta["symbol"].to_list(), meta["end_ts"].dt.epoch("ns").to_list(), strict=True)
    )
    got = {
        (panel.symbols[s], int(panel.dates[d])) for d, s in zip(*np.nonzero(panel.mask), strict=True)
    }
    assert got == expected
    assert panel.symbols == SYMBOLS
    assert panel.mask.shape == (panel.n_dates, 5)
    assert np.all(np.diff(panel.dates) > 0)
    assert panel.mask.any(axis=1).all()  # min_stocks=1 keeps only dates with someone


def test_days_with_missing_stocks(fm: FeatureMatrix, target: np.ndarray) -> None:
    panel = DayPanel.from_matrix(fm, W, horizon=1, min_stocks=2, target=target)
    ua, mmc, coh = (SYMBOLS.index(s) for s in ("UA", "MMC", "COH"))
    before_ua = _day_index(panel, 2015, 3, 2)
    assert not panel.mask[before_ua, ua] and panel.mask[before_ua].sum() == 4
    after_gap = _day_index(panel, 2015, 11, 12)  # UA missed 2015-11-09: window spans a gap
    x, syms, mask, tgt = panel.day(after_gap)
    assert "UA" not in syms and not mask[ua]
    assert x.shape == (4, W, 4) and tgt is not None and tgt.shape == (4,)
    assert syms == [s for s in SYMBOLS if s != "UA"]
    assert panel.mask[_day_index(panel, 2016, 6, 1), ua]  # later UA is back
    assert not panel.mask[_day_index(panel, 2015, 4, 29), mmc]  # MMC missed 2015-04-28
    late = _day_index(panel, 2017, 11, 15)
    assert not panel.mask[late, coh]  # COH's history ends 2017-10-30


def test_day_contents_and_targets_aligned(fm: FeatureMatrix, target: np.ndarray) -> None:
    panel = DayPanel.from_matrix(fm, W, horizon=1, target=target)
    bars = sp500_bars(SYMBOLS)
    ts = fm.keys.get_column("ts").dt.epoch("ns").to_numpy()
    for i in (0, 100, 700, panel.n_dates - 1):
        x, syms, mask, tgt = panel.day(i)
        assert x.dtype == np.float32 and x.shape == (int(mask.sum()), W, 4)
        assert syms == [SYMBOLS[k] for k in np.flatnonzero(mask)]
        for k, s in enumerate(syms):
            end = int(panel.end_rows[i, SYMBOLS.index(s)])
            assert ts[end] == panel.dates[i]
            np.testing.assert_array_equal(x[k], fm.values[end - W + 1 : end + 1])
            # the target is the next bar's return from the raw bars, by (symbol, date)
            sb = bars.filter(pl.col("symbol") == s)
            j = int(np.searchsorted(sb["ts"].dt.epoch("ns").to_numpy(), panel.dates[i]))
            close = sb["close"].to_numpy()
            assert tgt[k] == pytest.approx(np.log(close[j + 1] / close[j]), rel=1e-12)


def test_nan_target_masks_stock(fm: FeatureMatrix, target: np.ndarray) -> None:
    base = DayPanel.from_matrix(fm, W, horizon=1, target=target)
    i = _day_index(base, 2016, 6, 1)
    aapl = SYMBOLS.index("AAPL")
    row = int(base.end_rows[i, aapl])
    t2 = target.copy()
    t2[row] = np.nan
    panel = DayPanel.from_matrix(fm, W, horizon=1, target=t2)
    assert not panel.mask[i, aapl]
    assert panel.mask[i + 1, aapl] and panel.mask[i - 1, aapl]
    assert (panel.mask != base.mask).sum() == 1
    no_target = DayPanel.from_matrix(fm, W, horizon=1)
    assert no_target.day(i).target is None


def test_batch_shapes_and_zeros(fm: FeatureMatrix, target: np.ndarray) -> None:
    panel = DayPanel.from_matrix(fm, W, horizon=1, target=target)
    days = np.array([0, 500, _day_index(panel, 2015, 11, 12), panel.n_dates - 1])
    b = panel.batch(days)
    assert b.X.shape == (4, 5, W, 4) and b.X.dtype == np.float32
    assert b.mask.shape == (4, 5) and b.target is not None and b.target.shape == (4, 5)
    assert not b.mask.all()  # at least one missing stock in this batch
    assert (b.X[~b.mask] == 0).all()
    assert np.isnan(b.target[~b.mask]).all()
    for k, i in enumerate(days):
        d = panel.day(int(i))
        np.testing.assert_array_equal(b.mask[k], d.mask)
        np.testing.assert_array_equal(b.X[k][d.mask], d.X)
        np.testing.assert_array_equal(b.target[k][d.mask], d.target)
    one = panel.batch(3)
    assert one.X.shape == (1, 5, W, 4)
    assert panel.batch(slice(0, 8)).X.shape == (8, 5, W, 4)


def test_min_stocks_and_memory(fm: FeatureMatrix) -> None:
    panel = DayPanel.from_matrix(fm, W, horizon=1, min_stocks=5)
    assert (panel.mask.sum(axis=1) == 5).all()
    assert panel.dates[-1] < ns(2017, 11, 1)  # COH stops 2017-10-30
    loose = DayPanel.from_matrix(fm, W, horizon=1, min_stocks=1)
    assert loose.n_dates > panel.n_dates
    # the panel is an index into fm: nothing (D, S, W, F)-sized is held
    held = sum(v.nbytes for v in vars(loose).values() if isinstance(v, np.ndarray))
    assert held <= loose.n_dates * (loose.n_symbols + 1) * 8
    with pytest.raises(ValueError):
        DayPanel.from_matrix(fm, W, min_stocks=0)
    with pytest.raises(ValueError, match="target shape"):
        DayPanel.from_matrix(fm, W, target=np.zeros(5))


def test_spans(fm: FeatureMatrix) -> None:
    panel = DayPanel.from_matrix(fm, W, horizon=1)
    start, end = panel.spans()
    assert start.shape == end.shape == (panel.n_dates,)
    assert (start < panel.dates).all() and (end > panel.dates).all()
    ts = fm.keys.get_column("ts").dt.epoch("ns").to_numpy()
    m = panel.mask
    np.testing.assert_array_equal(end, np.where(m, ts[np.where(m, panel.end_rows + 1, 0)], 0).max(1))
