"""Block bootstrap CIs: coverage on i.i.d. rows, width under autocorrelated errors, determinism,
the block structure of the resamples, and the paired model-minus-baseline difference."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from moola.evaluation.resampling import (
    accuracy_ci,
    block_bootstrap_ci,
    bootstrap_indices,
    default_block_length,
    paired_difference_ci,
)


def test_default_block_length_rule() -> None:
    assert default_block_length(1000) == 10  # n^(1/3)
    assert default_block_length(1001) == 11  # rounded up
    assert default_block_length(1000, horizon=15) == 15  # never shorter than the label horizon
    assert default_block_length(5, horizon=60) == 5  # at most n
    with pytest.raises(ValueError, match="n must be >= 1"):
        default_block_length(0)


@settings(max_examples=60, deadline=None)
@given(n=st.integers(1, 200), length=st.integers(1, 50), seed=st.integers(0, 2**31 - 1),
       method=st.sampled_from(["moving", "stationary"]))
def test_resamples_are_runs_of_consecutive_rows(n: int, length: int, seed: int, method: str) -> None:
    length = min(length, n)
    idx = bootstrap_indices(n, length, 5, np.random.default_rng(seed), method)  # type: ignore[arg-type]
    assert idx.shape == (5, n) and idx.min() >= 0 and idx.max() < n
    step = (np.diff(idx, axis=1) - 1) % n == 0  # True where the next row continues the block
    if method == "moving":
        # breaks only at multiples of the block length: inside a block rows are consecutive
        inner = np.ones(n - 1, dtype=bool)
        inner[length - 1 :: length] = False
        assert step[:, inner].all()


def test_stationary_blocks_have_the_requested_mean_length() -> None:
    idx = bootstrap_indices(20_000, 8, 4, np.random.default_rng(0), "stationary")
    starts = 1 + (((np.diff(idx, axis=1) - 1) % 20_000) != 0).sum(axis=1)
    assert 20_000 / starts.mean() == pytest.approx(8, rel=0.1)


def test_same_seed_same_interval_and_other_seed_differs() -> None:
    rng = np.random.default_rng(1)
    y = rng.integers(0, 2, 500)
    p = np.where(rng.random(500) < 0.6, y, 1 - y)
    a, b = accuracy_ci(y, p, seed=4), accuracy_ci(y, p, seed=4)
    assert a == b
    assert accuracy_ci(y, p, seed=5) != a
    assert a.estimate == float((y == p).mean()) and a.low < a.estimate < a.high
    assert a.block_length == default_block_length(500) and a.n == 500


def test_iid_coverage_is_near_the_nominal_level() -> None:
    """200 simulated test sets of 300 i.i.d. rows, each right with probability 0.55: the 95 %
    interval covers 0.55 in about 95 % of them (binomial sd over 200 sims is 1.5 points)."""
    rng = np.random.default_rng(0)
    covered = 0
    for sim in range(200):
        correct = (rng.random(300) < 0.55).astype(float)
        ci = block_bootstrap_ci(correct, n_boot=400, seed=sim)
        covered += ci.low <= 0.55 <= ci.high
    assert 0.89 <= covered / 200 <= 0.99


def _runs_of_errors(rng: np.random.Generator, n: int, stay: float) -> np.ndarray:
    """Correctness as a two-state Markov chain: it stays in its state with probability ``stay``,
    so errors come in long runs (regimes), mean 0.5."""
    out = np.empty(n)
    s = float(rng.random() < 0.5)
    for i in range(n):
        if rng.random() > stay:
            s = 1.0 - s
        out[i] = s
    return out


def test_block_interval_is_wider_than_iid_under_autocorrelated_errors() -> None:
    rng = np.random.default_rng(3)
    ratios = []
    for sim in range(5):
        correct = _runs_of_errors(rng, 2000, stay=0.95)  # mean run length 20 rows
        iid = block_bootstrap_ci(correct, block_length=1, n_boot=500, seed=sim)
        block = block_bootstrap_ci(correct, block_length=50, n_boot=500, seed=sim)
        stationary = block_bootstrap_ci(correct, block_length=50, n_boot=500, seed=sim, method="stationary")
        ratios.append(block.width / iid.width)
        assert stationary.width > 1.5 * iid.width
    # the variance of a mean of an AR(1)-like chain with rho = 0.9 is ~ (1 + rho) / (1 - rho) = 19x
    # that of i.i.d. rows: the interval must be several times wider, not marginally
    assert min(ratios) > 2.5
    # on i.i.d. rows the two agree
    correct = (rng.random(2000) < 0.5).astype(float)
    w_iid = block_bootstrap_ci(correct, block_length=1, n_boot=500).width
    w_block = block_bootstrap_ci(correct, block_length=50, n_boot=500).width
    assert w_block == pytest.approx(w_iid, rel=0.25)


def test_paired_difference_resamples_the_same_rows() -> None:
    rng = np.random.default_rng(7)
    y = rng.integers(0, 2, 1000)
    base = np.where(rng.random(1000) < 0.5, y, 1 - y)
    better = base.copy()
    fix = rng.choice(np.flatnonzero(better != y), 80, replace=False)
    better[fix] = y[fix]  # the model = the baseline with 80 errors corrected
    d = paired_difference_ci(y, better, base, seed=0)
    assert d.estimate == pytest.approx(0.08)
    assert d.low > 0  # paired: the shared errors cancel, so 8 points is clearly positive
    # unpaired intervals of the two accuracies overlap, the paired one does not include 0
    a, b = accuracy_ci(y, better, seed=0), accuracy_ci(y, base, seed=0)
    assert d.width < min(a.width, b.width)
    same = paired_difference_ci(y, base, base)
    assert same.estimate == same.low == same.high == 0.0


def test_bad_input_is_named() -> None:
    y = np.array([0, 1, 1, 0])
    with pytest.raises(ValueError, match="exactly the same rows"):
        paired_difference_ci(y, y, y[:3])
    with pytest.raises(TypeError, match="y_pred must be a 1-D integer"):
        accuracy_ci(y, y.astype(float))
    with pytest.raises(ValueError, match="NaN or inf at row 2"):
        block_bootstrap_ci([1.0, 0.0, math.nan])
    with pytest.raises(ValueError, match="block_length must be between 1 and n=4"):
        accuracy_ci(y, y, block_length=5)
    with pytest.raises(ValueError, match="level must be in"):
        accuracy_ci(y, y, level=95)
    with pytest.raises(ValueError, match="unknown bootstrap method 'circular'"):
        accuracy_ci(y, y, method="circular")
