"""Task construction: where bars come from (a store or the bundled data), features, windows,
labels, calendars and the purged chronological split that turn them into model inputs.

Recipes (``moola.pipelines``) call these; nothing here trains a model."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import polars as pl
from pydantic import Field

from moola.config import Config
from moola.data import Store, Timeframe, ingest, mark_gaps
from moola.datasets.labeled import LabeledWindows, load_labels
from moola.datasets.normalize import RobustScaler, Standardizer
from moola.datasets.splits import SampleSpans, Split, chronological_split
from moola.datasets.windows import WindowSet
from moola.features import FeatureMatrix, build_features

__all__ = [
    "BUNDLED",
    "DailyWindowsData",
    "DataConfig",
    "LabeledSet",
    "LabeledWindowsData",
    "PreparedData",
    "SplitConfig",
    "bundled_dir",
    "calendar_positions",
    "configs_dir",
    "default_labels_path",
    "forward_log_return",
    "load_features",
    "load_labeled",
    "prepare_data",
    "resolve_store",
]

BUNDLED = {
    "sp500_daily": "sp500_subset.parquet",
    "btcusd_1m": "binanceus_BTCUSD_1m.csv",
}


class SplitConfig(Config):
    val: float = Field(0.15, gt=0, lt=1)
    test: float = Field(0.15, gt=0, lt=1)
    embargo_bars: int = Field(5, ge=0)


class DataConfig(Config):
    """Where bars come from and how they become labeled windows."""

    store: str | None = None  # a moola store; None -> the bundled dataset below
    bundled: Literal["sp500_daily", "btcusd_1m"] = "sp500_daily"
    timeframe: str | None = None
    symbols: list[str] | None = None
    feature_set: str = "ohlc4"
    window: int = Field(105, ge=2)
    stride: int = Field(1, ge=1)
    task: Literal["direction", "regression"] = "direction"
    horizon: int = Field(1, ge=1)  # bars ahead for the label
    split: SplitConfig = SplitConfig()
    normalize: Literal["none", "standard", "robust"] = "standard"


class DailyWindowsData(Config):
    """Daily bars cut into fixed windows around a labels file (shared by pretrain and oof)."""

    store: str | None = None  # a moola store; None -> the bundled S&P subset
    bundled: Literal["sp500_daily"] = "sp500_daily"
    timeframe: str = "1d"
    feature_set: str = "ohlc4"
    window: int = 105
    labels: str | None = None  # None -> the shipped data/labels/sp500_patterns.csv


class LabeledWindowsData(DailyWindowsData):
    """``labels``: the labeled windows to learn and compare on, with their class order."""

    classes: list[str] = Field(default_factory=lambda: ["consolidation", "retracement"])


@dataclass
class PreparedData:
    """Windows split into train/val/test arrays, plus what a checkpoint must remember."""

    x: dict[str, np.ndarray]  # split -> (N, T, F) float32
    y: dict[str, np.ndarray]
    classes: list[str]
    feature_names: tuple[str, ...]
    schema_hash: str
    split: Split
    meta: dict[str, pl.DataFrame]
    normalizer: Standardizer | RobustScaler | None


def bundled_dir() -> Path:
    """The repo's ``data/bundled`` (the package is installed editable from the repo)."""
    here = Path(__file__).resolve()
    for parent in here.parents:
        cand = parent / "data" / "bundled"
        if (cand / "sp500_subset.parquet").is_file():
            return cand
    raise FileNotFoundError(
        "bundled data not found (data/bundled/sp500_subset.parquet); pass --data DIR"
    )


def configs_dir() -> Path:
    """The repo's ``configs/`` beside ``data/bundled``."""
    return bundled_dir().parent.parent / "configs"


def default_labels_path() -> Path:
    """The shipped labeled windows (``data/labels/sp500_patterns.csv``)."""
    return bundled_dir().parent / "labels" / "sp500_patterns.csv"


def resolve_store(cfg: DataConfig, cache_root: Path) -> Path:
    """The configured store, or the bundled file ingested once into ``cache_root``."""
    if cfg.store is not None:
        return Path(cfg.store)
    import fcntl

    store = cache_root / f"_bundled_{cfg.bundled}"
    cache_root.mkdir(parents=True, exist_ok=True)
    # parallel runs (a sweep, several tuning workers) share this cache: wait for each other here
    # instead of meeting the store's fail-fast writer lock
    with open(cache_root / f"_bundled_{cfg.bundled}.lock", "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            ingest([bundled_dir() / BUNDLED[cfg.bundled]], Store(store))  # idempotent: no change twice
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)
    return store


