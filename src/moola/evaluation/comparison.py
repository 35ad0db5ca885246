"""Paired comparison of arms over folds: is one arm really better than another?

The unit of inference is the fold. Seeds (and, on the label-efficiency curve, the random label
subsets) are averaged within a fold first: cells of one fold share its test windows and its
training windows, so they are not independent replicates, and counting them as such shrinks
p-values and intervals without new evidence. With K folds each comparison has K paired values.

* CI: ``scipy.stats.bootstrap`` of the mean of the K per-fold differences, BCa; where BCa is
  undefined (all differences equal, or K too small for its jackknife) the percentile interval,
  and the method used is recorded. With K = 5 a bootstrap has only 126 distinct resamples:
  read the interval as rough.
* p-value: exact two-sided sign-flip permutation test of the mean difference (all 2^K sign
  patterns; ``scipy.stats.permutation_test``), chosen over Wilcoxon because zeros and ties
  need no special rule. Its smallest attainable value is 2 / 2^K (0.0625 for K = 5): with so few
  folds no difference can be significant at 0.05, and the report says so.
* Multiplicity: Holm's step-down adjustment within each family of comparisons that is read
  together (the verdict's; the label-efficiency curve's).
"""

from __future__ import annotations

import dataclasses
import warnings
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import polars as pl
from scipy.stats import bootstrap, permutation_test

ALPHA = 0.05
VERDICT_METRIC = "balanced_accuracy"  # the verdict's metric: both classes count equally
EXACT_MAX_FOLDS = 16  # up to 2^16 sign patterns enumerated; beyond, 100k seeded resamples


@dataclass(frozen=True)
class PairedDifference:
    """``arm - reference`` on ``metric`` over ``folds`` paired fold means (seed-averaged)."""

    arm: str
    reference: str
    metric: str
    labels: str  # "all" or the label count of a label-efficiency point
    folds: int
    mean: float
    ci_low: float
    ci_high: float
    ci_method: str  # "BCa", "percentile" (BCa undefined) or "none (all differences equal)"
    p_value: float | None  # exact sign-flip permutation test, two-sided, unadjusted
    wins: int  # folds where the arm's mean beats the reference's
    losses: int
    family: str = ""  # the Holm family this comparison belongs to
    p_holm: float | None = None  # Holm-adjusted within ``family``

    @property
    def min_p(self) -> float:
        """The smallest p the test can give with this many folds (2 / 2^K)."""
        return min(1.0, 2.0 / 2.0 ** self.folds) if self.folds else 1.0

    @property
    def significant(self) -> bool:
        """Holm-adjusted p < 0.05 (unadjusted when the comparison is in no family)."""
        p = self.p_holm if self.family else self.p_value
        return p is not None and p < ALPHA

    def sentence(self) -> str:
        if self.folds == 0:
            return f"{self.arm} vs {self.reference}: no paired folds"
        p = "n/a" if self.p_value is None else f"{self.p_value:.3g}"
        ph = "" if self.p_holm is None else f", Holm p={self.p_holm:.3g}"
        return (f"{self.arm} - {self.reference} on {self.metric} ({self.labels} labels): "
                f"{self.mean:+.4f} (95% {self.ci_method} CI {self.ci_low:+.4f} .. "
                f"{self.ci_high:+.4f}, sign-flip p={p}{ph}; {self.wins} wins / {self.losses} "
                f"losses over {self.folds} folds)")


def bootstrap_ci(values: np.ndarray, *, n_boot: int = 9_999, seed: int = 0,
                 level: float = 0.95) -> tuple[float, float, str]:
    """CI of the mean of ``values``: BCa, else percentile where BCa is undefined; + method."""
    d = np.asarray(values, dtype=np.float64).reshape(-1)
    if d.size == 0:
        return float("nan"), float("nan"), "none (no values)"
    if np.allclose(d, d.mean(), rtol=0, atol=1e-12):  # equal up to float rounding
        return float(d.mean()), float(d.mean()), "none (all differences equal)"
    for method in ("BCa", "percentile"):
        if method == "BCa" and d.size < 3:
            continue  # the jackknife acceleration of 2 values is degenerate
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # DegenerateDataWarning / 0-division: checked below
            ci = bootstrap((d,), np.mean, n_resamples=n_boot, confidence_level=level,
                           method=method, vectorized=True, rng=np.random.default_rng(seed)
                           ).confidence_interval
        lo, hi = float(ci.low), float(ci.high)
        if np.isfinite(lo) and np.isfinite(hi):
            return lo, hi, method
    return float(d.min()), float(d.max()), "range (bootstrap undefined)"


