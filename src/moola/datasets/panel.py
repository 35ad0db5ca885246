"""Day panels for cross-sectional models: on each date, the windows of every stock present.

The panel is an index, (n_dates, n_symbols) end rows into the FeatureMatrix, not a copy:
a day's windows are gathered when asked for, so the whole panel never exists densely.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, NamedTuple

import numpy as np
import polars as pl
import torch

from moola.datasets.windows import WindowSet, symbol_ranges, ts_ns
from moola.features import FeatureMatrix

__all__ = ["DayPanel", "DayPanelSource", "PanelBatch", "PanelDay"]


class PanelDay(NamedTuple):
    """One date: the present stocks' windows, their names, the (S,) presence mask, targets."""

    X: np.ndarray  # (n_present, T, F) float32
    symbols: list[str]  # (n_present,) in panel symbol order
    mask: np.ndarray  # (S,) bool over DayPanel.symbols
    target: np.ndarray | None  # (n_present,) or None when the panel has no target


class PanelBatch(NamedTuple):
    """Several dates densely: zeros where a stock is missing, so mask must be applied."""

    X: np.ndarray  # (D, S, T, F) float32
    mask: np.ndarray  # (D, S) bool
    target: np.ndarray | None  # (D, S), NaN where missing; None without target


class DayPanel:
    """Dates x symbols grid of valid window end rows (-1 = stock absent that day)."""

    def __init__(
        self,
        matrix: FeatureMatrix,
        window: int,
        horizon: int,
        dates: np.ndarray,
        symbols: list[str],
        end_rows: np.ndarray,
        target: np.ndarray | None = None,
    ) -> None:
        if end_rows.shape != (dates.shape[0], len(symbols)):
            raise ValueError(
                f"end_rows shape {end_rows.shape} != (dates={dates.shape[0]}, "
                f"symbols={len(symbols)})"
            )
        self.matrix = matrix
        self.window = int(window)
        self.horizon = int(horizon)
        self.dates = dates  # (D,) int64 epoch ns, ascending
        self.symbols = symbols  # (S,)
        self.end_rows = end_rows  # (D, S) int64 row of the window's last bar, -1 if absent
        self.target = target  # (N,) aligned with matrix rows, or None

    @classmethod
    def from_matrix(
        cls,
        fm: FeatureMatrix,
        window: int,
        horizon: int = 1,
        min_stocks: int = 2,
        *,
        target: np.ndarray | None = None,
        allow_gaps: bool = False,
        allow_filled: bool = True,
    ) -> DayPanel:
        """Panel over the union calendar; a date needs ``min_stocks`` present to be kept.

        A stock is present on date d when it has a valid window (see ``WindowSet``) ending at
        exactly timestamp d with ``horizon`` label bars after it, and, given ``target`` ((N,)
        in fm's row order), a non-NaN target on that row. ``min_stocks`` defaults to 2: a
        cross-section of one stock cannot be ranked.
        """
        if min_stocks < 1:
            raise ValueError(f"min_stocks must be >= 1, got {min_stocks}")
        n_rows = fm.values.shape[0]
        if target is not None:
            target = np.asarray(target)
            if target.shape != (n_rows,):
                raise ValueError(f"target shape {target.shape} != (rows={n_rows},)")
            if not np.issubdtype(target.dtype, np.floating):
                raise TypeError(f"target must be floating (NaN = unknown), got {target.dtype}")
        ws = WindowSet.from_matrix(
            fm, window, horizon=horizon, allow_gaps=allow_gaps, allow_filled=allow_filled
        )
        ends = ws.end_rows  # (n,)
        codes = ws.symbol_codes()  # (n,)
        if target is not None:
            ok = ~np.isnan(target[ends])
            ends, codes = ends[ok], codes[ok]
        ts = ts_ns(fm.keys)
        calendar = np.unique(ts)  # (D0,) union of every bar time
        symbols, _ = symbol_ranges(fm)
        grid = np.full((calendar.shape[0], len(symbols)), -1, dtype=np.int64)  # (D0, S)
        grid[np.searchsorted(calendar, ts[ends]), codes] = ends
        keep = (grid >= 0).sum(axis=1) >= min_stocks
        return cls(fm, window, horizon, calendar[keep], symbols, grid[keep], target)

    # ---- sizes -------------------------------------------------------------------------
    def __len__(self) -> int:
        return int(self.dates.shape[0])

    @property
    def n_dates(self) -> int:
        return len(self)

    @property
    def n_symbols(self) -> int:
        return len(self.symbols)

    @property
    def mask(self) -> np.ndarray:
        """(D, S) bool: stock s has a usable window (and target) on date d."""
        return self.end_rows >= 0

    @property
    def date_series(self) -> pl.Series:
        """The panel dates as Datetime(ns, UTC)."""
        return pl.Series("date", self.dates).cast(pl.Datetime("ns")).dt.replace_time_zone("UTC")

    # ---- access ------------------------------------------------------------------------
    def _gather(self, rows: np.ndarray) -> np.ndarray:
        """(k, T, F) windows ending at ``rows`` (k,), copied out of the base array."""
        idx = rows[:, None] + np.arange(1 - self.window, 1, dtype=np.int64)  # (k, T)
        return np.take(self.matrix.values, idx, axis=0)

    def day(self, i: int) -> PanelDay:
        """Windows of the stocks present on date ``i`` (n_present, T, F), plus who they are."""
        row = self.end_rows[i]  # (S,)
        mask = row >= 0
        present = np.flatnonzero(mask)
        rows = row[present]
        target = None if self.target is None else self.target[rows]
        return PanelDay(
            self._gather(rows), [self.symbols[k] for k in present], mask, target
        )

    def batch(self, days: Any) -> PanelBatch:
        """Dense (D, S, T, F) windows for the dates ``days`` with zeros where missing."""
        end = np.atleast_2d(self.end_rows[days])  # (D, S)
        mask = end >= 0
        X = np.zeros((*end.shape, self.window, self.matrix.values.shape[1]), np.float32)
        X[mask] = self._gather(end[mask])
        target = None
        if self.target is not None:
            target = np.full(end.shape, np.nan, dtype=self.target.dtype)
            target[mask] = self.target[end[mask]]
        return PanelBatch(X, mask, target)

    def spans(self) -> tuple[np.ndarray, np.ndarray]:
        """(start_ns, end_ns) per date for purged splits: earliest window bar, last label bar."""
        ts = ts_ns(self.matrix.keys)
        mask = self.mask
        end = np.where(mask, self.end_rows, 0)
        hi, lo = np.iinfo(np.int64).max, np.iinfo(np.int64).min
        first = np.where(mask, ts[np.maximum(end - self.window + 1, 0)], hi)  # (D, S)
        last = np.where(mask, ts[np.where(mask, end + self.horizon, 0)], lo)  # (D, S)
        return first.min(axis=1, initial=hi), last.max(axis=1, initial=lo)

    def __repr__(self) -> str:
        return (
            f"DayPanel(dates={self.n_dates}, symbols={self.n_symbols}, window={self.window}, "
            f"horizon={self.horizon}, present={int(self.mask.sum())})"
        )


