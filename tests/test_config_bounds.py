"""Sizes that multiply into memory or time have finite ceilings: an absurd value (batch_size 1e8)
is refused at validation, exit 2 from the CLI, with the key and the bound in the message; every
shipped config and preset stays inside them."""

from __future__ import annotations

import copy
from typing import Any

import pytest
from pydantic import BaseModel
from typer.testing import CliRunner

from _train_helpers import ROOT
from moola.cli import app
from moola.config import (
    MAX_BARS,
    MAX_BATCH,
    MAX_EPOCHS,
    MAX_FEATURES,
    MAX_HEADS,
    MAX_LAYERS,
    MAX_REPEATS,
    MAX_RUNS,
    MAX_STEPS,
    MAX_WIDTH,
    MAX_WORKERS,
    Config,
    ConfigError,
    set_dotted,
)
from moola.datasets.graphs import GraphConfig
from moola.datasets.patterns import LabelerConfig
from moola.evaluation.audit import AuditConfig
from moola.inference._ensemble import EnsembleConfig
from moola.models import PRESETS, RANKING_PRESETS, preset_config, ranking_preset_config
from moola.pipelines.oof import OOFConfig
from moola.pipelines.pretrain import PretrainConfig
from moola.pipelines.rank import RankConfig
from moola.pipelines.train import RunConfig
from moola.registry._gates import Gates
from moola.runtime._config import RuntimeConfig
from moola.sweeps import MatrixConfig, expand_matrix, load_matrix, load_space
from moola.sweeps._tune import TuneError, TuneOptions

CONFIGS = ROOT / "configs"
TRAIN_DEMO = CONFIGS / "train_demo.yaml"
LSTM = {"name": "m", "encoder": {"kind": "lstm", "input_size": 4}, "direction": {"mlp": [8]}}
TRANSFORMER = {"name": "m", "encoder": {"kind": "transformer", "input_size": 4, "d_model": MAX_HEADS,
                                        "heads": 1}, "classifier": {"n_classes": 2, "hidden": 16, "heads": 1}}
