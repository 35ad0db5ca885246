"""Ranking evaluation: per-date IC against a scipy reference, intervals that cover a null signal,
quantile and long-short books checked by hand, bad inputs, the deflated Sharpe of the paper's
worked example, and the plots."""

from __future__ import annotations

import datetime as dt
import math

import matplotlib.pyplot as plt
import numpy as np
import polars as pl
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats

from moola.config import ConfigError
from moola.evaluation.economics import deflated_sharpe_ratio, expected_max_sharpe
from moola.evaluation.ranking import (
    LongShortConfig,
    daily_ic,
    ic_summary,
    long_short_backtest,
    newey_west_se,
    quantile_returns,
    ranking_metrics,
)
from moola.evaluation.ranking_plots import (
    plot_cumulative_ic,
    plot_ic_histogram,
    plot_long_short_equity,
    plot_quantile_returns,
    plot_sector_attention,
    sector_attention_matrix,
)

D, S = 300, 100
START = dt.date(2021, 1, 4)


def _dates(n: int) -> list[dt.date]:
    return [START + dt.timedelta(days=i) for i in range(n)]


def panel(n_days: int = D, n_stocks: int = S, *, noise: float = 2.0, missing: float = 0.1,
          unknown: float = 0.02, seed: int = 0) -> pl.DataFrame:
    """Long frame with a planted signal (score = ret + noise), missing rows and unknown returns."""
    rng = np.random.default_rng(seed)
    ret = rng.normal(0.0, 0.02, (n_days, n_stocks))  # (D, S)
    score = ret + rng.normal(0.0, 0.02 * noise, (n_days, n_stocks))
    ret[rng.random((n_days, n_stocks)) < unknown] = np.nan  # unknown forward returns
    dates = _dates(n_days)
    df = pl.DataFrame({
        "date": [d for d in dates for _ in range(n_stocks)],
        "symbol": [f"S{j:03d}" for j in range(n_stocks)] * n_days,
        "score": score.ravel(), "ret": ret.ravel(),
    })
    keep = rng.random(df.height) >= missing
    return df.filter(pl.Series(keep))


@pytest.fixture(scope="module")
def signal() -> pl.DataFrame:
    return panel()


# ------------------------------------------------------------------------------- IC


def test_daily_ic_matches_scipy_per_date(signal: pl.DataFrame) -> None:
    daily = daily_ic(signal)
    assert daily.columns == ["date", "n", "ic", "rank_ic"]
    assert daily["date"].is_sorted()
    for day in _dates(D)[::97]:
        rows = signal.filter((pl.col("date") == day) & pl.col("ret").is_not_nan())
        got = daily.filter(pl.col("date") == day).row(0, named=True)
        assert got["n"] == rows.height
        assert got["ic"] == pytest.approx(stats.pearsonr(rows["score"], rows["ret"])[0], abs=1e-12)
        assert got["rank_ic"] == pytest.approx(stats.spearmanr(rows["score"], rows["ret"])[0], abs=1e-12)


def test_rank_ic_uses_average_ranks_for_ties() -> None:
    score = [1.0, 1.0, 2.0, 2.0, 3.0, 5.0]
    ret = [0.1, 0.3, 0.2, 0.5, -1.0, 2.0]
    df = pl.DataFrame({"date": [START] * 6, "symbol": list("abcdef"), "score": score, "ret": ret})
    assert daily_ic(df)["rank_ic"][0] == pytest.approx(stats.spearmanr(score, ret)[0], abs=1e-12)


