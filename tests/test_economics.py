"""Economics after costs: the arithmetic by hand, the band chosen on validation, and the case a
desk must see: a model more often right than wrong that loses money once fees are paid."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from _direction_data import MinuteTask, btc_minute
from moola.evaluation import logistic_baseline
from moola.evaluation.economics import (
    CostConfig,
    EconomicsConfig,
    annual_bars,
    backtest,
    buy_and_hold,
    choose_band,
    deflated_sharpe_ratio,
    expected_max_sharpe,
    max_drawdown,
    positions,
    probabilistic_sharpe_ratio,
)

MINUTES_PER_YEAR = 365 * 24 * 60


def test_annual_bars_from_the_timeframe() -> None:
    assert annual_bars("1m") == MINUTES_PER_YEAR
    assert annual_bars("5m") == MINUTES_PER_YEAR / 5
    assert annual_bars("4h") == 365 * 6
    assert annual_bars("1d") == 365 and annual_bars("1d", trading_days=252) == 252
    with pytest.raises(ValueError, match=r"unknown timeframe '2m'; choose from \['1m'"):
        annual_bars("2m")


def test_default_costs_are_a_taker_fee_plus_slippage() -> None:
    c = CostConfig()
    assert (c.fee_bps, c.slippage_bps) == (10.0, 1.0)
    assert c.per_turnover == pytest.approx(11e-4)
    with pytest.raises(ValueError, match="fee_bps"):
        CostConfig(fee_bps=-1)


def test_positions_from_the_band() -> None:
    p = np.array([0.1, 0.44, 0.5, 0.56, 0.9])
    np.testing.assert_array_equal(positions(p, 0.05, "long_short"), [-1, -1, 0, 1, 1])
    np.testing.assert_array_equal(positions(p, 0.05, "long_flat"), [0, 0, 0, 1, 1])
    np.testing.assert_array_equal(positions(p, 0.5, "long_short"), [0, 0, 0, 0, 0])
    with pytest.raises(ValueError, match=r"band must be in \[0, 0.5\]"):
        positions(p, 0.6, "long_short")
    with pytest.raises(ValueError, match="unknown mode 'short_only'"):
        positions(p, 0.1, "short_only")  # type: ignore[arg-type]


def test_max_drawdown_by_hand() -> None:
    assert max_drawdown([1.0, 1.2, 0.9, 1.5, 1.0]) == pytest.approx(1 / 3)  # 1.5 -> 1.0
    assert max_drawdown([1.0, 1.1, 1.2]) == 0.0
    assert max_drawdown([1.0, 0.5]) == pytest.approx(0.5)


def test_equity_costs_and_turnover_by_hand() -> None:
    r = np.array([0.01, -0.02, 0.03])  # log forward returns
    p = np.array([0.9, 0.1, 0.9])  # long, short, long
    bt = backtest(p, r, 0.0, mode="long_short", costs=CostConfig(fee_bps=10, slippage_bps=1),
                  bars_per_year=MINUTES_PER_YEAR)
    c = 11e-4
    gross = np.array([math.expm1(0.01), -math.expm1(-0.02), math.expm1(0.03)])
    net = gross - c * np.array([1, 2, 2])  # enter long, flip to short, flip to long
    net[-1] -= c * 1  # close the long at the end
    equity = np.concatenate([[1.0], np.cumprod(1 + net)])
    np.testing.assert_allclose(bt.equity, equity, rtol=1e-12)
    assert bt.turnover == 6 and bt.costs_paid == pytest.approx(6 * c)
    assert bt.net_return == pytest.approx(equity[-1] - 1)
    assert bt.gross_return == pytest.approx(np.prod(1 + gross) - 1)
    assert bt.hit_rate == 1.0  # every period's position earned its return
    assert bt.sharpe == pytest.approx(net.mean() / net.std() * math.sqrt(MINUTES_PER_YEAR))
    assert bt.max_drawdown == pytest.approx(max_drawdown(equity))
    hold = buy_and_hold(r, costs=CostConfig(fee_bps=10, slippage_bps=1), bars_per_year=MINUTES_PER_YEAR)
    assert hold.turnover == 2 and hold.hit_rate == pytest.approx(2 / 3)
    assert hold.gross_return == pytest.approx(math.expm1(0.02))  # long throughout: exp(sum r) - 1


def test_overlapping_horizons_trade_non_overlapping_periods() -> None:
    """With a 3-bar label on stride-1 rows only rows 0, 3, 6, ... are traded, each for its own
    3-bar return; Sharpe is annualised over 3-bar periods."""
    rng = np.random.default_rng(0)
    r = rng.normal(0, 1e-3, 10)
    p = rng.random(10)
    bt = backtest(p, r, 0.0, hold_rows=3, costs=CostConfig(fee_bps=0, slippage_bps=0),
                  bars_per_year=MINUTES_PER_YEAR)
    w = positions(p[::3], 0.0, "long_short")
    assert bt.n_periods == 4 and bt.periods_per_year == MINUTES_PER_YEAR / 3
    assert bt.net_return == pytest.approx(np.prod(1 + w * np.expm1(r[::3])) - 1)
    with pytest.raises(ValueError, match="hold_rows must be >= 1"):
        backtest(p, r, 0.0, hold_rows=0, bars_per_year=MINUTES_PER_YEAR)


def test_never_trading_is_flat_with_zero_sharpe() -> None:
    bt = backtest(np.full(5, 0.5), np.full(5, 0.01), 0.0, bars_per_year=MINUTES_PER_YEAR)
    assert bt.net_return == 0 and bt.turnover == 0 and bt.sharpe == 0 and bt.hit_rate is None
    assert bt.max_drawdown == 0


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), fee=st.floats(0, 50), extra=st.floats(0.1, 50))
def test_higher_costs_never_raise_the_net_return(seed: int, fee: float, extra: float) -> None:
    rng = np.random.default_rng(seed)
    r, p = rng.normal(0, 2e-3, 50), rng.random(50)
    lo = backtest(p, r, 0.02, costs=CostConfig(fee_bps=fee), bars_per_year=MINUTES_PER_YEAR)
    hi = backtest(p, r, 0.02, costs=CostConfig(fee_bps=fee + extra), bars_per_year=MINUTES_PER_YEAR)
    assert hi.net_return <= lo.net_return
    assert hi.gross_return == lo.gross_return and hi.turnover == lo.turnover
    assert 0 <= hi.max_drawdown <= 1


def test_more_often_right_yet_losing_after_costs_is_visible() -> None:
    """Right on 60 % of 1-minute bars whose moves are ~2 bps: the edge is real before costs and
    gone after 11 bps per turnover, as the desk must see."""
    rng = np.random.default_rng(1)
    n = 2000
    r = rng.choice([-2e-4, 2e-4], n)
    right = rng.random(n) < 0.6
    p = np.where((r > 0) == right, 0.7, 0.3)  # P(up) says the right direction 60 % of the time
    accuracy = float(((p > 0.5) == (r > 0)).mean())
    bt = backtest(p, r, 0.0, mode="long_short", bars_per_year=MINUTES_PER_YEAR)
    assert accuracy > 0.55
    assert bt.gross_return > 0 and bt.hit_rate is not None and bt.hit_rate > 0.55
    assert bt.net_return < 0 and bt.sharpe < 0


@pytest.fixture(scope="module")
def minute(tmp_path_factory: pytest.TempPathFactory) -> MinuteTask:
    return btc_minute(tmp_path_factory.mktemp("minute"))


def test_band_chosen_on_validation_then_applied_to_test_on_real_bars(minute: MinuteTask) -> None:
    """The logistic baseline on 1-minute BTC is right more often than not on the test rows, and
    trading its every signal loses money after costs; the band picked on validation is applied
    unchanged to the test rows, next to buy-and-hold on the same rows."""
    d = minute.data
    fit = logistic_baseline(d.x["train"], d.y["train"], np.concatenate([d.x["val"], d.x["test"]]),
                            np.concatenate([d.y["val"], d.y["test"]]), d.classes, lags=5)
    n_val = d.y["val"].shape[0]
    p_val, p_test = fit.proba_test[:n_val, 1], fit.proba_test[n_val:, 1]
    r_val, r_test = minute.forward_return["val"], minute.forward_return["test"]
    acc_test = float(((p_test > 0.5).astype(int) == d.y["test"]).mean())
    every_signal = backtest(p_test, r_test, 0.0, bars_per_year=annual_bars("1m"))
    assert acc_test > 0.5
    assert every_signal.net_return < 0 and every_signal.turnover > 100
    assert every_signal.net_return < every_signal.gross_return

    cfg = EconomicsConfig(objective="sharpe")
    band, runs = choose_band(p_val, r_val, cfg, bars_per_year=annual_bars("1m"))
    assert [r.band for r in runs] == sorted(cfg.bands)
    best = max(runs, key=lambda r: r.sharpe)
    assert next(r for r in runs if r.band == band).sharpe == best.sharpe
    test_run = backtest(p_test, r_test, band, mode=cfg.mode, costs=cfg.costs, bars_per_year=annual_bars("1m"))
    hold = buy_and_hold(r_test, costs=cfg.costs, bars_per_year=annual_bars("1m"))
    assert test_run.n_periods == hold.n_periods == r_test.shape[0]
    assert test_run.net_return > every_signal.net_return  # validation taught it to trade less
    assert hold.turnover == 2
    # forward log returns of consecutive 1-bar labels add up: buy-and-hold is the test-span return
    assert hold.gross_return == pytest.approx(math.expm1(r_test.sum()), rel=1e-9)


def test_choose_band_trades_a_clean_signal_and_stays_flat_on_noise() -> None:
    rng = np.random.default_rng(2)
    r = rng.normal(0, 1e-2, 500)
    p_clean = np.where(r > 0, 0.8, 0.2)  # knows the direction of large moves
    band, _ = choose_band(p_clean, r, bars_per_year=annual_bars("1h"))
    assert band < 0.3
    p_noise = rng.random(500)  # no information: every trading band loses its costs
    band, runs = choose_band(p_noise, r * 1e-3, EconomicsConfig(objective="net_return"),
                             bars_per_year=annual_bars("1m"))
    assert band == 0.5 and next(x for x in runs if x.band == 0.5).net_return == 0
    with pytest.raises(ValueError, match=r"bands must lie in \[0, 0.5\].*0.7"):
        EconomicsConfig(bands=[0.1, 0.7])
    with pytest.raises(ValueError, match="bands is empty"):
        choose_band(p_noise, r, EconomicsConfig(bands=[]), bars_per_year=1.0)


def test_bad_rows_are_named() -> None:
    r = np.zeros(4)
    with pytest.raises(ValueError, match="p_up has 3 rows but forward_return has 4"):
        backtest(np.full(3, 0.5), r, 0.0, bars_per_year=1.0)
    with pytest.raises(ValueError, match="forward_return contains NaN or inf at row 1"):
        backtest(np.full(4, 0.5), np.array([0, np.nan, 0, 0]), 0.0, bars_per_year=1.0)
    with pytest.raises(ValueError, match="row 2 is not"):
        backtest(np.array([0.5, 0.5, 1.5, 0.5]), r, 0.0, bars_per_year=1.0)
    with pytest.raises(ValueError, match="no rows"):
        backtest(np.zeros(0), np.zeros(0), 0.0, bars_per_year=1.0)


# ------------------------------------------------------------------ deflated Sharpe ratio


def test_backtest_reports_the_moments_of_its_net_returns() -> None:
    from scipy import stats

    rng = np.random.default_rng(3)
    r = rng.standard_t(4, size=400) * 1e-3
    p = np.clip(0.5 + rng.normal(0, 0.1, size=400), 0, 1)
    bt = backtest(p, r, 0.0, costs=CostConfig(fee_bps=0, slippage_bps=0), bars_per_year=1.0)
    net = np.diff(bt.equity) / bt.equity[:-1]
    assert bt.skew == pytest.approx(stats.skew(net), rel=1e-9)
    assert bt.kurtosis == pytest.approx(stats.kurtosis(net, fisher=False), rel=1e-9)
    assert {"skew", "kurtosis", "n_periods", "sharpe"} <= set(bt.summary())
    flat = backtest(np.full(10, 0.5), r[:10], 0.5, bars_per_year=1.0)
    assert (flat.skew, flat.kurtosis) == (0.0, 3.0)


def test_one_trial_is_the_probabilistic_sharpe_against_zero_by_hand() -> None:
    # per period: SR 0.1 on 250 periods, skew -0.5, kurtosis 5
    sr, n, g3, g4 = 0.1, 250, -0.5, 5.0
    z = sr * math.sqrt(n - 1) / math.sqrt(1 - g3 * sr + (g4 - 1) / 4 * sr**2)
    by_hand = 0.5 * (1 + math.erf(z / math.sqrt(2)))
    d = deflated_sharpe_ratio(sr, 1, n, g3, g4)
    assert d.expected_max_sharpe == 0.0 and d.probability == pytest.approx(by_hand, rel=1e-12)
    assert probabilistic_sharpe_ratio(sr, n, g3, g4) == pytest.approx(by_hand, rel=1e-12)
    # annualised in, annualised out: the same probability
    ppy = 252.0
    a = deflated_sharpe_ratio(sr * math.sqrt(ppy), 1, n, g3, g4, periods_per_year=ppy)
    assert a.probability == pytest.approx(by_hand, rel=1e-12) and a.sharpe == sr * math.sqrt(ppy)


def test_the_expected_maximum_and_the_deflated_sharpe_by_hand() -> None:
    from scipy.stats import norm

    # Bailey & Lopez de Prado's formula with N = 10 trials of variance V = 0.5 (per period)
    g = 0.5772156649015329
    sr0 = math.sqrt(0.5) * ((1 - g) * norm.ppf(1 - 1 / 10) + g * norm.ppf(1 - 1 / (10 * math.e)))
    # the best of 10 standard normals is expected near 1.54 (exactly 1.5388); the formula: 1.5746
    assert sr0 == pytest.approx(math.sqrt(0.5) * 1.5746, abs=1e-4)
    assert expected_max_sharpe(10, 0.5) == pytest.approx(sr0, rel=1e-9)
    d = deflated_sharpe_ratio(2.5, 10, 100, 0.0, 3.0, sharpe_variance_across_trials=0.5)
    z = (2.5 - sr0) * math.sqrt(99) / math.sqrt(1 + 2 / 4 * 2.5**2)
    assert d.probability == pytest.approx(0.5 * (1 + math.erf(z / math.sqrt(2))), rel=1e-9)
    assert d.variance_from == "trials" and d.n_trials == 10
    # without the trials' variance: the null sampling variance of one Sharpe estimate
    assert deflated_sharpe_ratio(0.1, 5, 101).sharpe_variance == pytest.approx(1 / 100)


@settings(max_examples=60, deadline=None)
@given(sr=st.floats(-0.3, 0.3), n=st.integers(20, 5000), skew=st.floats(-1, 1), extra=st.floats(0, 6),
       trials=st.integers(1, 200))
def test_more_trials_never_raise_the_deflated_sharpe(sr: float, n: int, skew: float, extra: float,
                                                     trials: int) -> None:
    kurt = 1 + skew**2 + extra  # any real distribution has kurtosis >= 1 + skew^2
    fewer = deflated_sharpe_ratio(sr, trials, n, skew, kurt)
    more = deflated_sharpe_ratio(sr, trials + 1, n, skew, kurt)
    assert 0.0 <= more.probability <= fewer.probability <= 1.0
    assert more.expected_max_sharpe > fewer.expected_max_sharpe >= 0.0


def test_bad_deflated_sharpe_inputs_are_named() -> None:
    with pytest.raises(ValueError, match="n_trials must be >= 1"):
        deflated_sharpe_ratio(1.0, 0, 100)
    with pytest.raises(ValueError, match="n_obs must be >= 2"):
        deflated_sharpe_ratio(1.0, 3, 1)
    with pytest.raises(ValueError, match="kurtosis >= 1"):
        deflated_sharpe_ratio(1.0, 3, 100, 0.0, 0.5)
