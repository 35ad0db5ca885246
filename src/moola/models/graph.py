"""Graph attention across the stocks of a day, and FAN, an adaptive causal input normaliser.

Plain PyTorch with dense masked attention: a day of S stocks is an (S, S) attention matrix, so
no sparse-graph library is needed at S&P 500 scale. Shapes: D days, S stocks, heads nh.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from typing import Annotated, Literal, Self

import torch
import torch.nn.functional as F
from pydantic import Field, PositiveFloat, field_validator, model_validator
from torch import nn

from moola.config import MAX_FEATURES, MAX_LAYERS, Bars, Config, Heads, Width

__all__ = [
    "FAN",
    "FANConfig",
    "GATConfig",
    "GATLayer",
    "GATStack",
    "GraphKind",
    "allowed_pairs",
    "build_gat_stack",
]

Dropout = Annotated[float, Field(ge=0.0, lt=1.0)]
# Which adjacency the model reads: dense attends over every present stock and ignores batch["adj"].
GraphKind = Literal["dense", "knn", "sector", "knn+sector"]


# --- graph attention --------------------------------------------------------------------------


def allowed_pairs(mask: torch.Tensor, adj: torch.Tensor | None = None) -> torch.Tensor:
    """(D, S, S) bool: i may attend to j when both are present (and adj allows it); the diagonal is
    always allowed, so every softmax row has at least one entry and no NaN can appear."""
    S = mask.shape[1]
    allowed = mask[:, :, None] & mask[:, None, :]  # (D, S, S)
    if adj is not None:
        allowed = allowed & adj.bool()
    eye = torch.eye(S, dtype=torch.bool, device=mask.device)
    return allowed | eye  # (D, S, S)


class GATLayer(nn.Module):
    """One multi-head graph-attention layer (GAT, Velickovic et al. 2018) over a day's stocks.

    Logits e_ij = LeakyReLU(a_dst . W h_i + a_src . W h_j + w_e . edge_ij) per head, softmax over
    the allowed j (see ``allowed_pairs``), then sum_j att_ij W h_j; heads are concatenated or
    averaged, plus a residual (identity or a linear projection) of the input. Absent stocks
    output 0 and are never attended to.
    """

    def __init__(
        self,
        in_dim: int,
        out_dim: int,
        heads: int,
        concat: bool,
        dropout: float = 0.0,
        edge_dim: int = 0,
        residual: bool = True,
        negative_slope: float = 0.2,
    ) -> None:
        super().__init__()
        if min(in_dim, out_dim, heads) < 1 or edge_dim < 0:
            raise ValueError(f"GATLayer needs in_dim, out_dim, heads >= 1 and edge_dim >= 0; got in_dim="
                             f"{in_dim}, out_dim={out_dim}, heads={heads}, edge_dim={edge_dim}")
        self.in_dim = in_dim
        self.out_dim = out_dim
        self.heads = heads
        self.concat = concat
        self.edge_dim = edge_dim
        self.negative_slope = negative_slope
        self.out_features = heads * out_dim if concat else out_dim
        self.proj = nn.Linear(in_dim, heads * out_dim, bias=False)
        self.att_src = nn.Parameter(torch.empty(heads, out_dim))
        self.att_dst = nn.Parameter(torch.empty(heads, out_dim))
        nn.init.xavier_uniform_(self.att_src)
        nn.init.xavier_uniform_(self.att_dst)
        # No bias: inside the LeakyReLU a shared shift would be nearly invisible to the softmax.
        self.edge = nn.Linear(edge_dim, heads, bias=False) if edge_dim else None
        self.res: nn.Module | None = None
        if residual:
            self.res = nn.Identity() if in_dim == self.out_features else nn.Linear(
                in_dim, self.out_features, bias=False)
        self.bias = nn.Parameter(torch.zeros(self.out_features))
        self.drop = nn.Dropout(dropout)

    def forward(
        self,
        h: torch.Tensor,
        mask: torch.Tensor,
        adj: torch.Tensor | None = None,
        edge_attr: torch.Tensor | None = None,
        return_attention: bool = False,
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """(D, S, out_features); with ``return_attention`` also the weights (D, heads, S, S)."""
        D, S, _ = h.shape  # h: (D, S, in_dim), mask: (D, S) bool
        nh, od = self.heads, self.out_dim
        wh = self.proj(self.drop(h)).view(D, S, nh, od)  # (D, S, nh, od)
        src = (wh * self.att_src).sum(-1).transpose(1, 2)  # (D, nh, S): score of j as a neighbour
        dst = (wh * self.att_dst).sum(-1).transpose(1, 2)  # (D, nh, S): score of i as the query
        logits = dst[:, :, :, None] + src[:, :, None, :]  # (D, nh, S_i, S_j)
        if self.edge is not None:
            if edge_attr is None:
                raise ValueError(f"this GAT layer reads edge attributes: pass edge_attr (D, S, S, "
                                 f"{self.edge_dim})")
            logits = logits + self.edge(edge_attr).permute(0, 3, 1, 2)  # (D, nh, S, S)
        logits = F.leaky_relu(logits, self.negative_slope)
        allowed = allowed_pairs(mask, adj)[:, None]  # (D, 1, S, S)
        att = torch.softmax(logits.masked_fill(~allowed, float("-inf")), dim=-1)  # (D, nh, S, S)
        out = self.drop(att) @ wh.transpose(1, 2)  # (D, nh, S, od)
        out = out.transpose(1, 2)  # (D, S, nh, od)
        out = out.reshape(D, S, nh * od) if self.concat else out.mean(dim=2)  # (D, S, out_features)
        out = out + self.bias
        if self.res is not None:
            out = out + self.res(h)
        out = out * mask[:, :, None].to(out.dtype)  # absent stocks: 0
        if return_attention:
            return out, att
        return out


class GATStack(nn.Module):
    """GAT layers built elsewhere and passed in, with ELU between them (none after the last).

    ``in_dim`` is only needed for an empty stack (the no-graph ablation), which returns h as it is.
    """

    def __init__(self, layers: Sequence[GATLayer], in_dim: int | None = None) -> None:
        super().__init__()
        self.layers = nn.ModuleList(layers)
        if not layers and in_dim is None:
            raise ValueError("an empty GATStack needs in_dim (its output width is its input width)")
        if layers and in_dim is not None and layers[0].in_dim != in_dim:
            raise ValueError(f"in_dim {in_dim} != the first layer's in_dim {layers[0].in_dim}")
        for i, (a, b) in enumerate(itertools.pairwise(layers)):
            if a.out_features != b.in_dim:
                raise ValueError(f"GAT layer {i} outputs {a.out_features} features but layer {i + 1} "
                                 f"expects {b.in_dim}")
        self.in_dim = layers[0].in_dim if layers else int(in_dim or 0)
        self.out_dim = layers[-1].out_features if layers else self.in_dim
        self.edge_dim = max((la.edge_dim for la in layers), default=0)

    def __len__(self) -> int:
        return len(self.layers)

    def forward(
        self,
        h: torch.Tensor,
        mask: torch.Tensor,
        adj: torch.Tensor | None = None,
        edge_attr: torch.Tensor | None = None,
        return_attention: bool = False,
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """(D, S, out_dim); with ``return_attention`` also the last layer's (D, heads, S, S)."""
        att: torch.Tensor | None = None
        n = len(self.layers)
        for i, layer in enumerate(self.layers):
            res = layer(h, mask, adj, edge_attr, return_attention=return_attention)
            h, att = res if isinstance(res, tuple) else (res, None)
            if i < n - 1:
                h = F.elu(h)
        if return_attention:
            if att is None:
                raise ValueError("this model has no graph attention (gat.layers = 0): no attention weights")
            return h, att
        return h


