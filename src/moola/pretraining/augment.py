"""On-the-fly time-series augmentation for pretraining, and k views per window per epoch.

``Augmenter`` works on RAW (B, T, F) windows, before any normalisation, so the OHLC validity of
an ``ohlc4`` window (columns 0..3 = open, high, low, close as log ratios to the previous close;
a valid bar has high >= max(open, close) and low <= min(open, close)) is a property of the
values it sees. The pretraining objective normalises after augmenting.

Augmentations, each applied to a sample with probability ``p`` (independently), in this order,
all batched, all drawing from torch's global RNG (so a resumed run replays them):

* time warp: the time axis is resampled along a smooth, strictly increasing curve (cumulative
  sum of a positive knot-spline "speed", ``time_warp_sigma``), by linear interpolation between
  neighbouring bars, with the same weights for every channel. An interpolated bar is a convex
  combination ``w0 * bar_i + w1 * bar_(i+1)`` (w >= 0, computed as two products and one sum),
  so ``h >= o`` etc. carry over: every rounded product and sum is monotone in its inputs.
* magnitude warp: every bar is multiplied by a smooth positive curve over time (Catmull-Rom
  spline through ``knots + 2`` knots ~ N(1, ``magnitude_warp_sigma``), floored at 0.05), the
  SAME factor for all features of a bar: a positive factor keeps every ordering of a bar.
* scaling: one factor ~ N(1, ``scaling_sigma``) per sample, floored at 0.05 (positive).
* jitter: additive Gaussian noise with standard deviation ``jitter_sigma`` times the sample's
  own per-feature standard deviation over time (scale-free: the same setting suits daily and
  minute bars). Independent noise per feature can break a bar, so with ``ohlc`` the bar is
  repaired afterwards: ``h = max(o, h, c)`` and ``l = min(o, l, c)``.

Views. ``views = k`` shows every window k times per epoch, each time freshly augmented, without
copying windows: ``ViewsData(base, k)`` has length ``n * k`` and batch ``idx`` gathers base rows
``idx % n``, so only an index tensor the size of the batch is ever built.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Annotated

import torch
from pydantic import Field, NonNegativeFloat
from torch import Tensor

from moola.config import MAX_REPEATS, Bars, Config
from moola.features import get_feature_set
from moola.training.data import TensorData, num_batches

__all__ = [
    "OHLC_NAMES",
    "AugmentConfig",
    "Augmenter",
    "ViewsData",
    "is_ohlc",
    "jitter",
    "magnitude_warp",
    "ohlc_valid",
    "repair_ohlc",
    "scale",
    "smooth_curve",
    "time_warp",
]

# the ohlc4 feature set's columns, the only layout whose bars the jitter repair understands
OHLC_NAMES: tuple[str, ...] = tuple(get_feature_set("ohlc4").names)
MIN_FACTOR = 0.05  # floor of every multiplicative factor: factors stay positive


class AugmentConfig(Config):
    """Augmentation strengths (0 disables one), probability per augmentation, views per window."""

    jitter_sigma: NonNegativeFloat = 0.03  # x the sample's per-feature std over time
    scaling_sigma: NonNegativeFloat = 0.1
    magnitude_warp_sigma: NonNegativeFloat = 0.2
    time_warp_sigma: NonNegativeFloat = 0.12
    knots: Bars = 4  # interior knots of the warp curves (knots + 2 in all)
    p: Annotated[float, Field(ge=0.0, le=1.0)] = 0.5  # per augmentation, per sample
    # augmented views of every window per epoch (see ViewsData)
    views: Annotated[int, Field(ge=1, le=MAX_REPEATS)] = 1
    # columns 0..3 are ohlc4 log ratios, so bars are repaired after jitter; None: detected from
    # the feature names the Augmenter is given (never assumed for inputs that are not OHLC)
    ohlc: bool | None = None


def is_ohlc(feature_names: Sequence[str] | None) -> bool:
    """True when columns 0..3 are ohlc4's open/high/low/close log ratios (None: unknown, False)."""
    return feature_names is not None and tuple(feature_names[:4]) == OHLC_NAMES


# --- building blocks -------------------------------------------------------------------------------


