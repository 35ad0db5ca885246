"""The train recipe end to end through the CLI on the bundled S&P 500 data: typed run configs,
one small real run (1 epoch, stride 20), recomputable baselines, reproduction from the saved
config, ``moola evaluate``, ``--resume`` refusing another config, purge/embargo and
train-only normalisation on the real ``prepare_data``, and ``moola models list``."""

from __future__ import annotations

import json
import shutil
import warnings
from pathlib import Path

import numpy as np
import polars as pl
import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import accuracy_score, log_loss
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from typer.testing import CliRunner, Result

from _train_helpers import ROOT
from moola.cli import app
from moola.config import ConfigError
from moola.datasets.tasks import DataConfig, SplitConfig, load_features, prepare_data, resolve_store
from moola.models import PRESETS, build_model, count_parameters, preset_config
from moola.pipelines.train import RunConfig

DEMO = ROOT / "configs" / "train_demo.yaml"
OVERRIDES = ["train.epochs=1", "data.stride=20", "baselines=[majority,logistic]",
             "train.device=cpu", "train.num_threads=1"]
PNGS = ("learning_curves.png", "confusion_matrix.png", "reliability.png", "baselines.png")
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def cli(*args: str | Path) -> Result:
    return CliRunner().invoke(app, [str(a) for a in args], catch_exceptions=False)


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> tuple[Path, RunConfig]:
    """``moola train --config configs/train_demo.yaml out_dir=TMP ...`` once for the module."""
    out = tmp_path_factory.mktemp("cli_train")
    args = [f"out_dir={out}", *OVERRIDES]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        res = cli("train", "--config", DEMO, *args)
    assert res.exit_code == 0, res.output
    cfg = RunConfig.from_yaml(DEMO, args)
    run_dir = out / cfg.name
    assert f"run directory: {run_dir}" in res.output.replace("\n", "")
    # the verdict that opens the report also ends the console output
    printed = " ".join(res.output.split())
    for line in json.loads((run_dir / "metrics.json").read_text())["verdict"]["lines"]:
        assert " ".join(line.split()) in printed, line
    return run_dir, cfg


def _metrics(run_dir: Path) -> dict:
    return json.loads((run_dir / "metrics.json").read_text())


# ------------------------------------------------------------------------------ configs


def test_demo_config_round_trips(tmp_path):
    cfg = RunConfig.from_yaml(DEMO)
    path = tmp_path / "dumped.yaml"
    cfg.to_yaml(path)
    again = RunConfig.from_yaml(path)
    assert again == cfg
    assert again.to_dict() == cfg.to_dict()
    assert yaml.safe_load(path.read_text()) == cfg.to_dict()
    # overrides land where they say
    over = RunConfig.from_yaml(DEMO, ["train.epochs=3", "data.stride=7", "train.optimizer.lr=2e-4"])
    assert (over.train.epochs, over.data.stride, over.train.optimizer.lr) == (3, 7, 2e-4)


def test_a_bad_config_names_every_problem_at_once(tmp_path):
    data = yaml.safe_load(DEMO.read_text())
    data["colour"] = "blue"  # unknown key
    data["train"]["epochs"] = -3  # out of range
    data["train"]["batch_size"] = "lots"  # wrong type
    data["data"]["strid"] = 2  # a typo in a nested section
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(data))
    with pytest.raises(ConfigError) as e:
        RunConfig.from_yaml(bad)
    keys = [p.split(":")[0] for p in e.value.problems]
    assert sorted(keys) == ["colour", "data.strid", "train.batch_size", "train.epochs"], keys
    msg = str(e.value)
    assert "4 problem(s)" in msg and str(bad) in msg and "'lots'" in msg
    # the CLI says the same, on stderr, with exit code 2 and nothing written
    res = cli("train", "--config", bad, f"out_dir={tmp_path / 'out'}")
    assert res.exit_code == 2
    for key in ("colour", "data.strid", "train.batch_size", "train.epochs"):
        assert key in res.stderr, res.stderr
    assert not (tmp_path / "out").exists()


