"""Evaluation of cross-sectional rankings: daily IC / RankIC, ICIR, quantile portfolios and a
top-minus-bottom long-short book after costs, with its deflated Sharpe ratio.

Input of every function: a long Polars frame ``scores`` with columns ``date`` (Date or Datetime),
``symbol`` (string), ``score`` (numeric; higher = expected higher return) and ``ret`` (numeric raw
forward return of ONE horizon; NaN or null = unknown), unique per (date, symbol). The caller loops
horizons; the functions never loop over dates in Python (one ``group_by`` over dates each).

Rows with a non-finite ``score`` or ``ret`` do not count on their date. Overlapping horizons:
with ``horizon``-day returns, the returns of consecutive dates overlap, so portfolios are formed
on every ``horizon``-th date of the frame's calendar (all its distinct dates, valid or not) and
held for one horizon; the IC interval uses a Newey-West standard error with at least ``horizon``
lags. ``ret`` is used as a simple return: mean over a leg is the equal-weight leg return.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Annotated, Any

import numpy as np
import polars as pl
from pydantic import Field, PositiveInt
from scipy import stats

from moola.config import MAX_SYMBOLS, Bars, Config
from moola.evaluation.economics import deflated_sharpe_ratio, max_drawdown

__all__ = [
    "RANKING_METRIC_NAMES",
    "SCORE_COLUMNS",
    "LongShortConfig",
    "LongShortResult",
    "check_scores",
    "daily_ic",
    "ic_summary",
    "long_short_backtest",
    "newey_west_se",
    "quantile_returns",
    "ranking_metrics",
]

SCORE_COLUMNS = ("date", "symbol", "score", "ret")
_SYMBOL_TYPES = (pl.String, pl.Categorical, pl.Enum)


# ------------------------------------------------------------------------------ input


def check_scores(scores: pl.DataFrame) -> pl.DataFrame:
    """The four columns with ``score``/``ret`` as Float64 (null -> NaN), sorted by (date, symbol);
    raises on a wrong type, missing columns, an empty frame or duplicate (date, symbol) keys."""
    if not isinstance(scores, pl.DataFrame):
        raise TypeError(f"scores must be a polars DataFrame with columns {list(SCORE_COLUMNS)}, "
                        f"got {type(scores).__name__}")
    missing = [c for c in SCORE_COLUMNS if c not in scores.columns]
    if missing:
        raise ValueError(f"scores lacks column(s) {missing}; expected {list(SCORE_COLUMNS)}, "
                         f"got {scores.columns}")
    if scores.height == 0:
        raise ValueError("scores is empty: no (date, symbol) rows to evaluate")
    schema = scores.schema
    if not isinstance(schema["date"], pl.Date | pl.Datetime):
        raise ValueError(f"column 'date' must be Date or Datetime, got {schema['date']}")
    if not isinstance(schema["symbol"], _SYMBOL_TYPES):
        raise ValueError(f"column 'symbol' must be a string (String/Categorical), got {schema['symbol']}")
    for col in ("score", "ret"):
        if not schema[col].is_numeric():
            raise ValueError(f"column {col!r} must be numeric (float), got {schema[col]}")
    out = scores.select(
        pl.col("date"), pl.col("symbol").cast(pl.String),
        pl.col("score").cast(pl.Float64).fill_null(float("nan")),
        pl.col("ret").cast(pl.Float64).fill_null(float("nan")),
    )
    if out["date"].null_count() or out["symbol"].null_count():
        raise ValueError(f"'date' has {out['date'].null_count()} and 'symbol' {out['symbol'].null_count()} "
                         "null values: every row needs both keys")
    dup = out.group_by("date", "symbol").len().filter(pl.col("len") > 1)
    if dup.height:
        ex = dup.sort("date", "symbol").row(0, named=True)
        raise ValueError(f"scores has {dup.height} duplicate (date, symbol) key(s), e.g. date={ex['date']} "
                         f"symbol={ex['symbol']!r} appears {ex['len']} times: one row per stock and date")
    return out.sort("date", "symbol")


def _valid(frame: pl.DataFrame) -> pl.DataFrame:
    return frame.filter(pl.col("score").is_finite() & pl.col("ret").is_finite())


def _rebalance_dates(frame: pl.DataFrame, horizon: int) -> pl.Series:
    """Every ``horizon``-th distinct date of the frame (its calendar), starting with the first."""
    if horizon < 1:
        raise ValueError(f"horizon must be >= 1 (days), got {horizon}")
    return frame.get_column("date").unique().sort().gather_every(horizon)


# --------------------------------------------------------------------------------- IC


def daily_ic(scores: pl.DataFrame, min_stocks: int = 5) -> pl.DataFrame:
    """Per date: ``n`` valid stocks, Pearson ``ic`` and Spearman ``rank_ic`` (average ranks for
    ties) of score vs. ret; dates with fewer than ``min_stocks`` valid rows are dropped, a date
    with constant scores (or returns) keeps a NaN IC, which ``ic_summary`` counts."""
    if min_stocks < 2:
        raise ValueError(f"min_stocks must be >= 2 for a correlation, got {min_stocks}")
    v = _valid(check_scores(scores))
    return (v.group_by("date")
            .agg(pl.len().cast(pl.Int64).alias("n"),
                 pl.corr("score", "ret").alias("ic"),
                 pl.corr("score", "ret", method="spearman").alias("rank_ic"))
            .filter(pl.col("n") >= min_stocks)
            .with_columns(pl.col("ic", "rank_ic").fill_null(float("nan")))
            .sort("date"))


def newey_west_se(x: np.ndarray, lags: int) -> float:
    """HAC (Bartlett-kernel, Newey-West 1987) standard error of the mean of series ``x`` (n,)."""
    x = np.asarray(x, dtype=np.float64)
    n = x.shape[0]
    if n < 2:
        return float("nan")
    e = x - x.mean()
    var = float(e @ e) / n
    for j in range(1, min(lags, n - 1) + 1):
        var += 2.0 * (1.0 - j / (lags + 1.0)) * float(e[j:] @ e[:-j]) / n
    return math.sqrt(max(var, 0.0) / n)


def _hac_lags(n: int, horizon: int) -> int:
    """max(horizon, floor(4 (n/100)^(2/9))): the overlap of ``horizon``-day returns, at least the
    Newey-West (1994) rule of thumb for serial correlation of daily ICs."""
    return max(int(horizon), math.floor(4.0 * (max(n, 1) / 100.0) ** (2.0 / 9.0)))


def _series_summary(x: np.ndarray, horizon: int, level: float) -> dict[str, Any]:
    fin = x[np.isfinite(x)]
    n = int(fin.shape[0])
    mean = float(fin.mean()) if n else float("nan")
    std = float(fin.std(ddof=1)) if n > 1 else float("nan")
    ir = mean / std if n > 1 and std > 0 else float("nan")
    lags = _hac_lags(n, horizon)
    se = newey_west_se(fin, lags)
    t = float(stats.t.ppf(0.5 + level / 2.0, df=n - 1)) if n > 1 else float("nan")
    lo, hi = (mean - t * se, mean + t * se) if math.isfinite(se) else (float("nan"), float("nan"))
    return {"mean": mean, "std": std, "ir": ir, "se": se, "ci": (lo, hi),
            "t": mean / se if math.isfinite(se) and se > 0 else float("nan"),
            "positive_rate": float((fin > 0).mean()) if n else float("nan"), "n": n,
            "n_nan": int(x.shape[0] - n), "lags": lags}


def ic_summary(daily: pl.DataFrame, horizon: int = 1, level: float = 0.95) -> dict[str, Any]:
    """Mean, std and IR (mean / std, ddof 1, not annualised, as Qlib reports) of the daily IC and
    RankIC of ``daily_ic``, with a ``level`` interval of each mean.

    Interval: mean +- t_{n-1} * Newey-West standard error (Bartlett kernel, ``max(horizon,
    4 (n/100)^(2/9))`` lags), so the overlap of ``horizon``-day returns (daily ICs of 5/10/20-day
    returns are serially correlated) widens it rather than being counted as independent days.
    NaN days (constant scores) are left out of every statistic and counted in ``n_days_nan``.
    """
    for col in ("ic", "rank_ic"):
        if col not in daily.columns:
            raise ValueError(f"daily lacks column {col!r}; expected the output of daily_ic "
                             f"(date, n, ic, rank_ic), got {daily.columns}")
    if not 0.0 < level < 1.0:
        raise ValueError(f"level must be in (0, 1), got {level}")
    d = daily.sort("date") if "date" in daily.columns else daily
    ic = _series_summary(d["ic"].cast(pl.Float64).fill_null(float("nan")).to_numpy(), horizon, level)
    ric = _series_summary(d["rank_ic"].cast(pl.Float64).fill_null(float("nan")).to_numpy(), horizon, level)
    return {
        "ic_mean": ic["mean"], "ic_std": ic["std"], "icir": ic["ir"], "ic_se": ic["se"],
        "ic_t": ic["t"], "ic_ci": ic["ci"], "ic_positive_rate": ic["positive_rate"],
        "rank_ic_mean": ric["mean"], "rank_ic_std": ric["std"], "rank_icir": ric["ir"],
        "rank_ic_se": ric["se"], "rank_ic_t": ric["t"], "rank_ic_ci": ric["ci"],
        "rank_ic_positive_rate": ric["positive_rate"],
        "n_days": ric["n"], "n_days_nan": ric["n_nan"], "hac_lags": ric["lags"], "ci_level": level,
        "ci_method": "t interval with Newey-West (Bartlett) standard error",
    }


# -------------------------------------------------------------------------- quantiles


def _with_rank(v: pl.DataFrame) -> pl.DataFrame:
    """Adds ``n`` (valid stocks of the date) and ``rank`` 1..n by ascending score; ties broken by
    symbol (the frame is sorted by date, symbol), so assignments are deterministic."""
    return v.with_columns(pl.len().over("date").alias("n"),
                          pl.col("score").rank("ordinal").over("date").alias("rank"))


def quantile_returns(scores: pl.DataFrame, n_quantiles: int = 5, horizon: int = 1) -> pl.DataFrame:
    """(date, q1..qN, long_short): mean forward return of each score quantile (q1 lowest scores)
    on every ``horizon``-th date, and qN - q1. Quantile of rank r of n is floor((r-1) N / n) + 1;
    dates with fewer than ``n_quantiles`` valid stocks are dropped."""
    if n_quantiles < 2:
        raise ValueError(f"n_quantiles must be >= 2, got {n_quantiles}")
    frame = check_scores(scores)
    reb = _rebalance_dates(frame, horizon)
    v = _with_rank(_valid(frame).filter(pl.col("date").is_in(reb.implode())))
    v = v.filter(pl.col("n") >= n_quantiles).with_columns(
        ((pl.col("rank") - 1) * n_quantiles // pl.col("n") + 1).alias("q"))
    qs = [f"q{k}" for k in range(1, n_quantiles + 1)]
    out = (v.group_by("date")
           .agg([pl.col("ret").filter(pl.col("q") == k).mean().alias(f"q{k}")
                 for k in range(1, n_quantiles + 1)])
           .sort("date"))
    return out.with_columns((pl.col(qs[-1]) - pl.col(qs[0])).alias("long_short")).select("date", *qs,
                                                                                       "long_short")


# ------------------------------------------------------------------------- long-short


class LongShortConfig(Config):
    """Equal-weight long the top and short the bottom of each rebalance date's ranking.

    ``quantile``: share of the date's valid stocks in each leg (floor, at least 1); ``top_k``,
    when set, replaces it with a fixed leg size (clipped to half the stocks of a thin date).
    ``cost_bps`` is charged per side on turnover (1 unit = buying or selling the whole of one
    leg's gross weight once). ``horizon`` days between rebalances; ``trading_days`` per year.
    """

    quantile: float = Field(0.2, gt=0.0, le=0.5)
    top_k: Annotated[int, Field(ge=1, le=MAX_SYMBOLS)] | None = None
    cost_bps: float = Field(10.0, ge=0.0)
    horizon: Bars = 1
    trading_days: PositiveInt = 252
    min_stocks: int = Field(5, ge=2, description="dates with fewer valid stocks are not traded")

    @property
    def periods_per_year(self) -> float:
        return self.trading_days / self.horizon


def _stats(r: np.ndarray, ppy: float) -> dict[str, float]:
    """Annualised figures of per-period returns ``r`` (K,): arithmetic annual return (mean * ppy,
    as Qlib), CAGR and total return of the compounded equity, Sharpe (ddof 1), max drawdown."""
    k = r.shape[0]
    equity = np.concatenate([[1.0], np.cumprod(1.0 + r)])
    sd = float(r.std(ddof=1)) if k > 1 else 0.0
    total = float(equity[-1] - 1.0)
    return {
        "ann_return": float(r.mean() * ppy) if k else float("nan"),
        "cagr": float(equity[-1] ** (ppy / k) - 1.0) if k and equity[-1] > 0 else float("nan"),
        "total_return": total,
        "sharpe": float(r.mean() / sd * math.sqrt(ppy)) if sd > 0 else 0.0,
        "mdd": max_drawdown(equity),
        "hit_rate": float((r > 0).mean()) if k else float("nan"),
        "vol": sd * math.sqrt(ppy),
    }


def _moments(x: np.ndarray) -> tuple[float, float]:
    """(skew, plain kurtosis) as population moments; (0, 3) for a constant or tiny sample."""
    sd = float(x.std())
    if x.shape[0] < 3 or sd == 0.0:
        return 0.0, 3.0
    z = (x - x.mean()) / sd
    return float(np.mean(z**3)), float(np.mean(z**4))


@dataclass(frozen=True)
class LongShortResult:
    """The long-short book of one score frame. ``periods``: one row per traded rebalance date
    (date, n, k, long_ret, short_ret, gross, turnover, cost, net, equity, gross_equity)."""

    config: LongShortConfig
    periods: pl.DataFrame
    stats: dict[str, Any] = field(default_factory=dict)

    @property
    def equity(self) -> np.ndarray:
        """(K + 1,) compounded equity after costs, starting at 1."""
        return np.concatenate([[1.0], self.periods["equity"].to_numpy()])

    @property
    def gross_equity(self) -> np.ndarray:
        """(K + 1,) compounded equity before costs, starting at 1."""
        return np.concatenate([[1.0], self.periods["gross_equity"].to_numpy()])

    def summary(self) -> dict[str, Any]:
        """The scalars (no per-period frame), for tables and JSON."""
        return dict(self.stats)


def _turnover(legs: pl.DataFrame) -> pl.DataFrame:
    """(period, turnover): sum over symbols of |w_t - w_(t-1)| with w_(-1) = 0, from target
    weights only (drift of the weights during the holding period is ignored)."""
    prev = legs.select((pl.col("period") + 1).alias("period"), "symbol", pl.col("w").alias("w_prev"))
    last = legs["period"].max()
    j = legs.join(prev, on=["period", "symbol"], how="full", coalesce=True).filter(pl.col("period") <= last)
    return (j.group_by("period")
            .agg((pl.col("w").fill_null(0.0) - pl.col("w_prev").fill_null(0.0)).abs().sum().alias("turnover"))
            .sort("period"))


def long_short_backtest(scores: pl.DataFrame, cfg: LongShortConfig | None = None, *, n_trials: int = 1,
                        sharpe_variance_across_trials: float | None = None) -> LongShortResult:
    """Top-minus-bottom book, rebalanced every ``cfg.horizon`` dates, net of costs.

    Per period: gross = mean(ret long) - mean(ret short), weights +1/k and -1/k; turnover =
    sum |w_t - w_(t-1)| over both legs from target weights (drift ignored; the first period
    enters from flat, turnover 2; no closing trade is charged at the end); net = gross -
    cost_bps/1e4 * turnover. Dates with fewer than ``cfg.min_stocks`` valid stocks are skipped
    (the next trade is measured against the last book held). Deflated Sharpe over ``n_trials``
    configurations via ``economics.deflated_sharpe_ratio`` on the net per-period returns.
    """
    cfg = cfg or LongShortConfig()
    if n_trials < 1:
        raise ValueError(f"n_trials must be >= 1 (configurations tried), got {n_trials}")
    frame = check_scores(scores)
    reb = _rebalance_dates(frame, cfg.horizon)
    v = _with_rank(_valid(frame).filter(pl.col("date").is_in(reb.implode())))
    v = v.filter(pl.col("n") >= cfg.min_stocks)
    if cfg.top_k is not None:
        k_expr = pl.min_horizontal(pl.lit(cfg.top_k, dtype=pl.Int64), pl.col("n") // 2)
    else:
        k_expr = pl.max_horizontal(pl.lit(1, dtype=pl.Int64),
                                   (pl.col("n") * cfg.quantile).floor().cast(pl.Int64))
    v = v.with_columns(k_expr.alias("k"))
    v = v.with_columns(pl.when(pl.col("rank") > pl.col("n") - pl.col("k")).then(1.0 / pl.col("k"))
                       .when(pl.col("rank") <= pl.col("k")).then(-1.0 / pl.col("k"))
                       .otherwise(0.0).alias("w"))
    legs = v.filter(pl.col("w") != 0.0)
    per = (legs.group_by("date")
           .agg(pl.col("n").first(), pl.col("k").first(),
                pl.col("ret").filter(pl.col("w") > 0).mean().alias("long_ret"),
                pl.col("ret").filter(pl.col("w") < 0).mean().alias("short_ret"))
           .sort("date").with_row_index("period"))
    date_type: pl.DataType = frame.schema["date"]
    periods_schema = pl.Schema({
        "date": date_type, "n": pl.Int64(), "k": pl.Int64(), "long_ret": pl.Float64(),
        "short_ret": pl.Float64(), "gross": pl.Float64(), "turnover": pl.Float64(), "cost": pl.Float64(),
        "net": pl.Float64(), "equity": pl.Float64(), "gross_equity": pl.Float64()})
    if per.height == 0:
        empty: dict[str, Any] = {"n_periods": 0, "horizon": cfg.horizon,
                                 "periods_per_year": cfg.periods_per_year}
        return LongShortResult(cfg, pl.DataFrame(schema=periods_schema), empty)
    legs = legs.join(per.select("date", "period"), on="date")
    per = per.join(_turnover(legs.select("period", "symbol", "w")), on="period", how="left")
    rate = cfg.cost_bps / 1e4
    per = per.with_columns((pl.col("long_ret") - pl.col("short_ret")).alias("gross"),
                           pl.col("turnover").fill_null(0.0))
    per = per.with_columns((rate * pl.col("turnover")).alias("cost"))
    per = per.with_columns((pl.col("gross") - pl.col("cost")).alias("net"))
    per = per.with_columns((1.0 + pl.col("net")).cum_prod().alias("equity"),
                           (1.0 + pl.col("gross")).cum_prod().alias("gross_equity"))
    per = per.select(list(periods_schema)).cast(periods_schema)
    net, gross, turn = per["net"].to_numpy(), per["gross"].to_numpy(), per["turnover"].to_numpy()
    ppy = cfg.periods_per_year
    s_net, s_gross = _stats(net, ppy), _stats(gross, ppy)
    skew, kurt = _moments(net)
    k_periods = int(per.height)
    dsr: float | None = None
    sr0: float | None = None
    if k_periods >= 3 and float(net.std()) > 0:
        d = deflated_sharpe_ratio(s_net["sharpe"], n_trials, k_periods, skew, kurt,
                                  sharpe_variance_across_trials=sharpe_variance_across_trials,
                                  periods_per_year=ppy)
        dsr, sr0 = d.probability, d.expected_max_sharpe
    stats_: dict[str, Any] = {
        **s_net, **{f"gross_{k}": x for k, x in s_gross.items()},
        "turnover": float(turn.mean()),
        "turnover_after_entry": float(turn[1:].mean()) if k_periods > 1 else float("nan"),
        "costs_paid": float(per["cost"].to_numpy().sum()), "skew": skew, "kurtosis": kurt,
        "dsr": dsr, "dsr_benchmark_sharpe": sr0, "n_trials": n_trials, "n_periods": k_periods,
        "mean_leg_size": float(per["k"].to_numpy().mean()), "horizon": cfg.horizon, "periods_per_year": ppy,
        "cost_bps": cfg.cost_bps,
    }
    return LongShortResult(cfg, per, stats_)


# ---------------------------------------------------------------------------- combined


# The numeric keys of ranking_metrics' dict, declared so a rank sweep's ``val.<h>.<name>``
# selection is checked before training; tests/test_metric_names.py keeps it exact.
RANKING_METRIC_NAMES: tuple[str, ...] = (
    "ic_mean", "ic_std", "icir", "ic_se", "ic_t", "ic_positive_rate", "rank_ic_mean", "rank_ic_std",
    "rank_icir", "rank_ic_se", "rank_ic_t", "rank_ic_positive_rate", "n_days", "n_days_nan", "hac_lags",
    "ci_level", "ic_ci_low", "ic_ci_high", "rank_ic_ci_low", "rank_ic_ci_high",
    "ls_ann_return", "ls_cagr", "ls_total_return", "ls_sharpe", "ls_mdd", "ls_vol", "ls_turnover",
    "ls_turnover_after_entry", "ls_costs_paid", "ls_skew", "ls_kurtosis", "ls_n_periods",
    "ls_dsr_benchmark_sharpe", "ls_gross_ann_return", "ls_gross_cagr", "ls_gross_total_return",
    "ls_gross_sharpe", "ls_gross_mdd", "ls_gross_hit_rate", "hit_rate", "dsr", "quantile_spread",
    "horizon", "n_trials", "cost_bps", "n_quantiles",
)


def ranking_metrics(scores: pl.DataFrame, horizon: int, cfg: LongShortConfig | None = None, n_trials: int = 1,
                    *, min_stocks: int = 5, n_quantiles: int = 5,
                    sharpe_variance_across_trials: float | None = None) -> dict[str, Any]:
    """One flat dict per horizon: IC / RankIC summary (``ic_*``, ``rank_ic_*``, ``icir``), the
    long-short book (``ls_*`` net, ``ls_gross_*`` before costs, ``hit_rate``, ``dsr``) and the
    mean top-minus-bottom quantile spread; ``cfg.horizon`` must equal ``horizon``."""
    cfg = cfg or LongShortConfig(horizon=horizon)
    if cfg.horizon != horizon:
        raise ValueError(f"LongShortConfig.horizon is {cfg.horizon} but horizon={horizon}: pass the "
                         "config of this horizon (cfg.model_copy(update={'horizon': h}))")
    frame = check_scores(scores)
    s = ic_summary(daily_ic(frame, min_stocks=min_stocks), horizon=horizon)
    ls = long_short_backtest(frame, cfg, n_trials=n_trials,
                             sharpe_variance_across_trials=sharpe_variance_across_trials).summary()
    q = quantile_returns(frame, n_quantiles=n_quantiles, horizon=horizon)
    out: dict[str, Any] = {k: x for k, x in s.items() if k not in ("ic_ci", "rank_ic_ci")}
    out.update(ic_ci_low=s["ic_ci"][0], ic_ci_high=s["ic_ci"][1],
               rank_ic_ci_low=s["rank_ic_ci"][0], rank_ic_ci_high=s["rank_ic_ci"][1])
    ls_keys = ("ann_return", "cagr", "total_return", "sharpe", "mdd", "vol", "turnover",
               "turnover_after_entry", "costs_paid", "skew", "kurtosis", "n_periods", "dsr_benchmark_sharpe")
    for key in ls_keys:
        if key in ls:
            out[f"ls_{key}"] = ls[key]
    for key in ("ann_return", "cagr", "total_return", "sharpe", "mdd", "hit_rate"):
        if f"gross_{key}" in ls:
            out[f"ls_gross_{key}"] = ls[f"gross_{key}"]
    out["hit_rate"] = ls.get("hit_rate", float("nan"))
    out["dsr"] = ls.get("dsr")
    spread = q["long_short"].drop_nulls().drop_nans().to_numpy()
    out["quantile_spread"] = float(spread.mean()) if spread.size else float("nan")
    out.update(horizon=horizon, n_trials=n_trials, cost_bps=cfg.cost_bps, n_quantiles=n_quantiles)
    return out

