"""Task heads on top of an encoder's (B, T, D) output.

Each head returns a dict of named outputs, so SequenceModel can merge any set of heads
without knowing them. Keys: "logits", "start_logits"/"end_logits", "direction",
"regression", "reconstruction" (see SequenceModel for the shapes).

Every head and pooling takes an optional ``valid`` (B, T) bool mask of right-padded series
(True = a real step; see moola.models.padding): pooling reads real steps only, and the pointer
puts its position prior at each row's own last real bar and gives padded bars no probability.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from moola.models.config import Pooling
from moola.models.padding import valid_lengths

__all__ = [
    "AttentionPooling",
    "ClassifierHead",
    "DirectionHead",
    "FoldedAttentionPooling",
    "LastPooling",
    "MeanPooling",
    "PointerHead",
    "ReconstructionHead",
    "RegressionHead",
    "fold_attention",
    "make_pooling",
]


class AttentionPooling(nn.Module):
    """Multi-head attention of one learned query over the time steps: (B, T, D) -> (B, hidden).

    Keys carry no bias: softmax ignores a shift shared by every step, so it would never learn.
    """

    def __init__(self, in_dim: int, hidden: int = 128, heads: int = 8) -> None:
        super().__init__()
        if hidden % heads != 0:
            raise ValueError(f"heads ({heads}) must divide hidden ({hidden})")
        self.heads = heads
        self.head_dim = hidden // heads
        self.out_dim = hidden
        self.query = nn.Parameter(torch.randn(heads, self.head_dim) / math.sqrt(self.head_dim))
        self.key = nn.Linear(in_dim, hidden, bias=False)
        self.value = nn.Linear(in_dim, hidden)
        self.proj = nn.Linear(hidden, hidden)

    def forward(
        self, h: torch.Tensor, return_weights: bool = False, valid: torch.Tensor | None = None
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """Pooled (B, hidden); with ``return_weights`` also the head-averaged weights (B, T)."""
        B, T, _ = h.shape
        k = self.key(h).view(B, T, self.heads, self.head_dim).transpose(1, 2)  # (B, nh, T, hs)
        v = self.value(h).view(B, T, self.heads, self.head_dim).transpose(1, 2)  # (B, nh, T, hs)
        scores = (k @ self.query.unsqueeze(-1)).squeeze(-1) / math.sqrt(self.head_dim)  # (B, nh, T)
        if valid is not None:  # padded steps get no weight
            scores = scores.masked_fill(~valid[:, None, :], float("-inf"))
        att = F.softmax(scores, dim=-1)  # (B, nh, T)
        if valid is not None:  # 0 * v at a padded step must stay 0 even where v is not finite
            v = v.masked_fill(~valid[:, None, :, None], 0.0)
        pooled = (att.unsqueeze(2) @ v).squeeze(2)  # (B, nh, hs)
        pooled = self.proj(pooled.reshape(B, self.heads * self.head_dim))  # (B, hidden)
        if return_weights:
            return pooled, att.mean(dim=1)  # (B, hidden), (B, T)
        return pooled


class FoldedAttentionPooling(nn.Module):
    """``AttentionPooling`` rewritten for serving whole (unmasked) sequences: the query folded
    into the key weights, the value projection applied after pooling (the weights sum to 1).
    Equal to the module to float rounding at ~1/15 of its multiply-adds for T = 105, D = 128."""

    w_score: torch.Tensor  # (D, nh) buffers: constants in an exported graph
    w_value: torch.Tensor  # (nh, hs, D)
    b_value: torch.Tensor  # (nh, hs)

    def __init__(self, pool: AttentionPooling) -> None:
        super().__init__()
        nh, hs = pool.heads, pool.head_dim
        self.out_dim = pool.out_dim
        with torch.no_grad():
            wk = pool.key.weight.detach().view(nh, hs, -1)  # (nh, hs, D)
            self.register_buffer("w_score", (torch.einsum("nsd,ns->dn", wk, pool.query.detach())
                                             / math.sqrt(hs)).contiguous())
            self.register_buffer("w_value", pool.value.weight.detach().view(nh, hs, -1).clone())
            self.register_buffer("b_value", pool.value.bias.detach().view(nh, hs).clone())
        self.proj = pool.proj

    def forward(self, h: torch.Tensor, valid: torch.Tensor | None = None) -> torch.Tensor:
        """Pooled (B, hidden) of (B, T, D); a padding mask is refused (serve it unfolded)."""
        if valid is not None:
            raise ValueError("FoldedAttentionPooling pools whole sequences: a padding mask needs "
                             "AttentionPooling")
        att = torch.softmax(h @ self.w_score, dim=1)  # (B, T, nh), over time per head
        mixed = att.transpose(1, 2) @ h  # (B, nh, D): each head's weighted mean of the steps
        pooled = torch.einsum("bnd,nsd->bns", mixed, self.w_value) + self.b_value  # (B, nh, hs)
        return self.proj(pooled.reshape(h.shape[0], -1))  # (B, hidden)


def fold_attention(model: nn.Module) -> nn.Module:
    """A deep copy of ``model`` (eval mode) with every AttentionPooling replaced by its
    FoldedAttentionPooling: the serving engines' model; the trained one is left as it is."""
    folded = copy.deepcopy(model).eval()
    for module in list(folded.modules()):
        for child, sub in list(module.named_children()):
            if isinstance(sub, AttentionPooling):
                setattr(module, child, FoldedAttentionPooling(sub))
    return folded


