"""Task construction: where bars come from (a store or the bundled data), features, windows,
labels, calendars and the purged chronological split that turn them into model inputs.

Recipes (``moola.pipelines``) call these; nothing here trains a model."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Literal

import numpy as np
import polars as pl
from pydantic import Field, model_validator

from moola.config import MAX_BARS, Config
from moola.data import Alignment, Store, Timeframe, align_symbols, ingest, mark_gaps
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
    "direction_labels",
    "forward_log_return",
    "load_features",
    "load_labeled",
    "prepare_data",
    "resolve_store",
    "symbol_ids",
]

BUNDLED: dict[str, tuple[str, ...]] = {  # name -> the data/bundled files ingested for it
    "sp500_daily": ("sp500_subset.parquet",),
    "btcusd_1m": ("binanceus_BTCUSD_1m.csv",),
    # two BTC markets of one exchange on one clock (BTCUSD, BTCUSDT): pooled and runtime demos
    "btc2_1m": ("binanceus_BTCUSD_1m.csv", "binanceus_BTCUSDT_1m.csv"),
}


class WalkForwardConfig(Config):
    """One fold of an expanding (or rolling) walk-forward: the last ``n_folds x test`` of the
    distinct window end times tile ``n_folds`` test blocks; fold ``k`` tests on block ``k``,
    validates on the ``val`` fraction just before it and trains on what precedes that (rolling:
    only the ``train`` fraction of end times before it). Windows after block ``k`` are unused.
    A sweep over ``data.split.walk_forward.fold: [0, 1, ...]`` runs the whole walk-forward."""

    n_folds: int = Field(ge=2, description="test blocks at the end of the data")
    fold: int = Field(0, ge=0, description="which block this run tests on (0 = the earliest)")
    mode: Literal["expanding", "rolling"] = Field("expanding", description=(
        "expanding: train on everything before the fold's val block; rolling: only the train "
        "fraction just before it"))
    train: float | None = Field(None, gt=0, lt=1, description=(
        "rolling mode: fraction of distinct end times in each fold's training segment"))

    @model_validator(mode="after")
    def _fold_in_range(self) -> WalkForwardConfig:
        if self.fold >= self.n_folds:
            raise ValueError(f"walk_forward.fold is {self.fold}; choose 0..{self.n_folds - 1} "
                             f"(n_folds: {self.n_folds})")
        if (self.mode == "rolling") != (self.train is not None):
            raise ValueError("walk_forward.train (a fraction) is set exactly in rolling mode; got "
                             f"mode: {self.mode}, train: {self.train}")
        return self


class SplitConfig(Config):
    """Chronological train, val, test (fractions or dates), purged at each cut and embargoed.

    Either fractions (``val``/``test`` of the distinct window end times; 0.15 each when neither
    fractions nor dates are set) or dates (``val_start``/``test_start``, ISO timestamps, UTC
    unless they carry an offset): a window belongs to the segment its last bar falls in.
    ``embargo_bars`` (default: max(5, data.horizon)) drops a later segment's windows starting
    within that many bars of an earlier one's label end; purge (always on) already drops
    windows whose label reaches into the next segment, so the horizon is covered either way.
    """

    val: float | None = Field(None, gt=0, lt=1, description=(
        "fraction of distinct window end times; unset: 0.15 (unless split by dates)"))
    test: float | None = Field(None, gt=0, lt=1, description=(
        "fraction of distinct window end times; unset: 0.15 (unless split by dates)"))
    val_start: datetime | None = Field(None, description=(
        "ISO timestamp (UTC unless offset): windows whose last bar is at or after it are val; "
        "set with test_start, instead of val/test"))
    test_start: datetime | None = Field(None, description=(
        "ISO timestamp: windows whose last bar is at or after it are test"))
    embargo_bars: int | None = Field(None, ge=0, description=(
        "bars between a segment's label ends and the next segment's window starts; unset: "
        "max(5, data.horizon). Purge (always on) already drops labels reaching past a cut"))
    walk_forward: WalkForwardConfig | None = Field(None, description=(
        "one fold of a walk-forward (val/test fractions size each fold's blocks); not with dates"))

    @model_validator(mode="after")
    def _fractions_or_dates(self) -> SplitConfig:
        dates = {"val_start": self.val_start, "test_start": self.test_start}
        fractions = {"val": self.val, "test": self.test}
        set_dates = [k for k, v in dates.items() if v is not None]
        set_fracs = [k for k, v in fractions.items() if v is not None]
        if set_dates and set_fracs:
            raise ValueError(
                f"split by fractions or by dates, not both: got {', '.join(set_fracs)} and "
                f"{', '.join(set_dates)}; remove data.split.val/test or data.split.val_start/test_start "
                "(an override can unset one: data.split.val=null)")
        if set_dates and self.walk_forward is not None:
            raise ValueError("walk_forward folds are cut by fractions (val/test), not by dates; "
                             f"remove {', '.join(set_dates)} or walk_forward")
        if len(set_dates) == 1:
            missing = "test_start" if set_dates == ["val_start"] else "val_start"
            raise ValueError(f"a date split needs both val_start and test_start; {missing} is missing")
        if (self.val_start is not None and self.test_start is not None
                and not _utc(self.val_start) < _utc(self.test_start)):
            raise ValueError(f"val_start ({self.val_start}) must be before test_start "
                             f"({self.test_start})")
        return self

    @property
    def dates(self) -> tuple[datetime, datetime] | None:
        """(val_start, test_start) in UTC, or None for a split by fractions."""
        if self.val_start is None or self.test_start is None:
            return None
        return _utc(self.val_start), _utc(self.test_start)

    @property
    def fractions(self) -> tuple[float, float]:
        """(val, test): the configured fractions, 0.15 for each one not set."""
        return (0.15 if self.val is None else self.val), (0.15 if self.test is None else self.test)


def _utc(t: datetime) -> datetime:
    return t.replace(tzinfo=UTC) if t.tzinfo is None else t.astimezone(UTC)


class DataConfig(Config):
    """Where bars come from and how they become labeled windows.

    The direction label is the sign of the log return from the close of a window's last bar to
    the close ``horizon`` bars later. ``dead_zone_bps`` (basis points of that log return, 1 bp =
    1e-4) marks moves too small to call: ``direction: binary`` drops those windows (down = r <= 0
    otherwise, as with no dead zone), ``direction: ternary`` labels them "flat" (classes down,
    flat, up) and needs a dead zone > 0.
    """

    store: str | None = Field(None, description=(
        "directory of a moola store (moola data ingest) to read bars from; when set it is used "
        "and data.bundled is ignored; None: the data.bundled dataset"))
    bundled: Literal["sp500_daily", "btcusd_1m", "btc2_1m"] = Field("sp500_daily", description=(
        "shipped data (data/bundled) read when data.store is None: ingested on first use into "
        "OUT_DIR/_bundled_NAME and reused; sp500_daily: S&P 500 subset, daily; btcusd_1m: "
        "BTCUSD 1-minute; btc2_1m: BTCUSD and BTCUSDT 1-minute on one exchange"))
    timeframe: str | None = Field(None, description=(
        "bar length to read: 1m, 5m, 15m, 1h, 4h or 1d; None: the store's only timeframe (an "
        "error if it holds several)"))
    symbols: list[str] | None = Field(None, description=(
        "symbols to read; None: every symbol the store holds at the timeframe; a listed symbol "
        "the store lacks is an error"))
    align: bool = Field(False, description=(
        "keep only the timestamps every symbol has (moola.data.align_symbols) before features "
        "and windows, so pooled windows share one clock; late starts, missing and dropped bars "
        "are reported per symbol (RUN/alignment.json), nothing is shifted or filled"))
    feature_set: str = Field("ohlc4", description=(
        "registered feature set (moola features list), computed by train itself from the "
        "store's bars, one code path with serving; moola features build output is not read"))
    window: int = Field(105, ge=2, le=MAX_BARS, description=(
        "bars per input window (the label looks ahead from its last bar)"))
    stride: int = Field(1, ge=1, le=MAX_BARS, description=(
        "bars between the last bars of consecutive windows of a symbol (1: every bar ends one)"))
    task: Literal["direction", "regression"] = Field("direction", description=(
        "direction: classify the sign of the horizon-bar log return (see data.direction); "
        "regression: predict that log return itself"))
    horizon: int = Field(1, ge=1, le=MAX_BARS, description=(
        "bars ahead of the window's last bar whose close the label's log return is taken to"))
    direction: Literal["binary", "ternary"] = Field("binary", description=(
        "binary: down/up, dropping windows with abs(r) < dead_zone_bps; ternary: down/flat/up "
        "(flat: abs(r) < dead_zone_bps; needs a dead zone > 0; presets get a 3-class head)"))
    dead_zone_bps: float = Field(0.0, ge=0, description=(
        "dead zone on the horizon-bar log return r, in basis points (1e-4)"))
    zero_return: Literal["down", "up", "drop"] = Field("down", description=(
        "binary direction, no dead zone: the class of a window whose horizon-bar return is exactly "
        "0 (an unchanged close, common on 1-minute bars): down (up means strictly up), up, or drop "
        "the window; with a dead zone or ternary a zero return is inside the dead zone"))
    split: SplitConfig = SplitConfig()
    normalize: Literal["none", "standard", "robust"] = Field("standard", description=(
        "per-feature scaling fitted on the training windows only: standard (mean, std), robust "
        "(median, inter-quantile range) or none; a pretrained encoder's normalizer.json, if any, is "
        "used instead"))

    @model_validator(mode="after")
    def _label_options(self) -> DataConfig:
        if self.task != "direction" and (self.direction != "binary" or self.dead_zone_bps):
            raise ValueError("data.direction and data.dead_zone_bps apply to task: direction only "
                             f"(task is {self.task!r})")
        if self.zero_return != "down" and (self.task != "direction" or self.direction != "binary"
                                           or self.dead_zone_bps):
            raise ValueError("data.zero_return applies to binary direction labels without a dead "
                             "zone (a zero return is inside any dead zone, and flat under ternary)")
        if self.direction == "ternary" and not self.dead_zone_bps:
            raise ValueError("data.direction: ternary needs data.dead_zone_bps > 0 (flat = |r| "
                             "below it); with no dead zone use direction: binary")
        return self

    @property
    def classes(self) -> list[str]:
        """The label's class names in index order ([] for regression)."""
        if self.task != "direction":
            return []
        return ["down", "flat", "up"] if self.direction == "ternary" else ["down", "up"]

    @property
    def embargo_bars(self) -> int:
        """The embargo in effect: ``split.embargo_bars``, or max(5, horizon) when unset."""
        e = self.split.embargo_bars
        return max(5, self.horizon) if e is None else e