INCEPTION = {"name": "m", "encoder": {"kind": "inception_time", "input_size": 4}, "direction": {}}
RESNET = {"name": "m", "encoder": {"kind": "resnet1d", "input_size": 4}, "regression": {}}
RUN = {"preset": "simple_lstm"}
# (config class, a valid base, dotted key, the key as the message names it, ceiling)
BOUNDED: list[tuple[type[Config], dict[str, Any], str, str, int]] = [
    (RunConfig, RUN, "train.batch_size", "train.batch_size", MAX_BATCH),
    (RunConfig, RUN, "train.eval_batch_size", "train.eval_batch_size", MAX_BATCH),
    (RunConfig, RUN, "train.epochs", "train.epochs", MAX_EPOCHS),
    (RunConfig, RUN, "train.min_steps", "train.min_steps", MAX_STEPS),
    (RunConfig, RUN, "train.checkpoint_every", "train.checkpoint_every", MAX_STEPS),
    (RunConfig, RUN, "train.num_threads", "train.num_threads", MAX_WORKERS),
    (RunConfig, RUN, "train.scheduler.warmup_steps", "train.scheduler.warmup_steps", MAX_STEPS),
    (RunConfig, RUN, "train.early_stopping.patience", "train.early_stopping.patience", MAX_EPOCHS),
    (RunConfig, RUN, "data.window", "data.window", MAX_BARS),
    (RunConfig, RUN, "data.stride", "data.stride", MAX_BARS),
    (RunConfig, RUN, "data.horizon", "data.horizon", MAX_BARS),
    (RunConfig, {"preset": None, "model": LSTM}, "model.encoder.hidden", "model.encoder.lstm.hidden",
     MAX_WIDTH),
    (RunConfig, {"preset": None, "model": LSTM}, "model.encoder.layers", "model.encoder.lstm.layers",
     MAX_LAYERS),
    (RunConfig, {"preset": None, "model": LSTM}, "model.encoder.input_size", "model.encoder.lstm.input_size",
     MAX_FEATURES),
    (RunConfig, {"preset": None, "model": LSTM}, "model.encoder.patch", "model.encoder.lstm.patch", MAX_BARS),
    (RunConfig, {"preset": None, "model": LSTM}, "model.direction.mlp", "model.direction.mlp.0", MAX_WIDTH),
    (RunConfig, {"preset": None, "model": TRANSFORMER}, "model.encoder.d_model",
     "model.encoder.transformer.d_model", MAX_WIDTH),
    (RunConfig, {"preset": None, "model": TRANSFORMER}, "model.encoder.heads",
     "model.encoder.transformer.heads", MAX_HEADS),
    (RunConfig, {"preset": None, "model": TRANSFORMER}, "model.encoder.ff", "model.encoder.transformer.ff",
     MAX_WIDTH),
    (RunConfig, {"preset": None, "model": TRANSFORMER}, "model.encoder.max_len",
     "model.encoder.transformer.max_len", MAX_BARS),
    (RunConfig, {"preset": None, "model": TRANSFORMER}, "model.classifier.n_classes",
     "model.classifier.n_classes", MAX_REPEATS),
    (RunConfig, {"preset": None, "model": INCEPTION}, "model.encoder.depth",
     "model.encoder.inception_time.depth", MAX_LAYERS),
    (RunConfig, {"preset": None, "model": INCEPTION}, "model.encoder.kernel_sizes",
     "model.encoder.inception_time.kernel_sizes.0", MAX_BARS),
    (RunConfig, {"preset": None, "model": RESNET}, "model.encoder.filters",
     "model.encoder.resnet1d.filters.0", MAX_WIDTH),
    (RunConfig, {"preset": None, "model": RESNET}, "model.regression.horizons", "model.regression.horizons.0",
     MAX_BARS),
    (PretrainConfig, {}, "data.window", "data.window", MAX_BARS),
    (PretrainConfig, {"encoder": {"kind": "lstm", "input_size": 4}}, "encoder.hidden", "encoder.hidden",
     MAX_WIDTH),
    (PretrainConfig, {}, "mask.block_max", "mask.block_max", MAX_BARS),
    (PretrainConfig, {}, "augment.views", "augment.views", MAX_REPEATS),
    (OOFConfig, {"arms": ["scratch"]}, "folds", "folds", MAX_REPEATS),
    (OOFConfig, {"arms": ["scratch"]}, "seeds", "seeds", MAX_REPEATS),
    (RankConfig, {}, "data.window", "data.window", MAX_BARS),
    (RankConfig, {}, "num_workers", "num_workers", MAX_WORKERS),
    (RankConfig, {"preset": None, "model": ranking_preset_config("gats_like").to_dict()}, "model.gat.hidden",
     "model.gat.hidden", MAX_WIDTH),
    (RankConfig, {"preset": None, "model": ranking_preset_config("gats_like").to_dict()}, "model.gat.layers",
     "model.gat.layers", MAX_LAYERS),
    (LabelerConfig, {}, "window", "window", MAX_BARS),
    (GraphConfig, {}, "corr_window", "corr_window", MAX_BARS),
    (AuditConfig, {}, "block_length", "block_length", MAX_BARS),
    (MatrixConfig, {"name": "s", "command": "train", "base": {}}, "parallel", "parallel", MAX_WORKERS),
    (MatrixConfig, {"name": "s", "command": "train", "base": {}}, "resources.cpus", "resources.cpus",
     MAX_WORKERS),
]


def _with(base: dict[str, Any], key: str, value: int) -> dict[str, Any]:
    """A copy of ``base`` with ``key`` set (a list field gets a one-item list)."""
    data = copy.deepcopy(base)
    list_keys = ("mlp", "kernel_sizes", "filters", "horizons")
    set_dotted(data, key, [value] if key.rsplit(".", 1)[-1] in list_keys else value)
    return data


