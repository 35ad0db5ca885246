"""Sliding windows over a FeatureMatrix as zero-copy views: one base array plus an index.

A window is ``window`` consecutive rows of one symbol. It is kept only if it is honest: it
never crosses a symbol boundary, never holds a NaN (warm-up) row, never silently spans a
gap, and (with ``horizon``) leaves room for its label bars after its last row.
"""

from __future__ import annotations

from collections.abc import Iterator
from functools import cached_property
from typing import Any

import numpy as np
import polars as pl
from numpy.lib.stride_tricks import sliding_window_view

from moola.features import FeatureMatrix

__all__ = [
    "WindowSet",
    "filled_flags",
    "flag_prefix",
    "gap_flags",
    "nan_rows",
    "symbol_ranges",
    "ts_ns",
]


def symbol_ranges(fm: FeatureMatrix) -> tuple[list[str], np.ndarray]:
    """Symbols and their ``[start, stop)`` row bounds, (S, 2) int64, so callers can vectorise."""
    slices = fm.symbol_slices()
    names = list(slices)
    bounds = np.array([(s.start, s.stop) for s in slices.values()], dtype=np.int64)
    return names, bounds.reshape(-1, 2)


def nan_rows(values: np.ndarray) -> np.ndarray:
    """(N,) bool: rows with any NaN; chunked so the (N, F) temporary never exists at once."""
    n = values.shape[0]
    out = np.empty(n, dtype=bool)
    chunk = 1 << 16
    for a in range(0, n, chunk):
        np.isnan(values[a : a + chunk]).any(axis=1, out=out[a : a + chunk])
    return out


def gap_flags(keys: pl.DataFrame) -> np.ndarray:
    """(N,) bool ``gap_before``; refuses keys that were never gap-marked instead of guessing."""
    if "gap_before" not in keys.columns:
        raise ValueError("FeatureMatrix keys lack 'gap_before': run moola.data mark_gaps first")
    return keys.get_column("gap_before").fill_null(False).to_numpy().astype(bool, copy=False)


def filled_flags(keys: pl.DataFrame) -> np.ndarray:
    """(N,) bool ``is_filled``; data that was never gap-filled has no synthetic bars."""
    if "is_filled" not in keys.columns:
        return np.zeros(keys.height, dtype=bool)
    return keys.get_column("is_filled").fill_null(False).to_numpy().astype(bool, copy=False)


def flag_prefix(flags: np.ndarray) -> np.ndarray:
    """(N+1,) prefix count: ``p[b] - p[a]`` = flagged rows in ``[a, b)``; int32 when it fits."""
    dtype = np.int32 if flags.shape[0] < np.iinfo(np.int32).max else np.int64
    out = np.zeros(flags.shape[0] + 1, dtype=dtype)
    np.cumsum(flags, dtype=dtype, out=out[1:])
    return out


def ts_ns(keys: pl.DataFrame) -> np.ndarray:
    """(N,) int64 epoch nanoseconds of ``keys.ts`` (UTC)."""
    return keys.get_column("ts").dt.epoch("ns").to_numpy()


