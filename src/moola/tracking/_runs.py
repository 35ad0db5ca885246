"""Reading runs back through the MLflow client (``moola runs list|show|compare``)."""

from __future__ import annotations

import difflib
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import unquote

import polars as pl

from moola.tracking._headline import DEFAULT_METRIC, METRIC_DIRECTIONS, run_headline

__all__ = ["ArtifactEntry", "ComparedRun", "RunRecord", "compare_runs", "epoch_history", "get_run",
           "list_artifacts", "list_runs"]

# what `runs list` shows per run: the first key found of each group (train, pretrain, oof, tuning)
HEADLINE = (("run.val_loss", "val_loss"), ("model.balanced_accuracy", "model.loss"),
            ("arms.scratch.balanced_accuracy",), ("arms.pretrained_finetuned.balanced_accuracy",),
            ("value",))


@dataclass
class RunRecord:
    """One run as MLflow holds it."""

    run_id: str
    name: str
    experiment: str
    status: str
    start_time: int | None
    end_time: int | None
    params: dict[str, str]
    metrics: dict[str, float]
    tags: dict[str, str]
    artifact_uri: str

    @property
    def command(self) -> str:
        return self.tags.get("moola.command", "")

    @property
    def final_step(self) -> int:
        """The step final metrics were logged at; earlier runs logged them at step 0."""
        return int(self.tags.get("moola.final_step", 0))


@dataclass
class ArtifactEntry:
    path: str
    is_dir: bool
    size: int | None


def _client() -> Any:
    from mlflow.tracking import MlflowClient

    return MlflowClient()


def _missing_sqlite_store() -> str | None:
    """The file of a ``sqlite:///`` store that does not exist yet (reading must not create it)."""
    from moola.tracking._mlflow import tracking_uri

    uri = tracking_uri()
    if not uri.startswith("sqlite:///"):
        return None
    path = Path(unquote(uri[len("sqlite:///"):].split("?", 1)[0]))
    return None if path.name == ":memory:" or path.exists() else str(path)


def _experiments(client: Any, experiment: str | None) -> dict[str, str]:
    if experiment is not None:
        exp = client.get_experiment_by_name(experiment)
        if exp is None:
            names = sorted(e.name for e in client.search_experiments())
            raise ValueError(f"no MLflow experiment {experiment!r}; known: {', '.join(names) or 'none'}")
        return {exp.experiment_id: exp.name}
    return {e.experiment_id: e.name for e in client.search_experiments()}


def _ms_to_datetime(ms: int | None) -> Any:
    return pl.Series([ms]).cast(pl.Datetime("ms")).item() if ms else None


def list_runs(experiment: str | None = None, max_results: int = 200) -> pl.DataFrame:
    """Newest first: run id, experiment, name, status, start time and the headline metrics."""
    schema: dict[str, pl.DataType] = {
        "run_id": pl.String(), "experiment": pl.String(), "name": pl.String(), "status": pl.String(),
        "command": pl.String(), "start": pl.Datetime("ms"), "metrics": pl.String()}
    missing = _missing_sqlite_store()
    if missing is not None:
        if experiment is not None:
            raise ValueError(f"no MLflow experiment {experiment!r}: the store {missing} does not exist")
        return pl.DataFrame([], schema=schema)
    client = _client()
    exps = _experiments(client, experiment)
    rows: list[dict[str, Any]] = []
    if exps:
        runs = client.search_runs(list(exps), max_results=max_results,
                                  order_by=["attributes.start_time DESC"])
        for r in runs:
            m = r.data.metrics
            headline = [next(k for k in group if k in m) for group in HEADLINE if any(k in m for k in group)]
            rows.append({
                "run_id": r.info.run_id, "experiment": exps.get(r.info.experiment_id, "?"),
                "name": r.info.run_name, "status": r.info.status,
                "command": r.data.tags.get("moola.command", ""),
                "start": _ms_to_datetime(r.info.start_time),
                "metrics": " ".join(f"{k}={m[k]:.4g}" for k in headline),
            })
    return pl.DataFrame(rows, schema=schema)


def get_run(ref: str, experiment: str | None = None) -> RunRecord:
    """A run by id, or by name (the newest run of that name); ValueError if there is none."""
    from moola.tracking._mlflow import tracking_uri

    not_found = f"no MLflow run with id or name {ref!r}" + (
        f" in experiment {experiment!r}" if experiment else "") + f" in {tracking_uri()}"
    if _missing_sqlite_store() is not None:
        raise ValueError(not_found + " (the store does not exist yet)")
    client = _client()
    run = None
    try:
        run = client.get_run(ref)
    except Exception:  # not an id: look it up by name
        run = None
    exps = _experiments(client, experiment)
    if run is not None and run.info.experiment_id not in exps:
        run = None  # an id, but of another experiment than the one asked for
    if run is None and exps:
        name = ref.replace("\\", "\\\\").replace("'", "\\'")
        hits = client.search_runs(list(exps), filter_string=f"attributes.run_name = '{name}'",
                                  order_by=["attributes.start_time DESC"], max_results=1)
        run = hits[0] if hits else None
    if run is None:
        raise ValueError(not_found)
    exp = client.get_experiment(run.info.experiment_id)
    return RunRecord(
        run_id=run.info.run_id, name=run.info.run_name, experiment=exp.name, status=run.info.status,
        start_time=run.info.start_time, end_time=run.info.end_time, params=dict(run.data.params),
        metrics=dict(run.data.metrics), tags={k: v for k, v in run.data.tags.items()
                                             if not k.startswith("mlflow.")},
        artifact_uri=run.info.artifact_uri,
    )


