"""``moola export``: a run directory as one ONNX or TorchScript file that a consumer without moola
loads (torch.jit.load, onnxruntime) and that gives the run's own calibrated and raw
probabilities on the same raw feature windows, for an LSTM classifier and a transformer
direction model (conv, symbol-embedding and regression runs under ``-m slow``); the command
refuses bad formats, missing run directories and non-empty outputs, and never half-writes."""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
import warnings
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import pytest
from typer.testing import CliRunner, Result

from _train_helpers import ROOT
from moola.cli import app
from moola.datasets.tasks import DataConfig, resolve_store
from moola.datasets.windows import WindowSet
from moola.inference import EXPORT_FILES, EXPORT_JSON, Predictor, export_run
from moola.pipelines.train import RunConfig, run_train
from moola.training.manifest import read_manifest

DEMO = ROOT / "configs" / "train_demo.yaml"
OLD_RUN = ROOT / "tests" / "fixtures" / "old_run_v1"
FAST = ["train.epochs=1", "data.stride=20", "baselines=[majority]", "train.device=cpu",
        "train.num_threads=1", "data.symbols=[AAPL,JPM]"]
ATOL = 1e-5
N_WINDOWS = 150  # the last windows of the run's store: batches of every size go through

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def cli(*args: str | Path) -> Result:
    return CliRunner().invoke(app, [str(a) for a in args], catch_exceptions=False)


def train(out: Path, *overrides: str, cfg: dict[str, Any] | None = None) -> Path:
    """One quick run of train_demo (2 stocks, 1 epoch) with ``overrides``, or of ``cfg``."""
    config = (RunConfig.from_dict(cfg) if cfg
              else RunConfig.from_yaml(DEMO, [f"out_dir={out}", *FAST, *overrides]))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return run_train(config, show_progress=False).run_dir


@pytest.fixture(scope="module")
def lstm_run(tmp_path_factory) -> Path:
    return train(tmp_path_factory.mktemp("lstm"), "preset=simple_lstm")


@pytest.fixture(scope="module")
def transformer_run(tmp_path_factory) -> Path:
    return train(tmp_path_factory.mktemp("transformer"), "preset=direction_transformer")


def served(run_dir: Path, store: Path | None = None) -> tuple[dict[str, np.ndarray], pl.DataFrame]:
    """The raw feature windows of the run's last ``N_WINDOWS`` windows (symbol ids too) and
    ``Predictor.predict_frame``'s rows for the same windows, on the run's store by default."""
    p = Predictor.from_dir(run_dir)
    store = store or Path(p.manifest_.store or "")
    bars, tf = p.load_bars(store)
    ws = WindowSet.from_matrix(p.features(bars, tf), p.window_)
    since: datetime = ws.meta["end_ts"].sort()[-N_WINDOWS]
    idx = np.flatnonzero((ws.meta["end_ts"] >= since).to_numpy())
    inputs = {"x": ws.batch(idx)}
    if p.model_config_.symbol_embedding is not None:
        sym = ws.meta["symbol"].gather(pl.Series(idx)).to_list()
        inputs["symbol_id"] = np.asarray([p.manifest_.symbols.index(s) for s in sym], dtype=np.int64)
    frame = p.predict_frame(store, since=since)
    assert frame.height == len(idx)
    return inputs, frame


CONSUMER = """
import json, sys
sys.modules["moola"] = None  # any import of moola now fails: the bundle must stand alone
import numpy as np
out = sys.argv[1]
spec = json.load(open(out + "/export.json"))
feeds = {i["name"]: np.load(out + "/in_" + i["name"] + ".npy") for i in spec["inputs"]}
names = [o["name"] for o in spec["outputs"]]
if spec["format"] == "onnx":
    import onnxruntime as ort
    sess = ort.InferenceSession(out + "/" + spec["file"], providers=["CPUExecutionProvider"])
    got = sess.run(names, feeds)
else:
    import torch
    m = torch.jit.load(out + "/" + spec["file"])
    with torch.no_grad():
        got = [t.numpy() for t in m(*(torch.from_numpy(feeds[i["name"]]) for i in spec["inputs"]))]
for n, g in zip(names, got):
    np.save(out + "/out_" + n + ".npy", g)
"""