def load_features(cfg: DataConfig, store_dir: Path) -> tuple[FeatureMatrix, pl.DataFrame, Timeframe]:
    store = Store(store_dir)
    tf = Timeframe(cfg.timeframe) if cfg.timeframe else store.resolve_timeframe(None)
    bars = mark_gaps(store.read(tf, cfg.symbols), tf)
    fm = build_features(bars, cfg.feature_set)
    if not (fm.keys["ts"].equals(bars["ts"]) and fm.keys["symbol"].equals(bars["symbol"])):
        raise RuntimeError("feature rows are not aligned with bars")
    return fm, bars, tf


def forward_log_return(bars: pl.DataFrame, horizon: int) -> np.ndarray:
    """(N,) log return from each bar's close to the close ``horizon`` bars later (same symbol)."""
    price = "adj_close" if "adj_close" in bars.columns else "close"
    r = bars.select(
        (pl.col(price).shift(-horizon).over("symbol") / pl.col(price)).log().alias("r")
    )["r"]
    return r.to_numpy().astype(np.float64)


def calendar_positions(ts: np.ndarray) -> np.ndarray:
    """Bar index on the union calendar, so embargo and purge count bars, not wall time."""
    cal = np.unique(ts)
    return np.searchsorted(cal, ts).astype(np.int64)


def prepare_data(cfg: DataConfig, store_dir: Path,
                 normalizer: Standardizer | RobustScaler | None = None) -> PreparedData:
    """Features -> windows -> purged chronological split -> normaliser fitted on train only.

    Pass ``normalizer`` (a fitted one, e.g. loaded from a run) to reuse it instead of fitting.
    """
    fm, bars, _ = load_features(cfg, store_dir)
    ws = WindowSet.from_matrix(fm, cfg.window, stride=cfg.stride, horizon=cfg.horizon)
    if len(ws) == 0:
        raise ValueError(f"no valid {cfg.window}-bar windows with horizon {cfg.horizon} in {store_dir}")
    fwd = forward_log_return(bars, cfg.horizon)[ws.end_rows]
    ts = fm.keys["ts"].dt.epoch("ns").to_numpy()
    pos = calendar_positions(ts)
    spans = SampleSpans(pos[ws.start_rows], pos[ws.end_rows] + cfg.horizon,
                        group=np.asarray(ws.symbol_codes()))
    split = chronological_split(spans, val=cfg.split.val, test=cfg.split.test,
                                embargo=cfg.split.embargo_bars)
    if cfg.task == "direction":
        y_all = (fwd > 0).astype(np.int64)
        classes = ["down", "up"]
    else:
        y_all = fwd.astype(np.float32)[:, None]
        classes = []
    parts = {"train": split.train, "val": split.val, "test": split.test}
    x = {k: ws.batch(idx) for k, idx in parts.items()}
    y = {k: y_all[idx] for k, idx in parts.items()}
    if normalizer is None and cfg.normalize != "none":
        normalizer = (Standardizer() if cfg.normalize == "standard" else RobustScaler()).fit(x["train"])
    if normalizer is not None:
        x = {k: np.ascontiguousarray(normalizer.transform(v), dtype=np.float32) for k, v in x.items()}
    meta = {k: ws.meta.select("symbol", "start_ts", "end_ts")[idx] for k, idx in parts.items()}
    return PreparedData(x, y, classes, fm.names, fm.schema_hash, split, meta, normalizer)


@dataclass
class LabeledSet:
    x: np.ndarray  # (N, T, F) float32, raw features
    y: np.ndarray  # (N,) int64
    pointers: np.ndarray | None  # (N, 2)
    spans: SampleSpans
    meta: pl.DataFrame
    classes: list[str]
    schema_hash: str
    calendar: np.ndarray | None = None  # (U,) int64 ns union bar calendar: splits count bars


def load_labeled(cfg: LabeledWindowsData, cache_root: Path) -> LabeledSet:
    store_dir = resolve_store(DataConfig(store=cfg.store, bundled=cfg.bundled), cache_root)
    tf = Timeframe(cfg.timeframe)
    bars = mark_gaps(Store(store_dir).read(tf), tf)
    fm = build_features(bars, cfg.feature_set)
    path = Path(cfg.labels) if cfg.labels else default_labels_path()
    labels = load_labels(path, classes=cfg.classes)
    lw = LabeledWindows.from_labels(fm, labels, cfg.window, classes=cfg.classes)
    if lw.rejected.height:
        raise ValueError(f"{path}: {lw.rejected.height} label rows rejected, first: "
                         f"{lw.rejected.row(0, named=True)}")
    start, end = lw.spans()
    spans = SampleSpans(start, end, group=lw.meta["symbol"].to_numpy(), label=lw.y)
    return LabeledSet(lw.X, lw.y, lw.pointers, spans, lw.meta, list(lw.classes), fm.schema_hash,
                      calendar=np.unique(fm.keys["ts"].dt.epoch("ns").to_numpy()))
