"""The single-window serving engine: a run's model compiled once (ONNX Runtime on CPU, else a
frozen TorchScript trace, else the eager module) for the calls that bring a few windows, where
the eager module spends most of its time in Python and in per-op dispatch, not arithmetic.

``ServingGraph`` (also what ``moola export`` writes) is the model plus its head's probabilities
as one traceable module. An engine is taken only after it reproduces the eager model on the
run's own windows and on seeded ones to :data:`ENGINE_ATOL`; otherwise the next engine is tried,
and every engine passed over is named in a warning on the ``moola.inference`` logger."""

from __future__ import annotations

import contextlib
import importlib.util
import io
import logging
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import torch
from torch import nn

from moola.models import ModelConfig, fold_attention

__all__ = ["ENGINES", "ENGINE_ATOL", "ONNX_OPSET", "SMALL_BATCH", "Engine", "ServingGraph", "build_engine"]

log = logging.getLogger("moola.inference")

EngineName = Literal["onnxruntime", "torchscript", "eager"]
ENGINES: tuple[EngineName, ...] = ("onnxruntime", "torchscript", "eager")  # fastest first
ONNX_OPSET = 17
# a call of at most this many windows runs them one at a time through the engine; a larger one
# goes through the eager model in batches (padded to MIN_BATCH, bit-identical to evaluation).
# At batch 1 the engine is 0.7-0.9 ms (simple_lstm) against 6.7 ms for the padded eager batch,
# so window by window it wins up to about 8 windows (benchmarks/bench_serving.py)
SMALL_BATCH = 8
# an engine must give the eager model's head values to this, on every checked window
ENGINE_ATOL = 1e-5
_TRACE_BATCH = 2
_CHECK_SEEDED = 4  # seeded standard-normal windows checked beside the call's own


class ServingGraph(nn.Module):
    """Feature windows -> the run's probabilities: the module that is exported. Outputs
    ``(proba, raw_proba)`` (B, C) for a classifier or direction run, ``(score,)`` (B, H) for a
    regression run; ``symbol_id`` (B,) int64 only for a model with a symbol embedding. Without
    ``center``/``scale``/``temperature`` it is the model and head alone (proba = raw_proba)."""

    center: torch.Tensor  # (F,) float32 buffers: in the exported file as constants
    scale: torch.Tensor

    def __init__(self, model: nn.Module, model_cfg: ModelConfig, *, center: np.ndarray | None,
                 scale: np.ndarray | None, temperature: float | None) -> None:
        super().__init__()
        self.model = model
        self.head = head_kind(model_cfg)
        n = model_cfg.n_features
        self.register_buffer("center", _affine(center, n, 0.0))
        self.register_buffer("scale", _affine(scale, n, 1.0))
        self.temperature = temperature

    def forward(self, x: torch.Tensor, symbol_id: torch.Tensor | None = None) -> tuple[torch.Tensor, ...]:
        batch = {"x": (x - self.center) / self.scale}  # float32, as the Predictor's transform
        if symbol_id is not None:
            batch["symbol_id"] = symbol_id
        out = self.model(batch)
        if self.head == "regression":
            return (out["regression"].float(),)
        if self.head == "classifier":
            raw = torch.softmax(out["logits"].float(), -1)
        else:
            p = torch.sigmoid(out["direction"].float())
            raw = torch.stack([1 - p, p], 1)
        if self.temperature is None:
            return raw, raw
        return torch.softmax(torch.log(raw.clamp(1e-12, 1.0)) / self.temperature, -1), raw


def head_kind(cfg: ModelConfig) -> str:
    """The head the Predictor serves, in its order: classifier, else direction, else regression."""
    for kind in ("classifier", "direction", "regression"):
        if getattr(cfg, kind) is not None:
            return kind
    raise ValueError(f"model {cfg.name!r} has no classifier, direction or regression head to serve")


def _affine(values: np.ndarray | None, n: int, default: float) -> torch.Tensor:
    """(F,) float32 statistics (``default`` everywhere without a normaliser)."""
    if values is None:
        return torch.full((n,), default, dtype=torch.float32)
    return torch.from_numpy(np.asarray(values, dtype=np.float32).copy())


