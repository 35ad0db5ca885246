"""Sequence encoders: (B, T, F) bars in, (B, T, D) per-bar representations out.

Every encoder exposes ``input_size`` (F) and ``out_dim`` (D) so heads and the model's input
guard can be sized without running it.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
from torch import nn

__all__ = ["RNNEncoder", "TransformerEncoder", "sinusoidal_table"]


class RNNEncoder(nn.Module):
    """One stacked nn.LSTM/nn.GRU kept as ``rnn``, so state-dict keys are the standard
    ``rnn.weight_ih_l0`` ... names and weights transfer between models by name."""

    def __init__(
        self,
        input_size: int,
        hidden: int = 128,
        layers: int = 2,
        bidirectional: bool = False,
        dropout: float = 0.0,
        kind: Literal["lstm", "gru"] = "lstm",
    ) -> None:
        super().__init__()
        self.input_size = input_size
        self.hidden = hidden
        self.bidirectional = bidirectional
        rnn_cls = nn.LSTM if kind == "lstm" else nn.GRU
        self.rnn = rnn_cls(
            input_size,
            hidden,
            num_layers=layers,
            batch_first=True,
            bidirectional=bidirectional,
            dropout=dropout if layers > 1 else 0.0,  # PyTorch applies it between layers only
        )

    @property
    def out_dim(self) -> int:
        return self.hidden * (2 if self.bidirectional else 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out, _ = self.rnn(x)  # (B, T, H * directions)
        return out


def sinusoidal_table(max_len: int, d_model: int) -> torch.Tensor:
    """The fixed (max_len, d_model) sin/cos position table of "Attention Is All You Need"."""
    pos = torch.arange(max_len, dtype=torch.float32).unsqueeze(1)  # (L, 1)
    freq = torch.exp(torch.arange(0, d_model, 2, dtype=torch.float32) * (-math.log(10000.0) / d_model))
    table = torch.zeros(max_len, d_model)
    table[:, 0::2] = torch.sin(pos * freq)
    table[:, 1::2] = torch.cos(pos * freq[: d_model // 2])  # odd d_model: one fewer cos column
    return table


class TransformerEncoder(nn.Module):
    """Linear input projection + position encoding + pre-norm Transformer layers + final norm.

    With ``causal`` a bar attends only to itself and earlier bars, so outputs at t never see
    the future. Layers are built one by one (not nn.TransformerEncoder's deep copies), so
    each starts from its own random init.
    """

    def __init__(
        self,
        input_size: int,
        d_model: int = 64,
        heads: int = 4,
        layers: int = 2,
        ff: int = 128,
        dropout: float = 0.1,
        pos_encoding: Literal["sinusoidal", "learned", "none"] = "sinusoidal",
        causal: bool = False,
        max_len: int = 512,
    ) -> None:
        super().__init__()
        self.input_size = input_size
        self.d_model = d_model
        self.causal = causal
        self.max_len = max_len
        self.input_proj = nn.Linear(input_size, d_model)
        self.pos: torch.Tensor | None
        match pos_encoding:
            case "sinusoidal":  # fixed, recomputed at init: not part of the state dict
                self.register_buffer("pos", sinusoidal_table(max_len, d_model), persistent=False)
            case "learned":
                self.pos = nn.Parameter(0.02 * torch.randn(max_len, d_model))
            case "none":
                self.pos = None
        self.drop = nn.Dropout(dropout)
        self.layers = nn.ModuleList(
            nn.TransformerEncoderLayer(
                d_model, heads, ff, dropout, activation="gelu", batch_first=True, norm_first=True
            )
            for _ in range(layers)
        )
        self.norm = nn.LayerNorm(d_model)  # pre-norm layers leave the residual stream unnormalised

    @property
    def out_dim(self) -> int:
        return self.d_model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if (T := x.shape[1]) > self.max_len:  # x: (B, T, F)
            raise ValueError(f"sequence length {T} exceeds the encoder's max_len {self.max_len}")
        h = self.input_proj(x)  # (B, T, d_model)
        if self.pos is not None:
            h = h + self.pos[:T]
        h = self.drop(h)
        mask = None
        if self.causal:  # (T, T), -inf above the diagonal: no attention to later positions
            mask = nn.Transformer.generate_square_subsequent_mask(T, device=x.device, dtype=h.dtype)
        for layer in self.layers:
            h = layer(h, src_mask=mask, is_causal=self.causal)  # (B, T, d_model)
        return self.norm(h)
