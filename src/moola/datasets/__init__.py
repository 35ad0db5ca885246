"""Model inputs without look-ahead: windows, labeled windows, day panels, normalizers, splits."""

from moola.datasets.labeled import LabeledWindows, load_labels, save_labels
from moola.datasets.normalize import RobustScaler, Standardizer, load_scaler, scaler_from_dict
from moola.datasets.panel import DayPanel, DayPanelSource, PanelBatch, PanelDay
from moola.datasets.patterns import (
    LabelerConfig,
    build_pool,
    class_balance,
    label_windows,
    make_labels_file,
)
from moola.datasets.splits import (
    Fold,
    SampleSpans,
    Split,
    assert_no_overlap,
    chronological_split,
    overlap_groups,
    purged_kfold,
    stratified_group_kfold,
    walk_forward,
)
from moola.datasets.windows import WindowSet

__all__ = [
    "DayPanel",
    "DayPanelSource",
    "Fold",
    "LabeledWindows",
    "LabelerConfig",
    "PanelBatch",
    "PanelDay",
    "RobustScaler",
    "SampleSpans",
    "Split",
    "Standardizer",
    "WindowSet",
    "assert_no_overlap",
    "build_pool",
    "chronological_split",
    "class_balance",
    "label_windows",
    "load_labels",
    "load_scaler",
    "make_labels_file",
    "overlap_groups",
    "purged_kfold",
    "save_labels",
    "scaler_from_dict",
    "stratified_group_kfold",
    "walk_forward",
]
