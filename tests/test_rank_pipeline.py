"""The ranking recipe end to end on the bundled 30 real stocks: train -> run directory -> evaluate
and predict from it; the panel cache; compare beside LightGBM on the same rows; a tuning study
over GAT depths 1-4 with no failing trial; config errors that name the key."""

from __future__ import annotations

import json
from datetime import date
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from rich.console import Console

from moola.config import ConfigError
from moola.pipelines._rank_config import RankWalkForwardConfig
from moola.pipelines.rank import (
    RankConfig,
    run_rank_compare,
    run_rank_evaluate,
    run_rank_predict,
    run_rank_train,
)

ROOT = Path(__file__).resolve().parents[1]
QUIET = Console(quiet=True)
HORIZONS = [1, 5]


def _cfg(tmp: Path, **over: object) -> RankConfig:
    base = RankConfig.from_yaml(ROOT / "configs" / "rank_demo.yaml", [
        f"out_dir={tmp / 'runs'}", f"data.cache_dir={tmp / 'cache'}", f"data.horizons={HORIZONS}",
        f"model.horizons={HORIZONS}", "data.window=5", "model.fan.windows=[3, 5]",
        "model.encoder.hidden=16", "model.gat.hidden=16", "model.head_hidden=16", "train.epochs=2",
        "monitor_horizon=5", "seeds=[0]",
        "data.sectors=" + str(ROOT / "data" / "bundled" / "sp500_sectors_subset.csv"),
    ])
    return base.model_copy(update=over)


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[RankConfig, object]:
    tmp = tmp_path_factory.mktemp("rank")
    cfg = _cfg(tmp)
    return cfg, run_rank_train(cfg, console=QUIET, show_progress=False)


def test_train_writes_a_self_describing_run(trained) -> None:
    _, out = trained
    run = out.run_dir
    for f in ("config.yaml", "manifest.json", "metrics.json", "weights.safetensors", "scores_test.parquet",
              "report.html"):
        assert (run / f).is_file(), f
    man = json.loads((run / "manifest.json").read_text())
    assert man["kind"] == "rank_run" and man["task"] == "ranking" and len(man["symbols"]) == 30
    assert man["normalizer"]["features"] and man["extra"]["horizons"] == HORIZONS
    m = out.metrics
    assert set(m["test"]) == {"1", "5"} and m["epochs_run"] >= 1
    assert "Survivorship" in m["survivorship"]
    scores = pl.read_parquet(run / "scores_test.parquet")
    assert scores.get_column("date").cast(pl.String).min() >= "2017-01"
    assert scores.filter(pl.col("score_1").is_nan()).height == 0


def test_second_preparation_loads_the_cache(trained, tmp_path) -> None:
    cfg, out = trained
    again = run_rank_train(cfg.model_copy(update={"name": "again", "train": cfg.train.model_copy(
        update={"epochs": 1})}), console=QUIET, show_progress=False, report=False)
    assert again.metrics["cache_hit"] is True and "panel_load_warm_s" in again.metrics["timings"]
    assert out.metrics["cache_hit"] is False and "panel_build_cold_s" in out.metrics["timings"]


def test_evaluate_reproduces_the_runs_test_metrics(trained) -> None:
    _, out = trained
    m = run_rank_evaluate(out.run_dir, split="test", console=QUIET)
    for h in ("1", "5"):
        assert m[h]["rank_ic_mean"] == pytest.approx(out.metrics["test"][h]["rank_ic_mean"], abs=1e-9)
    man = json.loads((out.run_dir / "manifest.json").read_text())
    assert len(man["test_evaluations"]) >= 1


def test_predict_scores_every_present_stock_with_the_fitted_processors(trained, tmp_path) -> None:
    _, out = trained
    path = run_rank_predict(out.run_dir, tmp_path / "scores.parquet", start="2017-01-01", console=QUIET)
    got = pl.read_parquet(path)
    assert {"date", "symbol", "score_1", "score_5"} <= set(got.columns)
    test = pl.read_parquet(out.run_dir / "scores_test.parquet")
    j = test.join(got, on=["date", "symbol"], suffix="_p")
    assert j.height == test.height  # every scored test row is predicted
    np.testing.assert_allclose(j["score_5_p"].to_numpy(), j["score_5"].to_numpy(), atol=1e-5)


def test_compare_puts_the_model_beside_lightgbm_on_the_same_rows(tmp_path) -> None:
    cfg = _cfg(tmp_path, name="cmp", baselines=["lightgbm", "ridge", "temporal_only"])
    out = run_rank_compare(cfg, console=QUIET, show_progress=False)
    table = pl.read_csv(out.run_dir / "comparison.csv")
    assert set(table["arm"]) == {"demo_gat", "temporal_only", "lightgbm", "ridge"}
    assert set(table["horizon"]) == set(HORIZONS)
    lines = out.metrics["verdicts"]["lines"]
    assert lines and lines[0].startswith("demo_gat ") and "LightGBM" in lines[0]
    html = (out.run_dir / "report.html").read_text()
    assert html.index("LightGBM") < html.index("<table")  # the verdict comes first
    assert (out.run_dir / "sector_attention.png").is_file()
    rows = {a: pl.read_parquet(out.run_dir / "scores" / f"{a}_seed0.parquet").select("date", "symbol")
            for a in ("demo_gat", "lightgbm")}
    assert rows["demo_gat"].sort("date", "symbol").equals(rows["lightgbm"].sort("date", "symbol"))