class DayPanelSource:
    """A ``moola.training.BatchSource`` over the dates of a ``DayPanel``: one sample is one day.

    ``days`` picks the panel dates this source covers (a split), in order; a batch of B days is
    ``{"x": (B, S, T, F) float32, "mask": (B, S) bool, "symbol_id": (B, S) int64}`` plus
    ``"y": (B, S) float32`` (0 where masked) when the panel has a target. Windows are gathered
    per batch, so the dense (D, S, T, F) panel never exists.
    """

    def __init__(self, panel: DayPanel, days: np.ndarray | None = None,
                 device: torch.device | None = None) -> None:
        self.panel = panel
        self.days = np.arange(len(panel)) if days is None else np.asarray(days, dtype=np.int64)
        self.device = device or torch.device("cpu")

    def __len__(self) -> int:
        return int(self.days.shape[0])

    def to(self, device: torch.device) -> DayPanelSource:
        return DayPanelSource(self.panel, self.days, torch.device(device))

    def batches(self, order: torch.Tensor, batch_size: int, start: int = 0
                ) -> Iterator[dict[str, torch.Tensor]]:
        n_batches = (len(order) + batch_size - 1) // batch_size
        for b in range(start, n_batches):
            idx = order[b * batch_size:(b + 1) * batch_size].cpu().numpy()
            pb = self.panel.batch(self.days[idx])
            S = self.panel.n_symbols
            batch = {
                "x": torch.from_numpy(pb.X),  # (B, S, T, F)
                "mask": torch.from_numpy(pb.mask),  # (B, S)
                "symbol_id": torch.arange(S, dtype=torch.int64).expand(len(idx), S).contiguous(),
            }
            if pb.target is not None:
                batch["y"] = torch.from_numpy(np.where(pb.mask, pb.target, 0).astype(np.float32))
            yield {k: v.to(self.device) for k, v in batch.items()}
