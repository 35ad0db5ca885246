"""MLflow tracking on real runs of the bundled S&P 500 data: a tiny ``run_train``, ``run_pretrain``
and ``run_oof`` each leave one MLflow run whose final metrics equal their metrics.json, whose
per-epoch history equals the trainer's history.jsonl, whose params equal the saved config and whose
tags and artifacts match the run directory; ``MLFLOW_TRACKING_URI`` and ``MOOLA_TRACKING=off`` are
honoured; a failing run ends FAILED with its traceback; ``moola runs list|show`` read it all back.

The suite turns tracking off (conftest.py); every test here turns it on against a sqlite store in
its tmp dir and works in an empty tmp dir, which must stay empty (no ``./mlflow.db``, no ``./mlruns``).
"""

from __future__ import annotations

import json
import math
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import pytest
from mlflow.entities import Run
from mlflow.tracking import MlflowClient
from rich.console import Console
from typer.testing import CliRunner, Result

from _train_helpers import ROOT
from moola.cli import app
from moola.data import MoolaDataError
from moola.models import lstm_classifier
from moola.pipelines.oof import OOFConfig, run_oof
from moola.pipelines.pretrain import PretrainConfig, run_pretrain
from moola.pipelines.train import RunConfig, run_train
from moola.tracking import Tracker

TRAIN_DEMO = ROOT / "configs" / "train_demo.yaml"
PRETRAIN_DEMO = ROOT / "configs" / "pretrain_demo.yaml"
OOF_DEMO = ROOT / "configs" / "oof_demo.yaml"
MOOLA = Path(sys.executable).parent / "moola"
CPU = ["train.device=cpu", "train.num_threads=1"]
# two epochs, so the per-epoch history has steps 1 and 2 to line up
TRAIN_TINY = ["train.epochs=2", "data.stride=20", "baselines=[majority,logistic]", *CPU]
# a huge min_delta: epoch 2 never "improves", so the restored (final) model is epoch 1's and the
# final val_loss differs from the last epoch's, both logged under the key "val_loss"
PRETRAIN_TINY = ["data.max_pool=100", "encoder.hidden=16", "train.epochs=2",
                 "train.early_stopping.min_delta=1000", *CPU]
PNGS = ("learning_curves.png", "confusion_matrix.png", "reliability.png", "baselines.png")
pytestmark = pytest.mark.filterwarnings("ignore::moola.training.guards.GuardWarning")  # tiny sets


@dataclass(frozen=True)
class Store:
    uri: str  # sqlite:///.../store/mlflow.db
    db: Path
    cwd: Path  # working directory of tracked code: MLflow's defaults would write here
    out: Path  # out_dir of every run (the bundled store is ingested once)


@dataclass(frozen=True)
class Tracked:
    run_dir: Path
    run: Run


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> Store:
    root = tmp_path_factory.mktemp("tracking")
    for d in ("store", "cwd", "runs"):
        (root / d).mkdir()
    db = root / "store" / "mlflow.db"
    return Store(f"sqlite:///{db}", db, root / "cwd", root / "runs")


def _enable(mp: pytest.MonkeyPatch, store: Store) -> None:
    mp.setenv("MOOLA_TRACKING", "on")
    mp.setenv("MLFLOW_TRACKING_URI", store.uri)
    mp.delenv("MLFLOW_EXPERIMENT_NAME", raising=False)
    mp.chdir(store.cwd)


@contextmanager
def _tracking(store: Store) -> Iterator[MlflowClient]:
    """Tracking on against ``store`` for a module fixture's run, undone afterwards."""
    with pytest.MonkeyPatch.context() as mp:
        _enable(mp, store)
        yield MlflowClient()


@pytest.fixture
def client(monkeypatch, store) -> MlflowClient:
    """Tracking on against the module's store for this test."""
    _enable(monkeypatch, store)
    return MlflowClient()


def _only_run(client: MlflowClient, experiment: str, name: str) -> Run:
    exp = client.get_experiment_by_name(experiment)
    assert exp is not None, f"no experiment {experiment!r}"
    runs = client.search_runs([exp.experiment_id], filter_string=f"attributes.run_name = '{name}'")
    assert len(runs) == 1, f"{len(runs)} runs named {name!r} in {experiment!r}"
    return runs[0]


