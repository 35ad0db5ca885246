"""The cross-sectional ranking model: a temporal encoder per stock, graph attention across the
day's stocks, and one score per horizon.

    cfg = ranking_preset_config("atft_gat_fan", n_features=158, horizons=(1, 5, 10, 20))
    model = build_ranking_model(cfg)          # RankingModel(fan, encoder, pool, gat, head)
    out = model(batch)                        # x (D, S, T, F), mask (D, S) -> {"ranking": (D, S, H)}

Same three layers as moola.models.builders: ``build_ranking_model(cfg)`` turns a config into
modules, family builders take a few parameters, presets pin every number.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Annotated, Literal, NamedTuple, Self

import torch
from pydantic import Field, field_validator, model_validator
from torch import nn

from moola.config import MAX_REPEATS, Bars, Config, Features, Width
from moola.models.builders import UnknownPresetError, build_encoder, count_parameters
from moola.models.config import EncoderConfig, RNNEncoderConfig, unique_horizons
from moola.models.graph import FAN, FANConfig, GATConfig, GATStack, build_gat_stack
from moola.models.heads import LastPooling

__all__ = [
    "RANKING_PRESETS",
    "InputLayout",
    "RankingModel",
    "RankingModelConfig",
    "RankingPresetRow",
    "atft_gat_fan",
    "build_ranking_model",
    "describe_ranking_presets",
    "gats_like",
    "lags_to_steps",
    "ranking_preset_config",
    "temporal_only",
]

Dropout = Annotated[float, Field(ge=0.0, lt=1.0)]
# window: x (D, S, T, F) per-step features; lags: x (D, S, 1, fields * lags), Qlib's Alpha360 order.
InputLayout = Literal["window", "lags"]


class RankingModelConfig(Config):
    """Encoder, optional FAN, graph attention and head: everything needed to rebuild the model."""

    name: Annotated[str, Field(min_length=1)]
    encoder: EncoderConfig
    fan: FANConfig | None = Field(None, description="adaptive causal input normalisation before the encoder")
    input_layout: InputLayout = Field("window", description=(
        "window: x (D, S, T, F); lags: x (D, S, 1, fields * lags) in Qlib's Alpha360 order (all lags "
        "of field 0 oldest first, then field 1, ...), reshaped to (lags, fields) steps"))
    lag_fields: Features | None = Field(None, description="fields per step of the lags layout")
    gat: GATConfig = Field(default_factory=GATConfig)
    horizons: list[Bars] = Field(min_length=1, max_length=MAX_REPEATS,
                                 description="one output score per horizon, in order")
    head_hidden: Width | None = Field(None, description="MLP head width; null: a linear head")
    dropout: Dropout = 0.0
    skip: bool = Field(True, description=(
        "concatenate the temporal embedding with the graph output before the head (HIST/GATs residual)"))

    @property
    def reads_graph(self) -> bool:
        """The model reads batch["adj"] (a non-dense graph) or batch["edge_attr"]."""
        return self.gat.layers > 0 and (self.gat.graph != "dense" or self.gat.edge_dim > 0)

    @field_validator("horizons")
    @classmethod
    def _unique(cls, v: list[int]) -> list[int]:
        return unique_horizons(v)

    @model_validator(mode="after")
    def _layout(self) -> Self:
        if self.input_layout == "lags":
            if self.lag_fields is None:
                raise ValueError("input_layout 'lags' needs lag_fields (fields per step, 6 for Alpha360)")
            if self.lag_fields != self.encoder.input_size:
                raise ValueError(f"lag_fields ({self.lag_fields}) must equal encoder.input_size "
                                 f"({self.encoder.input_size}): each reshaped step holds one value per field")
        elif self.lag_fields is not None:
            raise ValueError(f"lag_fields ({self.lag_fields}) is only read with input_layout 'lags'; "
                             "set input_layout: lags or drop lag_fields")
        return self

    @property
    def n_features(self) -> int:
        """Features per encoder step (the F of a window, the fields of the lags layout)."""
        return self.encoder.input_size


def lags_to_steps(x: torch.Tensor, fields: int) -> torch.Tensor:
    """(N, fields * lags) in Qlib's Alpha360 order -> (N, lags, fields), as Qlib's GATs does."""
    N, Fl = x.shape
    if Fl % fields:
        raise ValueError(f"x has {Fl} features, not a multiple of lag_fields ({fields}); the lags layout "
                         f"is fields * lags values per stock")
    return x.reshape(N, fields, Fl // fields).permute(0, 2, 1)  # (N, lags, fields)


def _expect(name: str, t: object, shape: Sequence[int | None], what: str) -> torch.Tensor:
    """``t`` as a tensor of ``shape`` (None: any size), or an error naming it and the shape."""
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a tensor {what}, got {type(t).__name__}")
    if t.ndim != len(shape) or any(s is not None and s != n for s, n in zip(shape, t.shape, strict=True)):
        raise ValueError(f"{name} must be {what}, got {tuple(t.shape)}")
    return t


class RankingModel(nn.Module):
    """Encoder per present stock -> last step -> graph attention over the day -> head per horizon.

    The submodules are built elsewhere and passed in; ``config`` is kept for checkpoints. Absent
    stocks are never encoded, never attended to, and score exactly 0.
    """

    def __init__(
        self,
        encoder: nn.Module,
        gat: GATStack,
        head: nn.Module,
        config: RankingModelConfig,
        fan: FAN | None = None,
        pool: nn.Module | None = None,
    ) -> None:
        super().__init__()
        emb_dim = getattr(encoder, "out_dim", None)
        if not isinstance(emb_dim, int):
            raise TypeError(f"encoder {type(encoder).__name__} must expose an int out_dim (its width d)")
        self.emb_dim: int = emb_dim
        self.fan = fan
        self.encoder = encoder
        self.pool = pool if pool is not None else LastPooling(emb_dim)
        self.gat = gat
        self.head = head
        self.drop = nn.Dropout(config.dropout)
        self.config = config
        self.n_features = config.n_features
        self.n_horizons = len(config.horizons)

    # --- input checks ------------------------------------------------------------------------

    def _inputs(self, batch: Mapping[str, torch.Tensor]
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
        """(x, mask, adj, edge_attr) checked against the config; adj / edge_attr only when read."""
        cfg = self.config
        if not isinstance(batch, Mapping):
            raise TypeError(f"a ranking model is called as model(batch) with a mapping of named tensors "
                            f"(x, mask, ...); got {type(batch).__name__}")
        if "x" not in batch:
            raise KeyError(f"batch has no 'x' tensor (D, S, T, F); keys: {sorted(batch)}")
        x = batch["x"]
        if cfg.input_layout == "window":
            what = f"(D, S, T, F) with F = {self.n_features}"
            x = _expect("x", x, (None, None, None, self.n_features), what)
        else:
            what = f"(D, S, 1, F) with F = lags * {self.n_features} (lags layout)"
            x = _expect("x", x, (None, None, 1, None), what)
            if x.shape[-1] % self.n_features:
                raise ValueError(f"x must be {what}; {x.shape[-1]} is not a multiple of {self.n_features}")
        if not x.is_floating_point():
            raise TypeError(f"x must be a floating-point tensor, got {x.dtype}")
        if x.shape[2] == 0:
            raise ValueError("x must hold at least one time step, got T = 0")
        D, S = x.shape[:2]
        mask = batch.get("mask")
        if mask is None:
            mask = torch.ones(D, S, dtype=torch.bool, device=x.device)
        mask = _expect("mask", mask, (D, S), f"(D, S) = ({D}, {S}) bool, like x").bool()
        adj = edge_attr = None
        if cfg.gat.layers > 0 and cfg.gat.graph != "dense":
            if batch.get("adj") is None:
                raise KeyError(f"this model attends over a {cfg.gat.graph!r} graph and needs batch['adj'] "
                               f"(D, S, S) bool; keys: {sorted(batch)}")
            adj = _expect("adj", batch["adj"], (D, S, S), f"(D, S, S) = ({D}, {S}, {S}) bool").bool()
        if cfg.gat.layers > 0 and cfg.gat.edge_dim:
            E = cfg.gat.edge_dim
            if batch.get("edge_attr") is None:
                raise KeyError(f"this model reads {E} edge attributes and needs batch['edge_attr'] "
                               f"(D, S, S, {E}); keys: {sorted(batch)}")
            edge_attr = _expect("edge_attr", batch["edge_attr"], (D, S, S, E),
                                f"(D, S, S, E) = ({D}, {S}, {S}, {E}) float")
        return x, mask, adj, edge_attr

    # --- forward -----------------------------------------------------------------------------

    def embed(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """(D, S, d) temporal embeddings: only present stocks are encoded; absent rows are 0."""
        D, S = mask.shape
        rows = x[mask]  # (n, T, F)
        if self.config.input_layout == "lags":
            rows = lags_to_steps(rows[:, 0], self.n_features)  # (n, lags, fields)
        d = self.emb_dim
        flat = x.new_zeros(D * S, d)  # (D * S, d)
        if rows.shape[0]:
            if self.fan is not None:
                rows = self.fan(rows)  # (n, T, F)
            h = self.pool(self.encoder(rows))  # (n, T, d) -> (n, d)
            idx = mask.reshape(-1).nonzero().squeeze(1)  # (n,) row order of x[mask]
            flat = flat.to(h.dtype).index_copy(0, idx, h)
        return self.drop(flat.view(D, S, d))  # (D, S, d)

    def forward(self, batch: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        x, mask, adj, edge_attr = self._inputs(batch)
        emb = self.embed(x, mask)  # (D, S, d)
        z = emb
        if len(self.gat):
            g = self.gat(emb, mask, adj, edge_attr)  # (D, S, hidden)
            assert isinstance(g, torch.Tensor)
            z = torch.cat([emb, g], dim=-1) if self.config.skip else g
        scores = self.head(z)  # (D, S, H)
        return {"ranking": torch.where(mask[:, :, None], scores, torch.zeros_like(scores))}

    def attention(self, batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """(D, S, S) the last GAT layer's weights averaged over heads; rows and columns of absent
        stocks are 0 (for the report's sector-attention summary)."""
        if not len(self.gat):
            raise ValueError(f"model {self.config.name!r} has no graph attention (gat.layers = 0), so it has "
                             "no attention weights")
        x, mask, adj, edge_attr = self._inputs(batch)
        res = self.gat(self.embed(x, mask), mask, adj, edge_attr, return_attention=True)
        assert isinstance(res, tuple)
        att = res[1].mean(dim=1)  # (D, S, S)
        pair = mask[:, :, None] & mask[:, None, :]
        return torch.where(pair, att, torch.zeros_like(att))


def _head(in_dim: int, n_out: int, hidden: int | None, dropout: float) -> nn.Module:
    if hidden is None:
        return nn.Linear(in_dim, n_out)
    return nn.Sequential(nn.Linear(in_dim, hidden), nn.LeakyReLU(), nn.Dropout(dropout),
                         nn.Linear(hidden, n_out))


def build_ranking_model(cfg: RankingModelConfig) -> RankingModel:
    """The RankingModel a config describes."""
    encoder = build_encoder(cfg.encoder)
    d = encoder.out_dim
    bidirectional = isinstance(cfg.encoder, RNNEncoderConfig) and cfg.encoder.bidirectional
    fan = FAN(cfg.n_features, cfg.fan.windows, cfg.fan.eps) if cfg.fan is not None else None
    gat = build_gat_stack(cfg.gat, d)
    head_in = d + gat.out_dim if (cfg.gat.layers and cfg.skip) else gat.out_dim
    head = _head(head_in, len(cfg.horizons), cfg.head_hidden, cfg.dropout)
    return RankingModel(encoder, gat, head, cfg, fan=fan, pool=LastPooling(d, bidirectional))


# --- presets: every number pinned -------------------------------------------------------------

Horizons = Sequence[int]


def gats_like(n_features: int = 6, horizons: Horizons = (1, 5, 10, 20)) -> RankingModelConfig:
    """Qlib GATs: 2x64 LSTM over Alpha360 lags, one dense 1-head attention layer, MLP head (60,420).

    As Qlib: the RNN's dropout is 0.7, the attention output is added to the embedding (the
    layer's residual, no concatenation) and fed to a 64-wide LeakyReLU layer. ``n_features`` is
    the fields per step (6: open, close, high, low, vwap, volume); x is (D, S, 1, 6 * lags).
    60,420 parameters on 6 fields and 4 horizons.
    """
    return RankingModelConfig(
        name="gats_like",
        encoder=RNNEncoderConfig(kind="lstm", input_size=n_features, hidden=64, layers=2, dropout=0.7),
        fan=None,
        input_layout="lags",
        lag_fields=n_features,
        gat=GATConfig(layers=1, hidden=64, heads=1, concat=False, dropout=0.0, edge_dim=0, graph="dense"),
        horizons=list(horizons),
        head_hidden=64,
        dropout=0.0,
        skip=False,
    )


def atft_gat_fan(n_features: int = 158, horizons: Horizons = (1, 5, 10, 20)) -> RankingModelConfig:
    """FAN (5, 10, 20) + 2x64 LSTM + 2 GAT layers (4 heads) on knn+sector with edge attributes + MLP.

    The ATFT-GAT-FAN recipe: edge_dim 2 (trailing correlation, same sector), the temporal
    embedding concatenated with the graph output, a 64-wide head. 121,194 parameters on 158
    features and 4 horizons.
    """
    return RankingModelConfig(
        name="atft_gat_fan",
        encoder=RNNEncoderConfig(kind="lstm", input_size=n_features, hidden=64, layers=2, dropout=0.1),
        fan=FANConfig(windows=[5, 10, 20]),
        input_layout="window",
        gat=GATConfig(layers=2, hidden=64, heads=4, concat=True, dropout=0.1, edge_dim=2,
                      graph="knn+sector"),
        horizons=list(horizons),
        head_hidden=64,
        dropout=0.1,
        skip=True,
    )


def temporal_only(n_features: int = 158, horizons: Horizons = (1, 5, 10, 20)) -> RankingModelConfig:
    """atft_gat_fan without graph attention (gat.layers 0): the no-graph ablation (95,834 on 158).

    Same FAN, encoder and head width; each stock is scored from its own history alone.
    """
    base = atft_gat_fan(n_features, horizons)
    return base.model_copy(update={
        "name": "temporal_only", "gat": GATConfig(layers=0, hidden=64, graph="dense", edge_dim=0)})


RANKING_PRESETS: dict[str, Callable[..., RankingModelConfig]] = {
    "gats_like": gats_like,
    "atft_gat_fan": atft_gat_fan,
    "temporal_only": temporal_only,
}


def ranking_preset_config(name: str, n_features: int | None = None, horizons: Horizons | None = None
                          ) -> RankingModelConfig:
    """A ranking preset's config, with its default features / horizons unless given."""
    if name not in RANKING_PRESETS:
        raise UnknownPresetError(name, list(RANKING_PRESETS))
    kwargs: dict[str, object] = {}
    if n_features is not None:
        kwargs["n_features"] = n_features
    if horizons is not None:
        kwargs["horizons"] = tuple(horizons)
    return RANKING_PRESETS[name](**kwargs)


class RankingPresetRow(NamedTuple):
    """One row of a ranking-preset listing."""

    name: str
    params: int
    description: str


def describe_ranking_presets(n_features: int | None = None, horizons: Horizons | None = None
                             ) -> list[RankingPresetRow]:
    """Every ranking preset with its parameter count (built, not estimated) and summary line."""
    rows = []
    for name, builder in RANKING_PRESETS.items():
        cfg = ranking_preset_config(name, n_features, horizons)
        doc = (builder.__doc__ or "").strip().splitlines()
        rows.append(RankingPresetRow(name, count_parameters(build_ranking_model(cfg)), doc[0] if doc else ""))
    return rows
