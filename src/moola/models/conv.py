"""Convolutional encoders: InceptionTime and ResNet-1D, (B, T, F) bars in, (B, T, D) out.

Both are the strong baselines of time-series classification on small labeled sets (Ismail
Fawaz et al. 2019, "Deep learning for time series classification: a review"):

* InceptionTime (Ismail Fawaz et al. 2020): modules of a 1x1 bottleneck, then parallel convs
  of several kernel sizes (39/19/9 here) beside a max-pool + 1x1 branch, concatenated, batch
  norm, ReLU; a residual shortcut every 3 modules.
* ResNet-1D (Wang et al. 2017): residual blocks of three convs (kernels 8/5/3) with 64/128/128
  filters, each conv followed by batch norm (and ReLU, except before the shortcut is added).

Every conv pads 'same' with stride 1 (SameConv1d), so the time axis is never shortened and the output keeps
one vector per bar: every head of moola.models.heads (pooling classifier, per-bar pointer,
direction, regression, reconstruction) reads it unchanged. 'same' padding looks both ways, so
these encoders are not causal: a bar's output sees up to kernel // 2 later bars (19 for a
39-bar kernel) and, stacked, much more. The papers pool by global average (``mean``).

Variable-length batches: ``forward(x, valid)`` with ``valid`` (B, T) bool, right-padded (True =
a real step). Padded steps are zeroed at the input and after every conv layer, which is exactly
the zero 'same' padding a conv sees at the end of an unpadded series, so the output at a real
step is the one the series alone would give. Batch norm (``MaskedBatchNorm1d``) takes its
training statistics over real steps only. Convs carry no bias (batch norm follows each one).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "InceptionModule",
    "InceptionTimeEncoder",
    "MaskedBatchNorm1d",
    "ResNet1DBlock",
    "ResNet1DEncoder",
    "SameConv1d",
]


class SameConv1d(nn.Conv1d):
    """Bias-free stride-1 conv whose output keeps the input's length T: zero padding of
    (k - 1) // 2 steps before and the rest after (PyTorch's and Keras' 'same'), done by hand
    for an even k so PyTorch neither warns nor copies twice."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int) -> None:
        odd = kernel_size % 2 == 1
        super().__init__(in_channels, out_channels, kernel_size, padding=(kernel_size - 1) // 2 if odd else 0,
                         bias=False)
        before = (kernel_size - 1) // 2
        self.extra = None if odd else (before, kernel_size - 1 - before)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, C_in, T) -> (B, C_out, T)
        return super().forward(x if self.extra is None else F.pad(x, self.extra))


def _zero_padding(h: torch.Tensor, m: torch.Tensor | None) -> torch.Tensor:
    """h (B, C, T) with padded steps set to 0; m (B, 1, T) float, 1 = real step (None: all real)."""
    return h if m is None else h * m


class MaskedBatchNorm1d(nn.BatchNorm1d):
    """nn.BatchNorm1d over (B, C, T) whose training statistics skip padded steps.

    With ``m`` None (or in eval mode, which uses the running statistics) it is nn.BatchNorm1d
    itself; the parameters and buffers are BatchNorm1d's, so state dicts are interchangeable.
    """

    def forward(self, x: torch.Tensor, m: torch.Tensor | None = None) -> torch.Tensor:
        batch_stats = self.training or not self.track_running_stats
        if m is None or not batch_stats:
            return super().forward(x)
        # x (B, C, T), m (B, 1, T): mean and biased variance over the real (b, t) only, in at
        # least float32 (bf16 sums over B * T steps would lose the statistics)
        dtype = torch.promote_types(x.dtype, torch.float32)
        xf, mf = x.to(dtype), m.to(dtype)
        n = mf.sum()
        mean = (xf * mf).sum(dim=(0, 2)) / n  # (C,)
        var = (((xf - mean[None, :, None]) ** 2) * mf).sum(dim=(0, 2)) / n  # (C,)
        if self.training and self.track_running_stats:
            assert self.running_mean is not None and self.running_var is not None
            assert self.num_batches_tracked is not None
            with torch.no_grad():
                self.num_batches_tracked.add_(1)
                momentum = (1.0 / float(self.num_batches_tracked) if self.momentum is None
                            else self.momentum)
                unbiased = var * (n / (n - 1).clamp_min(1.0))  # running_var is unbiased, as in PyTorch
                self.running_mean.lerp_(mean.to(self.running_mean.dtype), momentum)
                self.running_var.lerp_(unbiased.to(self.running_var.dtype), momentum)
        out = (xf - mean[None, :, None]) * torch.rsqrt(var + self.eps)[None, :, None]
        if self.affine:
            out = out * self.weight[None, :, None] + self.bias[None, :, None]
        return out.to(x.dtype)


