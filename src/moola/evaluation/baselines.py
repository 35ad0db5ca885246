"""Baselines computed beside every classification result, on the SAME split as the model.

* ``majority``: predicts the class that is most frequent in ``y_train`` (first index on ties);
  its probabilities are the train class frequencies (the class prior), the same for every row,
  so its log loss / Brier are those of the prior.
* ``logistic``: ``StandardScaler`` + ``LogisticRegression`` (lbfgs, L2, ``C=LOGISTIC_C``,
  ``tol=1e-3``, ``max_iter=LOGISTIC_MAX_ITER``) on the windows flattened to (N, T*F). The strong,
  fixed L2 keeps the fit to seconds on 20k windows of 105x39 (``C=1``, ``max_iter=5000`` took about
  a minute) and its probabilities calibrated enough for log loss / Brier / ECE.
  ``features="summary"`` fits on per-window summaries (mean, std, min, max, last of each feature).
* ``persistence``: the sign of the window's last raw return: "up" (class index 1) when
  ``last_return > 0``, else "down" (0; a zero return is "down", as the direction label counts a
  zero forward return as "down"). The windows are normalised features, so the rule does NOT read a
  feature column: the caller passes the raw return explicitly (``last_return_train`` /
  ``last_return_test``, e.g. from ``last_bar_return``: ``log(close_e / close_(e-1))`` of the
  window's last bar ``e``, ``adj_close`` where the bars have it). Its probability for the
  predicted class is the rule's Laplace-smoothed hit rate on the train rows, floored just above
  0.5 so the argmax stays the sign rule. Ternary tasks (down, flat, up) label the last return
  with the same dead zone (``dead_zone``, log-return units): "flat" when ``|r| < dead_zone``.
* ``lightgbm``: ``LGBMClassifier`` (small: ``LIGHTGBM_TREES`` trees of ``num_leaves=15``,
  ``n_jobs=1``, ``deterministic=True`` with the seed) on the same features as ``logistic``.
* ``logistic`` and ``lightgbm`` read the last ``lags`` bars of each window flattened to
  (N, lags*F): ``lags=None`` (the default) is the whole window, ``LAGS`` (the last bar plus four
  lags) is the "last bar plus a few lags" the direction recipe is meant to use.
* ``minirocket``: aeon ``MiniRocket`` features (aeon wants (N, channels, T), so our (N, T, F)
  windows are transposed), ``StandardScaler(with_mean=False)`` (as aeon's
  ``MiniRocketClassifier`` does) and ``RidgeClassifierCV(alphas=np.logspace(-3, 3, 10))``. Ridge
  has no probabilities: ``proba_test`` is a softmax of the decision function (for two classes the
  decision value d becomes the scores ``(-d, d)``, matching the +-1 ridge targets). These
  probabilities are UNCALIBRATED, so read its log loss / Brier / ECE with care; accuracy and
  ranking metrics are fine. aeon rounds ``n_kernels`` down to a multiple of 84 (minimum 84); the
  default here is 1008 (paper: 10 000) to keep the transform cheap. The first use compiles numba
  code (tens of seconds once, cached on disk afterwards).

All baselines see only ``X_train`` / ``y_train`` when fitting; ``X_test`` is only transformed.
"""

from __future__ import annotations

import functools
import json
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
from scipy.special import softmax
from sklearn.linear_model import LogisticRegression, RidgeClassifierCV
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from moola.evaluation.calibration import check_labels
from moola.evaluation.metrics import _check_classes, classification_metrics

__all__ = [
    "BASELINES",
    "KNOWN_BASELINES",
    "LAGS",
    "TABLE_METRICS",
    "BaselineResult",
    "baseline_table",
    "last_bar_return",
    "lightgbm_baseline",
    "load_baseline_probabilities",
    "logistic_baseline",
    "majority_baseline",
    "minirocket_baseline",
    "persistence_baseline",
    "run_baselines",
    "save_baseline_probabilities",
    "summary_features",
]

BASELINES = ("majority", "logistic", "minirocket")  # the default of ``run_baselines``
KNOWN_BASELINES = ("majority", "persistence", "logistic", "lightgbm", "minirocket")
LAGS = 5  # last bar + 4 lags
LIGHTGBM_TREES = 100
PERSISTENCE_FLOOR = 0.5 + 1e-6
TABLE_METRICS = ("accuracy", "balanced_accuracy", "macro_f1", "roc_auc", "log_loss", "brier", "ece")
MINIROCKET_KERNELS = 1008
MINIROCKET_MIN_LENGTH = 9


