"""The configuration of the OOF verdict recipe (``moola oof``), shared by the recipe and its
report without the two pipeline modules importing each other."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from moola.config import MAX_REPEATS, Config
from moola.datasets.tasks import LabeledWindowsData
from moola.models.config import ModelConfig
from moola.training import TrainConfig

__all__ = ["BASELINE_ARMS", "Arm", "Baseline", "OOFConfig", "OOFDataConfig"]

Arm = Literal["scratch", "pretrained_frozen", "pretrained_finetuned"]
Baseline = Literal["majority", "logistic", "minirocket"]
BASELINE_ARMS: tuple[Baseline, ...] = ("majority", "logistic", "minirocket")


class OOFDataConfig(LabeledWindowsData):
    """``labels``: the labeled windows compared over folds."""


class OOFConfig(Config):
    """Arms, folds and seeds of the comparison; training settings shared by every arm."""

    name: str = "oof"
    out_dir: str = "runs"
    data: OOFDataConfig = OOFDataConfig()
    preset: str = "jade_compact"
    model: ModelConfig | None = None
    folds: int = Field(5, ge=2, le=MAX_REPEATS)
    seeds: int = Field(5, ge=1, le=MAX_REPEATS)
    # walk_forward: fold k tests time block k+1, trains on the blocks before it (never on later
    # data); blocked: trains on both sides of each test block (explicit opt-in)
    fold_scheme: Literal["walk_forward", "blocked"] = "walk_forward"
    # trading days between any training window and its test block (and same-symbol test windows)
    embargo_bars: int = Field(10, ge=0)
    # walk_forward: labeled windows in the first, train-only block; 50 so that every fold can
    # draw the 50-label point of the efficiency curve and 5 folds still test ~14 windows each
    # (None: N / (folds + 1)). Ignored by blocked folds.
    min_train: int | None = Field(50, ge=2)
    arms: list[Arm] = Field(default_factory=lambda: list[Arm](
        ["scratch", "pretrained_frozen", "pretrained_finetuned"]))
    baselines: list[Baseline] = Field(default_factory=lambda: list[Baseline](BASELINE_ARMS))
    pretrained_encoder: str | None = None
    transfer_mode: Literal["full", "forward-only"] = "full"
    freeze_epochs: int = Field(5, ge=0)  # fine-tuned arm: encoder frozen this many epochs first
    encoder_lr_mult: float = Field(0.1, gt=0)  # fine-tuned arm: encoder LR = lr x this
    allow_transductive: bool = False  # run with an encoder whose pool overlaps the labeled windows
    inner_val: float = Field(0.2, gt=0, lt=0.5)  # share of training windows in the last block
    label_fractions: list[int] = Field(default_factory=lambda: [25, 50])  # + all labels
    efficiency_seeds: int = Field(5, ge=1, le=MAX_REPEATS)  # label subsets (and seeds) per fold and fraction
    train: TrainConfig = TrainConfig(epochs=40, batch_size=32)

    @model_validator(mode="after")
    def _needs_encoder(self) -> OOFConfig:
        if any(a != "scratch" for a in self.arms) and self.pretrained_encoder is None:
            raise ValueError("arms pretrained_* need 'pretrained_encoder' (a pretrain output dir)")
        return self
