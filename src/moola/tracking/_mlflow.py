"""MLflow tracking of every run: params, per-epoch metrics, final metrics, tags and artifacts.

Uses ``MlflowClient`` with an explicit run id (no fluent "active run" global), so a tracker in
one thread or process never logs into another's run. The store is MLflow's own default
(``sqlite:///./mlflow.db``) unless ``MLFLOW_TRACKING_URI`` says otherwise.
"""

from __future__ import annotations

import contextlib
import math
import os
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any

from moola._io import git_sha, read_json
from moola._storage import LOCKABLE_BACKENDS, storage_lock
from moola.training.callbacks import Callback

if TYPE_CHECKING:
    from mlflow.tracking import MlflowClient

    from moola.training.trainer import Trainer

__all__ = [
    "MlflowCallback",
    "Tracker",
    "TrackingOptions",
    "ensure_experiment",
    "flatten_metrics",
    "open_experiment",
    "tracking_enabled",
    "tracking_uri",
]

# Local resume state, not an artifact anyone reloads: the run directory's weights are.
_SKIP_ARTIFACTS = {"ckpt"}
_PARAM_MAX = 6000  # MLflow's limit on one param value


def tracking_enabled() -> bool:
    """Tracking is on unless ``MOOLA_TRACKING=off`` (the test suite sets it for speed)."""
    return os.environ.get("MOOLA_TRACKING", "on").lower() not in {"off", "0", "false", "no"}


def tracking_uri() -> str:
    """The store runs go to: ``MLFLOW_TRACKING_URI``, else MLflow's default in the cwd."""
    import mlflow

    return mlflow.get_tracking_uri()


def flatten_metrics(metrics: dict[str, Any], prefix: str = "") -> dict[str, float]:
    """Nested metrics.json -> dotted numeric metrics; lists, strings and non-finite values skipped."""
    out: dict[str, float] = {}
    for k, v in metrics.items():
        key = f"{prefix}.{k}" if prefix else str(k)
        if isinstance(v, dict):
            out.update(flatten_metrics(v, key))
        elif isinstance(v, bool) or (isinstance(v, int | float) and math.isfinite(float(v))):
            out[key] = float(v)
    return out


def _param_value(v: Any) -> str:
    s = "" if v is None else str(v)
    return s if len(s) <= _PARAM_MAX else s[: _PARAM_MAX - 3] + "..."


@dataclass
class TrackingOptions:
    """How a pipeline run is recorded; ``experiment`` None -> ``MLFLOW_EXPERIMENT_NAME`` or the
    command's name."""

    experiment: str | None = None
    run_name: str | None = None
    tags: dict[str, str] = field(default_factory=dict)
    enabled: bool | None = None  # None -> tracking_enabled()


