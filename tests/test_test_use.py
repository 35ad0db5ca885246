"""The test segment's use is recorded and weighed: ``moola train`` and ``moola evaluate`` of the
test split append to ``manifest.test_evaluations``; runs scored on the same test segment (same
symbols, time ranges, timeframe, horizon) are found beside a run, a sweep's siblings included;
``moola promote`` says how many configurations saw the segment, warns when more than one did,
deflates the economic check's Sharpe for them (gate ``deflated_sharpe``) and tags the version.

One real tiny run of the bundled BTC/USD minutes; the sweep siblings are copies of it whose
metrics.json carries another economic result (what another variant would have written).
"""

from __future__ import annotations

import json
import shutil
import warnings
from datetime import timedelta
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient
from rich.console import Console

from _data_helpers import cli
from _train_helpers import ROOT
from moola.evaluation.economics import deflated_sharpe_ratio
from moola.pipelines.train import RunConfig, run_evaluate, run_train
from moola.registry import Gates, Threshold, evaluate_gates, promote, segment_trials
from moola.training import manifest as mf

DEMO = ROOT / "configs" / "direction_demo.yaml"
TINY = ["train.epochs=1", "data.stride=20", "baselines=[majority]", "train.device=cpu",
        "train.num_threads=1"]
OLD_RUN = ROOT / "tests" / "fixtures" / "old_run_v1"
SHARPE_GATES = 'net_sharpe: ">= -100"\ndeflated_sharpe: ">= 0.0"\n'

pytestmark = [pytest.mark.usefixtures("one_torch_thread"),
              pytest.mark.filterwarnings("ignore::moola.training.guards.GuardWarning")]


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("test_use_runs")
    cfg = RunConfig.from_yaml(DEMO, [f"out_dir={out}", "name=tu", *TINY])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return run_train(cfg, console=Console(quiet=True), show_progress=False).run_dir


@pytest.fixture
def store(mlflow_store: MlflowClient) -> MlflowClient:
    return mlflow_store  # conftest: a fresh sqlite store, the cwd an empty dir that stays empty


def _copy(src: Path, dst: Path, *, sharpe: float | None = None, shift_test_s: int = 0) -> Path:
    """A copy of the run (without checkpoints); ``sharpe`` replaces its economic headline,
    ``shift_test_s`` moves its test periods (another test segment)."""
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns("ckpt", "*.parquet"))
    if sharpe is not None:
        metrics = json.loads((dst / "metrics.json").read_text())
        metrics["economics"]["net_sharpe"] = sharpe
        (dst / "metrics.json").write_text(json.dumps(metrics))
    if shift_test_s:
        raw = json.loads((dst / "manifest.json").read_text())
        m = mf.read_manifest(dst)
        moved = {s: mf.TimeRange(start=r.start + timedelta(seconds=shift_test_s), end=r.end)
                 for s, r in m.periods["test"].items()}
        raw["periods"]["test"] = {s: r.model_dump(mode="json") for s, r in moved.items()}
        (dst / "manifest.json").write_text(json.dumps(raw))
    return dst


# ------------------------------------------------------------------------- the manifest


def test_training_records_one_look_and_evaluate_of_test_another(run, tmp_path):
    uses = mf.read_manifest(run).test_evaluations
    assert [u.what for u in uses] == ["train"] and uses[0].git_sha
    copy = _copy(run, tmp_path / "again")
    run_evaluate(copy, split="val", console=Console(quiet=True))
    assert len(mf.read_manifest(copy).test_evaluations) == 1  # validation is not the test segment
    run_evaluate(copy, split="test", console=Console(quiet=True))
    assert [u.what for u in mf.read_manifest(copy).test_evaluations] == ["train", "evaluate"]
    assert mf.record_test_use(copy, "evaluate") == 3
    # everything else in the manifest is as it was
    before, after = mf.read_manifest(run), mf.read_manifest(copy)
    assert after.model_copy(update={"test_evaluations": []}) == before.model_copy(
        update={"test_evaluations": []})


