"""Block bootstrap confidence intervals that respect autocorrelation.

Test rows of a sequence model are consecutive bars: their errors are correlated (overlapping
windows, overlapping label horizons, volatility regimes), so an i.i.d. bootstrap of the rows
understates the uncertainty. Here whole blocks of consecutive rows are resampled:

* ``moving``: the moving-block bootstrap (Kuensch 1989): ``ceil(n / L)`` blocks of length ``L``
  start at uniform positions in ``[0, n - L]`` and are concatenated, cut to ``n`` rows.
* ``stationary``: the stationary bootstrap (Politis & Romano 1994): blocks of geometric length
  with mean ``L`` starting anywhere, wrapping around the end.

Block length rule (``default_block_length``): ``max(ceil(n ** (1/3)), horizon)``: ``n^(1/3)`` is
the textbook rate for the variance of a mean, and a block is never shorter than the label horizon,
because rows whose ``horizon``-bar labels overlap share those bars. Pass ``block_length`` to set
it. ``block_length=1`` with ``moving`` is the plain i.i.d. bootstrap.

The interval is the percentile interval of the resampled statistic. The statistic is a mean of a
per-row value: accuracy is the mean of ``y_pred == y_true``; the paired difference of a model and a
baseline is the mean of their per-row correctness difference, on the SAME resampled rows. Both are
deterministic given ``seed``. (``arch`` offers these bootstraps too; the few lines here spare a
dependency.)
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any, Literal

import numpy as np

__all__ = [
    "BootstrapCI",
    "accuracy_ci",
    "block_bootstrap_ci",
    "bootstrap_indices",
    "class_labels",
    "default_block_length",
    "paired_difference_ci",
]

Method = Literal["moving", "stationary"]
METHODS: tuple[str, ...] = ("moving", "stationary")
N_BOOT = 2000
_CHUNK = 256  # resamples generated at a time, to bound memory at (_CHUNK, n) indices


@dataclass(frozen=True)
class BootstrapCI:
    """A statistic on the rows and its block-bootstrap percentile interval."""

    estimate: float
    low: float
    high: float
    level: float
    n: int
    block_length: int
    n_boot: int
    method: str

    @property
    def width(self) -> float:
        return self.high - self.low

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def default_block_length(n: int, horizon: int = 1) -> int:
    """``max(ceil(n ** (1/3)), horizon)``, at most ``n`` (see the module doc)."""
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    if horizon < 1:
        raise ValueError(f"horizon must be >= 1, got {horizon}")
    return min(n, max(math.ceil(n ** (1.0 / 3.0) - 1e-9), horizon))


def bootstrap_indices(n: int, block_length: int, n_boot: int, rng: np.random.Generator,
                      method: Method = "moving") -> np.ndarray:
    """(n_boot, n) row indices of ``n_boot`` block-bootstrap resamples of ``n`` rows."""
    if not 1 <= block_length <= n:
        raise ValueError(f"block_length must be between 1 and n={n}, got {block_length}")
    if method == "moving":
        k = math.ceil(n / block_length)
        starts = rng.integers(0, n - block_length + 1, size=(n_boot, k))  # (B, k)
        idx = (starts[:, :, None] + np.arange(block_length)[None, None, :]).reshape(n_boot, -1)
        return idx[:, :n]
    if method == "stationary":
        # each row starts a new block with probability 1/L, else continues the previous one (wrapping)
        new = rng.random((n_boot, n)) < 1.0 / block_length  # (B, n)
        new[:, 0] = True
        fresh = rng.integers(0, n, size=(n_boot, n))
        start_pos = np.where(new, np.arange(n)[None, :], 0)
        start_pos = np.maximum.accumulate(start_pos, axis=1)  # position where the current block began
        first = np.take_along_axis(np.where(new, fresh, 0), start_pos, axis=1)
        return (first + (np.arange(n)[None, :] - start_pos)) % n
    raise ValueError(f"unknown bootstrap method {method!r}; choose from {list(METHODS)}")


def _check_level(level: float) -> None:
    if not 0.0 < level < 1.0:
        raise ValueError(f"level must be in (0, 1), got {level}")


def block_bootstrap_ci(
    values: object,
    *,
    level: float = 0.95,
    block_length: int | None = None,
    horizon: int = 1,
    n_boot: int = N_BOOT,
    method: Method = "moving",
    seed: int = 0,
) -> BootstrapCI:
    """Percentile CI of the mean of per-row ``values`` (N,), rows in time order."""
    v = np.asarray(values, dtype=np.float64)
    if v.ndim != 1 or v.shape[0] == 0:
        raise ValueError(f"values must be a non-empty 1-D array (one value per row), got shape {v.shape}")
    if not np.all(np.isfinite(v)):
        raise ValueError(f"values contain NaN or inf at row {int(np.argmin(np.isfinite(v)))}")
    _check_level(level)
    if n_boot < 10:
        raise ValueError(f"n_boot must be >= 10, got {n_boot}")
    n = v.shape[0]
    length = default_block_length(n, horizon) if block_length is None else block_length
    rng = np.random.default_rng(seed)
    stats = np.empty(n_boot)
    for s in range(0, n_boot, _CHUNK):
        b = min(_CHUNK, n_boot - s)
        stats[s : s + b] = v[bootstrap_indices(n, length, b, rng, method)].mean(axis=1)
    alpha = (1.0 - level) / 2.0
    low, high = np.quantile(stats, [alpha, 1.0 - alpha])
    return BootstrapCI(float(v.mean()), float(low), float(high), level, n, int(length), n_boot, method)


def class_labels(a: object, name: str) -> np.ndarray:
    """``a`` as a 1-D int64 class-index array, or a TypeError naming ``name``."""
    arr = np.asarray(a)
    if arr.ndim != 1 or arr.dtype.kind not in "iub":
        raise TypeError(f"{name} must be a 1-D integer class-index array, got dtype {arr.dtype} "
                        f"shape {arr.shape}")
    return arr.astype(np.int64)


def _correct(y_true: object, y_pred: object, name: str) -> np.ndarray:
    t = class_labels(y_true, "y_true")
    p = class_labels(y_pred, name)
    if t.shape != p.shape:
        raise ValueError(f"{name} has {p.shape[0]} rows but y_true has {t.shape[0]}: the model and "
                         "its baselines must be scored on exactly the same rows")
    return (t == p).astype(np.float64)


def accuracy_ci(y_true: object, y_pred: object, **kwargs: Any) -> BootstrapCI:
    """Block-bootstrap CI of accuracy; ``kwargs`` as ``block_bootstrap_ci``."""
    return block_bootstrap_ci(_correct(y_true, y_pred, "y_pred"), **kwargs)


def paired_difference_ci(y_true: object, y_pred: object, y_pred_baseline: object,
                         **kwargs: Any) -> BootstrapCI:
    """CI of accuracy(model) - accuracy(baseline), both resampled on the same row blocks."""
    d = _correct(y_true, y_pred, "y_pred") - _correct(y_true, y_pred_baseline, "y_pred_baseline")
    return block_bootstrap_ci(d, **kwargs)
