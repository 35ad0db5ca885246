"""MLflow tracking of every train, pretrain, oof, sweep and tuning run, and reading them back."""

from moola.tracking._mlflow import (
    MlflowCallback,
    Tracker,
    TrackingOptions,
    flatten_metrics,
    tracking_enabled,
    tracking_uri,
)
from moola.tracking._runs import RunRecord, get_run, list_runs

__all__ = [
    "MlflowCallback",
    "RunRecord",
    "Tracker",
    "TrackingOptions",
    "flatten_metrics",
    "get_run",
    "list_runs",
    "tracking_enabled",
    "tracking_uri",
]