def consume(bundle: Path, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Outputs of the exported file on ``inputs``, computed in a fresh interpreter that cannot
    import moola (numpy, json and torch or onnxruntime only)."""
    for k, v in inputs.items():
        np.save(bundle / f"in_{k}.npy", v)
    res = subprocess.run([sys.executable, "-c", CONSUMER, str(bundle)], capture_output=True, text=True,
                         timeout=120)
    assert res.returncode == 0, res.stderr
    spec = json.loads((bundle / EXPORT_JSON).read_text())
    return {o["name"]: np.load(bundle / f"out_{o['name']}.npy") for o in spec["outputs"]}


def assert_reproduces(got: dict[str, np.ndarray], frame: pl.DataFrame, classes: list[str]) -> None:
    """Exported ``proba`` / ``raw_proba`` (or ``score``) equal the Predictor's columns."""
    if classes:
        for out, prefix in (("proba", "proba_"), ("raw_proba", "raw_proba_")):
            want = frame.select([f"{prefix}{c}" for c in classes]).to_numpy()
            np.testing.assert_allclose(got[out], want, atol=ATOL, rtol=0, err_msg=out)
    else:
        np.testing.assert_allclose(got["score"][:, 0], frame["score"].to_numpy(), atol=ATOL, rtol=0)


def round_trip(run_dir: Path, fmt: str, out: Path, store: Path | None = None) -> None:
    """Export ``run_dir`` through the CLI and check a moola-free consumer reproduces it."""
    if fmt == "onnx":
        pytest.importorskip("onnxruntime")
    res = cli("export", run_dir, "--format", fmt, "--out", out)
    assert res.exit_code == 0, res.output
    inputs, frame = served(run_dir, store)
    assert_reproduces(consume(out, inputs), frame, read_manifest(run_dir).classes)


@pytest.mark.parametrize("fmt", ["torchscript", "onnx"])
def test_an_exported_lstm_gives_the_runs_probabilities_without_moola(lstm_run, fmt, tmp_path):
    round_trip(lstm_run, fmt, tmp_path / "bundle")


@pytest.mark.parametrize("fmt", ["torchscript", "onnx"])
def test_an_exported_transformer_gives_the_runs_probabilities_without_moola(transformer_run, fmt, tmp_path):
    round_trip(transformer_run, fmt, tmp_path / "bundle")


def test_an_old_run_directory_exports_with_its_migrated_manifest(tmp_path):
    """A pre-manifest run (meta.json, moola 90b239b) exports too; the bundle's manifest.json is
    the migration moola reads, export.json hashes the meta.json the directory holds."""
    store = resolve_store(DataConfig(), tmp_path / "store")
    round_trip(OLD_RUN, "torchscript", tmp_path / "old", store)
    spec = json.loads((tmp_path / "old" / EXPORT_JSON).read_text())
    assert spec["manifest_source"] == "meta.json"
    assert spec["manifest_sha256"] == hashlib.sha256((OLD_RUN / "meta.json").read_bytes()).hexdigest()
    assert read_manifest(tmp_path / "old") == read_manifest(OLD_RUN)


def test_export_json_describes_inputs_outputs_and_the_runs_preprocessing(lstm_run, tmp_path):
    out = export_run(lstm_run, "torchscript", tmp_path / "b")
    assert sorted(p.name for p in out.iterdir()) == sorted([EXPORT_FILES["torchscript"], EXPORT_JSON,
                                                            "manifest.json"])
    spec = json.loads((out / EXPORT_JSON).read_text())
    m = read_manifest(lstm_run)
    assert (out / "manifest.json").read_bytes() == (lstm_run / "manifest.json").read_bytes()
    shape = ["batch", m.window, len(m.feature_names)]
    assert spec["inputs"] == [{"name": "x", "dtype": "float32", "shape": shape,
                               "what": "raw feature values (not normalised), oldest bar first"}]
    assert [o["name"] for o in spec["outputs"]] == ["proba", "raw_proba"]
    assert spec["feature_names"] == m.feature_names and spec["classes"] == m.classes == ["down", "up"]
    assert spec["window"] == m.window == 105 and spec["temperature"] == m.temperature
    norm = json.loads((lstm_run / "normalizer.json").read_text())
    assert spec["normalizer"]["center"] == norm["mean_"] and spec["normalizer"]["scale"] == norm["scale_"]
    assert spec["check"]["max_abs_diff"] <= ATOL
    assert spec["manifest_source"] == "manifest.json"
    assert spec["manifest_sha256"] == hashlib.sha256((lstm_run / "manifest.json").read_bytes()).hexdigest()


def test_the_cli_refuses_a_bad_format_a_missing_run_and_a_non_empty_out(lstm_run, tmp_path):
    res = cli("export", lstm_run, "--format", "tflite", "--out", tmp_path / "a")
    assert res.exit_code == 2 and "onnx, torchscript" in res.output and not (tmp_path / "a").exists()
    res = cli("export", tmp_path / "nope", "--format", "torchscript", "--out", tmp_path / "a")
    assert res.exit_code == 2 and "nope does not exist" in res.output
    res = cli("export", tmp_path, "--format", "torchscript", "--out", tmp_path / "a")
    assert res.exit_code == 2 and "has no manifest.json" in res.output
    full = tmp_path / "full"
    full.mkdir()
    (full / "keep.txt").write_text("mine")
    res = cli("export", lstm_run, "--format", "torchscript", "--out", full)
    assert res.exit_code == 2 and "--overwrite" in res.output and "not empty" in res.output
    assert [p.name for p in full.iterdir()] == ["keep.txt"]
    res = cli("export", lstm_run, "--format", "torchscript", "--out", full, "--overwrite")
    assert res.exit_code == 0, res.output
    assert sorted(p.name for p in full.iterdir()) == ["export.json", "manifest.json", "model.pt"]
    for inside in (lstm_run, lstm_run.parent):  # --overwrite there would delete the run
        res = cli("export", lstm_run, "--format", "torchscript", "--out", inside, "--overwrite")
        assert res.exit_code == 2 and "holds) the run directory" in res.output
    assert (lstm_run / "weights.safetensors").is_file()


def test_a_run_of_another_kind_is_refused_by_name(lstm_run, tmp_path):
    """Only `moola train` runs export (a ranking run's day panels are another contract)."""
    other = tmp_path / "rank"
    shutil.copytree(lstm_run, other)
    m = json.loads((other / "manifest.json").read_text())
    (other / "manifest.json").write_text(json.dumps({**m, "kind": "rank_run"}))
    res = cli("export", other, "--format", "torchscript", "--out", tmp_path / "o")
    assert res.exit_code == 2 and "kind 'rank_run'" in res.output and str(other) in res.output
    assert not (tmp_path / "o").exists()


def test_a_failed_export_leaves_the_old_bundle_whole_and_no_temp_dir(lstm_run, tmp_path, monkeypatch):
    import moola.inference._export as ex

    out = export_run(lstm_run, "torchscript", tmp_path / "b")
    before = {p.name: p.read_bytes() for p in out.iterdir()}

    def broken(*a: Any, **k: Any) -> None:
        raise RuntimeError("disk gone mid-export")

    monkeypatch.setattr(ex, "_write_torchscript", broken)
    with pytest.raises(RuntimeError, match="disk gone"):
        export_run(lstm_run, "torchscript", out, overwrite=True)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert [p.name for p in tmp_path.iterdir()] == ["b"]


def test_onnx_without_the_onnx_package_is_a_clear_exit_2(lstm_run, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "onnx", None)  # importlib.util.find_spec("onnx") -> None
    res = cli("export", lstm_run, "--format", "onnx", "--out", tmp_path / "o")
    assert res.exit_code == 2
    assert "onnx package" in res.output and "pip install onnx onnxruntime" in res.output
    assert not (tmp_path / "o").exists()


@pytest.mark.slow
@pytest.mark.parametrize("case", ["resnet1d", "inception_compact", "symbol_embedding", "regression"])
@pytest.mark.parametrize("fmt", ["torchscript", "onnx"])
def test_conv_pooled_and_regression_runs_export_too(case, fmt, tmp_path):
    if case == "regression":
        run_dir = train(tmp_path, cfg={
            "name": "reg", "out_dir": str(tmp_path), "preset": None, "baselines": [],
            "data": {"symbols": ["AAPL", "MSFT"], "window": 30, "stride": 10, "task": "regression"},
            "model": {"name": "tiny_reg", "encoder": {"kind": "lstm", "input_size": 4, "hidden": 8,
                                                      "layers": 1}, "regression": {"horizons": [1]}},
            "train": {"epochs": 1, "batch_size": 64, "device": "cpu", "num_threads": 1}})
    elif case == "symbol_embedding":
        run_dir = train(tmp_path, "symbol_embedding=true")
    else:
        run_dir = train(tmp_path, f"preset={case}")
    round_trip(run_dir, fmt, tmp_path / "bundle")
