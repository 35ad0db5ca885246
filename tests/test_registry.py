"""Gates, ``moola promote`` and the model registry on two real tiny runs of the bundled BTC/USD
minutes: gate files parse (or fail naming the key and the metrics the run has), the seeds' gates
refuse a 1-epoch model naming each failing gate and its margin, a permissive file registers it in
a tmp MLflow store, two promotions leave ``champion``/``previous``, rollback swaps them back and
tags the rolled-back version, and a registered version loads with ``Predictor.from_dir`` and
predicts exactly what its run directory predicts.
"""

from __future__ import annotations

import json
import warnings
from dataclasses import dataclass
from pathlib import Path

import polars as pl
import pytest
import yaml
from hypothesis import given
from hypothesis import strategies as st
from mlflow.tracking import MlflowClient
from rich.console import Console

from _data_helpers import cli
from _train_helpers import ROOT
from moola.config import ConfigError
from moola.data import Store
from moola.inference import Predictor
from moola.pipelines.train import RunConfig, run_train
from moola.registry import (
    CHAMPION,
    PREVIOUS,
    Gates,
    Threshold,
    default_model_name,
    evaluate_gates,
    list_models,
    parse_model_ref,
    promote,
    read_gates,
    resolve_model_ref,
    show_model,
)
from moola.training.manifest import read_manifest

DEMO = ROOT / "configs" / "direction_demo.yaml"
SEED_GATES = ROOT / "configs" / "gates_seed.yaml"
DEFAULT_GATES = ROOT / "configs" / "gates_default.yaml"
TINY = ["train.epochs=1", "data.stride=20", "baselines=[majority,logistic]", "train.device=cpu",
        "train.num_threads=1"]
PERMISSIVE = 'metrics:\n  accuracy: ">= 0.3"\n  ece: {op: "<=", value: 0.5}\nmin_test_rows: 100\n'

pytestmark = [pytest.mark.usefixtures("one_torch_thread"),
              pytest.mark.filterwarnings("ignore::moola.training.guards.GuardWarning")]


@dataclass(frozen=True)
class Runs:
    a: Path
    b: Path


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> Runs:
    out = tmp_path_factory.mktemp("registry_runs")
    dirs = []
    for name, seed in (("reg_a", 0), ("reg_b", 1)):
        cfg = RunConfig.from_yaml(DEMO, [f"out_dir={out}", f"name={name}", f"train.seed={seed}", *TINY])
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            dirs.append(run_train(cfg, console=Console(quiet=True), show_progress=False).run_dir)
    return Runs(*dirs)


@pytest.fixture
def store(mlflow_store: MlflowClient) -> MlflowClient:
    return mlflow_store  # conftest: a fresh sqlite store, the cwd an empty dir that stays empty


@pytest.fixture
def permissive(tmp_path) -> Path:
    p = tmp_path / "permissive.yaml"
    p.write_text(PERMISSIVE)
    return p


def _aliases(client: MlflowClient, name: str) -> dict[str, str]:
    return {a: str(v) for a, v in client.get_registered_model(name).aliases.items()}


def _metrics(run_dir: Path) -> dict:
    return json.loads((run_dir / "metrics.json").read_text())


# --------------------------------------------------------------------------- gate files


def test_the_shipped_gate_files_parse_and_round_trip(tmp_path):
    seed = read_gates(SEED_GATES)
    assert {k: str(t) for k, t in seed.metrics.items()} == {"accuracy": ">= 0.68", "ece": "<= 0.05"}
    assert not seed.beats and seed.audit is None and seed.min_test_rows is None
    strict = read_gates(DEFAULT_GATES)
    assert {"majority", "logistic"} <= set(strict.beats)
    assert strict.audit == "passed" and strict.net_sharpe is not None and strict.min_test_rows
    for gates in (seed, strict):
        again = tmp_path / "again.yaml"
        gates.to_yaml(again)
        assert read_gates(again) == gates


def test_threshold_strings_and_structured_form_are_one_type():
    assert Threshold.model_validate(">= 0.68") == Threshold(op=">=", value=0.68)
    assert Threshold.model_validate({"op": "<", "value": 1e-2}) == Threshold(op="<", value=0.01)
    t = Threshold.model_validate("<= 0.05")
    assert t.holds(0.05) and not t.holds(0.0501)
    assert t.margin(0.04) == pytest.approx(0.01) and t.margin(0.07) == pytest.approx(-0.02)
    assert Threshold.model_validate("> 0").margin(-1.5) == -1.5


