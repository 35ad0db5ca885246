"""The per-run HTML report (``report.html`` + PNG plots) and ``metrics.json`` of a training run."""

from __future__ import annotations

import html
import json
import math
import os
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from moola.evaluation.baselines import BaselineResult
from moola.evaluation.baselines import baseline_table as make_baseline_table
from moola.evaluation.data_report import DataReport
from moola.evaluation.plots import (
    plot_baselines,
    plot_confusion_matrix,
    plot_learning_curves,
    plot_reliability,
)

__all__ = ["to_jsonable", "write_json_atomic", "write_run_report"]

_HEADLINE = ("accuracy", "balanced_accuracy", "macro_f1", "roc_auc", "log_loss", "brier", "ece")


def to_jsonable(obj: Any) -> Any:
    """numpy scalars / arrays -> Python; non-finite floats -> None (strict JSON)."""
    if isinstance(obj, Mapping):
        return {str(k): to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [to_jsonable(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return to_jsonable(obj.tolist())
    if isinstance(obj, np.bool_ | bool):
        return bool(obj)
    if isinstance(obj, np.integer):
        return int(obj)
    if isinstance(obj, float | np.floating):
        f = float(obj)
        return f if math.isfinite(f) else None
    if isinstance(obj, Path):
        return str(obj)
    return obj


def write_json_atomic(path: Path, payload: Any) -> Path:
    """Write JSON to a temp file in the same directory, fsync, then ``os.replace`` it into place."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    text = json.dumps(to_jsonable(payload), indent=2, allow_nan=False)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def write_run_report(
    run_dir: str | Path,
    *,
    history: Sequence[Mapping[str, Any]],
    metrics: Mapping[str, Any],
    classes: Sequence[object],
    y_true: object,
    proba: object,
    baseline_table: pl.DataFrame | Sequence[BaselineResult] | None,
    title: str = "moola run report",
    notes: Sequence[str] = (),
    extra: Mapping[str, Any] | None = None,
) -> Path:
    """Write ``report.html`` (+ PNGs) and ``metrics.json`` into ``run_dir``; return the HTML path.

    ``metrics`` is the model's :func:`classification_metrics` dict on the test split (``y_true`` /
    ``proba`` are the same predictions, used for the reliability diagram). ``baseline_table`` is a
    :func:`baseline_table` frame or the list of :class:`BaselineResult` (then the full baseline
    metrics are written to ``metrics.json`` too and the table is built with the model on top).
    ``notes`` (e.g. leakage-guard warnings) are listed near the top of the report; ``extra``
    (run facts such as calibrated metrics or timings) is merged into ``metrics.json``.

    ``metrics.json``: ``{"title", "classes", "model": metrics, "baselines": [table rows],
    "baseline_metrics": {name: metrics} (only when results were given), "notes"}``.
    """
    run_dir = Path(run_dir)
    results: list[BaselineResult] | None = None
    table: pl.DataFrame | None
    if baseline_table is None or isinstance(baseline_table, pl.DataFrame):
        table = baseline_table
    else:
        results = list(baseline_table)
        table = make_baseline_table(results, model_metrics=metrics)

    rep = DataReport(run_dir, title=title)
    notes = list(notes)
    if notes:
        rep.heading("Notes")
        items = "".join(f"<li>{html.escape(str(n))}</li>" for n in notes)
        rep.sections.append(f"<ul>{items}</ul>")

    rep.heading("Test metrics")
    headline = pl.DataFrame(
        [{k: _num(metrics.get(k)) for k in _HEADLINE}],
        schema=dict.fromkeys(_HEADLINE, pl.Float64),
        orient="row",
    )
    rep.table(headline, caption=f"model on the test split (n={metrics.get('n_samples', '?')})")
    if metrics.get("roc_auc_reason"):
        rep.paragraph(str(metrics["roc_auc_reason"]))
    collapse = metrics.get("class_collapse") or []
    if collapse:
        rep.paragraph(f"Class collapse: recall below 0.3 for {', '.join(map(str, collapse))}.")
    per_class = metrics.get("per_class")
    if isinstance(per_class, Mapping) and per_class:
        pc = pl.DataFrame(
            [{"class": str(k), **{m: _num(v.get(m)) for m in ("precision", "recall", "f1")},
              "support": _num(v.get("support"))} for k, v in per_class.items()],
            schema={"class": pl.String, "precision": pl.Float64, "recall": pl.Float64,
                    "f1": pl.Float64, "support": pl.Float64},
            orient="row",
        )
        rep.table(pc, caption="per-class metrics")

    if table is not None and table.height:
        rep.heading("Baselines (same split)")
        rep.table(table, caption="model and baselines on the test split")
        rep.figure(plot_baselines(table), "baselines", "accuracy and balanced accuracy per model; "
                   "dashed line: majority-class accuracy")

    rep.heading("Plots")
    rep.figure(plot_learning_curves(list(history)), "learning_curves",
               "per-epoch training / validation curves")
    cm = metrics.get("confusion_matrix")
    if cm is not None:
        rep.figure(plot_confusion_matrix(cm, classes), "confusion_matrix",
                   "confusion matrix on the test split: counts, colour = share of the true class")
    rep.figure(plot_reliability(y_true, proba), "reliability",
               "reliability diagram (15 equal-width bins over (0, 1], right-closed)")
    html_path = rep.write("report.html")

    payload: dict[str, Any] = {
        "title": title,
        "classes": [str(c) for c in classes],
        "model": dict(metrics),
        "baselines": table.to_dicts() if table is not None else [],
        "notes": notes,
    }
    payload.update(extra or {})
    if results is not None:
        payload["baseline_metrics"] = {
            r.name: {**r.metrics, "fit_seconds": r.fit_seconds, "params": r.params} for r in results
        }
    write_json_atomic(run_dir / "metrics.json", payload)
    return html_path


def _num(v: Any) -> float | None:
    if v is None:
        return None
    try:
        f = float(v)
    except (TypeError, ValueError):
        return None
    return f if math.isfinite(f) else None
