"""Plausibility audit: is a test accuracy an edge, or a leak?

A test accuracy far above the baselines on 1-minute data is more often a leak than an edge. The
audit retrains the same model (through a ``fit_predict(x_train, y_train, x_test) -> proba``
callable, so the train recipe can pass its own training) on transformed labels and compares:

* ``permuted``: the training labels are shuffled with a seed (``permute_labels``), breaking every
  link between features and labels. Nothing should be learnable, so test accuracy must fall to the
  majority rate (the accuracy on the test rows of always predicting the train-majority class).
  Rule: FAILED when the lower bound of the block-bootstrap CI of
  ``accuracy(permuted) - majority rate`` is above 0 (significantly better than majority: the
  pipeline sees test labels some other way); else passed. (A model fitted on permuted labels
  still puts small random weights on its features; on a feature as strong as a leak, that can land
  it significantly above the majority rate too, so this check may also flag a leaky feature, by
  chance of sign; the shifted check is the one that catches a leak for certain.)
* ``shifted``: labels move one bar further into the future (``shift_labels``: row ``i`` gets the
  label of the row one bar later, same symbol). A model that reads only the past loses a little
  when its target moves one bar away (a real edge on minute data is a few points at most); a model
  that reads the label's own future bar collapses. Rule: FAILED when the lower bound of the CI of
  ``accuracy(original) - accuracy(shifted)``, on the same rows, is above ``max_shift_drop``.

CIs are block-bootstrap percentile intervals (``moola.evaluation.resampling``). ``AuditResult``
``first_line`` says whether it passed, with the numbers.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from pydantic import Field

from moola.config import MAX_BARS, MAX_RESAMPLES, Config
from moola.evaluation.resampling import N_BOOT, BootstrapCI, block_bootstrap_ci, class_labels

__all__ = [
    "AuditCheck",
    "AuditConfig",
    "AuditResult",
    "FitPredict",
    "permute_labels",
    "plausibility_audit",
    "shift_labels",
]

FitPredict = Callable[[np.ndarray, np.ndarray, np.ndarray], np.ndarray]  # -> (N_test, C) proba
UNKNOWN = -1  # a shifted label past the end of its symbol's rows


class AuditConfig(Config):
    """Decision rules of the audit (module doc)."""

    level: float = Field(0.95, gt=0, lt=1)
    max_shift_drop: float = Field(0.02, ge=0, le=1)
    n_boot: int = Field(N_BOOT, ge=10, le=MAX_RESAMPLES)
    block_length: int | None = Field(None, ge=1, le=MAX_BARS)  # None -> resampling.default_block_length
    horizon: int = Field(1, ge=1, le=MAX_BARS)  # the label horizon, for the default block length


@dataclass(frozen=True)
class AuditCheck:
    name: str
    passed: bool
    rule: str
    measured: dict[str, Any]

    def line(self) -> str:
        return f"{self.name}: {'passed' if self.passed else 'FAILED'} ({self.rule}; " + ", ".join(
            f"{k}={v:.4f}" if isinstance(v, float) else f"{k}={v}" for k, v in self.measured.items()
        ) + ")"


@dataclass(frozen=True)
class AuditResult:
    checks: list[AuditCheck] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return all(c.passed for c in self.checks)

    @property
    def first_line(self) -> str:
        """``audit: passed`` or ``audit: FAILED`` with the failing checks named."""
        if self.passed:
            return "audit: passed (" + ", ".join(c.name for c in self.checks) + ")"
        return "audit: FAILED (" + ", ".join(c.name for c in self.checks if not c.passed) + ")"

    def lines(self) -> list[str]:
        return [self.first_line, *(c.line() for c in self.checks)]

    def to_dict(self) -> dict[str, Any]:
        return {"passed": self.passed, "first_line": self.first_line,
                "checks": {c.name: {"passed": c.passed, "rule": c.rule, **c.measured} for c in self.checks}}


def permute_labels(y_train: object, seed: int) -> np.ndarray:
    """A seeded permutation of the training labels (same class counts, no link to the features)."""
    y = class_labels(y_train, "y_train")
    return np.random.default_rng(seed).permutation(y)


def shift_labels(y: object, *, group: object | None = None, position: object | None = None) -> np.ndarray:
    """(N,) each row's label taken from the row one bar later; ``UNKNOWN`` (-1) where none is.

    ``position`` (N,) is each row's bar index (e.g. its window's end on the bar calendar, or the
    end timestamp in bar units); the shifted label of row ``i`` is the label of the row of the same
    ``group`` (symbol) at ``position[i] + 1``. ``position=None`` takes rows as consecutive bars
    (stride-1 windows without gaps); ``group=None`` is one symbol.
    """
    arr = class_labels(y, "y")
    n = arr.shape[0]
    g = np.zeros(n, dtype=np.int64) if group is None else np.asarray(group)
    pos = np.arange(n, dtype=np.int64) if position is None else np.asarray(position)
    for name, a in (("group", g), ("position", pos)):
        if a.shape != arr.shape:
            raise ValueError(f"{name} has shape {a.shape} but y has {arr.shape}")
    if pos.dtype.kind not in "iu":
        raise TypeError(f"position must be integer bar indices, got dtype {pos.dtype}")
    _, g_code = np.unique(g, return_inverse=True)
    order = np.lexsort((pos, g_code))  # by group, then position
    gs, ps = g_code[order], pos[order]
    if np.any((gs[1:] == gs[:-1]) & (ps[1:] == ps[:-1])):
        raise ValueError("two rows share a (group, position): positions must be unique per group")
    # positions are unique per group, so the row one bar later is the next one in this order
    nxt = (gs[1:] == gs[:-1]) & (ps[1:] == ps[:-1] + 1)  # (N-1,)
    out = np.full(n, UNKNOWN, dtype=np.int64)
    out[order[:-1][nxt]] = arr[order[1:][nxt]]
    return out


def _accuracy_of(proba: np.ndarray, y: np.ndarray, name: str) -> np.ndarray:
    p = np.asarray(proba)
    if p.ndim != 2 or p.shape[0] != y.shape[0]:
        raise ValueError(f"fit_predict returned shape {p.shape} for {name}; expected ({y.shape[0]}, C)")
    return (p.argmax(axis=1) == y).astype(np.float64)  # (N,) per-row correctness


def _ci(values: np.ndarray, cfg: AuditConfig, seed: int) -> BootstrapCI:
    return block_bootstrap_ci(values, level=cfg.level, block_length=cfg.block_length, horizon=cfg.horizon,
                              n_boot=cfg.n_boot, seed=seed)


def plausibility_audit(
    fit_predict: FitPredict,
    x_train: np.ndarray,
    y_train: np.ndarray,
    x_test: np.ndarray,
    y_test: np.ndarray,
    *,
    y_train_shifted: np.ndarray,
    y_test_shifted: np.ndarray,
    proba_test: np.ndarray | None = None,
    cfg: AuditConfig | None = None,
    seed: int = 0,
) -> AuditResult:
    """Run both checks (module doc). ``*_shifted`` come from ``shift_labels`` (``UNKNOWN`` rows
    are left out of the shifted check); ``proba_test`` is the model's own test output on the
    original labels (None: ``fit_predict`` is called on them here)."""
    cfg = cfg or AuditConfig()
    ytr, yte = class_labels(y_train, "y_train"), class_labels(y_test, "y_test")
    ytr_s = class_labels(y_train_shifted, "y_train_shifted")
    yte_s = class_labels(y_test_shifted, "y_test_shifted")
    for name, x, y in (("train", x_train, ytr), ("test", x_test, yte)):
        if x.shape[0] != y.shape[0]:
            raise ValueError(f"x_{name} has {x.shape[0]} rows but y_{name} has {y.shape[0]}")
    for name, y, ys in (("train", ytr, ytr_s), ("test", yte, yte_s)):
        if ys.shape != y.shape:
            raise ValueError(f"y_{name}_shifted has {ys.shape[0]} rows but y_{name} has {y.shape[0]}")

    # permuted labels vs the majority rate on the same test rows
    majority = int(np.bincount(ytr).argmax())
    c_major = (yte == majority).astype(np.float64)
    c_perm = _accuracy_of(fit_predict(x_train, permute_labels(ytr, seed), x_test), yte, "permuted labels")
    d_perm = _ci(c_perm - c_major, cfg, seed)
    permuted = AuditCheck(
        "permuted", passed=d_perm.low <= 0.0,
        rule=f"accuracy on permuted train labels not above the majority rate ({cfg.level:.0%} CI low <= 0)",
        measured={"accuracy": float(c_perm.mean()), "majority_rate": float(c_major.mean()),
                  "diff": d_perm.estimate, "ci_low": d_perm.low, "ci_high": d_perm.high,
                  "block_length": d_perm.block_length})

    # labels one bar further into the future, compared on the same rows
    if proba_test is None:
        proba_test = fit_predict(x_train, ytr, x_test)
    c_orig = _accuracy_of(proba_test, yte, "original labels")
    ktr, kte = ytr_s != UNKNOWN, yte_s != UNKNOWN
    if np.unique(ytr_s[ktr]).size < 2 or not kte.any():
        raise ValueError("shifted labels leave fewer than two train classes or no test rows")
    c_shift = _accuracy_of(fit_predict(x_train[ktr], ytr_s[ktr], x_test[kte]), yte_s[kte], "shifted labels")
    drop = _ci(c_orig[kte] - c_shift, cfg, seed)
    shifted = AuditCheck(
        "shifted", passed=drop.low <= cfg.max_shift_drop,
        rule=f"accuracy drop when the target moves one bar not above {cfg.max_shift_drop} "
             f"({cfg.level:.0%} CI low)",
        measured={"accuracy": float(c_orig[kte].mean()), "accuracy_shifted": float(c_shift.mean()),
                  "drop": drop.estimate, "ci_low": drop.low, "ci_high": drop.high,
                  "rows": int(kte.sum()), "block_length": drop.block_length})
    return AuditResult([permuted, shifted])
