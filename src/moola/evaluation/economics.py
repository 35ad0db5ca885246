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

from dataclasses import asdict, dataclass
from typing import Any, Literal

import numpy as np
from pydantic import Field, field_validator

from moola.config import Config
from moola.data import Timeframe

__all__ = [
    "BANDS",
    "Backtest",
    "CostConfig",
    "EconomicsConfig",
    "annual_bars",
    "backtest",
    "buy_and_hold",
    "choose_band",
    "max_drawdown",
    "positions",
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

    fee_bps: float = Field(10.0, ge=0)
    slippage_bps: float = Field(1.0, ge=0)

    @property
    def per_turnover(self) -> float:
        return (self.fee_bps + self.slippage_bps) / 1e4


class EconomicsConfig(Config):
    """How the band is chosen on validation and how positions are formed."""

    costs: CostConfig = CostConfig()
    mode: Mode = "long_short"
    objective: Objective = "sharpe"
    bands: list[float] = Field(default_factory=lambda: list(BANDS))

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
    held = w != 0
    hit = float((gross[held] > 0).mean()) if held.any() else None
    return Backtest(name=name, net_return=float(equity[-1] - 1.0),
                    gross_return=float(np.prod(1.0 + gross) - 1.0), sharpe=sharpe,
                    turnover=float(trades.sum() + close), max_drawdown=max_drawdown(equity),
                    hit_rate=hit, n_periods=int(w.shape[0]), periods_per_year=periods_per_year,
                    costs_paid=float(cost.sum() + costs.per_turnover * close), equity=equity, band=band)


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