def ohlc_valid(x: Tensor) -> Tensor:
    """(B, T) bool: high >= max(open, close) and low <= min(open, close) (columns 0..3)."""
    o, h, lo, c = x[..., 0], x[..., 1], x[..., 2], x[..., 3]
    return (h >= torch.maximum(o, c)) & (lo <= torch.minimum(o, c))


def repair_ohlc(x: Tensor) -> Tensor:
    """A copy with ``h = max(o, h, c)`` and ``l = min(o, l, c)`` (columns 0..3); rest untouched."""
    o, h, lo, c = x[..., 0], x[..., 1], x[..., 2], x[..., 3]
    out = x.clone()
    out[..., 1] = torch.maximum(torch.maximum(o, h), c)
    out[..., 2] = torch.minimum(torch.minimum(o, lo), c)
    return out


def smooth_curve(B: int, T: int, knots: int, sigma: float, device: torch.device | None = None,
                 dtype: torch.dtype = torch.float32) -> Tensor:
    """(B, T) smooth random curves: Catmull-Rom spline through ``knots + 2`` evenly spaced knot
    values ~ N(1, sigma), floored at ``MIN_FACTOR`` (positive)."""
    n = knots + 2
    y = 1.0 + sigma * torch.randn(B, n, device=device, dtype=dtype)  # knot values
    yp = torch.cat([y[:, :1], y, y[:, -1:]], 1)  # replicate ends: (B, n + 2)
    t = torch.linspace(0, n - 1, T, device=device, dtype=dtype)  # knot units
    seg = t.floor().clamp(0, n - 2).to(torch.int64)  # segment [seg, seg + 1]
    u = (t - seg.to(dtype)).unsqueeze(0)  # (1, T)
    p0, p1, p2, p3 = (yp[:, seg + k] for k in range(4))  # knots seg-1 .. seg+2 (padded index)
    curve = 0.5 * (2 * p1 + (p2 - p0) * u + (2 * p0 - 5 * p1 + 4 * p2 - p3) * u**2
                   + (3 * p1 - p0 - 3 * p2 + p3) * u**3)
    return curve.clamp_min(MIN_FACTOR)


def jitter(x: Tensor, sigma: float) -> Tensor:
    """Add N(0, (sigma * per-sample per-feature std over time)^2) noise (no bar repair)."""
    std = x.std(dim=1, keepdim=True, unbiased=False)  # (B, 1, F)
    return x + sigma * std * torch.randn_like(x)


def scale(x: Tensor, sigma: float) -> Tensor:
    """Multiply each sample by one factor ~ N(1, sigma), floored at ``MIN_FACTOR``."""
    f = (1.0 + sigma * torch.randn(x.shape[0], 1, 1, device=x.device, dtype=x.dtype))
    return x * f.clamp_min(MIN_FACTOR)


def magnitude_warp(x: Tensor, sigma: float, knots: int = 4) -> Tensor:
    """Multiply each bar by a smooth positive curve over time, shared by all its features."""
    B, T, _ = x.shape
    return x * smooth_curve(B, T, knots, sigma, x.device, x.dtype).unsqueeze(-1)


def time_warp(x: Tensor, sigma: float, knots: int = 4) -> Tensor:
    """Resample the time axis along a smooth strictly increasing map of [0, T-1] onto itself.

    Bar t of the result is ``w0 * x[i] + w1 * x[i + 1]`` with w0, w1 >= 0 (same for all
    channels), i.e. linear interpolation at the warped position.
    """
    B, T, _ = x.shape
    if T < 2:
        return x.clone()
    speed = smooth_curve(B, T - 1, knots, sigma, x.device, torch.float32)  # (B, T-1) > 0
    pos = torch.cat([speed.new_zeros(B, 1), speed.cumsum(1)], 1)  # (B, T), strictly increasing
    pos = pos * ((T - 1) / pos[:, -1:])
    pos[:, -1] = T - 1  # exact end points: the first and last bars are kept as they are
    i0 = pos.floor().clamp(0, T - 2).to(torch.int64)
    a = (pos - i0.to(pos.dtype)).clamp(0.0, 1.0).to(x.dtype).unsqueeze(-1)  # (B, T, 1)
    idx = i0.unsqueeze(-1).expand(-1, -1, x.shape[2])
    x0 = torch.gather(x, 1, idx)
    x1 = torch.gather(x, 1, idx + 1)
    return x0 * (1.0 - a) + x1 * a