def _quiet() -> Console:
    return Console(quiet=True)


@pytest.fixture(scope="module")
def train_run(store) -> Tracked:
    with _tracking(store) as client:
        cfg = RunConfig.from_yaml(TRAIN_DEMO, [f"out_dir={store.out}", "name=tracked_train", *TRAIN_TINY])
        out = run_train(cfg, console=_quiet(), show_progress=False)
        return Tracked(out.run_dir, _only_run(client, "train", "tracked_train"))


@pytest.fixture(scope="module")
def pretrain_run(store) -> Tracked:
    with _tracking(store) as client:
        cfg = PretrainConfig.from_yaml(PRETRAIN_DEMO, [f"out_dir={store.out}", "name=tracked_pretrain",
                                                       *PRETRAIN_TINY])
        out = run_pretrain(cfg, console=_quiet(), show_progress=False)
        return Tracked(out, _only_run(client, "pretrain", "tracked_pretrain"))


@pytest.fixture(scope="module")
def oof_run(store) -> Tracked:
    with _tracking(store) as client:
        base = OOFConfig.from_yaml(OOF_DEMO, [
            f"out_dir={store.out}", "name=tracked_oof", "folds=2", "seeds=1", "arms=[scratch]",
            "label_fractions=[]", "baselines=[majority]", "train.epochs=2", *CPU])
        model = lstm_classifier(4, 2, hidden=16, layers=1, bidirectional=True, pointer=True, name="tiny")
        cfg = OOFConfig.from_dict({**base.to_dict(), "model": model.to_dict()})
        out = run_oof(cfg, console=_quiet(), show_progress=False)
        return Tracked(out, _only_run(client, "oof", "tracked_oof"))


# ------------------------------------------------------------------------------ helpers


def _numbers(d: dict[str, Any], prefix: str = "") -> dict[str, float]:
    """Every finite number in nested metrics.json under its dotted key (lists are not metrics)."""
    out: dict[str, float] = {}
    for k, v in d.items():
        key = f"{prefix}.{k}" if prefix else k
        if isinstance(v, dict):
            out.update(_numbers(v, key))
        elif isinstance(v, int | float) and math.isfinite(v):
            out[key] = float(v)
    return out


def _close(a: float, b: float) -> bool:
    return a == b or abs(a - b) <= 1e-12 * max(1.0, abs(b))


def _assert_final_metrics(run: Run, run_dir: Path) -> dict[str, float]:
    want = _numbers(json.loads((run_dir / "metrics.json").read_text()))
    assert len(want) >= 5, want
    got = run.data.metrics
    missing = sorted(set(want) - set(got))
    wrong = {k: (got[k], v) for k, v in want.items() if k in got and not _close(got[k], v)}
    assert not missing and not wrong, f"missing {missing}; MLflow vs metrics.json: {wrong}"
    return want


def _assert_history(client: MlflowClient, run: Run, run_dir: Path, keys: tuple[str, ...]) -> int:
    """Each per-epoch key's MLflow history (final step aside) equals history.jsonl, epoch for epoch."""
    lines = [json.loads(s) for s in (run_dir / "history.jsonl").read_text().splitlines() if s.strip()]
    final = int(run.data.tags["moola.final_step"])
    assert final == len(lines) + 1  # final metrics one step after the last epoch
    for key in keys:
        hist = client.get_metric_history(run.info.run_id, key)
        got = sorted((m.step, m.value) for m in hist if m.step != final)
        assert got == [(h["epoch"], h[key]) for h in lines], key
    return len(lines)


def _assert_params(run: Run, flat: dict[str, Any]) -> None:
    want = {k: "" if v is None else str(v) for k, v in flat.items()}
    assert run.data.params == want


def _artifacts(client: MlflowClient, run: Run, path: str = "run") -> dict[str, int | None]:
    return {a.path: a.file_size for a in client.list_artifacts(run.info.run_id, path)}


def _download(client: MlflowClient, run: Run, path: str, dst: Path) -> bytes:
    dst.mkdir(parents=True, exist_ok=True)
    return Path(client.download_artifacts(run.info.run_id, path, str(dst))).read_bytes()


def cli(*args: str) -> Result:
    return CliRunner().invoke(app, list(args), catch_exceptions=False)