@pytest.mark.parametrize(("cls", "base", "key", "shown", "bound"), BOUNDED,
                         ids=[f"{c.__name__}.{k}" for c, _, k, _, _ in BOUNDED])
def test_each_bounded_field_accepts_its_ceiling_and_refuses_one_more_naming_key_and_bound(
        cls: type[BaseModel], base: dict[str, Any], key: str, shown: str, bound: int) -> None:
    cls.model_validate(_with(base, key, bound))  # the ceiling itself is allowed
    with pytest.raises(ConfigError) as e:
        cls.from_dict(_with(base, key, bound + 1), source="cfg.yaml")  # type: ignore[attr-defined]
    assert f"{shown}: Input should be less than or equal to {bound} (got {bound + 1})" in str(e.value)


def test_an_absurd_batch_size_from_the_command_line_exits_2_naming_the_key_and_the_bound() -> None:
    res = CliRunner().invoke(app, ["train", "--config", str(TRAIN_DEMO), "train.batch_size=100000000"])
    assert res.exit_code == 2, res.output
    text = " ".join(res.output.split())
    assert "train.batch_size: Input should be less than or equal to 65536 (got 100000000)" in text, text


def test_a_sweep_of_more_runs_than_the_ceiling_and_tune_options_are_refused() -> None:
    grid = {"train.optimizer.lr": list(range(MAX_RUNS // 100 + 1)), "train.seed": list(range(100))}
    with pytest.raises(ConfigError, match=f"make {MAX_RUNS + 100:,} runs; a sweep may have at most"):
        MatrixConfig.from_dict({"name": "s", "command": "train", "base": {}, "grid": grid})
    with pytest.raises(TuneError, match=f"--trials must be between 1 and {MAX_RUNS:,}"):
        TuneOptions(trials=MAX_RUNS + 1)
    with pytest.raises(TuneError, match=f"--jobs must be between 1 and {MAX_WORKERS:,}"):
        TuneOptions(trials=2, jobs=MAX_WORKERS + 1)


SHIPPED: dict[str, type[Config]] = {
    "train_demo.yaml": RunConfig, "direction_demo.yaml": RunConfig, "desk_demo.yaml": RunConfig,
    "tune_demo.yaml": RunConfig, "pretrain_demo.yaml": PretrainConfig, "oof_demo.yaml": OOFConfig,
    "rank_demo.yaml": RankConfig, "rank_sp500.yaml": RankConfig, "runtime_demo.yaml": RuntimeConfig,
    "labeler.yaml": LabelerConfig, "ensemble_example.yaml": EnsembleConfig,
    "ensemble_bybit.yaml": EnsembleConfig, "gates_default.yaml": Gates, "gates_demo.yaml": Gates,
    "gates_seed.yaml": Gates,
}


def test_every_shipped_config_and_preset_is_within_the_bounds() -> None:
    listed = set(SHIPPED) | {"sweep_direction_bybit.yaml", "sweep_pretrain_demo.yaml",
                             "tune_space_demo.yaml", "tune_space_rank.yaml"}
    assert {p.name for p in CONFIGS.glob("*.yaml")} == listed  # a new config file gets a row here
    for name, cls in SHIPPED.items():  # the oof demo names its encoder on the command line
        cls.from_yaml(CONFIGS / name, ["pretrained_encoder=runs/pretrain_demo"] if cls is OOFConfig else [])
    for name in ("sweep_direction_bybit.yaml", "sweep_pretrain_demo.yaml"):
        expand_matrix(load_matrix(CONFIGS / name), CONFIGS / name)
    for name in ("tune_space_demo.yaml", "tune_space_rank.yaml"):
        load_space(CONFIGS / name)
    for preset in PRESETS:
        preset_config(preset)
    for preset in RANKING_PRESETS:
        ranking_preset_config(preset)


def test_the_config_reference_lists_the_ceilings() -> None:
    text = (ROOT / "docs" / "configs.md").read_text()
    assert f"| `train.batch_size` | int (>= 1, <= {MAX_BATCH}) | 64 |" in text