def test_bad_overrides_are_reported_by_key():
    with pytest.raises(ConfigError) as e:
        RunConfig.from_yaml(DEMO, ["train.epochs=0", "train.optimizer.name=rmsprop", "nokey"])
    assert "nokey" in str(e.value)  # not key=value: reported before validation
    with pytest.raises(ConfigError) as e:
        RunConfig.from_yaml(DEMO, ["train.epochs=0", "train.optimizer.name=rmsprop"])
    keys = sorted(p.split(":")[0] for p in e.value.problems)
    assert keys == ["train.epochs", "train.optimizer.name"]


# ---------------------------------------------------------------------------- a real run


def test_cli_train_writes_a_complete_run_directory(run):
    run_dir, cfg = run
    for name in ("config.yaml", "weights.safetensors", "report.html", "metrics.json",
                 "manifest.json", "history.jsonl", "normalizer.json", *PNGS):
        p = run_dir / name
        assert p.is_file() and p.stat().st_size > 0, name
    for png in PNGS:
        assert (run_dir / png).read_bytes()[:8] == PNG_MAGIC, png
    html = (run_dir / "report.html").read_text()
    for png in PNGS:
        assert png in html, png
    # the saved config is the resolved one: the overrides plus the model the preset became
    saved = RunConfig.from_yaml(run_dir / "config.yaml")
    meta = json.loads((run_dir / "manifest.json").read_text())
    n_features = len(meta["feature_names"])
    assert saved.model == preset_config(cfg.preset, n_features=n_features, n_classes=2)
    assert saved.model_copy(update={"model": None}) == cfg
    assert RunConfig.from_yaml(run_dir / "config.yaml") == RunConfig.from_dict(saved.to_dict())
    history = [json.loads(line) for line in (run_dir / "history.jsonl").read_text().splitlines()]
    assert [h["epoch"] for h in history] == [1]
    m = _metrics(run_dir)
    assert {"model", "baselines", "baseline_metrics", "run"} <= set(m)
    assert [b["model"] for b in m["baselines"]] == ["model", "majority", "logistic"]
    assert m["run"]["epochs_run"] == 1
    assert 0.0 <= m["model"]["accuracy"] <= 1.0


def test_baselines_in_metrics_are_recomputable(run):
    """Majority and logistic baselines recomputed with sklearn on the run's own split."""
    run_dir, _ = run
    cfg = RunConfig.from_yaml(run_dir / "config.yaml")
    meta = json.loads((run_dir / "manifest.json").read_text())
    data = prepare_data(cfg.data, Path(meta["store"]))
    m = _metrics(run_dir)
    assert m["run"]["n_train"] == len(data.y["train"]) and m["run"]["n_test"] == len(data.y["test"])
    ytr, yte = data.y["train"], data.y["test"]

    prior = np.bincount(ytr, minlength=2) / len(ytr)
    maj_acc = float((yte == int(prior.argmax())).mean())
    assert m["baseline_metrics"]["majority"]["accuracy"] == pytest.approx(maj_acc, abs=1e-12)
    maj_ll = log_loss(yte, np.tile(prior, (len(yte), 1)), labels=[0, 1])
    assert m["baseline_metrics"]["majority"]["log_loss"] == pytest.approx(maj_ll, rel=1e-6)

    flat = lambda x: x.reshape(len(x), -1)  # noqa: E731
    # the documented settings (docs/baselines: L2, C=0.01, tol=1e-3, max_iter=300)
    lr = make_pipeline(StandardScaler(), LogisticRegression(C=0.01, tol=1e-3, max_iter=300,
                                                            random_state=cfg.train.seed))
    lr.fit(flat(data.x["train"]), ytr)
    proba = lr.predict_proba(flat(data.x["test"]))
    log_acc = accuracy_score(yte, proba.argmax(1))
    assert m["baseline_metrics"]["logistic"]["accuracy"] == pytest.approx(log_acc, abs=1e-12)
    # accuracy can coincide across settings (e.g. both at the majority share): the
    # probabilities cannot, so the log loss pins C, scaling and the solver down
    log_ll = log_loss(yte, proba, labels=[0, 1])
    assert m["baseline_metrics"]["logistic"]["log_loss"] == pytest.approx(log_ll, rel=1e-5)

    table = {row["model"]: row for row in m["baselines"]}
    assert table["majority"]["accuracy"] == pytest.approx(maj_acc, abs=1e-12)
    assert table["logistic"]["accuracy"] == pytest.approx(log_acc, abs=1e-12)
    assert table["model"]["accuracy"] == m["model"]["accuracy"]