# --- InceptionTime ----------------------------------------------------------------------------


class InceptionModule(nn.Module):
    """Bottleneck 1x1 -> parallel 'same' convs (one per kernel size) beside max-pool -> 1x1,
    concatenated -> batch norm -> ReLU: (B, C_in, T) -> (B, filters * (len(kernels) + 1), T).

    As in the reference implementation, the bottleneck is skipped for a one-channel input
    (``bottleneck`` 0: never used).
    """

    def __init__(self, in_channels: int, filters: int, kernel_sizes: Sequence[int], bottleneck: int) -> None:
        super().__init__()
        use_bottleneck = bottleneck > 0 and in_channels > 1
        width = bottleneck if use_bottleneck else in_channels
        # no bias: a zero (padded) step stays zero through the bottleneck
        self.bottleneck = nn.Conv1d(in_channels, bottleneck, 1, bias=False) if use_bottleneck else None
        self.convs = nn.ModuleList(
            SameConv1d(width, filters, k) for k in kernel_sizes
        )
        self.pool = nn.MaxPool1d(3, stride=1, padding=1)  # pads with -inf, as max-pooling should
        self.pool_conv = nn.Conv1d(in_channels, filters, 1, bias=False)
        self.out_channels = filters * (len(kernel_sizes) + 1)
        self.bn = MaskedBatchNorm1d(self.out_channels)

    def forward(self, x: torch.Tensor, m: torch.Tensor | None = None) -> torch.Tensor:
        # x (B, C_in, T), zero at padded steps; m (B, 1, T) float or None
        z = x if self.bottleneck is None else self.bottleneck(x)  # (B, bottleneck, T)
        branches = [conv(z) for conv in self.convs]  # each (B, filters, T)
        if m is None:
            pooled = self.pool(x)  # (B, C_in, T)
        else:  # a padded step must look like the -inf beyond the end of the series, not a 0
            pooled = self.pool(x.masked_fill(m == 0, float("-inf"))).masked_fill(m == 0, 0.0)
        branches.append(self.pool_conv(pooled))  # (B, filters, T)
        h = torch.cat(branches, dim=1)  # (B, out_channels, T)
        return _zero_padding(F.relu(self.bn(h, m)), m)


class _Shortcut(nn.Module):
    """1x1 conv + batch norm: the residual path of a block. ``conv`` "always" (InceptionTime)
    or "if_wider" (ResNet-1D: batch norm alone where the width does not change)."""

    def __init__(self, in_channels: int, out_channels: int,
                 conv: Literal["always", "if_wider"] = "always") -> None:
        super().__init__()
        skip = conv == "if_wider" and in_channels == out_channels
        self.conv = None if skip else nn.Conv1d(in_channels, out_channels, 1, bias=False)
        self.bn = MaskedBatchNorm1d(out_channels)

    def forward(self, x: torch.Tensor, m: torch.Tensor | None = None) -> torch.Tensor:
        return self.bn(x if self.conv is None else self.conv(x), m)  # (B, out_channels, T)


