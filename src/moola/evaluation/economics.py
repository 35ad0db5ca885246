"""Economic check with costs: does a direction model make money after fees, on the test rows?

Positions come from the calibrated probability of "up" ``p_up`` and a symmetric band chosen on
VALIDATION rows (``choose_band``) and then applied unchanged to the test rows (``backtest``):

* ``long_flat``: +1 when ``p_up > 0.5 + band``, else 0.
* ``long_short``: +1 when ``p_up > 0.5 + band``, -1 when ``p_up < 0.5 - band``, else 0.

Overlapping horizons: with a ``horizon``-bar label, the forward return of consecutive rows
overlaps, so a per-row position would count the same bars up to ``horizon`` times. The backtest
therefore trades NON-OVERLAPPING periods: a decision every ``hold_rows`` rows (rows 0, hold_rows,
2*hold_rows, ...), held for that row's forward return. With stride-1 windows use
``hold_rows = horizon``; in general ``horizon / stride``. Rows must be one symbol's rows in time
order, and ``forward_return[i]`` the log return over the row's label horizon (as
``moola.datasets.tasks.forward_log_return``).

Arithmetic, per period ``k`` with position ``w_k`` and log forward return ``r_k``:
gross ``w_k * (exp(r_k) - 1)`` (simple return, so a short earns ``1 - exp(r_k)``), minus costs
``(fee_bps + slippage_bps) / 1e4 * |w_k - w_(k-1)|`` charged on turnover, starting flat
(``w_(-1) = 0``) and closing the last position at the end. Equity is the cumulative product of
``1 + net_k``; max drawdown is the largest fall from a running peak of equity (which starts at 1);
turnover is the sum of ``|w_k - w_(k-1)|`` including the final close. Sharpe is
``mean(net) / std(net) * sqrt(periods_per_year)`` with ``periods_per_year = bars_per_year /
(hold_rows * stride)``; ``bars_per_year`` counts a 24/7 market (crypto): 365 * 86400 s / bar
seconds, or 252 bars for daily equities (``annual_bars``). A book that never trades has Sharpe 0.
Hit rate is the share of periods with a position whose gross return is > 0. Buy-and-hold is
always long on the same periods, with the same costs (one entry, one exit).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from statistics import NormalDist
from typing import Any, Literal

import numpy as np
from pydantic import Field, field_validator

from moola.config import Config
from moola.data import Timeframe

__all__ = [
    "BANDS",
    "Backtest",
    "CostConfig",
    "DeflatedSharpe",
    "EconomicsConfig",
    "annual_bars",
    "backtest",
    "buy_and_hold",
    "choose_band",
    "deflated_sharpe_ratio",
    "expected_max_sharpe",
    "max_drawdown",
    "positions",
    "probabilistic_sharpe_ratio",
]

Mode = Literal["long_flat", "long_short"]
Objective = Literal["net_return", "sharpe"]
# candidate bands; 0.5 never trades, so "stay flat" is always a choice on validation
BANDS: tuple[float, ...] = (0.0, 0.01, 0.02, 0.03, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.5)


class CostConfig(Config):
    """Trading costs in basis points per unit of turnover (a full entry or exit of the book).

    Default fee: 10 bps, the Binance spot taker fee (VIP 0, no BNB discount), the more expensive
    of the two venues in the shared data (Bybit USDT perpetuals charge a 5.5 bps taker fee): a
    market-order strategy pays taker fees, and the conservative venue keeps the check honest.
    Slippage: 1 bps, about half the spread plus impact of a small market order on BTC/ETH.
    """

    fee_bps: float = Field(10.0, ge=0, description=(
        "exchange fee in basis points (1e-4) per unit of turnover; default: the Binance spot "
        "taker fee"))
    slippage_bps: float = Field(1.0, ge=0, description=(
        "slippage in basis points per unit of turnover, added to the fee"))

    @property
    def per_turnover(self) -> float:
        return (self.fee_bps + self.slippage_bps) / 1e4


class EconomicsConfig(Config):
    """How the band is chosen on validation and how positions are formed."""

    costs: CostConfig = CostConfig()
    mode: Mode = Field("long_short", description=(
        "long_flat: long when p_up > 0.5 + band, else flat; long_short: also short when "
        "p_up < 0.5 - band"))
    objective: Objective = Field("sharpe", description=(
        "what the band choice maximises on validation: net_return or sharpe (annualised)"))
    bands: list[float] = Field(default_factory=lambda: list(BANDS), description=(
        "candidate bands around p_up = 0.5, each in [0, 0.5] (0.5 never trades); default: "
        + ", ".join(map(str, BANDS))))

    @field_validator("bands")
    @classmethod
    def _bands_in_range(cls, v: list[float]) -> list[float]:
        bad = [b for b in v if not 0.0 <= b <= 0.5]
        if bad:
            raise ValueError(f"bands must lie in [0, 0.5] (0.5 never trades); got {bad}")
        return v


@dataclass(frozen=True)
class Backtest:
    """One strategy on a set of rows. ``equity`` is (n_periods + 1,), starting at 1."""

    name: str
    net_return: float
    gross_return: float
    sharpe: float
    turnover: float
    max_drawdown: float
    hit_rate: float | None  # None when no period held a position
    n_periods: int
    periods_per_year: float
    costs_paid: float
    equity: np.ndarray
    band: float | None = None
    # moments of the per-period net returns, for the deflated Sharpe ratio (kurtosis is the
    # plain fourth standardised moment: 3 for normal returns; 0 and 3 when net is constant)
    skew: float = 0.0
    kurtosis: float = 3.0

    def summary(self) -> dict[str, Any]:
        """The scalars (no equity curve), for tables and JSON."""
        d = asdict(self)
        d.pop("equity")
        return d


def annual_bars(timeframe: str, *, trading_days: int = 365) -> float:
    """Bars in a year: ``trading_days`` * 86400 s / bar length for intraday bars (24/7 markets
    by default), ``trading_days`` for daily bars (pass 252 for equities)."""
    if timeframe not in {t.value for t in Timeframe}:
        raise ValueError(f"unknown timeframe {timeframe!r}; choose from {[t.value for t in Timeframe]}")
    tf = Timeframe(timeframe)
    if not tf.is_intraday:
        return float(trading_days)
    return trading_days * 86400.0 / tf.step.total_seconds()


def max_drawdown(equity: object) -> float:
    """Largest fall from a running peak, as a fraction of that peak (0 when it never falls)."""
    e = np.asarray(equity, dtype=np.float64)
    if e.ndim != 1 or e.shape[0] == 0:
        raise ValueError(f"equity must be a non-empty 1-D array, got shape {e.shape}")
    peak = np.maximum.accumulate(e)
    return float(np.max(1.0 - e / peak))


def _check_band(band: float) -> None:
    if not 0.0 <= band <= 0.5:
        raise ValueError(f"band must be in [0, 0.5], got {band}")


def positions(p_up: object, band: float, mode: Mode) -> np.ndarray:
    """(N,) positions in {-1, 0, 1} from calibrated P(up) (module doc)."""
    p = np.asarray(p_up, dtype=np.float64)
    _check_band(band)
    long = (p > 0.5 + band).astype(np.float64)
    if mode == "long_flat":
        return long
    if mode == "long_short":
        return long - (p < 0.5 - band).astype(np.float64)
    raise ValueError(f"unknown mode {mode!r}; choose from ['long_flat', 'long_short']")


def _check_rows(p_up: object, forward_return: object, hold_rows: int) -> tuple[np.ndarray, np.ndarray]:
    p = np.asarray(p_up, dtype=np.float64)
    r = np.asarray(forward_return, dtype=np.float64)
    if p.ndim != 1 or r.ndim != 1:
        raise ValueError(f"p_up and forward_return must be 1-D, got shapes {p.shape} and {r.shape}")
    if p.shape != r.shape:
        raise ValueError(f"p_up has {p.shape[0]} rows but forward_return has {r.shape[0]}")
    if p.shape[0] == 0:
        raise ValueError("no rows to backtest")
    for name, a in (("p_up", p), ("forward_return", r)):
        if not np.all(np.isfinite(a)):
            raise ValueError(f"{name} contains NaN or inf at row {int(np.argmin(np.isfinite(a)))}")
    if np.any((p < 0) | (p > 1)):
        raise ValueError(f"p_up must be probabilities in [0, 1]; row {int(np.argmax((p < 0) | (p > 1)))} "
                         "is not")
    if hold_rows < 1:
        raise ValueError(f"hold_rows must be >= 1, got {hold_rows}")
    return p, r


def _run(name: str, w: np.ndarray, r: np.ndarray, costs: CostConfig, periods_per_year: float,
         band: float | None) -> Backtest:
    gross = w * np.expm1(r)  # (K,) simple return of each period
    trades = np.abs(np.diff(w, prepend=0.0))  # entering from flat, then each change
    close = abs(float(w[-1]))  # closing the book at the end
    cost = costs.per_turnover * trades
    net = gross - cost
    net[-1] -= costs.per_turnover * close
    equity = np.concatenate([[1.0], np.cumprod(1.0 + net)])
    sd = float(net.std())
    sharpe = 0.0 if sd == 0.0 else float(net.mean() / sd * np.sqrt(periods_per_year))
    skew, kurt = _moments(net)
    held = w != 0
    hit = float((gross[held] > 0).mean()) if held.any() else None
    return Backtest(name=name, net_return=float(equity[-1] - 1.0),
                    gross_return=float(np.prod(1.0 + gross) - 1.0), sharpe=sharpe,
                    turnover=float(trades.sum() + close), max_drawdown=max_drawdown(equity),
                    hit_rate=hit, n_periods=int(w.shape[0]), periods_per_year=periods_per_year,
                    costs_paid=float(cost.sum() + costs.per_turnover * close), equity=equity, band=band,
                    skew=skew, kurtosis=kurt)


def _moments(x: np.ndarray) -> tuple[float, float]:
    """(skewness, kurtosis) as population moments of ``x``; (0, 3) when ``x`` is constant."""
    sd = float(x.std())
    if sd == 0.0 or x.shape[0] < 2:
        return 0.0, 3.0
    z = (x - x.mean()) / sd
    return float(np.mean(z**3)), float(np.mean(z**4))


def backtest(
    p_up: object,
    forward_return: object,
    band: float,
    *,
    mode: Mode = "long_short",
    costs: CostConfig | None = None,
    hold_rows: int = 1,
    stride: int = 1,
    bars_per_year: float,
) -> Backtest:
    """Trade every ``hold_rows``-th row with the band's positions, net of costs (module doc)."""
    p, r = _check_rows(p_up, forward_return, hold_rows)
    w = positions(p[::hold_rows], band, mode)
    return _run(mode, w, r[::hold_rows], costs or CostConfig(), bars_per_year / (hold_rows * stride), band)


