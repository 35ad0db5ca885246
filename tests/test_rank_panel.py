"""The prepared ranking panel on real bars: presence without leakage, the memory-mapped Arrow
cache, date splits with purge and embargo (property-tested), and day batches from spawned
workers equal to in-process ones while Polars' thread pool is busy (no fork deadlock)."""

from __future__ import annotations

import itertools
import threading
from datetime import date

import numpy as np
import polars as pl
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from _datasets_data import sp500_bars, sp500_calendar
from moola.data import Timeframe, mark_gaps
from moola.datasets.rank_panel import (
    WORKER_START_METHOD,
    RankBatchSource,
    RankPanel,
    date_split,
    walk_forward_splits,
)

SYMBOLS = ["AAPL", "COH", "LVLT", "MMC", "UA", "XOM", "CVX", "JPM"]
T = 10
H = (1, 5)


def _panel(symbols: list[str] = SYMBOLS) -> RankPanel:
    """Log-ratio features of real adjusted bars (Polars-built), warm-up NaN, planted labels."""
    bars = sp500_bars(symbols)
    keys = mark_gaps(bars.select("symbol", "ts"), Timeframe.D1, sp500_calendar()).select(
        "symbol", "ts", "gap_before").with_columns(is_filled=pl.lit(False))
    feats = bars.select(
        *[(pl.col(c) / pl.col("close").shift(1).over("symbol")).log().alias(c)
          for c in ("open", "high", "low", "close")])
    values = np.ascontiguousarray(feats.to_numpy(), dtype=np.float32)
    fwd = bars.select(*[(pl.col("close").shift(-h).over("symbol") / pl.col("close") - 1).alias(f"r{h}")
                        for h in H]).fill_null(np.nan)
    raw = np.ascontiguousarray(fwd.to_numpy(), dtype=np.float32)
    return RankPanel(keys=keys, features=values, feature_names=("o", "h", "l", "c"), labels=raw * 10,
                     labels_raw=raw, horizons=H, window=T, meta={"feature_set": "test"})


@pytest.fixture(scope="module")
def panel() -> RankPanel:
    return _panel()


def _ns(y: int, m: int, d: int) -> int:
    return int(np.datetime64(date(y, m, d), "ns").astype(np.int64))


def test_presence_follows_each_stocks_own_history(panel: RankPanel) -> None:
    dp = panel.day_panel
    sym = dp.symbols.index("UA")  # lists on 2015-07-01: present only once T bars of its own exist
    first = dp.dates[np.flatnonzero(dp.mask[:, sym])[0]]
    ua = panel.keys.filter(pl.col("symbol") == "UA").get_column("ts").dt.epoch("ns").to_numpy()
    assert first == ua[T]  # row 0 has no previous close (NaN feature), so rows 1..T make the window
    coh = dp.symbols.index("COH")  # leaves in 2017-10: absent afterwards, never borrowed
    last = dp.dates[np.flatnonzero(dp.mask[:, coh])[-1]]
    assert last <= _ns(2017, 10, 31)
    mmc = dp.symbols.index("MMC")  # misses 2015-04-28: no window crosses that gap
    gap_day = int(np.searchsorted(dp.dates, _ns(2015, 4, 29)))
    assert not dp.mask[gap_day: gap_day + T - 1, mmc].any()


def test_batch_holds_labels_and_masks_of_present_stocks(panel: RankPanel) -> None:
    src = RankBatchSource(panel, np.arange(100, 110))
    b = next(src.batches(torch.arange(10), 4))
    assert b["x"].shape == (4, len(SYMBOLS), T, 4)
    assert b["y"].shape == b["y_raw"].shape == b["y_mask"].shape == (4, len(SYMBOLS), len(H))
    m = b["mask"]
    assert torch.all(b["x"][~m] == 0) and torch.isfinite(b["x"]).all()
    assert torch.isnan(b["y_raw"][~m]).all()
    rows = panel.day_panel.end_rows[100:104]
    d, s = np.nonzero(rows >= 0)
    np.testing.assert_array_equal(b["y_raw"].numpy()[d, s], panel.labels_raw[rows[d, s]])
    assert b["day"].tolist() == [100, 101, 102, 103]


def test_cache_round_trip_is_memory_mapped_and_exact(panel: RankPanel, tmp_path) -> None:
    panel.save(tmp_path / "p")
    back = RankPanel.load(tmp_path / "p")
    assert not back.features.flags.writeable  # a view of the mapped file, not a copy
    np.testing.assert_array_equal(back.features, panel.features)
    np.testing.assert_array_equal(back.labels_raw, panel.labels_raw)
    assert back.keys.equals(panel.keys)
    np.testing.assert_array_equal(back.day_panel.end_rows, panel.day_panel.end_rows)
    assert back.meta["feature_set"] == "test"


def test_cache_refuses_another_version(panel: RankPanel, tmp_path) -> None:
    import json

    panel.save(tmp_path / "p")
    meta = json.loads((tmp_path / "p" / "panel.json").read_text())
    (tmp_path / "p" / "panel.json").write_text(json.dumps({**meta, "version": 0}))
    with pytest.raises(ValueError, match="cache version"):
        RankPanel.load(tmp_path / "p")


