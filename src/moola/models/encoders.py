"""Sequence encoders: (B, T, F) bars in, (B, T, D) per-bar representations out.

Every encoder exposes ``input_size`` (F) and ``out_dim`` (D) so heads and the model's input
guard can be sized without running it, and takes an optional ``valid`` (B, T) bool mask of
right-padded series (True = a real step, see moola.models.padding): a padded step never changes
the output at a real one. The convolutional encoders live in moola.models.conv.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from moola.models.padding import valid_lengths

__all__ = ["RNNEncoder", "TransformerEncoder", "sinusoidal_table"]


class RNNEncoder(nn.Module):
    """One stacked nn.LSTM/nn.GRU kept as ``rnn``, so state-dict keys are the standard
    ``rnn.weight_ih_l0`` ... names and weights transfer between models by name.

    ``patch`` > 1 cuts the series into patches of ``patch`` bars (the last one zero-filled) and
    embeds each with a strided Conv1d (kernel = stride = patch, F -> hidden, ``patch_embed``)
    before the RNN, which then runs T / patch steps: long series (150-430 bars) become short
    recurrences. Each patch's output is repeated for each of its bars and trimmed to T, so the
    output is still (B, T, D) per bar; a bar's output then also reflects the later bars of its
    own patch (up to patch - 1 bars ahead), so a patched encoder is not causal within a patch.
    """

    def __init__(
        self,
        input_size: int,
        hidden: int = 128,
        layers: int = 2,
        bidirectional: bool = False,
        dropout: float = 0.0,
        kind: Literal["lstm", "gru"] = "lstm",
        patch: int = 1,
    ) -> None:
        super().__init__()
        if patch < 1:
            raise ValueError(f"patch must be >= 1, got {patch}")
        self.input_size = input_size
        self.hidden = hidden
        self.bidirectional = bidirectional
        self.patch = patch
        # patch 1 builds no embedding: the state dict stays rnn.* only, as before patching existed
        self.patch_embed = nn.Conv1d(input_size, hidden, patch, stride=patch) if patch > 1 else None
        rnn_cls = nn.LSTM if kind == "lstm" else nn.GRU
        self.rnn = rnn_cls(
            input_size if patch == 1 else hidden,
            hidden,
            num_layers=layers,
            batch_first=True,
            bidirectional=bidirectional,
            dropout=dropout if layers > 1 else 0.0,  # PyTorch applies it between layers only
        )

    @property
    def out_dim(self) -> int:
        return self.hidden * (2 if self.bidirectional else 1)

    def forward(self, x: torch.Tensor, valid: torch.Tensor | None = None) -> torch.Tensor:
        T = x.shape[1]  # x: (B, T, F); valid: (B, T) bool, right-padded, or None
        if valid is not None:
            x = x.masked_fill(~valid[..., None], 0.0)  # padding never enters a patch
        z, steps = x, T
        if self.patch_embed is not None:
            p = self.patch
            z = F.pad(x, (0, 0, 0, -T % p))  # (B, ceil(T/p) * p, F), zero-filled last patch
            z = self.patch_embed(z.transpose(1, 2)).transpose(1, 2)  # (B, ceil(T/p), hidden)
            steps = z.shape[1]
        if valid is None:
            out, _ = self.rnn(z)  # (B, steps, H * directions)
        else:
            lengths = (valid_lengths(valid) + self.patch - 1) // self.patch  # real steps (patches)
            # packed: each row's recurrence stops at its last real step, and the backward
            # direction of a bidirectional RNN starts there, not at the padding
            packed = pack_padded_sequence(z, lengths.cpu(), batch_first=True, enforce_sorted=False)
            out, _ = self.rnn(packed)
            out, _ = pad_packed_sequence(out, batch_first=True, total_length=steps)  # zeros after
        if self.patch_embed is not None:
            out = out.repeat_interleave(self.patch, dim=1)[:, :T]  # each patch to its bars: (B, T, D)
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

    def forward(self, x: torch.Tensor, valid: torch.Tensor | None = None) -> torch.Tensor:
        if (T := x.shape[1]) > self.max_len:  # x: (B, T, F); valid: (B, T) bool or None
            raise ValueError(f"sequence length {T} exceeds the encoder's max_len {self.max_len}")
        h = self.input_proj(x)  # (B, T, d_model)
        if self.pos is not None:
            h = h + self.pos[:T]
        h = self.drop(h)
        mask = None
        if self.causal:  # (T, T), -inf above the diagonal: no attention to later positions
            mask = nn.Transformer.generate_square_subsequent_mask(T, device=x.device, dtype=h.dtype)
        pad = None
        if valid is not None:  # (B, T) additive key padding mask, -inf at padded keys; float like
            # the causal mask (mixing a bool and a float mask is deprecated in PyTorch)
            pad = torch.zeros(valid.shape, device=x.device, dtype=h.dtype).masked_fill(~valid, float("-inf"))
        for layer in self.layers:
            h = layer(h, src_mask=mask, src_key_padding_mask=pad, is_causal=self.causal)  # (B, T, d_model)
        return self.norm(h)
