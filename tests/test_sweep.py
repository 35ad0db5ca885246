"""``moola sweep`` end to end on the bundled S&P 500 data: matrix expansion, a deliberately
failing variant that fails alone, skip-by-config-hash on rerun, resume after ``kill -9`` of the
driver with nothing half-written, the Ray backend on a local cluster (same numbers as local),
``best.yaml`` and the ``sweep:NAME:best`` reference chained into training."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from _train_helpers import ROOT
from moola.cli import app
from moola.config import ConfigError
from moola.models.transfer import ENCODER_META, ENCODER_WEIGHTS
from moola.refs import RefError, resolve_ref
from moola.sweeps import MatrixConfig, SweepLockedError, expand_matrix, load_matrix, run_sweep
from moola.sweeps._runner import _sweep_lock

TRAIN_DEMO = ROOT / "configs" / "train_demo.yaml"
PRETRAIN_DEMO = ROOT / "configs" / "pretrain_demo.yaml"
# one symbol, every 20th window, one epoch, one baseline: a real run in a few seconds
TINY = {"train.epochs": 1, "data.symbols": ["AAPL"], "data.stride": 20, "baselines": ["majority"],
        "train.device": "cpu"}


def _matrix(tmp: Path, name: str, variants: list[dict], **extra: object) -> Path:
    doc = {"name": name, "command": "train", "base": str(TRAIN_DEMO), "overrides": TINY,
           "variants": variants, "parallel": 2, "out_dir": str(tmp / "sweeps"), **extra}
    path = tmp / f"{name}.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


GOOD = [{"name": "lr_small", "set": {"train.optimizer.lr": 0.0003}},
        {"name": "lr_big", "set": {"train.optimizer.lr": 0.003}}]
BROKEN = {"name": "broken", "set": {"data.window": 100000}}  # no window fits: fails in data prep


# ------------------------------------------------------------------------- the matrix


def test_grid_times_variants_expands_with_distinct_labels_and_hashes(tmp_path):
    path = _matrix(tmp_path, "m", GOOD, grid={"train.batch_size": [64, 128], "data.stride": [20, 40]})
    specs = expand_matrix(load_matrix(path), path)
    assert len(specs) == 2 * 2 * 2
    assert len({s.label for s in specs}) == 8 and len({s.key for s in specs}) == 8
    one = next(s for s in specs if s.label == "lr_big+batch_size=64,stride=40")
    assert one.config["train"]["optimizer"]["lr"] == 0.003
    assert one.config["train"]["batch_size"] == 64 and one.config["data"]["stride"] == 40
    assert one.config["data"]["symbols"] == ["AAPL"]  # the shared overrides apply too


def test_each_run_declares_its_resources_variant_over_matrix(tmp_path):
    heavy = {"name": "heavy", "set": {"train.batch_size": 256}, "resources": {"cpus": 2, "gpus": 0.5}}
    path = _matrix(tmp_path, "res", [GOOD[0], heavy], resources={"cpus": 1, "gpus": 0.25})
    specs = {s.label: s for s in expand_matrix(load_matrix(path), path)}
    assert (specs["lr_small"].resources.cpus, specs["lr_small"].resources.gpus) == (1, 0.25)
    assert (specs["heavy"].resources.cpus, specs["heavy"].resources.gpus) == (2, 0.5)
    with pytest.raises(ConfigError, match="resources"):
        MatrixConfig.from_dict({"name": "x", "command": "train", "base": {}, "resources": {"cpus": 0}})


def test_the_config_hash_ignores_name_and_order_but_not_values(tmp_path):
    a = expand_matrix(load_matrix(p := _matrix(tmp_path, "a", GOOD)), p)
    b = expand_matrix(load_matrix(q := _matrix(tmp_path, "b", list(reversed(GOOD)))), q)
    assert {s.label: s.key for s in a} == {s.label: s.key for s in b}
    c = expand_matrix(load_matrix(r := _matrix(tmp_path, "c", [GOOD[0] | {"name": "renamed"}])), r)
    assert c[0].key == a[0].key  # same config under another name: same identity


def test_bad_runs_are_all_reported_at_once_by_key(tmp_path):
    bad = [{"name": "v1", "set": {"train.epochs": 0}},
           {"name": "v2", "set": {"train.optimizer.name": "nope"}},
           {"name": "v3", "set": {"no_such_key": 1}}]
    path = _matrix(tmp_path, "bad", bad)
    with pytest.raises(ConfigError) as e:
        expand_matrix(load_matrix(path), path)
    text = str(e.value)
    for key in ("run v1: train.epochs", "run v2: train.optimizer.name", "run v3: no_such_key"):
        assert key in text, text


def test_identical_runs_and_bad_matrix_fields_are_refused(tmp_path):
    twins = [{"name": "a", "set": {"train.epochs": 1}}, {"name": "b", "set": {}}]
    path = _matrix(tmp_path, "twins", twins)
    with pytest.raises(ConfigError, match="identical configs"):
        expand_matrix(load_matrix(path), path)
    with pytest.raises(ConfigError) as e:
        MatrixConfig.from_dict({"name": "x y", "command": "fit", "base": {}, "select": "val_loss",
                                "grid": {"a": []}})
    text = str(e.value)
    assert "name" in text and "command" in text and "grid" in text


@pytest.mark.parametrize(("command", "select"), [
    ("train", "model.balanced_accuracy:max"),  # the test split
    ("train", "test.balanced_accuracy:max"),
    ("train", "run.test_calibrated.accuracy:max"),
    ("train", "run.val_loss.x:min"),  # not a key that holds a validation number
    ("pretrain", "val_masked_mse_predict_zero:min"),
    ("oof", "arms.pretrained_finetuned.balanced_accuracy:max"),  # out-of-fold = test folds
])
def test_select_accepts_validation_metrics_only(tmp_path, command, select):
    with pytest.raises(ConfigError) as e:
        MatrixConfig.from_dict({"name": "s", "command": command, "base": {}, "select": select})
    text = str(e.value)
    assert f"select {select.rpartition(':')[0]!r}" in text, text
    allowed = {"train": "run.val_loss, run.val.*", "pretrain": "val_loss, val_masked_mse",
               "oof": "out-of-fold test performance"}[command]
    assert allowed in text, text  # the keys that may be selected on (oof: why there are none)


def test_oof_matrix_without_select_is_refused_with_the_reason():
    with pytest.raises(ConfigError, match="oof runs record no validation metric"):
        MatrixConfig.from_dict({"name": "s", "command": "oof", "base": {}})


def test_validation_selections_pass_and_cli_select_is_checked_before_any_run(tmp_path):
    for command, select in (("train", "run.val_loss:min"), ("train", "run.val.balanced_accuracy:max"),
                            ("pretrain", "val_loss:min"), ("pretrain", "val_masked_mse:min")):
        m = MatrixConfig.from_dict({"name": "s", "command": command, "base": {}, "select": select})
        assert str(m.selection()) == select
        assert str(m.selection(select)) == select
    path = _matrix(tmp_path, "sel", GOOD)
    res = CliRunner().invoke(app, ["sweep", str(path), "--select", "model.balanced_accuracy:max"])
    assert res.exit_code == 2, res.output
    assert "--select" in res.output and "validation metrics only" in res.output, res.output
    assert "run.val.*" in res.output, res.output
    assert not (tmp_path / "sweeps" / "sel").exists()  # nothing started, not even the directory
    with pytest.raises(ConfigError, match="METRIC:min or METRIC:max"):
        load_matrix(path).selection("run.val_loss")


def test_a_select_metric_the_runs_do_not_record_is_refused_before_any_run(tmp_path):
    """``run.val.*`` passes the validation-only rule whatever the name: the name itself is checked
    against what a train run of each config records, before the sweep directory exists."""
    path = _matrix(tmp_path, "typo", GOOD, select="run.val.balanced_acuracy:max")
    res = CliRunner().invoke(app, ["sweep", str(path)])
    assert res.exit_code == 2, res.output
    text = " ".join(res.output.split())
    assert f"{path}: select" in text and "'run.val.balanced_acuracy'" in text, text
    for name in ("run.val_loss", "run.val.accuracy", "run.val.balanced_accuracy", "run.val.recall_<i>"):
        assert name in text, text
    assert not (tmp_path / "sweeps" / "typo").exists()
    cli_path = _matrix(tmp_path, "cli", GOOD)
    res = CliRunner().invoke(app, ["sweep", str(cli_path), "--select", "run.val.mse:min"])
    assert res.exit_code == 2 and "--select" in res.output and "'run.val.mse'" in res.output, res.output
    assert not (tmp_path / "sweeps" / "cli").exists()
    rank = tmp_path / "rank.yaml"  # rank: val.<horizon>.<name>, both parts checked
    rank.write_text(yaml.safe_dump({"name": "r", "command": "rank", "out_dir": str(tmp_path / "sweeps"),
                                    "base": str(ROOT / "configs" / "rank_demo.yaml")}))
    for select in ("val.5.rank_ic_men:max", "val.3.rank_ic_mean:max"):  # a misspelt name, no such horizon
        res = CliRunner().invoke(app, ["sweep", str(rank), "--select", select])
        assert res.exit_code == 2 and f"'{select[:-4]}'" in res.output, res.output
        assert "val.5.rank_ic_mean" in " ".join(res.output.split()), res.output
    assert not (tmp_path / "sweeps" / "r").exists()


# ------------------------------------------------------------------------- running


@pytest.fixture(scope="module")
def failing_sweep(tmp_path_factory) -> tuple[Path, Path, str]:
    """Two good variants and a broken one, 2 in parallel, through the CLI."""
    tmp = tmp_path_factory.mktemp("sweep")
    path = _matrix(tmp, "lr", [*GOOD, BROKEN])
    res = subprocess.run([sys.executable, "-m", "moola.cli", "sweep", str(path)], cwd=tmp,
                         capture_output=True, text=True, timeout=600,
                         env=dict(os.environ, COLUMNS="200"))
    return tmp, tmp / "sweeps" / "lr", res.stdout + res.stderr + f"\nexit={res.returncode}"


def test_a_failing_variant_fails_alone_with_its_traceback(failing_sweep):
    _, sweep_dir, out = failing_sweep
    assert out.endswith("exit=1"), out  # any failed run makes the exit code 1
    runs = yaml.safe_load((sweep_dir / "runs.yaml").read_text())
    assert {k: v["status"] for k, v in runs.items()} == {"lr_small": "done", "lr_big": "done",
                                                         "broken": "failed"}
    assert "no valid 100000-bar windows" in runs["broken"]["error"]
    err = json.loads((sweep_dir / "state" / f"{runs['broken']['run']}.error.json").read_text())
    assert "Traceback (most recent call last)" in err["traceback"] and "prepare_data" in err["traceback"]
    assert not (sweep_dir / "runs" / runs["broken"]["run"]).exists()
    for label in ("lr_small", "lr_big"):
        run_dir = sweep_dir / runs[label]["artifact"]
        for f in ("metrics.json", "weights.safetensors", "config.yaml", "report.html"):
            assert (run_dir / f).is_file(), (label, f)
    assert list((sweep_dir / "work").glob("lr*")) == []  # nothing left in flight


def test_best_yaml_names_the_lowest_validation_loss_and_the_report_exists(failing_sweep):
    _, sweep_dir, out = failing_sweep
    runs = yaml.safe_load((sweep_dir / "runs.yaml").read_text())
    vals = {}
    for label in ("lr_small", "lr_big"):
        m = json.loads((sweep_dir / runs[label]["artifact"] / "metrics.json").read_text())
        vals[label] = m["run"]["val_loss"]
        assert runs[label]["run.val_loss"] == pytest.approx(vals[label])
    best = yaml.safe_load((sweep_dir / "best.yaml").read_text())
    want = min(vals, key=vals.__getitem__)
    assert best["run"] == want and best["value"] == pytest.approx(vals[want])
    assert best["select"] == "run.val_loss:min"
    assert resolve_ref(f"sweep:{sweep_dir}:best") == str((sweep_dir / runs[want]["artifact"]).resolve())
    assert resolve_ref(f"sweep:{sweep_dir}:lr_small").endswith(runs["lr_small"]["run"])
    with pytest.raises(RefError, match="is failed"):
        resolve_ref(f"sweep:{sweep_dir}:broken")
    html = (sweep_dir / "report.html").read_text()
    assert "ablation.png" in html and "learning_curves.png" in html and "broken" in html
    # the page opens with its verdict: the winner, its margin, the failure in red, and the
    # winner's own test verdict
    box = html.split("</h1>", 1)[1].split("</div>", 1)[0]
    other = next(k for k in vals if k != want)
    assert "class='verdict'" in box and "#c0392b" in box  # a run failed: red
    assert f"Best by run.val_loss:min: {want} with run.val_loss = {vals[want]:.4f}; 2 of 3 runs " \
           "finished, 1 FAILED" in box
    assert f"Runner-up {other} at {vals[other]:.4f} (the best is {abs(vals[want] - vals[other]):.4f} " \
           "better)" in box
    best_metrics = json.loads((sweep_dir / runs[want]["artifact"] / "metrics.json").read_text())
    best_lines = best_metrics["verdict"]["lines"]
    assert best_lines and all(f"Best run on its test split: {ln}".replace("'", "&#x27;") in box
                              for ln in best_lines)
    for png in ("ablation.png", "learning_curves.png"):
        assert (sweep_dir / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    summary = (sweep_dir / "summary.csv").read_text().splitlines()
    assert summary[1].startswith(want) and summary[-1].startswith("broken")  # best first, failed last
    assert "best: " + want in out.replace("\n", " ")


def test_rerun_skips_finished_runs_by_hash_and_retries_the_failed_one(failing_sweep):
    tmp, sweep_dir, _ = failing_sweep
    runs = yaml.safe_load((sweep_dir / "runs.yaml").read_text())
    stamps = {k: (sweep_dir / v["artifact"] / "metrics.json").stat().st_mtime_ns
              for k, v in runs.items() if v["status"] == "done"}
    err_file = sweep_dir / "state" / f"{runs['broken']['run']}.error.json"
    err_file.unlink()
    res = run_sweep(tmp / "lr.yaml")
    status = {st.spec.label: st.status for st in res.runs}
    assert status == {"lr_small": "skipped", "lr_big": "skipped", "broken": "failed"}
    assert err_file.is_file()  # the failed run was tried again, and failed again
    for k, stamp in stamps.items():  # finished runs untouched
        assert (sweep_dir / runs[k]["artifact"] / "metrics.json").stat().st_mtime_ns == stamp
    res = run_sweep(tmp / "lr.yaml", retry_failed=False)
    assert {st.spec.label: st.status for st in res.runs}["broken"] == "failed"


def test_a_second_driver_on_the_same_sweep_is_refused(failing_sweep):
    tmp, sweep_dir, _ = failing_sweep
    with _sweep_lock(sweep_dir), pytest.raises(SweepLockedError, match="another driver"):
        run_sweep(tmp / "lr.yaml")


def test_killed_driver_leaves_nothing_half_written_and_a_rerun_completes_only_the_rest(tmp_path):
    variants = [{"name": f"s{i}", "set": {"train.seed": i}} for i in range(3)]
    path = _matrix(tmp_path, "killme", variants, parallel=1)
    sweep_dir = tmp_path / "sweeps" / "killme"
    driver = subprocess.Popen([sys.executable, "-m", "moola.cli", "sweep", str(path)], cwd=tmp_path,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while time.time() < deadline and not list((sweep_dir / "runs").glob("s*/metrics.json")):
        time.sleep(0.2)
    assert list((sweep_dir / "runs").glob("s*/metrics.json")), "first run never finished"
    # let the second run get going, then kill the driver mid-way
    while time.time() < deadline and not list((sweep_dir / "work").glob("s*")):
        time.sleep(0.1)
    driver.send_signal(signal.SIGKILL)
    driver.wait()
    time.sleep(1.0)
    # its worker died with it (PR_SET_PDEATHSIG): nobody writes into the sweep any more
    workers = subprocess.run(["pgrep", "-f", f"moola.sweeps._execute {sweep_dir}"], capture_output=True,
                             text=True).stdout.split()
    assert workers == []
    done_before = {p.name: p.stat().st_mtime_ns for p in (sweep_dir / "runs").iterdir()}
    for run_dir in (sweep_dir / "runs").iterdir():  # every finished-looking run is complete
        for f in ("metrics.json", "weights.safetensors", "config.yaml", "manifest.json"):
            assert (run_dir / f).is_file(), (run_dir, f)
    assert 1 <= len(done_before) < 3
    res = run_sweep(path)
    status = {st.spec.label: st.status for st in res.runs}
    assert sorted(status.values()).count("skipped") == len(done_before)
    assert all(s in ("done", "skipped") for s in status.values())
    for name, stamp in done_before.items():
        assert (sweep_dir / "runs" / name).stat().st_mtime_ns == stamp
    assert len(list((sweep_dir / "runs").iterdir())) == 3
    assert not [p for p in (sweep_dir / "work").iterdir() if not p.name.startswith("_bundled")]


def test_a_reproduced_run_from_its_config_yaml_gives_the_same_metrics(failing_sweep, tmp_path):
    """RUN_DIR/config.yaml is the exact resolved config: training it again (elsewhere) on CPU
    with the same seed gives the same numbers."""
    from moola.pipelines.train import RunConfig, run_train

    _, sweep_dir, _ = failing_sweep
    best = yaml.safe_load((sweep_dir / "best.yaml").read_text())
    run_dir = Path(best["run_dir"])
    cfg = RunConfig.from_yaml(run_dir / "config.yaml", [f"out_dir={tmp_path}", "train.num_threads=1"])
    out = run_train(cfg, show_progress=False)
    before = json.loads((run_dir / "metrics.json").read_text())
    assert out.metrics["run"]["val_loss"] == pytest.approx(before["run"]["val_loss"], abs=1e-6)
    assert out.metrics["model"]["accuracy"] == pytest.approx(before["model"]["accuracy"], abs=1e-9)


# ------------------------------------------------------------------------- Ray


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def ray_cluster(tmp_path_factory) -> Iterator[str]:
    """A real local Ray cluster, started the way a user starts one: ``ray start --head``."""
    ray_bin = shutil.which("ray", path=str(Path(sys.executable).parent))
    assert ray_bin, "ray is a dependency of moola"
    port = _free_port()
    env = dict(os.environ, RAY_USAGE_STATS_ENABLED="0")
    subprocess.run([ray_bin, "start", "--head", f"--port={port}", "--num-cpus=2",
                    "--include-dashboard=false", "--disable-usage-stats"],
                   check=True, capture_output=True, env=env, timeout=120)
    try:
        yield f"127.0.0.1:{port}"
    finally:
        subprocess.run([ray_bin, "stop", "--force"], capture_output=True, env=env, timeout=120)


@pytest.mark.slow
def test_ray_backend_on_a_local_cluster_gives_the_local_numbers(ray_cluster, failing_sweep, tmp_path):
    _, local_dir, _ = failing_sweep
    path = _matrix(tmp_path, "lr", GOOD)  # same configs as the local sweep, another directory
    res = CliRunner().invoke(app, ["sweep", str(path), "--backend", "ray", "--ray-address", ray_cluster,
                                   "--parallel", "2"], catch_exceptions=False)
    assert res.exit_code == 0, res.output
    ray_runs = yaml.safe_load((tmp_path / "sweeps" / "lr" / "runs.yaml").read_text())
    local_runs = yaml.safe_load((local_dir / "runs.yaml").read_text())
    for label in ("lr_small", "lr_big"):
        assert ray_runs[label]["status"] == "done"
        assert ray_runs[label]["config_hash"] == local_runs[label]["config_hash"]
        assert ray_runs[label]["run.val_loss"] == pytest.approx(local_runs[label]["run.val_loss"], abs=1e-6)
    assert (tmp_path / "sweeps" / "lr" / "best.yaml").is_file()


# ------------------------------------------------------------------------- chaining


def test_best_encoder_of_a_pretraining_sweep_chains_into_train_by_reference(tmp_path, monkeypatch):
    from moola.pipelines.train import RunConfig, run_train

    doc = {"name": "enc", "command": "pretrain", "base": str(PRETRAIN_DEMO),
           "overrides": {"train.epochs": 1, "train.device": "cpu", "data.max_pool": 100,
                         "encoder.hidden": 128},
           "variants": [{"name": "random", "set": {"mask.strategy": "random"}},
                        {"name": "block", "set": {"mask.strategy": "block"}}],
           "parallel": 2}
    (tmp_path / "enc.yaml").write_text(yaml.safe_dump(doc))
    monkeypatch.chdir(tmp_path)  # default sweeps root: ./runs/sweeps
    res = run_sweep(tmp_path / "enc.yaml")
    assert res.best is not None and not res.failed
    encoder = resolve_ref("sweep:enc:best")
    assert Path(encoder, ENCODER_WEIGHTS).is_file() and Path(encoder, ENCODER_META).is_file()
    cfg = RunConfig.from_yaml(TRAIN_DEMO, [f"out_dir={tmp_path}", "name=chained", "train.num_threads=1",
                                           "pretrained_encoder=sweep:enc:best", "transfer_mode=forward-only",
                                           *[f"{k}={json.dumps(v)}" for k, v in TINY.items()]])
    out = run_train(cfg, show_progress=False)
    saved = RunConfig.from_yaml(out.run_dir / "config.yaml")
    assert saved.pretrained_encoder == encoder  # the reference is recorded as the directory it meant
    assert "4/8" in (out.run_dir / "transfer_report.txt").read_text()
    with pytest.raises(RefError, match="sweep:nope:best"):
        resolve_ref("sweep:nope:best")


def test_a_ray_token_on_disk_opts_the_driver_into_token_auth(tmp_path, monkeypatch):
    """Ray >= 2.59 enables token auth on ``ray start --head`` when ~/.ray/auth_token exists, and a
    driver that does not send it fails with InvalidAuthToken: moola opts in when a token exists."""
    from moola.sweeps._runner import _ray_token_auth_env

    monkeypatch.setenv("HOME", str(tmp_path))
    for var in ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH"):
        monkeypatch.delenv(var, raising=False)
    _ray_token_auth_env()
    assert "RAY_AUTH_MODE" not in os.environ  # no token: leave Ray's default alone
    (tmp_path / ".ray").mkdir()
    (tmp_path / ".ray" / "auth_token").write_text("0" * 64)
    _ray_token_auth_env()
    assert os.environ["RAY_AUTH_MODE"] == "token"
    monkeypatch.setenv("RAY_AUTH_MODE", "disabled")  # an explicit choice is kept
    _ray_token_auth_env()
    assert os.environ["RAY_AUTH_MODE"] == "disabled"
