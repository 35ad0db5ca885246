"""Reading runs back through the MLflow client (``moola runs list|show``)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import polars as pl

__all__ = ["RunRecord", "get_run", "list_runs"]


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


def _client() -> Any:
    from mlflow.tracking import MlflowClient

    return MlflowClient()


def _experiments(client: Any, experiment: str | None) -> dict[str, str]:
    if experiment is not None:
        exp = client.get_experiment_by_name(experiment)
        if exp is None:
            names = sorted(e.name for e in client.search_experiments())
            raise ValueError(f"no MLflow experiment {experiment!r}; known: {', '.join(names) or 'none'}")
        return {exp.experiment_id: exp.name}
    return {e.experiment_id: e.name for e in client.search_experiments()}


def list_runs(experiment: str | None = None, max_results: int = 200) -> pl.DataFrame:
    """Newest first: run id, experiment, name, status, start time and the headline metrics."""
    client = _client()
    exps = _experiments(client, experiment)
    rows: list[dict[str, Any]] = []
    if exps:
        runs = client.search_runs(list(exps), max_results=max_results,
                                  order_by=["attributes.start_time DESC"])
        for r in runs:
            m = r.data.metrics
            headline = {k: m[k] for k in ("val_loss", "test.accuracy", "model.accuracy", "val_masked_mse",
                                          "model.loss", "value") if k in m}
            rows.append({
                "run_id": r.info.run_id, "experiment": exps.get(r.info.experiment_id, "?"),
                "name": r.info.run_name, "status": r.info.status,
                "command": r.data.tags.get("moola.command", ""),
                "start": pl.Series([r.info.start_time]).cast(pl.Datetime("ms")).item()
                if r.info.start_time else None,
                "metrics": ", ".join(f"{k}={v:.4g}" for k, v in headline.items()),
            })
    schema = {"run_id": pl.String, "experiment": pl.String, "name": pl.String, "status": pl.String,
              "command": pl.String, "start": pl.Datetime("ms"), "metrics": pl.String}
    return pl.DataFrame(rows, schema=schema)


def get_run(ref: str, experiment: str | None = None) -> RunRecord:
    """A run by id, or by name (the newest run of that name)."""
    client = _client()
    run = None
    try:
        run = client.get_run(ref)
    except Exception:  # not an id: look it up by name
        exps = _experiments(client, experiment)
        hits = client.search_runs(list(exps), filter_string=f"attributes.run_name = '{ref}'",
                                  order_by=["attributes.start_time DESC"], max_results=1) if exps else []
        if not hits:
            from moola.tracking._mlflow import tracking_uri

            raise ValueError(f"no MLflow run with id or name {ref!r} in {tracking_uri()}") from None
        run = hits[0]
    exp = client.get_experiment(run.info.experiment_id)
    return RunRecord(
        run_id=run.info.run_id, name=run.info.run_name, experiment=exp.name, status=run.info.status,
        start_time=run.info.start_time, end_time=run.info.end_time, params=dict(run.data.params),
        metrics=dict(run.data.metrics), tags={k: v for k, v in run.data.tags.items()
                                             if not k.startswith("mlflow.")},
        artifact_uri=run.info.artifact_uri,
    )
