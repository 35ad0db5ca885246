"""The metric names each objective declares are exactly the ones a real train run records, in
metrics.json's ``run.val`` and as ``val_*`` epoch logs: sweeps and tuning check a selection or
objective against the declared names before training, so a drift here would refuse good names
or let a misspelt one run every trial for nothing."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from rich.console import Console

from _train_helpers import ROOT
from moola.datasets.tasks import DataConfig, resolve_store
from moola.evaluation.ranking import RANKING_METRIC_NAMES
from moola.pipelines.train import RunConfig, run_train, val_metric_names
from moola.training.objectives import metric_name_matches

pytestmark = pytest.mark.filterwarnings("ignore::moola.training.guards.GuardWarning")

TRAIN_DEMO = ROOT / "configs" / "train_demo.yaml"
TINY = ["train.epochs=1", "data.symbols=[AAPL]", "data.stride=20", "baselines=[majority]",
        "train.device=cpu", "train.num_threads=1", "economics=null"]


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> Path:
    return resolve_store(DataConfig(), tmp_path_factory.mktemp("names_store"))


def _regression(store: Path) -> list[str]:
    return [f"data.store={store}", "data.feature_set=ohlc4", "data.window=32", "data.task=regression",
            "preset=null", "model.name=reg", "model.encoder.kind=lstm", "model.encoder.input_size=4",
            "model.encoder.hidden=8", "model.encoder.layers=1", "model.regression.horizons=[1]"]


CASES = {
    "classifier preset": lambda store: [],  # train_demo: simple_lstm, classes sized to the data
    "direction preset": lambda store: ["data.task=direction", "data.direction=binary",
                                       "preset=direction_lstm"],
    "regression model": _regression,
}


@pytest.mark.parametrize("case", list(CASES))
def test_declared_validation_metrics_are_exactly_the_recorded_ones(tmp_path, store, case):
    cfg = RunConfig.from_yaml(TRAIN_DEMO, [f"out_dir={tmp_path}", "name=names", *TINY, *CASES[case](store)])
    out = run_train(cfg, console=Console(quiet=True), show_progress=False)
    recorded = set(json.loads((out.run_dir / "metrics.json").read_text())["run"]["val"])
    resolved = RunConfig.from_yaml(out.run_dir / "config.yaml")  # the model filled in, sized to the data
    assert set(val_metric_names(resolved)) == recorded, sorted(recorded)
    assert all(metric_name_matches(name, val_metric_names(cfg)) for name in recorded)  # before data
    epochs = [json.loads(line) for line in (out.run_dir / "history.jsonl").read_text().splitlines()]
    logged = {k for k in epochs[-1] if k.startswith("val_")}
    assert logged == {"val_loss"} | {f"val_{n}" for n in recorded}


@pytest.mark.slow  # the 30-stock panel is built first (about a minute)
def test_declared_ranking_metrics_are_exactly_the_logged_ones(tmp_path):
    """A rank trial's epochs log ``val_loss`` and the ranking objective's declared names, per horizon."""
    from moola.pipelines.rank import RankConfig, run_rank_train
    from moola.sweeps._tune import logged_metrics

    cfg = RankConfig.from_yaml(ROOT / "configs" / "rank_demo.yaml", [
        f"out_dir={tmp_path / 'runs'}", f"data.cache_dir={tmp_path / 'cache'}", "data.horizons=[1, 5]",
        "model.horizons=[1, 5]", "data.window=5", "model.fan.windows=[3, 5]", "model.encoder.hidden=16",
        "model.gat.hidden=16", "model.head_hidden=16", "train.epochs=1", "seeds=[0]",
        "data.sectors=" + str(ROOT / "data" / "bundled" / "sp500_sectors_subset.csv")])
    out = run_rank_train(cfg, console=Console(quiet=True), show_progress=False, report=False)
    epochs = [json.loads(line) for line in (out.run_dir / "history.jsonl").read_text().splitlines()]
    assert {k for k in epochs[-1] if k.startswith("val_")} == set(logged_metrics(cfg, "rank"))
    val = json.loads((out.run_dir / "metrics.json").read_text())["val"]  # what a rank sweep selects on
    for h in ("1", "5"):
        assert {k for k, v in val[h].items() if not isinstance(v, str)} == set(RANKING_METRIC_NAMES)


def test_declared_ranking_table_names_are_exactly_the_numbers_ranking_metrics_returns():
    """The per-horizon table of a rank run's metrics.json, on real S&P 500 returns with noisy scores."""
    import numpy as np
    import polars as pl

    from _real_data import load_daily
    from moola.evaluation.ranking import LongShortConfig, ranking_metrics

    bars = load_daily(None).sort("symbol", "ts")
    ret = bars.with_columns((pl.col("close").shift(-5).over("symbol") / pl.col("close") - 1).alias("ret"))
    frame = ret.select(pl.col("ts").dt.date().alias("date"), "symbol", "ret").drop_nulls()
    frame = frame.with_columns((pl.col("ret") + np.random.default_rng(0).normal(0, 0.05, frame.height))
                               .alias("score"))
    m = ranking_metrics(frame, 5, LongShortConfig(horizon=5))
    assert {k for k, v in m.items() if not isinstance(v, str)} == set(RANKING_METRIC_NAMES)