@given(op=st.sampled_from([">=", ">", "<=", "<"]), value=st.floats(-1e6, 1e6),
       measured=st.floats(-1e6, 1e6))
def test_a_threshold_holds_exactly_when_its_margin_says_so(op, value, measured):
    t = Threshold(op=op, value=value)
    m = t.margin(measured)
    assert t.holds(measured) == (m >= 0 if op in (">=", "<=") else m > 0)
    assert Threshold.model_validate(str(t)) == t  # the YAML string round-trips exactly


@pytest.mark.parametrize("text, key", [
    ('metrics:\n  accuracy: "=> 0.68"\n', "metrics.accuracy"),
    ('metrics:\n  accuracy: 0.68\n', "metrics.accuracy"),
    ("min_test_rows: 0\n", "min_test_rows"),
    ("net_sharpe: {op: '>', value: .nan}\n", "net_sharpe.value"),
    ("audit: yes please\n", "audit"),
    ("acuracy: '>= 0.5'\n", "acuracy"),
])
def test_bad_gate_files_name_the_file_and_key(tmp_path, text, key):
    p = tmp_path / "bad.yaml"
    p.write_text(text)
    with pytest.raises(ConfigError) as e:
        read_gates(p)
    assert str(p) in str(e.value) and key in str(e.value)


def test_an_unknown_metric_is_an_error_listing_the_runs_metrics(runs, tmp_path):
    with pytest.raises(ConfigError) as e:
        evaluate_gates(runs.a, Gates(metrics={"acuracy": Threshold(op=">=", value=0.5)}))
    msg = str(e.value)
    assert "'acuracy'" in msg and "accuracy" in msg and "balanced_accuracy" in msg and "ece" in msg
    with pytest.raises(ConfigError, match="no key 'nope'"):
        evaluate_gates(runs.a, Gates(metrics={"run.nope": Threshold(op=">=", value=0.5)}))
    p = tmp_path / "g.yaml"
    p.write_text("metrics:\n  acuracy: '>= 0.5'\n")
    res = cli("promote", runs.a, "--gates", p)
    assert res.exit_code == 2 and "acuracy" in res.stderr and "balanced_accuracy" in res.stderr


# ------------------------------------------------------------------------ gate results


def test_threshold_and_baseline_gates_measure_the_run(runs):
    m = _metrics(runs.a)
    acc, ece, n = m["model"]["accuracy"], m["model"]["ece"], m["model"]["n_samples"]
    gates = Gates(metrics={"accuracy": Threshold(op=">=", value=0.68), "ece": Threshold(op="<=", value=0.05),
                           "run.test_calibrated.ece": Threshold(op="<=", value=1.0)},
                  min_test_rows=n + 1, beats=["majority", "logistic"])
    res = {r.gate: r for r in evaluate_gates(runs.a, gates)}
    assert list(res) == ["accuracy", "ece", "run.test_calibrated.ece", "min_test_rows",
                         "beats majority", "beats logistic"]
    assert res["accuracy"].passed == (acc >= 0.68) and res["accuracy"].margin == pytest.approx(acc - 0.68)
    assert res["ece"].passed == (ece <= 0.05) and res["ece"].margin == pytest.approx(0.05 - ece)
    assert res["run.test_calibrated.ece"].passed
    assert not res["min_test_rows"].passed and res["min_test_rows"].margin == -1
    for b in ("majority", "logistic"):  # the train recipe measures a CI of each difference
        ci = m["vs_baselines"][b]
        assert ci["diff"] == pytest.approx(acc - m["baseline_metrics"][b]["accuracy"])
        assert res[f"beats {b}"].margin == pytest.approx(ci["ci_low"])
        assert res[f"beats {b}"].passed == (ci["ci_low"] > 0)
        assert "block bootstrap" in res[f"beats {b}"].note


