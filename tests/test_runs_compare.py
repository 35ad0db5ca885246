"""``moola runs compare`` and the headline metrics runs log to MLflow, on a real SQLite store.

One tiny real train run (test_tracking's fixture) and runs recorded through the same tracking
calls the pipelines make (``Tracker``, ``log_final``, ``log_run_summary``): one whose model is on
the other side of its best baseline than the real run's, and a pretraining run with no test metric.
Every value compared is read back from the runs' metrics.json.
"""

from __future__ import annotations

import csv
import io
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from rich.console import Console

import test_tracking as tt
from moola.cli._runs import print_comparison
from moola.tracking import (
    ComparedRun,
    Tracker,
    TrackingOptions,
    compare_runs,
    flatten_metrics,
    log_run_summary,
    run_headline,
)

# test_tracking's fixtures, made afresh for this module: a store, one tiny train run, a client on it
store, train_run, client = tt.store, tt.train_run, tt.client
cli = tt.cli

pytestmark = pytest.mark.filterwarnings("ignore::moola.training.guards.GuardWarning")

LONG_EXPERIMENT = "sweep/comparison_of_rather_verbose_experiment_names"
KEYS = ["run_id", "run_name", "experiment", "kind", "model", "arm", "start_time", "status", "metric",
        "value", "best_baseline", "best_baseline_value", "difference", "beats_baseline"]


@dataclass(frozen=True)
class Recorded:
    run_id: str
    metrics: dict[str, Any]  # its metrics.json
    manifest: dict[str, Any] | None = None


@dataclass(frozen=True)
class Runs:
    real: Recorded
    other: Recorded  # beats its baseline exactly when ``real`` does not
    pretrain: Recorded
    oof: Recorded


def _best(metrics: dict[str, Any], metric: str, sign: int = 1) -> tuple[str, float]:
    scores = {k: v[metric] for k, v in metrics["baseline_metrics"].items()}
    name = max(sorted(scores), key=lambda k: sign * scores[k])
    return name, scores[name]


def _record(command: str, run_name: str, run_dir: Path, metrics: dict[str, Any],
            experiment: str | None = None) -> str:
    """A run recorded as a pipeline records one: params, final metrics.json, its summary."""
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "metrics.json").write_text(json.dumps(metrics))
    with Tracker(command, TrackingOptions(experiment=experiment), run_name=run_name) as t:
        t.log_params({"preset": "", "model.name": f"{command}_model"})
        t.log_final(run_dir / "metrics.json")
        log_run_summary(t, run_dir)
    assert t.run_id is not None
    return t.run_id


@pytest.fixture(scope="module")
def runs(store, train_run, tmp_path_factory) -> Runs:
    real_metrics = json.loads((train_run.run_dir / "metrics.json").read_text())
    manifest = json.loads((train_run.run_dir / "manifest.json").read_text())
    real = Recorded(train_run.run.info.run_id, real_metrics, manifest)
    _, best = _best(real_metrics, "balanced_accuracy")
    beats = real_metrics["model"]["balanced_accuracy"] > best
    other = json.loads(json.dumps(real_metrics))
    other["model"]["balanced_accuracy"] = best + (-0.0625 if beats else 0.0625)
    root = tmp_path_factory.mktemp("compare")
    with tt._tracking(store):
        other_id = _record("train", "fabricated_other_side", root / "other", other, LONG_EXPERIMENT)
        pre = {"val_loss": 0.25, "best_epoch": 1}
        pre_id = _record("pretrain", "encoder_only", root / "pre", pre)
        arms = {"scratch": 0.5625, "pretrained_finetuned": 0.625, "majority": 0.5, "logistic": 0.59375}
        oof = {"arms": {a: {"balanced_accuracy": v} for a, v in arms.items()}, "n_labeled": 96}
        oof_id = _record("oof", "oof_arms", root / "oof", oof)
    return Runs(real, Recorded(other_id, other), Recorded(pre_id, pre), Recorded(oof_id, oof))


def _expected(rec: Recorded, metric: str = "balanced_accuracy", sign: int = 1) -> dict[str, Any]:
    m = rec.metrics
    name, best = _best(m, metric, sign)
    value = m["model"][metric]
    return {"value": value, "best_baseline": name, "best_baseline_value": best,
            "difference": value - best, "beats_baseline": sign * (value - best) > 0}


def _json(*args: str) -> dict[str, dict[str, Any]]:
    res = cli("runs", "compare", "--format", "json", *args)
    assert res.exit_code == 0, res.output
    return {r["run_id"]: r for r in json.loads(res.output)}


# ------------------------------------------------------------------------------ MLflow


