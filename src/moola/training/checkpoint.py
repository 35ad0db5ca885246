"""Checkpoint directories that describe themselves and reload without unpickling.

    RUN/config.yaml          the resolved run config; its ``model`` section rebuilds the model
    RUN/weights.safetensors  final weights (best epoch when early stopping restores it)
    RUN/manifest.json        what the run is and saw (moola.training.manifest), written last
    RUN/metrics.json         final metrics (written by the pipeline)
    RUN/history.jsonl        one line of metrics per epoch
    RUN/ckpt/latest.json     -> RUN/ckpt/step-XXXXXXXX/ (model, optimizer, scheduler, RNG, loop state)

Optimizer/scheduler/RNG states go through ``torch.save`` and come back with
``torch.load(weights_only=True)``, which refuses anything but tensors and plain containers.
A file that cannot be read back (cut off by a full disk or a kill, or not moola's) is a
:class:`CheckpointError` naming it; ``latest.json`` may only point inside the run's own ``ckpt/``.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import yaml
from safetensors.torch import load_file, save_file
from torch import nn

from moola._io import atomic_write, atomic_write_json, read_json

__all__ = [
    "CONFIG",
    "LOOP_KEYS",
    "WEIGHTS",
    "CheckpointError",
    "from_checkpoint",
    "load_state",
    "load_tensors",
    "load_weights",
    "read_config",
    "read_history",
    "save_state",
    "save_weights",
]

WEIGHTS = "weights.safetensors"
CONFIG = "config.yaml"
# what the trainer restores from loop.json; a file without one of them cannot resume
LOOP_KEYS = ("epoch", "batch", "global_step", "steps_in_epoch", "run_sum", "run_n", "history",
             "callbacks", "warnings")


class CheckpointError(ValueError):
    """A checkpoint file or pointer cannot be used; the text names the file and why."""


def _corrupt(path: Path, e: BaseException) -> CheckpointError:
    detail = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    return CheckpointError(f"checkpoint file {path} is truncated or corrupt ({detail[:300]}); "
                           "delete it (or its step directory) and resume from an earlier one, or retrain")


def _read(path: Path, load: Callable[[Path], Any]) -> Any:
    """``load(path)``; a missing file stays FileNotFoundError, an unreadable one (safetensors'
    SafetensorError, a cut-off zip's RuntimeError, EOFError, UnpicklingError) a CheckpointError."""
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint file {path} does not exist")
    try:
        return load(path)
    except Exception as e:
        raise _corrupt(path, e) from e


def load_tensors(path: Path) -> dict[str, torch.Tensor]:
    """A safetensors file's tensors; a cut-off or foreign file is a CheckpointError naming it."""
    tensors: dict[str, torch.Tensor] = _read(path, lambda p: load_file(str(p)))
    return tensors


def _load_torch_state(path: Path) -> Any:
    return _read(path, lambda p: torch.load(p, weights_only=True))


def save_weights(model: nn.Module, path: Path) -> None:
    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    atomic_write(path, lambda tmp: save_file(state, str(tmp)))


def load_weights(model: nn.Module, path: Path, *, strict: bool = True) -> None:
    """Load safetensors by name; a missing, unexpected or mis-shaped tensor is an error."""
    state = load_tensors(path)
    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    shape = sorted(k for k in set(own) & set(state) if own[k].shape != state[k].shape)
    if strict and (missing or unexpected or shape):
        def more(names: list[str]) -> str:  # say so when a list is cut short
            return f" ... ({len(names)} in all)" if len(names) > 8 else ""

        detail = [f"missing {missing[:8]}{more(missing)}" if missing else "",
                  f"unexpected {unexpected[:8]}{more(unexpected)}" if unexpected else "",
                  "shape mismatch " + ", ".join(
                      f"{k}: file {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
                      for k in shape[:8]) + more(shape) if shape else ""]
        raise ValueError(f"{path}: weights do not fit the model: " + "; ".join(d for d in detail if d))
    model.load_state_dict(state, strict=strict)


# ------------------------------------------------------------------- resumable state


def save_state(run_dir: Path, step: int, state: dict[str, Any], model: nn.Module,
               best: dict[str, torch.Tensor] | None, keep: int = 2) -> Path:
    """Write a complete step directory, then point ``latest.json`` at it (atomic)."""
    ck = run_dir / "ckpt"
    final = ck / f"step-{step:08d}"
    tmp = ck / f".step-{step:08d}.tmp{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    save_weights(model, tmp / "model.safetensors")
    if best is not None:
        save_file({k: v.contiguous().cpu() for k, v in best.items()}, str(tmp / "best.safetensors"))
    torch.save(state.pop("torch_state"), tmp / "torch_state.pt")
    atomic_write_json(tmp / "loop.json", state, indent=None)
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)
    atomic_write_json(ck / "latest.json", {"step": step, "dir": final.name})
    steps = sorted(p for p in ck.glob("step-*") if p.is_dir())
    for old in steps[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def load_state(run_dir: Path) -> tuple[dict[str, Any], Path] | None:
    """The latest complete state, or None when the run never checkpointed."""
    ck = run_dir / "ckpt"
    latest = ck / "latest.json"
    if not latest.is_file():
        return None
    d = _step_dir(latest, read_json(latest, keys=("step", "dir"))["dir"])
    state = read_json(d / "loop.json", keys=LOOP_KEYS)
    state["torch_state"] = _load_torch_state(d / "torch_state.pt")
    return state, d


def _step_dir(latest: Path, target: Any) -> Path:
    """The step directory ``latest.json`` names, refused unless it resolves (symlinks followed)
    to a directory inside this run's ``ckpt/``: a resume never reads another run's state."""
    ck = latest.parent
    if not isinstance(target, str) or not target:
        raise CheckpointError(f"{latest}: 'dir' must be a step directory name such as 'step-00000100', "
                              f"not {target!r}")
    d = ck / target
    root = ck.resolve()
    real = d.resolve()
    if real == root or not real.is_relative_to(root):
        raise CheckpointError(f"{latest}: points at {target!r}, outside the run's checkpoint directory "
                              f"{ck} (resolves to {real}); a resume only reads its own ckpt/step-* "
                              "directories")
    if not d.is_dir():
        raise CheckpointError(f"{latest}: points at {target!r}, which is not a directory in {ck}")
    return d


# -------------------------------------------------------------------- from_checkpoint


def read_history(run_dir: str | Path) -> list[dict[str, Any]]:
    """The per-epoch records of ``RUN/history.jsonl`` ([] before the first epoch); a damaged line
    is a CheckpointError naming the file and line."""
    import json

    path = Path(run_dir) / "history.jsonl"
    if not path.is_file():
        return []
    out: list[dict[str, Any]] = []
    for n, line in enumerate(path.read_text().splitlines(), 1):
        if line.strip():
            try:
                out.append(json.loads(line))
            except ValueError as e:
                raise CheckpointError(f"{path}:{n}: not a JSON record ({e}); the run's history is "
                                      "damaged") from e
    return out


def read_config(run_dir: str | Path) -> dict[str, Any]:
    p = Path(run_dir) / CONFIG
    if not p.is_file():
        raise FileNotFoundError(f"{run_dir}: not a checkpoint directory (no {CONFIG})")
    data = yaml.safe_load(p.read_text())
    if not isinstance(data, dict):
        raise ValueError(f"{p}: expected a mapping")
    return data


def from_checkpoint(run_dir: str | Path, *, map_location: str | torch.device = "cpu") -> nn.Module:
    """Rebuild the model from ``config.yaml`` and load ``weights.safetensors`` strictly."""
    from moola.models import ModelConfig, build_model

    run_dir = Path(run_dir)
    data = read_config(run_dir)
    cfg = ModelConfig.from_dict(data.get("model", data), source=str(run_dir / CONFIG))
    model = build_model(cfg)
    load_weights(model, run_dir / WEIGHTS)
    return model.to(map_location).eval()
