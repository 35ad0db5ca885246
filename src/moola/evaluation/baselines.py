"""Baselines computed beside every classification result, on the SAME split as the model.

* ``majority``: predicts the class that is most frequent in ``y_train`` (first index on ties);
  its probabilities are the train class frequencies (the class prior), the same for every row,
  so its log loss / Brier are those of the prior.
* ``logistic``: ``StandardScaler`` + ``LogisticRegression`` (lbfgs, L2, ``C=1``) on the windows
  flattened to (N, T*F).
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

import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
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
    "TABLE_METRICS",
    "BaselineResult",
    "baseline_table",
    "logistic_baseline",
    "majority_baseline",
    "minirocket_baseline",
    "run_baselines",
]

BASELINES = ("majority", "logistic", "minirocket")
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


def logistic_baseline(
    X_train: object,
    y_train: object,
    X_test: object,
    y_test: object,
    classes: Sequence[object],
    *,
    class_weight: str | Mapping[int, float] | None = None,
    C: float = 1.0,
    max_iter: int = 5000,
    seed: int = 0,
) -> BaselineResult:
    """``StandardScaler`` + ``LogisticRegression`` on the flattened windows (N, T*F)."""
    xtr, ytr, xte, yte, names = _check_inputs(X_train, y_train, X_test, y_test, classes)
    t0 = time.perf_counter()
    if np.unique(ytr).size < 2:
        return _single_class(ytr, xte, yte, names, t0, "logistic")
    model = make_pipeline(
        StandardScaler(),
        LogisticRegression(C=C, class_weight=class_weight, max_iter=max_iter, random_state=seed),
    )
    model.fit(xtr.reshape(xtr.shape[0], -1), ytr)
    part = model.predict_proba(xte.reshape(xte.shape[0], -1))
    proba = _full_proba(part, model.classes_, len(names))
    n_iter = int(np.max(model[-1].n_iter_))
    return _result("logistic", proba, yte, names, t0,
                   {"C": C, "class_weight": class_weight, "max_iter": max_iter, "n_iter": n_iter})


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


_RUNNERS = {
    "majority": majority_baseline,
    "logistic": logistic_baseline,
    "minirocket": minirocket_baseline,
}


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
) -> list[BaselineResult]:
    """Fit each baseline in ``which`` on the train split and score it on the test split."""
    which = tuple(which)
    unknown = [w for w in which if w not in _RUNNERS]
    if unknown:
        raise ValueError(f"unknown baseline(s) {unknown}; choose from {list(_RUNNERS)}")
    _check_inputs(X_train, y_train, X_test, y_test, classes)
    out: list[BaselineResult] = []
    for w in which:
        if w == "majority":
            out.append(majority_baseline(X_train, y_train, X_test, y_test, classes))
        elif w == "logistic":
            out.append(logistic_baseline(X_train, y_train, X_test, y_test, classes,
                                         class_weight=class_weight, seed=seed))
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