class Tracker:
    """One MLflow run, opened on ``__enter__`` and closed FINISHED, FAILED or KILLED on exit.

    Call order: ``__enter__`` -> ``log_params``/``set_tags`` -> ``log_metrics`` (per epoch) ->
    ``log_final`` -> ``log_artifacts`` -> ``__exit__``. A disabled tracker accepts every call.
    """

    def __init__(self, command: str, options: TrackingOptions | None = None, *,
                 run_name: str | None = None) -> None:
        self.command = command
        self.options = options or TrackingOptions()
        self.run_name = self.options.run_name or run_name  # the options' name wins
        self.run_id: str | None = None
        self.experiment_id: str | None = None
        self._client: MlflowClient | None = None
        self._last_step = 0  # highest per-epoch step logged; final metrics go one step later

    @property
    def enabled(self) -> bool:
        return tracking_enabled() if self.options.enabled is None else self.options.enabled

    @property
    def experiment_name(self) -> str:
        return self.options.experiment or os.environ.get("MLFLOW_EXPERIMENT_NAME") or self.command

    def __enter__(self) -> Tracker:
        if not self.enabled:
            return self
        self._client, self.experiment_id = open_experiment(self.experiment_name)
        tags = {"moola.command": self.command, "moola.git_sha": git_sha(mark_dirty=True), **self.options.tags}
        run = self._client.create_run(self.experiment_id, run_name=self.run_name,
                                      tags={k: str(v) for k, v in tags.items()})
        self.run_id = run.info.run_id
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if self._client is None or self.run_id is None:
            return
        if exc_type is None:
            status = "FINISHED"
        else:
            pruned = exc_type.__name__ == "TrialPruned"
            status = "KILLED" if pruned or issubclass(exc_type, KeyboardInterrupt) else "FAILED"
            text = "".join(traceback.format_exception(exc_type, exc, tb))
            self.set_tags({"moola.error": f"{exc_type.__name__}: {exc}"[:5000]})
            self._client.log_text(self.run_id, text, "error/traceback.txt")
        self._client.set_terminated(self.run_id, status)

    def log_params(self, params: dict[str, Any]) -> None:
        if self._client is None or self.run_id is None:
            return
        from mlflow.entities import Param

        items = [Param(str(k)[:250], _param_value(v)) for k, v in params.items()]
        for i in range(0, len(items), 100):  # MLflow takes at most 100 params per batch
            self._client.log_batch(self.run_id, params=items[i:i + 100])

    def set_tags(self, tags: dict[str, Any]) -> None:
        if self._client is None or self.run_id is None:
            return
        from mlflow.entities import RunTag

        # tags the caller fixed in TrackingOptions win (a sweep knows the run's final directory)
        items = [RunTag(k, str(v)) for k, v in tags.items() if k not in self.options.tags]
        if items:
            self._client.log_batch(self.run_id, tags=items)

    def log_metrics(self, metrics: dict[str, Any], step: int | None = None) -> None:
        if self._client is None or self.run_id is None:
            return
        import time

        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        self._last_step = max(self._last_step, step or 0)
        items = [Metric(k, v, now, step or 0) for k, v in flatten_metrics(metrics).items()]
        for i in range(0, len(items), 1000):
            self._client.log_batch(self.run_id, metrics=items[i:i + 1000])

    def log_final(self, metrics_json: Path) -> None:
        """The run's metrics.json, flattened, as final metrics (what ``runs show`` prints).

        Logged one step after the last epoch (tag ``moola.final_step``): MLflow reports a key's
        highest step, so a key also logged per epoch (pretrain's ``val_loss``) reads as its final
        value, e.g. after the best epoch was restored, not as the last epoch's.
        """
        if metrics_json.is_file():
            step = self._last_step + 1 if self._last_step else 0
            self.set_tags({"moola.final_step": step})
            self.log_metrics(read_json(metrics_json), step=step)

    def log_artifacts(self, run_dir: Path, artifact_path: str = "run") -> None:
        """The run directory (weights, config, report, plots) minus resume state."""
        if self._client is None or self.run_id is None:
            return
        for p in sorted(Path(run_dir).iterdir()):
            if p.name in _SKIP_ARTIFACTS or p.name.startswith("."):
                continue
            if p.is_dir():
                self._client.log_artifacts(self.run_id, str(p), f"{artifact_path}/{p.name}")
            else:
                self._client.log_artifact(self.run_id, str(p), artifact_path)


def open_experiment(name: str) -> tuple[MlflowClient, str]:
    """A client on the tracking store and the experiment's id (created if missing), made under
    the store's lock: processes opening a fresh SQL store together race on MLflow's migration."""
    from mlflow.tracking import MlflowClient

    with _store_lock(tracking_uri()):
        client = MlflowClient()
        return client, ensure_experiment(client, name)


def _store_lock(uri: str) -> contextlib.AbstractContextManager[None]:
    """``storage_lock`` for a SQLite or PostgreSQL store; a file or server store needs none."""
    scheme = uri.split("://", 1)[0].split("+", 1)[0].lower() if "://" in uri else ""
    return storage_lock(uri) if scheme in LOCKABLE_BACKENDS else contextlib.nullcontext()


def ensure_experiment(client: MlflowClient, name: str) -> str:
    """The experiment's id, created if missing (tolerating a concurrent creator)."""
    exp = client.get_experiment_by_name(name)
    if exp is not None:
        return str(exp.experiment_id)
    try:
        return str(client.create_experiment(name, artifact_location=_artifact_location(name)))
    except Exception:  # another process created it between the two calls
        exp = client.get_experiment_by_name(name)
        if exp is None:
            raise
        return str(exp.experiment_id)


def _artifact_location(experiment: str) -> str | None:
    """For a local SQLite store, artifacts beside the database (``DBDIR/mlruns/EXPERIMENT``), so
    a store moved or served elsewhere (``mlflow ui``) keeps its artifacts; None = MLflow's default."""
    import re

    uri = tracking_uri()
    if not uri.startswith("sqlite:///"):
        return None
    from urllib.parse import unquote

    db = Path(unquote(uri[len("sqlite:///"):].split("?", 1)[0]))
    return (db.parent / "mlruns" / re.sub(r"[^A-Za-z0-9_.-]", "_", experiment)).resolve().as_uri()


class MlflowCallback(Callback):
    """Logs each epoch's numeric logs (loss, val_loss, val_accuracy, lr ...) at step = epoch."""

    def __init__(self, tracker: Tracker) -> None:
        self.tracker = tracker

    def on_epoch_end(self, trainer: Trainer, epoch: int, logs: dict[str, float]) -> None:
        # epoch is MLflow's step; the trainer's batch counter would shadow MLflow's own "step"
        self.tracker.log_metrics({k: v for k, v in logs.items() if k not in ("epoch", "step")},
                                 step=epoch + 1)
