"""Forward-return labels and cross-sectional processors on real bundled bars: both entry
conventions by hand and against an independent calendar reference on the whole panel, NaN
across a stock's own gaps and past its end, labels that read only their own stock's next bars
(property), processors fitted on training dates that later dates cannot move, per-date ranks
equal to scipy's, and a fitted state that round-trips through strict JSON and YAML configs."""

from __future__ import annotations

import json
from datetime import date
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.stats import rankdata

from _real_data import load_daily
from moola.config import Config
from moola.datasets.xsection import (
    CSRankNorm,
    CSZScoreNorm,
    Fillna,
    ProcessorConfig,
    Processors,
    RobustZScoreNorm,
    forward_returns,
    label_horizon_bars,
    processor_config,
)

HORIZONS = (1, 5, 10, 20)


@pytest.fixture(scope="module")
def bars() -> pl.DataFrame:
    """All 30 bundled stocks (all-null rows dropped, so UA and MMC have gaps), sorted."""
    return load_daily().select("symbol", "ts", "close", "adj_close")


def _day(r: pl.DataFrame) -> pl.Series:
    return r.get_column("ts").dt.date().cast(pl.String)


def test_both_entry_conventions_by_hand(bars: pl.DataFrame) -> None:
    aapl = bars.filter(pl.col("symbol") == "AAPL")  # AAPL has every calendar day
    p = aapl.get_column("adj_close").to_numpy()
    nxt = forward_returns(aapl, (1, 5), entry="next_close")
    now = forward_returns(aapl, (1, 5), entry="close")
    i = 400
    assert nxt["ret_5"][i] == pytest.approx(p[i + 6] / p[i + 1] - 1, rel=1e-12)
    assert nxt["ret_1"][i] == pytest.approx(p[i + 2] / p[i + 1] - 1, rel=1e-12)
    assert now["ret_5"][i] == pytest.approx(p[i + 5] / p[i] - 1, rel=1e-12)
    np.testing.assert_allclose(now["ret_5"].to_numpy()[:-5], p[5:] / p[:-5] - 1, rtol=1e-12)
    np.testing.assert_allclose(nxt["ret_5"].to_numpy()[:-6], p[6:] / p[1:-5] - 1, rtol=1e-12)
    # the last h (close) or h + 1 (next close) bars have no label
    assert np.isnan(now["ret_5"].to_numpy()[-5:]).all() and np.isfinite(now["ret_5"][-6])
    assert np.isnan(nxt["ret_5"].to_numpy()[-6:]).all() and np.isfinite(nxt["ret_5"][-7])
    assert label_horizon_bars(5, "next_close") == 6 and label_horizon_bars(5, "close") == 5
    assert now.columns == ["symbol", "ts", "ret_1", "ret_5"]
    assert now.select("symbol", "ts").equals(aapl.select("symbol", "ts"))


def _calendar_reference(bars: pl.DataFrame, h: int, off: int) -> np.ndarray:
    """Per stock on the union calendar: P[k+off+h] / P[k+off] - 1 when the stock has a bar on
    every calendar day k .. k+off+h, else NaN. Written on a dense (day, stock) grid, not rows."""
    cal = np.sort(bars["ts"].unique().to_numpy())
    out = np.full(bars.height, np.nan)
    b = off + h
    for sym in bars["symbol"].unique().to_list():
        rows = np.flatnonzero((bars["symbol"] == sym).to_numpy())
        k = np.searchsorted(cal, bars["ts"].to_numpy()[rows])
        price = np.full(len(cal) + b, np.nan)
        price[k] = bars["adj_close"].to_numpy()[rows]
        present = np.concatenate([[0], np.cumsum(np.isfinite(price))])
        full = present[k + b + 1] - present[k] == b + 1  # a bar on each of days k .. k + b
        out[rows] = np.where(full, price[k + b] / price[k + off] - 1, np.nan)
    return out


