"""Typed model configs: one small class per encoder and head, composed into a ModelConfig.

Every class subclasses moola.config.Config, so unknown keys are errors, every problem is
reported at once by key, and a config round-trips through YAML (load -> dump -> load equal).
"""

from __future__ import annotations

from typing import Annotated, Literal, Self

from pydantic import (
    Field,
    NonNegativeFloat,
    ValidationInfo,
    field_validator,
    model_validator,
)

from moola.config import (
    MAX_LAYERS,
    MAX_REPEATS,
    MAX_SYMBOLS,
    MAX_WIDTH,
    Bars,
    Config,
    Features,
    Heads,
    Layers,
    Width,
)

__all__ = [
    "CONV_ENCODER_KINDS",
    "HEAD_NAMES",
    "ClassifierHeadConfig",
    "DirectionHeadConfig",
    "EncoderConfig",
    "InceptionTimeEncoderConfig",
    "ModelConfig",
    "PointerHeadConfig",
    "Pooling",
    "RNNEncoderConfig",
    "ReconstructionHeadConfig",
    "RegressionHeadConfig",
    "ResNet1DEncoderConfig",
    "SymbolEmbeddingConfig",
    "TransformerEncoderConfig",
    "unique_horizons",
]

Dropout = Annotated[float, Field(ge=0.0, lt=1.0)]
# How a head reduces (B, T, D) to (B, D'): the last step (causal/streaming friendly; for a
# bidirectional RNN each direction's final state), the mean, or attention with a learned query.
Pooling = Literal["last", "mean", "attention"]
# The optional heads of a ModelConfig, in forward-output order.
HEAD_NAMES = ("classifier", "pointer", "direction", "regression", "reconstruction")


def unique_horizons(v: list[int]) -> list[int]:
    """Field check shared by every config that lists forecast horizons: no horizon twice."""
    if len(set(v)) != len(v):
        raise ValueError(f"horizons must be unique, got {v}")
    return v


def _divides(value: int, info: ValidationInfo, total_field: str) -> int:
    """Field check that ``value`` (a head count) divides the already-validated ``total_field``."""
    total = info.data.get(total_field)  # absent when that field itself failed validation
    if total is not None and total % value != 0:
        raise ValueError(f"{info.field_name} ({value}) must divide {total_field} ({total})")
    return value


# --- encoders ---------------------------------------------------------------------------------


class RNNEncoderConfig(Config):
    """A stacked LSTM or GRU over the time axis."""

    kind: Literal["lstm", "gru"] = "lstm"
    input_size: Features
    hidden: Width = 128  # per direction
    layers: Layers = 2
    bidirectional: bool = False
    dropout: Dropout = 0.0  # between stacked layers (ignored for one layer)
    patch: Bars = Field(1, description=(
        "bars per patch: > 1 embeds each patch of this many bars with a strided Conv1d (F -> "
        "hidden) and runs the RNN over patches; the output is repeated back to one vector per "
        "bar, (B, T, D). 1: the RNN reads every bar"))


class TransformerEncoderConfig(Config):
    """A pre-norm Transformer encoder; ``causal`` keeps every position blind to later bars."""

    kind: Literal["transformer"] = "transformer"
    input_size: Features
    d_model: Width = 64
    heads: Heads = 4
    layers: Layers = 2
    ff: Width = 128
    dropout: Dropout = 0.1
    pos_encoding: Literal["sinusoidal", "learned", "none"] = "sinusoidal"
    causal: bool = False
    max_len: Bars = 512

    # A field (not model) validator, so it is reported alongside other field errors.
    @field_validator("heads")
    @classmethod
    def _heads_divide_d_model(cls, v: int, info: ValidationInfo) -> int:
        return _divides(v, info, "d_model")


class InceptionTimeEncoderConfig(Config):
    """InceptionTime (Ismail Fawaz et al. 2020): ``depth`` modules of a 1x1 bottleneck, then
    parallel 'same' convs (one per kernel size) beside a max-pool + 1x1 branch, batch norm,
    ReLU; a residual shortcut every 3 modules. Output width ``filters * (len(kernel_sizes) + 1)``."""

    kind: Literal["inception_time"] = "inception_time"
    input_size: Features
    filters: Width = 32  # per branch
    depth: Layers = 6  # inception modules
    kernel_sizes: list[Bars] = Field(default_factory=lambda: [39, 19, 9], min_length=1,
                                     max_length=MAX_LAYERS)
    # 1x1 bottleneck width; 0: none (always none for one channel)
    bottleneck: Annotated[int, Field(ge=0, le=MAX_WIDTH)] = 32
    residual: bool = True


class ResNet1DEncoderConfig(Config):
    """ResNet-1D (Wang et al. 2017): one residual block per entry of ``filters``, each of convs
    with ``kernel_sizes`` (conv -> batch norm -> ReLU), plus a shortcut. Output width ``filters[-1]``."""

    kind: Literal["resnet1d"] = "resnet1d"
    input_size: Features
    filters: list[Width] = Field(default_factory=lambda: [64, 128, 128], min_length=1,
                                 max_length=MAX_LAYERS)
    kernel_sizes: list[Bars] = Field(default_factory=lambda: [8, 5, 3], min_length=1,
                                     max_length=MAX_LAYERS)