@dataclass
class BaselineResult:
    """One baseline on the test split. ``fit_seconds`` is the wall time to fit on the train split
    and predict the test split (for MiniRocket the first call also includes numba compilation)."""

    name: str
    proba_test: np.ndarray
    metrics: dict[str, Any]
    fit_seconds: float
    params: dict[str, Any] = field(default_factory=dict)


# ------------------------------------------------------------------------- validation


def _check_X(X: object, name: str) -> np.ndarray:
    arr = np.asarray(X)
    if arr.dtype == object or arr.dtype.kind != "f":
        raise TypeError(f"{name} must be a float32/float64 array, got dtype {arr.dtype}")
    if arr.ndim != 3:
        raise ValueError(f"{name} must be 3-D windows (N, T, F), got shape {arr.shape}")
    if arr.shape[0] == 0:
        raise ValueError(f"{name} is empty")
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{name} contains NaN or inf")
    return arr


def _check_inputs(
    X_train: object, y_train: object, X_test: object, y_test: object, classes: Sequence[object]
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, list[str]]:
    names = _check_classes(classes)
    xtr = _check_X(X_train, "X_train")
    xte = _check_X(X_test, "X_test")
    ytr = check_labels(y_train, "y_train", n_classes=len(names))
    yte = check_labels(y_test, "y_test", n_classes=len(names))
    if xtr.shape[0] != ytr.shape[0]:
        raise ValueError(f"X_train has {xtr.shape[0]} windows but y_train has {ytr.shape[0]} labels")
    if xte.shape[0] != yte.shape[0]:
        raise ValueError(f"X_test has {xte.shape[0]} windows but y_test has {yte.shape[0]} labels")
    if xtr.shape[1:] != xte.shape[1:]:
        raise ValueError(f"X_train windows {xtr.shape[1:]} and X_test windows {xte.shape[1:]} differ")
    return xtr, ytr, xte, yte, names


def _full_proba(part: np.ndarray, seen: np.ndarray, n_classes: int) -> np.ndarray:
    """Place the columns of a model fitted on the classes ``seen`` into an (N, n_classes) matrix."""
    out = np.zeros((part.shape[0], n_classes), dtype=np.float64)
    out[:, seen.astype(int)] = part
    return out


def _result(name: str, proba: np.ndarray, y_test: np.ndarray, names: list[str], t0: float,
            params: dict[str, Any]) -> BaselineResult:
    seconds = time.perf_counter() - t0
    return BaselineResult(name, proba, classification_metrics(y_test, proba, names), seconds, params)


# ------------------------------------------------------------------------- baselines


def majority_baseline(
    X_train: object, y_train: object, X_test: object, y_test: object, classes: Sequence[object]
) -> BaselineResult:
    """Train-majority class; probabilities = train class frequencies for every test row."""
    _, ytr, xte, yte, names = _check_inputs(X_train, y_train, X_test, y_test, classes)
    t0 = time.perf_counter()
    prior = np.bincount(ytr, minlength=len(names)).astype(np.float64) / ytr.shape[0]
    proba = np.tile(prior, (xte.shape[0], 1))
    return _result("majority", proba, yte, names, t0,
                   {"majority_class": names[int(prior.argmax())], "prior": prior.tolist()})


LOGISTIC_C = 0.01  # L2 strength of the logistic baseline: fixed, so no search costs fit time
LOGISTIC_MAX_ITER = 300
LOGISTIC_FEATURES = ("flat", "summary")


def summary_features(x: np.ndarray) -> np.ndarray:
    """(N, T, F) windows -> (N, 5*F): mean, std, min, max and last bar of each feature."""
    return np.concatenate([x.mean(axis=1), x.std(axis=1), x.min(axis=1), x.max(axis=1), x[:, -1, :]],
                          axis=1)