def test_thin_dates_dropped_and_constant_scores_counted_as_nan() -> None:
    rows: list[tuple[dt.date, str, float, float | None]] = []
    for j in range(8):  # day 0: normal; day 1: constant scores; day 2: only 4 stocks known
        rows.append((START, f"s{j}", float(j), 0.01 * j))
        rows.append((START + dt.timedelta(days=1), f"s{j}", 1.0, 0.01 * j))
        rows.append((START + dt.timedelta(days=2), f"s{j}", float(j), 0.01 * j if j < 4 else None))
    df = pl.DataFrame(rows, schema=["date", "symbol", "score", "ret"], orient="row")
    daily = daily_ic(df, min_stocks=5)
    assert daily["date"].to_list() == [START, START + dt.timedelta(days=1)]
    assert daily["rank_ic"][0] == pytest.approx(1.0)
    assert math.isnan(daily["ic"][1]) and math.isnan(daily["rank_ic"][1])
    s = ic_summary(daily)
    assert s["n_days"] == 1 and s["n_days_nan"] == 1
    assert s["rank_ic_mean"] == pytest.approx(1.0)


def test_perfect_scores_give_rank_ic_one(signal: pl.DataFrame) -> None:
    perfect = signal.with_columns(score=(pl.col("ret") * 50).exp())  # monotone, not linear
    daily = daily_ic(perfect)
    assert np.allclose(daily["rank_ic"].to_numpy(), 1.0)
    assert (daily["ic"].to_numpy() < 1.0 - 1e-6).all()  # Pearson sees the curvature
    s = ic_summary(daily)
    assert s["rank_ic_mean"] == pytest.approx(1.0) and s["rank_ic_positive_rate"] == 1.0


def test_shuffled_scores_give_ic_near_zero_inside_interval(signal: pl.DataFrame) -> None:
    rng = np.random.default_rng(7)
    shuffled = signal.with_columns(score=pl.Series(rng.permutation(signal["score"].to_numpy())))
    s = ic_summary(daily_ic(shuffled), horizon=1)
    lo, hi = s["ic_ci"]
    assert lo < 0.0 < hi and lo < s["ic_mean"] < hi
    assert abs(s["ic_mean"]) < 0.02 and abs(s["rank_ic_mean"]) < 0.02
    planted = ic_summary(daily_ic(signal), horizon=1)
    assert planted["ic_ci"][0] > 0.3  # ret + 2x noise: corr 1/sqrt(5) ~ 0.45
    assert planted["icir"] == pytest.approx(planted["ic_mean"] / planted["ic_std"])


def test_icir_is_mean_over_std_with_ddof_one() -> None:
    x = np.array([0.05, -0.01, 0.03, 0.02, 0.04, -0.02])
    daily = pl.DataFrame({"date": _dates(6), "n": [50] * 6, "ic": x, "rank_ic": 2 * x})
    s = ic_summary(daily)
    assert s["ic_std"] == pytest.approx(x.std(ddof=1))
    assert s["icir"] == pytest.approx(x.mean() / x.std(ddof=1))
    assert s["rank_icir"] == pytest.approx(s["icir"])
    assert s["ic_positive_rate"] == pytest.approx(4 / 6)


def test_newey_west_widens_for_overlapping_returns() -> None:
    rng = np.random.default_rng(3)
    e = rng.normal(size=3000)
    assert newey_west_se(e, 0) == pytest.approx(e.std() / math.sqrt(e.size))
    ma = np.convolve(e, np.ones(20), mode="valid")  # 20-day overlapping sums: MA(19)
    iid_se = ma.std() / math.sqrt(ma.size)
    assert newey_west_se(ma, 20) > 3.0 * iid_se  # true long-run ratio is sqrt(20) ~ 4.5
    daily = pl.DataFrame({"date": _dates(ma.size), "ic": ma / 100, "rank_ic": ma / 100})
    wide, narrow = ic_summary(daily, horizon=20), ic_summary(daily, horizon=1)
    assert wide["hac_lags"] == 20 and narrow["hac_lags"] < 20
    assert wide["ic_se"] == pytest.approx(newey_west_se(ma / 100, 20))
    assert wide["ic_ci"][1] - wide["ic_ci"][0] > 1.2 * (narrow["ic_ci"][1] - narrow["ic_ci"][0])


# ------------------------------------------------------------------------- quantiles


