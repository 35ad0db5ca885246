"""Serving a trained run: raw bars -> the run's features, windows and normaliser -> its model ->
temperature-scaled probabilities (or regression scores), refusing bars that differ from what
the run was trained on; ``export_run`` writes one as a self-contained ONNX or TorchScript file.
Sits above ``training`` and ``evaluation`` in the base layers."""

from moola.inference._ensemble import (
    Ensemble,
    EnsembleConfig,
    EnsembleMember,
    EnsembleMismatchError,
    Stacker,
    member_column,
)
from moola.inference._export import (
    EXPORT_FILES,
    EXPORT_FORMATS,
    EXPORT_JSON,
    ExportError,
    export_run,
    require_onnx,
)
from moola.inference._predictor import (
    MIN_BATCH,
    IncompatibleBarsError,
    Predictor,
    calibrated,
    check_feature_schema,
    head_values,
    log_proba,
    prediction_frame,
)
from moola.inference._serving import (
    ENGINE_ATOL,
    ENGINES,
    SMALL_BATCH,
    Engine,
    ServingGraph,
    build_engine,
)

__all__ = [
    "ENGINES",
    "ENGINE_ATOL",
    "EXPORT_FILES",
    "EXPORT_FORMATS",
    "EXPORT_JSON",
    "MIN_BATCH",
    "SMALL_BATCH",
    "Engine",
    "Ensemble",
    "EnsembleConfig",
    "EnsembleMember",
    "EnsembleMismatchError",
    "ExportError",
    "IncompatibleBarsError",
    "Predictor",
    "ServingGraph",
    "Stacker",
    "build_engine",
    "calibrated",
    "check_feature_schema",
    "export_run",
    "head_values",
    "log_proba",
    "member_column",
    "prediction_frame",
    "require_onnx",
]