# The convolutional encoders (moola.models.conv): not recurrent, not causal ('same' padding).
CONV_ENCODER_KINDS = ("inception_time", "resnet1d")

EncoderConfig = Annotated[
    RNNEncoderConfig | TransformerEncoderConfig | InceptionTimeEncoderConfig | ResNet1DEncoderConfig,
    Field(discriminator="kind"),
]


# --- heads ------------------------------------------------------------------------------------


class ClassifierHeadConfig(Config):
    """Pooling over time (attention by default; ``mean`` is global average pooling), then a
    linear layer to class logits."""

    n_classes: Annotated[int, Field(ge=2, le=MAX_REPEATS)] = 2
    hidden: Width = 128  # attention pooling width (attention only)
    heads: Heads = 8  # attention pooling heads (attention only)
    dropout: Dropout = 0.1
    pooling: Pooling = "attention"

    @field_validator("heads")
    @classmethod
    def _heads_divide_hidden(cls, v: int, info: ValidationInfo) -> int:
        return _divides(v, info, "hidden")


class PointerHeadConfig(Config):
    """Per-bar start/end logits locating the pattern; ``weight`` scales its loss in training."""

    weight: NonNegativeFloat = 0.5


class DirectionHeadConfig(Config):
    """Pool, then an MLP to one binary up/down logit."""

    mlp: list[Width] = Field(default_factory=lambda: [128, 64], max_length=MAX_LAYERS)
    dropout: Dropout = 0.1
    pooling: Pooling = "last"


class RegressionHeadConfig(Config):
    """Pool, then a linear layer to one value per forecast horizon."""

    horizons: list[Bars] = Field(default_factory=lambda: [1], min_length=1, max_length=MAX_REPEATS)
    pooling: Pooling = "last"

    @field_validator("horizons")
    @classmethod
    def _unique(cls, v: list[int]) -> list[int]:
        return unique_horizons(v)


class ReconstructionHeadConfig(Config):
    """Per-bar linear map back to input features (masked-autoencoder pretraining)."""

    out_features: Features


# --- pooled models -----------------------------------------------------------------------------


class SymbolEmbeddingConfig(Config):
    """A learned vector per symbol, added to every step of the encoder output, so one model
    pooled over several symbols can still tell them apart. The model then reads
    ``batch["symbol_id"]`` (B,) int64: the symbol's index in the run's sorted symbol list."""

    n_symbols: int = Field(ge=1, le=MAX_SYMBOLS,
                           description="symbols the model knows (ids 0 .. n_symbols - 1)")
    dim: Width | None = Field(None, description=(
        "embedding width; null: the encoder's output width D, added as it is; otherwise a "
        "dim-wide embedding mapped to D by a bias-free linear layer"))


# --- model ------------------------------------------------------------------------------------


class ModelConfig(Config):
    """An encoder plus at least one head; everything needed to rebuild a model from a checkpoint."""

    name: Annotated[str, Field(min_length=1, description=(
        "the model's name in reports, manifests and the registry (a preset's name when filled "
        "in from one)"))]
    encoder: EncoderConfig = Field(description=(
        "the sequence encoder, chosen by its kind: lstm or gru, transformer, inception_time, "
        "resnet1d; input_size is the number of features per bar"))
    classifier: ClassifierHeadConfig | None = Field(None, description=(
        "head: pooling then class logits (n_classes); the train objective when set"))
    pointer: PointerHeadConfig | None = Field(None, description=(
        "head: per-bar start/end logits locating a labeled pattern, trained beside the classifier"))
    direction: DirectionHeadConfig | None = Field(None, description=(
        "head: pooling then an MLP to one up/down logit (binary direction tasks)"))
    regression: RegressionHeadConfig | None = Field(None, description=(
        "head: pooling then one value per forecast horizon (regression tasks)"))
    reconstruction: ReconstructionHeadConfig | None = Field(None, description=(
        "head: per-bar map back to the input features (masked-autoencoder pretraining)"))
    symbol_embedding: SymbolEmbeddingConfig | None = Field(None, description=(
        "a learned vector per symbol added to the encoder output (pooled models; reads "
        "batch['symbol_id']); not a head"))

    @model_validator(mode="after")
    def _at_least_one_head(self) -> Self:
        if not self.head_names:
            raise ValueError(f"a model needs at least one head; set one of {', '.join(HEAD_NAMES)}")
        return self

    @property
    def head_names(self) -> list[str]:
        """Names of the heads that are set, in HEAD_NAMES order."""
        return [h for h in HEAD_NAMES if getattr(self, h) is not None]

    @property
    def n_features(self) -> int:
        """Input features per bar, the F of (B, T, F)."""
        return self.encoder.input_size