def test_a_train_run_logs_its_headline_and_dataset(client, runs):
    run = client.get_run(runs.real.run_id)
    want = _expected(runs.real)
    got = run.data.metrics
    assert got["test_balanced_accuracy"] == want["value"]
    assert got["best_baseline_balanced_accuracy"] == want["best_baseline_value"]
    assert got["vs_best_baseline_balanced_accuracy"] == pytest.approx(want["difference"], abs=1e-15)
    assert run.data.tags["moola.best_baseline"] == want["best_baseline"]
    assert run.data.tags["moola.headline_metric"] == "balanced_accuracy"
    (inp,) = run.inputs.dataset_inputs
    ds, manifest = inp.dataset, runs.real.manifest
    assert manifest is not None
    assert ds.digest == manifest["data_fingerprint"]
    assert json.loads(ds.source) == {"uri": manifest["store"]}
    assert ds.name == f"{Path(manifest['store']).name}:{manifest['timeframe']}"
    assert json.loads(ds.profile)["num_rows"] == 3  # train, val, test
    tags = {t.key: t.value for t in inp.tags}
    assert tags["mlflow.data.context"] == "training"
    assert tags["moola.symbols"] == ",".join(manifest["symbols"])


def test_a_run_without_a_test_metric_logs_no_headline(client, runs):
    run = client.get_run(runs.pretrain.run_id)
    assert not any(k.startswith(("test_", "best_baseline_", "vs_best_baseline_")) for k in run.data.metrics)
    assert "moola.best_baseline" not in run.data.tags and not run.inputs.dataset_inputs


def test_an_oof_run_logs_its_best_model_arm_against_its_best_baseline_arm(client, runs):
    run = client.get_run(runs.oof.run_id)
    assert run.data.metrics["test_balanced_accuracy"] == 0.625  # pretrained_finetuned
    assert run.data.metrics["best_baseline_balanced_accuracy"] == 0.59375  # logistic
    assert run.data.metrics["vs_best_baseline_balanced_accuracy"] == 0.625 - 0.59375
    assert run.data.tags["moola.best_baseline"] == "logistic"
    row = _json("--experiment", "oof")[runs.oof.run_id]
    assert (row["arm"], row["value"], row["best_baseline"], row["beats_baseline"]) == (
        "pretrained_finetuned", 0.625, "logistic", True)


def test_headline_rules_lower_is_better_and_ties():
    flat = flatten_metrics({"arms": {"scratch": {"balanced_accuracy": 0.55},
                                     "pretrained_finetuned": {"balanced_accuracy": 0.6},
                                     "majority": {"balanced_accuracy": 0.5},
                                     "logistic": {"balanced_accuracy": 0.62}}})
    h = run_headline(flat)
    assert h is not None
    assert (h.model, h.value, h.baseline, h.baseline_value) == ("pretrained_finetuned", 0.6, "logistic", 0.62)
    assert h.difference == pytest.approx(-0.02) and h.beats is False
    # equal to the best baseline is not beating it
    tie = run_headline(flatten_metrics({"model": {"accuracy": 0.5},
                                        "baseline_metrics": {"majority": {"accuracy": 0.5}}}), "accuracy")
    assert tie is not None and tie.difference == 0 and tie.beats is False
    # no baseline: a value, no verdict
    alone = run_headline({"model.accuracy": 0.7}, "accuracy")
    assert alone is not None and alone.baseline is None and alone.difference is None and alone.beats is None
    assert run_headline({"val_loss": 0.3}) is None
    # lower is better: a smaller log loss beats
    low = run_headline(flatten_metrics({"model": {"log_loss": 0.6},
                                        "baseline_metrics": {"majority": {"log_loss": 0.69}}}), "log_loss")
    assert low is not None and low.beats is True and low.difference == pytest.approx(-0.09)


# ------------------------------------------------------------------------------ outputs


def test_json_rows_equal_the_runs_metrics(client, runs):
    rows = _json()
    assert all(list(r) == KEYS for r in rows.values())  # stable keys, in order
    for rec in (runs.real, runs.other):
        row = rows[rec.run_id]
        want = _expected(rec)
        assert {k: row[k] for k in want} == pytest.approx(want)
        assert row["beats_baseline"] is want["beats_baseline"]
        assert row["metric"] == "balanced_accuracy" and row["status"] == "FINISHED" and row["kind"] == "train"
    # one beats its best baseline and one does not
    assert {rows[rec.run_id]["beats_baseline"] for rec in (runs.real, runs.other)} == {True, False}
    assert rows[runs.other.run_id]["experiment"] == LONG_EXPERIMENT
    assert rows[runs.other.run_id]["model"] == "train_model"
    pre = rows[runs.pretrain.run_id]
    assert pre["kind"] == "pretrain" and pre["value"] is None and pre["beats_baseline"] is None
    # another metric, lower is better
    loss = _json("--metric", "log_loss")[runs.real.run_id]
    want = _expected(runs.real, "log_loss", sign=-1)
    assert {k: loss[k] for k in want} == pytest.approx(want)
    # one experiment only
    assert set(_json("--experiment", LONG_EXPERIMENT)) == {runs.other.run_id}


