"""Labeling recipe: rule-based pattern labels plus the size of the disjoint unlabeled pool."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from moola.data import Store, Timeframe, mark_gaps
from moola.datasets import LabelerConfig, build_pool, class_balance, make_labels_file
from moola.features import build_features


@dataclass(frozen=True)
class LabelResult:
    n_labels: int
    balance: dict[str, int]
    pool_size: int


def default_labeler_config() -> Path:
    from moola.datasets.tasks import configs_dir

    return configs_dir() / "labeler.yaml"


def run_label(store_dir: str | Path, out: str | Path, config: str | Path | None = None,
              overrides: list[str] | None = None) -> LabelResult:
    cfg = LabelerConfig.from_yaml(config or default_labeler_config(), overrides or [])
    store = Store(store_dir)
    labels = make_labels_file(out, store, cfg)
    bars = mark_gaps(store.read(Timeframe.D1), Timeframe.D1)
    pool = build_pool(build_features(bars, "ohlc4"), labels, min_pool=0)
    return LabelResult(labels.height, class_balance(labels), len(pool))
