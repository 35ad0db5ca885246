"""Ensembles of trained direction runs on the bundled BTC/USD minutes: an ensemble file of two
registered members (``models:/NAME@champion``; an LSTM and a transformer with a longer window)
predicts exactly what ``moola evaluate --ensemble`` scored on the test segment; fixed weights
are the weighted average of the members' calibrated probabilities on the rows both predict;
stacking is fitted on validation rows only; members that predict another horizon or from
another feature set are refused by name and field; a bad file lists every problem."""

from __future__ import annotations

import json
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from rich.console import Console
from sklearn.linear_model import LogisticRegression

from _data_helpers import cli
from _train_helpers import ROOT
from moola.config import ConfigError
from moola.data import Store, ingest
from moola.datasets.tasks import DataConfig, resolve_store
from moola.evaluation import classification_metrics
from moola.inference import Ensemble, EnsembleConfig, EnsembleMismatchError, Predictor, log_proba
from moola.pipelines.predict import load_ensemble
from moola.pipelines.train import RunConfig, run_train
from moola.registry import promote, read_gates
from moola.training.manifest import read_manifest

DEMO = ROOT / "configs" / "direction_demo.yaml"
TINY = ["train.epochs=1", "data.stride=10", "baselines=[majority]", "train.device=cpu",
        "train.num_threads=1", "economics=null"]
PERMISSIVE = 'metrics:\n  accuracy: ">= 0.3"\n  ece: {op: "<=", value: 0.5}\nmin_test_rows: 100\n'
CLASSES = ["down", "up"]

pytestmark = [pytest.mark.usefixtures("one_torch_thread"),
              pytest.mark.filterwarnings("ignore::moola.training.guards.GuardWarning")]


@dataclass(frozen=True)
class Runs:
    lstm: Path
    transformer: Path  # 40-bar windows: its first prediction comes 8 bars after the LSTM's
    other: Path  # 3-bar horizon from relative11 features
    store: Path


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> Runs:
    """Three 1-epoch runs on the bundled minutes' last 10,000 bars (a week: every member predicts
    every window of it in seconds)."""
    out = tmp_path_factory.mktemp("ensemble_runs")
    bundled = resolve_store(DataConfig(bundled="btcusd_1m"), out)
    Store(bundled).read("1m").tail(10_000).write_parquet(out / "week.parquet")
    ingest([out / "week.parquet"], Store(out / "week"))
    dirs = []
    for name, extra in (("lstm", []), ("transformer", ["preset=direction_transformer", "data.window=40"]),
                        ("other", ["data.horizon=3", "data.feature_set=relative11", "data.stride=50"])):
        cfg = RunConfig.from_yaml(DEMO, [f"out_dir={out}", f"name={name}", f"data.store={out / 'week'}",
                                         *TINY, *extra])
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            dirs.append(run_train(cfg, console=Console(quiet=True), show_progress=False).run_dir)
    return Runs(*dirs, store=Path(read_manifest(dirs[0]).store or ""))


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def log_odds(frame: pl.DataFrame, names: list[str]) -> np.ndarray:
    """(N, M) each member's calibrated log p_up - log p_down, computed apart from the Ensemble."""
    return np.stack([log_proba(frame[f"member_{n}_proba_up"].to_numpy())
                     - log_proba(frame[f"member_{n}_proba_down"].to_numpy()) for n in names], 1)


def fixed(tmp_path: Path, a: str | Path, b: str | Path, name: str = "ens.yaml") -> Path:
    return write(tmp_path / name, f"weights: fixed\nmembers:\n  - {{ref: '{a}', weight: 0.35, name: lstm}}\n"
                                  f"  - {{ref: '{b}', weight: 0.65, name: transformer}}\n")


# ------------------------------------------------------------------ the acceptance check


