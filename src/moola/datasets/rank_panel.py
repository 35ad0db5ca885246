"""The prepared cross-sectional panel: processed features, per-date labels at several horizons,
date splits with purge and embargo, an Arrow IPC cache that reloads memory-mapped, and the
day-batch source the Trainer reads.

A ``RankPanel`` holds one row per (symbol, trading day) sorted by (symbol, ts), like a
``FeatureMatrix``; a stock is *present* on a date when the ``window`` rows ending there are
consecutive trading days of that stock with warm-up complete. Presence is decided from the
stock's own past only, so a stock that lists later, leaves, or pauses never leaks into earlier
days.
"""

from __future__ import annotations

import hashlib
import json
import multiprocessing as mp
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import date, datetime
from pathlib import Path
from typing import Any, Literal

import numpy as np
import polars as pl
import pyarrow as pa
import torch

from moola._io import atomic_write, atomic_write_json, read_json
from moola.datasets.panel import DayPanel
from moola.features import FeatureMatrix

__all__ = [
    "PANEL_ARROW",
    "PANEL_META",
    "DateSplit",
    "RankBatchSource",
    "RankPanel",
    "date_split",
    "walk_forward_splits",
]

PANEL_ARROW = "panel.arrow"
PANEL_META = "panel.json"
CACHE_VERSION = 1


