"""Model inputs without look-ahead: windows, labeled windows, day panels, normalizers, splits,
and the ranking journey's prepared panel, cross-sectional labels/processors and stock graphs."""

from moola.datasets.graphs import DayGraphs, GraphConfig, build_day_graphs, load_sectors, returns_matrix
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
from moola.datasets.rank_panel import (
    DateSplit,
    RankBatchSource,
    RankPanel,
    date_split,
    walk_forward_splits,
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
from moola.datasets.xsection import (
    CSRankNorm,
    CSZScoreNorm,
    Fillna,
    ProcessorConfig,
    Processors,
    RobustZScoreNorm,
    forward_returns,
    label_horizon_bars,
    processor_config,
)

__all__ = [
    "CSRankNorm",
    "CSZScoreNorm",
    "DateSplit",
    "DayGraphs",
    "DayPanel",
    "DayPanelSource",
    "Fillna",
    "Fold",
    "GraphConfig",
    "LabeledWindows",
    "LabelerConfig",
    "PanelBatch",
    "PanelDay",
    "ProcessorConfig",
    "Processors",
    "RankBatchSource",
    "RankPanel",
    "RobustScaler",
    "RobustZScoreNorm",
    "SampleSpans",
    "Split",
    "Standardizer",
    "WindowSet",
    "assert_no_overlap",
    "build_day_graphs",
    "build_pool",
    "chronological_split",
    "class_balance",
    "date_split",
    "forward_returns",
    "label_horizon_bars",
    "label_windows",
    "load_labels",
    "load_scaler",
    "load_sectors",
    "make_labels_file",
    "overlap_groups",
    "processor_config",
    "purged_kfold",
    "returns_matrix",
    "save_labels",
    "scaler_from_dict",
    "stratified_group_kfold",
    "walk_forward",
    "walk_forward_splits",
]
