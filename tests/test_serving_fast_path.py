"""Single windows are served by a compiled engine (ONNX Runtime, else TorchScript, else eager)
that equals the eager model: on real bundled windows, for every kind of model the Predictor
serves (LSTM classifier, direction LSTM, Transformer; conv, symbol-embedding and regression runs
under ``-m slow``), each window equals the eager batched path to 1e-5; a call of more than
``SMALL_BATCH`` windows still takes the eager batched path bit for bit; without onnxruntime the
Predictor falls back to TorchScript, and an engine that does not reproduce the model is refused
for eager, each with a warning naming why; the runtime's full-window members are served by the
engine, and its recurrent ring equals the same windows."""

from __future__ import annotations

import io
import logging
import sys
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import pytest
import torch
from rich.console import Console

from _real_data import two_crypto_symbols
from moola.data import Store, Timeframe
from moola.datasets.windows import WindowSet
from moola.inference import ENGINE_ATOL, SMALL_BATCH, Predictor, build_engine, head_values
from moola.pipelines.train import RunConfig, run_train
from moola.runtime import StreamingMember

pytestmark = pytest.mark.usefixtures("one_torch_thread")
pytest.importorskip("onnxruntime")

DAILY = {"bundled": "sp500_daily", "feature_set": "ohlc4", "window": 105, "stride": 20,
         "task": "direction", "horizon": 1, "symbols": ["AAPL", "JPM"]}
TRAIN = {"epochs": 1, "batch_size": 64, "device": "cpu", "num_threads": 1, "early_stopping": None}
RUNS: dict[str, dict[str, Any]] = {
    "simple_lstm": {"preset": "simple_lstm", "data": DAILY},
    "direction_lstm": {"preset": "direction_lstm", "data": DAILY},
    "direction_transformer": {"preset": "direction_transformer", "data": DAILY},
}
SLOW_RUNS: dict[str, dict[str, Any]] = {
    "inception_compact": {"preset": "inception_compact", "data": DAILY},
    "resnet1d": {"preset": "resnet1d", "data": DAILY},
    "symbol_embedding": {"preset": "direction_lstm", "symbol_embedding": True, "data": DAILY},
    "regression": {"preset": None, "data": {**DAILY, "task": "regression", "window": 30},
                   "model": {"name": "tiny_reg", "regression": {"horizons": [1]},
                             "encoder": {"kind": "gru", "input_size": 4, "hidden": 8, "layers": 1}}},
}


def train(root: Path, name: str, cfg: dict[str, Any]) -> Path:
    """One epoch of ``cfg`` through the public API; the run directory."""
    full = {"name": name, "out_dir": str(root), "baselines": ["majority"], "economics": None,
            "train": TRAIN, **cfg}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return run_train(RunConfig.from_dict(full), show_progress=False,
                         console=Console(file=io.StringIO())).run_dir


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("serving")
    return {name: train(root, name, cfg) for name, cfg in RUNS.items()}


def windows(p: Predictor, n: int = 40) -> tuple[WindowSet, np.ndarray]:
    """The run's windows on its store and the indices of the last ``n``."""
    bars, tf = p.load_bars(p.manifest_.store or "")
    ws = WindowSet.from_matrix(p.features(bars, tf), p.window_)
    return ws, np.arange(len(ws) - n, len(ws))


def assert_engine_equals_eager(run_dir: Path, engine: str = "onnxruntime") -> Predictor:
    """Single windows and small calls through the engine equal the eager batched path (1e-5);
    a call of ``SMALL_BATCH + 1`` windows is the eager batched path bit for bit."""
    fast, ref = Predictor.from_dir(run_dir), Predictor.from_dir(run_dir, engine="eager")
    ws, idx = windows(fast)
    want = ref.predict_windows(ws, idx)  # (40, C): batched, padded: what evaluation computes
    assert np.isfinite(want).all() and want.std(0).max() > 0  # windows that tell apart
    one = np.concatenate([fast.predict_windows(ws, idx[i:i + 1]) for i in range(12)])
    few = fast.predict_windows(ws, idx[12:12 + SMALL_BATCH])
    assert fast.serving_engine().name == engine
    np.testing.assert_allclose(one, want[:12], atol=ENGINE_ATOL, rtol=0)
    np.testing.assert_allclose(few, want[12:12 + SMALL_BATCH], atol=ENGINE_ATOL, rtol=0)
    many = fast.predict_windows(ws, idx[:SMALL_BATCH + 1])
    assert np.array_equal(many, want[:SMALL_BATCH + 1])
    assert fast.serving_engine().max_abs_diff <= ENGINE_ATOL
    return fast


@pytest.mark.parametrize("name", list(RUNS))
def test_single_windows_through_the_engine_equal_the_eager_model(runs, name):
    assert_engine_equals_eager(runs[name])


@pytest.mark.slow
@pytest.mark.parametrize("name", list(SLOW_RUNS))
def test_conv_embedding_and_regression_runs_are_served_by_the_engine_too(tmp_path, name):
    assert_engine_equals_eager(train(tmp_path, name, SLOW_RUNS[name]))


