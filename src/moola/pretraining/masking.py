"""Time-step masks for masked-autoencoder pretraining, and the learned mask token.

``make_mask(B, T, cfg)`` returns a (B, T) bool tensor, True = masked. A masked time step hides
ALL features of that bar. Every strategy masks an exact number of steps per sample, so the
masked fraction of each window equals the ratio up to rounding (T = 105, ratio 0.15: 16 steps,
15.2 %; patch: 3 patches of 5, 14.3 %):

* ``random``: ``round(ratio * T)`` distinct steps drawn uniformly without replacement (each
  step has marginal probability ``ratio``; an i.i.d. Bernoulli draw would miss the ratio by
  +-3.5 points per 105-bar window).
* ``block``: non-overlapping, non-adjacent contiguous spans whose lengths are drawn uniformly
  in ``[block_min, block_max]``, adding up to exactly ``round(ratio * T)`` steps (see
  ``_block_lengths`` for how the last span is fitted). Spans are at least one unmasked step
  apart, so every maximal masked run is one span.
* ``patch``: T is cut into ``T // patch_size`` aligned patches (a ragged tail shorter than a
  patch is never masked) and ``round(ratio * T / patch_size)`` whole patches are masked.

Randomness. At training time the draws come from torch's global RNG (or ``generator``), which
the training loop saves and restores for bitwise resume. For evaluation pass ``keys`` instead
(one int64 per sample, e.g. ``sample_keys(x)``, a hash of the window's bits): the noise is then
a counter-based hash of (key, draw, position), so the mask of a window depends only on its
content and the seed, not on the batch it sits in, the batch size or the device, and torch's
global RNG is left untouched.

Masked inputs: a learned mask token (``MaskToken``), not zeros plus an indicator channel. The
token is one learned (F,) vector that replaces every masked bar, so the encoder's input stays
F wide and its weights load unchanged into a classifier that sees unmasked F-feature windows;
an indicator channel would make the pretrained first layer F + 1 wide and the fine-tuned model
would need a constant dummy column (or surgery on ``weight_ih_l0``) to reuse it. The mask
reaches the model as ``batch["mask"]`` (see ``moola.pretraining.objective``).
"""

from __future__ import annotations

from typing import Annotated, Literal, Self

import torch
from pydantic import Field, model_validator
from torch import Tensor, nn

from moola.config import Bars, Config

__all__ = [
    "MaskConfig",
    "MaskToken",
    "expected_fraction",
    "hash_uniform",
    "make_mask",
    "masked_count",
    "sample_keys",
]

_MASK64 = (1 << 64) - 1


def _signed(v: int) -> int:
    """A 64-bit constant as the signed int64 torch stores."""
    v &= _MASK64
    return v - (1 << 64) if v >= 1 << 63 else v


_GOLDEN = _signed(0x9E3779B97F4A7C15)
_MIX1 = _signed(0xBF58476D1CE4E5B9)
_MIX2 = _signed(0x94D049BB133111EB)
_STREAM = _signed(0xD1B54A32D192ED03)


class MaskConfig(Config):
    """Which time steps to hide. ``token`` is fixed to a learned token (module docstring)."""

    strategy: Literal["random", "block", "patch"] = "random"
    ratio: Annotated[float, Field(gt=0.0, lt=1.0)] = 0.15
    block_min: Bars = 3  # block: shortest span
    block_max: Bars = 10  # block: longest span
    patch_size: Bars = 5  # patch: aligned patch length
    token: Literal["learned"] = "learned"

    @model_validator(mode="after")
    def _spans(self) -> Self:
        if self.block_min > self.block_max:
            raise ValueError(f"block_min ({self.block_min}) must be <= block_max ({self.block_max})")
        return self


class MaskToken(nn.Module):
    """A learned (F,) vector that replaces the features of masked bars.

    Chosen over zeros + a mask-indicator channel because it keeps the encoder's input width
    equal to F: the pretrained encoder's weights transfer by name to a model that sees plain,
    unmasked F-feature windows. Zero is a real, frequent value of a standardised feature; a
    learned vector lets the model tell "hidden" from "zero" without an extra input column.
    """

    def __init__(self, n_features: int, init_std: float = 0.02) -> None:
        super().__init__()
        self.weight = nn.Parameter(init_std * torch.randn(n_features))

    def forward(self, x: Tensor, mask: Tensor) -> Tensor:
        """``x`` (B, T, F) with the steps where ``mask`` (B, T) is True replaced by the token."""
        if mask.shape != x.shape[:2]:
            raise ValueError(f"mask shape {tuple(mask.shape)} does not match x {tuple(x.shape)}")
        return torch.where(mask.unsqueeze(-1), self.weight.to(x.dtype), x)