@pytest.fixture
def wide(monkeypatch) -> None:
    """A console wide enough that no table row of the CLI wraps (it is 120 off a terminal)."""
    from moola.cli._app import console

    monkeypatch.setattr(console, "width", 300)


def _row(output: str, key: str, value: str) -> bool:
    """``key`` and ``value`` side by side in one row of a rich table."""
    return re.search(rf"│ {re.escape(key)}\s*│ {re.escape(value)}\s*│", output) is not None


# ------------------------------------------------------------------------------- train


def test_train_run_is_recorded_exactly(client, train_run, store, tmp_path):
    run_dir, run = train_run.run_dir, train_run.run
    assert run.info.status == "FINISHED" and run.info.end_time >= run.info.start_time
    # final metrics: metrics.json flattened, every number exactly
    want = _assert_final_metrics(run, run_dir)
    assert {"model.accuracy", "model.log_loss", "run.test_loss", "run.val_loss",
            "baseline_metrics.logistic.accuracy", "run.test_calibrated.ece"} <= set(want)
    # per-epoch metrics, one per epoch, as the trainer wrote them
    n = _assert_history(client, run, run_dir, ("val_loss", "train_loss", "val_accuracy", "lr"))
    assert n == 2 == want["run.epochs_run"]
    # params: the resolved config the run saved, flattened
    _assert_params(run, RunConfig.from_yaml(run_dir / "config.yaml").flat())
    assert run.data.params["train.epochs"] == "2" and run.data.params["model.name"] == "simple_lstm"
    # tags: what the run directory's manifest.json says about code and data
    meta = json.loads((run_dir / "manifest.json").read_text())
    tags = run.data.tags
    assert tags["moola.command"] == "train"
    assert tags["moola.data_fingerprint"] == meta["data_fingerprint"]
    assert tags["moola.feature_schema_hash"] == meta["feature_schema_hash"]
    assert tags["moola.git_sha"] == meta["git_sha"]  # both flag local edits with +dirty
    assert tags["moola.run_dir"] == str(run_dir.resolve())
    assert tags["moola.feature_set"] == "ohlc4"
    # artifacts: the run directory minus resume state, byte for byte
    arts = _artifacts(client, run)
    for f in ("weights.safetensors", "config.yaml", "report.html", "metrics.json", *PNGS):
        assert arts.get(f"run/{f}") == (run_dir / f).stat().st_size, f
    assert (run_dir / "ckpt").is_dir() and "run/ckpt" not in arts
    for f in ("weights.safetensors", "config.yaml"):
        assert _download(client, run, f"run/{f}", tmp_path / "dl") == (run_dir / f).read_bytes()
    # a local sqlite store keeps its artifacts beside the database, per experiment
    assert Path(urlparse(run.info.artifact_uri).path).is_relative_to(store.db.parent / "mlruns" / "train")


def test_tracking_uri_is_honoured(client, train_run, store):
    assert store.db.is_file()
    assert client.get_run(train_run.run.info.run_id).info.run_name == "tracked_train"
    # nothing went to MLflow's default store (./mlflow.db, ./mlruns) in the working directory
    assert list(store.cwd.iterdir()) == []
    # beside the store: its artifacts and the lock its schema is made under
    assert sorted(p.name for p in store.db.parent.iterdir()) == ["mlflow.db", "mlflow.db.lock", "mlruns"]


def test_tracking_off_logs_nothing(monkeypatch, store, tmp_path):
    db = tmp_path / "off.db"
    monkeypatch.setenv("MOOLA_TRACKING", "off")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{db}")
    monkeypatch.chdir(tmp_path)
    cfg = PretrainConfig.from_yaml(PRETRAIN_DEMO, [f"out_dir={store.out}", "name=untracked",
                                                   "data.max_pool=100", "encoder.hidden=8", "train.epochs=1",
                                                   *CPU])
    out = run_pretrain(cfg, console=_quiet(), show_progress=False)
    assert (out / "metrics.json").is_file()  # the run itself happened
    assert not db.exists() and list(tmp_path.iterdir()) == []
    with Tracker("train") as t:
        t.log_params({"a": 1})
        t.log_metrics({"b": 2.0}, step=1)
    assert t.run_id is None and not db.exists()
    # and the module's store did not get it either
    monkeypatch.setenv("MLFLOW_TRACKING_URI", store.uri)
    c = MlflowClient()
    exps = [e.experiment_id for e in c.search_experiments()]
    assert exps and c.search_runs(exps, filter_string="attributes.run_name = 'untracked'") == []


