"""A run directory serves: ``Predictor.from_dir`` / ``moola predict`` turn raw bars into the
probabilities the run was evaluated on (bit for bit), from a store, a frame or the last
``required_bars`` bars of a stream; bars or feature code that differ from the manifest are
refused by name; a real pre-manifest run directory still predicts what it scored."""

from __future__ import annotations

import json
import shutil
import warnings
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sklearn.metrics import log_loss
from typer.testing import CliRunner, Result

from _train_helpers import ROOT
from moola.cli import app
from moola.data import Store
from moola.datasets import load_scaler
from moola.datasets.tasks import DataConfig, prepare_data, resolve_store
from moola.features import get_feature_set
from moola.inference import ENGINE_ATOL, IncompatibleBarsError, Predictor
from moola.pipelines.train import RunConfig
from moola.training.manifest import read_manifest

DEMO = ROOT / "configs" / "train_demo.yaml"
FIXTURE = ROOT / "tests" / "fixtures" / "old_run_v1"
SYMBOLS = ["AAPL", "JPM", "MSFT", "XOM"]
OVERRIDES = ["train.epochs=1", "data.stride=20", "baselines=[majority]", "train.device=cpu",
             "train.num_threads=1", f"data.symbols=[{','.join(SYMBOLS)}]"]
PROBA = ["proba_down", "proba_up", "raw_proba_down", "raw_proba_up"]

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def cli(*args: str | Path) -> Result:
    return CliRunner().invoke(app, [str(a) for a in args], catch_exceptions=False)


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> tuple[Path, Path]:
    """``moola train`` once (4 stocks, 1 epoch); the run directory and its store."""
    out = tmp_path_factory.mktemp("predict_run")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        res = cli("train", "--config", DEMO, f"out_dir={out}", *OVERRIDES)
    assert res.exit_code == 0, res.output
    run_dir = out / RunConfig.from_yaml(DEMO).name
    return run_dir, Path(read_manifest(run_dir).store or "")


@pytest.fixture(scope="module")
def predictor(run) -> Predictor:
    return Predictor.from_dir(run[0])


@pytest.fixture(scope="module")
def aapl(run) -> pl.DataFrame:
    return Store(run[1]).read("1d", ["AAPL"])


def test_moola_predict_reproduces_what_moola_evaluate_scored_row_for_row(run, tmp_path):
    run_dir, store = run
    res = cli("evaluate", run_dir)
    assert res.exit_code == 0, res.output
    scored = pl.read_parquet(run_dir / "evaluation_test_rows.parquet")
    assert scored.columns == ["symbol", "ts", "y", *PROBA]
    since = scored["ts"].min()
    out = tmp_path / "preds.parquet"
    res = cli("predict", run_dir, "--store", store, "--since", since.isoformat(), "--out", out)
    assert res.exit_code == 0, res.output
    preds = pl.read_parquet(out)
    assert preds.columns == ["symbol", "ts", *PROBA]
    assert preds["ts"].min() >= since and sorted(preds["symbol"].unique()) == SYMBOLS
    # predict serves every window (stride 1); evaluate scored the run's stride-20 test windows
    assert preds.height > 10 * scored.height
    both = scored.join(preds, on=["symbol", "ts"], how="left", suffix="_served")
    assert both.height == scored.height
    for c in PROBA:  # exactly equal: same features, windows, normaliser, weights and kernels
        assert both[f"{c}_served"].null_count() == 0, c
        assert both[c].dtype == both[f"{c}_served"].dtype, c
        assert (both[c] == both[f"{c}_served"]).all(), (c, (both[c] - both[f"{c}_served"]).abs().max())
    # and those are the numbers the train recipe reported: raw for the model, calibrated apart
    metrics = json.loads((run_dir / "metrics.json").read_text())
    y = scored["y"].to_numpy()
    raw = scored.select("raw_proba_down", "raw_proba_up").to_numpy().astype(np.float64)
    cal = scored.select("proba_down", "proba_up").to_numpy()
    raw_ll = log_loss(y, raw / raw.sum(1, keepdims=True))
    assert raw_ll == pytest.approx(metrics["model"]["log_loss"], rel=1e-9)
    assert log_loss(y, cal) == pytest.approx(metrics["run"]["test_calibrated"]["log_loss"], rel=1e-9)
    assert float((raw.argmax(1) == y).mean()) == metrics["model"]["accuracy"]