def test_training_again_from_the_saved_config_reproduces_the_run(run, tmp_path):
    run_dir, _ = run
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        res = cli("train", "--config", run_dir / "config.yaml", f"out_dir={tmp_path}")
    assert res.exit_code == 0, res.output
    again = tmp_path / run_dir.name
    a, b = _metrics(run_dir), _metrics(again)
    for key in ("accuracy", "balanced_accuracy", "log_loss", "brier", "roc_auc"):
        assert a["model"][key] == b["model"][key], key
    assert a["model"]["confusion_matrix"] == b["model"]["confusion_matrix"]
    assert a["run"]["test_loss"] == b["run"]["test_loss"]
    assert (run_dir / "weights.safetensors").read_bytes() == (again / "weights.safetensors").read_bytes()
    meta_a = json.loads((run_dir / "manifest.json").read_text())
    meta_b = json.loads((again / "manifest.json").read_text())
    assert meta_a["data_fingerprint"] == meta_b["data_fingerprint"]
    assert meta_a["feature_schema_hash"] == meta_b["feature_schema_hash"]


def test_cli_evaluate_gives_the_run_s_test_accuracy(run):
    run_dir, _ = run
    res = cli("evaluate", run_dir)
    assert res.exit_code == 0, res.output
    ev = json.loads((run_dir / "evaluation_test.json").read_text())
    m = _metrics(run_dir)
    assert ev["test"]["metrics"]["accuracy"] == pytest.approx(m["model"]["accuracy"], abs=1e-12)
    assert ev["test"]["metrics"]["log_loss"] == pytest.approx(m["model"]["log_loss"], rel=1e-6)
    assert ev["test"]["loss"] == pytest.approx(m["run"]["test_loss"], rel=1e-6)
    for name in ("majority", "logistic"):
        assert ev["test"]["baselines"][name]["accuracy"] == pytest.approx(
            m["baseline_metrics"][name]["accuracy"], abs=1e-12)


def test_cli_evaluate_refuses_a_different_feature_schema(run, tmp_path):
    run_dir, _ = run
    copy = tmp_path / "copy"
    shutil.copytree(run_dir, copy, ignore=shutil.ignore_patterns("ckpt", "evaluation_*"))
    meta = json.loads((copy / "manifest.json").read_text())
    meta["feature_schema_hash"] = "0" * 16
    (copy / "manifest.json").write_text(json.dumps(meta))
    res = cli("evaluate", copy)
    assert res.exit_code == 2
    err = res.stderr.replace("\n", "")
    assert f"feature schema {'0' * 16}" in err and "feature code (formulas) changed" in err
    assert not (copy / "evaluation_test.json").exists()


# ------------------------------------------------------------------------------ resume