@contextlib.contextmanager
def exporting() -> Iterator[None]:
    """No grad; transformer layers without their fused inference kernel
    (``_transformer_encoder_layer_fwd``, which ONNX has no operator for), so both formats record
    the plain attention ops; the tracer's warnings (shape checks frozen, ``torch.jit``
    deprecated, LSTM batch sizes) silenced, because every file is checked on other batches."""
    was = torch.backends.mha.get_fastpath_enabled()
    torch.backends.mha.set_fastpath_enabled(False)
    try:
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore", torch.jit.TracerWarning)
            warnings.simplefilter("ignore", DeprecationWarning)
            warnings.filterwarnings("ignore", category=UserWarning, module=r"torch\.onnx")
            yield
    finally:
        torch.backends.mha.set_fastpath_enabled(was)


def write_onnx(graph: nn.Module, example: tuple[torch.Tensor, ...], dest: str | io.BytesIO,
               names: list[str], outputs: list[str]) -> None:
    """The legacy (TorchScript) ONNX exporter: it needs only ``onnx``, and handles LSTM/GRU."""
    axes = {name: {0: "batch"} for name in [*names, *outputs]}
    with exporting():
        torch.onnx.export(graph, example, dest,  # type: ignore[arg-type]  # a BytesIO works too
                          input_names=names, output_names=outputs,
                          dynamic_axes=axes, opset_version=ONNX_OPSET, dynamo=False)


Runner = Callable[[np.ndarray, np.ndarray | None], np.ndarray]  # (1, T, F), (1,) ids -> (1, C)


@dataclass
class Engine:
    """A compiled model for one window at a time: ``run(x, ids)`` gives (1, C) head values for a
    normalised (1, T, F) float32 window. ``passed_over``: why each faster engine was not taken;
    ``max_abs_diff``: the largest |engine - eager| on the windows it was checked on."""

    name: EngineName
    run: Runner
    passed_over: dict[str, str] = field(default_factory=dict)
    max_abs_diff: float = 0.0


def _example(cfg: ModelConfig, window: int, n_symbols: int, batch: int
             ) -> tuple[np.ndarray, np.ndarray | None]:
    """Seeded normalised windows (standard normal: the trained range) and cycling symbol ids."""
    g = np.random.default_rng(batch)
    x = g.standard_normal((batch, window, cfg.n_features)).astype(np.float32)
    ids = None if cfg.symbol_embedding is None else np.arange(batch, dtype=np.int64) % max(n_symbols, 1)
    return x, ids


def _ort_runner(graph: ServingGraph, cfg: ModelConfig, window: int, n_symbols: int) -> Runner:
    """ONNX Runtime on CPU over the graph exported in memory, on torch's current thread count."""
    if importlib.util.find_spec("onnx") is None or importlib.util.find_spec("onnxruntime") is None:
        raise RuntimeError("the onnx and onnxruntime packages are not installed "
                           "(pip install onnx onnxruntime, or pip install -e '.[dev]')")
    import onnxruntime as ort

    names = ["x"] if cfg.symbol_embedding is None else ["x", "symbol_id"]
    outputs = ["score"] if graph.head == "regression" else ["proba", "raw_proba"]
    x, ids = _example(cfg, window, n_symbols, _TRACE_BATCH)
    example = tuple(torch.from_numpy(a) for a in (x, ids) if a is not None)
    buf = io.BytesIO()
    write_onnx(graph, example, buf, names, outputs)
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = torch.get_num_threads()
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.log_severity_level = 3  # errors only: the LSTM's unused-output notes are not news
    sess = ort.InferenceSession(buf.getvalue(), opts, providers=["CPUExecutionProvider"])
    want = [outputs[-1]]  # raw_proba, or score

    def run(xw: np.ndarray, idw: np.ndarray | None) -> np.ndarray:
        feeds = {"x": xw} if idw is None else {"x": xw, "symbol_id": idw}
        return np.asarray(sess.run(want, feeds)[0])
    return run