def logistic_baseline(
    X_train: object,
    y_train: object,
    X_test: object,
    y_test: object,
    classes: Sequence[object],
    *,
    class_weight: str | Mapping[int, float] | None = None,
    C: float = LOGISTIC_C,
    max_iter: int = LOGISTIC_MAX_ITER,
    tol: float = 1e-3,
    seed: int = 0,
    lags: int | None = None,
    features: str = "flat",
) -> BaselineResult:
    """``StandardScaler`` + L2 ``LogisticRegression`` on the last ``lags`` bars flattened (N, lags*F).

    ``features="summary"`` reads per-window summaries instead (``summary_features``); the old,
    slow path is ``C=1.0, max_iter=5000, tol=1e-4``.
    """
    if features not in LOGISTIC_FEATURES:
        raise ValueError(f"unknown logistic features {features!r}; choose from {list(LOGISTIC_FEATURES)}")
    xtr, ytr, xte, yte, names = _check_inputs(X_train, y_train, X_test, y_test, classes)
    t0 = time.perf_counter()
    if np.unique(ytr).size < 2:
        return _single_class(ytr, xte, yte, names, t0, "logistic")
    model = make_pipeline(
        StandardScaler(),
        LogisticRegression(C=C, class_weight=class_weight, max_iter=max_iter, tol=tol,
                           random_state=seed),
    )
    featurize = summary_features if features == "summary" else functools.partial(lag_features, lags=lags)
    proba = _fit_predict(model, xtr, ytr, xte, featurize, len(names))
    n_iter = int(np.max(model[-1].n_iter_))
    return _result("logistic", proba, yte, names, t0,
                   {"C": C, "class_weight": class_weight, "max_iter": max_iter, "tol": tol,
                    "n_iter": n_iter, "lags": lags, "features": features})


def _fit_predict(model: Any, xtr: np.ndarray, ytr: np.ndarray, xte: np.ndarray,
                 featurize: Callable[[np.ndarray], np.ndarray], n_classes: int) -> np.ndarray:
    """Fit a scikit-learn-style classifier on ``featurize``d windows; (N, C) test probabilities."""
    model.fit(featurize(xtr), ytr)
    part = np.asarray(model.predict_proba(featurize(xte)), dtype=np.float64)
    return _full_proba(part, np.asarray(model.classes_), n_classes)


def lag_features(x: np.ndarray, lags: int | None) -> np.ndarray:
    """(N, T, F) windows -> (N, lags*F): the last ``lags`` bars flattened (None: all T bars)."""
    if lags is None:
        return x.reshape(x.shape[0], -1)
    if not 1 <= lags <= x.shape[1]:
        raise ValueError(f"lags must be between 1 and the window length {x.shape[1]}, got {lags}")
    return np.ascontiguousarray(x[:, -lags:, :]).reshape(x.shape[0], -1)


def lightgbm_baseline(
    X_train: object,
    y_train: object,
    X_test: object,
    y_test: object,
    classes: Sequence[object],
    *,
    class_weight: str | Mapping[int, float] | None = None,
    n_estimators: int = LIGHTGBM_TREES,
    seed: int = 0,
    lags: int | None = None,
) -> BaselineResult:
    """``LGBMClassifier`` on the same features as ``logistic_baseline`` (the last ``lags`` bars)."""
    xtr, ytr, xte, yte, names = _check_inputs(X_train, y_train, X_test, y_test, classes)
    from lightgbm import LGBMClassifier

    t0 = time.perf_counter()
    if np.unique(ytr).size < 2:
        return _single_class(ytr, xte, yte, names, t0, "lightgbm")
    params: dict[str, Any] = {"n_estimators": n_estimators, "learning_rate": 0.05, "num_leaves": 15,
                              "min_child_samples": 20, "class_weight": class_weight}
    model = LGBMClassifier(**params, random_state=seed, n_jobs=1, deterministic=True,
                           force_row_wise=True, verbose=-1)
    proba = _fit_predict(model, xtr, ytr, xte, functools.partial(lag_features, lags=lags), len(names))
    return _result("lightgbm", proba, yte, names, t0, {**params, "lags": lags})


def _check_returns(r: object, name: str, n: int, x_name: str) -> np.ndarray:
    arr = np.asarray(r)
    if arr.dtype.kind != "f" or arr.ndim != 1:
        raise TypeError(f"{name} must be a 1-D float array of raw returns, got dtype {arr.dtype} "
                        f"shape {arr.shape}")
    if arr.shape[0] != n:
        raise ValueError(f"{name} has {arr.shape[0]} returns but {x_name} has {n} windows")
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{name} contains NaN or inf at row {int(np.argmin(np.isfinite(arr)))}")
    return arr.astype(np.float64)


