"""``export_run``: a trained run directory as one self-contained file (ONNX or TorchScript) that
maps raw feature windows (B, T, F) to calibrated probabilities (or regression scores), plus an
``export.json`` describing its inputs and outputs, so a consumer needs nothing from moola.

The exported graph is the run's own arithmetic: the normaliser as a fixed per-feature affine
``(x - center) / scale``, the model, the head's probabilities as the Predictor computes them, and
the calibration ``softmax(log(clip(p, 1e-12, 1)) / T)``. Features are not in the graph: the
consumer computes the run's feature set (``export.json`` lists its names in order)."""

from __future__ import annotations

import hashlib
import importlib.util
import os
import shutil
import uuid
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

import moola
from moola._io import atomic_write_json
from moola.inference._predictor import Predictor
from moola.inference._serving import ONNX_OPSET, ServingGraph, exporting, head_kind, write_onnx
from moola.models import ModelConfig
from moola.training.manifest import LEGACY_META, MANIFEST, read_manifest

__all__ = ["EXPORT_FILES", "EXPORT_FORMATS", "EXPORT_JSON", "ExportError", "ServingGraph",
           "export_run", "require_onnx"]

EXPORT_FORMATS = ("onnx", "torchscript")
EXPORT_FILES = {"onnx": "model.onnx", "torchscript": "model.pt"}
EXPORT_JSON = "export.json"
# the exported file must give the eager module's numbers on these batch sizes (1 and a size it
# was not traced with: the batch axis really is dynamic) to this tolerance, or nothing is written
CHECK_BATCHES = (1, 7)
CHECK_ATOL = 1e-5
_TRACE_BATCH = 2


class ExportError(ValueError):
    """A run that cannot be exported, or an output directory that may not be written."""


def _head_kind(cfg: ModelConfig) -> str:
    """The head the Predictor serves (classifier, else direction, else regression)."""
    try:
        return head_kind(cfg)
    except ValueError as e:
        raise ExportError(str(e).replace("to serve", "to export")) from e


def _output_names(classes: Sequence[str]) -> list[str]:
    """Output names in order: ``proba``, ``raw_proba`` for classes, else ``score``."""
    return ["proba", "raw_proba"] if classes else ["score"]


def _input_names(p: Predictor) -> list[str]:
    """``x``, and ``symbol_id`` for a model with a symbol embedding."""
    return ["x", "symbol_id"] if p.model_config_.symbol_embedding is not None else ["x"]


def _example(p: Predictor, batch: int) -> tuple[torch.Tensor, ...]:
    """A seeded window batch of the run's shape: standard normal in normalised units, mapped back
    through the normaliser so every feature is in its trained range; symbol ids cycle."""
    n = p.model_config_.n_features
    g = torch.Generator().manual_seed(batch)
    x = torch.randn(batch, p.window_, n, generator=g)
    if p.normalizer_ is not None:
        x = x * torch.from_numpy(p.normalizer_.scale_.astype(np.float32)) + torch.from_numpy(
            p.normalizer_.center.astype(np.float32))
    if p.model_config_.symbol_embedding is None:
        return (x,)
    n_sym = max(len(p.manifest_.symbols), 1)
    return x, torch.arange(batch, dtype=torch.int64) % n_sym


def _write_torchscript(graph: ServingGraph, example: tuple[torch.Tensor, ...], path: Path) -> None:
    """``torch.jit.trace``: ``torch.jit.script`` cannot compile SequenceModel (dict batches,
    f-string errors), a trace records the same kernels for every preset."""
    with exporting():
        traced = torch.jit.trace(graph, example, check_trace=False)
        torch.jit.save(traced, str(path))


def require_onnx() -> None:
    """ONNX export needs the ``onnx`` package, which moola does not install by default."""
    if importlib.util.find_spec("onnx") is None:
        raise ExportError("--format onnx needs the onnx package, which is not installed: "
                          "pip install onnx onnxruntime (or pip install -e '.[dev]'); "
                          "--format torchscript needs nothing more")