def _torchscript_runner(graph: ServingGraph, cfg: ModelConfig, window: int, n_symbols: int) -> Runner:
    """``torch.jit.trace`` then ``torch.jit.freeze`` (weights folded in as constants)."""
    x, ids = _example(cfg, window, n_symbols, _TRACE_BATCH)
    example = tuple(torch.from_numpy(a) for a in (x, ids) if a is not None)
    with exporting():
        frozen = torch.jit.freeze(torch.jit.trace(graph, example, check_trace=False).eval())

    def run(xw: np.ndarray, idw: np.ndarray | None) -> np.ndarray:
        with torch.inference_mode(), warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            args = (torch.from_numpy(xw),) if idw is None else (torch.from_numpy(xw), torch.from_numpy(idw))
            return frozen(*args)[-1].numpy()
    return run


def _max_diff(run: Runner, eager: Callable[[np.ndarray, np.ndarray | None], np.ndarray],
              x: np.ndarray, ids: np.ndarray | None) -> float:
    """Largest |run - eager| over the (N, T, F) windows, each run alone (batch 1)."""
    want = eager(x, ids)  # (N, C)
    got = np.concatenate([run(x[i:i + 1], None if ids is None else ids[i:i + 1]) for i in range(len(x))])
    if got.shape != want.shape:
        raise RuntimeError(f"gives shape {got.shape}, the eager model {want.shape}")
    return float(np.max(np.abs(got.astype(np.float64) - want))) if len(x) else 0.0


def build_engine(model: nn.Module, cfg: ModelConfig, *, window: int, n_symbols: int,
                 eager: Callable[[np.ndarray, np.ndarray | None], np.ndarray],
                 windows: tuple[np.ndarray, np.ndarray | None], prefer: EngineName = "onnxruntime",
                 source: str = "") -> Engine:
    """The fastest engine from ``prefer`` on (in :data:`ENGINES` order) that builds and matches
    ``eager`` (the batched eager path, (N, T, F) -> (N, C)) to :data:`ENGINE_ATOL` on
    ``windows`` (the call's own, normalised) and on seeded ones; eager when none does. Every
    engine passed over is logged as a warning naming why."""
    if prefer not in ENGINES:
        raise ValueError(f"unknown serving engine {prefer!r}; valid engines: {', '.join(ENGINES)}")
    builders = {"onnxruntime": _ort_runner, "torchscript": _torchscript_runner}
    seeded = _example(cfg, window, n_symbols, _CHECK_SEEDED)
    x = np.concatenate([windows[0], seeded[0]])
    ids = None if windows[1] is None or seeded[1] is None else np.concatenate([windows[1], seeded[1]])
    passed: dict[str, str] = {}
    # attention pooling folded (simple_lstm: 0.84 -> 0.77 ms a window in ORT); the model stays as trained
    graph = ServingGraph(fold_attention(model), cfg, center=None, scale=None, temperature=None).eval()
    for name in ENGINES[ENGINES.index(prefer):]:
        if name == "eager":
            break
        try:
            run = builders[name](graph, cfg, window, n_symbols)
            diff = _max_diff(run, eager, x, ids)
        except Exception as e:  # an exporter or runtime that does not take this model
            passed[name] = f"{type(e).__name__}: {str(e).strip().splitlines()[0][:300] if str(e) else ''}"
        else:
            if diff <= ENGINE_ATOL:
                _warn(source, name, passed)
                return Engine(name, run, passed, diff)
            passed[name] = f"differs from the eager model by {diff:.3g} (more than {ENGINE_ATOL})"
    _warn(source, "eager", passed)
    return Engine("eager", lambda xw, idw: eager(xw, idw), passed, 0.0)


def _warn(source: str, taken: str, passed: dict[str, str]) -> None:
    """One warning line per engine passed over, naming the one taken."""
    for name, why in passed.items():
        log.warning("%s: single windows are served by %s, not %s: %s", source or "model", taken, name, why)
