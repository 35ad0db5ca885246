"""Typed training configuration: one schema for every objective."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from moola.config import MAX_BATCH, MAX_EPOCHS, MAX_REPEATS, MAX_STEPS, MAX_WORKERS, Config


class OptimizerConfig(Config):
    """The optimizer and its settings."""

    name: Literal["adamw", "adam", "sgd", "adabelief"] = Field("adamw", description=(
        "adamw (decoupled weight decay), adam, sgd (with momentum) or adabelief"))
    # 0 is for deliberately untrainable smoke runs (the guards say so)
    lr: float = Field(1e-3, ge=0, description=(
        "learning rate (the base rate warmup and schedules scale); 0 trains nothing, and the "
        "guards say so"))
    weight_decay: float = Field(1e-2, ge=0, description="weight decay coefficient (0: none)")
    momentum: float = Field(0.9, ge=0, lt=1, description="sgd only: momentum")
    betas: tuple[float, float] = Field((0.9, 0.999), description=(
        "adamw, adam and adabelief: the two moment decay rates"))


class SchedulerConfig(Config):
    """``warmup_steps`` linearly ramps the LR before the chosen schedule takes over."""

    name: Literal["none", "cosine_warm_restarts", "one_cycle", "plateau"] = Field("none", description=(
        "none: constant LR; cosine_warm_restarts: cosine cycles of T_0 epochs; one_cycle: up to "
        "max_lr and down over the run's steps; plateau: cut by factor when monitor stalls"))
    T_0: int = Field(10, ge=1, le=MAX_EPOCHS, description=(
        "cosine_warm_restarts: epochs of the first cycle"))
    T_mult: int = Field(1, ge=1, le=MAX_REPEATS, description=(
        "cosine_warm_restarts: each cycle is this many times longer than the previous one"))
    eta_min: float = Field(0.0, ge=0, description=(
        "cosine_warm_restarts: the lowest LR of a cycle (an lr of 0 stays 0)"))
    max_lr: float | None = Field(None, description=(
        "one_cycle: the peak LR; None: train.optimizer.lr (per parameter group)"))
    pct_start: float = Field(0.3, gt=0, lt=1, description=(
        "one_cycle: fraction of all steps spent rising to the peak"))
    factor: float = Field(0.5, gt=0, lt=1, description="plateau: the LR is multiplied by this at each cut")
    patience: int = Field(3, ge=0, le=MAX_EPOCHS, description=(
        "plateau: epochs without improvement of scheduler.monitor before a cut"))
    monitor: str = Field("val_loss", description=(
        "plateau: the logged metric watched (maximised if its name has acc, else minimised); a "
        "val_ metric falls back to its train_ twin without validation data"))
    warmup_steps: int = Field(0, ge=0, le=MAX_STEPS, description=(
        "optimizer steps over which the LR ramps linearly up to its scheduled value (0: none)"))


class LossConfig(Config):
    """How the training loss weights classes and smooths targets."""

    class_weights: Literal["none", "balanced"] | list[float] = Field("none", description=(
        "none; balanced: inverse training-class frequencies (a direction logit: pos_weight "
        "n_down / n_up); or one weight per class (classifier head only)"))
    focal_gamma: float = Field(0.0, ge=0, description=(
        "classifier head: focal-loss exponent down-weighting easy samples (0: plain cross-entropy)"))
    label_smoothing: float = Field(0.0, ge=0, lt=1, description=(
        "classifier and direction heads: this share of the target mass spread evenly over the "
        "classes (0: none)"))
    pointer_weight: float = Field(0.5, ge=0, description=(
        "classifier with a pointer head: weight of the start/end pointer loss added to the class "
        "loss (0: off)"))


class EarlyStoppingConfig(Config):
    """Stop when ``metric`` has not improved for ``patience`` epochs; keep the best weights."""

    metric: str = Field("val_loss", description="the logged epoch metric watched")
    mode: Literal["min", "max"] = Field("min", description="min: lower is better; max: higher is better")
    patience: int = Field(5, ge=1, le=MAX_EPOCHS, description="epochs without improvement before stopping")
    min_delta: float = Field(0.0, ge=0, description="the least change that counts as an improvement")
    restore_best: bool = Field(True, description="end with the best epoch's weights instead of the last")
    # epochs before this one neither become "best" nor count against patience: a fine-tuning run
    # sets it to its freeze_epochs so the kept model is never one whose encoder was still frozen
    start_epoch: int = Field(0, ge=0, le=MAX_EPOCHS, description=(
        "epochs before this one (0-based) are neither best nor counted against patience"))


class GuardConfig(Config):
    """Thresholds of the failure guards (see moola.training.guards)."""

    max_params_per_sample: float = Field(1000.0, description=(
        "warn (naming smaller presets) when the model has more parameters per training sample "
        "than this"))
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
    min_class_recall: float = Field(0.3, description=(
        "class collapse: warn when a class's validation recall of the final model is below this"))
    # the guards' eval-mode check of the training set, on at most this many samples
    train_eval_samples: int = Field(4096, ge=0, le=100 * MAX_BATCH, description=(
        "the guards' eval-mode training accuracy (confirming a too-good-to-be-true alarm, "
        "judging trained-nothing at the end) uses a fixed random subset of at most this many "
        "training samples (an alarm looks at a share of validation's size, >= 256, first); the "
        "per-epoch train_ metrics come from the training pass itself"))
    fail_on_nonfinite: bool = Field(True, description=(
        "not read: a non-finite input batch or training loss always stops the run with an error"))


class TrainConfig(Config):
    """How the model is fitted: epochs, batches, optimizer, schedule, loss, stopping, guards."""

    epochs: int = Field(20, ge=1, le=MAX_EPOCHS, description=(
        "passes over the training windows (raised by min_steps; early stopping may end sooner)"))
    min_steps: int = Field(0, ge=0, le=MAX_STEPS, description=(
        "optimizer steps at least: epochs are raised to reach it (36 series in batches of 64 are "
        "one step per epoch, so 60 epochs would be 60 steps), and early stopping counts patience "
        "only from the epoch that reaches it"))
    batch_size: int = Field(64, ge=1, le=MAX_BATCH, description="training samples per optimizer step")
    optimizer: OptimizerConfig = OptimizerConfig()
    scheduler: SchedulerConfig = SchedulerConfig()
    loss: LossConfig = LossConfig()
    grad_clip: float | None = Field(1.0, gt=0, description=(
        "clip the global gradient norm to this before each step; None: no clipping"))
    early_stopping: EarlyStoppingConfig | None = Field(EarlyStoppingConfig(), description=(
        "keys metric (a logged epoch metric), mode (min or max), patience, min_delta, "
        "restore_best, start_epoch; null: run every epoch and keep the last weights"))
    guards: GuardConfig = GuardConfig()
    device: Literal["auto", "cpu", "cuda"] = Field("auto", description=(
        "auto: CUDA when available, else CPU; cuda without a GPU is an error, not a fallback"))
    precision: Literal["auto", "fp32", "bf16"] = Field("fp32", description=(
        "fp32, or bf16 autocast of the training passes (per-epoch validation and final scores run "
        "fp32, as served); auto: "
        "bf16 where the device computes it natively (CUDA with bf16, a CPU with AVX512-BF16 or "
        "AMX), else fp32 (pretraining's default: its validation loss is equal in bf16)"))
    seed: int = Field(0, description="seeds torch and numpy: weight init, batch order, eval subset")
    # steps between resumable checkpoints; 0 = each epoch
    checkpoint_every: int = Field(0, ge=0, le=MAX_STEPS, description=(
        "optimizer steps between resumable checkpoints, besides the one at each epoch end (0: "
        "epoch ends only)"))
    num_threads: int | None = Field(None, ge=1, le=MAX_WORKERS, description=(
        "torch intra-op CPU threads; None: torch's default"))
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