def buy_and_hold(forward_return: object, *, costs: CostConfig | None = None, hold_rows: int = 1,
                 stride: int = 1, bars_per_year: float) -> Backtest:
    """Always long on the same periods as ``backtest``; pays one entry and one exit."""
    r = np.asarray(forward_return, dtype=np.float64)
    _check_rows(np.full(r.shape, 0.5), r, hold_rows)
    r = r[::hold_rows]
    return _run("buy_and_hold", np.ones_like(r), r, costs or CostConfig(),
                bars_per_year / (hold_rows * stride), None)


def choose_band(
    p_up_val: object,
    forward_return_val: object,
    cfg: EconomicsConfig | None = None,
    *,
    hold_rows: int = 1,
    stride: int = 1,
    bars_per_year: float,
) -> tuple[float, list[Backtest]]:
    """The band with the best ``cfg.objective`` on the VALIDATION rows, and every candidate's run.

    Ties go to the wider band (fewer trades); with 0.5 among the bands, staying flat wins when
    every trading band loses money. Apply the band to the test rows with ``backtest``.
    """
    cfg = cfg or EconomicsConfig()
    if not cfg.bands:
        raise ValueError("EconomicsConfig.bands is empty: give at least one band in [0, 0.5]")
    runs = [backtest(p_up_val, forward_return_val, b, mode=cfg.mode, costs=cfg.costs,
                     hold_rows=hold_rows, stride=stride, bars_per_year=bars_per_year)
            for b in sorted(cfg.bands)]
    score = [r.net_return if cfg.objective == "net_return" else r.sharpe for r in runs]
    best = max(range(len(runs)), key=lambda i: (score[i], runs[i].band))
    return sorted(cfg.bands)[best], runs


