"""Feature sets: canonical bars in, float32 FeatureMatrix (keys + schema hash) out."""

from moola.features._aot import CompiledKernel, compile_kernels, compiled_kernels
from moola.features._build import adjusted_bars, build_features, compute_features, serve_features
from moola.features._matrix import FeatureMatrix, schema_hash
from moola.features._registry import (
    FeatureSet,
    FeatureSpec,
    UnknownFeatureSetError,
    feature_table_markdown,
    get_feature_set,
    list_feature_sets,
)

__all__ = [
    "CompiledKernel",
    "FeatureMatrix",
    "FeatureSet",
    "FeatureSpec",
    "UnknownFeatureSetError",
    "adjusted_bars",
    "build_features",
    "compile_kernels",
    "compiled_kernels",
    "compute_features",
    "feature_table_markdown",
    "get_feature_set",
    "list_feature_sets",
    "schema_hash",
    "serve_features",
]