class GATConfig(Config):
    """Graph attention across a day's stocks; ``layers: 0`` is the no-graph ablation.

    Every layer outputs ``hidden`` features: a concatenating layer has ``hidden / heads`` per head,
    an averaging one ``hidden`` per head. A scalar ``heads`` / ``concat`` applies to every layer,
    except that a scalar ``concat`` leaves the last layer averaging its heads; a list sets each.
    """

    layers: Annotated[int, Field(ge=0, le=MAX_LAYERS)] = 1
    hidden: Width = 64
    heads: Heads | list[Heads] = 4
    concat: bool | list[bool] = True
    dropout: Dropout = 0.0
    edge_dim: int = Field(0, ge=0, le=MAX_FEATURES, description=(
        "edge attributes per pair (0: none; 2: corr, same_sector)"))
    graph: GraphKind = Field("dense", description=(
        "the adjacency the model expects in batch['adj']; dense attends over all present stocks"))
    residual: bool = True

    @model_validator(mode="after")
    def _per_layer_lists(self) -> Self:
        problems = []
        for name in ("heads", "concat"):
            v = getattr(self, name)
            if isinstance(v, list) and len(v) != self.layers:
                problems.append(f"gat.{name} has {len(v)} entries but gat.layers is {self.layers}; give "
                                f"one per layer or a single value for all")
        if not problems:
            for i, (nh, cat) in enumerate(zip(self.layer_heads, self.layer_concat, strict=True)):
                if cat and self.hidden % nh:
                    problems.append(f"gat.heads[{i}] ({nh}) must divide gat.hidden ({self.hidden}) in a "
                                    f"concatenating layer (gat.concat[{i}] is true)")
        if problems:
            raise ValueError("; ".join(problems))
        return self

    @property
    def layer_heads(self) -> list[int]:
        """Heads of each layer, scalars broadcast."""
        return list(self.heads) if isinstance(self.heads, list) else [self.heads] * self.layers

    @property
    def layer_concat(self) -> list[bool]:
        """Whether each layer concatenates its heads; a scalar leaves the last layer averaging."""
        if isinstance(self.concat, list):
            return list(self.concat)
        return [self.concat] * max(self.layers - 1, 0) + [False] * min(self.layers, 1)

    def per_layer(self, in_dim: int) -> list[tuple[int, int, int, bool]]:
        """(in, out per head, heads, concat) of every layer, for input width ``in_dim``."""
        out = []
        width = in_dim
        for nh, cat in zip(self.layer_heads, self.layer_concat, strict=True):
            per_head = self.hidden // nh if cat else self.hidden
            out.append((width, per_head, nh, cat))
            width = per_head * nh if cat else per_head  # == hidden
        return out

    def out_dim(self, in_dim: int) -> int:
        """Output width of the stack: ``hidden``, or ``in_dim`` when there are no layers."""
        return self.hidden if self.layers else in_dim


