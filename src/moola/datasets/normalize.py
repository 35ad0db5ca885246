"""Feature scalers fitted on the training segment only, saved as JSON (never pickle).

Fit on training rows, then transform train, validation and test with the same statistics:
fitting on anything later leaks the future into the scale. Both scalers work on (N, F)
matrices and (n, window, F) window batches (statistics are per feature, the last axis).
Prefer fitting on the base (N, F) rows of the training period: overlapping windows would
count each bar up to ``window`` times.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar, Self

import numpy as np
import polars as pl
from sklearn.base import BaseEstimator
from sklearn.exceptions import NotFittedError

from moola._io import atomic_write_json, read_json

__all__ = ["RobustScaler", "Standardizer", "load_scaler", "scaler_from_dict"]

FORMAT_VERSION = 1
# A scale this small relative to the centre is rounding noise of a constant feature.
_TINY = 10 * np.finfo(np.float64).eps


def _as_numeric(X: Any, what: str) -> tuple[np.ndarray, list[str] | None]:
    """(array, column names or None); TypeError naming the dtype for non-numeric input."""
    names = None
    if isinstance(X, pl.DataFrame):
        names = list(X.columns)
        bad = {c: str(t) for c, t in X.schema.items() if not t.is_numeric()}
        if bad:
            raise TypeError(f"{what}: columns must be numeric, got dtypes {bad}")
        X = X.to_numpy()
    arr = np.asarray(X)
    if arr.dtype == np.bool_ or not (
        np.issubdtype(arr.dtype, np.floating) or np.issubdtype(arr.dtype, np.integer)
    ):
        raise TypeError(f"{what}: X must be a numeric array, got dtype {arr.dtype}")
    if arr.ndim not in (2, 3):
        raise ValueError(f"{what}: X must be (N, F) or (n, window, F), got shape {arr.shape}")
    return arr, names


class _Scaler(BaseEstimator, ABC):
    """Shared fit/transform/serialise logic: ``(x - center) / scale`` per feature."""

    _center_attr: ClassVar[str] = "center_"

    # --- subclass hook ----------------------------------------------------------------
    @abstractmethod
    def _statistics(self, X2: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Per-feature (centre, spread) of the (N, F) training rows, NaN ignored."""

    # --- fitting ----------------------------------------------------------------------
    def fit(self, X: Any, y: Any = None, feature_names: Sequence[str] | None = None) -> Self:
        """Learn per-feature centre and scale from training data, ignoring NaN."""
        arr, names = _as_numeric(X, f"{type(self).__name__}.fit")
        n_features = int(arr.shape[-1])
        X2 = arr.reshape(-1, n_features).astype(np.float64, copy=False)  # (M, F)
        if np.isinf(X2).any():
            cols = np.flatnonzero(np.isinf(X2).any(axis=0)).tolist()
            raise ValueError(f"{type(self).__name__}.fit: X has inf in feature(s) {cols}")
        counts = (~np.isnan(X2)).sum(axis=0)
        if (counts == 0).any():
            cols = np.flatnonzero(counts == 0).tolist()
            raise ValueError(
                f"{type(self).__name__}.fit: feature(s) {cols} have no non-NaN training values"
            )
        center, scale = self._statistics(X2)
        # Zero-variance guard: a constant feature gets scale 1, so it maps to 0, not inf/NaN.
        scale = np.where(scale > _TINY * np.maximum(np.abs(center), 1.0), scale, 1.0)
        if feature_names is not None:
            names = [str(n) for n in feature_names]
        if names is not None and len(names) != n_features:
            raise ValueError(f"{len(names)} feature names for {n_features} features")
        setattr(self, self._center_attr, center.astype(np.float64))
        self.scale_ = scale.astype(np.float64)
        self.n_features_in_ = n_features
        self.n_samples_seen_ = counts.astype(np.int64)
        if names is not None:
            self.feature_names_in_ = np.array(names, dtype=object)
        elif hasattr(self, "feature_names_in_"):
            del self.feature_names_in_
        return self

    def _check_fitted(self) -> None:
        if not hasattr(self, "scale_"):
            raise NotFittedError(
                f"This {type(self).__name__} is not fitted yet: call fit(X_train) first"
            )

    def _check_input(self, X: Any, what: str) -> np.ndarray:
        self._check_fitted()
        arr, names = _as_numeric(X, f"{type(self).__name__}.{what}")
        if arr.shape[-1] != self.n_features_in_:
            raise ValueError(
                f"{type(self).__name__}.{what}: X has {arr.shape[-1]} features, but the "
                f"scaler was fitted with {self.n_features_in_} (expected {self.n_features_in_})"
            )
        fitted = getattr(self, "feature_names_in_", None)
        if names is not None and fitted is not None and list(fitted) != names:
            raise ValueError(
                f"{type(self).__name__}.{what}: feature names differ: expected "
                f"{list(fitted)}, got {names}"
            )
        return arr

    @property
    def center(self) -> np.ndarray:
        """The learned centre (mean or median), whatever the subclass calls it."""
        self._check_fitted()
        return getattr(self, self._center_attr)

    def transform(self, X: Any) -> np.ndarray:
        """Scaled float32 copy of X, (N, F) or (n, window, F); NaN stays NaN."""
        arr = self._check_input(X, "transform")
        if arr.dtype == np.float64:
            return ((arr - self.center) / self.scale_).astype(np.float32)
        out = np.array(arr, dtype=np.float32)  # contiguous copy, also of strided views
        out -= self.center.astype(np.float32)
        out /= self.scale_.astype(np.float32)
        return out

    def inverse_transform(self, X: Any) -> np.ndarray:
        """Undo ``transform`` (float64 arithmetic, float32 result)."""
        arr = self._check_input(X, "inverse_transform")
        return (arr.astype(np.float64) * self.scale_ + self.center).astype(np.float32)

    def fit_transform(self, X: Any, y: Any = None, **fit_params: Any) -> np.ndarray:
        """Fit then transform the same (training) data."""
        return self.fit(X, y, **fit_params).transform(X)

    # --- serialisation ------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """JSON-able state: class, parameters and learned statistics (exact float64)."""
        self._check_fitted()
        names = getattr(self, "feature_names_in_", None)
        return {
            "class": type(self).__name__,
            "format": FORMAT_VERSION,
            "params": {
                k: list(v) if isinstance(v, tuple) else v
                for k, v in self.get_params(deep=False).items()
            },
            "n_features_in_": int(self.n_features_in_),
            self._center_attr: [float(v) for v in self.center],
            "scale_": [float(v) for v in self.scale_],
            "n_samples_seen_": [int(v) for v in self.n_samples_seen_],
            "feature_names_in_": None if names is None else [str(n) for n in names],
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Self:
        """Rebuild a fitted scaler from ``to_dict`` output; refuses another class's state."""
        if d.get("class") != cls.__name__:
            raise ValueError(f"state is for {d.get('class')!r}, not {cls.__name__}")
        if d.get("format") != FORMAT_VERSION:
            raise ValueError(f"unsupported scaler format {d.get('format')!r}")
        obj = cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in d["params"].items()})
        n = int(d["n_features_in_"])
        center = np.asarray(d[cls._center_attr], dtype=np.float64)
        scale = np.asarray(d["scale_"], dtype=np.float64)
        if center.shape != (n,) or scale.shape != (n,):
            raise ValueError(f"state has {center.shape}/{scale.shape} stats for {n} features")
        setattr(obj, cls._center_attr, center)
        obj.scale_ = scale
        obj.n_features_in_ = n
        obj.n_samples_seen_ = np.asarray(d.get("n_samples_seen_", [0] * n), dtype=np.int64)
        if d.get("feature_names_in_") is not None:
            obj.feature_names_in_ = np.array(d["feature_names_in_"], dtype=object)
        return obj

    def save(self, path: str | Path) -> Path:
        """Write ``to_dict`` as JSON (atomically)."""
        return atomic_write_json(path, self.to_dict())

    @classmethod
    def load(cls, path: str | Path) -> Self:
        """Read a scaler written by ``save``."""
        return cls.from_dict(read_json(Path(path)))