def sign_flip_p(diffs: np.ndarray, *, seed: int = 0) -> float | None:
    """Two-sided p of H0 "the differences are symmetric about 0", by flipping signs."""
    d = np.asarray(diffs, dtype=np.float64).reshape(-1)
    if d.size == 0:
        return None
    if d.size == 1 or np.allclose(d, 0):
        return 1.0  # one value: both sign patterns are as extreme as the observed one
    n_res = np.inf if d.size <= EXACT_MAX_FOLDS else 100_000
    r = permutation_test((d,), np.mean, permutation_type="samples", n_resamples=n_res,
                         alternative="two-sided", vectorized=True, rng=np.random.default_rng(seed))
    return float(min(1.0, r.pvalue))


def holm(p_values: Sequence[float | None]) -> list[float | None]:
    """Holm's step-down adjusted p-values (None stays None and does not count in the family)."""
    idx = [i for i, p in enumerate(p_values) if p is not None]
    m = len(idx)
    out: list[float | None] = [None] * len(p_values)
    running = 0.0
    for rank, i in enumerate(sorted(idx, key=lambda i: p_values[i])):  # type: ignore[arg-type,return-value]
        running = max(running, min(1.0, (m - rank) * float(p_values[i])))  # type: ignore[arg-type]
        out[i] = running
    return out


def with_holm(diffs: Sequence[PairedDifference], family: str) -> list[PairedDifference]:
    """The comparisons as one Holm family."""
    adj = holm([d.p_value for d in diffs])
    return [dataclasses.replace(d, family=family, p_holm=p) for d, p in zip(diffs, adj, strict=True)]


def fold_means(scores: pl.DataFrame, metrics: Sequence[str]) -> pl.DataFrame:
    """One row per (arm, labels, fold): each metric averaged over the fold's seeds."""
    return (scores.group_by("arm", "labels", "fold", maintain_order=True)
            .agg(pl.len().alias("seeds"), *[pl.col(m).mean() for m in metrics]))


def paired_difference(folds: pl.DataFrame, arm: str, reference: str, metric: str,
                      *, labels: str = "all", seed: int = 0) -> PairedDifference:
    """``folds``: one row per (arm, labels, fold) (see :func:`fold_means`), paired on fold."""
    sub = folds.filter(pl.col("labels") == labels) if "labels" in folds.columns else folds
    for name in (arm, reference):
        dup = sub.filter(pl.col("arm") == name)["fold"].is_duplicated()
        if dup.any():
            raise ValueError(f"arm {name!r} ({labels} labels) has several rows per fold: average "
                             "seeds within each fold first (fold_means)")
    a = sub.filter(pl.col("arm") == arm).select("fold", pl.col(metric).alias("a"))
    b = sub.filter(pl.col("arm") == reference).select("fold", pl.col(metric).alias("b"))
    j = a.join(b, on="fold", how="inner").drop_nulls().sort("fold")
    d = (j["a"] - j["b"]).to_numpy()
    lo, hi, method = bootstrap_ci(d, seed=seed)
    return PairedDifference(arm, reference, metric, labels, int(d.size),
                            float(d.mean()) if d.size else float("nan"), lo, hi, method,
                            sign_flip_p(d, seed=seed), int((d > 0).sum()), int((d < 0).sum()))


def summarize_arms(folds: pl.DataFrame, metrics: Sequence[str]) -> pl.DataFrame:
    """Per arm: mean and std over folds of each metric's fold means, folds and seeds per fold."""
    aggs = []
    for m in metrics:
        aggs += [pl.col(m).mean().alias(f"{m}_mean"), pl.col(m).std().alias(f"{m}_std")]
    return folds.group_by("arm", maintain_order=True).agg(
        pl.len().alias("folds"), pl.col("seeds").max().alias("seeds"), *aggs)


def arm_cis(folds: pl.DataFrame, metric: str) -> pl.DataFrame:
    """Per arm and label count: mean of the fold means with its bootstrap 95% CI over folds."""
    rows = []
    for (arm, labels), g in folds.group_by("arm", "labels", maintain_order=True):
        v = g[metric].drop_nulls().to_numpy()
        lo, hi, method = bootstrap_ci(v)
        rows.append({"arm": arm, "labels": labels, "folds": int(v.size),
                     "seeds": int(g["seeds"].to_numpy().max()),
                     "mean": float(v.mean()) if v.size else None,
                     "ci_low": lo, "ci_high": hi, "ci_method": method})
    return pl.DataFrame(rows)