def test_a_manifest_written_without_the_field_reads_as_no_looks(run, tmp_path):
    copy = _copy(run, tmp_path / "old")
    raw = json.loads((copy / "manifest.json").read_text())
    del raw["test_evaluations"]
    (copy / "manifest.json").write_text(json.dumps(raw))
    assert mf.read_manifest(copy).test_evaluations == []
    assert mf.record_test_use(copy, "evaluate") == 1
    assert json.loads((copy / "manifest.json").read_text())["test_evaluations"][0]["what"] == "evaluate"


def test_a_pre_manifest_directory_is_left_untouched(tmp_path):
    old = tmp_path / "old_run_v1"
    shutil.copytree(OLD_RUN, old)
    assert mf.record_test_use(old, "evaluate") == 0
    assert not (old / "manifest.json").exists()
    with pytest.raises(mf.ManifestError, match=r"no manifest\.json"):
        mf.record_test_use(tmp_path, "evaluate")


def test_the_segment_key_is_the_test_periods_timeframe_and_horizon(run):
    m = mf.read_manifest(run)
    key = mf.segment_key(m)
    assert len(key) == 16
    # train/val periods and the model do not change the test segment
    other = m.model_copy(update={"periods": {**m.periods, "train": {}}, "window": 7, "feature_set": "x"})
    assert mf.segment_key(other) == key
    for change in ({"horizon": (m.horizon or 1) + 1}, {"timeframe": "5m"},
                   {"periods": {**m.periods, "test": {}}}):
        assert mf.segment_key(m.model_copy(update=change)) != key, change
    (sym, r), = m.periods["test"].items()
    later = mf.TimeRange(start=r.start, end=r.end + timedelta(minutes=1))
    assert mf.segment_key(m.model_copy(update={"periods": {**m.periods, "test": {sym: later}}})) != key


def test_sweep_siblings_on_the_same_segment_are_found(run, tmp_path):
    sweep = tmp_path / "sweeps" / "s1"
    a = _copy(run, sweep / "runs" / "s1-aaaa")
    b = _copy(run, sweep / "runs" / "s1-bbbb", sharpe=3.0)
    _copy(run, sweep / "runs" / "s1-cccc", shift_test_s=60)  # another test segment
    (sweep / "runs" / "not_a_run").mkdir()
    (sweep / "matrix.yaml").write_text("name: s1\n")
    assert mf.runs_on_test_segment(a) == sorted([a.resolve(), b.resolve()])
    assert mf.runs_on_test_segment(a, roots=[tmp_path]) == [a.resolve()]  # nothing directly there
    seg = segment_trials(a)
    assert (seg.n_configurations, seg.own_evaluations, seg.n_trials) == (2, 1, 2)
    assert "evaluated by 2 configuration(s)" in seg.summary()


# ----------------------------------------------------------------- the deflated Sharpe


def test_the_gate_deflates_the_runs_own_sharpe_for_its_trials(run, tmp_path):
    econ = json.loads((run / "metrics.json").read_text())["economics"]
    sym = next(iter(econ["symbols"].values()))["model"]
    assert {"skew", "kurtosis", "n_periods"} <= set(sym)  # the backtest summary carries them
    alone = segment_trials(run)
    assert alone.n_trials == 1 and alone.deflated is not None
    want = deflated_sharpe_ratio(econ["net_sharpe"], 1, sym["n_periods"], sym["skew"], sym["kurtosis"],
                                 periods_per_year=econ["periods_per_year"])
    assert alone.deflated == want
    # the same run among 5 variants: the expected best of 5 lucky Sharpes is the bar now
    sweep = tmp_path / "runs"
    mine = _copy(run, sweep / "v0")
    for i in range(1, 5):
        _copy(run, sweep / f"v{i}", sharpe=float(i))
    crowd = segment_trials(mine)
    assert crowd.n_trials == 5 and crowd.deflated is not None
    assert crowd.deflated.expected_max_sharpe > 0 and crowd.deflated.probability < alone.deflated.probability
    net, dsr = evaluate_gates(mine, Gates(net_sharpe=Threshold(op=">=", value=-100),
                                          deflated_sharpe=Threshold(op=">=", value=0.95)))
    assert net.measured == f"{econ['net_sharpe']:.4g}"  # net_sharpe stays on the measured Sharpe
    assert "deflated for 5 trial(s)" in net.note
    assert dsr.gate == "deflated_sharpe" and dsr.measured == f"{crowd.deflated.probability:.4g}"
    assert dsr.passed is (crowd.deflated.probability >= 0.95)