def test_a_failing_run_is_recorded_as_failed_with_its_traceback(client, monkeypatch, store, tmp_path):
    monkeypatch.setenv("MLFLOW_EXPERIMENT_NAME", "broken")  # honoured as the experiment
    cfg = RunConfig.from_yaml(TRAIN_DEMO, [f"out_dir={store.out}", "name=doomed", "data.symbols=[NOSUCH]",
                                           *TRAIN_TINY])
    with pytest.raises(MoolaDataError, match="NOSUCH"):
        run_train(cfg, console=_quiet(), show_progress=False)
    run = _only_run(client, "broken", "doomed")
    assert run.info.status == "FAILED" and run.info.end_time is not None
    assert run.data.tags["moola.command"] == "train"
    error = run.data.tags["moola.error"]
    assert error.startswith("StoreError: ") and "NOSUCH" in error
    assert set(_artifacts(client, run, "error")) == {"error/traceback.txt"}
    text = _download(client, run, "error/traceback.txt", tmp_path).decode()
    assert text.startswith("Traceback (most recent call last):")
    assert "StoreError" in text and "NOSUCH" in text and "prepare_data" in text


def test_two_train_processes_on_a_fresh_store_both_record_their_run(store, tmp_path):
    """Two ``moola train`` started together on a brand-new SQLite store: the schema is made once,
    under the store's lock, so neither dies on MLflow's migration and both runs are recorded."""
    db = tmp_path / "fresh" / "mlflow.db"
    env = {**os.environ, "MOOLA_TRACKING": "on", "MLFLOW_TRACKING_URI": f"sqlite:///{db}"}
    env.pop("MLFLOW_EXPERIMENT_NAME", None)
    cmds = [[str(MOOLA), "train", "--config", str(TRAIN_DEMO), f"out_dir={store.out}", f"name=together_{i}",
             *TRAIN_TINY] for i in range(2)]
    procs = [subprocess.Popen(cmd, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              text=True) for cmd in cmds]
    outs = [p.communicate(timeout=300)[0] for p in procs]
    for p, out in zip(procs, outs, strict=True):
        assert p.returncode == 0, out
    client = MlflowClient(tracking_uri=f"sqlite:///{db}")
    for i in range(2):
        assert _only_run(client, "train", f"together_{i}").info.status == "FINISHED"


# ------------------------------------------------------------------------ pretrain / oof


def test_pretrain_run_is_recorded_exactly(client, pretrain_run):
    run_dir, run = pretrain_run.run_dir, pretrain_run.run
    assert run.info.status == "FINISHED"
    want = _assert_final_metrics(run, run_dir)
    n = _assert_history(client, run, run_dir, ("val_loss", "val_masked_mse", "train_loss"))
    # the restored epoch-1 model is final: the run's val_loss is metrics.json's, not epoch 2's
    assert (want["best_epoch"], want["epochs_run"], n) == (1, 2, 2)
    last = json.loads((run_dir / "history.jsonl").read_text().splitlines()[-1])
    assert last["val_loss"] != want["val_loss"] == run.data.metrics["val_loss"]
    _assert_params(run, PretrainConfig.from_yaml(run_dir / "config.yaml").flat())
    meta = json.loads((run_dir / "manifest.json").read_text())  # an encoder dir's manifest
    assert run.data.tags["moola.feature_schema_hash"] == meta["feature_schema_hash"]
    assert run.data.tags["moola.command"] == "pretrain"
    arts = _artifacts(client, run)
    for f in ("encoder.safetensors", "encoder.json", "normalizer.json", "config.yaml", "report.html"):
        assert arts.get(f"run/{f}") == (run_dir / f).stat().st_size, f