# ---------------------------------------------------------------- deflated Sharpe ratio
#
# Bailey & Lopez de Prado (2014), "The Deflated Sharpe Ratio: Correcting for Selection Bias,
# Backtest Overfitting and Non-Normality", J. Portfolio Management 40(5). With per-period
# Sharpe ``sr`` measured on ``T`` periods whose returns have skewness ``g3`` and kurtosis ``g4``
# (3 for normal returns):
#
#   PSR(sr0) = Phi( (sr - sr0) * sqrt(T - 1) / sqrt(1 - g3 * sr + (g4 - 1) / 4 * sr^2) )
#
# the probability that the true Sharpe exceeds ``sr0``. The deflated Sharpe ratio is PSR
# against the Sharpe the best of ``N`` unskilled trials is expected to show:
#
#   sr0 = sqrt(V) * ((1 - gamma) * Phi^-1(1 - 1/N) + gamma * Phi^-1(1 - 1/(N e)))
#
# with ``gamma`` the Euler-Mascheroni constant and ``V`` the variance of the trials' Sharpe
# estimates; without the trials' Sharpes, ``V = 1 / (T - 1)``, the sampling variance of a Sharpe
# estimate when the true Sharpe is 0. N = 1 gives sr0 = 0 (PSR against zero).

EULER_GAMMA = 0.5772156649015329
_NORMAL = NormalDist()