def direction_labels(fwd: np.ndarray, cfg: DataConfig) -> tuple[np.ndarray, np.ndarray]:
    """(keep mask, int64 labels of the kept rows) for forward log returns ``fwd`` (N,).

    binary: 1 ('up') when r > 0, else 0, dropping |r| below the dead zone; a zero return is
    'down' unless ``zero_return`` says 'up' or 'drop'; ternary: 0 down, 1 flat (|r| below the dead
    zone), 2 up.
    """
    dz = cfg.dead_zone_bps * 1e-4
    if cfg.direction == "ternary":
        y = np.where(np.abs(fwd) < dz, 1, np.where(fwd > 0, 2, 0)).astype(np.int64)
        return np.ones(fwd.size, dtype=bool), y
    keep = ~(np.abs(fwd) < dz)
    if cfg.zero_return == "drop":
        keep &= fwd != 0
    up = fwd[keep] >= 0 if cfg.zero_return == "up" else fwd[keep] > 0
    return keep, up.astype(np.int64)


class DailyWindowsData(Config):
    """Daily bars cut into fixed windows around a labels file (shared by pretrain and oof)."""

    store: str | None = None  # a moola store; None -> the bundled S&P subset
    bundled: Literal["sp500_daily"] = "sp500_daily"
    timeframe: str = "1d"
    feature_set: str = "ohlc4"
    window: int = Field(105, ge=1, le=MAX_BARS)
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
    # split -> (N,) raw log returns of each window, for baselines and the economic check:
    # the label horizon's forward return after the last bar, and the last bar's own return
    # (log(p_e / p_(e-1)); NaN where the symbol has no earlier bar)
    forward_return: dict[str, np.ndarray] = field(default_factory=dict)
    last_return: dict[str, np.ndarray] = field(default_factory=dict)
    alignment: Alignment | None = None  # data.align: what putting the symbols on one clock cost


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
            # idempotent: no change twice
            ingest([bundled_dir() / f for f in BUNDLED[cfg.bundled]], Store(store))
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)
    return store