# --- deterministic (counter-based) noise --------------------------------------------------------


def _lsr(z: Tensor, s: int) -> Tensor:
    """Logical right shift of int64 (torch's >> is arithmetic on negatives)."""
    return (z >> s) & ((1 << (64 - s)) - 1)


def _mix64(z: Tensor) -> Tensor:
    """splitmix64's finaliser on int64 tensors (wrapping multiplication)."""
    z = z ^ _lsr(z, 30)
    z = z * _MIX1
    z = z ^ _lsr(z, 27)
    z = z * _MIX2
    return z ^ _lsr(z, 31)


def hash_uniform(keys: Tensor, stream: int, n: int) -> Tensor:
    """(B, n) float32 in [0, 1): a hash of (key_b, stream, j), the same on every device.

    Never touches torch's RNG state. Distinct streams give independent-looking draws for the
    same keys.
    """
    k = keys.to(torch.int64).reshape(-1, 1)
    j = torch.arange(n, device=k.device, dtype=torch.int64).reshape(1, -1)
    z = _mix64(k ^ _signed((stream + 1) * _STREAM)) + (j + 1) * _GOLDEN
    z = _mix64(z)
    return _lsr(z, 40).to(torch.float32) * (1.0 / (1 << 24))


def sample_keys(x: Tensor, seed: int = 0) -> Tensor:
    """(B,) int64: a hash of each sample's float32 bits (and ``seed``), for eval-time masks.

    Integer arithmetic only (wrapping sums are order-independent), so the key of a window is
    the same whatever batch, batch size or device it is evaluated with.
    """
    b = x.shape[0]
    bits = x.detach().to(torch.float32).contiguous().view(torch.int32).reshape(b, -1).to(torch.int64)
    pos = torch.arange(bits.shape[1], device=bits.device, dtype=torch.int64)
    h = _mix64(bits + (pos + 1) * _GOLDEN).sum(1)
    return _mix64(h ^ _signed(seed * _STREAM + bits.shape[1]))


# --- masks ---------------------------------------------------------------------------------------


def masked_count(T: int, cfg: MaskConfig) -> int:
    """Masked steps per sample for sequence length T (the same for every sample)."""
    if cfg.strategy == "patch":
        n_patches = T // cfg.patch_size
        return min(n_patches, max(1, round(cfg.ratio * T / cfg.patch_size))) * cfg.patch_size
    return min(T, max(1, round(cfg.ratio * T)))


class _Noise:
    """Uniform draws from the global RNG / a generator, or from per-sample hash keys."""

    def __init__(self, B: int, device: torch.device | None, generator: torch.Generator | None,
                 keys: Tensor | None) -> None:
        self.B, self.generator, self.keys = B, generator, keys
        if keys is not None:
            if keys.shape != (B,):
                raise ValueError(f"keys must have shape ({B},), got {tuple(keys.shape)}")
            device = keys.device
        elif generator is not None and device is None:
            device = generator.device
        self.device = device
        self.stream = 0

    def __call__(self, n: int) -> Tensor:
        """(B, n) uniforms in [0, 1)."""
        if self.keys is not None:
            self.stream += 1
            return hash_uniform(self.keys, self.stream, n)
        return torch.rand(self.B, n, generator=self.generator, device=self.device)


def _random_subset(noise: _Noise, n: int, k: int) -> Tensor:
    """(B, k) distinct indices in [0, n), a uniform random k-subset per sample."""
    return noise(n).argsort(dim=1)[:, :k]


def _block_lengths(noise: _Noise, K: int, lo: int, hi: int) -> Tensor:
    """(B, M) span lengths (0 = unused) with every row summing to exactly K.

    Lengths are drawn i.i.d. uniform in [lo, hi] and kept while their running total stays
    <= K. A remainder r = K - total with r >= lo becomes one more span; 0 < r < lo is spread as
    +1's over the kept spans that are below ``hi`` (earliest first), so all lengths stay in
    [lo, hi]. Only when that cannot fit (lo close to hi, or K < lo) does a span shorter than
    ``lo`` remain, so the count is still exact.
    """
    M = K // lo + 1
    L = lo + (noise(M) * (hi - lo + 1)).floor().to(torch.int64).clamp_max(hi - lo)  # (B, M)
    cum = L.cumsum(1)
    keep = cum <= K
    L = L * keep
    r = K - L.sum(1, keepdim=True)  # (B, 1), 0 <= r < hi
    room = (hi - L) * keep
    small = (r > 0) & (r < lo)
    fits = small & (room.sum(1, keepdim=True) >= r)
    before = room.cumsum(1) - room
    inc = torch.minimum((r - before).clamp_min(0), room) * fits
    L = L + inc
    extra = torch.where(fits, torch.zeros_like(r), r)  # the remainder that becomes its own span
    first_free = keep.sum(1, keepdim=True)  # index of the first unused slot (< M: see M)
    slot = torch.arange(M, device=L.device).unsqueeze(0) == first_free
    return L + slot * extra