class LastPooling(nn.Module):
    """The final state: all a causal or unidirectional encoder knows at the decision bar.

    For a bidirectional RNN (features = [forward | backward]) the backward pass ends at t = 0,
    so its half is taken there; at T - 1 it would have seen a single bar. With ``valid`` the
    last bar is each row's last real one (the forward half is taken there, the backward half
    still at t = 0, where the backward pass that started at that bar ends).
    """

    def __init__(self, in_dim: int, bidirectional: bool = False) -> None:
        super().__init__()
        if bidirectional and in_dim % 2:
            raise ValueError(f"a bidirectional encoder has an even width, got {in_dim}")
        self.out_dim = in_dim
        self.bidirectional = bidirectional

    def forward(self, h: torch.Tensor, valid: torch.Tensor | None = None) -> torch.Tensor:
        if valid is None:
            last = h[:, -1]  # (B, D)
        else:
            rows = torch.arange(h.shape[0], device=h.device)
            last = h[rows, valid_lengths(valid) - 1]  # (B, D): each row's last real step
        if not self.bidirectional:
            return last  # (B, D)
        half = h.shape[-1] // 2
        return torch.cat([last[:, :half], h[:, 0, half:]], dim=-1)  # (B, D)


class MeanPooling(nn.Module):
    """The mean over time steps."""

    def __init__(self, in_dim: int) -> None:
        super().__init__()
        self.out_dim = in_dim

    def forward(self, h: torch.Tensor, valid: torch.Tensor | None = None) -> torch.Tensor:
        if valid is None:
            return h.mean(dim=1)  # (B, D)
        m = valid[..., None]  # (B, T, 1)
        return h.masked_fill(~m, 0.0).sum(dim=1) / m.sum(dim=1).to(h.dtype)  # (B, D), real steps only


def _pool(pool: nn.Module, h: torch.Tensor, valid: torch.Tensor | None) -> torch.Tensor:
    """(B, T, D) -> (B, D') through any of the poolings above, over real steps only."""
    if isinstance(pool, AttentionPooling):
        out = pool(h, valid=valid)
        assert isinstance(out, torch.Tensor)
        return out
    return pool(h, valid)


def make_pooling(
    kind: Pooling, in_dim: int, bidirectional: bool = False
) -> LastPooling | MeanPooling | AttentionPooling:
    """A (B, T, D) -> (B, out_dim) pooling module; attention uses AttentionPooling's defaults."""
    match kind:
        case "last":
            return LastPooling(in_dim, bidirectional)
        case "mean":
            return MeanPooling(in_dim)
        case "attention":
            return AttentionPooling(in_dim)
    raise ValueError(f"unknown pooling {kind!r}; expected last, mean or attention")