def _with_sections(run_dir: Path, dst: Path, **sections: object) -> Path:
    """A copy of the run whose metrics.json gains ``sections`` (what the CI, audit and economic
    steps of a run write), to check the gates read them."""
    import shutil

    shutil.copytree(run_dir, dst, ignore=shutil.ignore_patterns("ckpt"))
    (dst / "metrics.json").write_text(json.dumps({**_metrics(dst), **sections}))
    return dst


def test_the_lower_ci_bound_decides_when_the_run_has_one(runs, tmp_path):
    ci = {"metric": "accuracy", "diff": 0.02, "ci_low": -0.01, "ci_high": 0.05,
          "ci_method": "block bootstrap"}
    copy = _with_sections(runs.a, tmp_path / "with_ci", vs_baselines={"majority": ci})
    (r,) = evaluate_gates(copy, Gates(beats=["majority"]))
    assert not r.passed and r.margin == -0.01 and "block bootstrap" in r.note and "CI low" in r.measured
    ci["ci_low"] = 0.004
    copy = _with_sections(runs.a, tmp_path / "with_ci2", vs_baselines={"majority": ci})
    (r,) = evaluate_gates(copy, Gates(beats=["majority"]))
    assert r.passed and r.margin == 0.004


@pytest.mark.parametrize("passed, sharpe", [(True, 1.3), (False, -0.4)])
def test_a_measured_audit_and_net_sharpe_decide_their_gates(runs, tmp_path, passed, sharpe):
    line = f"audit: {'passed' if passed else 'FAILED (permuted)'}"
    copy = _with_sections(runs.a, tmp_path / "measured", audit={"passed": passed, "first_line": line},
                          economics={"net_sharpe": sharpe})
    audit, econ = evaluate_gates(copy, Gates(audit="passed", net_sharpe=Threshold(op=">=", value=0.5)))
    assert audit.passed is passed and audit.note == line
    assert econ.passed is passed and econ.margin == pytest.approx(sharpe - 0.5)


def test_unmeasured_gates_fail_as_not_measured(runs):
    gates = Gates(beats=["lightgbm"], audit="passed", net_sharpe=Threshold(op=">=", value=0.0))
    res = evaluate_gates(runs.a, gates)
    assert [r.gate for r in res] == ["beats lightgbm", "audit", "net_sharpe"]
    assert all(not r.passed and r.measured == "not measured" and r.margin is None for r in res[:2])
    # the train recipe's economic check (on by default for binary direction) measures net_sharpe
    assert res[2].margin == pytest.approx(_metrics(runs.a)["economics"]["net_sharpe"])
    assert "logistic, majority" in res[0].note  # which baselines the run does have


# ------------------------------------------------------------------- promote / registry


def test_seed_gates_refuse_a_one_epoch_model_and_register_nothing(runs, store):
    m = _metrics(runs.a)["model"]
    assert m["accuracy"] < 0.68  # one epoch on next-minute direction: far from the seeds' bar
    res = cli("promote", runs.a, "--gates", SEED_GATES)
    assert res.exit_code == 1
    assert "refused" in res.stderr and "accuracy" in res.stderr
    assert f"margin {m['accuracy'] - 0.68:+.4g}" in res.stderr
    assert "FAIL" in res.stdout and ">= 0.68" in res.stdout
    assert store.search_registered_models() == []


def test_the_default_gates_refuse_and_say_what_was_not_measured(runs, store):
    res = cli("promote", runs.a, "--gates", DEFAULT_GATES)
    assert res.exit_code == 1
    for gate in ("min_test_rows", "beats lightgbm", "audit", "net_sharpe"):
        assert gate in res.stderr
    assert "not measured" in res.stdout
    assert store.search_registered_models() == []