class Standardizer(_Scaler):
    """Per-feature ``(x - mean_) / scale_`` with ``scale_`` the population std (ddof=0).

    A feature with zero variance in the training data gets ``scale_ = 1``.
    """

    _center_attr: ClassVar[str] = "mean_"

    def __init__(self) -> None:
        """No hyper-parameters: scikit-learn still wants an explicit ``__init__``."""

    def _statistics(self, X2: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        mean = np.nanmean(X2, axis=0)
        std = np.sqrt(np.nanmean((X2 - mean) ** 2, axis=0))
        return mean, std


class RobustScaler(_Scaler):
    """Per-feature ``(x - center_) / scale_`` with the median and inter-quantile range.

    Robust to the fat tails of returns; a zero IQR (mostly-constant feature) gets scale 1.
    """

    _center_attr: ClassVar[str] = "center_"

    def __init__(self, quantile_range: tuple[float, float] = (25.0, 75.0)) -> None:
        self.quantile_range = quantile_range

    def _statistics(self, X2: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        lo, hi = (float(q) for q in self.quantile_range)
        if not 0.0 <= lo < hi <= 100.0:
            raise ValueError(f"quantile_range must satisfy 0 <= lo < hi <= 100, got {(lo, hi)}")
        q_lo, median, q_hi = np.nanpercentile(X2, [lo, 50.0, hi], axis=0)
        return median, q_hi - q_lo


_SCALERS: dict[str, type[_Scaler]] = {"Standardizer": Standardizer, "RobustScaler": RobustScaler}


def scaler_from_dict(d: dict[str, Any]) -> _Scaler:
    """Rebuild whichever scaler ``d`` describes."""
    cls = _SCALERS.get(str(d.get("class")))
    if cls is None:
        raise ValueError(f"unknown scaler class {d.get('class')!r}; known: {sorted(_SCALERS)}")
    return cls.from_dict(d)


def load_scaler(path: str | Path) -> _Scaler:
    """Load any scaler saved with ``save``."""
    return scaler_from_dict(read_json(Path(path)))