def test_quantiles_monotone_with_planted_signal(signal: pl.DataFrame) -> None:
    q = quantile_returns(signal, n_quantiles=5, horizon=1)
    assert q.columns == ["date", "q1", "q2", "q3", "q4", "q5", "long_short"]
    means = np.array([q[c].to_numpy().mean() for c in ("q1", "q2", "q3", "q4", "q5")])
    assert (np.diff(means) > 0).all()
    assert np.allclose(q["long_short"].to_numpy(), (q["q5"] - q["q1"]).to_numpy())


def test_quantiles_rebalance_every_horizon_dates(signal: pl.DataFrame) -> None:
    q = quantile_returns(signal, horizon=5)
    assert q["date"].to_list() == _dates(D)[::5]


def test_quantile_assignment_by_hand() -> None:
    # 10 stocks, 5 quantiles: two per quantile, ties broken by symbol
    scores = [0.0, 0.0, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0]
    rets = [0.01 * j for j in range(10)]
    df = pl.DataFrame({"date": [START] * 10, "symbol": [f"s{j}" for j in range(10)], "score": scores,
                       "ret": rets})
    q = quantile_returns(df, n_quantiles=5).row(0, named=True)
    assert [q[f"q{k}"] for k in range(1, 6)] == pytest.approx([0.005, 0.025, 0.045, 0.065, 0.085])


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 10_000))
def test_results_do_not_depend_on_row_order_or_later_dates(seed: int) -> None:
    df = panel(12, 15, seed=seed, missing=0.2)
    shuffled = df.sample(fraction=1.0, shuffle=True, seed=seed)
    assert quantile_returns(shuffled, horizon=2).equals(quantile_returns(df, horizon=2))
    a = long_short_backtest(df, LongShortConfig(horizon=2, min_stocks=4)).periods
    assert long_short_backtest(shuffled, LongShortConfig(horizon=2, min_stocks=4)).periods.equals(a)
    # a date's IC uses that date's rows only: scrambling later dates leaves earlier ones alone
    cut = _dates(12)[6]
    later = df.with_columns(score=pl.when(pl.col("date") >= cut).then(-pl.col("score") * 3.0)
                            .otherwise(pl.col("score")))
    before = daily_ic(df).filter(pl.col("date") < cut)
    assert daily_ic(later).filter(pl.col("date") < cut).equals(before)


# ------------------------------------------------------------------------ long-short


def _frame(rows: list[tuple[int, str, float, float]]) -> pl.DataFrame:
    return pl.DataFrame([(START + dt.timedelta(days=d), s, sc, r) for d, s, sc, r in rows],
                        schema=["date", "symbol", "score", "ret"], orient="row")


def test_costs_reduce_return_by_cost_times_turnover_by_hand() -> None:
    # 4 stocks, quantile 0.25 -> one name per leg. Long A, B, B; short D, D, C.
    rows = [
        (0, "A", 4.0, 0.03), (0, "B", 3.0, 0.01), (0, "C", 2.0, 0.00), (0, "D", 1.0, -0.02),
        (1, "A", 2.0, 0.05), (1, "B", 4.0, 0.02), (1, "C", 3.0, 0.01), (1, "D", 1.0, 0.01),
        (2, "A", 3.0, 0.00), (2, "B", 4.0, -0.01), (2, "C", 1.0, 0.02), (2, "D", 2.0, 0.03),
    ]
    cfg = LongShortConfig(quantile=0.25, cost_bps=10.0, horizon=1, min_stocks=4)
    res = long_short_backtest(_frame(rows), cfg)
    p = res.periods
    assert p["gross"].to_list() == pytest.approx([0.05, 0.01, -0.03])
    assert p["turnover"].to_list() == pytest.approx([2.0, 2.0, 2.0])  # enter; A->B; D->C
    assert (p["gross"] - p["net"]).to_list() == pytest.approx([0.002, 0.002, 0.002])
    assert (p["gross"] - p["net"]).to_numpy() == pytest.approx(1e-3 * p["turnover"].to_numpy())
    net = np.array([0.048, 0.008, -0.032])
    assert res.equity == pytest.approx(np.concatenate([[1.0], np.cumprod(1 + net)]))
    s = res.summary()
    assert s["costs_paid"] == pytest.approx(0.006)
    assert s["ann_return"] == pytest.approx(net.mean() * 252)
    assert s["gross_ann_return"] == pytest.approx(np.mean([0.05, 0.01, -0.03]) * 252)
    assert s["hit_rate"] == pytest.approx(2 / 3)
    free = long_short_backtest(_frame(rows), cfg.model_copy(update={"cost_bps": 0.0}))
    assert free.periods["net"].to_list() == pytest.approx(p["gross"].to_list())


