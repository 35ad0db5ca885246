"""Promotion gates and the model registry (MLflow): which runs may serve, and which one does."""

from moola.registry._gates import (
    GateResult,
    Gates,
    SegmentTrials,
    Threshold,
    evaluate_gates,
    read_gates,
    segment_trials,
)
from moola.registry._registry import (
    CHAMPION,
    PREVIOUS,
    ModelRef,
    Promotion,
    RegisteredModelInfo,
    VersionInfo,
    default_model_name,
    list_models,
    parse_model_ref,
    promote,
    resolve_model_ref,
    rollback,
    show_model,
)

__all__ = [
    "CHAMPION",
    "PREVIOUS",
    "GateResult",
    "Gates",
    "ModelRef",
    "Promotion",
    "RegisteredModelInfo",
    "SegmentTrials",
    "Threshold",
    "VersionInfo",
    "default_model_name",
    "evaluate_gates",
    "list_models",
    "parse_model_ref",
    "promote",
    "read_gates",
    "resolve_model_ref",
    "rollback",
    "segment_trials",
    "show_model",
]
