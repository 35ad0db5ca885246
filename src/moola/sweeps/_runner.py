"""The sweep driver: expand the matrix, skip finished runs, run the rest in parallel on a local
process pool or as Ray tasks, isolate failures, and select the best run.

Sweep directory (``runs/sweeps/NAME``)::

    matrix.yaml        the matrix as run (base inlined)     runs/NAME-HASH/   finished runs only
    runs.yaml          label -> status, value, artifact     work/             runs in progress
    best.yaml          the selected run and its directory   state/            specs, progress, errors
    summary.csv        one row per run                      logs/             one log per run
    report.html        ablation report (+ PNGs)

A run counts as finished only when ``runs/NAME-HASH/metrics.json`` exists; a run's directory
moves there by one rename when it completes, so ``kill -9`` of the driver at any moment
leaves nothing half-written, and a rerun completes exactly what is missing.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml
from rich.console import Console
from rich.live import Live
from rich.table import Table

from moola._io import atomic_write_json, atomic_write_text
from moola.config import ConfigError, parse_override
from moola.refs import RUNS_FILE
from moola.sweeps._matrix import (
    MatrixConfig,
    RunSpec,
    Selection,
    base_dict,
    expand_matrix,
    load_matrix,
    unrecorded_selection,
)

__all__ = ["RunState", "SweepLockedError", "SweepResult", "run_sweep"]

Backend = Literal["local", "ray"]


class SweepLockedError(RuntimeError):
    """Another driver is running this sweep."""


@dataclass
class RunState:
    """A run as the driver sees it."""

    spec: RunSpec
    status: str = "pending"  # pending | running | done | skipped | failed
    value: float | None = None
    seconds: float | None = None  # driver wall time, launch to result
    run_seconds: float | None = None  # the pipeline's own time (what `moola train` alone takes)
    error: str | None = None
    epoch: int | None = None
    epochs: int | None = None
    live_metric: float | None = None
    started: float | None = None

    @property
    def finished(self) -> bool:
        return self.status in ("done", "skipped")


@dataclass
class SweepResult:
    sweep_dir: Path
    selection: Selection
    runs: list[RunState] = field(default_factory=list)
    best: RunState | None = None
    report: Path | None = None
    seconds: float = 0.0

    @property
    def failed(self) -> list[RunState]:
        return [r for r in self.runs if r.status == "failed"]


@contextlib.contextmanager
def _sweep_lock(sweep_dir: Path) -> Iterator[None]:
    sweep_dir.mkdir(parents=True, exist_ok=True)
    with open(sweep_dir / ".lock", "a+") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            fh.seek(0)
            holder = fh.read().strip() or "?"
            raise SweepLockedError(
                f"{sweep_dir}: sweep is being run by another driver (pid {holder})") from None
        fh.seek(0)
        fh.truncate()
        fh.write(str(os.getpid()))
        fh.flush()
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _read_metrics(run_dir: Path) -> dict[str, Any] | None:
    p = run_dir / "metrics.json"
    try:
        return json.loads(p.read_text()) if p.is_file() else None
    except json.JSONDecodeError:
        return None


class _Driver:
    """Holds the run states and writes the sweep's files as results arrive."""

    def __init__(self, matrix: MatrixConfig, specs: list[RunSpec], sel: Selection, sweep_dir: Path,
                 console: Console) -> None:
        self.matrix = matrix
        self.sel = sel
        self.sweep_dir = sweep_dir
        self.console = console
        self.states = [RunState(s) for s in specs]

    # ---------------------------------------------------------------- bookkeeping
    def final_dir(self, st: RunState) -> Path:
        return self.sweep_dir / "runs" / st.spec.run_name

    def mark_finished(self, st: RunState, status: str) -> None:
        metrics = _read_metrics(self.final_dir(st)) or {}
        st.status = status
        st.value = self.sel.value(metrics)
        result = self.sweep_dir / "state" / f"{st.spec.run_name}.result.json"  # by execute_spec
        with contextlib.suppress(OSError, json.JSONDecodeError, KeyError):
            st.run_seconds = float(json.loads(result.read_text())["pipeline_seconds"])
        st.error = None

    def mark_failed(self, st: RunState, fallback: str) -> None:
        st.status = "failed"
        err = self.sweep_dir / "state" / f"{st.spec.run_name}.error.json"
        try:
            st.error = json.loads(err.read_text())["error"]
        except (OSError, json.JSONDecodeError, KeyError):
            st.error = fallback

    def spec_dict(self, st: RunState) -> dict[str, Any]:
        env = {"MOOLA_TRACKING": os.environ.get("MOOLA_TRACKING", "on")}
        from moola.tracking import tracking_enabled, tracking_uri

        if tracking_enabled():
            env["MLFLOW_TRACKING_URI"] = _absolute_uri(tracking_uri())
        return {"sweep": self.matrix.name, "sweep_dir": str(self.sweep_dir.resolve()),
                "command": self.matrix.command, "label": st.spec.label, "key": st.spec.key,
                "run_name": st.spec.run_name, "config": st.spec.config, "threads": st.spec.resources.cpus,
                "cwd": os.getcwd(), "env": env}

    def poll_progress(self, st: RunState) -> None:
        p = self.sweep_dir / "state" / f"{st.spec.run_name}.progress.json"
        try:
            prog = json.loads(p.read_text())
        except (OSError, json.JSONDecodeError):
            return
        st.epoch, st.epochs = prog.get("epoch"), prog.get("epochs")
        logs = prog.get("logs", {})
        key = "val_loss" if "val_loss" in logs else next(iter(logs), None)
        st.live_metric = logs.get(key) if key else None

    def write_runs_yaml(self) -> None:
        out = {}
        for st in self.states:
            out[st.spec.label] = {
                "run": st.spec.run_name, "status": "done" if st.finished else st.status,
                "config_hash": st.spec.key, "artifact": f"runs/{st.spec.run_name}",
                self.sel.metric: st.value, "seconds": st.seconds, "error": st.error,
                "overrides": st.spec.overrides,
            }
        atomic_write_text(self.sweep_dir / RUNS_FILE, yaml.safe_dump(out, sort_keys=False))

    # ---------------------------------------------------------------- display
    def table(self) -> Table:
        t = Table(title=f"sweep {self.matrix.name} ({self.matrix.command}; select {self.sel})")
        for col in ("run", "status", "epoch", "val_loss (live)", self.sel.metric, "seconds"):
            t.add_column(col, justify="left" if col in ("run", "status") else "right")
        colours = {"done": "green", "skipped": "green", "failed": "red", "running": "yellow"}
        now = time.perf_counter()
        for st in self.states:
            secs = st.seconds if st.seconds is not None else (now - st.started if st.started else None)
            t.add_row(
                st.spec.label,
                f"[{colours.get(st.status, 'white')}]{st.status}[/]",
                f"{st.epoch}/{st.epochs}" if st.epoch else "",
                f"{st.live_metric:.4f}" if st.live_metric is not None else "",
                f"{st.value:.4f}" if st.value is not None else "",
                f"{secs:.1f}" if secs is not None else "",
            )
        return t

    def event(self, st: RunState) -> None:
        if st.status == "done":
            val = f"{self.sel.metric}={st.value:.4f}" if st.value is not None else "no selection metric"
            self.console.print(f"  [green]done[/] {st.spec.label} in {st.seconds:.1f} s: {val}")
        elif st.status == "failed":
            name = st.spec.run_name
            self.console.print(f"  [red]failed[/] {st.spec.label}: {st.error} "
                               f"(traceback: state/{name}.error.json, log: logs/{name}.log)")