def test_date_split_purges_and_embargoes(panel: RankPanel) -> None:
    sp = date_split(panel.dates, train=("2013-01-01", "2015-12-31"), val=("2016-01-01", "2016-12-31"),
                    test=("2017-01-01", "2017-12-31"), purge=20, embargo=5)
    assert sp.train[-1] + 20 < sp.val[0] and sp.val[-1] + 20 < sp.test[0]
    assert sp.purged == 40 and sp.embargoed == 10
    desc = sp.describe(panel.dates)
    assert desc["test"][0] >= "2017-01" and desc["train"][1] <= "2015-12-31"


def test_date_split_errors_name_the_segment(panel: RankPanel) -> None:
    with pytest.raises(ValueError, match=r"split\.val"):
        date_split(panel.dates, train=("2013-01-01", "2015-12-31"), val=("2019-01-01", "2019-06-30"),
                   test=("2020-01-01", "2020-12-31"), purge=1, embargo=0)
    with pytest.raises(ValueError, match="end before"):
        date_split(panel.dates, train=("2013-01-01", "2016-06-30"), val=("2016-01-01", "2016-12-31"),
                   test=("2017-01-01", "2017-12-31"), purge=1, embargo=0)


@settings(max_examples=60, deadline=None)
@given(cut1=st.integers(100, 600), len2=st.integers(30, 200), purge=st.integers(0, 30),
       embargo=st.integers(0, 15))
def test_no_label_reaches_a_later_segment(cut1: int, len2: int, purge: int, embargo: int) -> None:
    """For any cuts: a date's label (purge bars ahead) never reaches the next segment, and the
    next segment starts more than ``embargo`` dates after the previous one ends."""
    dates = (np.arange(1000, dtype=np.int64) + 16_000) * 86_400 * 10**9
    day = [str(np.datetime64(int(d), "ns").astype("datetime64[D]")) for d in dates]
    cut2 = min(cut1 + len2, 990)
    sp = date_split(dates, train=(day[0], day[cut1 - 1]), val=(day[cut1], day[cut2 - 1]),
                    test=(day[cut2], day[-1]), purge=purge, embargo=embargo)
    segs = [s for s in (sp.train, sp.val, sp.test) if s.size]
    for a, b in itertools.pairwise(segs):
        assert a[-1] + purge < b[0]
    if sp.val.size:
        assert sp.val[0] > cut1 - 1 + embargo
    if sp.test.size:
        assert sp.test[0] > cut2 - 1 + embargo
    assert sp.train.size + sp.val.size + sp.test.size + sp.purged + sp.embargoed == 1000


def test_walk_forward_folds_move_forward_and_never_overlap(panel: RankPanel) -> None:
    folds = walk_forward_splits(panel.dates, first_test="2016-01-01", step=126, val_days=60, purge=5,
                                embargo=2, mode="sliding", train_days=250)
    assert len(folds) >= 3
    for f in folds:
        assert f.train[-1] + 5 < f.val[0] and f.val[-1] + 5 < f.test[0]
        assert f.train.size <= 250
    assert all(a.test[0] < b.test[0] for a, b in itertools.pairwise(folds))
    expanding = walk_forward_splits(panel.dates, first_test="2016-01-01", step=126, val_days=60,
                                    purge=5, embargo=2)
    assert expanding[-1].train[0] == expanding[0].train[0] == 0


def _polars_busy(stop: threading.Event) -> None:
    """Keep Polars' thread pool (and its locks) busy in the parent while workers start."""
    df = pl.DataFrame({"g": np.arange(200_000) % 97, "v": np.random.default_rng(0).random(200_000)})
    while not stop.is_set():
        df.group_by("g").agg(pl.col("v").sort().median())


@pytest.mark.timeout(240)
def test_spawned_workers_load_batches_while_polars_is_busy(panel: RankPanel, tmp_path) -> None:
    """Workers > 0 over a Polars-built, cached panel: spawn (never fork) starts them, so no lock
    held by Polars' pool at fork time can hang them; their batches equal the in-process ones."""
    assert WORKER_START_METHOD == "spawn"
    cache = tmp_path / "cache"
    panel.save(cache)
    mapped = RankPanel.load(cache)
    days = np.arange(50, 82)
    order = torch.randperm(len(days), generator=torch.Generator().manual_seed(0))
    stop = threading.Event()
    busy = threading.Thread(target=_polars_busy, args=(stop,), daemon=True)
    busy.start()
    try:
        with_workers = list(RankBatchSource(mapped, days, num_workers=2, cache_dir=cache).batches(order, 4))
    finally:
        stop.set()
        busy.join()
    in_process = list(RankBatchSource(mapped, days).batches(order, 4))
    assert len(with_workers) == len(in_process) == 8
    for a, b in zip(with_workers, in_process, strict=True):
        assert a.keys() == b.keys()
        for k in a:
            assert torch.equal(a[k].nan_to_num(-9.0), b[k].nan_to_num(-9.0)), k


def test_workers_need_a_cache(panel: RankPanel) -> None:
    with pytest.raises(ValueError, match="cache_dir"):
        RankBatchSource(panel, np.arange(3), num_workers=2)