class WindowSet:
    """Valid windows of a FeatureMatrix: the base (N, F) array and int64 window start rows.

    Memory is the base array plus 8 bytes per window; windows are materialised only when
    asked (``batch``), one batch at a time.
    """

    def __init__(
        self,
        matrix: FeatureMatrix,
        starts: np.ndarray,
        window: int,
        horizon: int = 0,
        stride: int = 1,
    ) -> None:
        if window < 1:
            raise ValueError(f"window must be >= 1, got {window}")
        starts = np.asarray(starts, dtype=np.int64)
        if starts.ndim != 1:
            raise ValueError(f"starts must be 1-D, got shape {starts.shape}")
        n_rows = matrix.values.shape[0]
        if starts.size and (starts.min() < 0 or starts.max() + window > n_rows):
            raise ValueError(f"window starts out of range for a matrix of {n_rows} rows")
        self.matrix = matrix
        self.starts = starts  # (n,) int64 first row of each window in matrix.values
        self.window = int(window)
        self.horizon = int(horizon)
        self.stride = int(stride)

    @classmethod
    def from_matrix(
        cls,
        fm: FeatureMatrix,
        window: int,
        *,
        stride: int = 1,
        horizon: int = 0,
        allow_gaps: bool = False,
        allow_filled: bool = True,
    ) -> WindowSet:
        """Every valid window, ends stepping by ``stride`` from each symbol's first full window.

        A window keeps ``horizon`` bars after its end for a label: those bars must exist in the
        same symbol and, unless ``allow_gaps``, no gap may precede any bar from the window's
        second row through its last label bar. ``allow_filled=False`` also drops windows
        holding synthetic gap-fill bars.
        """
        if window < 1:
            raise ValueError(f"window must be >= 1, got {window}")
        if stride < 1:
            raise ValueError(f"stride must be >= 1, got {stride}")
        if horizon < 0:
            raise ValueError(f"horizon must be >= 0, got {horizon}")
        _, bounds = symbol_ranges(fm)
        span = window + horizon  # rows a window needs: itself plus its label bars
        parts = [
            np.arange(a, b - span + 1, stride, dtype=np.int64) for a, b in bounds if b - a >= span
        ]
        starts = np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)
        if starts.size:
            nan_p = flag_prefix(nan_rows(fm.values))
            keep = nan_p[starts + window] == nan_p[starts]
            del nan_p
            if not allow_gaps:
                gap_p = flag_prefix(gap_flags(fm.keys))
                keep &= gap_p[starts + span] == gap_p[starts + 1]
                del gap_p
            if not allow_filled:
                fill_p = flag_prefix(filled_flags(fm.keys))
                keep &= fill_p[starts + window] == fill_p[starts]
            starts = starts[keep]
        return cls(fm, starts, window, horizon=horizon, stride=stride)

    # ---- sizes -------------------------------------------------------------------------
    def __len__(self) -> int:
        return int(self.starts.shape[0])

    @property
    def n_features(self) -> int:
        return int(self.matrix.values.shape[1])

    @property
    def shape(self) -> tuple[int, int, int]:
        """Shape of the logical (n, window, F) array."""
        return (len(self), self.window, self.n_features)

    @property
    def base(self) -> np.ndarray:
        """The (N, F) float32 array every window is a view of."""
        return self.matrix.values

    @property
    def start_rows(self) -> np.ndarray:
        return self.starts

    @property
    def end_rows(self) -> np.ndarray:
        """(n,) int64 row of each window's last bar."""
        return self.starts + (self.window - 1)

    @property
    def index_nbytes(self) -> int:
        """Bytes this set adds on top of the base array."""
        return int(self.starts.nbytes)

    @cached_property
    def _view(self) -> np.ndarray:
        # (N - window + 1, window, F) read-only strided view: row r is the window starting at r.
        base = self.matrix.values
        if base.shape[0] < self.window:
            return np.empty((0, self.window, base.shape[1]), dtype=base.dtype)
        return sliding_window_view(base, self.window, axis=0).transpose(0, 2, 1)

    # ---- access ------------------------------------------------------------------------
    @property
    def array(self) -> np.ndarray:
        """(n, window, F) zero-copy view; only exists when window starts are evenly spaced."""
        step = self.regular_step()
        if step is None:
            raise ValueError(
                "windows do not form a regular stride pattern (several symbols or gaps "
                "removed some); use batch(idx) or subset() per symbol"
            )
        if len(self) == 0:
            return self._view[:0]
        first = int(self.starts[0])
        return self._view[first : first + step * (len(self) - 1) + 1 : step]

    def regular_step(self) -> int | None:
        """Row step between consecutive windows if constant (1 for 0 or 1 windows), else None."""
        if len(self) < 2:
            return 1
        d = np.diff(self.starts)
        step = int(d[0])
        return step if step > 0 and bool(np.all(d == step)) else None

    def __getitem__(self, i: Any) -> np.ndarray:
        """``ws[i]``: the (window, F) view of window i; a slice or index array gives ``batch``."""
        if isinstance(i, (int, np.integer)):
            s = int(self.starts[i])
            return self._view[s]
        return self.batch(i)

    def __iter__(self) -> Iterator[np.ndarray]:
        view = self._view
        for s in self.starts:
            yield view[s]

    def take(self, idx: Any) -> np.ndarray:
        """Like ``numpy.take``: a scalar gives a view, anything else a gathered batch."""
        return self[idx]

    def batch(self, idx: Any = None) -> np.ndarray:
        """(B, window, F) float32 C-contiguous copy of the windows ``idx`` (all if None)."""
        starts = self.starts if idx is None else np.atleast_1d(self.starts[idx])
        rows = starts[:, None] + np.arange(self.window, dtype=np.int64)  # (B, T)
        return np.take(self.matrix.values, rows, axis=0)  # (B, T, F)

    def subset(self, idx: Any) -> WindowSet:
        """A WindowSet of the windows ``idx`` (ints, slice or bool mask) over the same base."""
        return WindowSet(
            self.matrix, np.atleast_1d(self.starts[idx]), self.window,
            horizon=self.horizon, stride=self.stride,
        )

    def symbol_codes(self) -> np.ndarray:
        """(n,) int64 index into ``symbols()`` of each window's symbol."""
        _, bounds = symbol_ranges(self.matrix)
        return np.searchsorted(bounds[:, 1], self.starts, side="right").astype(np.int64)

    def symbols(self) -> list[str]:
        """All symbols of the matrix, in row order (the codes of ``symbol_codes``)."""
        return list(self.matrix.symbol_slices())

    # ---- metadata ----------------------------------------------------------------------
    @property
    def meta(self) -> pl.DataFrame:
        """One row per window: symbol, start_ts, end_ts (last bar), start_row, end_row."""
        keys = self.matrix.keys
        start = pl.Series("start_row", self.starts, dtype=pl.Int64)
        end = pl.Series("end_row", self.end_rows, dtype=pl.Int64)
        return pl.DataFrame(
            {
                "symbol": keys.get_column("symbol").gather(start),
                "start_ts": keys.get_column("ts").gather(start),
                "end_ts": keys.get_column("ts").gather(end),
                "start_row": start,
                "end_row": end,
            }
        )

    def to_spans(self, horizon: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(start_ns, end_ns) int64 arrays for purged splits: first bar, last label bar.

        ``horizon`` defaults to the one the set was built with; a larger one must still land
        inside each window's symbol, or this raises instead of borrowing another symbol's bar.
        """
        h = self.horizon if horizon is None else int(horizon)
        if h < 0:
            raise ValueError(f"horizon must be >= 0, got {h}")
        ts = ts_ns(self.matrix.keys)
        last = self.end_rows + h
        if h > self.horizon and len(self):
            _, bounds = symbol_ranges(self.matrix)
            stop = bounds[self.symbol_codes(), 1]
            bad = np.flatnonzero(last >= stop)
            if bad.size:
                raise ValueError(
                    f"horizon {h} runs past the symbol's last bar for {bad.size} windows "
                    f"(first: window {int(bad[0])}); build the WindowSet with horizon={h}"
                )
        return ts[self.starts], ts[last]

    def __repr__(self) -> str:
        return (
            f"WindowSet(n={len(self)}, window={self.window}, features={self.n_features}, "
            f"stride={self.stride}, horizon={self.horizon})"
        )