def _absolute_uri(uri: str) -> str:
    """sqlite:///relative.db -> sqlite:////abs/relative.db, so workers in another cwd agree."""
    prefix = "sqlite:///"
    if uri.startswith(prefix) and not uri.startswith(prefix + "/"):
        return prefix + str(Path(uri[len(prefix):]).resolve())
    if "://" not in uri:  # a bare path is a file store
        return str(Path(uri).resolve())
    return uri


# -------------------------------------------------------------------- backends


def _run_local(drv: _Driver, pending: list[RunState], parallel: int, live: Live) -> None:
    """Each run in its own process (``python -m moola.sweeps._execute``): a crash or an OOM
    kill fails that run only; workers die with the driver (PR_SET_PDEATHSIG)."""
    state_dir = drv.sweep_dir / "state"
    running: dict[str, tuple[RunState, subprocess.Popen[bytes], Any]] = {}
    queue = list(pending)
    while queue or running:
        while queue and len(running) < parallel:
            st = queue.pop(0)
            spec_path = state_dir / f"{st.spec.run_name}.spec.json"
            atomic_write_json(spec_path, drv.spec_dict(st))
            log = open(drv.sweep_dir / "logs" / f"{st.spec.run_name}.log", "ab")  # noqa: SIM115
            threads = str(st.spec.resources.cpus)
            env = dict(os.environ, OMP_NUM_THREADS=threads, MKL_NUM_THREADS=threads)
            proc = subprocess.Popen([sys.executable, "-m", "moola.sweeps._execute", str(spec_path)],
                                    stdout=log, stderr=subprocess.STDOUT, env=env)
            st.status, st.started = "running", time.perf_counter()
            running[st.spec.run_name] = (st, proc, log)
        for name, (st, proc, log) in list(running.items()):
            drv.poll_progress(st)
            rc = proc.poll()
            if rc is None:
                continue
            log.close()
            del running[name]
            st.seconds = time.perf_counter() - (st.started or 0)
            if rc == 0 and _read_metrics(drv.final_dir(st)) is not None:
                drv.mark_finished(st, "done")
            else:
                drv.mark_failed(st, f"worker exited with code {rc}")
            drv.write_runs_yaml()
            drv.event(st)
        live.update(drv.table(), refresh=True)
        time.sleep(0.25)