# --- the augmenter ----------------------------------------------------------------------------------


class Augmenter:
    """Applies the configured augmentations to raw (B, T, F) windows (see module docstring).

    Returns a new tensor; the input is never modified. Draws only from torch's global RNG.
    """

    def __init__(self, cfg: AugmentConfig | None = None,
                 feature_names: Sequence[str] | None = None) -> None:
        self.cfg = cfg or AugmentConfig()
        self.feature_names = feature_names
        self.ohlc = is_ohlc(feature_names) if self.cfg.ohlc is None else self.cfg.ohlc
        if self.cfg.ohlc and feature_names is not None and not is_ohlc(feature_names):
            raise ValueError(f"augment.ohlc is true but the first feature columns are "
                             f"{list(feature_names[:4])}, not {list(OHLC_NAMES)}: set augment.ohlc to "
                             "null (detect) or false")

    @property
    def enabled(self) -> bool:
        c = self.cfg
        return c.p > 0 and any(s > 0 for s in (c.jitter_sigma, c.scaling_sigma,
                                                 c.magnitude_warp_sigma, c.time_warp_sigma))

    def _maybe(self, x: Tensor, aug: Tensor) -> Tensor:
        """``aug`` for the samples drawn with probability p, ``x`` for the others."""
        if self.cfg.p >= 1.0:
            return aug
        take = torch.rand(x.shape[0], 1, 1, device=x.device) < self.cfg.p
        return torch.where(take, aug, x)

    def __call__(self, x: Tensor) -> Tensor:
        c = self.cfg
        if x.ndim != 3:
            raise ValueError(f"expected (B, T, F) windows, got shape {tuple(x.shape)}")
        if self.ohlc and x.shape[-1] < 4:
            raise ValueError(f"ohlc=True needs columns 0..3 = o, h, l, c; got {x.shape[-1]} features")
        if not self.enabled:
            return x.clone()
        if c.time_warp_sigma > 0:
            x = self._maybe(x, time_warp(x, c.time_warp_sigma, c.knots))
        if c.magnitude_warp_sigma > 0:
            x = self._maybe(x, magnitude_warp(x, c.magnitude_warp_sigma, c.knots))
        if c.scaling_sigma > 0:
            x = self._maybe(x, scale(x, c.scaling_sigma))
        if c.jitter_sigma > 0:
            j = jitter(x, c.jitter_sigma)
            x = self._maybe(x, repair_ohlc(j) if self.ohlc else j)
        return x


# --- k views per window --------------------------------------------------------------------------


class ViewsData:
    """``k`` views of every window of ``base`` per epoch, without copying windows.

    A ``moola.training.BatchSource``: length ``n * k``; sample index i is base row ``i % n``.
    With an epoch shuffle over ``n * k`` indices each window appears k times per epoch,
    augmented afresh each time by the objective's ``prepare``.
    """

    def __init__(self, base: TensorData, k: int) -> None:
        if k < 1:
            raise ValueError(f"views k must be >= 1, got {k}")
        self.base = base
        self.k = k
        self.n = len(base) * k

    @property
    def base_n(self) -> int:
        return len(self.base)

    def __len__(self) -> int:
        return self.n

    def to(self, device: torch.device) -> ViewsData:
        return ViewsData(self.base.to(device), self.k)

    def batch(self, idx: Tensor) -> dict[str, Tensor]:
        if self.base_n == 0:
            raise IndexError("ViewsData over an empty base")
        return self.base.batch(idx % self.base_n)

    def batches(self, order: Tensor, batch_size: int, start: int = 0) -> Iterator[dict[str, Tensor]]:
        """Batches over ``order`` from batch number ``start`` (as ``TensorData.batches``)."""
        for b in range(start, num_batches(len(order), batch_size)):
            yield self.batch(order[b * batch_size:(b + 1) * batch_size])