def test_evaluate_narrows_to_symbols_and_a_timeframe_and_writes_a_report(run, tmp_path):
    """--symbols/--timeframe pick what evaluate reads; it says what it wrote, and the HTML report
    opens with the verdict on exactly those rows."""
    run_dir, store = run
    copy = tmp_path / run_dir.name
    shutil.copytree(run_dir, copy)
    res = cli("evaluate", copy, "--data", store, "--timeframe", "1d", "--symbols", "AAPL,MSFT")
    assert res.exit_code == 0, res.output
    scored = pl.read_parquet(copy / "evaluation_test_rows.parquet")
    assert sorted(scored["symbol"].unique()) == ["AAPL", "MSFT"]
    out = json.loads((copy / "evaluation_test.json").read_text())["test"]
    assert out["metrics"]["n_samples"] == scored.height
    report = copy / "evaluation_test" / "report.html"
    assert out["report"] == str(report) and f"test report: {report}" in " ".join(res.output.split())
    saved = json.loads((copy / "evaluation_test" / "metrics.json").read_text())
    assert saved["model"]["n_samples"] == scored.height and saved["verdict"]["lines"]
    first = report.read_text().split("</h1>", 1)[1].split("</div>", 1)[0]
    assert "Test verdict: balanced accuracy" in first
    # the run's own metrics.json is untouched: the evaluation writes beside it
    assert (copy / "metrics.json").read_text() == (run_dir / "metrics.json").read_text()
    bad = cli("evaluate", copy, "--timeframe", "7m")
    assert bad.exit_code == 2


def test_predictor_state_comes_from_the_run_directory(run, predictor):
    run_dir, _ = run
    m = read_manifest(run_dir)
    assert predictor.required_bars == get_feature_set("ohlc4").max_lookback + 105 == 106
    assert predictor.temperature_ == m.temperature and predictor.classes_ == ["down", "up"]
    assert predictor.normalizer_ is not None
    assert predictor.normalizer_.to_dict() == load_scaler(run_dir / "normalizer.json").to_dict()
    assert predictor.timeframe_ == "1d" and predictor.window_ == 105


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(k=st.integers(0, 10_000))
def test_a_stream_of_the_last_required_bars_predicts_like_the_full_history(predictor, aapl, k):
    """No look-ahead and no hidden warm-up: the last ``required_bars`` bars up to any bar give
    that bar's prediction, equal to the one computed on the whole history: bit for bit through
    the eager model, to ``ENGINE_ATOL`` through the single-window engine (the default)."""
    full = predictor.predict_frame(aapl)
    i = k % full.height
    ts = full["ts"][i]
    end = int(aapl["ts"].search_sorted(ts)) + 1
    stream = aapl.slice(end - predictor.required_bars, predictor.required_bars)
    one = predictor.predict_frame(stream)
    assert one.height == 1 and one["ts"][0] == ts
    np.testing.assert_allclose(one.drop("symbol", "ts").to_numpy(), full.drop("symbol", "ts")[i].to_numpy(),
                               atol=ENGINE_ATOL, rtol=0)
    eager = Predictor.from_dir(predictor.run_dir_, engine="eager").predict_frame(stream)
    assert eager.drop("symbol", "ts").row(0) == full.drop("symbol", "ts").row(i)


def test_too_short_a_stream_is_an_error_that_says_how_many_bars(predictor, aapl):
    with pytest.raises(ValueError, match="needs 106 consecutive bars"):
        predictor.predict_frame(aapl.tail(predictor.required_bars - 1))


def test_bars_that_differ_from_the_manifest_are_refused_by_name(run, predictor, aapl, tmp_path):
    with pytest.raises(IncompatibleBarsError, match=r"trained on bars with adj_close"):
        predictor.predict_frame(aapl.drop("adj_close"))
    with pytest.raises(IncompatibleBarsError, match=r"lack columns \['volume'\]"):
        predictor.predict_frame(aapl.drop("volume"))
    btc = resolve_store(DataConfig(bundled="btcusd_1m"), tmp_path)
    with pytest.raises(IncompatibleBarsError, match=r"trained on 1d bars, the bars given are 1m"):
        predictor.predict_frame(Store(btc).read("1m"))
    out = tmp_path / "preds.parquet"
    res = cli("predict", run[0], "--store", btc, "--out", out)
    assert res.exit_code == 2
    assert "trained on 1d bars; the store holds ['1m']" in res.stderr.replace("\n", "")
    assert not out.exists()