def test_a_study_over_gat_depths_1_to_4_has_no_failing_trial(tmp_path) -> None:
    from moola.sweeps import TuneOptions, load_space, run_tune

    base = _cfg(tmp_path, name="tune_rank")
    base = base.model_copy(update={"train": base.train.model_copy(update={"epochs": 1})})
    space_file = tmp_path / "space.yaml"
    space_file.write_text("params:\n  model.gat.layers: {choice: [1, 2, 3, 4]}\n"
                          "  model.gat.heads: {choice: [1, 2, 4], divides: model.gat.hidden}\n"
                          "  loss.rank: {choice: [0.0, 0.05, 0.1, 0.2]}\n")
    res = run_tune(base, load_space(space_file),
                   TuneOptions(trials=4, out=tmp_path / "tune", sampler="random", pruner="none",
                               metric="val_rank_ic:max", command="rank", seed=3), console=QUIET)
    assert res.counts.get("FAIL", 0) == 0 and res.counts.get("COMPLETE", 0) == 4
    import optuna

    depths = {t.params["model.gat.layers"] for t in optuna.load_study(study_name=res.study,
                                                                      storage=res.storage).trials}
    assert len(depths) >= 2
    assert res.best_yaml is not None and "moola rank train" in res.best_yaml.read_text()


def test_config_errors_name_the_key(tmp_path) -> None:
    with pytest.raises(ConfigError, match="monitor_horizon"):
        RankConfig.from_dict({"monitor_horizon": 3})
    with pytest.raises(ConfigError, match="split"):
        RankConfig.from_dict({"data": {"split": {"train": ["2016-01-01", "2016-12-31"],
                                                 "val": ["2016-06-01", "2016-12-31"],
                                                 "test": ["2017-01-01", "2017-12-31"]}}})


def test_the_generic_evaluate_and_predict_commands_take_a_ranking_run(trained, tmp_path) -> None:
    from typer.testing import CliRunner

    from moola.cli import app

    _, out = trained
    runner = CliRunner()
    res = runner.invoke(app, ["evaluate", str(out.run_dir), "--split", "val"])
    assert res.exit_code == 0, res.output
    assert "RankIC" in res.output and (out.run_dir / "metrics_val.json").is_file()
    store = Path(json.loads((out.run_dir / "manifest.json").read_text())["store"])
    res = runner.invoke(app, ["predict", str(out.run_dir), "--store", str(store), "--out",
                              str(tmp_path / "s.parquet"), "--since", "2017-06-01"])
    assert res.exit_code == 0, res.output
    got = pl.read_parquet(tmp_path / "s.parquet")
    assert got.get_column("date").min() >= date(2017, 6, 1)


@pytest.mark.slow
def test_walk_forward_retrains_per_fold_and_scores_each_block_once(tmp_path) -> None:
    cfg = _cfg(tmp_path, name="wf")
    data = cfg.data.model_copy(update={"split": cfg.data.split.model_copy(update={
        "walk_forward": RankWalkForwardConfig(first_test=date(2016, 7, 1), step=126, val_days=60)})})
    cfg = cfg.model_copy(update={"data": data, "train": cfg.train.model_copy(update={"epochs": 1})})
    out = run_rank_train(cfg, console=QUIET, show_progress=False, report=False)
    assert len(out.metrics["folds"]) == 3  # 2016-07-01 .. 2017-12-06 (the data end): 3 blocks of 126 days
    scores = pl.read_parquet(out.run_dir / "scores_test.parquet")
    assert scores.select("date", "symbol").is_duplicated().sum() == 0
    assert scores.get_column("date").min() >= date(2016, 7, 1)
    assert scores.get_column("date").max() >= date(2017, 11, 1)
    m = run_rank_evaluate(out.run_dir, split="test", console=QUIET)
    assert m["5"]["rank_ic_mean"] == pytest.approx(out.metrics["test"]["5"]["rank_ic_mean"], abs=1e-12)
    with pytest.raises(ConfigError, match="first_test"):
        RankConfig.from_dict({"data": {"split": {"walk_forward": {"first_test": "2015-06-01"}}}})


def test_data_align_calendar_is_qlibs_alignment_recorded_in_the_panel(tmp_path) -> None:
    """``data.align: calendar`` prepares alpha158 with Qlib's calendar-aligned windows: the
    panel's features are that set's (its schema hash in the meta and a cache key of its own), and
    on the bundled stocks with missing days they differ from the bar-count default. alpha360 has
    no calendar mode: asking for one is a config error naming the key."""
    from moola.data import Store
    from moola.datasets.tasks import DataConfig, resolve_store
    from moola.features import get_feature_set
    from moola.pipelines.rank import _panel_key, _processed

    with pytest.raises(ConfigError, match="align"):
        RankConfig.from_dict({"data": {"feature_set": "alpha360", "align": "calendar"}})
    cfg = _cfg(tmp_path)
    cal = cfg.data.model_copy(update={"align": "calendar"})
    assert cal.features().schema_hash == get_feature_set("alpha158", align="calendar").schema_hash
    assert cal.features().schema_hash != cfg.data.features().schema_hash
    store = Store(resolve_store(DataConfig(store=None, bundled="sp500_daily"), tmp_path))
    assert _panel_key(cal, store) != _panel_key(cfg.data, store)
    bars = store.read("1d", ["BHF", "AAPL", "ESS"])
    p_bars, p_cal = _processed(cfg.data, bars), _processed(cal, bars)
    assert p_cal.meta["feature_params"]["align"] == "calendar"
    assert p_cal.meta["feature_schema_hash"] == cal.features().schema_hash
    assert p_bars.features.shape == p_cal.features.shape
    assert not np.allclose(p_bars.features, p_cal.features, equal_nan=True)
