"""Calibration: expected calibration error, reliability curves and temperature scaling.

Bin convention (used by :func:`expected_calibration_error`, :func:`reliability_curve` and the
reliability plot): ``n_bins`` equal-width bins over ``(0, 1]`` that are closed on the RIGHT,
``bin k = (k / n_bins, (k + 1) / n_bins]`` with the edges computed as ``k / n_bins`` (the correctly
rounded float, so a confidence written as ``0.6`` with ``n_bins = 5`` lies exactly on the edge
``3 / 5`` and falls in the bin BELOW it, ``(0.4, 0.6]``). A confidence of exactly 0 (only possible
for degenerate inputs) is put in the first bin. The confidence of a sample is its largest class
probability and it counts as correct when that class (``argmax``, first index on ties) is the label.

``ECE = sum_k (n_k / N) * |acc_k - conf_k|`` over the non-empty bins.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.optimize import minimize
from scipy.special import log_softmax, softmax

__all__ = [
    "ReliabilityCurve",
    "TemperatureScaler",
    "check_labels",
    "check_proba",
    "expected_calibration_error",
    "reliability_curve",
]

ROW_SUM_TOL = 1e-4


# ------------------------------------------------------------------------- validation


def check_labels(y: object, name: str = "y_true", n_classes: int | None = None) -> np.ndarray:
    """An integer label vector (N,) with values in ``[0, n_classes)``; errors name ``name``."""
    arr = np.asarray(y)
    if arr.dtype == object or arr.dtype.kind not in "iu":
        raise TypeError(f"{name} must be an integer array of class indices, got dtype {arr.dtype}")
    if arr.ndim != 1:
        raise ValueError(f"{name} must be 1-D (N,), got shape {arr.shape}")
    if arr.size == 0:
        raise ValueError(f"{name} is empty")
    if n_classes is not None and (arr.min() < 0 or arr.max() >= n_classes):
        raise ValueError(
            f"{name} has labels outside [0, {n_classes}): min {arr.min()}, max {arr.max()}"
        )
    return arr.astype(np.int64, copy=False)


def check_proba(
    proba: object,
    name: str = "proba",
    n_rows: int | None = None,
    n_classes: int | None = None,
    renormalise: bool = True,
) -> np.ndarray:
    """A float (N, C) probability matrix with rows summing to 1 (within 1e-4).

    Returns a float64 copy, by default renormalised so each row sums to 1 (downstream
    scikit-learn checks are stricter than 1e-4 and trip on float32 round-off). The ECE uses the
    values as given (``renormalise=False``) so confidences on a bin edge stay on it.
    """
    arr = np.asarray(proba)
    if arr.dtype == object or arr.dtype.kind != "f":
        raise TypeError(f"{name} must be a float array of probabilities, got dtype {arr.dtype}")
    if arr.ndim != 2:
        raise ValueError(f"{name} must be 2-D (N, C), got shape {arr.shape}")
    if n_rows is not None and arr.shape[0] != n_rows:
        raise ValueError(f"{name} has {arr.shape[0]} rows but y_true has {n_rows} samples")
    if n_classes is not None and arr.shape[1] != n_classes:
        raise ValueError(f"{name} has {arr.shape[1]} columns but there are {n_classes} classes")
    if arr.shape[1] < 2:
        raise ValueError(f"{name} needs at least 2 class columns, got shape {arr.shape}")
    out = arr.astype(np.float64)
    if not np.all(np.isfinite(out)):
        raise ValueError(f"{name} contains NaN or inf")
    if out.min() < 0.0 or out.max() > 1.0 + ROW_SUM_TOL:
        raise ValueError(f"{name} has values outside [0, 1]: min {out.min()}, max {out.max()}")
    sums = out.sum(axis=1)
    bad = np.abs(sums - 1.0) > ROW_SUM_TOL
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise ValueError(
            f"{name} rows must sum to 1 (tolerance {ROW_SUM_TOL}); {int(bad.sum())} rows do not, "
            f"e.g. row {i} sums to {sums[i]:.6g}"
        )
    return out / sums[:, None] if renormalise else out


def _as_2d_proba(proba: object, name: str = "proba") -> np.ndarray:
    """Accept (N,) positive-class probabilities as the 2-class matrix ``[1 - p, p]``."""
    arr = np.asarray(proba)
    if arr.ndim == 1 and arr.dtype != object and arr.dtype.kind == "f":
        return np.column_stack([1.0 - arr.astype(np.float64), arr.astype(np.float64)])
    return arr


# ------------------------------------------------------------------- ECE / reliability


@dataclass(frozen=True)
class ReliabilityCurve:
    """Per-bin statistics; empty bins have ``count == 0`` and NaN confidence / accuracy."""

    bin_lower: np.ndarray
    bin_upper: np.ndarray
    confidence: np.ndarray
    accuracy: np.ndarray
    count: np.ndarray

    @property
    def n_samples(self) -> int:
        return int(self.count.sum())

    @property
    def ece(self) -> float:
        m = self.count > 0
        w = self.count[m] / self.count.sum()
        return float(np.sum(w * np.abs(self.accuracy[m] - self.confidence[m])))

    def as_records(self) -> list[dict[str, float | int | None]]:
        out: list[dict[str, float | int | None]] = []
        for lo, hi, c, a, n in zip(
            self.bin_lower, self.bin_upper, self.confidence, self.accuracy, self.count, strict=True
        ):
            out.append(
                {
                    "bin_lower": float(lo),
                    "bin_upper": float(hi),
                    "confidence": None if n == 0 else float(c),
                    "accuracy": None if n == 0 else float(a),
                    "count": int(n),
                }
            )
        return out


def bin_edges(n_bins: int) -> np.ndarray:
    """``k / n_bins`` for ``k = 0..n_bins`` (correctly rounded, see module docstring)."""
    if not isinstance(n_bins, int | np.integer) or n_bins < 1:
        raise ValueError(f"n_bins must be a positive integer, got {n_bins!r}")
    return np.arange(n_bins + 1, dtype=np.float64) / n_bins


def bin_index(confidence: np.ndarray, n_bins: int) -> np.ndarray:
    """Bin of each confidence under the right-closed ``(lo, hi]`` convention."""
    edges = bin_edges(n_bins)
    # side="left": edges[i-1] < c <= edges[i]  ->  bin i-1 ; c == 0 -> clipped into bin 0
    idx = np.searchsorted(edges, confidence, side="left") - 1
    return np.clip(idx, 0, n_bins - 1)


def reliability_curve(y_true: object, proba: object, n_bins: int = 15) -> ReliabilityCurve:
    """Per-bin mean confidence, accuracy and count of the top-class prediction.

    ``proba`` is (N, C); a 1-D float array is read as the positive-class probability of a binary
    problem. Bins are equal width over (0, 1], right-closed (see module docstring).
    """
    p = check_proba(_as_2d_proba(proba), renormalise=False)
    y = check_labels(y_true, "y_true", n_classes=p.shape[1])
    if p.shape[0] != y.shape[0]:
        raise ValueError(f"proba has {p.shape[0]} rows but y_true has {y.shape[0]} samples")
    conf = p.max(axis=1)
    correct = (p.argmax(axis=1) == y).astype(np.float64)
    idx = bin_index(conf, n_bins)
    count = np.bincount(idx, minlength=n_bins).astype(np.int64)
    conf_sum = np.bincount(idx, weights=conf, minlength=n_bins)
    acc_sum = np.bincount(idx, weights=correct, minlength=n_bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_conf = np.where(count > 0, conf_sum / np.maximum(count, 1), np.nan)
        mean_acc = np.where(count > 0, acc_sum / np.maximum(count, 1), np.nan)
    edges = bin_edges(n_bins)
    return ReliabilityCurve(edges[:-1], edges[1:], mean_conf, mean_acc, count)


def expected_calibration_error(y_true: object, proba: object, n_bins: int = 15) -> float:
    """ECE of the top-class confidence: ``sum_k (n_k / N) |acc_k - conf_k|``.

    ``n_bins`` equal-width bins over (0, 1], right-closed: ``(k/n, (k+1)/n]``.
    """
    return reliability_curve(y_true, proba, n_bins).ece


# ------------------------------------------------------------------ temperature scaling


def _check_logits(logits: object, name: str) -> tuple[np.ndarray, bool]:
    """(N, C) float64 logits; (N,) binary logits become ``[0, z]`` (softmax = sigmoid(z))."""
    arr = np.asarray(logits)
    if arr.dtype == object or arr.dtype.kind != "f":
        raise TypeError(f"{name} must be a float array of logits, got dtype {arr.dtype}")
    binary = arr.ndim == 1
    if binary:
        arr = np.column_stack([np.zeros(arr.shape[0]), arr.astype(np.float64)])
    if arr.ndim != 2 or arr.shape[1] < 2:
        raise ValueError(f"{name} must be (N,) binary logits or (N, C) with C >= 2, got {arr.shape}")
    if arr.shape[0] == 0:
        raise ValueError(f"{name} is empty")
    out = arr.astype(np.float64)
    if not np.all(np.isfinite(out)):
        raise ValueError(f"{name} contains NaN or inf")
    return out, binary


def _nll_and_grad(log_t: float | np.ndarray, z: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    """Mean NLL of softmax(z / T) and its derivative with respect to ``log T``."""
    s = float(np.exp(-np.asarray(log_t, dtype=np.float64).reshape(-1)[0]))  # 1 / T
    lp = log_softmax(z * s, axis=1)
    nll = -float(np.mean(lp[np.arange(len(y)), y]))
    p = np.exp(lp)
    d_ds = float(np.mean(np.sum(p * z, axis=1) - z[np.arange(len(y)), y]))
    return nll, d_ds * (-s)  # ds/dlogT = -s


class TemperatureScaler:
    """Post-hoc temperature scaling (Guo et al., 2017): ``proba = softmax(logits / T)``.

    scikit-learn style: ``__init__`` only stores parameters; :meth:`fit` learns ``temperature_``
    by minimising the mean negative log-likelihood on the logits and labels it is GIVEN (pass the
    validation split, never the test split) with L-BFGS-B over ``log T`` (so ``T > 0``), bounded to
    ``[min_temperature, max_temperature]``. :meth:`transform` never changes the fitted state.

    Binary direction models may pass (N,) logits: they are treated as the 2-class logits
    ``[0, z]`` and :meth:`transform` returns (N, 2) probabilities ``[1 - p, p]``.
    """

    def __init__(
        self,
        init_temperature: float = 1.0,
        min_temperature: float = 1e-2,
        max_temperature: float = 1e2,
        max_iter: int = 200,
    ) -> None:
        self.init_temperature = init_temperature
        self.min_temperature = min_temperature
        self.max_temperature = max_temperature
        self.max_iter = max_iter

    def fit(self, logits_val: object, y_val: object) -> TemperatureScaler:
        if not (0 < self.min_temperature <= self.init_temperature <= self.max_temperature):
            raise ValueError(
                "need 0 < min_temperature <= init_temperature <= max_temperature, got "
                f"{self.min_temperature}, {self.init_temperature}, {self.max_temperature}"
            )
        z, binary = _check_logits(logits_val, "logits_val")
        y = check_labels(y_val, "y_val", n_classes=z.shape[1])
        if y.shape[0] != z.shape[0]:
            raise ValueError(f"logits_val has {z.shape[0]} rows but y_val has {y.shape[0]} labels")
        res = minimize(
            _nll_and_grad,
            x0=np.array([np.log(self.init_temperature)]),
            args=(z, y),
            jac=True,
            method="L-BFGS-B",
            bounds=[(np.log(self.min_temperature), np.log(self.max_temperature))],
            options={"maxiter": self.max_iter},
        )
        self.temperature_ = float(np.exp(res.x[0]))
        self.n_classes_ = int(z.shape[1])
        self.binary_input_ = binary
        self.nll_before_ = _nll_and_grad(0.0, z, y)[0]
        self.nll_after_ = float(res.fun)
        self.n_samples_fit_ = int(z.shape[0])
        self.converged_ = bool(res.success)
        return self

    def _check_fitted(self) -> None:
        if not hasattr(self, "temperature_"):
            raise RuntimeError("TemperatureScaler is not fitted: call fit(logits_val, y_val) first")

    def transform(self, logits: object) -> np.ndarray:
        """Calibrated probabilities (N, C) ``softmax(logits / temperature_)``."""
        self._check_fitted()
        z, _ = _check_logits(logits, "logits")
        if z.shape[1] != self.n_classes_:
            raise ValueError(f"logits have {z.shape[1]} classes, the scaler was fitted on {self.n_classes_}")
        return softmax(z / self.temperature_, axis=1)

    def nll(self, logits: object, y: object, temperature: float | None = None) -> float:
        """Mean NLL of ``softmax(logits / T)`` (T defaults to the fitted one); for evaluation."""
        z, _ = _check_logits(logits, "logits")
        yy = check_labels(y, "y", n_classes=z.shape[1])
        if temperature is None:
            self._check_fitted()
            temperature = self.temperature_
        t = float(temperature)
        if not t > 0:
            raise ValueError(f"temperature must be > 0, got {t}")
        return _nll_and_grad(float(np.log(t)), z, yy)[0]

    def __repr__(self) -> str:
        fitted = f", temperature_={self.temperature_:.4g}" if hasattr(self, "temperature_") else ""
        return f"TemperatureScaler(init_temperature={self.init_temperature}{fitted})"