@pytest.mark.parametrize("entry", ["close", "next_close"])
def test_every_label_equals_an_independent_calendar_reference(bars: pl.DataFrame, entry: str) -> None:
    got = forward_returns(bars, HORIZONS, entry=entry)  # type: ignore[arg-type]
    assert got.select("symbol", "ts").equals(bars.select("symbol", "ts"))
    for h in HORIZONS:
        ref = _calendar_reference(bars, h, 1 if entry == "next_close" else 0)
        np.testing.assert_allclose(got[f"ret_{h}"].to_numpy(), ref, rtol=1e-12, equal_nan=True)
        ends = got.filter(pl.int_range(pl.len()).over("symbol")
                          >= pl.len().over("symbol") - label_horizon_bars(h, entry))  # type: ignore[arg-type]
        assert ends[f"ret_{h}"].is_nan().all()  # never past a stock's last bar


def test_no_label_crosses_a_stocks_own_gap(bars: pl.DataFrame) -> None:
    """MMC misses 2015-04-28 (its all-null row was dropped): labels reading across it are NaN."""
    r = forward_returns(bars, (1, 5), entry="close").filter(pl.col("symbol") == "MMC")
    day = _day(r)
    before = int(np.flatnonzero((day < "2015-04-28").to_numpy())[-1])
    assert day[before] == "2015-04-27" and day[before + 1] == "2015-04-29"
    ret5 = r["ret_5"].to_numpy()
    assert np.isnan(ret5[before - 4: before + 1]).all()  # all five read 04-28's slot
    assert np.isfinite(ret5[before - 5]) and np.isfinite(ret5[before + 1])
    assert np.isnan(r["ret_1"][before]) and np.isfinite(r["ret_1"][before - 1])
    # UA misses 2015-11-09: with next-close entry the label of 11-05 reads 11-06 .. 11-09
    ua = forward_returns(bars, (1,), entry="next_close").filter(pl.col("symbol") == "UA")
    d = _day(ua).to_list()
    assert "2015-11-09" not in d
    assert np.isnan(ua["ret_1"][d.index("2015-11-05")]) and np.isnan(ua["ret_1"][d.index("2015-11-06")])
    assert np.isfinite(ua["ret_1"][d.index("2015-11-04")]) and np.isfinite(ua["ret_1"][d.index("2015-11-10")])


@pytest.fixture(scope="module")
def pair() -> pl.DataFrame:
    return load_daily(("KO", "PG"), max_rows_per_symbol=300).select("symbol", "ts", "adj_close")


@settings(max_examples=40, deadline=None)
@given(t=st.integers(0, 599), other=st.integers(0, 599),
       scale=st.floats(0.5, 2.0).filter(lambda s: abs(s - 1) > 0.01), h=st.sampled_from(HORIZONS),
       entry=st.sampled_from(["close", "next_close"]))
def test_a_label_reads_only_its_own_stocks_next_bars(pair: pl.DataFrame, t: int, other: int, scale: float,
                                                    h: int, entry: str) -> None:
    """Scaling a price outside rows t+off .. t+off+h of t's stock leaves ret_h at t unchanged;
    scaling the exit bar t+off+h changes it (so the property can fail)."""
    n_sym = pl.int_range(pl.len()).over("symbol")
    row = pair.with_columns(n_sym.alias("i"), pl.len().over("symbol").alias("n"))
    sym_t, i_t, n_t = row.row(t)[0], row["i"][t], row["n"][t]
    off = 1 if entry == "next_close" else 0
    reads = {t + off, t + off + h} if i_t + off + h < n_t else set()

    def scaled(k: int) -> float:
        changed = pair.with_columns(pl.when(pl.int_range(pl.len()) == k).then(pl.col("adj_close") * scale)
                                    .otherwise(pl.col("adj_close")).alias("adj_close"))
        return float(forward_returns(changed, (h,), entry=entry)[f"ret_{h}"][t])  # type: ignore[arg-type]

    base = float(forward_returns(pair, (h,), entry=entry)[f"ret_{h}"][t])  # type: ignore[arg-type]
    if other not in reads:
        assert scaled(other) == base or (np.isnan(base) and np.isnan(scaled(other)))
    if reads:
        assert row["symbol"][t + off + h] == sym_t
        assert scaled(t + off + h) != pytest.approx(base)


