"""Typed training configuration: one schema for every objective."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from moola.config import MAX_BATCH, MAX_EPOCHS, MAX_REPEATS, MAX_STEPS, MAX_WORKERS, Config


class OptimizerConfig(Config):
    name: Literal["adamw", "adam", "sgd", "adabelief"] = "adamw"
    lr: float = Field(1e-3, ge=0)  # 0 is for deliberately untrainable smoke runs (the guards say so)
    weight_decay: float = Field(1e-2, ge=0)
    momentum: float = Field(0.9, ge=0, lt=1)  # sgd only
    betas: tuple[float, float] = (0.9, 0.999)


class SchedulerConfig(Config):
    """``warmup_steps`` linearly ramps the LR before the chosen schedule takes over."""

    name: Literal["none", "cosine_warm_restarts", "one_cycle", "plateau"] = "none"
    T_0: int = Field(10, ge=1, le=MAX_EPOCHS)  # cosine: epochs of the first cycle
    T_mult: int = Field(1, ge=1, le=MAX_REPEATS)
    eta_min: float = Field(0.0, ge=0)
    max_lr: float | None = None  # one-cycle peak (default: optimizer lr)
    pct_start: float = Field(0.3, gt=0, lt=1)
    factor: float = Field(0.5, gt=0, lt=1)  # plateau
    patience: int = Field(3, ge=0, le=MAX_EPOCHS)
    monitor: str = "val_loss"  # plateau
    warmup_steps: int = Field(0, ge=0, le=MAX_STEPS)


class LossConfig(Config):
    class_weights: Literal["none", "balanced"] | list[float] = "none"
    focal_gamma: float = Field(0.0, ge=0)
    label_smoothing: float = Field(0.0, ge=0, lt=1)
    pointer_weight: float = Field(0.5, ge=0)


class EarlyStoppingConfig(Config):
    metric: str = "val_loss"
    mode: Literal["min", "max"] = "min"
    patience: int = Field(5, ge=1, le=MAX_EPOCHS)
    min_delta: float = Field(0.0, ge=0)
    restore_best: bool = True
    # epochs before this one neither become "best" nor count against patience: a fine-tuning run
    # sets it to its freeze_epochs so the kept model is never one whose encoder was still frozen
    start_epoch: int = Field(0, ge=0, le=MAX_EPOCHS)


class GuardConfig(Config):
    """Thresholds of the failure guards (see moola.training.guards)."""

    max_params_per_sample: float = 1000.0
    overfit_gap: float = Field(0.05, ge=0, description=(
        "the smallest validation-above-training accuracy gap the leakage alarm reports; it fires "
        "only when, besides, the two binomial intervals at interval_confidence do not overlap"))
    interval_confidence: float = Field(0.95, gt=0, lt=1, description=(
        "confidence of the Wilson intervals on accuracies given their sample counts: the leakage "
        "alarm fires when val's lower bound is above train's upper bound (so 14 validation "
        "windows do not raise it for a chance gap); trained-nothing asks whether the training "
        "accuracy's lower bound is above the majority-class rate"))
    trained_nothing_loss_tol: float = Field(0.005, ge=0, lt=1, description=(
        "trained nothing: the last epoch's train_loss is above (1 - this) x the loss of "
        "predicting the training labels' class frequencies (ln C for balanced classes) while "
        "neither training accuracy nor balanced accuracy is above majority rate / chance "
        "beyond noise"))
    trained_nothing_acc_tol: float = Field(0.01, ge=0, lt=1, description=(
        "trained nothing, too: the last epoch's training accuracy is at most the majority-class "
        "rate + this and its balanced accuracy at most 1 / n_classes + this (a constant guess)"))
    min_class_recall: float = 0.3
    # train metrics (eval mode) on at most this many samples
    train_eval_samples: int = Field(4096, ge=0, le=100 * MAX_BATCH)
    fail_on_nonfinite: bool = True


class TrainConfig(Config):
    epochs: int = Field(20, ge=1, le=MAX_EPOCHS)
    min_steps: int = Field(0, ge=0, le=MAX_STEPS, description=(
        "optimizer steps at least: epochs are raised to reach it (36 series in batches of 64 are "
        "one step per epoch, so 60 epochs would be 60 steps), and early stopping counts patience "
        "only from the epoch that reaches it"))
    batch_size: int = Field(64, ge=1, le=MAX_BATCH)
    optimizer: OptimizerConfig = OptimizerConfig()
    scheduler: SchedulerConfig = SchedulerConfig()
    loss: LossConfig = LossConfig()
    grad_clip: float | None = Field(1.0, gt=0)
    early_stopping: EarlyStoppingConfig | None = EarlyStoppingConfig()
    guards: GuardConfig = GuardConfig()
    device: Literal["auto", "cpu", "cuda"] = "auto"
    precision: Literal["fp32", "bf16"] = "fp32"
    seed: int = 0
    # steps between resumable checkpoints; 0 = each epoch
    checkpoint_every: int = Field(0, ge=0, le=MAX_STEPS)
    num_threads: int | None = Field(None, ge=1, le=MAX_WORKERS)  # torch intra-op threads (None: default)
    eval_batch_size: int | None = Field(None, ge=1, le=MAX_BATCH, description=(
        "samples per evaluation batch (None: max(batch_size, 256)); day-panel runs, whose sample "
        "is a whole day of stocks, set it small"))

    def stopping_after(self, epoch: int) -> TrainConfig:
        """This config with early stopping blind to the epochs before ``epoch`` (e.g. a
        fine-tuning run's frozen phase, so the kept model is never the still-frozen one)."""
        es = self.early_stopping
        if es is None or es.start_epoch >= epoch:
            return self
        return self.model_copy(update={"early_stopping": es.model_copy(update={"start_epoch": epoch})})

    @model_validator(mode="after")
    def _check(self) -> TrainConfig:
        if self.scheduler.name == "plateau" and self.early_stopping is None \
                and not self.scheduler.monitor.startswith(("val_", "train_")):
            raise ValueError(f"scheduler.monitor '{self.scheduler.monitor}' must be a val_/train_ metric")
        return self