def epoch_history(run: RunRecord, key: str = "val_loss") -> list[tuple[int, float]]:
    """(epoch, value) of a per-epoch metric, without the final value logged after the last epoch."""
    hist = _client().get_metric_history(run.run_id, key)
    final = run.final_step
    pts = {m.step: m.value for m in sorted(hist, key=lambda m: (m.step, m.timestamp))
           if m.step >= 1 and m.step != final}
    return sorted(pts.items())


def list_artifacts(run_id: str, path: str | None = None) -> list[ArtifactEntry]:
    """The run's artifacts at ``path`` (top level by default), one level deep."""
    return [ArtifactEntry(a.path, bool(a.is_dir), a.file_size)
            for a in _client().list_artifacts(run_id, path)]


@dataclass(frozen=True)
class ComparedRun:
    """One row of ``moola runs compare``; ``to_dict`` keys are stable (json and csv columns)."""

    run_id: str
    run_name: str
    experiment: str
    kind: str  # the moola command that made the run (train, oof, pretrain ...)
    model: str  # the preset, else the model's name
    arm: str | None  # the OOF arm the value is of; None for a train run
    start_time: str | None  # ISO 8601, UTC
    status: str
    metric: str
    value: float | None
    best_baseline: str | None
    best_baseline_value: float | None
    difference: float | None  # value - best_baseline_value
    beats_baseline: bool | None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _model_name(params: dict[str, str]) -> str:
    for key in ("preset", "model.name", "encoder.name"):
        if params.get(key) not in (None, "", "None"):
            return params[key]
    return ""


def _iso(ms: int | None) -> str | None:
    return datetime.fromtimestamp(ms / 1000, UTC).isoformat(timespec="seconds") if ms else None


def _metric_names(metrics: dict[str, float]) -> set[str]:
    """The test metrics a run has a model value of (``model.X``, ``arms.ARM.X``)."""
    out = {k[len("model."):] for k in metrics if k.startswith("model.") and k.count(".") == 1}
    out |= {k.split(".")[2] for k in metrics if k.startswith("arms.") and k.count(".") == 2}
    return {m for m in out if not m.startswith("n_") and not m.endswith("seconds")}  # counts, timings


def _check_metric(metric: str, seen: set[str]) -> None:
    valid = sorted(set(METRIC_DIRECTIONS) | seen)
    if metric in valid:
        return
    near = difflib.get_close_matches(metric, valid, n=1)
    hint = f" (did you mean {near[0]}?)" if near else ""
    raise ValueError(f"unknown metric {metric!r} for runs compare{hint}; valid: {', '.join(valid)}")


def _compared(run: Any, experiment: str, metric: str) -> ComparedRun:
    params, metrics = dict(run.data.params), dict(run.data.metrics)
    h = run_headline(metrics, metric)
    return ComparedRun(
        run_id=run.info.run_id, run_name=run.info.run_name or "", experiment=experiment,
        kind=run.data.tags.get("moola.command", ""), model=_model_name(params),
        arm=None if h is None or h.model == "model" else h.model,
        start_time=_iso(run.info.start_time), status=run.info.status, metric=metric,
        value=None if h is None else h.value, best_baseline=None if h is None else h.baseline,
        best_baseline_value=None if h is None else h.baseline_value,
        difference=None if h is None else h.difference, beats_baseline=None if h is None else h.beats)


def compare_runs(experiment: str | None = None, metric: str = DEFAULT_METRIC,
                 max_results: int = 200) -> list[ComparedRun]:
    """Runs newest first with their test ``metric``, the best baseline's and the difference;
    ValueError for an unknown experiment or metric, listing the valid ones."""
    missing = _missing_sqlite_store()
    if missing is not None:
        if experiment is not None:
            raise ValueError(f"no MLflow experiment {experiment!r}: the store {missing} does not exist")
        _check_metric(metric, set())
        return []
    client = _client()
    exps = _experiments(client, experiment)
    runs = client.search_runs(list(exps), max_results=max_results,
                              order_by=["attributes.start_time DESC"]) if exps else []
    _check_metric(metric, set().union(*(_metric_names(dict(r.data.metrics)) for r in runs)))
    return [_compared(r, exps.get(r.info.experiment_id, "?"), metric) for r in runs]