def test_promote_twice_champion_previous_rollback(runs, store, permissive):
    name = default_model_name(read_manifest(runs.a))
    assert name == "direction-BTCUSD-1m-h1"
    res = cli("promote", runs.a, "--gates", permissive)
    assert res.exit_code == 0, res.output
    assert f"{name} version 1 is the champion" in res.stdout
    second = promote(runs.b, read_gates(permissive), gates_file=permissive)
    assert second.passed and second.version == "2" and second.previous == "1"
    assert _aliases(store, name) == {CHAMPION: "2", PREVIOUS: "1"}
    v2 = store.get_model_version(name, "2")
    man_b = read_manifest(runs.b)
    assert v2.tags["moola.feature_schema_hash"] == man_b.feature_schema_hash
    assert v2.tags["moola.feature_set"] == "ohlc4" and v2.tags["moola.gates_file"] == str(permissive)
    assert v2.tags["moola.run_dir"] == str(runs.b.resolve()) and v2.tags["moola.promoted_by"]
    assert json.loads(v2.tags["moola.gate.accuracy"])["passed"] is True
    assert read_gates(permissive) == Gates.model_validate(yaml.safe_load(v2.tags["moola.gates_yaml"]))
    promo_run = store.get_run(v2.run_id)
    assert promo_run.data.tags["moola.command"] == "promote"
    arts = {a.path for a in store.list_artifacts(v2.run_id, "run")}
    assert {"run/manifest.json", "run/weights.safetensors", "run/config.yaml", "run/metrics.json"} <= arts
    assert "run/ckpt" not in arts

    listed = cli("registry", "list")
    assert listed.exit_code == 0 and name in listed.stdout and "champion -> v2" in listed.stdout
    shown = cli("registry", "show", f"{name}@champion")
    assert shown.exit_code == 0 and "version 2 tags" in shown.stdout
    assert f"artifact location: {v2.source}" in shown.stdout

    back = cli("registry", "rollback", name)
    assert back.exit_code == 0 and "from version 2 back to version 1" in back.stdout
    assert _aliases(store, name) == {CHAMPION: "1"}
    assert "champion returned to version 1" in store.get_model_version(name, "2").tags["moola.rolled_back"]
    again = cli("registry", "rollback", name)
    assert again.exit_code == 2 and "nothing to roll back to" in again.stderr
    info, v = show_model(f"models:/{name}/2")
    assert v is not None and v.aliases == [] and [x.version for x in info.versions] == ["2", "1"]
    assert [m.name for m in list_models()] == [name]


def test_a_registered_version_loads_and_predicts_like_its_run_directory(runs, store, permissive, tmp_path):
    promote(runs.a, read_gates(permissive), gates_file=permissive, name="btc-demo")
    local = resolve_model_ref("models:/btc-demo@champion", cache_dir=tmp_path / "cache")
    assert local != runs.a and (local / "manifest.json").is_file()
    assert resolve_model_ref("models:/btc-demo/1", cache_dir=tmp_path / "cache") == local
    served, original = Predictor.from_dir(local), Predictor.from_dir(runs.a)
    bars = Store(read_manifest(runs.a).store or "").read("1m").tail(served.required_bars + 20)
    got, want = served.predict_frame(bars), original.predict_frame(bars)
    assert got.height == 21
    assert got.equals(want)
    assert pl.Series(got["proba_up"]).is_between(0, 1).all()
    # a version whose source is not a local folder (runs:/ URI) is downloaded into the cache
    _, v1 = show_model("btc-demo/1")
    assert v1 is not None
    remote = store.create_model_version("btc-demo", f"runs:/{v1.run_id}/run", run_id=v1.run_id)
    fetched = resolve_model_ref(f"models:/btc-demo/{remote.version}", cache_dir=tmp_path / "cache")
    assert fetched == tmp_path / "cache" / "btc-demo" / str(remote.version) / "run"
    assert Predictor.from_dir(fetched).predict_frame(bars).equals(want)


def test_bad_references_say_what_exists(runs, store, permissive):
    with pytest.raises(ValueError, match="not a model reference"):
        parse_model_ref("models:/a@b@c")
    assert parse_model_ref("m/3").version == "3" and parse_model_ref("models:/m@x").alias == "x"
    with pytest.raises(ValueError, match="registered: none"):
        show_model("nobody")
    promote(runs.a, read_gates(permissive), gates_file=permissive, name="m")
    with pytest.raises(ValueError, match=r"no alias 'best'; aliases: champion -> v1"):
        resolve_model_ref("models:/m@best")
    with pytest.raises(ValueError, match="no version 7; versions: 1"):
        show_model("m/7")
    with pytest.raises(ValueError, match="letters, digits"):
        promote(runs.a, read_gates(permissive), gates_file=permissive, name="a/b")
    res = cli("registry", "show", "nobody@champion")
    assert res.exit_code == 2 and "registered: m" in res.stderr