def _paint(starts: Tensor, lengths: Tensor, T: int) -> Tensor:
    """(B, T) bool from span starts/lengths (B, M); zero-length spans paint nothing."""
    B = starts.shape[0]
    d = torch.zeros(B, T + 1, dtype=torch.int32, device=starts.device)
    s = starts.clamp(0, T)
    e = (starts + lengths).clamp(0, T)
    ones = torch.ones_like(s, dtype=torch.int32)
    d.scatter_add_(1, s, ones)
    d.scatter_add_(1, e, -ones)
    return d.cumsum(1)[:, :T] > 0


def _block_mask(noise: _Noise, B: int, T: int, cfg: MaskConfig) -> Tensor:
    K = masked_count(T, cfg)
    L = _block_lengths(noise, K, cfg.block_min, cfg.block_max)  # (B, M)
    M = L.shape[1]
    slots = T - K + 1  # spans + gaps: m spans need m distinct slots in [0, slots)
    worst = K // cfg.block_min + 1
    if worst > slots:
        raise ValueError(
            f"block masking of {K} of {T} steps with spans >= {cfg.block_min} cannot keep spans "
            f"apart; lower ratio or raise block_min"
        )
    used = L > 0
    m = used.sum(1, keepdim=True)
    c = _random_subset(noise, slots, min(M, slots))  # (B, <=M) distinct slots
    if c.shape[1] < M:  # pad; padded slots are never used (m <= worst <= slots)
        c = torch.cat([c, c.new_full((B, M - c.shape[1]), slots)], 1)
    rank = torch.arange(M, device=c.device).unsqueeze(0)
    c = torch.where(rank < m, c, slots + T).sort(1).values  # first m sorted, unused last
    # used spans are a prefix of L (the remainder span sits right after the kept ones)
    starts = c + (L.cumsum(1) - L)  # start_i = c_i + sum_{j<i} L_j: gaps >= 1 between spans
    return _paint(starts, L, T)


def make_mask(
    B: int,
    T: int,
    cfg: MaskConfig,
    generator: torch.Generator | None = None,
    *,
    device: torch.device | str | None = None,
    keys: Tensor | None = None,
) -> Tensor:
    """(B, T) bool mask, True = masked (all features of that step).

    Noise source: ``keys`` (B,) int64 -> deterministic per-sample hash (eval; RNG untouched);
    else ``generator`` if given; else torch's global RNG (training).
    """
    if T < 1 or B < 0:
        raise ValueError(f"need B >= 0 and T >= 1, got B={B}, T={T}")
    noise = _Noise(B, torch.device(device) if device is not None else None, generator, keys)
    dev = noise.device
    match cfg.strategy:
        case "random":
            idx = _random_subset(noise, T, masked_count(T, cfg))
            mask = torch.zeros(B, T, dtype=torch.bool, device=dev)
            return mask.scatter_(1, idx, True)
        case "block":
            return _block_mask(noise, B, T, cfg)
        case "patch":
            n_patches = T // cfg.patch_size
            if n_patches == 0:
                raise ValueError(f"patch_size {cfg.patch_size} exceeds the sequence length {T}")
            k = masked_count(T, cfg) // cfg.patch_size
            idx = _random_subset(noise, n_patches, k)
            pm = torch.zeros(B, n_patches, dtype=torch.bool, device=dev).scatter_(1, idx, True)
            mask = pm.repeat_interleave(cfg.patch_size, dim=1)
            tail = T - mask.shape[1]
            return torch.cat([mask, mask.new_zeros(B, tail)], 1) if tail else mask
    raise ValueError(f"unknown mask strategy {cfg.strategy!r}")


def expected_fraction(T: int, cfg: MaskConfig) -> float:
    """The exact masked fraction of every sample (for reports and tests)."""
    return masked_count(T, cfg) / T