@dataclass
class RankPanel:
    """Rows of (symbol, ts): processed features (NaN only on warm-up rows), labels normalised per
    date for training and raw forward returns for evaluation, one column per horizon."""

    keys: pl.DataFrame  # symbol, ts, gap_before, is_filled; (N,) sorted by (symbol, ts)
    features: np.ndarray  # (N, F) float32, C-contiguous (a read-only memory map when cached)
    feature_names: tuple[str, ...]
    labels: np.ndarray  # (N, H) float32, per-date normalised; NaN = unknown
    labels_raw: np.ndarray  # (N, H) float32 raw forward returns; NaN = unknown
    horizons: tuple[int, ...]
    window: int
    meta: dict[str, Any] = field(default_factory=dict)
    _day_panel: DayPanel | None = field(default=None, repr=False, compare=False)

    def __post_init__(self) -> None:
        n, h = self.keys.height, len(self.horizons)
        for name, arr, width in (("features", self.features, len(self.feature_names)),
                                 ("labels", self.labels, h), ("labels_raw", self.labels_raw, h)):
            if arr.dtype != np.float32 or arr.shape != (n, width):
                raise ValueError(f"RankPanel.{name} must be float32 of shape (rows={n}, {width}), "
                                 f"got {arr.dtype} {arr.shape}")
        if self.window < 1:
            raise ValueError(f"window must be >= 1, got {self.window}")

    # ---- views -------------------------------------------------------------------------
    @property
    def matrix(self) -> FeatureMatrix:
        return FeatureMatrix(keys=self.keys, values=self.features, names=self.feature_names,
                             set_name=str(self.meta.get("feature_set", "panel")),
                             params=dict(self.meta.get("feature_params", {})),
                             code_hash=self.meta.get("feature_code_hash"))

    @property
    def day_panel(self) -> DayPanel:
        """Dates x symbols grid of window end rows (a date needs two present stocks)."""
        if self._day_panel is None:
            self._day_panel = DayPanel.from_matrix(self.matrix, self.window, horizon=0, min_stocks=2)
        return self._day_panel

    @property
    def dates(self) -> np.ndarray:
        """(D,) int64 epoch ns of the panel's trading days."""
        return self.day_panel.dates

    @property
    def symbols(self) -> list[str]:
        return self.day_panel.symbols

    @property
    def n_features(self) -> int:
        return len(self.feature_names)

    def date_labels(self) -> list[date]:
        return [d.date() for d in self.day_panel.date_series.to_list()]

    # ---- cache -------------------------------------------------------------------------
    def save(self, directory: str | Path) -> Path:
        """``panel.arrow`` (uncompressed Arrow IPC, one record batch: features, labels and raw
        labels as fixed-size lists, so each is one contiguous row-major buffer a later load
        memory-maps without copying) and ``panel.json`` (what produced it)."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        n = self.keys.height

        def fsl(a: np.ndarray) -> pa.Array:
            return pa.FixedSizeListArray.from_arrays(pa.array(np.ascontiguousarray(a).reshape(-1)),
                                                     a.shape[1])

        keys = self.keys.select("symbol", "ts", "gap_before", "is_filled").to_arrow()
        table = pa.table({**{c: keys.column(c) for c in keys.column_names},
                          "features": fsl(self.features), "labels": fsl(self.labels),
                          "labels_raw": fsl(self.labels_raw)})
        batch = table.combine_chunks().to_batches(max_chunksize=max(n, 1))
        if not batch:
            batch = [pa.RecordBatch.from_pylist([], schema=table.schema)]

        def write(tmp: Path) -> None:
            with pa.OSFile(str(tmp), "wb") as sink, pa.ipc.new_file(sink, table.schema) as w:
                for b in batch:
                    w.write_batch(b)

        atomic_write(directory / PANEL_ARROW, write)
        meta = {**self.meta, "version": CACHE_VERSION, "rows": n, "window": self.window,
                "horizons": list(self.horizons), "feature_names": list(self.feature_names)}
        atomic_write_json(directory / PANEL_META, meta)
        return directory

    @classmethod
    def load(cls, directory: str | Path) -> RankPanel:
        """Reopen a saved panel; the three arrays are read-only views of the memory-mapped file."""
        directory = Path(directory)
        meta = read_json(directory / PANEL_META)
        if meta.get("version") != CACHE_VERSION:
            raise ValueError(f"{directory / PANEL_META}: cache version {meta.get('version')} != "
                             f"{CACHE_VERSION}; delete the directory to rebuild it")
        source = pa.memory_map(str(directory / PANEL_ARROW), "r")
        table = pa.ipc.open_file(source).read_all()
        n = table.num_rows

        def arr(name: str, width: int) -> np.ndarray:
            col = table.column(name)
            if col.num_chunks != 1:
                raise ValueError(f"{directory / PANEL_ARROW}: column {name} has {col.num_chunks} "
                                 "chunks, expected 1 (written by RankPanel.save)")
            flat = col.chunk(0).values.to_numpy(zero_copy_only=True)
            return flat.reshape(n, width)

        names = tuple(meta["feature_names"])
        horizons = tuple(int(h) for h in meta["horizons"])
        keys = pl.from_arrow(table.select(["symbol", "ts", "gap_before", "is_filled"]))
        assert isinstance(keys, pl.DataFrame)
        core = {k: v for k, v in meta.items()
                if k not in ("version", "rows", "window", "horizons", "feature_names")}
        return cls(keys=keys, features=arr("features", len(names)), feature_names=names,
                   labels=arr("labels", len(horizons)), labels_raw=arr("labels_raw", len(horizons)),
                   horizons=horizons, window=int(meta["window"]), meta=core)

    @staticmethod
    def cached_meta(directory: str | Path) -> dict[str, Any] | None:
        """The meta of a saved panel, or None when the directory holds none."""
        p = Path(directory) / PANEL_META
        if not p.exists() or not (Path(directory) / PANEL_ARROW).exists():
            return None
        meta: dict[str, Any] = read_json(p)
        return meta


def cache_key(parts: dict[str, Any]) -> str:
    """A short stable hash of what a prepared panel depends on."""
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


# ---- date splits ------------------------------------------------------------------------


@dataclass(frozen=True)
class DateSplit:
    """Panel date indices of each segment (ascending) and what was cut to keep them apart."""

    train: np.ndarray
    val: np.ndarray
    test: np.ndarray
    purged: int  # dates dropped because their label would reach into the next segment
    embargoed: int  # dates dropped at the start of a later segment

    def describe(self, dates: np.ndarray) -> dict[str, Any]:
        def span(ix: np.ndarray) -> list[str] | None:
            if ix.size == 0:
                return None
            d = pl.Series(dates[[ix[0], ix[-1]]]).cast(pl.Datetime("ns")).dt.date().to_list()
            return [str(d[0]), str(d[1])]

        return {"train": span(self.train), "val": span(self.val), "test": span(self.test),
                "n_train": int(self.train.size), "n_val": int(self.val.size),
                "n_test": int(self.test.size), "purged": self.purged, "embargoed": self.embargoed}


def _ns(d: date | datetime | str) -> int:
    if isinstance(d, str):
        d = date.fromisoformat(d)
    if isinstance(d, datetime):
        d = d.date()
    return int(np.datetime64(d, "D").astype("datetime64[ns]").astype(np.int64))


def _segment(dates: np.ndarray, start: date | str | None, end: date | str | None) -> np.ndarray:
    """Indices of dates in [start, end] (inclusive; None = open)."""
    lo = 0 if start is None else int(np.searchsorted(dates, _ns(start), "left"))
    hi = len(dates) if end is None else int(np.searchsorted(dates, _ns(end) + 86_400 * 10**9 - 1,
                                                               "right"))
    return np.arange(lo, max(lo, hi), dtype=np.int64)


def date_split(dates: np.ndarray, *, train: tuple[Any, Any], val: tuple[Any, Any],
               test: tuple[Any, Any], purge: int, embargo: int) -> DateSplit:
    """Split panel dates by calendar ranges (inclusive ISO dates), then purge and embargo.

    ``purge`` (the longest label's bars after the entry) drops the last dates of a segment whose
    label would read prices inside the next segment; ``embargo`` drops the first dates of val and
    test as well. Ranges must be in order and not overlap.
    """
    if purge < 0 or embargo < 0:
        raise ValueError(f"purge ({purge}) and embargo ({embargo}) must be >= 0")
    ranges = (train, val, test)
    segs = [_segment(dates, *r) for r in ranges]
    for name, r, s in zip(("train", "val", "test"), ranges, segs, strict=True):
        if s.size == 0:
            raise ValueError(f"split.{name} {list(r)} holds no panel date; the panel spans "
                             f"{_day(dates[0])} .. {_day(dates[-1])}")
    for (a, na), (b, nb) in zip(((segs[0], "train"), (segs[1], "val")),
                                ((segs[1], "val"), (segs[2], "test")), strict=True):
        if a[-1] >= b[0]:
            raise ValueError(f"split.{na} must end before split.{nb} starts")
    purged = embargoed = 0
    out = []
    for k, s in enumerate(segs):
        if k > 0 and embargo:  # the embargo counts from the previous segment's last date
            keep = s[s > segs[k - 1][-1] + embargo]
            embargoed += s.size - keep.size
            s = keep
        if k < 2 and purge:  # a label reading `purge` bars ahead must end before the next cut
            keep = s[s + purge < segs[k + 1][0]]
            purged += s.size - keep.size
            s = keep
        out.append(s)
    return DateSplit(out[0], out[1], out[2], purged, embargoed)


def _day(ns: int) -> str:
    return str(np.datetime64(int(ns), "ns").astype("datetime64[D]"))


def walk_forward_splits(dates: np.ndarray, *, first_test: Any, step: int, val_days: int,
                        purge: int, embargo: int, mode: Literal["expanding", "sliding"] = "expanding",
                        train_days: int | None = None, end: Any = None) -> list[DateSplit]:
    """Retraining every ``step`` trading days from ``first_test`` on: each fold tests on the next
    ``step`` dates, validates on the ``val_days`` before them and trains on everything earlier
    (expanding) or on the ``train_days`` before the validation (sliding); purged and embargoed
    like ``date_split``."""
    if step < 1 or val_days < 1:
        raise ValueError(f"walk-forward step ({step}) and val_days ({val_days}) must be >= 1")
    if mode == "sliding" and (train_days is None or train_days < 1):
        raise ValueError("walk_forward mode 'sliding' needs train_days >= 1")
    last = len(dates) if end is None else int(np.searchsorted(dates, _ns(end), "right"))
    t0 = int(np.searchsorted(dates, _ns(first_test), "left"))
    folds: list[DateSplit] = []
    for start in range(t0, last, step):
        stop = min(start + step, last)
        v0 = start - val_days
        tr0 = 0 if mode == "expanding" else max(0, v0 - int(train_days or 0))
        if v0 - tr0 < 2:
            raise ValueError(f"walk-forward fold at {_day(dates[start])}: no training dates before "
                             f"its {val_days} validation days")
        segs = (np.arange(tr0, v0), np.arange(v0, start), np.arange(start, stop))
        folds.append(date_split(dates, train=_bounds(dates, segs[0]), val=_bounds(dates, segs[1]),
                                test=_bounds(dates, segs[2]), purge=purge, embargo=embargo))
    return folds


def _bounds(dates: np.ndarray, ix: np.ndarray) -> tuple[str, str]:
    return _day(dates[ix[0]]), _day(dates[ix[-1]])


# ---- the batch source ------------------------------------------------------------------


def panel_batch(panel: RankPanel, days: np.ndarray, graphs: Any | None) -> dict[str, torch.Tensor]:
    """One day batch in the ranking contract (see ``RankBatchSource``), as CPU tensors."""
    dp = panel.day_panel
    pb = dp.batch(days)
    end = np.atleast_2d(dp.end_rows[days])  # (B, S)
    mask = pb.mask
    rows = np.where(mask, end, 0)
    y = panel.labels[rows]  # (B, S, H)
    y_raw = panel.labels_raw[rows]
    y_mask = mask[..., None] & np.isfinite(y)
    batch = {
        "x": torch.from_numpy(pb.X),  # (B, S, T, F)
        "mask": torch.from_numpy(mask),  # (B, S)
        "y": torch.from_numpy(np.where(y_mask, y, 0.0).astype(np.float32)),  # (B, S, H)
        "y_mask": torch.from_numpy(y_mask),
        "y_raw": torch.from_numpy(np.where(mask[..., None], y_raw, np.nan).astype(np.float32)),
        "symbol_id": torch.arange(dp.n_symbols, dtype=torch.int64).expand(len(days), -1).contiguous(),
        "day": torch.from_numpy(np.asarray(days, dtype=np.int64)),  # (B,) panel date index
    }
    if graphs is not None:
        adj, attr = graphs.for_days(np.asarray(days, dtype=np.int64))
        batch["adj"] = torch.from_numpy(np.ascontiguousarray(adj))  # (B, S, S)
        if attr is not None:
            batch["edge_attr"] = torch.from_numpy(np.ascontiguousarray(attr))  # (B, S, S, E)
    return batch


class _CachedPanelBatches(torch.utils.data.Dataset[dict[str, torch.Tensor]]):
    """Worker-side dataset: item i is the i-th day batch; the panel is reopened (memory-mapped)
    from its cache directory in each worker instead of being pickled across."""

    def __init__(self, cache_dir: str, window: int, batches: list[np.ndarray], graphs: Any | None,
                 panel: RankPanel | None = None) -> None:
        self.cache_dir = cache_dir
        self.window = window
        self.batches = batches
        self.graphs = graphs
        self._panel = panel

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_panel": None}

    def __len__(self) -> int:
        return len(self.batches)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        if self._panel is None:
            self._panel = RankPanel.load(self.cache_dir)
        return panel_batch(self._panel, self.batches[i], self.graphs)


WORKER_START_METHOD = "spawn"  # a fresh interpreter: no Polars/OpenMP lock can be inherited held


class RankBatchSource:
    """A ``moola.training.BatchSource`` over panel dates: one sample is one whole day.

    A batch of B days is ``x`` (B, S, T, F), ``mask`` (B, S), ``y`` (B, S, H) normalised labels
    (0 where unknown), ``y_mask`` (B, S, H), ``y_raw`` (B, S, H) raw returns (NaN where
    unknown), ``symbol_id`` (B, S), ``day`` (B,) and, with graphs, ``adj`` (B, S, S) and
    ``edge_attr`` (B, S, S, E). ``num_workers`` 0 gathers in the calling process (no workers,
    nothing to deadlock); > 0 needs a cached panel (``cache_dir``) and starts workers with
    ``spawn``, which cannot inherit a lock held by Polars' or OpenMP's thread pools at fork.
    """

    def __init__(self, panel: RankPanel, days: np.ndarray, *, graphs: Any | None = None,
                 device: torch.device | None = None, num_workers: int = 0,
                 cache_dir: str | Path | None = None) -> None:
        self.panel = panel
        self.days = np.asarray(days, dtype=np.int64)
        self.graphs = graphs
        self.device = device or torch.device("cpu")
        self.num_workers = int(num_workers)
        self.cache_dir = None if cache_dir is None else str(cache_dir)
        if self.num_workers < 0:
            raise ValueError(f"num_workers must be >= 0, got {num_workers}")
        if self.num_workers and self.cache_dir is None:
            raise ValueError("num_workers > 0 reads the panel from its cache in each worker: "
                             "pass cache_dir (the prepared panel's directory) or use num_workers=0")

    def __len__(self) -> int:
        return int(self.days.shape[0])

    def to(self, device: torch.device) -> RankBatchSource:
        return RankBatchSource(self.panel, self.days, graphs=self.graphs, device=torch.device(device),
                               num_workers=self.num_workers, cache_dir=self.cache_dir)

    def subset(self, days: np.ndarray) -> RankBatchSource:
        return RankBatchSource(self.panel, days, graphs=self.graphs, device=self.device,
                               num_workers=self.num_workers, cache_dir=self.cache_dir)

    def batches(self, order: torch.Tensor, batch_size: int, start: int = 0
                ) -> Iterator[dict[str, torch.Tensor]]:
        n_batches = (len(order) + batch_size - 1) // batch_size
        picks = [self.days[order[b * batch_size:(b + 1) * batch_size].cpu().numpy()]
                 for b in range(start, n_batches)]
        if self.num_workers == 0 or len(picks) <= 1:
            for days in picks:
                yield self._to_device(panel_batch(self.panel, days, self.graphs))
            return
        assert self.cache_dir is not None
        ds = _CachedPanelBatches(self.cache_dir, self.panel.window, picks, self.graphs)
        loader = torch.utils.data.DataLoader(
            ds, batch_size=None, shuffle=False, num_workers=min(self.num_workers, len(picks)),
            multiprocessing_context=mp.get_context(WORKER_START_METHOD), timeout=600,
            pin_memory=self.device.type == "cuda")
        for batch in loader:
            yield self._to_device(batch)

    def _to_device(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        if self.device.type == "cpu":
            return batch
        return {k: v.to(self.device, non_blocking=True) for k, v in batch.items()}
