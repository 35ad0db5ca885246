"""Classification and regression metrics, computed with scikit-learn wherever it has the metric.

Conventions
-----------
* ``y_true`` is an integer array (N,) of class indices into ``classes``; ``proba`` is a float
  array (N, C) whose rows sum to 1 within 1e-4 (only the log loss renormalises rows exactly;
  the other metrics use the values as given, so ties and bin edges are not perturbed).
  Wrong shapes, dtypes or row sums raise ``ValueError`` / ``TypeError`` naming the argument.
* The predicted class is ``argmax(proba)`` (first index on ties).
* Per-class precision / recall / F1 use ``zero_division=0``; macro-F1 averages over ALL classes
  in ``classes`` (a never-predicted class contributes an F1 of 0).
* ROC-AUC: binary problems use the positive-class (column 1) probability; multiclass problems use
  one-vs-rest macro averaging. When a class is absent from ``y_true`` the AUC is undefined and
  ``roc_auc`` is ``None`` with the reason in ``roc_auc_reason``.
* Brier score: the mean over samples AND classes of the squared error between ``proba`` and the
  one-hot label, ``mean_{i,c} (p_ic - 1[y_i = c])^2``. For two classes this equals the usual
  binary Brier score ``mean_i (p_i1 - y_i)^2`` (scikit-learn's ``brier_score_loss``); for C
  classes it is scikit-learn's multiclass Brier score (a sum over classes) divided by C.
* ECE: 15 equal-width bins over (0, 1], right-closed, on the max-probability confidence (see
  :mod:`moola.evaluation.calibration`).
* ``class_collapse``: names of classes PRESENT in ``y_true`` whose recall is below 0.3 (the model
  has (nearly) stopped predicting them).
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np
from scipy.stats import pearsonr, spearmanr
from sklearn.metrics import (
    accuracy_score,
    balanced_accuracy_score,
    confusion_matrix,
    f1_score,
    log_loss,
    mean_absolute_error,
    mean_squared_error,
    precision_recall_fscore_support,
    roc_auc_score,
)

from moola.evaluation.calibration import check_labels, check_proba, expected_calibration_error

__all__ = [
    "COLLAPSE_RECALL",
    "ECE_BINS",
    "LOWER_IS_BETTER",
    "binary_metrics",
    "brier_score",
    "classification_metrics",
    "regression_metrics",
]

COLLAPSE_RECALL = 0.3
ECE_BINS = 15
LOWER_IS_BETTER = frozenset({"log_loss", "brier", "ece", "test_loss"})  # every other score: higher


def _check_classes(classes: Sequence[object], n_cols: int | None = None) -> list[str]:
    if isinstance(classes, str) or not isinstance(classes, Sequence | np.ndarray):
        raise TypeError(f"classes must be a sequence of class names, got {type(classes).__name__}")
    names = [str(c) for c in classes]
    if len(names) < 2:
        raise ValueError(f"classes needs at least 2 names, got {names}")
    if len(set(names)) != len(names):
        raise ValueError(f"classes has duplicate names: {names}")
    if n_cols is not None and n_cols != len(names):
        raise ValueError(f"proba has {n_cols} columns but classes has {len(names)} names")
    return names


def brier_score(y: np.ndarray, p: np.ndarray) -> float:
    """Mean over samples and classes of ``(p_ic - onehot_ic)^2`` (see module docstring)."""
    onehot = np.zeros_like(p)
    onehot[np.arange(len(y)), y] = 1.0
    return float(np.mean((p - onehot) ** 2))


def _roc_auc(y: np.ndarray, p: np.ndarray, names: list[str]) -> tuple[float | None, str | None]:
    present = np.bincount(y, minlength=p.shape[1]) > 0
    if not present.all():
        missing = [names[i] for i in np.flatnonzero(~present)]
        return None, f"ROC-AUC undefined: class(es) {missing} absent from y_true"
    if p.shape[1] == 2:
        return float(roc_auc_score(y, p[:, 1])), None
    # one-vs-rest macro: the mean of the per-class binary AUCs (what scikit-learn's
    # multi_class="ovr", average="macro" computes), done per class on the scores as given so
    # that neither its row-sum check nor a renormalisation (which can break ties) interferes
    per_class = [roc_auc_score((y == c).astype(int), p[:, c]) for c in range(p.shape[1])]
    return float(np.mean(per_class)), None


def classification_metrics(y_true: object, proba: object, classes: Sequence[object]) -> dict[str, Any]:
    """All classification metrics of one prediction set as a JSON-serialisable dict.

    Keys: ``n_samples``, ``classes``, ``accuracy``, ``balanced_accuracy``, ``macro_f1``,
    ``per_class`` ({name: {precision, recall, f1, support}}), ``confusion_matrix`` (rows = true,
    columns = predicted, nested lists), ``roc_auc`` (float or None), ``roc_auc_reason`` (None or
    why the AUC is undefined), ``log_loss``, ``brier``, ``ece``, ``class_collapse`` (list of names),
    ``pred_share`` ({name: share of predictions}) and ``true_share`` ({name: share of labels}).
    """
    y_raw = np.asarray(y_true)
    # scores as given (argmax, AUC, Brier, ECE); log loss gets rows renormalised to sum to 1
    p = check_proba(proba, "proba", renormalise=False)
    names = _check_classes(classes, p.shape[1])
    y = check_labels(y_raw, "y_true", n_classes=len(names))
    if y.shape[0] != p.shape[0]:
        raise ValueError(f"proba has {p.shape[0]} rows but y_true has {y.shape[0]} samples")
    n_cls = len(names)
    labels = np.arange(n_cls)
    pred = p.argmax(axis=1)

    with warnings.catch_warnings():
        # balanced accuracy warns when a predicted class is absent from y_true; we report anyway
        warnings.simplefilter("ignore", UserWarning)
        bal = float(balanced_accuracy_score(y, pred))
    prec, rec, f1, support = precision_recall_fscore_support(
        y, pred, labels=labels, zero_division=0
    )
    macro_f1 = float(f1_score(y, pred, labels=labels, average="macro", zero_division=0))
    auc, auc_reason = _roc_auc(y, p, names)
    present = support > 0
    collapse = [names[i] for i in range(n_cls) if present[i] and rec[i] < COLLAPSE_RECALL]

    return {
        "n_samples": int(y.shape[0]),
        "classes": names,
        "accuracy": float(accuracy_score(y, pred)),
        "balanced_accuracy": bal,
        "macro_f1": macro_f1,
        "per_class": {
            names[i]: {
                "precision": float(prec[i]),
                "recall": float(rec[i]),
                "f1": float(f1[i]),
                "support": int(support[i]),
            }
            for i in range(n_cls)
        },
        "confusion_matrix": confusion_matrix(y, pred, labels=labels).astype(int).tolist(),
        "roc_auc": auc,
        "roc_auc_reason": auc_reason,
        "log_loss": float(log_loss(y, p / p.sum(axis=1, keepdims=True), labels=labels)),
        "brier": brier_score(y, p),
        "ece": float(expected_calibration_error(y, p, n_bins=ECE_BINS)),
        "class_collapse": collapse,
        "pred_share": {names[i]: float(np.mean(pred == i)) for i in range(n_cls)},
        "true_share": {names[i]: float(np.mean(y == i)) for i in range(n_cls)},
    }


def binary_metrics(
    y_true: object, p_pos: object, classes: Sequence[object] = ("down", "up")
) -> dict[str, Any]:
    """:func:`classification_metrics` for a direction model giving P(class 1) as an (N,) array."""
    arr = np.asarray(p_pos)
    if arr.dtype == object or arr.dtype.kind != "f":
        raise TypeError(f"p_pos must be a float array of probabilities, got dtype {arr.dtype}")
    if arr.ndim != 1:
        raise ValueError(f"p_pos must be 1-D (N,), got shape {arr.shape}")
    if len(classes) != 2:
        raise ValueError(f"binary_metrics needs exactly 2 classes, got {list(classes)}")
    a = arr.astype(np.float64)
    if np.any(~np.isfinite(a)) or a.min(initial=0.0) < 0 or a.max(initial=0.0) > 1:
        raise ValueError("p_pos must be finite probabilities in [0, 1]")
    return classification_metrics(y_true, np.column_stack([1.0 - a, a]), classes)


def _corr(kind: str, a: np.ndarray, b: np.ndarray) -> float | None:
    if a.size < 2 or np.ptp(a) == 0 or np.ptp(b) == 0:
        return None  # undefined for constant inputs
    r = pearsonr(a, b)[0] if kind == "pearson" else spearmanr(a, b)[0]
    return None if not np.isfinite(r) else float(r)


def _check_reg(arr: object, name: str) -> np.ndarray:
    a = np.asarray(arr)
    if a.dtype == object or a.dtype.kind not in "fiu":
        raise TypeError(f"{name} must be a numeric array, got dtype {a.dtype}")
    if a.ndim == 1:
        a = a[:, None]
    if a.ndim != 2:
        raise ValueError(f"{name} must be (N,) or (N, H), got shape {a.shape}")
    a = a.astype(np.float64)
    if not np.all(np.isfinite(a)):
        raise ValueError(f"{name} contains NaN or inf")
    return a


def regression_metrics(
    y: object,
    pred: object,
    horizons: Sequence[object] | None = None,
    groups: object | None = None,
) -> dict[str, Any]:
    """MSE, MAE, IC (Pearson) and RankIC (Spearman) per horizon, plus their means over horizons.

    ``y`` and ``pred`` are (N,) or (N, H). With ``groups`` (N,) (e.g. timestamps of a
    cross-sectional panel) IC / RankIC are computed within each group (groups with fewer than 2
    samples or constant values are skipped) and averaged, and ``icir`` / ``rank_icir`` (mean / std
    over groups) are reported; otherwise the correlations are pooled over all N samples.
    """
    yy = _check_reg(y, "y")
    pp = _check_reg(pred, "pred")
    if yy.shape != pp.shape:
        raise ValueError(f"pred has shape {pp.shape} but y has shape {yy.shape}")
    n_h = yy.shape[1]
    names = [str(h) for h in horizons] if horizons is not None else [str(h) for h in range(n_h)]
    if len(names) != n_h:
        raise ValueError(f"horizons has {len(names)} names but y has {n_h} columns")
    g = None
    if groups is not None:
        g = np.asarray(groups)
        if g.shape != (yy.shape[0],):
            raise ValueError(f"groups must have shape ({yy.shape[0]},), got {g.shape}")

    per: list[dict[str, Any]] = []
    for j, name in enumerate(names):
        a, b = yy[:, j], pp[:, j]
        row: dict[str, Any] = {
            "horizon": name,
            "mse": float(mean_squared_error(a, b)),
            "mae": float(mean_absolute_error(a, b)),
        }
        if g is None:
            row["ic"] = _corr("pearson", b, a)
            row["rank_ic"] = _corr("spearman", b, a)
        else:
            for key, kind in (("ic", "pearson"), ("rank_ic", "spearman")):
                vals = []
                for gv in np.unique(g):
                    m = g == gv
                    r = _corr(kind, b[m], a[m])
                    if r is not None:
                        vals.append(r)
                v = np.asarray(vals)
                row[key] = float(v.mean()) if v.size else None
                sd = float(v.std(ddof=1)) if v.size > 1 else 0.0
                row[f"{key}ir"] = float(v.mean() / sd) if sd > 0 else None
                row[f"{key}_groups"] = int(v.size)
        per.append(row)

    def _mean(key: str) -> float | None:
        vals = [r[key] for r in per if r.get(key) is not None]
        return float(np.mean(vals)) if vals else None

    out: dict[str, Any] = {"n_samples": int(yy.shape[0]), "per_horizon": per}
    for key in ("mse", "mae", "ic", "rank_ic"):
        out[key] = _mean(key)
    return out