def _ray_token_auth_env() -> None:
    """Ray >= 2.59: ``ray start --head`` turns token authentication on whenever a token exists
    (``ray.init()`` writes ``~/.ray/auth_token`` when it starts a local instance), but a driver
    joining with ``ray.init(address=...)`` sends the token only if ``RAY_AUTH_MODE=token``: it
    fails with InvalidAuthToken. Opt in before ray is imported (it reads the mode once)."""
    if "RAY_AUTH_MODE" in os.environ:
        return
    path = os.environ.get("RAY_AUTH_TOKEN_PATH") or str(Path.home() / ".ray" / "auth_token")
    if os.environ.get("RAY_AUTH_TOKEN") or Path(path).is_file():
        os.environ["RAY_AUTH_MODE"] = "token"


def _run_ray(drv: _Driver, pending: list[RunState], parallel: int, live: Live, address: str | None) -> None:
    """Each run a Ray task with the matrix's resources (CPUs, GPU fraction); the cluster may
    span machines (``--ray-address``) provided they share the sweep directory's filesystem."""
    _ray_token_auth_env()
    import ray

    from moola.sweeps._execute import execute_spec

    started_here = not ray.is_initialized()
    if started_here:
        kwargs: dict[str, Any] = {"log_to_driver": False, "include_dashboard": False}
        ray.init(address=address, **kwargs)
    remote = ray.remote(max_retries=0)(execute_spec)
    in_flight: dict[Any, RunState] = {}
    queue = list(pending)
    try:
        while queue or in_flight:
            while queue and len(in_flight) < parallel:
                st = queue.pop(0)
                res = st.spec.resources
                ref = remote.options(num_cpus=res.cpus, num_gpus=res.gpus).remote(drv.spec_dict(st))
                st.status, st.started = "running", time.perf_counter()
                in_flight[ref] = st
            ready, _ = ray.wait(list(in_flight), num_returns=1, timeout=0.25)
            for ref in ready:
                st = in_flight.pop(ref)
                st.seconds = time.perf_counter() - (st.started or 0)
                try:
                    result = ray.get(ref)
                except Exception as e:  # the worker process itself died
                    result = {"status": "failed", "error": f"ray task died: {type(e).__name__}: {e}"}
                if result["status"] == "done" and _read_metrics(drv.final_dir(st)) is not None:
                    drv.mark_finished(st, "done")
                else:
                    drv.mark_failed(st, str(result.get("error")))
                drv.write_runs_yaml()
                drv.event(st)
            for st in in_flight.values():
                drv.poll_progress(st)
            live.update(drv.table(), refresh=True)
    finally:
        if started_here:
            ray.shutdown()


# -------------------------------------------------------------------- entry point


def _prepare_dirs(drv: _Driver) -> None:
    """Make the layout; remove what a killed driver left in flight (never finished runs)."""
    for sub in ("runs", "work", "state", "logs"):
        (drv.sweep_dir / sub).mkdir(parents=True, exist_ok=True)
    for p in (drv.sweep_dir / "work").iterdir():
        if not p.name.startswith("_bundled"):  # the shared cache of bundled data stays
            shutil.rmtree(p, ignore_errors=True) if p.is_dir() else p.unlink(missing_ok=True)
    for p in (drv.sweep_dir / "state").glob("*.progress.json"):
        p.unlink(missing_ok=True)