def load_features(cfg: DataConfig, store_dir: Path) -> tuple[FeatureMatrix, pl.DataFrame, Timeframe]:
    fm, bars, tf, _ = _load_features(cfg, store_dir)
    return fm, bars, tf


def _load_features(cfg: DataConfig, store_dir: Path
                   ) -> tuple[FeatureMatrix, pl.DataFrame, Timeframe, Alignment | None]:
    """load_features plus, with ``data.align``, the alignment account. Aligned bars are a
    subset of each symbol's own bars; a timestamp another symbol lacks becomes a gap, which
    no window or label crosses."""
    store = Store(store_dir)
    tf = Timeframe(cfg.timeframe) if cfg.timeframe else store.resolve_timeframe(None)
    raw = store.read(tf, cfg.symbols)
    alignment = align_symbols(raw, tf) if cfg.align else None
    bars = mark_gaps(raw if alignment is None else alignment.bars, tf)
    fm = build_features(bars, cfg.feature_set)
    if not (fm.keys["ts"].equals(bars["ts"]) and fm.keys["symbol"].equals(bars["symbol"])):
        raise RuntimeError("feature rows are not aligned with bars")
    return fm, bars, tf, alignment


def forward_log_return(bars: pl.DataFrame, horizon: int) -> np.ndarray:
    """(N,) log return from each bar's close to the close ``horizon`` bars later (same symbol;
    a negative ``horizon`` looks back). NaN where that bar does not exist."""
    price = "adj_close" if "adj_close" in bars.columns else "close"
    r = bars.select(
        (pl.col(price).shift(-horizon).over("symbol") / pl.col(price)).log().alias("r")
    )["r"]
    return r.to_numpy().astype(np.float64)


