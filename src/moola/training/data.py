"""What the training loop reads: the ``BatchSource`` protocol, and ``TensorData``, in-memory
contiguous tensors batched by index gathers with no worker processes.

Workers buy nothing when the data is already a tensor in memory, and fork-plus-threads is
how DataLoaders deadlock; so batches are plain index gathers on the device.

Call order the Trainer follows on any source (and the only methods it uses):
1. ``len(source)``: the number of samples N; an epoch's order is a permutation of ``range(N)``;
2. ``source.to(device)``: a source whose batches live on ``device`` (may return ``self``);
3. ``source.batches(order, batch_size, start)``: the batches over ``order`` (a 1-D int64 tensor
   of sample indices) from batch number ``start`` on, each a ``Batch`` (str -> Tensor) with at
   least ``"x"``; batch b holds samples ``order[b * batch_size:(b + 1) * batch_size]``, so a
   resumed epoch skips ``start`` batches and sees exactly the samples it would have.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Protocol, runtime_checkable

import numpy as np
import torch
from torch import Tensor

__all__ = ["Batch", "BatchSource", "DataGuardError", "TensorData", "epoch_order", "num_batches"]

Batch = dict[str, Tensor]


@runtime_checkable
class BatchSource(Protocol):
    """Anything the Trainer can train or evaluate on (see the module docstring for the order)."""

    def __len__(self) -> int: ...

    def to(self, device: torch.device) -> BatchSource: ...

    def batches(self, order: Tensor, batch_size: int, start: int = 0) -> Iterator[Batch]: ...


class DataGuardError(TypeError):
    """Inputs a model must never see: object dtype, non-float features, NaN/inf."""


def _as_tensor(name: str, value: np.ndarray | Tensor, *, float_required: bool) -> Tensor:
    if isinstance(value, np.ndarray):
        if value.dtype == object:
            raise DataGuardError(
                f"'{name}' is an object-dtype array: convert it with np.asarray(x, dtype=np.float32) "
                "after fixing the rows that made it object (mixed types or ragged windows)"
            )
        if float_required and not np.issubdtype(value.dtype, np.floating):
            raise DataGuardError(
                f"'{name}' has dtype {value.dtype}; model inputs must be float32 "
                "(cast explicitly so integer prices or booleans are not silently reinterpreted)"
            )
        t = torch.from_numpy(np.ascontiguousarray(value))
    elif isinstance(value, Tensor):
        if float_required and not value.is_floating_point():
            raise DataGuardError(f"'{name}' has dtype {value.dtype}; model inputs must be floating point")
        t = value.contiguous()
    else:
        raise DataGuardError(f"'{name}' must be a numpy array or tensor, got {type(value).__name__}")
    if float_required:
        t = t.float()
        bad = ~torch.isfinite(t)
        if bad.any():
            idx = tuple(int(i) for i in bad.nonzero()[0])
            raise DataGuardError(
                f"'{name}' holds {int(bad.sum())} NaN/inf value(s), first at index {idx}: "
                "drop warm-up rows or fill them before training"
            )
    return t


class TensorData:
    """Named tensors sharing the first dimension. ``x`` is required and must be float."""

    def __init__(self, tensors: Mapping[str, np.ndarray | Tensor]) -> None:
        if "x" not in tensors:
            raise KeyError("TensorData needs an 'x' tensor (B, T, F)")
        self.tensors: dict[str, Tensor] = {}
        for k, v in tensors.items():
            self.tensors[k] = _as_tensor(k, v, float_required=(k in ("x", "target")))
        n = {k: t.shape[0] for k, t in self.tensors.items()}
        if len(set(n.values())) != 1:
            raise ValueError(f"tensors differ in length: {n}")
        self.n = next(iter(n.values()))

    def __len__(self) -> int:
        return self.n

    @classmethod
    def _trusted(cls, tensors: dict[str, Tensor]) -> TensorData:
        """Wrap tensors that came from a checked TensorData (no second round of guards)."""
        out = cls.__new__(cls)
        out.tensors = tensors
        out.n = next(iter(tensors.values())).shape[0]
        return out

    def to(self, device: torch.device) -> TensorData:
        return TensorData._trusted({k: v.to(device) for k, v in self.tensors.items()})

    def subset(self, idx: Tensor) -> TensorData:
        """The rows ``idx`` (gathered), e.g. a fixed sample of the training set."""
        return TensorData._trusted(self.batch(idx))

    def batch(self, idx: Tensor) -> Batch:
        return {k: v.index_select(0, idx.to(v.device)) for k, v in self.tensors.items()}

    def batches(self, order: Tensor, batch_size: int, start: int = 0) -> Iterator[Batch]:
        """Batches over ``order`` from batch number ``start`` (so a resumed epoch skips ahead)."""
        for b in range(start, num_batches(len(order), batch_size)):
            yield self.batch(order[b * batch_size:(b + 1) * batch_size])


def num_batches(n: int, batch_size: int) -> int:
    return (n + batch_size - 1) // batch_size


def epoch_order(n: int, seed: int, epoch: int) -> Tensor:
    """The shuffle of one epoch depends only on (seed, epoch): a resumed run replays it."""
    g = torch.Generator()
    g.manual_seed(seed * 1_000_003 + epoch)
    return torch.randperm(n, generator=g)
