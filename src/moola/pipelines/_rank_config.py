"""The typed config of a cross-sectional ranking run (``moola rank ...``)."""

from __future__ import annotations

from datetime import date
from pathlib import Path
from typing import Literal

from pydantic import Field, PositiveInt, field_validator, model_validator

from moola.config import MAX_REPEATS, MAX_WORKERS, Bars, Config
from moola.datasets.graphs import GraphConfig
from moola.datasets.xsection import ProcessorConfig, processor_config
from moola.evaluation.ranking import LongShortConfig
from moola.features import FeatureSet, get_feature_set
from moola.models.config import unique_horizons
from moola.models.ranking import RankingModelConfig
from moola.training import EarlyStoppingConfig, TrainConfig
from moola.training.ranking import RankingLossConfig

__all__ = ["RankConfig", "RankDataConfig", "RankSplitConfig", "RankWalkForwardConfig"]

RankBaseline = Literal["lightgbm", "ridge", "mlp", "temporal_only"]
DEFAULT_BASELINES: tuple[RankBaseline, ...] = ("lightgbm", "ridge", "mlp", "temporal_only")


def _default_feature_processors() -> list[ProcessorConfig]:
    return [processor_config({"kind": "robust_zscore", "clip": 3.0}),
            processor_config({"kind": "fillna", "value": 0.0})]


def _default_label_processors() -> list[ProcessorConfig]:
    return [processor_config({"kind": "cs_rank"})]


class RankWalkForwardConfig(Config):
    """Retrain every ``step`` trading days from ``first_test`` on (Qlib's rolling retraining)."""

    first_test: date
    step: PositiveInt = Field(252, description=(
        "trading days each fold tests on (252: yearly, 40: Qlib's rolling)"))
    val_days: PositiveInt = 126
    mode: Literal["expanding", "sliding"] = "expanding"
    train_days: PositiveInt | None = Field(None, description="sliding mode: training dates per fold")


class RankSplitConfig(Config):
    """Calendar ranges (inclusive ISO dates); purged by the longest label, then embargoed."""

    train: tuple[date, date] = (date(2013, 1, 1), date(2015, 12, 31))
    val: tuple[date, date] = (date(2016, 1, 1), date(2016, 12, 31))
    test: tuple[date, date] = (date(2017, 1, 1), date(2017, 12, 31))
    embargo_days: int = Field(5, ge=0, description="trading days dropped at the start of val and test")
    walk_forward: RankWalkForwardConfig | None = None

    @model_validator(mode="after")
    def _ordered(self) -> RankSplitConfig:
        for name in ("train", "val", "test"):
            a, b = getattr(self, name)
            if a > b:
                raise ValueError(f"split.{name}: start {a} is after end {b}")
        if not (self.train[1] < self.val[0] and self.val[1] < self.test[0]):
            raise ValueError(f"split ranges must be in order without overlap: train {self.train}, "
                             f"val {self.val}, test {self.test}")
        wf = self.walk_forward
        if wf is not None and not self.train[1] < wf.first_test <= self.test[1]:
            raise ValueError(f"split.walk_forward.first_test {wf.first_test} must fall after split.train "
                             f"(the processors are fitted on {self.train[0]}..{self.train[1]}) and by "
                             f"split.test's end {self.test[1]}")
        return self


