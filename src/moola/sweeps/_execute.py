"""One sweep run, executed the same way by both backends: a local worker process
(``python -m moola.sweeps._execute SPEC.json``) or a Ray task calling ``execute_spec``.

The run trains into ``work/NAME`` and is renamed to ``runs/NAME`` only when complete, so a
finished-looking directory is never half-written; a failure leaves ``state/NAME.error.json``
with the traceback.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import sys
import time
import traceback
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from moola._io import atomic_write_json, atomic_write_text
from moola.training.callbacks import Callback

__all__ = ["ProgressFile", "execute_spec"]


class ProgressFile(Callback):
    """Writes ``{epoch, epochs, metrics}`` after every epoch, for the driver's live table."""

    def __init__(self, path: Path, epochs: int) -> None:
        self.path = path
        self.epochs = epochs
        self.t0 = time.time()

    def on_epoch_end(self, trainer: Any, epoch: int, logs: dict[str, float]) -> None:
        atomic_write_json(self.path, {"epoch": epoch + 1, "epochs": self.epochs,
                                      "logs": {k: float(v) for k, v in logs.items()},
                                      "seconds": time.time() - self.t0})


def _die_with_parent() -> None:
    """Linux: the kernel kills this worker when the driver dies (even by SIGKILL), so a killed
    sweep leaves no orphan still writing into the sweep directory."""
    if not sys.platform.startswith("linux"):
        return
    import ctypes
    import signal

    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except OSError:
        return
    if os.getppid() == 1:  # the parent died before prctl took effect
        os._exit(1)


@contextlib.contextmanager
def _in_dir(path: str) -> Iterator[None]:
    before = os.getcwd()
    os.chdir(path)
    try:
        yield
    finally:
        os.chdir(before)


def _run(command: str, config: dict[str, Any], callbacks: list[Callback], tracking: Any,
         console: Any) -> None:
    from moola.sweeps._matrix import command_entry

    cls, run = command_entry(command)
    kwargs: dict[str, Any] = {"console": console, "show_progress": False, "tracking": tracking}
    if command != "oof":  # an oof run trains many cells; it reports no per-epoch progress
        kwargs["callbacks"] = callbacks
    run(cls.from_dict(config, source="sweep run"), **kwargs)


def execute_spec(spec: dict[str, Any]) -> dict[str, Any]:
    """Run one spec to completion; returns ``{status, seconds, error}`` and never raises."""
    import torch
    from rich.console import Console

    from moola.tracking import TrackingOptions

    t0 = time.perf_counter()
    sweep_dir = Path(spec["sweep_dir"])
    name = spec["run_name"]
    work = sweep_dir / "work" / name
    final = sweep_dir / "runs" / name
    state = sweep_dir / "state"
    error_file = state / f"{name}.error.json"
    error_file.unlink(missing_ok=True)
    (state / f"{name}.result.json").unlink(missing_ok=True)
    if work.exists():  # left by a killed attempt: start clean
        shutil.rmtree(work)
    os.environ.update(spec.get("env", {}))
    torch.set_num_threads(int(spec["threads"]))
    config = dict(spec["config"], name=name, out_dir=str(sweep_dir / "work"))
    log_path = sweep_dir / "logs" / f"{name}.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    epochs = int(config.get("train", {}).get("epochs", 0) or 0)
    progress = ProgressFile(state / f"{name}.progress.json", epochs)
    tracking = TrackingOptions(experiment=f"sweep/{spec['sweep']}", run_name=name,
                               tags={"moola.sweep": spec["sweep"], "moola.sweep_run": spec["label"],
                                     "moola.config_hash": spec["key"], "moola.run_dir": str(final)})
    try:
        with _in_dir(spec["cwd"]), open(log_path, "a") as log:
            console = Console(file=log, width=120, force_terminal=False)
            t_run = time.perf_counter()
            _run(spec["command"], config, [progress], tracking, console)
            pipeline_seconds = time.perf_counter() - t_run  # what `moola <command>` itself takes
            # the run as it will live: config.yaml names its final place, then one atomic rename
            cfg_path = work / "config.yaml"
            if cfg_path.is_file():
                import yaml

                saved = yaml.safe_load(cfg_path.read_text())
                saved["out_dir"] = str(sweep_dir / "runs")
                atomic_write_text(cfg_path, yaml.safe_dump(saved, sort_keys=False))
            if final.exists():
                shutil.rmtree(final)
            final.parent.mkdir(parents=True, exist_ok=True)
            work.replace(final)
        result = {"status": "done", "seconds": time.perf_counter() - t0, "error": None,
                  "pipeline_seconds": pipeline_seconds, "pid": os.getpid()}
        atomic_write_json(state / f"{name}.result.json", result)
        return result
    except BaseException as e:  # a failed run is a result, not a crash of the sweep
        if isinstance(e, KeyboardInterrupt):
            raise
        record = {"error": f"{type(e).__name__}: {e}", "traceback": traceback.format_exc(),
                  "seconds": time.perf_counter() - t0}
        atomic_write_json(error_file, record)
        return {"status": "failed", "seconds": record["seconds"], "error": record["error"]}


def main(argv: list[str] | None = None) -> int:
    _die_with_parent()
    args = argv if argv is not None else sys.argv[1:]
    spec = json.loads(Path(args[0]).read_text())
    result = execute_spec(spec)
    return 0 if result["status"] == "done" else 1


if __name__ == "__main__":
    raise SystemExit(main())