def build_gat_stack(cfg: GATConfig, in_dim: int) -> GATStack:
    """The GATStack a config describes, for ``in_dim`` input features."""
    layers = [GATLayer(i, o, nh, cat, dropout=cfg.dropout, edge_dim=cfg.edge_dim, residual=cfg.residual)
              for i, o, nh, cat in cfg.per_layer(in_dim)]
    return GATStack(layers, in_dim=in_dim)


# --- FAN ---------------------------------------------------------------------------------------


class FANConfig(Config):
    """FAN: a learned per-feature blend of trailing rolling z-scores over several windows."""

    windows: list[Bars] = Field(default_factory=lambda: [5, 10, 20], min_length=1, max_length=MAX_LAYERS)
    eps: PositiveFloat = 1e-5

    @field_validator("windows")
    @classmethod
    def _unique(cls, v: list[int]) -> list[int]:
        if len(set(v)) != len(v):
            raise ValueError(f"windows must be unique, got {v}")
        return v


class FAN(nn.Module):
    """Adaptive, causal input normalisation, so level shifts across stocks and regimes do not
    swamp the encoder.

    For x (N, T, F), feature f, window w and step t, with n = min(w, t + 1) trailing steps:

        m_w[t] = mean(x[t-n+1 .. t]),  s_w[t] = std(x[t-n+1 .. t])  (population std)
        z_w[t] = (x[t] - m_w[t]) / (s_w[t] + eps)
        out[t, f] = gamma_f * sum_w softmax(alpha_f)_w * z_w[t, f] + beta_f

    alpha (F, n_windows) starts at 0 (an equal blend), gamma at 1, beta at 0. Only steps <= t are
    read (cumulative sums over time), so the output at t never sees later steps.
    """

    def __init__(self, n_features: int, windows: Sequence[int] = (5, 10, 20), eps: float = 1e-5) -> None:
        super().__init__()
        if not windows or min(windows) < 1:
            raise ValueError(f"FAN windows must be a non-empty list of positive ints, got {list(windows)}")
        self.n_features = n_features
        self.windows = tuple(int(w) for w in windows)
        self.eps = eps
        self.alpha = nn.Parameter(torch.zeros(n_features, len(self.windows)))
        self.gamma = nn.Parameter(torch.ones(n_features))
        self.beta = nn.Parameter(torch.zeros(n_features))

    def zscores(self, x: torch.Tensor) -> torch.Tensor:
        """(N, T, F) -> (N, T, F, n_windows): the trailing z-score of every window."""
        N, T, Fn = x.shape
        # z is shift invariant: centring on step 0 (a past step) keeps the sums small, and float64
        # keeps E[x^2] - E[x]^2 from inventing variance in flat stretches.
        xc = (x - x[:, :1]).double()
        zero = xc.new_zeros(N, 1, Fn)
        c1 = torch.cat([zero, xc.cumsum(1)], dim=1)  # (N, T + 1, F)
        c2 = torch.cat([zero, (xc * xc).cumsum(1)], dim=1)  # (N, T + 1, F)
        t = torch.arange(T, device=x.device)
        out = []
        for w in self.windows:
            start = (t + 1 - w).clamp(min=0)  # (T,) first step of each trailing window
            n = (t + 1 - start).to(xc.dtype)[None, :, None]  # (1, T, 1)
            s1 = c1[:, t + 1] - c1[:, start]  # (N, T, F)
            s2 = c2[:, t + 1] - c2[:, start]
            mean = s1 / n
            var = (s2 / n - mean * mean).clamp(min=0.0)
            pos = var > 0  # sqrt has an infinite slope at 0 (a one-step window): keep its gradient 0
            std = torch.where(pos, torch.where(pos, var, 1.0).sqrt(), 0.0)
            out.append((xc - mean) / (std + self.eps))
        return torch.stack(out, dim=-1).to(x.dtype)  # (N, T, F, n_windows)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim != 3 or x.shape[-1] != self.n_features:
            raise ValueError(f"FAN input must be (N, T, F) with F = {self.n_features}, got {tuple(x.shape)}")
        weights = torch.softmax(self.alpha, dim=-1)  # (F, n_windows)
        z = (self.zscores(x) * weights).sum(-1)  # (N, T, F)
        return z * self.gamma + self.beta