def persistence_baseline(
    X_train: object,
    y_train: object,
    X_test: object,
    y_test: object,
    classes: Sequence[object],
    *,
    last_return_train: object,
    last_return_test: object,
    dead_zone: float = 0.0,
) -> BaselineResult:
    """The last raw return's own label: binary (down, up) "up" when > 0; ternary (down, flat, up)
    "flat" when ``|r| < dead_zone`` (log-return units, the label's dead zone), else its sign.
    The predicted class's probability is its train hit rate (module doc), the rest shared."""
    xtr, ytr, xte, yte, names = _check_inputs(X_train, y_train, X_test, y_test, classes)
    if len(names) not in (2, 3):
        raise ValueError(f"persistence is a direction rule (down, up) or (down, flat, up); "
                         f"got classes {names}")
    rtr = _check_returns(last_return_train, "last_return_train", xtr.shape[0], "X_train")
    rte = _check_returns(last_return_test, "last_return_test", xte.shape[0], "X_test")
    t0 = time.perf_counter()

    def rule(r: np.ndarray) -> np.ndarray:  # (N,) class index the last return would be labelled
        if len(names) == 2:
            return (r > 0).astype(np.int64)
        return np.where(np.abs(r) < dead_zone, 1, np.where(r > 0, 2, 0)).astype(np.int64)

    k = len(names)
    hits = int((rule(rtr) == ytr).sum())
    hit_rate = (hits + 1) / (ytr.shape[0] + 2)
    p_right = max(hit_rate, PERSISTENCE_FLOOR if k == 2 else 1.0 / k + 1e-6)
    pred = rule(rte)
    proba = np.full((xte.shape[0], k), (1.0 - p_right) / (k - 1))
    proba[np.arange(xte.shape[0]), pred] = p_right
    return _result("persistence", proba, yte, names, t0,
                   {"train_hit_rate": hit_rate, "p_predicted": p_right, "dead_zone": dead_zone})


def last_bar_return(bars: pl.DataFrame, meta: pl.DataFrame) -> np.ndarray:
    """(N,) raw log return of each window's last bar, ``log(p_e / p_(e-1))`` within its symbol.

    ``meta`` holds one row per window with ``symbol`` and ``end_ts`` (``PreparedData.meta[split]``);
    ``p`` is ``adj_close`` where the bars have it, else ``close`` (as the direction label).
    """
    missing = [c for c in ("symbol", "end_ts") if c not in meta.columns]
    if missing:
        raise ValueError(f"meta lacks column(s) {missing}; it has {meta.columns}")
    price = "adj_close" if "adj_close" in bars.columns else "close"
    last = bars.select(
        "symbol", "ts", r=(pl.col(price) / pl.col(price).shift(1).over("symbol")).log()
    )
    out = meta.select("symbol", "end_ts").join(
        last, left_on=["symbol", "end_ts"], right_on=["symbol", "ts"], how="left", maintain_order="left"
    )["r"]
    if out.null_count():
        bad = int(out.is_null().arg_max() or 0)
        raise ValueError(f"window {bad} ({meta['symbol'][bad]} ending {meta['end_ts'][bad]}) has no "
                         "previous bar in `bars`: its last return is undefined")
    return out.to_numpy().astype(np.float64)