def test_predict_with_registry_members_reproduces_evaluate_on_the_test_segment(runs, tmp_path, mlflow_store):
    gates = write(tmp_path / "gates.yaml", PERMISSIVE)
    for run, name in ((runs.lstm, "ens-lstm"), (runs.transformer, "ens-transformer")):
        assert promote(run, read_gates(gates), gates_file=gates, name=name).passed
    spec = fixed(tmp_path, "models:/ens-lstm@champion", "models:/ens-transformer@champion")

    res = cli("evaluate", "--ensemble", spec, "--out", tmp_path / "eval")
    assert res.exit_code == 0, res.output
    scored = pl.read_parquet(tmp_path / "eval" / "ensemble_evaluation_test_rows.parquet")
    members = [f"member_{m}_proba_{c}" for m in ("lstm", "transformer") for c in CLASSES]
    assert scored.columns == ["symbol", "ts", "y", "proba_down", "proba_up", *members]
    # the test segment: the members' test windows (stride 10), after every validation window
    test = read_manifest(runs.lstm).period_envelope("test")
    val = read_manifest(runs.lstm).period_envelope("val")
    assert test is not None and val is not None and scored.height > 50
    assert scored["ts"].min() >= test.start and scored["ts"].min() > val.end
    report = json.loads((tmp_path / "eval" / "ensemble_evaluation_test.json").read_text())
    assert report["combiner"] == {"weights": "fixed", "weight": {"lstm": 0.35, "transformer": 0.65}}
    y = scored["y"].to_numpy()
    assert report["test"]["metrics"] == classification_metrics(
        y, scored.select("proba_down", "proba_up").to_numpy(), CLASSES)

    out = tmp_path / "preds.parquet"
    res = cli("predict", "--ensemble", spec, "--store", runs.store, "--since", val.end.isoformat(),
              "--out", out)
    assert res.exit_code == 0, res.output
    served = pl.read_parquet(out)
    assert served.columns == ["symbol", "ts", "proba_down", "proba_up", *members]
    assert served.height > 9 * scored.height  # every window, not only the stride-10 test ones
    both = scored.join(served, on=["symbol", "ts"], how="left", suffix="_served")
    assert both.height == scored.height
    for c in ["proba_down", "proba_up", *members]:  # the same numbers, bit for bit
        assert both[f"{c}_served"].null_count() == 0, c
        np.testing.assert_array_equal(both[c].to_numpy(), both[f"{c}_served"].to_numpy(), err_msg=c)


# ------------------------------------------------------------------ combining


def test_fixed_weights_average_the_members_calibrated_probabilities_on_common_rows(runs, tmp_path):
    ens = load_ensemble(fixed(tmp_path, runs.lstm, runs.transformer))
    np.testing.assert_array_equal(ens.weights_, [0.35, 0.65])
    bars = Store(runs.store).read("1m").tail(200)
    got = ens.predict_frame(bars)
    a = Predictor.from_dir(runs.lstm).predict_frame(bars)
    b = Predictor.from_dir(runs.transformer).predict_frame(bars)
    # the 40-bar transformer starts 8 windows after the 32-bar LSTM: the ensemble predicts the rest
    assert a.height == b.height + 8 and got.height == b.height
    both = b.join(a, on=["symbol", "ts"], how="inner", suffix="_a")
    assert got["ts"].to_list() == both["ts"].to_list()
    for c in CLASSES:
        want = 0.35 * both[f"proba_{c}_a"].to_numpy() + 0.65 * both[f"proba_{c}"].to_numpy()
        np.testing.assert_allclose(got[f"proba_{c}"].to_numpy(), want, rtol=1e-12, atol=0)
        np.testing.assert_array_equal(got[f"member_lstm_proba_{c}"].to_numpy(),
                                      both[f"proba_{c}_a"].to_numpy())
    np.testing.assert_allclose(got["proba_down"] + got["proba_up"], 1.0, rtol=1e-12)
    # equal weights when none is given
    equal = write(tmp_path / "equal.yaml", f"members:\n  - ref: {runs.lstm}\n  - ref: {runs.transformer}\n")
    e = load_ensemble(equal)
    assert e.names_ == ["lstm", "transformer"]
    np.testing.assert_array_equal(e.weights_, [0.5, 0.5])