def _returns_frame(bars: pl.DataFrame) -> pl.DataFrame:
    return bars.select("ts", "symbol", pl.col("adj_close").log().diff().over("symbol").alias("r"),
                       pl.lit(1.0).alias("flat"))


def test_robust_zscore_learns_on_training_dates_only(bars: pl.DataFrame) -> None:
    frame = _returns_frame(bars)
    train_dates = frame.filter(pl.col("ts").dt.year() <= 2015)["ts"].unique()
    a = RobustZScoreNorm(["r", "flat"], clip=3.0).fit(frame, train_dates)
    later = frame.with_columns(pl.when(pl.col("ts").dt.year() >= 2016).then(pl.col("r") * 50 + 1)
                               .otherwise(pl.col("r")).alias("r"))
    b = RobustZScoreNorm(["r", "flat"], clip=3.0).fit(later, train_dates)
    assert a.median_ == b.median_ and a.scale_ == b.scale_  # test dates never move the fit
    # the same fit from datetime.date values
    days = [date(2012, 1, 1), *sorted({d for d in frame["ts"].dt.date().to_list() if d.year <= 2015})]
    c = RobustZScoreNorm(["r", "flat"]).fit(frame, days)
    assert c.median_ == a.median_ and c.scale_ == a.scale_
    x = frame.filter(pl.col("ts").dt.year() <= 2015)["r"].drop_nulls().to_numpy()
    med = np.median(x)
    mad = 1.4826 * np.median(np.abs(x - med))
    assert a.median_[0] == pytest.approx(med, rel=1e-12) and a.scale_[0] == pytest.approx(mad, rel=1e-12)
    out = a.transform(later)
    full = later["r"].to_numpy()
    np.testing.assert_allclose(out["r"].to_numpy(), np.clip((full - med) / mad, -3, 3), rtol=1e-10,
                               equal_nan=True)
    assert (np.abs(out["r"].drop_nans().to_numpy()) == 3.0).any()  # the * 50 dates are clipped
    assert out["flat"].to_list() == [0.0] * frame.height  # MAD 0 -> 0


def test_cs_rank_and_zscore_per_date_equal_references(bars: pl.DataFrame) -> None:
    frame = bars.select("ts", "symbol", pl.col("adj_close").pct_change().over("symbol").round(3).alias("r"))
    ranked = CSRankNorm(["r"]).transform(frame)
    z = CSZScoreNorm(["r"]).transform(frame)
    dates = frame["ts"].unique().sort()
    for when in dates[[0, 1, 100, 700, 1259]]:  # the first date has no return: all NaN
        keep = (frame["ts"] == when).to_numpy()
        x = frame["r"].to_numpy()[keep]
        ok = np.isfinite(x)
        got_rank, got_z = ranked["r"].to_numpy()[keep], z["r"].to_numpy()[keep]
        assert np.isnan(got_rank[~ok]).all() and np.isnan(got_z[~ok]).all()
        if ok.sum() > 1:
            np.testing.assert_allclose(got_rank[ok], (rankdata(x[ok]) / ok.sum() - 0.5) * 3.46, rtol=1e-12)
            np.testing.assert_allclose(got_z[ok], (x[ok] - x[ok].mean()) / x[ok].std(ddof=1), rtol=1e-10)
    assert len(set(frame["r"].drop_nulls().to_list())) < frame["r"].drop_nulls().len()  # ties were checked
    const = pl.DataFrame({"ts": [1, 1, 1, 2, 2], "v": [2.0, 2.0, float("nan"), 1.0, 3.0]})
    zc = CSZScoreNorm(["v"]).transform(const)["v"].to_list()
    assert zc[:2] == [0.0, 0.0] and np.isnan(zc[2])  # a constant date -> 0, NaN stays NaN
    ranks = CSRankNorm(["v"]).transform(const)["v"].to_list()
    assert ranks[3:] == pytest.approx([0.0, 1.73])  # Qlib: (pct - 0.5) * 3.46, not centred


