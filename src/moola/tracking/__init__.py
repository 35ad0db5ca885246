"""MLflow tracking of every train, pretrain, oof, sweep and tuning run, and reading them back."""

from moola.tracking._mlflow import (
    MlflowCallback,
    Tracker,
    TrackingOptions,
    ensure_experiment,
    flatten_metrics,
    open_experiment,
    tracking_enabled,
    tracking_uri,
)
from moola.tracking._runs import ArtifactEntry, RunRecord, epoch_history, get_run, list_artifacts, list_runs

__all__ = [
    "ArtifactEntry",
    "MlflowCallback",
    "RunRecord",
    "Tracker",
    "TrackingOptions",
    "ensure_experiment",
    "epoch_history",
    "flatten_metrics",
    "get_run",
    "list_artifacts",
    "list_runs",
    "open_experiment",
    "tracking_enabled",
    "tracking_uri",
]