def _prewarm(drv: _Driver) -> None:
    """One-time work that parallel workers would otherwise race on: the MLflow store's schema
    and the sweep's experiment."""
    from moola.tracking import open_experiment, tracking_enabled

    if tracking_enabled():
        open_experiment(f"sweep/{drv.matrix.name}")


def run_sweep(matrix_path: str | Path, *, parallel: int | None = None, backend: Backend = "local",
              ray_address: str | None = None, select: str | None = None, console: Console | None = None,
              retry_failed: bool = True, out_dir: str | Path | None = None,
              run_overrides: list[str] | None = None) -> SweepResult:
    """Run every unfinished run of the matrix; returns states, the best run and the report.

    ``run_overrides`` (``key=value``) join the matrix's shared overrides (e.g. ``train.device=cuda``);
    ``out_dir`` replaces the matrix's.
    """
    from moola.sweeps._report import write_sweep_outputs

    console = console or Console()
    t0 = time.perf_counter()
    matrix_path = Path(matrix_path)
    matrix = load_matrix(matrix_path)
    if run_overrides:
        parsed = [parse_override(item) for item in run_overrides]
        bad = [p for p in parsed if isinstance(p, str)]
        if bad:
            raise ConfigError(bad, "overrides")
        extra = dict(p for p in parsed if not isinstance(p, str))
        matrix = matrix.model_copy(update={"overrides": {**matrix.overrides, **extra}})
    if out_dir is not None:
        matrix = matrix.model_copy(update={"out_dir": str(out_dir)})
    sel = matrix.selection(select)  # a bad --select fails before any run is validated or started
    specs = expand_matrix(matrix, matrix_path)
    problem = unrecorded_selection(matrix.command, sel.metric, specs)
    if problem:
        raise ConfigError([problem], "--select" if select is not None else f"{matrix_path}: select")
    sweep_dir = matrix.sweep_dir()
    n_parallel = parallel or matrix.parallel
    with _sweep_lock(sweep_dir):
        drv = _Driver(matrix, specs, sel, sweep_dir, console)
        _prepare_dirs(drv)
        resolved = matrix.to_dict() | {"base": base_dict(matrix, matrix_path)}  # self-contained
        atomic_write_text(sweep_dir / "matrix.yaml", yaml.safe_dump(resolved, sort_keys=False))
        runs_file = sweep_dir / RUNS_FILE
        previous = (yaml.safe_load(runs_file.read_text()) or {}) if runs_file.is_file() else {}
        pending = []
        for st in drv.states:
            if _read_metrics(drv.final_dir(st)) is not None:
                drv.mark_finished(st, "skipped")
            elif not retry_failed and previous.get(st.spec.label, {}).get("status") == "failed":
                st.status, st.error = "failed", previous[st.spec.label].get("error")
            else:
                pending.append(st)
        n_skip = sum(st.status == "skipped" for st in drv.states)
        console.print(
            f"[bold]sweep {matrix.name}[/]: {len(specs)} runs of `moola {matrix.command}` "
            f"({n_skip} already done, {len(pending)} to run) with {n_parallel} parallel on {backend}; "
            f"{matrix.resources.cpus} CPU(s)"
            f"{f', {matrix.resources.gpus} GPU' if matrix.resources.gpus else ''} per run -> {sweep_dir}"
        )
        drv.write_runs_yaml()
        if pending:
            _prewarm(drv)
        with Live(drv.table(), console=console, auto_refresh=False, transient=False) as live:
            if pending and backend == "local":
                _run_local(drv, pending, n_parallel, live)
            elif pending and backend == "ray":
                _run_ray(drv, pending, n_parallel, live, ray_address)
            elif pending:
                raise ValueError(f"unknown backend {backend!r}: local or ray")
            live.update(drv.table(), refresh=True)
        result = SweepResult(sweep_dir, sel, drv.states, seconds=time.perf_counter() - t0)
        result.best, result.report = write_sweep_outputs(drv.sweep_dir, matrix, sel, drv.states, console)
        drv.write_runs_yaml()
    return result