def test_constant_ranking_has_no_turnover_after_entry() -> None:
    df = panel(60, 50, missing=0.0, unknown=0.0).with_columns(
        score=pl.col("symbol").str.slice(1).cast(pl.Float64))  # same order every day
    for cfg in (LongShortConfig(quantile=0.2, horizon=1), LongShortConfig(top_k=7, horizon=5)):
        p = long_short_backtest(df, cfg).periods
        assert p["turnover"][0] == pytest.approx(2.0)
        assert np.allclose(p["turnover"][1:].to_numpy(), 0.0)
        assert long_short_backtest(df, cfg).summary()["turnover_after_entry"] == 0.0


def test_known_equity_path_gives_known_drawdown() -> None:
    long = [0.1, -0.2, 0.125, 1.21 / 0.99 - 1.0]  # equity 1, 1.1, 0.88, 0.99, 1.21
    rows = [r for d, x in enumerate(long) for r in ((d, "hi", 1.0, x), (d, "lo", 0.0, 0.0))]
    cfg = LongShortConfig(quantile=0.5, cost_bps=0.0, horizon=1, min_stocks=2)
    res = long_short_backtest(_frame(rows), cfg)
    assert res.equity == pytest.approx([1.0, 1.1, 0.88, 0.99, 1.21])
    s = res.summary()
    assert s["mdd"] == pytest.approx(0.2)
    assert s["total_return"] == pytest.approx(0.21)
    assert s["hit_rate"] == pytest.approx(0.75)
    assert s["n_periods"] == 4


def test_horizon_rebalancing_and_annualisation(signal: pl.DataFrame) -> None:
    cfg = LongShortConfig(horizon=10, cost_bps=5.0)
    res = long_short_backtest(signal, cfg, n_trials=20)
    s = res.summary()
    assert res.periods["date"].to_list() == _dates(D)[::10]
    assert s["periods_per_year"] == pytest.approx(25.2)
    net = res.periods["net"].to_numpy()
    assert s["sharpe"] == pytest.approx(net.mean() / net.std(ddof=1) * math.sqrt(25.2))
    assert s["gross_sharpe"] > s["sharpe"] > 0 and s["gross_ann_return"] > s["ann_return"]
    z = (net - net.mean()) / net.std()
    dsr = deflated_sharpe_ratio(s["sharpe"], 20, 30, float(np.mean(z**3)), float(np.mean(z**4)),
                                periods_per_year=25.2)
    assert s["dsr"] == pytest.approx(dsr.probability)
    assert s["mean_leg_size"] == pytest.approx(res.periods["k"].mean())


def test_ranking_metrics_combines_the_parts(signal: pl.DataFrame) -> None:
    cfg = LongShortConfig(horizon=5)
    m = ranking_metrics(signal, 5, cfg, n_trials=4)
    s = ic_summary(daily_ic(signal), horizon=5)
    ls = long_short_backtest(signal, cfg, n_trials=4).summary()
    assert m["ic_mean"] == s["ic_mean"] and m["rank_icir"] == s["rank_icir"]
    assert (m["ic_ci_low"], m["ic_ci_high"]) == s["ic_ci"]
    assert m["ls_sharpe"] == ls["sharpe"] and m["ls_mdd"] == ls["mdd"] and m["dsr"] == ls["dsr"]
    assert m["ls_gross_sharpe"] == ls["gross_sharpe"] and m["hit_rate"] == ls["hit_rate"]
    assert m["ls_turnover"] == ls["turnover"] and m["ls_ann_return"] == ls["ann_return"]
    assert m["quantile_spread"] > 0 and m["horizon"] == 5 and m["n_trials"] == 4
    with pytest.raises(ValueError, match=r"horizon is 5 but horizon=10"):
        ranking_metrics(signal, 10, cfg)


