"""Forward-return labels and cross-sectional processors on real bundled bars: both entry
conventions by hand, NaN across a stock's own gaps and past its end, labels that read only their
own stock's next bars (property), processors fitted on training dates that later dates cannot
move, per-date ranks equal to scipy's, and a fitted state that round-trips through JSON."""

from __future__ import annotations

import json

import numpy as np
import polars as pl
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.stats import rankdata

from _real_data import BUNDLED_DAILY
from moola.datasets.xsection import (
    CSRankNorm,
    CSZScoreNorm,
    Fillna,
    Processors,
    RobustZScoreNorm,
    forward_returns,
    label_horizon_bars,
    processor_config,
)


@pytest.fixture(scope="module")
def bars() -> pl.DataFrame:
    df = pl.read_parquet(BUNDLED_DAILY)
    df = df.filter(pl.col("adj_close").is_not_null()).unique(["symbol", "date"], keep="first")
    return df.select("symbol", pl.col("date").cast(pl.Datetime("ns")).dt.replace_time_zone("UTC").alias("ts"),
                     "close", "adj_close").sort("symbol", "ts")


def test_both_entry_conventions_by_hand(bars: pl.DataFrame) -> None:
    aapl = bars.filter(pl.col("symbol") == "AAPL")
    p = aapl.get_column("adj_close").to_numpy()
    nxt = forward_returns(aapl, (1, 5), entry="next_close").filter(pl.col("symbol") == "AAPL")
    now = forward_returns(aapl, (1, 5), entry="close")
    i = 400
    assert nxt["ret_5"][i] == pytest.approx(p[i + 6] / p[i + 1] - 1, rel=1e-12)
    assert now["ret_5"][i] == pytest.approx(p[i + 5] / p[i] - 1, rel=1e-12)
    assert now["ret_1"][i] == pytest.approx(p[i + 1] / p[i] - 1, rel=1e-12)
    # the last h (close) or h + 1 (next close) bars have no label
    assert np.isnan(now["ret_5"].to_numpy()[-5:]).all() and np.isfinite(now["ret_5"][-6])
    assert np.isnan(nxt["ret_5"].to_numpy()[-6:]).all() and np.isfinite(nxt["ret_5"][-7])
    assert label_horizon_bars(5, "next_close") == 6 and label_horizon_bars(5, "close") == 5


def test_no_label_crosses_a_stocks_own_gap(bars: pl.DataFrame) -> None:
    """MMC misses 2015-04-28 (its all-null row was dropped): labels reading across it are NaN."""
    r = forward_returns(bars, (1, 5), entry="close").filter(pl.col("symbol") == "MMC")
    day = r.get_column("ts").dt.date().cast(pl.String)
    before = int(np.flatnonzero((day < "2015-04-28").to_numpy())[-1])  # 2015-04-27
    assert day[before] == "2015-04-27" and day[before + 1] == "2015-04-29"
    ret5 = r["ret_5"].to_numpy()
    assert np.isnan(ret5[before - 4: before + 1]).all()  # all five read 04-28's slot
    assert np.isfinite(ret5[before - 5]) and np.isfinite(ret5[before + 1])
    assert np.isnan(r["ret_1"][before]) and np.isfinite(r["ret_1"][before - 1])


@settings(max_examples=30, deadline=None)
@given(row=st.integers(0, 1100), other=st.integers(0, 1200), scale=st.floats(0.5, 2.0))
def test_a_label_reads_only_its_own_stocks_next_bars(row: int, other: int, scale: float) -> None:
    """Changing any price outside rows t+1 .. t+1+h of the same stock leaves ret_h at t unchanged."""
    df = pl.read_parquet(BUNDLED_DAILY).filter(pl.col("symbol").is_in(["KO", "PG"]))
    df = df.select("symbol", pl.col("date").cast(pl.Datetime("ns")).alias("ts"), "adj_close")
    df = df.sort("symbol", "ts")
    h = 5
    base = forward_returns(df, (h,))
    n_ko = int((df["symbol"] == "KO").sum())
    t = row
    reads = set(range(t + 1, t + 2 + h))
    target = other if other not in reads else (t + 2 + h + other) % df.height
    if target in reads or target == t:
        return
    changed = df.with_columns(pl.when(pl.int_range(pl.len()) == target).then(pl.col("adj_close") * scale)
                              .otherwise(pl.col("adj_close")).alias("adj_close"))
    after = forward_returns(changed, (h,))
    if t < n_ko - (h + 1):
        assert after["ret_5"][t] == base["ret_5"][t]