def symbol_ids(symbols: pl.Series, known: list[str], *, unknown: int | None = None) -> np.ndarray:
    """(N,) int64 index of each symbol in ``known`` (a run's sorted symbols): the ids a model
    with a symbol embedding reads. A symbol not in ``known`` is an error naming it, or
    ``unknown`` (e.g. -1, which such a model refuses) when given."""
    index = {s: i for i, s in enumerate(known)}
    names = symbols.to_list()
    missing = sorted({s for s in names if s not in index})
    if missing and unknown is None:
        raise ValueError(f"symbol(s) {missing} are not among the run's symbols {known}: the "
                         "model's symbol embedding has no vector for them")
    return np.asarray([index.get(s, unknown) for s in names], dtype=np.int64).reshape(-1)


def walk_forward_fold(spans: SampleSpans, wf: WalkForwardConfig, *, val: float, test: float,
                      embargo: int) -> Split:
    """The chronological split of ``wf.fold`` (WalkForwardConfig): the windows up to the end of
    its test block, cut at the block's start and ``val`` before it, purged and embargoed."""
    u = np.unique(spans.end)
    b, v = max(1, round(test * u.size)), max(1, round(val * u.size))
    first = u.size - wf.n_folds * b  # rank of the first test block's first end time
    b0 = first + wf.fold * b
    lo = 0 if wf.train is None else b0 - v - max(1, round(wf.train * u.size))
    if b0 - v < 1 or lo < 0:
        raise ValueError(f"walk_forward: {wf.n_folds} test blocks of {b} end times, {v} val and "
                         f"{'all earlier' if wf.train is None else round(wf.train * u.size)} train "
                         f"end times do not fit in {u.size}; lower n_folds or the fractions")
    end = u[b0 + b - 1]
    inside = np.flatnonzero((spans.end >= u[lo]) & (spans.end <= end))
    sub = SampleSpans(spans.start[inside], spans.end[inside],
                      group=None if spans.group is None else spans.group[inside])
    cut = chronological_split(sub, dates=(int(u[b0 - v]), int(u[b0])), embargo=embargo)
    return Split(train=inside[cut.train], val=inside[cut.val], test=inside[cut.test],
                 purged=cut.purged, embargoed=cut.embargoed)