class InceptionTimeEncoder(nn.Module):
    """``depth`` InceptionModules, a residual shortcut (1x1 conv + BN, added, ReLU) over every 3:
    (B, T, F) -> (B, T, filters * (len(kernel_sizes) + 1)). A trailing group of fewer than 3
    modules has no shortcut, as in the reference implementation."""

    def __init__(
        self,
        input_size: int,
        filters: int = 32,
        depth: int = 6,
        kernel_sizes: Sequence[int] = (39, 19, 9),
        bottleneck: int = 32,
        residual: bool = True,
    ) -> None:
        super().__init__()
        self.input_size = input_size
        self.residual = residual
        modules, shortcuts = [], []
        width = res_width = input_size
        for d in range(depth):
            module = InceptionModule(width, filters, kernel_sizes, bottleneck)
            modules.append(module)
            width = module.out_channels
            if residual and d % 3 == 2:
                shortcuts.append(_Shortcut(res_width, width))
                res_width = width
        self.blocks = nn.ModuleList(modules)
        self.shortcuts = nn.ModuleList(shortcuts)
        self._out_dim = width

    @property
    def out_dim(self) -> int:
        return self._out_dim

    def forward(self, x: torch.Tensor, valid: torch.Tensor | None = None) -> torch.Tensor:
        m = None if valid is None else valid[:, None, :].to(x.dtype)  # (B, 1, T)
        h = _zero_padding(x.transpose(1, 2), m)  # (B, F, T)
        res = h
        for d, module in enumerate(self.blocks):
            h = module(h, m)  # (B, C, T)
            if self.residual and d % 3 == 2:
                h = _zero_padding(F.relu(h + self.shortcuts[d // 3](res, m)), m)
                res = h
        return h.transpose(1, 2)  # (B, T, C)


# --- ResNet-1D ----------------------------------------------------------------------------------


class ResNet1DBlock(nn.Module):
    """conv k1 -> BN -> ReLU -> conv k2 -> BN -> ReLU -> conv k3 -> BN, plus the shortcut
    (1x1 conv + BN when the width changes, else BN), added, ReLU: (B, C_in, T) -> (B, filters, T)."""

    def __init__(self, in_channels: int, filters: int, kernel_sizes: Sequence[int]) -> None:
        super().__init__()
        widths = [in_channels] + [filters] * len(kernel_sizes)
        self.convs = nn.ModuleList(
            SameConv1d(widths[i], filters, k) for i, k in enumerate(kernel_sizes)
        )
        self.bns = nn.ModuleList(MaskedBatchNorm1d(filters) for _ in kernel_sizes)
        self.shortcut = _Shortcut(in_channels, filters, conv="if_wider")

    def forward(self, x: torch.Tensor, m: torch.Tensor | None = None) -> torch.Tensor:
        # x (B, C_in, T), zero at padded steps; m (B, 1, T) float or None
        h = x
        last = len(self.convs) - 1
        for i, (conv, bn) in enumerate(zip(self.convs, self.bns, strict=True)):
            h = bn(conv(h), m)  # (B, filters, T)
            if i < last:
                h = _zero_padding(F.relu(h), m)
        return _zero_padding(F.relu(h + self.shortcut(x, m)), m)  # (B, filters, T)


class ResNet1DEncoder(nn.Module):
    """One ResNet1DBlock per entry of ``filters`` (default 64/128/128), each with the convs of
    ``kernel_sizes`` (default 8/5/3): (B, T, F) -> (B, T, filters[-1])."""

    def __init__(
        self, input_size: int, filters: Sequence[int] = (64, 128, 128),
        kernel_sizes: Sequence[int] = (8, 5, 3),
    ) -> None:
        super().__init__()
        if not filters or not kernel_sizes:
            raise ValueError("a ResNet-1D needs at least one block and one conv per block")
        self.input_size = input_size
        widths = [input_size, *filters]
        self.blocks = nn.ModuleList(
            ResNet1DBlock(widths[i], f, kernel_sizes) for i, f in enumerate(filters)
        )
        self._out_dim = filters[-1]

    @property
    def out_dim(self) -> int:
        return self._out_dim

    def forward(self, x: torch.Tensor, valid: torch.Tensor | None = None) -> torch.Tensor:
        m = None if valid is None else valid[:, None, :].to(x.dtype)  # (B, 1, T)
        h = _zero_padding(x.transpose(1, 2), m)  # (B, F, T)
        for block in self.blocks:
            h = block(h, m)  # (B, C, T)
        return h.transpose(1, 2)  # (B, T, C)
