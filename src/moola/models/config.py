"""Typed model configs: one small class per encoder and head, composed into a ModelConfig.

Every class subclasses moola.config.Config, so unknown keys are errors, every problem is
reported at once by key, and a config round-trips through YAML (load -> dump -> load equal).
"""

from __future__ import annotations

from typing import Annotated, Literal, Self

from pydantic import Field, NonNegativeFloat, PositiveInt, ValidationInfo, field_validator, model_validator

from moola.config import Config

__all__ = [
    "HEAD_NAMES",
    "ClassifierHeadConfig",
    "DirectionHeadConfig",
    "EncoderConfig",
    "ModelConfig",
    "PointerHeadConfig",
    "Pooling",
    "RNNEncoderConfig",
    "ReconstructionHeadConfig",
    "RegressionHeadConfig",
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
    input_size: PositiveInt
    hidden: PositiveInt = 128  # per direction
    layers: PositiveInt = 2
    bidirectional: bool = False
    dropout: Dropout = 0.0  # between stacked layers (ignored for one layer)


class TransformerEncoderConfig(Config):
    """A pre-norm Transformer encoder; ``causal`` keeps every position blind to later bars."""

    kind: Literal["transformer"] = "transformer"
    input_size: PositiveInt
    d_model: PositiveInt = 64
    heads: PositiveInt = 4
    layers: PositiveInt = 2
    ff: PositiveInt = 128
    dropout: Dropout = 0.1
    pos_encoding: Literal["sinusoidal", "learned", "none"] = "sinusoidal"
    causal: bool = False
    max_len: PositiveInt = 512

    # A field (not model) validator, so it is reported alongside other field errors.
    @field_validator("heads")
    @classmethod
    def _heads_divide_d_model(cls, v: int, info: ValidationInfo) -> int:
        return _divides(v, info, "d_model")


EncoderConfig = Annotated[RNNEncoderConfig | TransformerEncoderConfig, Field(discriminator="kind")]


# --- heads ------------------------------------------------------------------------------------


class ClassifierHeadConfig(Config):
    """Attention pooling over time, then a linear layer to class logits."""

    n_classes: Annotated[int, Field(ge=2)] = 2
    hidden: PositiveInt = 128  # attention pooling width
    heads: PositiveInt = 8  # attention pooling heads
    dropout: Dropout = 0.1

    @field_validator("heads")
    @classmethod
    def _heads_divide_hidden(cls, v: int, info: ValidationInfo) -> int:
        return _divides(v, info, "hidden")


class PointerHeadConfig(Config):
    """Per-bar start/end logits locating the pattern; ``weight`` scales its loss in training."""

    weight: NonNegativeFloat = 0.5


class DirectionHeadConfig(Config):
    """Pool, then an MLP to one binary up/down logit."""

    mlp: list[PositiveInt] = Field(default_factory=lambda: [128, 64])
    dropout: Dropout = 0.1
    pooling: Pooling = "last"


class RegressionHeadConfig(Config):
    """Pool, then a linear layer to one value per forecast horizon."""

    horizons: list[PositiveInt] = Field(default_factory=lambda: [1], min_length=1)
    pooling: Pooling = "last"

    @field_validator("horizons")
    @classmethod
    def _unique(cls, v: list[int]) -> list[int]:
        return unique_horizons(v)


class ReconstructionHeadConfig(Config):
    """Per-bar linear map back to input features (masked-autoencoder pretraining)."""

    out_features: PositiveInt


# --- pooled models -----------------------------------------------------------------------------


class SymbolEmbeddingConfig(Config):
    """A learned vector per symbol, added to every step of the encoder output, so one model
    pooled over several symbols can still tell them apart. The model then reads
    ``batch["symbol_id"]`` (B,) int64: the symbol's index in the run's sorted symbol list."""

    n_symbols: PositiveInt = Field(description="symbols the model knows (ids 0 .. n_symbols - 1)")
    dim: PositiveInt | None = Field(None, description=(
        "embedding width; null: the encoder's output width D, added as it is; otherwise a "
        "dim-wide embedding mapped to D by a bias-free linear layer"))


# --- model ------------------------------------------------------------------------------------


class ModelConfig(Config):
    """An encoder plus at least one head; everything needed to rebuild a model from a checkpoint."""

    name: Annotated[str, Field(min_length=1)]
    encoder: EncoderConfig
    classifier: ClassifierHeadConfig | None = None
    pointer: PointerHeadConfig | None = None
    direction: DirectionHeadConfig | None = None
    regression: RegressionHeadConfig | None = None
    reconstruction: ReconstructionHeadConfig | None = None
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