def test_resume_refuses_a_changed_config_naming_the_keys_unless_forced(run, tmp_path):
    run_dir, _ = run
    out = tmp_path / "moved"  # a moved run directory resumes: name/out_dir only locate it
    shutil.copytree(run_dir, out / run_dir.name)
    moved = out / run_dir.name
    weights = (moved / "weights.safetensors").read_bytes()
    changed = [f"out_dir={out}", *OVERRIDES, "train.epochs=2", "train.optimizer.lr=0.002"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        res = cli("train", "--config", DEMO, *changed, "--resume")
    assert res.exit_code == 2
    err = res.stderr.replace("\n", "")
    assert "differs from the given config at 2 key(s)" in err
    assert "train.epochs: stored 1, given 2" in err and "train.optimizer.lr: stored 0.001, given 0.002" in err
    assert "--force" in err and "out_dir" not in err.split("key(s)")[1].split("--force")[0]
    assert (moved / "weights.safetensors").read_bytes() == weights  # nothing touched
    # the same config resumes (the finished run has nothing left to train) ...
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        res = cli("train", "--config", DEMO, f"out_dir={out}", *OVERRIDES, "--resume")
    assert res.exit_code == 0, res.output
    assert (moved / "weights.safetensors").read_bytes() == weights
    # ... and --force resumes the changed one: epoch 2 continues from epoch 1's checkpoint
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        res = cli("train", "--config", DEMO, *changed, "--resume", "--force")
    assert res.exit_code == 0, res.output
    history = [json.loads(line) for line in (moved / "history.jsonl").read_text().splitlines()]
    assert [h["epoch"] for h in history] == [1, 2]
    assert RunConfig.from_yaml(moved / "config.yaml").train.epochs == 2


# ---------------------------------------------------------- split and normaliser honesty


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> Path:
    return resolve_store(DataConfig(), tmp_path_factory.mktemp("bundled"))


def _positions(cal: np.ndarray, ts: pl.Series) -> np.ndarray:
    return np.searchsorted(cal, ts.dt.epoch("ns").to_numpy())


@settings(max_examples=8, deadline=None)
@given(horizon=st.integers(1, 6), embargo=st.integers(0, 9), stride=st.integers(1, 9),
       val=st.sampled_from([0.1, 0.2, 0.3]), test=st.sampled_from([0.1, 0.2, 0.25]))
def test_prepare_data_purges_and_embargoes_by_the_label_horizon(store, horizon, embargo, stride, val, test):
    """On the real bundled bars: no earlier window's label span [start, end + horizon] comes
    within ``embargo`` calendar bars of a later split's window, and labels are the sign of the
    horizon-bar forward return read straight from the bars."""
    cfg = DataConfig(symbols=["AAPL", "JPM", "MSFT", "XOM"], window=30, stride=stride, horizon=horizon,
                     task="direction", split=SplitConfig(val=val, test=test, embargo_bars=embargo))
    data = prepare_data(cfg, store)
    fm, bars, _ = load_features(cfg, store)
    cal = np.unique(fm.keys["ts"].dt.epoch("ns").to_numpy())  # the union bar calendar
    span = {k: (_positions(cal, m["start_ts"]), _positions(cal, m["end_ts"]) + horizon)
            for k, m in data.meta.items()}
    assert all(len(data.y[k]) > 0 for k in span)
    for early, late in (("train", "val"), ("train", "test"), ("val", "test")):
        gap = span[late][0].min() - span[early][1].max()  # later start - earlier label end
        assert gap > embargo, (early, late, gap, embargo)
    fwd = bars.select("symbol", "ts", up=(pl.col("adj_close").shift(-horizon).over("symbol")
                                          > pl.col("adj_close")).cast(pl.Int64))
    for k, m in data.meta.items():
        want = m.join(fwd, left_on=["symbol", "end_ts"], right_on=["symbol", "ts"], how="left")["up"]
        assert want.null_count() == 0 and (want.to_numpy() == data.y[k]).all(), k


def test_the_normaliser_saw_the_training_windows_only(store):
    cfg = DataConfig(symbols=["AAPL", "JPM", "MSFT", "XOM"], window=30, stride=3, normalize="standard")
    data = prepare_data(cfg, store)
    raw = prepare_data(cfg.model_copy(update={"normalize": "none"}), store)
    assert data.normalizer is not None and raw.normalizer is None
    n_f = raw.x["train"].shape[2]
    train = raw.x["train"].reshape(-1, n_f).astype(np.float64)  # (N * T, F)
    mean = train.mean(0)
    std = np.sqrt(((train - mean) ** 2).mean(0))
    np.testing.assert_allclose(data.normalizer.mean_, mean, rtol=1e-12, atol=0)
    np.testing.assert_allclose(data.normalizer.scale_, std, rtol=1e-12, atol=0)
    every = np.concatenate([raw.x[k].reshape(-1, n_f) for k in ("train", "val", "test")]).astype(np.float64)
    assert not np.allclose(data.normalizer.mean_, every.mean(0), rtol=1e-6, atol=0)
    assert not np.allclose(data.normalizer.scale_, every.std(0), rtol=1e-6, atol=0)
    for k in ("train", "val", "test"):  # every split scaled with the training statistics
        np.testing.assert_array_equal(data.x[k], data.normalizer.transform(raw.x[k]))


# --------------------------------------------------------------------------- models list


def _table_rows(output: str) -> dict[str, list[str]]:
    """Rows of a rich table: {first cell: [cells...]}, wrapped continuation lines joined."""
    rows: dict[str, list[str]] = {}
    current: list[str] | None = None
    for line in output.splitlines():
        if not line.startswith("│"):
            continue
        cells = [c.strip() for c in line.strip("│").split("│")]
        if cells[0]:
            current = rows.setdefault(cells[0], cells)
        elif current is not None:
            for i, c in enumerate(cells):
                if c:
                    current[i] = f"{current[i]} {c}".strip()
    return rows


def test_models_list_prints_every_preset_with_its_parameter_count():
    from moola.models import RANKING_PRESETS, describe_ranking_presets

    res = cli("models", "list")
    assert res.exit_code == 0, res.output
    every = _table_rows(res.stdout)
    for r in describe_ranking_presets():  # the second table: ranking presets and their counts
        assert every[r.name][1] == f"{r.params:,}", (r.name, every[r.name])
    rows = {k: v for k, v in every.items() if k not in RANKING_PRESETS}
    presets = ["simple_lstm", "jade", "jade_compact", "direction_lstm", "direction_transformer"]
    assert set(presets) <= set(PRESETS) and sorted(rows) == sorted(PRESETS)
    for name in PRESETS:
        n = count_parameters(build_model(preset_config(name, n_features=4)))
        assert rows[name][2] == f"{n:,}", (name, rows[name])
        assert rows[name][3] == "-" and rows[name][4] == ""  # no sample count: no ratio, no note


def test_models_list_warns_for_jade_at_174_samples():
    res = cli("models", "list", "--n-samples", "174")
    assert res.exit_code == 0, res.output
    rows = _table_rows(res.stdout)
    jade = rows["jade"]
    assert jade[3] == "3,543.6"  # 616,578 parameters since the pointer head's position prior
    assert "616,578 parameters for 174 samples (3,544:1)" in jade[4], jade
    assert "memorise" in jade[4]
    for name in ("jade_compact", "direction_lstm", "direction_transformer"):  # under 1,000:1
        assert rows[name][4] == "", rows[name]
    # another input shape changes the counts (31 features for the direction presets)
    res = cli("models", "list", "--input-shape", "105x31")
    rows31 = _table_rows(res.stdout)
    n = count_parameters(build_model(preset_config("direction_lstm", n_features=31)))
    assert rows31["direction_lstm"][2] == f"{n:,}"


# ------------------------------------------------- desk evaluation: persistence, CIs, economics

DIRECTION = ROOT / "configs" / "direction_demo.yaml"
DESK_BASELINES = ["majority", "persistence", "logistic", "lightgbm"]
DESK_OVERRIDES = ["train.epochs=1", "data.stride=20", "train.device=cpu", "train.num_threads=1",
                  f"baselines=[{','.join(DESK_BASELINES)}]", "baseline_lags=5", "audit={n_boot: 200}"]


@pytest.fixture(scope="module")
def desk_run(tmp_path_factory) -> tuple[Path, RunConfig]:
    """The bundled BTC 1m direction demo, 1 epoch at stride 20, with every direction baseline."""
    out = tmp_path_factory.mktemp("desk_train")
    args = [f"out_dir={out}", *DESK_OVERRIDES]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        res = cli("train", "--config", DIRECTION, *args)
    assert res.exit_code == 0, res.output
    cfg = RunConfig.from_yaml(DIRECTION, args)
    return out / cfg.name, cfg


def _desk_data(cfg: RunConfig):
    return prepare_data(cfg.data, resolve_store(cfg.data, Path(cfg.out_dir)))


@pytest.mark.parametrize("override", [["data.task=regression"]])
def test_persistence_is_refused_outside_direction_tasks_naming_the_key(override):
    with pytest.raises(ConfigError, match="baselines: persistence"):
        RunConfig.from_yaml(DIRECTION, [*override, "baselines=[majority,persistence]"])
    # without persistence the only complaint left is the preset, which has no regression head
    with pytest.raises(ConfigError) as ei:
        RunConfig.from_yaml(DIRECTION, [*override, "baselines=[majority,lightgbm]"])
    assert "persistence" not in str(ei.value) and "cannot learn data.task: regression" in str(ei.value)
    # economics: null turns the check off
    assert RunConfig.from_yaml(DIRECTION, ["economics=null"]).economics is None
    # ternary direction labels the last return with the same dead zone
    assert RunConfig.from_yaml(DIRECTION, ["data.direction=ternary", "data.dead_zone_bps=1",
                                           "baselines=[majority,persistence]"])


def test_prepared_returns_are_the_windows_last_and_forward_returns():
    """last_return is baselines.last_bar_return of the same windows; the label is the sign of
    forward_return (binary direction, no dead zone)."""
    from moola.evaluation.baselines import last_bar_return

    cfg = RunConfig.from_yaml(DIRECTION, ["data.stride=20", "data.horizon=3"])
    data = _desk_data(cfg)
    _, bars, _ = load_features(cfg.data, resolve_store(cfg.data, Path(cfg.out_dir)))
    for part in ("train", "val", "test"):
        np.testing.assert_allclose(data.last_return[part], last_bar_return(bars, data.meta[part]),
                                   rtol=0, atol=1e-15)
        assert len(data.forward_return[part]) == len(data.y[part])
        np.testing.assert_array_equal(data.y[part], (data.forward_return[part] > 0).astype(np.int64))


def test_direction_run_has_persistence_lightgbm_and_bootstrap_cis(desk_run):
    run_dir, cfg = desk_run
    m = _metrics(run_dir)
    assert [b["model"] for b in m["baselines"]] == ["model", *DESK_BASELINES]
    data = _desk_data(cfg)
    y = data.y["test"]
    # persistence recomputed from the raw last returns: up when the last bar went up
    pers = float(((data.last_return["test"] > 0).astype(np.int64) == y).mean())
    assert m["baseline_metrics"]["persistence"]["accuracy"] == pytest.approx(pers)
    assert m["baseline_metrics"]["lightgbm"]["params"]["lags"] == 5
    ci = m["test_ci"]
    acc = ci["accuracy"]
    assert acc["estimate"] == pytest.approx(m["model"]["accuracy"])
    assert acc["low"] <= acc["estimate"] <= acc["high"] and acc["high"] - acc["low"] > 0
    assert acc["n"] == len(y) and acc["block_length"] == int(np.ceil(len(y) ** (1 / 3)))
    best = max(DESK_BASELINES, key=lambda b: m["baseline_metrics"][b]["accuracy"])
    assert ci["best_baseline"] == best
    d = ci["difference"]
    assert d["estimate"] == pytest.approx(m["model"]["accuracy"] - m["baseline_metrics"][best]["accuracy"])
    assert d["low"] <= d["estimate"] <= d["high"]
    # every baseline's paired difference, in the shape the promotion gates' `beats:` read
    assert set(m["vs_baselines"]) == set(DESK_BASELINES)
    for name, v in m["vs_baselines"].items():
        assert v["metric"] == "accuracy" and v["ci_low"] <= v["diff"] <= v["ci_high"]
        assert v["diff"] == pytest.approx(m["model"]["accuracy"] - m["baseline_metrics"][name]["accuracy"])
    assert m["vs_baselines"][best]["ci_low"] == d["low"]
    html = (run_dir / "report.html").read_text()
    assert f"model - {best}" in html and "moving-block bootstrap" in html


def test_direction_run_has_an_economic_check_after_costs(desk_run):
    """The band comes from validation; buy-and-hold is recomputed on the test rows' returns."""
    from moola.evaluation.economics import annual_bars, buy_and_hold

    run_dir, cfg = desk_run
    econ = _metrics(run_dir)["economics"]
    assert set(econ["symbols"]) == {"BTCUSD"}
    sym = econ["symbols"]["BTCUSD"]
    assert sym["band"] in econ["config"]["bands"]
    assert econ["config"]["costs"] == {"fee_bps": 10.0, "slippage_bps": 1.0}
    data = _desk_data(cfg)
    bh = buy_and_hold(data.forward_return["test"], stride=20, bars_per_year=annual_bars("1m"))
    assert sym["buy_and_hold"]["net_return"] == pytest.approx(bh.net_return)
    assert sym["buy_and_hold"]["sharpe"] == pytest.approx(bh.sharpe)
    model = sym["model"]
    assert model["n_periods"] == len(data.y["test"]) and model["band"] == sym["band"]
    assert model["turnover"] >= 0 and 0 <= model["max_drawdown"] < 1
    assert econ["mean"]["model"]["net_return"] == pytest.approx(model["net_return"])
    assert econ["net_sharpe"] == pytest.approx(model["sharpe"])  # what the net_sharpe gate reads
    # always in on the model's side (band 0): costs are charged on every position change
    always, gross = sym["always_in"], sym["always_in_gross"]
    assert always["band"] == 0.0 and always["turnover"] == gross["turnover"] > 0
    assert always["net_return"] < gross["net_return"]
    assert (run_dir / "accuracy_by_hour.png").read_bytes()[:8] == PNG_MAGIC
    assert (run_dir / "equity.png").read_bytes()[:8] == PNG_MAGIC
    assert "Economics after costs" in (run_dir / "report.html").read_text()


def test_direction_run_audits_itself_by_retraining_on_permuted_and_shifted_labels(desk_run):
    """The audit retrains the run's model (kept epochs, no early stopping) and records both checks;
    on real BTC minutes with no leak, permuted labels fall to the majority rate."""
    run_dir, cfg = desk_run
    m = _metrics(run_dir)
    audit = m["audit"]
    assert set(audit["checks"]) == {"permuted", "shifted"}
    assert audit["retrained_epochs"] == 1
    perm = audit["checks"]["permuted"]
    assert perm["passed"] and perm["ci_low"] <= 0.0
    data = _desk_data(cfg)
    majority = int(np.bincount(data.y["train"]).argmax())
    assert perm["majority_rate"] == pytest.approx(float((data.y["test"] == majority).mean()))
    shifted = audit["checks"]["shifted"]
    assert shifted["accuracy"] == pytest.approx(m["model"]["accuracy"], abs=0.02)  # rows with a next row
    assert 0 < shifted["rows"] < len(data.y["test"]) + 1
    assert audit["passed"] == (perm["passed"] and shifted["passed"])
    assert audit["first_line"].startswith("audit: passed" if audit["passed"] else "audit: FAILED")
    assert audit["first_line"] in (run_dir / "report.html").read_text()


def test_the_report_states_the_split_the_run_used(run):
    """Rows per segment equal what the model was scored on; the purge and embargo counts are the
    split's own; the shares asked are the config's fractions."""
    run_dir, _ = run
    m = _metrics(run_dir)
    seg = {s["segment"]: s for s in m["split"]["segments"]}
    assert [seg[k]["rows"] for k in ("train", "val", "test")] == [m["run"]["n_train"], m["run"]["n_val"],
                                                                  m["run"]["n_test"]]
    cfg = RunConfig.from_yaml(run_dir / "config.yaml")
    val, test = cfg.data.split.fractions
    assert seg["val"]["asked"] == pytest.approx(val) and seg["test"]["asked"] == pytest.approx(test)
    assert seg["train"]["first"] < seg["val"]["first"] < seg["test"]["first"]  # chronological
    html = (run_dir / "report.html").read_text()
    assert "Split used" in html
    assert f"purge removed {m['split']['purged']:,} and the embargo {m['split']['embargoed']:,}" in html
