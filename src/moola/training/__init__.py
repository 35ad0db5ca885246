"""One training loop for every objective, with callbacks, guards and resumable checkpoints."""

from moola._io import data_fingerprint
from moola.training.callbacks import Callback, EarlyStopping, FreezeSchedule, ProgressBar
from moola.training.checkpoint import (
    CheckpointError,
    from_checkpoint,
    load_weights,
    read_config,
    read_history,
    save_weights,
)
from moola.training.config import (
    EarlyStoppingConfig,
    GuardConfig,
    LossConfig,
    OptimizerConfig,
    SchedulerConfig,
    TrainConfig,
)
from moola.training.data import Batch, BatchSource, DataGuardError, TensorData, epoch_order
from moola.training.guards import GuardWarning, HealthGuard
from moola.training.objectives import (
    ClassificationObjective,
    DirectionObjective,
    Objective,
    ReconstructionObjective,
    RegressionObjective,
    balanced_class_weights,
    masked_mse,
)
from moola.training.ranking import (
    RankingLossConfig,
    RankingObjective,
    daily_corr,
    masked_pearson,
    soft_rank,
)
from moola.training.rundir import RunExistsError, check_run_directory, replace_directory, run_directory
from moola.training.trainer import (
    FitResult,
    Trainer,
    native_bf16,
    resolve_device,
    resolve_precision,
    seed_everything,
)

__all__ = [
    "Batch",
    "BatchSource",
    "Callback",
    "CheckpointError",
    "ClassificationObjective",
    "DataGuardError",
    "DirectionObjective",
    "EarlyStopping",
    "EarlyStoppingConfig",
    "FitResult",
    "FreezeSchedule",
    "GuardConfig",
    "GuardWarning",
    "HealthGuard",
    "LossConfig",
    "Objective",
    "OptimizerConfig",
    "ProgressBar",
    "RankingLossConfig",
    "RankingObjective",
    "ReconstructionObjective",
    "RegressionObjective",
    "RunExistsError",
    "SchedulerConfig",
    "TensorData",
    "TrainConfig",
    "Trainer",
    "balanced_class_weights",
    "check_run_directory",
    "daily_corr",
    "data_fingerprint",
    "epoch_order",
    "from_checkpoint",
    "load_weights",
    "masked_mse",
    "masked_pearson",
    "native_bf16",
    "read_config",
    "read_history",
    "replace_directory",
    "resolve_device",
    "resolve_precision",
    "run_directory",
    "save_weights",
    "seed_everything",
    "soft_rank",
]