def test_fitted_state_round_trips_and_chunks_concatenate(bars: pl.DataFrame) -> None:
    frame = bars.select("ts", "symbol", pl.col("close").log().alias("a"), pl.col("adj_close").alias("b"),
                        pl.lit(None, pl.Float64).alias("empty"))
    cfgs = [processor_config({"kind": "robust_zscore", "clip": 2.5}), processor_config({"kind": "fillna"})]
    fit_dates = frame["ts"].unique().sort()[:600]
    whole = Processors.from_configs(cfgs, ["a", "b", "empty"]).fit(frame, fit_dates)
    parts = [Processors.from_configs(cfgs, [c]).fit(frame, fit_dates) for c in ("a", "b", "empty")]
    joined = Processors.concat(parts)
    stored = json.dumps(whole.to_dict(), allow_nan=False)  # strict JSON: NaN state stored as null
    back = Processors.from_dict(json.loads(stored))
    expected = whole.transform(frame)
    for p in (joined, back):
        assert p.transform(frame).equals(expected)
    assert expected["empty"].to_list() == [0.0] * frame.height and not expected["a"].is_nan().any()
    assert not expected.equals(Processors.from_configs(cfgs, ["a", "b", "empty"]).fit(frame).transform(frame))
    assert Fillna(["a"], value=-1.0).transform(pl.DataFrame({"ts": [1, 1], "a": [float("nan"), None]})
                                               )["a"].to_list() == [-1.0, -1.0]


class _Section(Config):
    features: list[ProcessorConfig]
    labels: list[ProcessorConfig]


def test_processors_are_named_by_a_typed_config(tmp_path: Path) -> None:
    path = tmp_path / "p.yaml"
    path.write_text("features: [{kind: robust_zscore, clip: 3}, {kind: fillna}]\nlabels: [{kind: cs_rank}]\n")
    cfg = _Section.from_yaml(path)
    assert [p.kind for p in cfg.features] == ["robust_zscore", "fillna"] and cfg.labels[0].kind == "cs_rank"
    assert _Section.from_dict(cfg.to_dict()) == cfg
    steps = Processors.from_configs(cfg.features, ["x"]).steps
    assert isinstance(steps[0], RobustZScoreNorm) and steps[0].clip == 3.0 and isinstance(steps[1], Fillna)
    with pytest.raises(ValueError, match="clp"):
        _Section.from_dict({"features": [{"kind": "robust_zscore", "clp": 3}], "labels": []})
    with pytest.raises(ValueError, match="clp"):
        processor_config({"kind": "robust_zscore", "clp": 3})


def test_bad_inputs_say_what_is_wrong(bars: pl.DataFrame) -> None:
    with pytest.raises(ValueError, match=r"entry 'open'.*next_close, close"):
        forward_returns(bars, (1,), entry="open")  # type: ignore[arg-type]
    for bad in ((0, 5), (-1,), (2.5,), (), (5, 5)):
        with pytest.raises(ValueError, match="horizons"):
            forward_returns(bars, bad)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"lack column.*adj_close"):
        forward_returns(bars.drop("adj_close"), (1,))
    with pytest.raises(ValueError, match="increase strictly"):
        forward_returns(bars.sort("symbol", "ts", descending=[False, True]), (1,))
    with pytest.raises(ValueError, match="increase strictly"):
        forward_returns(pl.concat([bars.head(3), bars.head(1)]), (1,))
    with pytest.raises(ValueError, match="horizon"):
        label_horizon_bars(0, "close")
    with pytest.raises(RuntimeError, match="before fit"):
        RobustZScoreNorm(["close"]).transform(bars)
    with pytest.raises(ValueError, match=r"lacks column.*nope"):
        CSRankNorm(["nope"]).transform(bars)
    with pytest.raises(ValueError, match="none of the 1 fit dates"):
        RobustZScoreNorm(["close"]).fit(bars, [date(1999, 1, 1)])
    with pytest.raises(ValueError, match=r"rank_gauss.*cs_rank, cs_zscore, robust_zscore, fillna"):
        processor_config({"kind": "rank_gauss"})
