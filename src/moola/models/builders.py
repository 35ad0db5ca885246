"""From configs to modules, family builders with parameters, and presets with pinned numbers.

Three layers, torchtune style: ``build_model(cfg)`` turns any ModelConfig into modules;
family builders (``lstm_classifier(...)``) turn a few parameters into a ModelConfig; presets
(``jade()``) call a family builder with every number pinned. ``PRESETS`` is a plain dict.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal

from torch import nn

from moola._io import did_you_mean
from moola.models.config import (
    ClassifierHeadConfig,
    DirectionHeadConfig,
    EncoderConfig,
    InceptionTimeEncoderConfig,
    ModelConfig,
    PointerHeadConfig,
    Pooling,
    ResNet1DEncoderConfig,
    RNNEncoderConfig,
    SymbolEmbeddingConfig,
    TransformerEncoderConfig,
)
from moola.models.conv import InceptionTimeEncoder, ResNet1DEncoder
from moola.models.encoders import RNNEncoder, TransformerEncoder
from moola.models.heads import (
    ClassifierHead,
    DirectionHead,
    PointerHead,
    ReconstructionHead,
    RegressionHead,
)
from moola.models.model import SequenceModel, SymbolEmbedding

__all__ = [
    "MAX_PARAMS_PER_SAMPLE",
    "PRESETS",
    "PresetInfo",
    "UnknownPresetError",
    "build_encoder",
    "build_heads",
    "build_model",
    "conv_classifier",
    "count_parameters",
    "describe_presets",
    "direction_bilstm",
    "direction_lstm",
    "direction_transformer",
    "inception_compact",
    "inception_time",
    "inception_time_classifier",
    "jade",
    "jade_compact",
    "lstm_classifier",
    "lstm_direction",
    "patch_lstm",
    "preset_config",
    "resnet1d",
    "resnet1d_classifier",
    "simple_lstm",
    "transformer_direction",
    "with_symbol_embedding",
]

# Above this many parameters per training sample a model can memorise its training set.
MAX_PARAMS_PER_SAMPLE = 1000


# --- configs -> modules -----------------------------------------------------------------------


def build_encoder(
    cfg: EncoderConfig,
) -> RNNEncoder | TransformerEncoder | InceptionTimeEncoder | ResNet1DEncoder:
    """The encoder module a config describes."""
    match cfg:
        case RNNEncoderConfig():
            return RNNEncoder(
                cfg.input_size, cfg.hidden, cfg.layers, cfg.bidirectional, cfg.dropout, kind=cfg.kind,
                patch=cfg.patch,
            )
        case TransformerEncoderConfig():
            return TransformerEncoder(
                cfg.input_size,
                d_model=cfg.d_model,
                heads=cfg.heads,
                layers=cfg.layers,
                ff=cfg.ff,
                dropout=cfg.dropout,
                pos_encoding=cfg.pos_encoding,
                causal=cfg.causal,
                max_len=cfg.max_len,
            )
        case InceptionTimeEncoderConfig():
            return InceptionTimeEncoder(
                cfg.input_size,
                filters=cfg.filters,
                depth=cfg.depth,
                kernel_sizes=cfg.kernel_sizes,
                bottleneck=cfg.bottleneck,
                residual=cfg.residual,
            )
        case ResNet1DEncoderConfig():
            return ResNet1DEncoder(cfg.input_size, filters=cfg.filters, kernel_sizes=cfg.kernel_sizes)
    raise TypeError(f"unknown encoder config {type(cfg).__name__}")


def build_heads(cfg: ModelConfig, enc_out_dim: int) -> dict[str, nn.Module]:
    """One module per head set in ``cfg``, keyed by the config field name."""
    heads: dict[str, nn.Module] = {}
    # "last" pooling must take a bidirectional RNN's backward half at t = 0 (see LastPooling).
    bidir = isinstance(cfg.encoder, RNNEncoderConfig) and cfg.encoder.bidirectional
    if (c := cfg.classifier) is not None:
        heads["classifier"] = ClassifierHead(enc_out_dim, c.n_classes, c.hidden, c.heads, c.dropout,
                                             c.pooling, bidir)
    if cfg.pointer is not None:
        heads["pointer"] = PointerHead(enc_out_dim)
    if (d := cfg.direction) is not None:
        heads["direction"] = DirectionHead(enc_out_dim, d.mlp, d.dropout, d.pooling, bidir)
    if (r := cfg.regression) is not None:
        heads["regression"] = RegressionHead(enc_out_dim, len(r.horizons), r.pooling, bidir)
    if (rc := cfg.reconstruction) is not None:
        heads["reconstruction"] = ReconstructionHead(enc_out_dim, rc.out_features)
    return heads


def build_model(cfg: ModelConfig) -> SequenceModel:
    """A freshly initialised model (seed torch first for a reproducible init)."""
    encoder = build_encoder(cfg.encoder)
    emb = cfg.symbol_embedding
    symbols = None if emb is None else SymbolEmbedding(emb.n_symbols, encoder.out_dim, emb.dim)
    return SequenceModel(encoder, build_heads(cfg, encoder.out_dim), config=cfg,
                         symbol_embedding=symbols)


def with_symbol_embedding(cfg: ModelConfig, n_symbols: int, dim: int | None = None) -> ModelConfig:
    """``cfg`` pooled over ``n_symbols`` symbols: the same model plus a learned symbol
    embedding (``dim`` None: the encoder's output width); ``cfg`` itself is left as it is."""
    out = cfg.model_copy(deep=True)
    out.symbol_embedding = SymbolEmbeddingConfig(n_symbols=n_symbols, dim=dim)  # validated
    return out


def count_parameters(model: nn.Module, trainable_only: bool = False) -> int:
    """Number of scalar parameters (optionally only those that require grad)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


# --- families: a few parameters -> ModelConfig --------------------------------------------------


def _lstm(n_features: int, hidden: int, layers: int, bidirectional: bool,
          dropout: float, patch: int = 1) -> RNNEncoderConfig:
    return RNNEncoderConfig(kind="lstm", input_size=n_features, hidden=hidden, layers=layers,
                            bidirectional=bidirectional, dropout=dropout, patch=patch)


def lstm_classifier(
    n_features: int,
    n_classes: int = 2,
    hidden: int = 128,
    layers: int = 2,
    bidirectional: bool = False,
    attn_hidden: int = 128,
    attn_heads: int = 8,
    pointer: bool = False,
    dropout: float = 0.1,
    name: str = "lstm_classifier",
    patch: int = 1,
) -> ModelConfig:
    """LSTM -> attention pooling -> class logits, optionally with a start/end pointer head;
    ``patch`` > 1: the LSTM reads patches of that many bars (RNNEncoderConfig.patch)."""
    return ModelConfig(
        name=name,
        encoder=_lstm(n_features, hidden, layers, bidirectional, dropout, patch),
        classifier=ClassifierHeadConfig(
            n_classes=n_classes, hidden=attn_hidden, heads=attn_heads, dropout=dropout
        ),
        pointer=PointerHeadConfig() if pointer else None,
    )


def conv_classifier(
    encoder: InceptionTimeEncoderConfig | ResNet1DEncoderConfig,
    n_classes: int = 2,
    pooling: Pooling = "mean",
    pointer: bool = False,
    dropout: float = 0.0,
    name: str = "conv_classifier",
) -> ModelConfig:
    """A convolutional encoder -> pooling (global average by default, as in the papers) ->
    dropout -> class logits, optionally with a start/end pointer head on the per-bar output."""
    return ModelConfig(
        name=name,
        encoder=encoder,
        classifier=ClassifierHeadConfig(n_classes=n_classes, dropout=dropout, pooling=pooling),
        pointer=PointerHeadConfig() if pointer else None,
    )


def inception_time_classifier(
    n_features: int,
    n_classes: int = 2,
    filters: int = 32,
    depth: int = 6,
    kernel_sizes: Sequence[int] = (39, 19, 9),
    bottleneck: int = 32,
    residual: bool = True,
    pooling: Pooling = "mean",
    pointer: bool = False,
    dropout: float = 0.0,
    name: str = "inception_time_classifier",
) -> ModelConfig:
    """InceptionTime encoder -> pooling -> class logits (see conv_classifier)."""
    encoder = InceptionTimeEncoderConfig(input_size=n_features, filters=filters, depth=depth,
                                         kernel_sizes=list(kernel_sizes), bottleneck=bottleneck,
                                         residual=residual)
    return conv_classifier(encoder, n_classes, pooling, pointer, dropout, name)


def resnet1d_classifier(
    n_features: int,
    n_classes: int = 2,
    filters: Sequence[int] = (64, 128, 128),
    kernel_sizes: Sequence[int] = (8, 5, 3),
    pooling: Pooling = "mean",
    pointer: bool = False,
    dropout: float = 0.0,
    name: str = "resnet1d_classifier",
) -> ModelConfig:
    """ResNet-1D encoder -> pooling -> class logits (see conv_classifier)."""
    encoder = ResNet1DEncoderConfig(input_size=n_features, filters=list(filters),
                                    kernel_sizes=list(kernel_sizes))
    return conv_classifier(encoder, n_classes, pooling, pointer, dropout, name)


def _direction_heads(n_classes: int, mlp: Sequence[int], pooling: Pooling, dropout: float,
                     ) -> dict[str, DirectionHeadConfig | ClassifierHeadConfig]:
    """One binary logit for two classes; for more (down/flat/up) a classifier head, which is
    what the train recipe optimises as a multi-class task (attention pooling of width
    ``mlp[-1]``, 4 heads)."""
    if n_classes < 2:
        raise ValueError(f"n_classes must be >= 2, got {n_classes}")
    if n_classes == 2:
        return {"direction": DirectionHeadConfig(mlp=list(mlp), dropout=dropout, pooling=pooling)}
    width = mlp[-1] if mlp else 64
    return {"classifier": ClassifierHeadConfig(n_classes=n_classes, hidden=width, heads=4,
                                               dropout=dropout)}


def lstm_direction(
    n_features: int,
    hidden: int = 64,
    layers: int = 2,
    bidirectional: bool = True,
    mlp: Sequence[int] = (128, 64),
    pooling: Pooling = "last",
    dropout: float = 0.1,
    name: str = "lstm_direction",
    n_classes: int = 2,
) -> ModelConfig:
    """LSTM -> pooling -> MLP -> one binary direction logit (n_classes > 2: a classifier head)."""
    return ModelConfig(
        name=name,
        encoder=_lstm(n_features, hidden, layers, bidirectional, dropout),
        **_direction_heads(n_classes, mlp, pooling, dropout),
    )


def transformer_direction(
    n_features: int,
    d_model: int = 64,
    heads: int = 4,
    layers: int = 2,
    ff: int = 128,
    causal: bool = True,
    pos_encoding: Literal["sinusoidal", "learned", "none"] = "sinusoidal",
    max_len: int = 512,
    mlp: Sequence[int] = (128, 64),
    pooling: Pooling = "last",
    dropout: float = 0.1,
    name: str = "transformer_direction",
    n_classes: int = 2,
) -> ModelConfig:
    """Transformer encoder -> pooling -> MLP -> one binary direction logit (n_classes > 2: a
    classifier head)."""
    return ModelConfig(
        name=name,
        encoder=TransformerEncoderConfig(
            input_size=n_features,
            d_model=d_model,
            heads=heads,
            layers=layers,
            ff=ff,
            dropout=dropout,
            pos_encoding=pos_encoding,
            causal=causal,
            max_len=max_len,
        ),
        **_direction_heads(n_classes, mlp, pooling, dropout),
    )


# --- presets: every number pinned ---------------------------------------------------------------


def simple_lstm(n_features: int = 4, n_classes: int = 2) -> ModelConfig:
    """Unidirectional 2x128 LSTM + 8-head attention pooling + classifier: the baseline."""
    return lstm_classifier(
        n_features, n_classes, hidden=128, layers=2, bidirectional=False,
        attn_hidden=128, attn_heads=8, pointer=False, dropout=0.1, name="simple_lstm",
    )


def jade(n_features: int = 4, n_classes: int = 2) -> ModelConfig:
    """2-layer BiLSTM (128 per direction) + attention pooling + classifier + start/end pointer."""
    return lstm_classifier(
        n_features, n_classes, hidden=128, layers=2, bidirectional=True,
        attn_hidden=128, attn_heads=8, pointer=True, dropout=0.1, name="jade",
    )


def jade_compact(n_features: int = 4, n_classes: int = 2) -> ModelConfig:
    """jade at under 150k parameters (BiLSTM 56 per direction, 4-head pooling of width 64)."""
    return lstm_classifier(
        n_features, n_classes, hidden=56, layers=2, bidirectional=True,
        attn_hidden=64, attn_heads=4, pointer=True, dropout=0.1, name="jade_compact",
    )


def patch_lstm(n_features: int = 4, n_classes: int = 2) -> ModelConfig:
    """Patch-8 strided conv + 1-layer BiLSTM (64 per direction) + attention pooling + classifier + pointer.

    jade for 150-430-bar series: the LSTM runs T / 8 steps; its output is repeated back to one
    vector per bar, so the pointer head still scores every bar (4-head pooling of width 64)."""
    return lstm_classifier(
        n_features, n_classes, hidden=64, layers=1, bidirectional=True,
        attn_hidden=64, attn_heads=4, pointer=True, dropout=0.1, name="patch_lstm", patch=8,
    )


def inception_time(n_features: int = 4, n_classes: int = 2) -> ModelConfig:
    """InceptionTime (Ismail Fawaz et al. 2020): 6 modules, 32 filters x (convs 39/19/9 + max-pool), GAP.

    Bottleneck 32, a residual shortcut every 3 modules, global average pooling + linear
    classifier, no dropout: the paper's network (one member of its 5-model ensemble)."""
    return inception_time_classifier(
        n_features, n_classes, filters=32, depth=6, kernel_sizes=(39, 19, 9), bottleneck=32,
        residual=True, pooling="mean", pointer=False, dropout=0.0, name="inception_time",
    )


def inception_compact(n_features: int = 4, n_classes: int = 2) -> ModelConfig:
    """InceptionTime, compact: 3 modules, 16 filters x (convs 39/19/9 + max-pool), one residual, GAP.

    Bottleneck 16, global average pooling + linear classifier: about a seventh of
    inception_time's parameters, for a few hundred labeled series."""
    return inception_time_classifier(
        n_features, n_classes, filters=16, depth=3, kernel_sizes=(39, 19, 9), bottleneck=16,
        residual=True, pooling="mean", pointer=False, dropout=0.0, name="inception_compact",
    )


def resnet1d(n_features: int = 4, n_classes: int = 2) -> ModelConfig:
    """ResNet-1D (Wang et al. 2017): 3 residual blocks, convs 8/5/3, 64/128/128 filters, BN, ReLU, GAP.

    Each conv is followed by batch norm and ReLU; the shortcut is a 1x1 conv + BN where the
    width changes; global average pooling + linear classifier, no dropout."""
    return resnet1d_classifier(
        n_features, n_classes, filters=(64, 128, 128), kernel_sizes=(8, 5, 3), pooling="mean",
        pointer=False, dropout=0.0, name="resnet1d",
    )


# The seeds' status report printed "LSTM(31, 64, bidirectional=True, num_layers=2)" with a
# 128 -> 64 -> 1 head beside "Total parameters: 62,337". Those disagree: 62,337 is the
# unidirectional model below (direction_lstm); the printed architecture is direction_bilstm
# (157,313 on 31 inputs). `moola models list --input-shape 60x31` prints both counts.


def direction_lstm(n_features: int = 31, n_classes: int = 2) -> ModelConfig:
    """2-layer LSTM (64) + MLP 64 -> 64 -> 1 direction logit: the seeds' 62,337 on 31 inputs."""
    return lstm_direction(
        n_features, hidden=64, layers=2, bidirectional=False, mlp=(64,),
        pooling="last", dropout=0.1, name="direction_lstm", n_classes=n_classes,
    )


def direction_bilstm(n_features: int = 31, n_classes: int = 2) -> ModelConfig:
    """2-layer BiLSTM (64 per direction) + MLP 128 -> 64 -> 1 direction logit: 157,313 on 31."""
    return lstm_direction(
        n_features, hidden=64, layers=2, bidirectional=True, mlp=(64,),
        pooling="last", dropout=0.1, name="direction_bilstm", n_classes=n_classes,
    )


def direction_transformer(n_features: int = 31, n_classes: int = 2) -> ModelConfig:
    """Causal Transformer (d_model 64, 4 heads, 2 layers) + MLP 64 -> 128 -> 64 -> 1 logit."""
    return transformer_direction(
        n_features, d_model=64, heads=4, layers=2, ff=128, causal=True, pos_encoding="sinusoidal",
        max_len=512, mlp=(128, 64), pooling="last", dropout=0.1, name="direction_transformer",
        n_classes=n_classes,
    )


PRESETS: dict[str, Callable[..., ModelConfig]] = {
    "simple_lstm": simple_lstm,
    "jade": jade,
    "jade_compact": jade_compact,
    "patch_lstm": patch_lstm,
    "inception_time": inception_time,
    "inception_compact": inception_compact,
    "resnet1d": resnet1d,
    "direction_lstm": direction_lstm,
    "direction_bilstm": direction_bilstm,
    "direction_transformer": direction_transformer,
}


class UnknownPresetError(KeyError):
    """Raised for a preset name that does not exist; the message lists the known ones."""

    def __init__(self, name: str, known: list[str]) -> None:
        super().__init__(name)
        self.name = name
        self.known = known

    def __str__(self) -> str:
        return (f"unknown model preset {self.name!r}{did_you_mean(self.name, self.known)}; known presets: "
                f"{', '.join(self.known)}")


def preset_config(name: str, n_features: int | None = None, n_classes: int | None = None) -> ModelConfig:
    """A preset's ModelConfig, with its default feature/class count unless given.

    Direction presets give one binary logit for 2 classes and a classifier head for more
    (a ternary down/flat/up task).
    """
    if name not in PRESETS:
        raise UnknownPresetError(name, list(PRESETS))
    builder = PRESETS[name]
    kwargs: dict[str, int] = {}
    if n_features is not None:
        kwargs["n_features"] = n_features
    if n_classes is not None:
        if "n_classes" in inspect.signature(builder).parameters:
            kwargs["n_classes"] = n_classes
        elif n_classes != 2:
            raise ValueError(f"preset {name!r} predicts a binary direction; got n_classes={n_classes}")
    return builder(**kwargs)


# --- describing presets (``moola models list``) --------------------------------------------------


@dataclass(frozen=True)
class PresetInfo:
    """One row of ``moola models list``: size, and a warning when it dwarfs the data."""

    name: str
    task: str  # the heads, e.g. "classifier+pointer"
    description: str
    params: int
    params_per_sample: float | None  # None when the sample count is unknown
    warning: str | None


def describe_presets(
    input_shape: tuple[int, int] = (105, 4), n_samples: int | None = None
) -> list[PresetInfo]:
    """Every preset sized for (T, F) inputs; warns above MAX_PARAMS_PER_SAMPLE per training sample."""
    seq_len, n_features = input_shape
    rows = []
    for name, builder in PRESETS.items():
        cfg = builder(n_features=n_features)
        params = count_parameters(build_model(cfg))
        ratio = params / n_samples if n_samples else None
        warnings = []
        if ratio is not None and ratio > MAX_PARAMS_PER_SAMPLE:
            warnings.append(
                f"{params:,} parameters for {n_samples:,} samples ({ratio:,.0f}:1); "
                f"above {MAX_PARAMS_PER_SAMPLE:,}:1 a model can memorise its training set"
            )
        if isinstance(cfg.encoder, TransformerEncoderConfig) and seq_len > cfg.encoder.max_len:
            warnings.append(f"sequence length {seq_len} exceeds max_len {cfg.encoder.max_len}")
        doc = (builder.__doc__ or "").strip().splitlines()
        rows.append(
            PresetInfo(
                name=name,
                task="+".join(cfg.head_names),
                description=doc[0] if doc else "",
                params=params,
                params_per_sample=ratio,
                warning="; ".join(warnings) or None,
            )
        )
    return rows