def test_the_trials_variance_is_used_only_when_it_exceeds_the_null(run, tmp_path):
    mine = _copy(run, tmp_path / "runs" / "v0")
    _copy(run, tmp_path / "runs" / "v1", sharpe=0.5)
    seg = segment_trials(mine)
    assert seg.deflated is not None and seg.deflated.variance_from.startswith("null")
    for i, sharpe in enumerate((-400.0, 400.0), start=2):  # trials far noisier than one estimate
        _copy(run, tmp_path / "runs" / f"v{i}", sharpe=sharpe)
    wide = segment_trials(mine)
    assert wide.deflated is not None and wide.deflated.variance_from == "trials"
    assert wide.deflated.expected_max_sharpe > seg.deflated.expected_max_sharpe


def test_without_an_economic_check_the_deflated_gate_is_not_measured(run, tmp_path):
    copy = _copy(run, tmp_path / "no_econ")
    metrics = json.loads((copy / "metrics.json").read_text())
    del metrics["economics"]
    (copy / "metrics.json").write_text(json.dumps(metrics))
    (res,) = evaluate_gates(copy, Gates(deflated_sharpe=Threshold(op=">=", value=0.5)))
    assert not res.passed and res.measured == "not measured" and "economic check" in res.note


# ------------------------------------------------------------------------ moola promote


def test_promote_reports_the_segments_use_warns_and_tags_the_version(run, tmp_path, store):
    sweep = tmp_path / "sweep" / "runs"
    mine = _copy(run, sweep / "a")
    _copy(run, sweep / "b", sharpe=2.0)
    _copy(run, sweep / "c", sharpe=-1.0)
    mf.record_test_use(mine, "evaluate")  # a second look by this run: 3 dirs + 1 = 4 trials
    gates = tmp_path / "gates.yaml"
    gates.write_text(SHARPE_GATES)
    res = cli("promote", mine, "--gates", gates)
    assert res.exit_code == 0, res.output
    assert "evaluated by 3 configuration(s)" in res.stdout and "4 trial(s)" in res.stdout
    assert "multiple testing: 4 configurations were evaluated on this test segment" in res.stderr
    assert "deflated_sharpe" in res.stdout
    (mv,) = store.search_model_versions("name = 'direction-BTCUSD-1m-h1'")
    seg = segment_trials(mine)
    assert seg.deflated is not None
    assert mv.tags["moola.test_segment_configs"] == "3" and mv.tags["moola.test_segment_trials"] == "4"
    assert mv.tags["moola.test_segment_key"] == seg.key
    assert float(mv.tags["moola.deflated_sharpe"]) == pytest.approx(seg.deflated.probability, rel=1e-5)
    assert json.loads(mv.tags["moola.deflated_sharpe_detail"])["n_trials"] == 4


def test_a_lone_run_gets_no_multiple_testing_warning(run, tmp_path, store):
    lone = _copy(run, tmp_path / "lone" / "runs" / "only")
    gates = tmp_path / "gates.yaml"
    gates.write_text(SHARPE_GATES)
    promo = promote(lone, Gates.from_yaml(gates), gates_file=gates, name="lone-model")
    assert promo.passed and promo.segment is not None and promo.segment.n_trials == 1
    assert promo.multiple_testing is None