@dataclass(frozen=True)
class DeflatedSharpe:
    """The deflated Sharpe ratio and what went into it (Sharpes annualised)."""

    probability: float  # P(true Sharpe > expected max of n_trials null Sharpes)
    sharpe: float
    expected_max_sharpe: float  # the benchmark sr0, annualised
    n_trials: int
    n_obs: int
    skew: float
    kurtosis: float
    sharpe_variance: float  # V, per-period units
    variance_from: str  # "trials" or "null (1 / (n_obs - 1))"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _check_sharpe_inputs(n_obs: int, skew: float, kurtosis: float, periods_per_year: float) -> None:
    if n_obs < 2:
        raise ValueError(f"n_obs must be >= 2 periods to judge a Sharpe ratio, got {n_obs}")
    if not (math.isfinite(skew) and math.isfinite(kurtosis)) or kurtosis < 1.0:
        raise ValueError(f"skew {skew} / kurtosis {kurtosis}: need finite values with kurtosis >= 1 "
                         "(kurtosis is the plain fourth moment, 3 for normal returns)")
    if not periods_per_year > 0:
        raise ValueError(f"periods_per_year must be > 0, got {periods_per_year}")


def probabilistic_sharpe_ratio(sharpe: float, n_obs: int, skew: float = 0.0, kurtosis: float = 3.0,
                               *, benchmark: float = 0.0, periods_per_year: float = 1.0) -> float:
    """P(true Sharpe > ``benchmark``) from a measured ``sharpe`` on ``n_obs`` periods (both
    Sharpes annualised with ``periods_per_year``; 1 = per period). Formula above."""
    _check_sharpe_inputs(n_obs, skew, kurtosis, periods_per_year)
    sr, sr0 = sharpe / math.sqrt(periods_per_year), benchmark / math.sqrt(periods_per_year)
    var = 1.0 - skew * sr + (kurtosis - 1.0) / 4.0 * sr * sr
    if var <= 0.0:
        raise ValueError(f"1 - skew*SR + (kurtosis-1)/4*SR^2 = {var:.3g} <= 0 for SR {sr:.4g} per period, "
                         f"skew {skew}, kurtosis {kurtosis}: moments not from one sample")
    return _NORMAL.cdf((sr - sr0) * math.sqrt(n_obs - 1) / math.sqrt(var))


def expected_max_sharpe(n_trials: int, sharpe_variance: float) -> float:
    """Expected maximum of ``n_trials`` Sharpe estimates with true Sharpe 0 and variance
    ``sharpe_variance`` (same units as the result); 0 for a single trial."""
    if n_trials < 1:
        raise ValueError(f"n_trials must be >= 1, got {n_trials}")
    if not sharpe_variance >= 0.0:
        raise ValueError(f"sharpe_variance must be >= 0, got {sharpe_variance}")
    if n_trials == 1:
        return 0.0
    z = ((1.0 - EULER_GAMMA) * _NORMAL.inv_cdf(1.0 - 1.0 / n_trials)
         + EULER_GAMMA * _NORMAL.inv_cdf(1.0 - 1.0 / (n_trials * math.e)))
    return math.sqrt(sharpe_variance) * z


def deflated_sharpe_ratio(sharpe: float, n_trials: int, n_obs: int, skew: float = 0.0,
                          kurtosis: float = 3.0, sharpe_variance_across_trials: float | None = None,
                          periods_per_year: float = 1.0) -> DeflatedSharpe:
    """The deflated Sharpe ratio of the best of ``n_trials`` configurations (formula above).

    ``sharpe`` and the variance across trials are annualised with ``periods_per_year`` (the
    variance of the trials' annualised Sharpes; 1 = per period); they are brought to per-period
    units inside, where the formula holds, and the benchmark is reported annualised again.
    """
    _check_sharpe_inputs(n_obs, skew, kurtosis, periods_per_year)
    if sharpe_variance_across_trials is None:
        v, source = 1.0 / (n_obs - 1), "null (1 / (n_obs - 1))"
    else:
        v, source = sharpe_variance_across_trials / periods_per_year, "trials"
    sr0 = expected_max_sharpe(n_trials, v)
    root = math.sqrt(periods_per_year)
    p = probabilistic_sharpe_ratio(sharpe, n_obs, skew, kurtosis, benchmark=sr0 * root,
                                   periods_per_year=periods_per_year)
    return DeflatedSharpe(probability=p, sharpe=sharpe, expected_max_sharpe=sr0 * root,
                          n_trials=n_trials, n_obs=n_obs, skew=skew, kurtosis=kurtosis,
                          sharpe_variance=v, variance_from=source)
