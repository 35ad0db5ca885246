"""Experiment matrices run in parallel (local processes or Ray) and Optuna tuning, both over
the same training functions as ``moola train`` / ``pretrain`` / ``oof``."""

from moola.sweeps._matrix import (
    MatrixConfig,
    Resources,
    RunSpec,
    Selection,
    Variant,
    expand_matrix,
    load_matrix,
)
from moola.sweeps._runner import RunState, SweepLockedError, SweepResult, run_sweep
from moola.sweeps._space import (
    ChoiceParam,
    FloatParam,
    IntParam,
    ListParam,
    SearchSpace,
    check_space,
    load_space,
    trial_config,
)
from moola.sweeps._tune import (
    MetricError,
    PruningCallback,
    TuneError,
    TuneOptions,
    TuneResult,
    default_storage,
    resolve_storage_url,
    run_tune,
)

__all__ = [
    "ChoiceParam",
    "FloatParam",
    "IntParam",
    "ListParam",
    "MatrixConfig",
    "MetricError",
    "PruningCallback",
    "Resources",
    "RunSpec",
    "RunState",
    "SearchSpace",
    "Selection",
    "SweepLockedError",
    "SweepResult",
    "TuneError",
    "TuneOptions",
    "TuneResult",
    "Variant",
    "check_space",
    "default_storage",
    "expand_matrix",
    "load_matrix",
    "load_space",
    "resolve_storage_url",
    "run_sweep",
    "run_tune",
    "trial_config",
]