class RankDataConfig(Config):
    """Where the daily bars come from, features, labels, processors, window and graph."""

    store: str | None = Field(None, description=(
        "a moola store of daily bars; null: the bundled 30-stock S&P subset"))
    symbols: list[str] | None = None
    feature_set: Literal["alpha158", "alpha360"] = "alpha158"
    align: Literal["bars", "calendar"] = Field("bars", description=(
        "alpha158's windows: bars counts each stock's own bars (a missing day is skipped); "
        "calendar is Qlib's: windows count the panel's trading days, a missing day is an empty "
        "slot (min_periods 1); alpha360 has no such choice (bars only)"))
    window: Bars = Field(20, description="T, trading days per stock window")
    horizons: list[Bars] = Field(default_factory=lambda: [1, 5, 10, 20], min_length=1,
                                 max_length=MAX_REPEATS)
    entry: Literal["next_close", "close"] = Field("next_close", description=(
        "next_close: Qlib's label, ret_h = P[t+1+h] / P[t+1] - 1 (trade at the next close); "
        "close: P[t+h] / P[t] - 1"))
    feature_processors: list[ProcessorConfig] = Field(default_factory=_default_feature_processors)
    label_processors: list[ProcessorConfig] = Field(default_factory=_default_label_processors)
    split: RankSplitConfig = RankSplitConfig()
    graph: GraphConfig = Field(default_factory=lambda: GraphConfig(kind="knn+sector"), description=(
        "the graph the data provides (a model's gat.graph must match it unless dense)"))
    sectors: str | None = Field(None, description=(
        "sector file (symbol,sector,...); null: the bundled one for the bundled data, else "
        "../shared/data/sp500_sectors.csv"))
    cache_dir: str | None = Field("cache/panels", description="prepared-panel cache; null: no cache")

    @model_validator(mode="after")
    def _align_exists(self) -> RankDataConfig:
        if self.align != "bars" and self.feature_set != "alpha158":
            raise ValueError(f"data.align={self.align!r} needs data.feature_set alpha158 (only it "
                             f"has a calendar mode); {self.feature_set} takes align 'bars'")
        return self

    def features(self) -> FeatureSet:
        """The configured set with its alignment: one place for training, the cache key and predict."""
        return get_feature_set(self.feature_set, align=self.align) if self.feature_set == "alpha158" \
            else get_feature_set(self.feature_set)

    @field_validator("horizons")
    @classmethod
    def _unique(cls, v: list[int]) -> list[int]:
        return sorted(unique_horizons(v))


def _rank_train() -> TrainConfig:
    return TrainConfig(epochs=20, batch_size=4, eval_batch_size=8, grad_clip=3.0,
                       early_stopping=EarlyStoppingConfig(metric="val_rank_ic", mode="max", patience=5))


class RankConfig(Config):
    """A ranking run: data, model (preset or explicit), training, loss, evaluation."""

    name: str = "rank"
    out_dir: str = "runs"
    data: RankDataConfig = RankDataConfig()
    preset: str | None = "atft_gat_fan"
    model: RankingModelConfig | None = None
    train: TrainConfig = Field(default_factory=_rank_train)
    loss: RankingLossConfig = RankingLossConfig()
    monitor_horizon: PositiveInt | None = Field(None, description=(
        "horizon whose validation RankIC early stopping monitors (val_rank_ic); null: the first"))
    seeds: list[int] = Field(default_factory=lambda: [0, 1, 2, 3, 4], min_length=1,
                             max_length=MAX_REPEATS,
                             description="moola rank compare: seeds of every neural arm")
    baselines: list[RankBaseline] = Field(default_factory=lambda: list(DEFAULT_BASELINES))
    long_short: LongShortConfig = Field(default_factory=lambda: LongShortConfig(horizon=1))
    n_trials: PositiveInt | None = Field(None, description=(
        "configurations tried, for the deflated Sharpe; null: the arms compared (x seeds)"))
    num_workers: int = Field(0, ge=0, le=MAX_WORKERS, description=(
        "batch-loading workers (spawned, never forked); 0 gathers in the training process"))

    @model_validator(mode="after")
    def _checks(self) -> RankConfig:
        if self.preset is None and self.model is None:
            raise ValueError("set either 'preset' or 'model'")
        if self.monitor_horizon is not None and self.monitor_horizon not in self.data.horizons:
            raise ValueError(f"monitor_horizon {self.monitor_horizon} is not one of data.horizons "
                             f"{self.data.horizons}")
        if self.model is not None and list(self.model.horizons) != list(self.data.horizons):
            raise ValueError(f"model.horizons {self.model.horizons} != data.horizons {self.data.horizons}")
        hw = self.loss.horizon_weights
        if hw is not None and len(hw) != len(self.data.horizons):
            raise ValueError(f"loss.horizon_weights has {len(hw)} entries; data.horizons has "
                             f"{len(self.data.horizons)} ({self.data.horizons})")
        return self

    @property
    def run_dir(self) -> Path:
        return Path(self.out_dir) / self.name