def _runner(fmt: str, path: Path, names: list[str]) -> Callable[..., list[np.ndarray]] | None:
    """A function inputs -> outputs over the written file, read the way a consumer reads it
    (None for ONNX without onnxruntime: then the file is not checked)."""
    if fmt == "torchscript":
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)  # torch.jit is deprecated, still loads
            loaded = torch.jit.load(str(path))

        def run_ts(*xs: np.ndarray) -> list[np.ndarray]:
            with torch.no_grad():
                return [o.numpy() for o in loaded(*(torch.from_numpy(a) for a in xs))]
        return run_ts
    if importlib.util.find_spec("onnxruntime") is None:
        return None
    import onnxruntime as ort

    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])

    def run_onnx(*xs: np.ndarray) -> list[np.ndarray]:
        return [np.asarray(o) for o in sess.run(None, dict(zip(names, xs, strict=True)))]
    return run_onnx


def _check(graph: ServingGraph, p: Predictor, fmt: str, path: Path, names: list[str]) -> float | None:
    """Largest |exported - eager| over batches of :data:`CHECK_BATCHES`; an ExportError when
    over :data:`CHECK_ATOL` or when the file fails on one (a batch axis fixed by the trace)."""
    run = _runner(fmt, path, names)
    if run is None:
        return None
    worst = 0.0
    for b in CHECK_BATCHES:
        example = _example(p, b)
        with torch.no_grad():
            want = [o.numpy() for o in graph(*example)]
        try:
            got = run(*(t.numpy() for t in example))
        except Exception as e:
            raise ExportError(f"{p.run_dir_}: the exported {fmt} model fails on a batch of {b} "
                              f"windows ({str(e).strip().splitlines()[0][:300]})") from e
        for w, g in zip(want, got, strict=True):
            if g.shape != w.shape:
                raise ExportError(f"{p.run_dir_}: the exported {fmt} model gives shape {g.shape} "
                                  f"for a batch of {b}, the run gives {w.shape}")
            worst = max(worst, float(np.max(np.abs(g.astype(np.float64) - w))))
    if worst > CHECK_ATOL:
        raise ExportError(f"{p.run_dir_}: the exported {fmt} model differs from the run by {worst:.3g} "
                          f"(more than {CHECK_ATOL}) on example windows")
    return worst


def _normalizer_doc(p: Predictor) -> dict[str, Any] | None:
    """The statistics the graph applies, for a consumer to read (never to apply again)."""
    if p.normalizer_ is None:
        return None
    return {"class": type(p.normalizer_).__name__, "in_graph": True,
            "formula": "(x - center) / scale, per feature (last axis), float32",
            "center": [float(v) for v in p.normalizer_.center],
            "scale": [float(v) for v in p.normalizer_.scale_]}


def _describe(p: Predictor, fmt: str, names: list[str], outputs: list[str], manifest_sha: str,
              max_diff: float | None) -> dict[str, Any]:
    """``export.json``: everything a consumer needs to feed the file and read its outputs."""
    n = p.model_config_.n_features
    inputs: list[dict[str, Any]] = [{"name": "x", "dtype": "float32", "shape": ["batch", p.window_, n],
                                     "what": "raw feature values (not normalised), oldest bar first"}]
    if "symbol_id" in names:
        inputs.append({"name": "symbol_id", "dtype": "int64", "shape": ["batch"],
                       "what": "index of each window's symbol in 'symbols'"})
    width = len(p.classes_) or len(p.model_config_.regression.horizons
                                   if p.model_config_.regression else [1])
    outs = [{"name": o, "dtype": "float32", "shape": ["batch", width]} for o in outputs]
    m = p.manifest_
    return {
        "format": fmt, "file": EXPORT_FILES[fmt], "moola_version": moola.__version__,
        "torch_version": torch.__version__, "onnx_opset": ONNX_OPSET if fmt == "onnx" else None,
        "run_dir": str(p.run_dir_.resolve()), "manifest": MANIFEST, "manifest_sha256": manifest_sha,
        "manifest_source": MANIFEST if (p.run_dir_ / MANIFEST).is_file() else LEGACY_META,
        "model": p.model_config_.name, "task": m.task, "head": _head_kind(p.model_config_),
        "inputs": inputs, "outputs": outs, "feature_set": m.feature_set,
        "feature_schema_hash": m.feature_schema_hash, "feature_names": list(m.feature_names),
        "window": p.window_, "horizon": m.horizon, "timeframe": m.timeframe, "classes": p.classes_,
        "symbols": list(m.symbols), "normalizer": _normalizer_doc(p), "temperature": p.temperature_,
        "calibration": None if p.temperature_ is None else
        "proba = softmax(log(clip(raw_proba, 1e-12, 1)) / temperature), in the graph",
        "check": {"batches": list(CHECK_BATCHES), "max_abs_diff": max_diff, "atol": CHECK_ATOL},
    }


