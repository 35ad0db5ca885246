"""Evaluation: metrics, calibration, baselines on the same split, plots and reports."""

from moola.evaluation.baselines import (
    BASELINES,
    TABLE_METRICS,
    BaselineResult,
    baseline_table,
    logistic_baseline,
    majority_baseline,
    minirocket_baseline,
    run_baselines,
)
from moola.evaluation.calibration import (
    ReliabilityCurve,
    TemperatureScaler,
    expected_calibration_error,
    reliability_curve,
)
from moola.evaluation.metrics import (
    COLLAPSE_RECALL,
    ECE_BINS,
    binary_metrics,
    brier_score,
    classification_metrics,
    regression_metrics,
)
from moola.evaluation.plots import (
    plot_baselines,
    plot_confusion_matrix,
    plot_learning_curves,
    plot_reliability,
)
from moola.evaluation.run_report import write_run_report

__all__ = [
    "BASELINES",
    "COLLAPSE_RECALL",
    "ECE_BINS",
    "TABLE_METRICS",
    "BaselineResult",
    "ReliabilityCurve",
    "TemperatureScaler",
    "baseline_table",
    "binary_metrics",
    "brier_score",
    "classification_metrics",
    "expected_calibration_error",
    "logistic_baseline",
    "majority_baseline",
    "minirocket_baseline",
    "plot_baselines",
    "plot_confusion_matrix",
    "plot_learning_curves",
    "plot_reliability",
    "regression_metrics",
    "reliability_curve",
    "run_baselines",
    "write_run_report",
]
