"""MLflow tracking of every train, pretrain, oof, sweep and tuning run, and reading them back."""

from moola.tracking._headline import Headline, headline_metrics, log_run_summary, run_headline
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
from moola.tracking._runs import (
    ArtifactEntry,
    ComparedRun,
    RunRecord,
    compare_runs,
    epoch_history,
    get_run,
    list_artifacts,
    list_runs,
)

__all__ = [
    "ArtifactEntry",
    "ComparedRun",
    "Headline",
    "MlflowCallback",
    "RunRecord",
    "Tracker",
    "TrackingOptions",
    "compare_runs",
    "ensure_experiment",
    "epoch_history",
    "flatten_metrics",
    "get_run",
    "headline_metrics",
    "list_artifacts",
    "list_runs",
    "log_run_summary",
    "open_experiment",
    "run_headline",
    "tracking_enabled",
    "tracking_uri",
]