def test_long_short_config_round_trips_and_rejects_bad_values(tmp_path) -> None:
    cfg = LongShortConfig(top_k=30, cost_bps=5.0, horizon=20)
    path = tmp_path / "ls.yaml"
    cfg.to_yaml(path)
    assert LongShortConfig.from_yaml(path) == cfg
    assert cfg.periods_per_year == pytest.approx(12.6)
    with pytest.raises(ConfigError, match="quantile"):
        LongShortConfig.from_dict({"quantile": 0.7})
    with pytest.raises(ConfigError, match="cost_bp"):
        LongShortConfig.from_dict({"cost_bp": 5})


# ------------------------------------------------------------------------ bad input


def test_bad_inputs_raise_clearly(signal: pl.DataFrame) -> None:
    expected = r"lacks column\(s\) \['ret'\]; expected \['date', 'symbol', 'score', 'ret'\]"
    with pytest.raises(ValueError, match=expected):
        daily_ic(signal.drop("ret"))
    dup = pl.concat([signal, signal.head(1)])
    first = signal.row(0, named=True)
    with pytest.raises(ValueError, match=rf"duplicate .*symbol='{first['symbol']}' appears 2 times"):
        quantile_returns(dup)
    with pytest.raises(ValueError, match="'score' must be numeric"):
        long_short_backtest(signal.with_columns(pl.col("score").cast(pl.String)))
    with pytest.raises(ValueError, match="empty"):
        daily_ic(signal.head(0))
    with pytest.raises(ValueError, match="'date' must be Date or Datetime"):
        daily_ic(signal.with_columns(pl.col("date").cast(pl.String)))
    with pytest.raises(TypeError, match="polars DataFrame"):
        daily_ic(signal.to_pandas())
    with pytest.raises(ValueError, match="horizon must be >= 1"):
        quantile_returns(signal, horizon=0)
    with pytest.raises(ValueError, match="daily lacks column 'ic'"):
        ic_summary(signal)


def test_datetime_dates_and_null_returns_are_accepted(signal: pl.DataFrame) -> None:
    ts = signal.with_columns(pl.col("date").cast(pl.Datetime("us")),
                             pl.when(pl.col("ret").is_nan()).then(None).otherwise(pl.col("ret")).alias("ret"))
    assert daily_ic(ts)["ic"].to_list() == pytest.approx(daily_ic(signal)["ic"].to_list())


# -------------------------------------------------------------------- deflated Sharpe


def test_deflated_sharpe_matches_bailey_lopez_de_prado_example() -> None:
    """Bailey & Lopez de Prado (2014), sec. 'A numerical example': SR 2.5 annualised over 5 years
    of daily data, 100 trials whose annualised Sharpes have variance 0.5, skew -3, kurtosis 10."""
    d = deflated_sharpe_ratio(2.5, n_trials=100, n_obs=1250, skew=-3.0, kurtosis=10.0,
                              sharpe_variance_across_trials=0.5, periods_per_year=250)
    assert round(d.expected_max_sharpe / math.sqrt(250), 4) == 0.1132
    assert round(expected_max_sharpe(100, 0.5 / 250), 4) == 0.1132
    assert round(d.probability, 4) == 0.9004


# ---------------------------------------------------------------------------- plots


def _daily_two(signal: pl.DataFrame) -> dict[str, pl.DataFrame]:
    small = signal.filter(pl.col("date") < _dates(D)[40])
    rng = np.random.default_rng(1)
    noise = small.with_columns(score=pl.Series(rng.normal(size=small.height)))
    return {"planted": daily_ic(small), "noise": daily_ic(noise).select("date", "ic", "rank_ic")}


