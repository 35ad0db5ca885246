"""Sequence models: typed configs, encoders, task heads, SequenceModel, builders and presets.

    cfg = preset_config("jade", n_features=4)      # a ModelConfig with pinned numbers
    model = build_model(cfg)                       # SequenceModel(encoder, heads)
    out = model(x)                                 # x (B, T, F) -> {"logits": (B, C), ...}
"""

from moola.models.builders import (
    MAX_PARAMS_PER_SAMPLE,
    PRESETS,
    PresetInfo,
    UnknownPresetError,
    build_encoder,
    build_heads,
    build_model,
    count_parameters,
    describe_presets,
    direction_lstm,
    direction_transformer,
    jade,
    jade_compact,
    lstm_classifier,
    lstm_direction,
    preset_config,
    simple_lstm,
    transformer_direction,
)
from moola.models.config import (
    ClassifierHeadConfig,
    DirectionHeadConfig,
    EncoderConfig,
    ModelConfig,
    PointerHeadConfig,
    ReconstructionHeadConfig,
    RegressionHeadConfig,
    RNNEncoderConfig,
    TransformerEncoderConfig,
)
from moola.models.encoders import RNNEncoder, TransformerEncoder
from moola.models.heads import (
    AttentionPooling,
    ClassifierHead,
    DirectionHead,
    PointerHead,
    ReconstructionHead,
    RegressionHead,
)
from moola.models.model import SequenceModel

__all__ = [
    "MAX_PARAMS_PER_SAMPLE",
    "PRESETS",
    "AttentionPooling",
    "ClassifierHead",
    "ClassifierHeadConfig",
    "DirectionHead",
    "DirectionHeadConfig",
    "EncoderConfig",
    "ModelConfig",
    "PointerHead",
    "PointerHeadConfig",
    "PresetInfo",
    "RNNEncoder",
    "RNNEncoderConfig",
    "ReconstructionHead",
    "ReconstructionHeadConfig",
    "RegressionHead",
    "RegressionHeadConfig",
    "SequenceModel",
    "TransformerEncoder",
    "TransformerEncoderConfig",
    "UnknownPresetError",
    "build_encoder",
    "build_heads",
    "build_model",
    "count_parameters",
    "describe_presets",
    "direction_lstm",
    "direction_transformer",
    "jade",
    "jade_compact",
    "lstm_classifier",
    "lstm_direction",
    "preset_config",
    "simple_lstm",
    "transformer_direction",
]