def minirocket_baseline(
    X_train: object,
    y_train: object,
    X_test: object,
    y_test: object,
    classes: Sequence[object],
    *,
    n_kernels: int = MINIROCKET_KERNELS,
    seed: int = 0,
    n_jobs: int = 1,
) -> BaselineResult:
    """aeon MiniRocket + ``RidgeClassifierCV``; probabilities = softmax(decision), uncalibrated."""
    xtr, ytr, xte, yte, names = _check_inputs(X_train, y_train, X_test, y_test, classes)
    if xtr.shape[1] < MINIROCKET_MIN_LENGTH:
        raise ValueError(f"MiniRocket needs windows of at least {MINIROCKET_MIN_LENGTH} steps, "
                         f"got T={xtr.shape[1]}")
    from aeon.transformations.collection.convolution_based import MiniRocket

    t0 = time.perf_counter()
    if np.unique(ytr).size < 2:
        return _single_class(ytr, xte, yte, names, t0, "minirocket")
    # ours (N, T, F) -> aeon (N, channels=F, T); contiguous float32 as MiniRocket computes in float32
    a_tr = np.ascontiguousarray(xtr.transpose(0, 2, 1), dtype=np.float32)
    a_te = np.ascontiguousarray(xte.transpose(0, 2, 1), dtype=np.float32)
    rocket = MiniRocket(n_kernels=n_kernels, random_state=seed, n_jobs=n_jobs)
    f_tr = rocket.fit_transform(a_tr)
    f_te = rocket.transform(a_te)
    head = make_pipeline(StandardScaler(with_mean=False),
                         RidgeClassifierCV(alphas=np.logspace(-3, 3, 10)))
    head.fit(f_tr, ytr)
    dec = np.asarray(head.decision_function(f_te), dtype=np.float64)
    if dec.ndim == 1:  # binary: score d for classes_[1], -d for classes_[0]
        dec = np.column_stack([-dec, dec])
    proba = _full_proba(softmax(dec, axis=1), head.classes_, len(names))
    ridge = head[-1]
    return _result("minirocket", proba, yte, names, t0,
                   {"n_kernels": n_kernels, "n_features": int(f_tr.shape[1]),
                    "alpha": float(ridge.alpha_), "calibrated": False})


def _single_class(ytr: np.ndarray, xte: np.ndarray, yte: np.ndarray, names: list[str], t0: float,
                  name: str) -> BaselineResult:
    """A classifier cannot be fitted on one class: it predicts that class with probability 1."""
    proba = np.zeros((xte.shape[0], len(names)))
    proba[:, int(ytr[0])] = 1.0
    return _result(name, proba, yte, names, t0, {"degenerate": "y_train has a single class"})




def run_baselines(
    X_train: object,
    y_train: object,
    X_test: object,
    y_test: object,
    classes: Sequence[object],
    which: Iterable[str] = BASELINES,
    seed: int = 0,
    *,
    class_weight: str | Mapping[int, float] | None = None,
    n_kernels: int = MINIROCKET_KERNELS,
    lags: int | None = None,
    last_return_train: object = None,
    last_return_test: object = None,
    dead_zone: float = 0.0,
    on_start: Callable[[str], None] | None = None,
) -> list[BaselineResult]:
    """Fit each baseline in ``which`` on the train split and score it on the test split.

    ``persistence`` needs ``last_return_train`` / ``last_return_test`` (raw returns, see the module
    doc); ``lags`` selects the features of ``logistic`` and ``lightgbm`` alike; ``on_start(name)``
    is called as each baseline begins (a progress bar names the one fitting).
    """
    which = tuple(which)
    unknown = [w for w in which if w not in KNOWN_BASELINES]
    if unknown:
        raise ValueError(f"unknown baseline(s) {unknown}; choose from {list(KNOWN_BASELINES)}")
    if "persistence" in which and (last_return_train is None or last_return_test is None):
        raise ValueError("the persistence baseline needs last_return_train and last_return_test "
                         "(the raw last-bar return of every window; see last_bar_return)")
    _check_inputs(X_train, y_train, X_test, y_test, classes)
    out: list[BaselineResult] = []
    for w in which:
        if on_start is not None:
            on_start(w)
        if w == "majority":
            out.append(majority_baseline(X_train, y_train, X_test, y_test, classes))
        elif w == "persistence":
            out.append(persistence_baseline(X_train, y_train, X_test, y_test, classes,
                                            last_return_train=last_return_train,
                                            last_return_test=last_return_test,
                                            dead_zone=dead_zone))
        elif w == "logistic":
            out.append(logistic_baseline(X_train, y_train, X_test, y_test, classes,
                                         class_weight=class_weight, seed=seed, lags=lags))
        elif w == "lightgbm":
            out.append(lightgbm_baseline(X_train, y_train, X_test, y_test, classes,
                                         class_weight=class_weight, seed=seed, lags=lags))
        else:
            out.append(minirocket_baseline(X_train, y_train, X_test, y_test, classes,
                                           n_kernels=n_kernels, seed=seed))
    return out