def test_a_run_whose_feature_schema_differs_is_refused_naming_both(run, tmp_path):
    run_dir, store = run
    copy = tmp_path / "copy"
    shutil.copytree(run_dir, copy, ignore=shutil.ignore_patterns("ckpt"))
    manifest = json.loads((copy / "manifest.json").read_text())
    ohlc4 = get_feature_set("ohlc4")
    # the formulas changed since training: same names, another code hash
    (copy / "manifest.json").write_text(json.dumps({**manifest, "feature_schema_hash": "0" * 16}))
    with pytest.raises(IncompatibleBarsError) as e:
        Predictor.from_dir(copy)
    msg = str(e.value)
    assert "trained on 4 features ['open_lr', 'high_lr', 'low_lr', 'close_lr'] of ohlc4" in msg
    assert f"(feature schema {'0' * 16})" in msg and ohlc4.schema_hash in msg
    assert "feature code (formulas) changed" in msg
    # a manifest naming another set: its features are named and counted
    (copy / "manifest.json").write_text(json.dumps({**manifest, "feature_set": "relative11"}))
    with pytest.raises(IncompatibleBarsError, match=r"moola's relative11 gives 11 features .* names"):
        Predictor.from_dir(copy)
    res = cli("predict", copy, "--store", store, "--out", tmp_path / "p.parquet")
    assert res.exit_code == 2 and "relative11 gives 11 features" in res.stderr.replace("\n", "")


# ------------------------------------------------------------- an old run directory


def test_the_old_run_fixture_predicts_the_probabilities_it_scored(tmp_path):
    """A run written before manifests (moola 90b239b): loaded, served, and its test windows
    reproduce the test metrics that old moola wrote into its metrics.json."""
    store = resolve_store(DataConfig(), tmp_path)
    p = Predictor.from_dir(FIXTURE)
    served = p.predict_frame(store)
    assert sorted(served["symbol"].unique()) == ["AAPL", "MSFT", "XOM"]  # the run's symbols
    cfg = RunConfig.from_yaml(FIXTURE / "config.yaml")
    data = prepare_data(cfg.data, store, normalizer=load_scaler(FIXTURE / "normalizer.json"))
    metrics = json.loads((FIXTURE / "metrics.json").read_text())
    assert len(data.y["test"]) == metrics["run"]["n_test"]
    test = data.meta["test"].select("symbol", pl.col("end_ts").alias("ts")).with_columns(
        y=pl.Series(data.y["test"]))
    both = test.join(served, on=["symbol", "ts"], how="left")
    assert both.height == test.height and both["raw_proba_up"].null_count() == 0
    y = both["y"].to_numpy()
    raw = both.select("raw_proba_down", "raw_proba_up").to_numpy().astype(np.float64)
    assert float((raw.argmax(1) == y).mean()) == metrics["model"]["accuracy"]
    raw_ll = log_loss(y, raw / raw.sum(1, keepdims=True))
    assert raw_ll == pytest.approx(metrics["model"]["log_loss"], rel=1e-6)
    cal = both.select("proba_down", "proba_up").to_numpy()
    assert log_loss(y, cal) == pytest.approx(metrics["run"]["test_calibrated"]["log_loss"], rel=1e-6)
    out = tmp_path / "old.parquet"
    res = cli("predict", FIXTURE, "--store", store, "--out", out)
    assert res.exit_code == 0, res.output
    assert pl.read_parquet(out).equals(served)


def test_a_regression_run_serves_the_scores_it_was_evaluated_on(tmp_path):
    """Regression heads give ``score`` columns; evaluate and predict agree exactly there too."""
    from moola.pipelines.predict import run_predict
    from moola.pipelines.train import run_evaluate, run_train

    cfg = RunConfig.from_dict({
        "name": "reg", "out_dir": str(tmp_path), "preset": None, "baselines": [],
        "data": {"symbols": ["AAPL", "MSFT"], "window": 30, "stride": 10, "task": "regression"},
        "model": {"name": "tiny_reg", "encoder": {"kind": "lstm", "input_size": 4, "hidden": 8, "layers": 1},
                  "regression": {"horizons": [1]}},
        "train": {"epochs": 1, "batch_size": 64, "device": "cpu", "num_threads": 1},
    })
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        outcome = run_train(cfg, show_progress=False)
    m = read_manifest(outcome.run_dir)
    assert (m.task, m.classes, m.temperature) == ("regression", [], None)
    run_evaluate(outcome.run_dir)
    scored = pl.read_parquet(outcome.run_dir / "evaluation_test_rows.parquet")
    assert scored.columns == ["symbol", "ts", "y", "score"]
    served = run_predict(outcome.run_dir, m.store or "", tmp_path / "p.parquet", since=scored["ts"].min())
    assert served.columns == ["symbol", "ts", "score"]
    both = scored.join(served, on=["symbol", "ts"], how="left", suffix="_served")
    assert both["score_served"].null_count() == 0 and (both["score"] == both["score_served"]).all()