def _prepare_out(out: Path, run_dir: Path, overwrite: bool) -> None:
    """Refuse a non-empty ``out`` (or a file there) unless ``overwrite``, and always the run
    directory itself or a folder holding it (``--overwrite`` would delete the run)."""
    if out.resolve() == run_dir.resolve() or out.resolve() in run_dir.resolve().parents:
        raise ExportError(f"--out {out} is (or holds) the run directory {run_dir}; export into "
                          "another directory")
    if out.exists() and not out.is_dir():
        raise ExportError(f"--out {out} is a file, not a directory")
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise ExportError(f"--out {out} is not empty; pass --overwrite to replace it, or name "
                          "another directory")


def _publish(tmp: Path, out: Path) -> None:
    """Move the finished ``tmp`` to ``out``; an old ``out`` is moved aside first and removed
    last, so ``out`` always holds one complete export."""
    old = None
    if out.exists():
        old = out.with_name(f".{out.name}.old-{os.getpid()}-{uuid.uuid4().hex[:8]}")
        os.replace(out, old)
    os.replace(tmp, out)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def _load(run_dir: Path) -> Predictor:
    """The run as the Predictor serves it; refused unless it is a `moola train` run."""
    if not any((run_dir / name).is_file() for name in (MANIFEST, LEGACY_META)):
        what = "does not exist" if not run_dir.exists() else f"has no {MANIFEST} (nor an old {LEGACY_META})"
        raise ExportError(f"run directory {run_dir} {what}: export takes a `moola train` run directory")
    kind = read_manifest(run_dir).kind
    if kind != "train_run":
        raise ExportError(f"{run_dir}: its manifest is of kind {kind!r}; export takes a `moola train` "
                          "run (kind 'train_run')")
    p = Predictor.from_dir(run_dir)
    p.model_.eval()
    return p


def _copy_manifest(p: Predictor, tmp: Path) -> str:
    """``tmp/manifest.json``: the run's own file (an old run's ``meta.json`` migrated, as
    moola reads it); returns the sha256 of the file the run directory holds."""
    src = p.run_dir_ / MANIFEST
    if src.is_file():
        shutil.copyfile(src, tmp / MANIFEST)
    else:
        src = p.run_dir_ / LEGACY_META
        atomic_write_json(tmp / MANIFEST, p.manifest_.model_dump(mode="json"))
    return hashlib.sha256(src.read_bytes()).hexdigest()


def _write_bundle(p: Predictor, fmt: str, tmp: Path) -> None:
    """The model file, checked, then the manifest copy and ``export.json``, all into ``tmp``."""
    _head_kind(p.model_config_)  # a model without a head to serve: an ExportError naming it
    norm = p.normalizer_
    graph = ServingGraph(p.model_, p.model_config_, center=None if norm is None else norm.center,
                         scale=None if norm is None else norm.scale_, temperature=p.temperature_).eval()
    names, outputs = _input_names(p), _output_names(p.classes_)
    path = tmp / EXPORT_FILES[fmt]
    example = _example(p, _TRACE_BATCH)
    if fmt == "onnx":
        write_onnx(graph, example, str(path), names, outputs)
    else:
        _write_torchscript(graph, example, path)
    diff = _check(graph, p, fmt, path, names)
    sha = _copy_manifest(p, tmp)
    atomic_write_json(tmp / EXPORT_JSON, _describe(p, fmt, names, outputs, sha, diff))


def export_run(run_dir: str | Path, fmt: str, out: str | Path, *, overwrite: bool = False) -> Path:
    """Write ``out/model.onnx`` or ``out/model.pt``, a copy of the run's manifest and
    ``out/export.json``; the exported file is checked against the run before it is published."""
    if fmt not in EXPORT_FORMATS:
        raise ExportError(f"unknown export format {fmt!r}; valid formats: {', '.join(EXPORT_FORMATS)}")
    run_dir, out = Path(run_dir), Path(out)
    _prepare_out(out, run_dir, overwrite)
    if fmt == "onnx":
        require_onnx()
    p = _load(run_dir)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}")
    tmp.mkdir()  # not tempfile.mkdtemp: its 0700 would become the published directory's mode
    try:
        _write_bundle(p, fmt, tmp)
        _publish(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out
