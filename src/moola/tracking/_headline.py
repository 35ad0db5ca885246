"""The headline of a run: its test metric against the best baseline's, as MLflow metrics and tags.

Train runs hold ``model.<metric>`` and ``baseline_metrics.<name>.<metric>`` (metrics.json,
flattened as MLflow stores it); OOF runs hold ``arms.<arm>.<metric>`` for model and baseline arms
alike, the baselines among them by name.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from moola._io import read_json
from moola.evaluation import LOWER_IS_BETTER

if TYPE_CHECKING:
    from moola.tracking._mlflow import Tracker

__all__ = ["DEFAULT_METRIC", "METRIC_DIRECTIONS", "OOF_BASELINE_ARMS", "Headline", "headline_metrics",
           "log_run_summary", "run_headline"]

DEFAULT_METRIC = "balanced_accuracy"  # the verdict's metric: a constant prediction scores 1 / n_classes
# +1: higher is better, -1: lower is better; a metric "beats" only with a known direction
METRIC_DIRECTIONS: dict[str, int] = {
    m: -1 if m in LOWER_IS_BETTER else 1
    for m in ("balanced_accuracy", "accuracy", "macro_f1", "roc_auc", "log_loss", "brier", "ece")
}
# every baseline an OOF run can have (pipelines' BASELINE_ARMS; tracking sits below pipelines)
OOF_BASELINE_ARMS = ("majority", "logistic", "minirocket")


@dataclass(frozen=True)
class Headline:
    """One run's test ``metric``: the model's value, the best baseline's, and the signed difference."""

    metric: str
    model: str  # "model" for a train run, the arm's name for an OOF run
    value: float
    baseline: str | None
    baseline_value: float | None

    @property
    def difference(self) -> float | None:
        """model - best baseline (signed; for a lower-is-better metric, negative is good)."""
        return None if self.baseline_value is None else self.value - self.baseline_value

    @property
    def beats(self) -> bool | None:
        """Strictly better than the best baseline; None without a baseline."""
        d = self.difference
        return None if d is None else d * METRIC_DIRECTIONS.get(self.metric, 1) > 0


def _best(scores: Mapping[str, float], metric: str) -> tuple[str, float] | None:
    """The baseline with the best score (ties: the first by name)."""
    if not scores:
        return None
    sign = METRIC_DIRECTIONS.get(metric, 1)
    name = max(sorted(scores), key=lambda k: sign * scores[k])
    return name, scores[name]


def _train_headline(flat: Mapping[str, float], metric: str) -> Headline | None:
    if f"model.{metric}" not in flat:
        return None
    prefix, suffix = "baseline_metrics.", f".{metric}"
    scores = {k[len(prefix):-len(suffix)]: v for k, v in flat.items()
              if k.startswith(prefix) and k.endswith(suffix) and k.count(".") == 2}
    best = _best(scores, metric)
    return Headline(metric, "model", flat[f"model.{metric}"], *(best or (None, None)))


def _oof_headline(flat: Mapping[str, float], metric: str, baselines: Iterable[str]) -> Headline | None:
    """The best model arm against the best baseline arm."""
    suffix = f".{metric}"
    arms = {k[len("arms."):-len(suffix)]: v for k, v in flat.items()
            if k.startswith("arms.") and k.endswith(suffix) and k.count(".") == 2}
    names = set(baselines)
    best_model = _best({k: v for k, v in arms.items() if k not in names}, metric)
    if best_model is None:
        return None
    best = _best({k: v for k, v in arms.items() if k in names}, metric)
    return Headline(metric, best_model[0], best_model[1], *(best or (None, None)))


def run_headline(flat: Mapping[str, float], metric: str = DEFAULT_METRIC) -> Headline | None:
    """The headline of a run from its flattened final metrics; None when the run has no such
    test metric (pretraining, a failed run, a metric the run did not compute)."""
    return _train_headline(flat, metric) or _oof_headline(flat, metric, OOF_BASELINE_ARMS)


def headline_metrics(h: Headline) -> dict[str, float]:
    """Stable MLflow metric names for the UI's default columns: ``test_<m>``,
    ``best_baseline_<m>`` and ``vs_best_baseline_<m>`` (model - best baseline)."""
    out = {f"test_{h.metric}": h.value}
    if h.baseline_value is not None and h.difference is not None:
        out[f"best_baseline_{h.metric}"] = h.baseline_value
        out[f"vs_best_baseline_{h.metric}"] = h.difference
    return out


def _dataset_frame(manifest: Mapping[str, Any], metrics: Mapping[str, Any]) -> Any:
    """One row per split: windows, symbols, timeframe and the period each symbol covers."""
    import pandas as pd

    run = metrics.get("run") or {}
    periods = manifest.get("periods") or {}
    rows = []
    for split in ("train", "val", "test"):
        spans = periods.get(split) or {}
        starts = [p["start"] for p in spans.values() if p.get("start")]
        ends = [p["end"] for p in spans.values() if p.get("end")]
        rows.append({"split": split, "windows": run.get(f"n_{split}"), "symbols": len(spans),
                     "timeframe": manifest.get("timeframe"), "feature_set": manifest.get("feature_set"),
                     "start": min(starts) if starts else None, "end": max(ends) if ends else None})
    return pd.DataFrame(rows)


def _log_dataset(tracker: Tracker, run_dir: Path) -> None:
    """The run's data as an MLflow dataset input (``context=training``): the store, its
    symbols and timeframe, and the windows per split; the digest is the data fingerprint."""
    manifest_path = run_dir / "manifest.json"
    if tracker.run_id is None or not manifest_path.is_file():
        return
    from mlflow.data.pandas_dataset import from_pandas
    from mlflow.entities import DatasetInput, InputTag
    from mlflow.tracking import MlflowClient

    manifest = read_json(manifest_path)
    metrics = read_json(run_dir / "metrics.json") if (run_dir / "metrics.json").is_file() else {}
    store = str(manifest.get("store") or run_dir)
    symbols = [str(s) for s in manifest.get("symbols") or []]
    tags = [InputTag("mlflow.data.context", "training"),
            InputTag("moola.symbols", ",".join(symbols)[:5000])]
    with warnings.catch_warnings():  # MLflow's hint on integer columns is about model signatures
        warnings.simplefilter("ignore", UserWarning)
        ds = from_pandas(_dataset_frame(manifest, metrics), source=store,
                         name=f"{Path(store).name}:{manifest.get('timeframe')}",
                         digest=str(manifest.get("data_fingerprint") or "")[:36] or None)
        entity = ds._to_mlflow_entity()
    MlflowClient().log_inputs(tracker.run_id, datasets=[DatasetInput(entity, tags)])


def log_run_summary(tracker: Tracker, run_dir: Path, metric: str = DEFAULT_METRIC) -> None:
    """After ``log_final``: the headline metrics (``headline_metrics``), the best baseline's name
    (tag ``moola.best_baseline``) and the run's dataset as an MLflow input."""
    if tracker.run_id is None:
        return
    from moola.tracking._mlflow import flatten_metrics

    path = Path(run_dir) / "metrics.json"
    h = run_headline(flatten_metrics(read_json(path)), metric) if path.is_file() else None
    if h is not None:
        tracker.log_metrics(headline_metrics(h))
        tracker.set_tags({"moola.headline_metric": h.metric,
                          **({"moola.best_baseline": h.baseline} if h.baseline else {})})
    _log_dataset(tracker, Path(run_dir))