def baseline_table(
    results: Sequence[BaselineResult],
    model_metrics: Mapping[str, Any] | None = None,
    model_name: str = "model",
) -> pl.DataFrame:
    """One row per model (the model first when given, then the baselines).

    Columns: ``model``, ``kind`` ("model" / "baseline"), the metrics in ``TABLE_METRICS``
    (``roc_auc`` null where undefined) and ``fit_seconds`` (null for the model).
    """
    rows: list[dict[str, Any]] = []

    def row(name: str, kind: str, m: Mapping[str, Any], seconds: float | None) -> dict[str, Any]:
        r: dict[str, Any] = {"model": name, "kind": kind}
        for k in TABLE_METRICS:
            v = m.get(k)
            r[k] = None if v is None else float(v)
        r["fit_seconds"] = seconds
        return r

    if model_metrics is not None:
        rows.append(row(model_name, "model", model_metrics, None))
    for res in results:
        rows.append(row(res.name, "baseline", res.metrics, float(res.fit_seconds)))
    schema = {"model": pl.String, "kind": pl.String, **dict.fromkeys(TABLE_METRICS, pl.Float64),
              "fit_seconds": pl.Float64}
    return pl.DataFrame(rows, schema=schema, orient="row") if rows else pl.DataFrame(schema=schema)


# ------------------------------------------------------------------ stored probabilities


def save_baseline_probabilities(path: Path, results: Sequence[BaselineResult], key: Mapping[str, Any]
                                ) -> None:
    """``path`` (parquet: baseline, row, proba_0..C-1) and ``path.json`` (the ``key`` naming the
    data and settings that produced them, each baseline's params and fit time): what a later
    ``moola evaluate`` of the same rows reuses instead of fitting again. No model is pickled."""
    from moola._io import atomic_write, atomic_write_json

    frames = [pl.DataFrame({"baseline": [r.name] * len(r.proba_test),
                            "row": np.arange(len(r.proba_test), dtype=np.int64),
                            **{f"proba_{j}": r.proba_test[:, j] for j in range(r.proba_test.shape[1])}})
              for r in results]
    if frames:
        atomic_write(path, pl.concat(frames).write_parquet)
    atomic_write_json(path.with_suffix(".json"), {
        "key": dict(key), "baselines": [{"name": r.name, "fit_seconds": r.fit_seconds, "params": r.params}
                                        for r in results]})


def load_baseline_probabilities(path: Path, key: Mapping[str, Any], y: object, classes: Sequence[object]
                                ) -> tuple[list[BaselineResult] | None, str]:
    """The stored baselines when ``key`` (data fingerprints and settings) matches what produced
    them, scored again on ``y``; otherwise ``None`` and the reason (a file absent, a key that
    differs, named)."""
    meta_path = path.with_suffix(".json")
    if not meta_path.is_file():
        return None, f"no stored baselines ({meta_path.name})"
    try:
        meta = json.loads(meta_path.read_text())
        stored = meta["key"]
        entries = meta["baselines"]
    except (ValueError, KeyError, TypeError) as err:
        return None, f"{meta_path} is unreadable ({type(err).__name__}: {err})"
    differs = sorted(k for k in set(stored) | set(key) if stored.get(k) != key.get(k))
    if differs:
        return None, "the stored baselines were fitted on other data or settings (" + ", ".join(
            f"{k}: {stored.get(k)!r} then, {key.get(k)!r} now" for k in differs) + ")"
    if entries and not path.is_file():
        return None, f"{path.name} is missing beside {meta_path.name}"
    yy = check_labels(y, "y", len(classes))
    frame = pl.read_parquet(path) if entries else pl.DataFrame()
    out = []
    for e in entries:
        part = frame.filter(pl.col("baseline") == e["name"]).sort("row")
        proba = part.select([f"proba_{j}" for j in range(len(classes))]).to_numpy().astype(np.float64)
        if proba.shape[0] != yy.shape[0]:
            return None, f"{path}: {e['name']} holds {proba.shape[0]} rows for {yy.shape[0]} labels"
        m = classification_metrics(yy, proba, _check_classes(classes))
        out.append(BaselineResult(e["name"], proba, m, float(e["fit_seconds"]), dict(e["params"])))
    return out, "reused"
