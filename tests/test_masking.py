"""Time-step masks: exact fractions, span shapes, eval-time determinism, the learned token."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from moola.config import ConfigError
from moola.pretraining import MaskConfig, MaskToken, hash_uniform, make_mask, masked_count, sample_keys
from moola.pretraining.masking import _mix64

T = 105
STRATEGIES = ("random", "block", "patch")


def runs(row: np.ndarray) -> list[tuple[int, int]]:
    """(start, length) of the maximal True runs of a 1-D bool array."""
    d = np.diff(np.r_[0, row.astype(np.int8), 0])
    starts, ends = np.flatnonzero(d == 1), np.flatnonzero(d == -1)
    return list(zip(starts.tolist(), (ends - starts).tolist(), strict=True))


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_masked_fraction_within_two_points_overall_and_per_sample(strategy: str) -> None:
    torch.manual_seed(0)
    cfg = MaskConfig(strategy=strategy, ratio=0.15)
    m = make_mask(4000, T, cfg)
    assert m.shape == (4000, T) and m.dtype == torch.bool
    per = m.float().mean(1)
    assert abs(float(per.mean()) - 0.15) <= 0.02
    assert float((per - 0.15).abs().max()) <= 0.02, f"worst sample {float(per.min())}-{float(per.max())}"
    assert (m.sum(1) == masked_count(T, cfg)).all()


@pytest.mark.parametrize("strategy", STRATEGIES)
@pytest.mark.parametrize(("t", "ratio"), [(60, 0.3), (105, 0.4), (200, 0.1), (33, 0.5)])
def test_other_lengths_and_ratios_keep_the_fraction(strategy: str, t: int, ratio: float) -> None:
    torch.manual_seed(1)
    cfg = MaskConfig(strategy=strategy, ratio=ratio, patch_size=3)
    m = make_mask(500, t, cfg)
    per = m.float().mean(1)
    # patch granularity: one patch of 3 steps is worth up to 1.5 / t of rounding
    tol = 0.02 if strategy != "patch" else max(0.02, 1.5 * 3 / t)
    assert float((per - ratio).abs().max()) <= tol


def test_random_marginals_are_uniform_over_positions() -> None:
    torch.manual_seed(2)
    m = make_mask(20000, T, MaskConfig(strategy="random"))
    freq = m.float().mean(0)
    assert float((freq - 16 / T).abs().max()) < 0.02  # binomial sd ~0.0025


def test_block_spans_are_contiguous_runs_in_range_and_cover_all_positions() -> None:
    torch.manual_seed(3)
    cfg = MaskConfig(strategy="block", block_min=3, block_max=10)
    m = make_mask(3000, T, cfg).numpy()
    lengths: list[int] = []
    for row in m:
        r = runs(row)
        assert sum(n for _, n in r) == 16
        lengths += [n for _, n in r]
    lengths_a = np.asarray(lengths)
    assert lengths_a.min() >= 3 and lengths_a.max() <= 10
    assert set(np.unique(lengths_a).tolist()) == set(range(3, 11))  # every length occurs
    freq = m.mean(0)
    # edges are masked less often (a span must fit), but every position is reachable
    assert freq.min() > 0.01 and freq.max() < 0.3, "spans must be spread over the whole window"
    assert (m.sum(1) == 16).all()


def test_block_with_fixed_span_length_still_masks_the_exact_count() -> None:
    torch.manual_seed(4)
    cfg = MaskConfig(strategy="block", block_min=5, block_max=5)  # 16 = 5+5+5+1: one short span
    m = make_mask(200, T, cfg).numpy()
    assert (m.sum(1) == 16).all()


def test_block_shorter_than_min_when_the_count_is_tiny() -> None:
    cfg = MaskConfig(strategy="block", ratio=0.15, block_min=3)
    m = make_mask(50, 10, cfg)  # round(1.5) = 2 steps < block_min: one span of 2
    assert (m.sum(1) == 2).all()
    assert all(len(runs(r)) == 1 for r in m.numpy())


def test_block_impossible_ratio_is_an_error() -> None:
    with pytest.raises(ValueError, match="cannot keep spans"):
        make_mask(4, 20, MaskConfig(strategy="block", ratio=0.9, block_min=1, block_max=2))


def test_patches_are_aligned_and_whole() -> None:
    torch.manual_seed(5)
    cfg = MaskConfig(strategy="patch", patch_size=5)
    m = make_mask(2000, T, cfg)
    pm = m.reshape(2000, T // 5, 5)
    whole = pm.all(-1) | ~pm.any(-1)
    assert whole.all(), "a patch is either fully masked or not at all"
    assert (pm.all(-1).sum(1) == 3).all()  # round(0.15 * 105 / 5) = 3 patches
    for row in m.numpy()[:200]:
        for s, n in runs(row):
            assert s % 5 == 0 and n % 5 == 0


def test_patch_tail_is_never_masked() -> None:
    torch.manual_seed(6)
    m = make_mask(500, 103, MaskConfig(strategy="patch", patch_size=5, ratio=0.3))
    assert not m[:, 100:].any()
    assert m[:, :100].any(0).all()


def test_training_masks_come_from_the_global_rng() -> None:
    cfg = MaskConfig(strategy="block")
    torch.manual_seed(7)
    a = make_mask(8, T, cfg)
    torch.manual_seed(7)
    b = make_mask(8, T, cfg)
    c = make_mask(8, T, cfg)
    assert torch.equal(a, b) and not torch.equal(b, c)


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_eval_masks_are_deterministic_and_leave_the_global_rng_alone(strategy: str) -> None:
    cfg = MaskConfig(strategy=strategy)
    x = torch.randn(64, T, 4)
    state = torch.get_rng_state()
    m1 = make_mask(64, T, cfg, keys=sample_keys(x))
    m2 = make_mask(64, T, cfg, keys=sample_keys(x.clone()))
    assert torch.equal(torch.get_rng_state(), state), "eval masking consumed the global RNG"
    assert torch.equal(m1, m2)
    # a window's mask depends on its content only, not on its batch or position in it
    perm = torch.randperm(64)
    m3 = make_mask(20, T, cfg, keys=sample_keys(x[perm[:20]]))
    assert torch.equal(m3, m1[perm[:20]])
    # different windows, different masks; another seed, other masks
    assert len({tuple(r.tolist()) for r in m1}) > 50
    m4 = make_mask(64, T, cfg, keys=sample_keys(x, seed=1))
    assert not torch.equal(m1, m4)
    assert (m1.sum(1) == masked_count(T, cfg)).all()


def test_mix64_is_splitmix64() -> None:
    def ref(z: int) -> int:
        mask = (1 << 64) - 1
        z &= mask
        z ^= z >> 30
        z = (z * 0xBF58476D1CE4E5B9) & mask
        z ^= z >> 27
        z = (z * 0x94D049BB133111EB) & mask
        return z ^ (z >> 31)

    vals = [0, 1, 2, 12345, -1, -(2**63), 2**63 - 1, 0x123456789ABCDEF]
    got = _mix64(torch.tensor(vals, dtype=torch.int64)).tolist()
    assert [g & ((1 << 64) - 1) for g in got] == [ref(v) for v in vals]


def test_hash_uniform_is_uniform() -> None:
    u = hash_uniform(torch.arange(2000), stream=3, n=500)
    assert u.min() >= 0 and u.max() < 1
    hist = torch.histc(u, bins=10, min=0, max=1) / u.numel()
    assert float((hist - 0.1).abs().max()) < 0.005
    v = hash_uniform(torch.arange(2000), stream=4, n=500)
    assert abs(float(torch.corrcoef(torch.stack([u.flatten(), v.flatten()]))[0, 1])) < 0.01


def test_mask_token_replaces_all_features_of_masked_steps() -> None:
    tok = MaskToken(4)
    x = torch.randn(2, 6, 4)
    mask = torch.zeros(2, 6, dtype=torch.bool)
    mask[0, 2] = mask[1, 5] = True
    y = tok(x, mask)
    assert torch.equal(y[0, 2], tok.weight.detach()) and torch.equal(y[1, 5], tok.weight.detach())
    keep = ~mask
    assert torch.equal(y[keep], x[keep])
    y.sum().backward()
    assert torch.equal(tok.weight.grad, torch.full((4,), 2.0))


def test_config_validation() -> None:
    with pytest.raises(ConfigError):
        MaskConfig.from_dict({"strategy": "block", "block_min": 8, "block_max": 4})
    with pytest.raises(ConfigError):
        MaskConfig.from_dict({"ratio": 1.0})
    with pytest.raises(ConfigError):
        MaskConfig.from_dict({"token": "zero"})
    assert MaskConfig.from_yaml  # round trip
    cfg = MaskConfig(strategy="patch", patch_size=7)
    assert MaskConfig.from_dict(cfg.to_dict()) == cfg
