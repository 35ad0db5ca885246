"""Tabular baselines of the ranking journey, fitted on exactly the rows a ranking model scores:
each (date, stock) present in a split, its processed features on that date, its per-date
normalised labels for training; scored against raw returns by the caller.

* ``lightgbm``: Qlib's LightGBM-on-Alpha158 settings (``benchmarks/LightGBM/
  workflow_config_lightgbm_Alpha158.yaml``): mse, learning_rate 0.2, num_leaves 210,
  max_depth 8, lambda_l1 205.6999, lambda_l2 580.9768, colsample_bytree 0.8879, subsample
  0.8789; up to 1000 rounds, early stopping after 50 without gain on validation. One model per
  horizon.
* ``ridge``: ``sklearn`` Ridge, alpha picked on validation RankIC from a fixed grid.
* ``mlp``: ``sklearn`` MLPRegressor (256, 128), one pass per ``partial_fit``, the epoch with the
  best validation RankIC kept (patience 3): a seeded neural arm without a temporal encoder.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

from moola.training import daily_corr

__all__ = [
    "LIGHTGBM_QLIB_ALPHA158",
    "RANKING_BASELINES",
    "FlatRows",
    "RankingBaseline",
    "fit_ranking_baseline",
    "mean_daily_rank_ic",
]

RankingBaselineName = Literal["lightgbm", "ridge", "mlp"]
RANKING_BASELINES: tuple[RankingBaselineName, ...] = ("lightgbm", "ridge", "mlp")
LIGHTGBM_QLIB_ALPHA158: dict[str, Any] = {
    "objective": "mse", "learning_rate": 0.2, "num_leaves": 210, "max_depth": 8,
    "lambda_l1": 205.6999, "lambda_l2": 580.9768, "colsample_bytree": 0.8879,
    "subsample": 0.8789, "verbosity": -1,
}
RIDGE_ALPHAS = (0.1, 1.0, 10.0, 100.0, 1000.0, 10000.0)


@dataclass(frozen=True)
class FlatRows:
    """One row per present (date, stock) of a split: the features of its last bar."""

    X: np.ndarray  # (n, F) float32
    y: np.ndarray  # (n, H) float32 per-date normalised labels, NaN = unknown
    y_raw: np.ndarray  # (n, H) float32 raw forward returns, NaN = unknown
    day: np.ndarray  # (n,) int64 panel date index, ascending
    symbol: np.ndarray  # (n,) int64 panel symbol index

    def __post_init__(self) -> None:
        n = self.X.shape[0]
        for name in ("y", "y_raw", "day", "symbol"):
            if getattr(self, name).shape[0] != n:
                raise ValueError(f"FlatRows.{name} has {getattr(self, name).shape[0]} rows, X has {n}")


def mean_daily_rank_ic(score: np.ndarray, ret: np.ndarray, day: np.ndarray, min_stocks: int = 5) -> float:
    """Mean over days (with ``min_stocks`` rows where both are finite) of the Spearman correlation
    of score and ret: ``moola.training.daily_corr`` on the kept rows."""
    ok = np.isfinite(score) & np.isfinite(ret)
    s, r, d = score[ok], ret[ok], day[ok]
    _, inv, counts = np.unique(d, return_inverse=True, return_counts=True)
    keep = counts[inv] >= min_stocks
    ics = daily_corr(s[keep], r[keep], d[keep], kind="spearman")
    return float(ics.mean()) if ics.size else float("nan")


@dataclass
class RankingBaseline:
    """A fitted baseline: ``predict(X) -> (n, H)`` scores, one column per horizon."""

    name: str
    horizons: tuple[int, ...]
    models: list[Any]
    params: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0
    _multi: bool = False

    def predict(self, X: np.ndarray) -> np.ndarray:
        if self._multi:
            out = np.asarray(self.models[0].predict(X), dtype=np.float64)
            return out.reshape(X.shape[0], len(self.horizons))
        return np.stack([np.asarray(m.predict(X), dtype=np.float64) for m in self.models], axis=1)


def _known(rows: FlatRows, h: int) -> np.ndarray:
    return np.isfinite(rows.y[:, h])


def _fit_lightgbm(train: FlatRows, val: FlatRows, horizons: Sequence[int], seed: int,
                  n_jobs: int) -> RankingBaseline:
    import lightgbm as lgb

    models, rounds = [], []
    for h in range(len(horizons)):
        tr, va = _known(train, h), _known(val, h)
        dtrain = lgb.Dataset(train.X[tr], train.y[tr, h], free_raw_data=True)
        dvalid = lgb.Dataset(val.X[va], val.y[va, h], reference=dtrain)
        params = {**LIGHTGBM_QLIB_ALPHA158, "seed": seed, "num_threads": n_jobs, "deterministic": True}
        booster = lgb.train(params, dtrain, num_boost_round=1000, valid_sets=[dvalid],
                            callbacks=[lgb.early_stopping(50, verbose=False)])
        models.append(_BestIteration(booster))
        rounds.append(int(booster.best_iteration or booster.current_iteration()))
    return RankingBaseline("lightgbm", tuple(horizons), models,
                           {**LIGHTGBM_QLIB_ALPHA158, "rounds": rounds, "seed": seed})


@dataclass
class _BestIteration:
    booster: Any

    def predict(self, X: np.ndarray) -> np.ndarray:
        it = self.booster.best_iteration or None
        return np.asarray(self.booster.predict(X, num_iteration=it))


def _fit_ridge(train: FlatRows, val: FlatRows, horizons: Sequence[int], seed: int,
               n_jobs: int) -> RankingBaseline:
    from sklearn.linear_model import Ridge

    models, alphas = [], []
    for h in range(len(horizons)):
        tr = _known(train, h)
        best: tuple[float, Any, float] | None = None
        for a in RIDGE_ALPHAS:
            m = Ridge(alpha=a).fit(train.X[tr], train.y[tr, h])
            ic = mean_daily_rank_ic(m.predict(val.X), val.y_raw[:, h], val.day)
            if best is None or (np.isfinite(ic) and not ic <= best[0]):
                best = (ic if np.isfinite(ic) else -np.inf, m, a)
        assert best is not None
        models.append(best[1])
        alphas.append(best[2])
    return RankingBaseline("ridge", tuple(horizons), models, {"alpha": alphas, "grid": list(RIDGE_ALPHAS)})


def _fit_mlp(train: FlatRows, val: FlatRows, horizons: Sequence[int], seed: int, n_jobs: int,
             *, max_epochs: int = 30, patience: int = 3) -> RankingBaseline:
    from sklearn.neural_network import MLPRegressor

    tr = np.isfinite(train.y).all(axis=1)
    X, y = train.X[tr], train.y[tr]
    m = MLPRegressor(hidden_layer_sizes=(256, 128), alpha=1e-4, learning_rate_init=1e-3,
                     batch_size=min(2048, max(1, X.shape[0])), random_state=seed, shuffle=True)
    best_ic, best_m, best_epoch, bad = -np.inf, None, 0, 0
    for epoch in range(1, max_epochs + 1):
        m.partial_fit(X, y)
        pred = np.asarray(m.predict(val.X)).reshape(val.X.shape[0], len(horizons))
        ic = float(np.nanmean([mean_daily_rank_ic(pred[:, h], val.y_raw[:, h], val.day)
                               for h in range(len(horizons))]))
        if np.isfinite(ic) and ic > best_ic:
            best_ic, best_m, best_epoch, bad = ic, copy.deepcopy(m), epoch, 0
        else:
            bad += 1
            if bad >= patience:
                break
    model = best_m if best_m is not None else m
    return RankingBaseline("mlp", tuple(horizons), [model],
                           {"hidden": [256, 128], "epochs": best_epoch, "seed": seed,
                            "val_rank_ic_mean": best_ic}, _multi=True)


_FITTERS: dict[str, Callable[..., RankingBaseline]] = {
    "lightgbm": _fit_lightgbm, "ridge": _fit_ridge, "mlp": _fit_mlp,
}


def fit_ranking_baseline(name: str, train: FlatRows, val: FlatRows, horizons: Sequence[int], *,
                         seed: int = 0, n_jobs: int = 1) -> RankingBaseline:
    """Fit baseline ``name`` on ``train`` (normalised labels), selecting on ``val`` (raw returns)."""
    if name not in _FITTERS:
        raise ValueError(f"unknown ranking baseline {name!r}; choose from {', '.join(RANKING_BASELINES)}")
    if train.X.shape[0] == 0 or val.X.shape[0] == 0:
        raise ValueError(f"baseline {name}: train has {train.X.shape[0]} rows, val {val.X.shape[0]}; "
                         "both need rows")
    t0 = time.perf_counter()
    out = _FITTERS[name](train, val, horizons, seed, n_jobs)
    out.seconds = time.perf_counter() - t0
    return out
