"""Variable-length batches: right-padded series and their (B, T) ``valid`` masks.

A batch of series of different lengths is stored right-padded to a common T: row b holds its
``lengths[b]`` real bars at steps 0 .. lengths[b] - 1, then padding (any values). The model reads
``batch["valid"]`` (B, T) bool, True = a real step, so every row is a run of True followed by a
run of False (at least one True). The key is ``valid`` and not ``mask``: ``batch["mask"]`` (B, T)
already means "steps hidden from the model" (True = masked) in masked-reconstruction
pretraining (moola.pretraining), the opposite convention.

Encoders and pooling heads take ``valid`` as an optional argument (None: every step is real)
and never let a padded step change the output at a real one.
"""

from __future__ import annotations

import torch

__all__ = ["check_valid", "padded_valid", "valid_lengths"]


def valid_lengths(valid: torch.Tensor) -> torch.Tensor:
    """Real steps per row, (B,) int64, of a right-padded (B, T) valid mask."""
    return valid.sum(dim=1)


def padded_valid(lengths: torch.Tensor, T: int) -> torch.Tensor:
    """The (B, T) valid mask of right-padded rows of ``lengths`` (B,) real steps."""
    return torch.arange(T, device=lengths.device)[None, :] < lengths[:, None]


def check_valid(valid: object, x: torch.Tensor) -> torch.Tensor:
    """``valid`` checked against x (B, T, F): bool, (B, T), each row a non-empty run of True
    then only False (right padding). Returns it; anything else is a clear error."""
    if not isinstance(valid, torch.Tensor) or valid.dtype != torch.bool:
        got = valid.dtype if isinstance(valid, torch.Tensor) else type(valid).__name__
        raise TypeError(f"batch['valid'] must be a bool tensor (B, T), True = a real step; got {got}")
    if tuple(valid.shape) != tuple(x.shape[:2]):
        raise ValueError(f"batch['valid'] must have shape (B, T) = {tuple(x.shape[:2])} like x, "
                         f"got {tuple(valid.shape)}")
    if valid.device != x.device:
        raise ValueError(f"batch['valid'] is on {valid.device}, x on {x.device}")
    lengths = valid_lengths(valid)
    if bool((lengths == 0).any()):
        raise ValueError("batch['valid'] has a row without a real step; every series needs one")
    if not torch.equal(valid, padded_valid(lengths, valid.shape[1])):
        raise ValueError("batch['valid'] must be right padding: each row's real steps first (True), "
                         "then only padding (False)")
    return valid