def test_plot_cumulative_ic_and_histogram(signal: pl.DataFrame, tmp_path) -> None:
    daily = _daily_two(signal)
    fig = plot_cumulative_ic(daily)
    assert len(fig.axes) == 2
    for ax in fig.axes:
        assert len(ax.lines) == 3  # two models and the zero line
    top = fig.axes[0].lines[0].get_ydata()
    assert np.asarray(top)[-1] == pytest.approx(float(daily["planted"]["ic"].sum()))
    fig.savefig(tmp_path / "cum.png")
    plt.close(fig)
    fig = plot_ic_histogram(daily)
    assert len(fig.axes) == 1 and len(fig.axes[0].patches) == 2 * 40
    fig.savefig(tmp_path / "hist.png")
    plt.close(fig)
    assert (tmp_path / "cum.png").stat().st_size > 0 and (tmp_path / "hist.png").stat().st_size > 0


def test_plot_quantiles_and_equity(signal: pl.DataFrame, tmp_path) -> None:
    small = signal.filter(pl.col("date") < _dates(D)[60])
    fig = plot_quantile_returns(quantile_returns(small, n_quantiles=4, horizon=5))
    assert len(fig.axes[0].lines) == 4 + 1 + 1  # quantiles, spread, zero line
    fig.savefig(tmp_path / "q.png")
    plt.close(fig)
    cfg = LongShortConfig(horizon=5)
    results = {"a": long_short_backtest(small, cfg),
               "b": long_short_backtest(small.with_columns(score=-pl.col("score")), cfg)}
    fig = plot_long_short_equity(results)
    lines = fig.axes[0].lines
    assert len(lines) == 2 * 2 + 1
    assert lines[1].get_linestyle() == "--" and lines[0].get_color() == lines[1].get_color()
    assert np.asarray(lines[0].get_ydata()) == pytest.approx(results["a"].equity[1:])
    fig.savefig(tmp_path / "eq.png")
    plt.close(fig)
    assert (tmp_path / "q.png").exists() and (tmp_path / "eq.png").exists()


def test_sector_attention_matrix_matches_loop_and_rows_sum_to_one() -> None:
    rng = np.random.default_rng(5)
    sectors = ["Tech", "Energy", "Tech", "Health", "Energy", "Tech", "Utilities"]
    attn = rng.random((7, 7))
    attn[6] = 0.0  # a stock that attends nowhere
    labels, mat = sector_attention_matrix(attn, sectors)
    assert labels == ["Energy", "Health", "Tech", "Utilities"]
    ref = np.zeros((4, 4))
    for a, la in enumerate(labels):
        src = [i for i, s in enumerate(sectors) if s == la]
        for b, lb in enumerate(labels):
            dst = [j for j, s in enumerate(sectors) if s == lb]
            ref[a, b] = np.mean([attn[i, dst].sum() for i in src])
    sums = ref.sum(axis=1, keepdims=True)
    ref = np.divide(ref, sums, out=np.zeros_like(ref), where=sums > 0)
    assert mat == pytest.approx(ref)
    assert mat[:3].sum(axis=1) == pytest.approx(np.ones(3)) and mat[3].sum() == 0.0
    with pytest.raises(ValueError, match="7 sectors"):
        sector_attention_matrix(np.ones((5, 5)), sectors)
    with pytest.raises(ValueError, match="square"):
        sector_attention_matrix(np.ones((7, 3)), sectors)


def test_plot_sector_attention(tmp_path) -> None:
    sectors = ["Tech", "Energy", "Tech", "Health"]
    attn = np.eye(4) * 0.5 + 0.125
    fig = plot_sector_attention(attn, sectors)
    assert len(fig.axes) == 2  # heatmap and colour bar
    ax = fig.axes[0]
    assert [t.get_text() for t in ax.get_yticklabels()] == ["Energy", "Health", "Tech"]
    _, mat = sector_attention_matrix(attn, sectors)
    assert np.asarray(ax.images[0].get_array()) == pytest.approx(mat)
    fig.savefig(tmp_path / "attn.png")
    plt.close(fig)
    assert (tmp_path / "attn.png").stat().st_size > 0