def test_a_stream_of_the_last_required_bars_predicts_the_batched_probabilities(runs):
    """The calibrated columns ``predict_frame`` serves for one window equal the batched ones."""
    p = Predictor.from_dir(runs["simple_lstm"])
    bars, _ = p.load_bars(p.manifest_.store or "")
    aapl = bars.filter(pl.col("symbol") == "AAPL")
    full = Predictor.from_dir(runs["simple_lstm"], engine="eager").predict_frame(aapl).tail(5)
    for i in range(5):
        end = int(aapl["ts"].search_sorted(full["ts"][i])) + 1
        one = p.predict_frame(aapl.slice(end - p.required_bars, p.required_bars))
        assert one.height == 1 and one["ts"][0] == full["ts"][i]
        np.testing.assert_allclose(one.drop("symbol", "ts").to_numpy(),
                                   full.drop("symbol", "ts").to_numpy()[i:i + 1], atol=ENGINE_ATOL, rtol=0)
    assert p.serving_engine().name == "onnxruntime"


def test_without_onnxruntime_single_windows_fall_back_to_torchscript_saying_why(runs, monkeypatch, caplog):
    """A plain install has no onnxruntime (it is a dev extra): TorchScript, and a warning."""
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # import fails, find_spec says absent
    with caplog.at_level(logging.WARNING, logger="moola.inference"):
        p = assert_engine_equals_eager(runs["direction_lstm"], engine="torchscript")
    assert "not installed" in p.serving_engine().passed_over["onnxruntime"]
    lines = [r.getMessage() for r in caplog.records if r.name == "moola.inference"]
    assert any("served by torchscript, not onnxruntime" in m and "not installed" in m for m in lines), lines


def test_an_engine_that_does_not_reproduce_the_model_is_refused_for_eager(runs, caplog):
    """The check is real: against a reference the engines do not compute (the model under
    bf16 autocast, ~1e-4 away), both compiled engines are refused, loudly, and eager serves."""
    p = Predictor.from_dir(runs["direction_lstm"])
    ws, idx = windows(p, 6)
    x, _ = p._inputs(ws, idx, None)

    def bf16(xw: np.ndarray, ids: np.ndarray | None) -> np.ndarray:
        with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
            return head_values(p.model_({"x": torch.from_numpy(xw)}), p.model_config_)

    with caplog.at_level(logging.WARNING, logger="moola.inference"):
        engine = build_engine(p.model_.eval(), p.model_config_, window=p.window_, n_symbols=2, eager=bf16,
                              windows=(x, None), source="bf16 reference")
    assert engine.name == "eager"
    assert set(engine.passed_over) == {"onnxruntime", "torchscript"}
    assert all("differs from the eager model by" in why for why in engine.passed_over.values())
    assert sum("served by eager" in r.getMessage() for r in caplog.records) == 2
    np.testing.assert_array_equal(engine.run(x[:1], None), bf16(x[:1], None))


def test_an_unknown_engine_is_refused_naming_the_valid_ones(runs):
    with pytest.raises(ValueError, match="unknown serving engine 'tensorrt'; valid engines: "
                                         "onnxruntime, torchscript, eager"):
        Predictor.from_dir(runs["simple_lstm"], engine="tensorrt")


# ------------------------------------------------------------------ the runtime


@pytest.fixture(scope="module")
def minute_run(tmp_path_factory) -> Path:
    """direction_lstm on crypto39, one epoch on two real BTC minute series."""
    root = tmp_path_factory.mktemp("serving_minutes")
    Store(root / "store").write(two_crypto_symbols(3000, 300), Timeframe("1m"))
    return train(root, "minutes", {"preset": "direction_lstm", "data": {
        "store": str(root / "store"), "timeframe": "1m", "feature_set": "crypto39", "window": 60,
        "stride": 40, "task": "direction", "horizon": 1}})


def test_the_runtime_serves_full_windows_by_the_engine_and_its_ring_equals_them(minute_run):
    """A full-window member (recurrent=False) is served by ONNX Runtime, built when the member
    is; the recurrent ring
    member (window staggered states carried bar by bar) gives the same raw P(up): both equal
    the eager batched forward of the windows ending at each bar to 1e-5."""
    ring = StreamingMember(Predictor.from_dir(minute_run))
    full = StreamingMember(Predictor.from_dir(minute_run), recurrent=False)
    assert ring.recurrent and not full.recurrent
    assert ring.predictor.serving_engine_ is None  # the ring needs none
    assert full.predictor.serving_engine_ is not None  # built at start-up, not in the first tick
    p = Predictor.from_dir(minute_run, engine="eager")
    bars, tf = p.load_bars(p.manifest_.store or "")
    one = bars.filter(pl.col("symbol") == "BTCUSD").tail(p.required_bars - 1 + 30)
    warm = one.head(p.required_bars - 1)
    assert all(s.reason == "warmup" for s in ring.step_bars(warm) + full.step_bars(warm))
    got: dict[str, list[float]] = {"ring": [], "full": []}
    for t in range(p.required_bars - 1, one.height):
        bar = one.slice(t, 1)
        for name, member in (("ring", ring), ("full", full)):
            (step,) = member.step_bars(bar)
            assert step.reason is None and step.raw_proba_up is not None
            got[name].append(step.raw_proba_up)
    engine = full.predictor.serving_engine_
    assert engine is not None and engine.name == "onnxruntime"
    ws = WindowSet.from_matrix(p.features(one, tf), p.window_)
    assert len(ws) == 30
    want = p.predict_windows(ws)[:, p.classes_.index("up")]
    np.testing.assert_allclose(got["full"], want, atol=ENGINE_ATOL, rtol=0)
    np.testing.assert_allclose(got["ring"], want, atol=ENGINE_ATOL, rtol=0)