def test_stacking_is_fitted_on_validation_rows_only(runs, tmp_path):
    from moola.pipelines._ensemble import split_frame

    spec = write(tmp_path / "stack.yaml", f"weights: stacking\nmembers:\n  - ref: {runs.lstm}\n"
                                          f"  - ref: {runs.transformer}\n")
    ens = load_ensemble(spec)
    assert ens.weights_ is None and ens.stacker_ is not None
    val = split_frame(ens, "val")
    m = read_manifest(runs.lstm)
    v, t = m.period_envelope("val"), m.period_envelope("test")
    assert v is not None and t is not None
    assert val["ts"].min() >= v.start and val["ts"].max() <= v.end < t.start
    assert ens.stacker_.n_rows == val.height > 50
    # the coefficients are a logistic regression of y on the validation log-odds, nothing else
    ref = LogisticRegression(max_iter=1000).fit(log_odds(val, ens.names_), val["y"].to_numpy())
    np.testing.assert_allclose(ens.stacker_.coef, ref.coef_[0], rtol=1e-6)
    test = split_frame(ens, "test")
    got = ens.frame(test.drop("y"))
    want = ref.predict_proba(log_odds(test, ens.names_))[:, 1]
    np.testing.assert_allclose(got["proba_up"].to_numpy(), want, rtol=1e-6)


# ------------------------------------------------------------------ refusals


def test_a_member_predicting_something_else_is_refused_naming_member_and_fields(runs, tmp_path):
    spec = write(tmp_path / "bad.yaml", f"members:\n  - ref: {runs.lstm}\n  - ref: {runs.other}\n")
    with pytest.raises(EnsembleMismatchError) as e:
        load_ensemble(spec)
    msg = str(e.value)
    lstm = f"member 'lstm' ({runs.lstm}) has"
    for field, have, want in (("feature_set", "'relative11'", "'ohlc4'"), ("horizon", "3", "1")):
        assert f"member 'other' ({runs.other}): {field} is {have}, {lstm} {want}" in msg, (field, msg)
    assert "feature_schema_hash" in msg and "label" in msg and "timeframe" not in msg
    res = cli("predict", "--ensemble", spec, "--store", runs.store, "--out", tmp_path / "p.parquet")
    assert res.exit_code == 2 and "horizon is 3" in res.stderr and not (tmp_path / "p.parquet").exists()


def test_a_bad_ensemble_file_lists_every_problem(tmp_path):
    bad = write(tmp_path / "bad.yaml", "weights: median\nmembers:\n  - {ref: a, weight: -1}\n"
                                       "  - {reff: b}\nextra: 1\n")
    with pytest.raises(ConfigError) as e:
        EnsembleConfig.from_yaml(bad)
    text = str(e.value)
    assert str(bad) in text and len(e.value.problems) == 5, text
    for key in ("weights", "members.0.weight", "members.1.ref", "members.1.reff", "extra"):
        assert any(p.startswith(f"{key}:") for p in e.value.problems), (key, text)
    mixed = write(tmp_path / "mixed.yaml", "weights: stacking\nmembers:\n"
                                           "  - {ref: models:/m@champion, weight: 1}\n"
                                           "  - {ref: models:/m@previous}\n")
    with pytest.raises(ConfigError, match=r"stacking fits the weights.*names \['m'\] repeat"):
        EnsembleConfig.from_yaml(mixed)
    with pytest.raises(ConfigError, match="members: List should have at least 2"):
        EnsembleConfig.from_yaml(write(tmp_path / "one.yaml", "members:\n  - ref: a\n"))
    res = cli("evaluate", "--ensemble", bad)
    assert res.exit_code == 2 and "5 problem(s)" in res.stderr


def test_an_ensemble_file_round_trips_and_normalises_fixed_weights(tmp_path):
    cfg = EnsembleConfig.from_dict({"members": [{"ref": "models:/a@champion", "weight": 1},
                                                {"ref": "runs/b", "weight": 3}]})
    again = EnsembleConfig.from_yaml(write(tmp_path / "e.yaml", cfg.to_yaml()))
    assert again == cfg and again.member_names() == ["a", "b"]
    np.testing.assert_array_equal(again.normalised_weights(), [0.25, 0.75])
    assert EnsembleConfig.from_yaml(ROOT / "configs" / "ensemble_example.yaml").weights == "fixed"
    assert repr(Ensemble(cfg)) == "Ensemble(2 members, fixed)"


def test_predict_takes_a_run_directory_or_an_ensemble_not_both(runs, tmp_path):
    spec = fixed(tmp_path, runs.lstm, runs.transformer)
    res = cli("predict", runs.lstm, "--ensemble", spec, "--store", runs.store,
              "--out", tmp_path / "p.parquet")
    assert res.exit_code == 2 and "exactly one" in res.output + res.stderr
    res = cli("evaluate")
    assert res.exit_code == 2 and "exactly one" in res.output + res.stderr
