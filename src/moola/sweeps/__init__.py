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

__all__ = [
    "MatrixConfig",
    "Resources",
    "RunSpec",
    "RunState",
    "Selection",
    "SweepLockedError",
    "SweepResult",
    "Variant",
    "expand_matrix",
    "load_matrix",
    "run_sweep",
]