def test_csv_rows_equal_the_json_rows(client, runs):
    res = cli("runs", "compare", "--format", "csv")
    assert res.exit_code == 0, res.output
    reader = csv.DictReader(io.StringIO(res.output))
    assert reader.fieldnames == KEYS
    by_id = {r["run_id"]: r for r in reader}
    for rec in (runs.real, runs.other):
        row, want = by_id[rec.run_id], _expected(rec)
        assert float(row["value"]) == want["value"]
        assert float(row["best_baseline_value"]) == want["best_baseline_value"]
        assert row["best_baseline"] == want["best_baseline"]
        assert row["beats_baseline"] == str(want["beats_baseline"]).lower()
    pre = by_id[runs.pretrain.run_id]
    assert pre["value"] == pre["difference"] == pre["beats_baseline"] == ""


def _render(width: int) -> str:
    out = Console(width=width, file=io.StringIO(), record=True, color_system=None)
    print_comparison(compare_runs(), out)
    return out.export_text()


def _row_lines(text: str, run_id: str) -> str:
    """The lines of the table row whose id column holds ``run_id``'s first 8 characters."""
    lines = text.splitlines()
    i = next(i for i, ln in enumerate(lines) if run_id[:8] in ln)
    block = [lines[i]]
    for ln in lines[i + 1:]:
        if any(k in ln for k in ("FINISHED", "FAILED", "RUNNING", "KILLED")):
            break
        block.append(ln)
    return "\n".join(block)


@pytest.mark.parametrize("width", [100, 160])
def test_table_fits_the_width_with_every_column_and_whole_numbers(client, runs, width):
    text = _render(width)
    assert all(len(ln) <= width for ln in text.splitlines()), text
    header = " ".join(text.split("\n\n")[0].splitlines())  # headers may wrap onto two lines
    for col in ("run", "id", "experiment", "kind", "model", "start", "(UTC)", "test", "best", "baseline",
                "diff", "status"):
        assert col in header.split(), (col, text)
    assert not re.search(r"[\d.+-]…|…[\d.+-]", text), text  # no number cut short
    for rec in (runs.real, runs.other):
        want = _expected(rec)
        row = _row_lines(text, rec.run_id)
        for s in (f"{want['value']:.4f}", f"{want['best_baseline_value']:.4f}", want["best_baseline"],
                  f"{want['difference']:+.4f} {'✓' if want['beats_baseline'] else '✗'}", "FINISHED"):
            assert s in row, (s, row)
    assert "sweep/" in text and "…" in _row_lines(text, runs.other.run_id)  # long experiment: middle cut
    pre = _row_lines(text, runs.pretrain.run_id)
    assert "pretrain" in pre and re.search(r"\s-\s+-\s+-\s+FINISHED", pre), pre
    if width == 160:  # room for everything: one line per run, names whole
        assert "fabricated_other_side" in _row_lines(text, runs.other.run_id).splitlines()[0]


def test_a_narrow_terminal_gets_one_block_per_run_with_whole_numbers(client, runs):
    text = _render(60)
    want = _expected(runs.real)
    joined = " ".join(text.split())
    assert f"test {want['value']:.4f}, best baseline {want['best_baseline_value']:.4f}" in joined
    assert not re.search(r"[\d.+-]…|…[\d.+-]", text)


def test_the_cli_table_and_its_errors(client, runs):
    res = cli("runs", "compare")
    assert res.exit_code == 0, res.output
    assert runs.real.run_id[:8] in res.output and "tracking store: sqlite:///" in res.output
    res = cli("runs", "compare", "--experiment", "nope")
    assert res.exit_code == 2
    assert "no MLflow experiment 'nope'" in res.output
    for name in ("train", "pretrain", LONG_EXPERIMENT):
        assert name in res.output
    res = cli("runs", "compare", "--metric", "balanced_acc")
    assert res.exit_code == 2
    assert "unknown metric 'balanced_acc'" in res.output and "did you mean balanced_accuracy?" in res.output
    assert "valid: accuracy, balanced_accuracy, brier, ece, log_loss, macro_f1, roc_auc" in res.output
    assert cli("runs", "compare", "--format", "xml").exit_code == 2


def test_compared_run_keys_are_the_json_keys():
    assert list(ComparedRun.__dataclass_fields__) == KEYS
