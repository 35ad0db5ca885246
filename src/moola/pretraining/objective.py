"""Masked-reconstruction pretraining: the objective's ``prepare`` and the masked autoencoder.

How the mask reaches the model. The training loop calls ``model(batch["x"])`` with one tensor,
so ``MaskedReconstructionObjective.prepare`` sends the mask inside it: ``batch["x"]`` becomes
(B, T, F + 1), the augmented, normalised window (F channels, masked steps zeroed) plus a last
0/1 mask-indicator channel. ``MaskedAutoencoder.forward`` strips that channel, puts its learned
token (``MaskToken``) at the masked steps, encodes the F-wide result and reconstructs it. The
indicator never reaches the encoder, whose input stays F wide, so its weights (state-dict keys
``encoder.rnn.*``, the same names as in ``SequenceModel``) load by name into a classifier that
sees plain F-feature windows. Zeroing the masked steps in ``x`` as well means that even a model
that ignored the indicator could not read the hidden values.

Per batch, ``prepare(batch, training)``:
1. ``x`` = the raw window (e.g. ohlc4 log ratios), augmented when training (``Augmenter``:
   bar validity is defined on the raw scale), then ``normalize``d (e.g. x -> (x - mean) / std);
2. ``target`` = that window (what the model must rebuild);
3. ``mask`` (B, T) bool: drawn from torch's global RNG when training; at evaluation a hash of
   each window's content and ``eval_seed`` (``sample_keys``), so validation loss is computed on
   the same masks every epoch, whatever the batching, and the global RNG is left untouched;
4. ``x`` = target with masked steps zeroed, plus the indicator channel.

The loss is ``masked_mse`` over masked steps only (all features of a masked step).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from numpy.typing import ArrayLike
from torch import Tensor, nn

from moola.models import build_encoder
from moola.models.config import EncoderConfig, RNNEncoderConfig
from moola.models.heads import ReconstructionHead
from moola.pretraining.augment import Augmenter
from moola.pretraining.masking import MaskConfig, MaskToken, make_mask, sample_keys
from moola.training.objectives import Batch, ReconstructionObjective

__all__ = [
    "MaskedAutoencoder",
    "MaskedReconstructionObjective",
    "Normalize",
    "pretrain_model",
]


class Normalize:
    """``x -> (x - center) / scale`` per feature (last axis), e.g. from a fitted Standardizer.

    Tensors are moved to the input's device and dtype on first use and cached.
    """

    def __init__(self, center: ArrayLike | Tensor, scale: ArrayLike | Tensor) -> None:
        self.center = torch.as_tensor(np.asarray(center, dtype=np.float32)).reshape(-1)
        self.scale = torch.as_tensor(np.asarray(scale, dtype=np.float32)).reshape(-1)
        if self.center.shape != self.scale.shape:
            raise ValueError("center and scale must have one value per feature each")
        if not bool((self.scale > 0).all()):
            raise ValueError("scale must be positive")

    @classmethod
    def from_scaler(cls, scaler: object) -> Normalize:
        """From a fitted ``moola.datasets.normalize`` scaler (``center`` / ``scale_``)."""
        return cls(scaler.center, scaler.scale_)  # type: ignore[attr-defined]

    def __call__(self, x: Tensor) -> Tensor:
        if self.center.device != x.device or self.center.dtype != x.dtype:
            self.center = self.center.to(x.device, x.dtype)
            self.scale = self.scale.to(x.device, x.dtype)
        if x.shape[-1] != self.center.shape[0]:
            raise ValueError(f"normalize has {self.center.shape[0]} features, x has {x.shape[-1]}")
        return (x - self.center) / self.scale


class MaskedReconstructionObjective(ReconstructionObjective):
    """Masking (+ augmentation when training) in ``prepare``; masked MSE as the loss.

    ``batch["x"]`` must hold the RAW window (B, T, F); see the module docstring for what
    ``prepare`` writes (``x`` (B, T, F + 1), ``target``, ``mask``). Pair with
    ``MaskedAutoencoder``.
    """

    def __init__(
        self,
        mask: MaskConfig | None = None,
        augmenter: Augmenter | None = None,
        normalize: Callable[[Tensor], Tensor] | None = None,
        *,
        eval_seed: int = 0,
    ) -> None:
        self.mask_cfg = mask or MaskConfig()
        self.augmenter = augmenter
        self.normalize = normalize
        self.eval_seed = eval_seed

    def prepare(self, batch: Batch, training: bool) -> Batch:
        raw = batch["x"]
        if raw.ndim != 3:
            raise ValueError(f"expected raw windows (B, T, F), got shape {tuple(raw.shape)}")
        B, T, _ = raw.shape
        x = raw.float()
        if training and self.augmenter is not None:
            x = self.augmenter(x)
        if self.normalize is not None:
            x = self.normalize(x)
        if training:
            mask = make_mask(B, T, self.mask_cfg, device=x.device)
        else:
            mask = make_mask(B, T, self.mask_cfg, keys=sample_keys(raw, self.eval_seed))
        out = dict(batch)
        out["target"] = x
        out["mask"] = mask
        m = mask.unsqueeze(-1)
        out["x"] = torch.cat([x.masked_fill(m, 0.0), m.to(x.dtype)], -1)
        return out


class MaskedAutoencoder(nn.Module):
    """Encoder + learned mask token + per-bar reconstruction head.

    ``forward(x)`` takes (B, T, F + 1) whose last channel is the 0/1 mask indicator (what
    ``MaskedReconstructionObjective.prepare`` builds): masked steps get ``mask_token``, the
    indicator is dropped, and the F-wide result is encoded and reconstructed. A plain (B, T, F)
    input is encoded unmasked. Returns ``{"reconstruction": (B, T, F)}``.

    State-dict keys: ``encoder.*`` (``encoder.rnn.*`` for an RNN, as in ``SequenceModel``),
    ``mask_token.weight`` and ``head.fc.*``.
    """

    def __init__(self, encoder: nn.Module, head: nn.Module, n_features: int) -> None:
        super().__init__()
        enc_in = getattr(encoder, "input_size", n_features)
        if enc_in != n_features:
            raise ValueError(f"encoder input_size {enc_in} != n_features {n_features}")
        self.encoder = encoder
        self.mask_token = MaskToken(n_features)
        self.head = head
        self.n_features = n_features

    def split(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """(F-wide window with the token at masked steps, mask (B, T) bool)."""
        F_ = self.n_features
        if x.ndim != 3 or x.shape[-1] not in (F_, F_ + 1):
            raise ValueError(
                f"expected (B, T, {F_ + 1}) (features + mask indicator) or (B, T, {F_}), "
                f"got shape {tuple(x.shape)}"
            )
        if x.shape[-1] == F_:
            return x, torch.zeros(x.shape[:2], dtype=torch.bool, device=x.device)
        mask = x[..., F_] > 0.5
        return self.mask_token(x[..., :F_], mask), mask

    def encode(self, x: Tensor) -> Tensor:
        """Per-bar representations (B, T, D) of a (masked or plain) window."""
        return self.encoder(self.split(x)[0])

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        return self.head(self.encode(x))

    def encoder_state_dict(self) -> dict[str, Tensor]:
        """``encoder.*`` weights only, named as in ``SequenceModel`` (load with strict=False)."""
        return {k: v for k, v in self.state_dict().items() if k.startswith("encoder.")}


def pretrain_model(encoder_cfg: EncoderConfig | None = None, n_features: int = 4) -> MaskedAutoencoder:
    """A ``MaskedAutoencoder``; default encoder: BiLSTM, 2 layers, 128 units per direction."""
    if encoder_cfg is None:
        encoder_cfg = RNNEncoderConfig(input_size=n_features, hidden=128, layers=2, bidirectional=True)
    if encoder_cfg.input_size != n_features:
        raise ValueError(f"encoder_cfg.input_size {encoder_cfg.input_size} != n_features {n_features}")
    encoder = build_encoder(encoder_cfg)
    return MaskedAutoencoder(encoder, ReconstructionHead(encoder.out_dim, n_features), n_features)
