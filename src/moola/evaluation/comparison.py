"""Paired comparison of arms over folds x seeds: is one arm really better than another?

Each (fold, seed) cell gives one score per arm on the same test windows, so differences are
paired. We report the mean difference with a percentile bootstrap 95% CI over cells and a
Wilcoxon signed-rank p-value; with few cells both are wide, and the verdict says so.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import polars as pl
from scipy.stats import wilcoxon


@dataclass(frozen=True)
class PairedDifference:
    arm: str
    reference: str
    metric: str
    n: int
    mean: float
    ci_low: float
    ci_high: float
    p_value: float | None
    wins: int
    losses: int

    @property
    def significant(self) -> bool:
        """CI excludes zero and Wilcoxon p < 0.05."""
        return (self.ci_low > 0 or self.ci_high < 0) and self.p_value is not None \
            and self.p_value < 0.05

    def sentence(self) -> str:
        if self.n == 0:
            return f"{self.arm} vs {self.reference}: no paired cells"
        p = "n/a" if self.p_value is None else f"{self.p_value:.3g}"
        return (f"{self.arm} - {self.reference} on {self.metric}: {self.mean:+.4f} "
                f"(95% CI {self.ci_low:+.4f} .. {self.ci_high:+.4f}, Wilcoxon p={p}, "
                f"{self.wins} wins / {self.losses} losses over {self.n} fold x seed cells)")


def bootstrap_ci(diffs: np.ndarray, *, n_boot: int = 10_000, seed: int = 0,
                 level: float = 0.95) -> tuple[float, float]:
    """Percentile bootstrap CI of the mean of ``diffs``."""
    d = np.asarray(diffs, dtype=np.float64)
    if d.size == 0:
        return (float("nan"), float("nan"))
    rng = np.random.default_rng(seed)
    means = d[rng.integers(0, d.size, size=(n_boot, d.size))].mean(axis=1)
    a = (1 - level) / 2
    return float(np.quantile(means, a)), float(np.quantile(means, 1 - a))


def paired_difference(scores: pl.DataFrame, arm: str, reference: str, metric: str,
                      *, seed: int = 0) -> PairedDifference:
    """``scores``: one row per (arm, fold, seed) with a column per metric."""
    a = scores.filter(pl.col("arm") == arm).select("fold", "seed", pl.col(metric).alias("a"))
    b = scores.filter(pl.col("arm") == reference).select("fold", "seed", pl.col(metric).alias("b"))
    j = a.join(b, on=["fold", "seed"], how="inner").drop_nulls()
    d = (j["a"] - j["b"]).to_numpy()
    if d.size == 0:
        return PairedDifference(arm, reference, metric, 0, float("nan"), float("nan"),
                                float("nan"), None, 0, 0)
    lo, hi = bootstrap_ci(d, seed=seed)
    p: float | None
    if np.allclose(d, 0) or d.size < 2:
        p = None if d.size < 2 else 1.0
    else:
        p = float(wilcoxon(d, zero_method="zsplit").pvalue)
    return PairedDifference(arm, reference, metric, int(d.size), float(d.mean()), lo, hi, p,
                            int((d > 0).sum()), int((d < 0).sum()))


def summarize_arms(scores: pl.DataFrame, metrics: list[str]) -> pl.DataFrame:
    """Mean and std per arm of each metric over fold x seed cells."""
    aggs = []
    for m in metrics:
        aggs += [pl.col(m).mean().alias(f"{m}_mean"), pl.col(m).std().alias(f"{m}_std")]
    return scores.group_by("arm", maintain_order=True).agg(pl.len().alias("cells"), *aggs)
