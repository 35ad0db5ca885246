"""Masked-reconstruction pretraining: the objective's ``prepare`` and the masked autoencoder.

How the mask reaches the model: as a named tensor of the batch (``model(batch)``, the contract
of every moola model). ``MaskedReconstructionObjective.prepare`` writes ``batch["mask"]`` (B, T)
bool next to the masked window ``batch["x"]`` (B, T, F); ``MaskedAutoencoder.forward`` puts its
learned token (``MaskToken``) at the masked steps, encodes the F-wide result and reconstructs
it. The encoder's input stays F wide, so its weights (state-dict keys ``encoder.rnn.*``, the
same names as in ``SequenceModel``) load by name into a classifier that sees plain F-feature
windows. The masked steps of ``x`` are zeroed as well, so even a model that ignored the mask
could not read the hidden values.

Per batch, ``prepare(batch, training)``:
1. ``x`` = the raw window (e.g. ohlc4 log ratios), augmented when training (``Augmenter``:
   bar validity is defined on the raw scale), then ``normalize``d (e.g. x -> (x - mean) / std);
2. ``target`` = that window (what the model must rebuild);
3. ``mask`` (B, T) bool: drawn from torch's global RNG when training; at evaluation a hash of
   each window's content and ``eval_seed`` (``sample_keys``), so validation loss is computed on
   the same masks every epoch, whatever the batching, and the global RNG is left untouched;
4. ``x`` = target with masked steps zeroed.

The loss is ``masked_mse`` over masked steps only (all features of a masked step).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

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
    ``prepare`` writes (``x`` (B, T, F) masked, ``target``, ``mask`` (B, T)). Pair with
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
        out["x"] = x.masked_fill(mask.unsqueeze(-1), 0.0)  # (B, T, F)
        return out


class MaskedAutoencoder(nn.Module):
    """Encoder + learned mask token + per-bar reconstruction head.

    ``forward(batch)`` takes ``batch["x"]`` (B, T, F) and, optionally, ``batch["mask"]`` (B, T)
    bool (what ``MaskedReconstructionObjective.prepare`` builds): masked steps get
    ``mask_token``, and the result is encoded and reconstructed. Without a mask the window is
    encoded unmasked. Returns ``{"reconstruction": (B, T, F)}``.

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

    def _masked_input(self, batch: Mapping[str, Tensor]) -> Tensor:
        """(B, T, F) window with the learned token at the masked steps."""
        if not isinstance(batch, Mapping) or "x" not in batch:
            raise TypeError(
                "MaskedAutoencoder is called as model(batch) with batch['x'] (B, T, "
                f"{self.n_features}) and an optional batch['mask'] (B, T) bool"
            )
        x = batch["x"]
        if x.ndim != 3 or x.shape[-1] != self.n_features:
            raise ValueError(f"expected batch['x'] of shape (B, T, {self.n_features}), got {tuple(x.shape)}")
        mask = batch.get("mask")
        if mask is None:
            return x
        if mask.shape != x.shape[:2] or mask.dtype != torch.bool:
            raise ValueError(f"batch['mask'] must be bool of shape {tuple(x.shape[:2])} (B, T), "
                             f"got {mask.dtype} {tuple(mask.shape)}")
        return self.mask_token(x, mask)

    def encode(self, batch: Mapping[str, Tensor]) -> Tensor:
        """Per-bar representations (B, T, D) of a (masked or plain) window."""
        return self.encoder(self._masked_input(batch))

    def forward(self, batch: Mapping[str, Tensor]) -> dict[str, Tensor]:
        return self.head(self.encode(batch))

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