class ClassifierHead(nn.Module):
    """Pooling -> dropout -> linear: (B, T, D) -> {"logits": (B, C)}.

    ``pooling`` "attention" (the default): AttentionPooling of width ``hidden`` with ``heads``
    heads; "mean": global average pooling (the convolutional classifiers' head; ``hidden`` and
    ``heads`` unused); "last": LastPooling (``bidirectional``: the encoder's).
    """

    def __init__(
        self, in_dim: int, n_classes: int = 2, hidden: int = 128, heads: int = 8, dropout: float = 0.1,
        pooling: Pooling = "attention", bidirectional: bool = False,
    ) -> None:
        super().__init__()
        self.pool: LastPooling | MeanPooling | AttentionPooling
        if pooling == "attention":
            self.pool = AttentionPooling(in_dim, hidden, heads)
        else:
            self.pool = make_pooling(pooling, in_dim, bidirectional)
        self.drop = nn.Dropout(dropout)
        self.fc = nn.Linear(self.pool.out_dim, n_classes)

    def forward(self, h: torch.Tensor, valid: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        pooled = _pool(self.pool, h, valid)  # (B, D')
        return {"logits": self.fc(self.drop(pooled))}  # (B, C)


class PointerHead(nn.Module):
    """Per-bar logits for the pattern's start and end bar: (B, T, D) -> two (B, T).

    logit[t] = w . h[t] + prior[T - 1 - t]. The content term has no bias: a softmax over time
    ignores a shift shared by every bar. The position prior is not shared: it is the base rate
    of "the pattern starts/ends k bars before the window's last bar", which an encoder's per-bar
    states need not carry (a frozen pretrained encoder's do not; a causal one cannot know how far
    away the end is). Without it, on the shipped labels, the head on a transferred BiLSTM
    (frozen or fine-tuned at a tenth of the LR) stayed ~39 bars off, where predicting the
    training median gets 2.4 and a from-scratch encoder learned its own position code (~5).
    Counted from the last bar because labels are placed relative to the decision bar; bars
    further back than ``max_len`` share the last entry.

    The prior is stored divided by ``prior_gain``: Adam moves each parameter by about the
    learning rate per step whatever its gradient, so an unscaled prior would gain ~0.002 nats a
    step and still be near zero after the few dozen steps a small labeled set gives, while a
    base rate over ~100 bars spans several nats.
    """

    def __init__(self, in_dim: int, max_len: int = 512, prior_gain: float = 20.0) -> None:
        super().__init__()
        if max_len < 1:
            raise ValueError(f"max_len must be >= 1, got {max_len}")
        self.fc = nn.Linear(in_dim, 2, bias=False)
        self.prior_gain = prior_gain
        self.position_prior = nn.Parameter(torch.zeros(max_len, 2))  # (max_len, [start, end])

    def forward(self, h: torch.Tensor, valid: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        T, cap = h.shape[1], self.position_prior.shape[0] - 1
        if valid is None:
            back = torch.arange(T - 1, -1, -1, device=h.device).clamp(max=cap)  # (T,) bars before the last
        else:  # (B, T): bars before each row's last real bar; padded bars clamp to 0, then masked
            back = (valid_lengths(valid)[:, None] - 1 - torch.arange(T, device=h.device)).clamp(0, cap)
        logits = self.fc(h) + self.prior_gain * self.position_prior[back]  # (B, T, 2)
        if valid is not None:  # a padded bar is never the start or end: no probability under softmax
            logits = logits.masked_fill(~valid[..., None], torch.finfo(logits.dtype).min)
        return {"start_logits": logits[..., 0], "end_logits": logits[..., 1]}  # (B, T) each

    def _load_from_state_dict(self, state_dict: dict[str, Any], prefix: str, *args: Any,
                              **kwargs: Any) -> None:
        """A checkpoint from before the prior existed loads as a zero prior: the same function."""
        key = prefix + "position_prior"
        if key not in state_dict and prefix + "fc.weight" in state_dict:
            state_dict[key] = torch.zeros_like(self.position_prior)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)


class DirectionHead(nn.Module):
    """Pool -> MLP (default 128 -> 64) -> one up/down logit: (B, T, D) -> {"direction": (B,)}."""

    def __init__(
        self,
        in_dim: int,
        mlp: Sequence[int] = (128, 64),
        dropout: float = 0.1,
        pooling: Pooling = "last",
        bidirectional: bool = False,  # the encoder's; see LastPooling
    ) -> None:
        super().__init__()
        self.pool = make_pooling(pooling, in_dim, bidirectional)
        layers: list[nn.Module] = []
        width = self.pool.out_dim
        for size in mlp:
            layers += [nn.Linear(width, size), nn.GELU(), nn.Dropout(dropout)]
            width = size
        layers.append(nn.Linear(width, 1))
        self.mlp = nn.Sequential(*layers)

    def forward(self, h: torch.Tensor, valid: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        pooled = _pool(self.pool, h, valid)  # (B, D')
        return {"direction": self.mlp(pooled).squeeze(-1)}  # (B,)


class RegressionHead(nn.Module):
    """Pool -> linear to one value per horizon: (B, T, D) -> {"regression": (B, H)}."""

    def __init__(
        self, in_dim: int, n_outputs: int = 1, pooling: Pooling = "last", bidirectional: bool = False
    ) -> None:
        super().__init__()
        self.pool = make_pooling(pooling, in_dim, bidirectional)
        self.fc = nn.Linear(self.pool.out_dim, n_outputs)

    def forward(self, h: torch.Tensor, valid: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        return {"regression": self.fc(_pool(self.pool, h, valid))}  # (B, H)


class ReconstructionHead(nn.Module):
    """Per-bar linear map back to input features: (B, T, D) -> {"reconstruction": (B, T, F)}."""

    def __init__(self, in_dim: int, out_features: int) -> None:
        super().__init__()
        self.fc = nn.Linear(in_dim, out_features)

    def forward(self, h: torch.Tensor, valid: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        # per bar; at padded bars (``valid`` False) the output means nothing and is not masked
        return {"reconstruction": self.fc(h)}  # (B, T, F)