def calendar_positions(ts: np.ndarray) -> np.ndarray:
    """Bar index on the union calendar, so embargo and purge count bars, not wall time."""
    cal = np.unique(ts)
    return np.searchsorted(cal, ts).astype(np.int64)


def prepare_data(cfg: DataConfig, store_dir: Path,
                 normalizer: Standardizer | RobustScaler | None = None) -> PreparedData:
    """Features -> windows -> purged chronological split -> normaliser fitted on train only.

    Pass ``normalizer`` (a fitted one, e.g. loaded from a run) to reuse it instead of fitting.
    """
    fm, bars, _, alignment = _load_features(cfg, store_dir)
    ws = WindowSet.from_matrix(fm, cfg.window, stride=cfg.stride, horizon=cfg.horizon)
    if len(ws) == 0:
        raise ValueError(f"no valid {cfg.window}-bar windows with horizon {cfg.horizon} in {store_dir}")
    fwd = forward_log_return(bars, cfg.horizon)[ws.end_rows]
    classes = cfg.classes
    if cfg.task == "direction":
        keep, y_all = direction_labels(fwd, cfg)
        if not keep.all():  # binary with a dead zone: too-small moves are not samples
            ws = ws.subset(keep)
        if len(ws) == 0:
            raise ValueError(f"no window's {cfg.horizon}-bar return reaches data.dead_zone_bps="
                             f"{cfg.dead_zone_bps} in {store_dir}")
    else:
        y_all = fwd.astype(np.float32)[:, None]
    ts = fm.keys["ts"].dt.epoch("ns").to_numpy()
    pos = calendar_positions(ts)
    spans = SampleSpans(pos[ws.start_rows], pos[ws.end_rows] + cfg.horizon,
                        group=np.asarray(ws.symbol_codes()))
    dates = None
    if (d := cfg.split.dates) is not None:  # bar positions; segment on the last bar (+ horizon)
        cal = np.unique(ts)
        dates = tuple(int(np.searchsorted(cal, np.datetime64(t.replace(tzinfo=None), "ns")
                                          .astype(np.int64))) + cfg.horizon for t in d)
    val, test = cfg.split.fractions
    if cfg.split.walk_forward is not None:
        split = walk_forward_fold(spans, cfg.split.walk_forward, val=val, test=test,
                                  embargo=cfg.embargo_bars)
    else:
        split = chronological_split(spans, val=val, test=test, dates=dates, embargo=cfg.embargo_bars)
    parts = {"train": split.train, "val": split.val, "test": split.test}
    x = {k: ws.batch(idx) for k, idx in parts.items()}
    y = {k: y_all[idx] for k, idx in parts.items()}
    if normalizer is None and cfg.normalize != "none":
        normalizer = (Standardizer() if cfg.normalize == "standard" else RobustScaler()).fit(x["train"])
    if normalizer is not None:
        x = {k: np.ascontiguousarray(normalizer.transform(v), dtype=np.float32) for k, v in x.items()}
    meta = {k: ws.meta.select("symbol", "start_ts", "end_ts")[idx] for k, idx in parts.items()}
    fwd_w = forward_log_return(bars, cfg.horizon)[ws.end_rows]
    last_w = -forward_log_return(bars, -1)[ws.end_rows]  # -log(p_(e-1) / p_e)
    return PreparedData(x, y, classes, fm.names, fm.schema_hash, split, meta, normalizer,
                        forward_return={k: fwd_w[idx] for k, idx in parts.items()},
                        last_return={k: last_w[idx] for k, idx in parts.items()},
                        alignment=alignment)


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