def test_robust_zscore_learns_on_training_dates_only(bars: pl.DataFrame) -> None:
    frame = bars.select("ts", "symbol", pl.col("adj_close").log().diff().over("symbol").alias("r"))
    train = frame.filter(pl.col("ts").dt.year() <= 2015)
    a = RobustZScoreNorm(["r"], clip=3.0).fit(train)
    later = frame.with_columns(pl.when(pl.col("ts").dt.year() >= 2016).then(pl.col("r") * 50)
                               .otherwise(pl.col("r")).alias("r"))
    b = RobustZScoreNorm(["r"], clip=3.0).fit(later.filter(pl.col("ts").dt.year() <= 2015))
    assert a.median_ == b.median_ and a.scale_ == b.scale_  # test dates never move the fit
    x = train["r"].drop_nulls().drop_nans().to_numpy()
    med = np.median(x)
    assert a.median_[0] == pytest.approx(med)
    assert a.scale_[0] == pytest.approx(1.4826 * np.median(np.abs(x - med)))
    z = a.transform(frame)["r"].to_numpy()
    assert np.nanmax(np.abs(z)) <= 3.0 and np.isnan(z).sum() == frame["r"].is_null().sum()


def test_cs_rank_and_zscore_per_date_equal_references(bars: pl.DataFrame) -> None:
    frame = bars.select("ts", "symbol", pl.col("adj_close").pct_change().over("symbol").alias("r"))
    when = frame.get_column("ts").unique().sort()[900]
    day = frame.filter(pl.col("ts") == when)
    ranked = CSRankNorm(["r"]).transform(day)["r"].to_numpy()
    x = day["r"].to_numpy()
    ok = np.isfinite(x)
    np.testing.assert_allclose(ranked[ok], (rankdata(x[ok]) / ok.sum() - 0.5) * 3.46, rtol=1e-12)
    z = CSZScoreNorm(["r"]).transform(day)["r"].to_numpy()
    np.testing.assert_allclose(z[ok], (x[ok] - x[ok].mean()) / x[ok].std(ddof=1), rtol=1e-10)
    assert np.isnan(ranked[~ok]).all()


def test_fitted_state_round_trips_and_chunks_concatenate(bars: pl.DataFrame) -> None:
    frame = bars.select("ts", "symbol", pl.col("close").log().alias("a"), pl.col("adj_close").alias("b"))
    cfgs = [processor_config({"kind": "robust_zscore", "clip": 2.5}), processor_config({"kind": "fillna"})]
    whole = Processors.from_configs(cfgs, ["a", "b"]).fit(frame)
    parts = [Processors.from_configs(cfgs, [c]).fit(frame) for c in ("a", "b")]
    joined = Processors.concat(parts)
    back = Processors.from_dict(json.loads(json.dumps(whole.to_dict())))
    for p in (joined, back):
        assert p.transform(frame).equals(whole.transform(frame))
    assert Fillna(["a"]).transform(pl.DataFrame({"ts": [1], "a": [float("nan")]}))["a"][0] == 0.0


def test_bad_inputs_say_what_is_wrong(bars: pl.DataFrame) -> None:
    with pytest.raises(ValueError, match="entry 'open'"):
        forward_returns(bars, (1,), entry="open")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="horizons"):
        forward_returns(bars, (0, 5))
    with pytest.raises(ValueError, match="lack column"):
        forward_returns(bars.drop("adj_close"), (1,))
    with pytest.raises(RuntimeError, match="before fit"):
        RobustZScoreNorm(["close"]).transform(bars)
    with pytest.raises(ValueError, match="kind"):
        processor_config({"kind": "rank_gauss"})