def test_oof_run_is_recorded_exactly(client, oof_run):
    run_dir, run = oof_run.run_dir, oof_run.run
    assert run.info.status == "FINISHED"
    want = _assert_final_metrics(run, run_dir)
    assert {"arms.scratch.balanced_accuracy", "arms.majority.accuracy", "n_labeled"} <= set(want)
    assert run.data.tags["moola.final_step"] == "0"  # no per-epoch metrics at this level
    _assert_params(run, OOFConfig.from_yaml(run_dir / "config.yaml").flat())
    verdict = json.loads((run_dir / "verdict.json").read_text())["verdict"]
    assert run.data.tags["moola.verdict"] == verdict and run.data.tags["moola.command"] == "oof"
    arts = _artifacts(client, run)
    for f in ("scores.parquet", "oof_predictions.parquet", "verdict.json", "report.html", "config.yaml"):
        assert arts.get(f"run/{f}") == (run_dir / f).stat().st_size, f


# -------------------------------------------------------------------------------- CLI


def test_runs_list_shows_the_runs_newest_first(client, wide, store, train_run, pretrain_run):
    res = cli("runs", "list")
    assert res.exit_code == 0, res.output
    assert f"tracking store: {store.uri}" in res.output
    ids = [train_run.run.info.run_id, pretrain_run.run.info.run_id]
    rows = [ln for ln in res.output.splitlines() if ln.startswith(tuple(ids))]
    assert [r.split()[0] for r in rows] == ids[::-1]  # pretrain ran after train
    train_row = rows[1].split()
    assert train_row[1:5] == ["train", "tracked_train", "FINISHED", "train"]
    assert f"run.val_loss={train_run.run.data.metrics['run.val_loss']:.4g}" in res.output
    # one experiment, and a limit
    res = cli("runs", "list", "--experiment", "pretrain", "--limit", "1")
    assert res.exit_code == 0, res.output
    assert pretrain_run.run.info.run_id in res.output and train_run.run.info.run_id not in res.output
    assert cli("runs", "list", "--experiment", "nope").exit_code == 2


def test_runs_list_on_an_empty_store_says_so(monkeypatch, tmp_path):
    db = tmp_path / "empty.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{db}")
    monkeypatch.chdir(tmp_path)
    res = cli("runs", "list")
    assert res.exit_code == 0, res.output
    assert "no runs yet" in res.output and f"sqlite:///{db}" in res.output
    assert not db.exists()  # reading does not create a store


def test_runs_show_prints_the_run(client, wide, train_run):
    run_dir, run = train_run.run_dir, train_run.run
    for ref in ("tracked_train", run.info.run_id):
        res = cli("runs", "show", ref)
        assert res.exit_code == 0, res.output
        out = res.output
        assert f"tracked_train ({run.info.run_id})" in out
        assert re.search(r"status: FINISHED\n", out) and re.search(r"experiment: train\n", out)
        meta = json.loads((run_dir / "manifest.json").read_text())
        for tag in ("moola.git_sha", "moola.data_fingerprint", "moola.feature_schema_hash"):
            assert _row(out, tag, run.data.tags[tag]), tag
        assert _row(out, "moola.data_fingerprint", meta["data_fingerprint"])
        for p in ("train.epochs", "data.stride", "model.name", "train.optimizer.lr"):
            assert _row(out, p, run.data.params[p]), p
        metrics = json.loads((run_dir / "metrics.json").read_text())
        for key, v in (("model.accuracy", metrics["model"]["accuracy"]),
                       ("run.test_loss", metrics["run"]["test_loss"]),
                       ("run.temperature", metrics["run"]["temperature"])):
            assert _row(out, key, f"{v:.6g}"), key
        history = [json.loads(s) for s in (run_dir / "history.jsonl").read_text().splitlines()]
        section = out.split("val_loss per epoch", 1)[1].split("artifacts", 1)[0]
        got = re.findall(r"│\s+(\d+) │\s+([-\d.e]+) │", section)
        assert got == [(str(h["epoch"]), f"{h['val_loss']:.6g}") for h in history]
        for f in ("weights.safetensors", "config.yaml", "report.html", *PNGS):
            assert f"run/{f}" in out, f


def test_runs_show_of_an_unknown_run_exits_2(client, train_run):
    res = cli("runs", "show", "no_such_run")
    assert res.exit_code == 2
    assert res.output.strip().splitlines() == [
        f"error: no MLflow run with id or name 'no_such_run' in {client.tracking_uri}"]
    # a known name, but not in the experiment asked for
    assert cli("runs", "show", "tracked_train", "--experiment", "pretrain").exit_code == 2
