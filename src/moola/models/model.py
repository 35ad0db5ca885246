"""SequenceModel: one encoder shared by any set of task heads.

The model contract every moola model follows: ``model(batch) -> outputs``, where ``batch`` is a
mapping of named tensors with at least ``"x"`` (B, T, F), and optionally:

* ``"valid"`` (B, T) bool, True = a real step: series of different lengths, right-padded to
  one T (each row's real steps first, then padding; moola.models.padding). SequenceModel never
  lets a padded step change an output: encoders and pooling skip padding, per-bar outputs
  at padded steps mean nothing (pointer logits there are the dtype's minimum). Absent: every
  step is real.
* ``"mask"`` (B, T) bool, True = a step hidden from the model: masked-reconstruction
  pretraining (moola.pretraining; the MaskedAutoencoder reads it, SequenceModel ignores it). It
  is not a padding mask: the two conventions are opposite, hence two keys.
* ``"symbol_id"`` (B,) int64, for a model with a symbol embedding.
* for day panels (ranking models, moola.models.ranking), ``"x"`` is (D, S, T, F) with a
  ``"mask"`` (D, S) presence mask.

``outputs`` maps head names to tensors.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn

from moola.models.config import ModelConfig
from moola.models.padding import check_valid

__all__ = ["SequenceModel", "SymbolEmbedding"]


class SymbolEmbedding(nn.Module):
    """One learned vector per symbol, in the encoder's output width D, added to every step of
    the encoder output: a pooled model keeps one set of weights and still knows which symbol
    it reads. ``dim`` < D factorises it (an ``n_symbols`` x dim table, then dim -> D)."""

    def __init__(self, n_symbols: int, out_dim: int, dim: int | None = None) -> None:
        super().__init__()
        self.n_symbols = n_symbols
        self.table = nn.Embedding(n_symbols, dim or out_dim)
        self.proj = nn.Linear(dim, out_dim, bias=False) if dim else nn.Identity()

    def forward(self, h: torch.Tensor, symbol_id: torch.Tensor) -> torch.Tensor:
        # h (B, T, D), symbol_id (B,) int64 -> (B, T, D)
        if symbol_id.ndim != 1 or symbol_id.dtype not in (torch.int64, torch.int32):
            raise TypeError(f"symbol_id must be an int64 tensor of shape (B,), got {symbol_id.dtype} "
                            f"of shape {tuple(symbol_id.shape)}")
        if symbol_id.shape[0] != h.shape[0]:
            raise ValueError(f"symbol_id has {symbol_id.shape[0]} rows, x has {h.shape[0]}")
        lo, hi = int(symbol_id.min()), int(symbol_id.max())
        if lo < 0 or hi >= self.n_symbols:
            raise ValueError(f"symbol_id must lie in [0, {self.n_symbols}) (the run's symbols), "
                             f"got values in [{lo}, {hi}]")
        e = self.proj(self.table(symbol_id))  # (B, D)
        return h + e[:, None, :]  # broadcast over T


class SequenceModel(nn.Module):
    """An encoder and named heads, built elsewhere and passed in; forward returns every head's outputs.

    Output keys (only those of the heads present):
        "logits"        (B, C)    classifier
        "start_logits"  (B, T)    pointer: pattern start bar
        "end_logits"    (B, T)    pointer: pattern end bar
        "direction"     (B,)      direction logit (up = positive)
        "regression"    (B, H)    one value per horizon
        "reconstruction" (B, T, F) input features rebuilt per bar

    The encoder must expose ``input_size`` (F) and ``out_dim`` (D). ``config`` is kept on the
    model so a checkpoint can store how to rebuild it. With a ``symbol_embedding`` the model
    reads ``batch["symbol_id"]`` (B,) and adds that symbol's vector to every step of h. With
    ``batch["valid"]`` (B, T) (see the module docstring) the encoder and every head are called
    with it, ``encoder(x, valid)`` and ``head(h, valid)``; without it, ``encoder(x)`` and
    ``head(h)``, so modules that know nothing of padding still plug in.
    """

    def __init__(
        self, encoder: nn.Module, heads: dict[str, nn.Module], config: ModelConfig | None = None,
        symbol_embedding: SymbolEmbedding | None = None,
    ) -> None:
        super().__init__()
        if not heads:
            raise ValueError("SequenceModel needs at least one head")
        self.encoder = encoder
        self.heads = nn.ModuleDict(heads)
        self.symbol_embedding = symbol_embedding  # None: no parameters, "symbol_id" ignored
        self.config = config
        n_features = encoder.input_size
        if not isinstance(n_features, int):
            raise TypeError(f"encoder {type(encoder).__name__} must expose an int input_size (F)")
        self.n_features: int = n_features

    def encode(self, x: torch.Tensor, valid: torch.Tensor | None = None) -> torch.Tensor:
        """Per-bar representations (B, T, D), e.g. for probing or transfer; with ``valid``
        (B, T) bool (right padding, True = real step) zero at padded steps."""
        self._check_input(x)
        return self._encode(x, self._real_steps(valid, x))

    def _encode(self, x: torch.Tensor, valid: torch.Tensor | None) -> torch.Tensor:
        if valid is None:
            return self.encoder(x)  # (B, T, D)
        return self.encoder(x, valid).masked_fill(~valid[..., None], 0.0)  # (B, T, D)

    @staticmethod
    def _real_steps(valid: torch.Tensor | None, x: torch.Tensor) -> torch.Tensor | None:
        """A checked valid mask, or None when absent or when every step is real (then the
        plain, unpadded path runs: the same numbers, no packing)."""
        if valid is None:
            return None
        check_valid(valid, x)
        return None if bool(valid.all()) else valid

    def forward(self, batch: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        if not isinstance(batch, Mapping):
            raise TypeError(
                f"models are called as model(batch) with a mapping of named tensors, e.g. "
                f"model({{'x': x}}) with x (B, T, {self.n_features}); got {type(batch).__name__}"
            )
        if "x" not in batch:
            raise KeyError(f"batch has no 'x' tensor (B, T, {self.n_features}); keys: {sorted(batch)}")
        x = batch["x"]
        self._check_input(x)
        valid = self._real_steps(batch.get("valid"), x)  # None: every step is real
        h = self._encode(x, valid)  # (B, T, D)
        if self.symbol_embedding is not None:
            if "symbol_id" not in batch:
                raise KeyError(
                    f"this model has a symbol embedding over {self.symbol_embedding.n_symbols} "
                    f"symbols and needs batch['symbol_id'] (B,) int64, the index of each window's "
                    f"symbol in the run's sorted symbols; keys: {sorted(batch)}")
            h = self.symbol_embedding(h, batch["symbol_id"])  # (B, T, D)
        out: dict[str, torch.Tensor] = {}
        for head in self.heads.values():
            out.update(head(h) if valid is None else head(h, valid))
        return out

    def _check_input(self, x: torch.Tensor) -> None:
        """Fail early with the expected (B, T, F) instead of a cryptic matmul/cuDNN error."""
        if not isinstance(x, torch.Tensor):
            raise TypeError(
                f"expected a float torch.Tensor of shape (B, T, {self.n_features}), got {type(x).__name__}"
            )
        if not x.is_floating_point():
            raise TypeError(f"expected a floating-point tensor, got dtype {x.dtype}; cast with x.float()")
        if x.ndim != 3 or x.shape[-1] != self.n_features:
            raise ValueError(
                f"expected input of shape (B, T, F) with F = {self.n_features} features, "
                f"got shape {tuple(x.shape)}"
            )
        if x.shape[1] == 0:
            raise ValueError("expected at least one time step, got T = 0")
