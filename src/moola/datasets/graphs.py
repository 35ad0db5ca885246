"""Graphs between stocks for cross-sectional graph attention: kNN from trailing correlation, sectors.

Every graph used on a date is built from returns of strictly earlier dates (rebuilt on a fixed
schedule of calendar positions that depends only on the number of dates, never on the data), so
attention over it leaks no future. Sector edges come from the end-of-period classification in
``sp500_sectors.csv`` (see ``load_sectors``): a little look-ahead for stocks that changed sector.

Adjacency convention (the day batch's ``adj``): ``adj[i, j]`` True = stock i may attend to stock j;
the diagonal is always True.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import polars as pl
from pydantic import Field, model_validator

from moola.config import MAX_BARS, MAX_SYMBOLS, Config

__all__ = [
    "EDGE_ATTR_NAMES",
    "CorrelationGraph",
    "DayGraphs",
    "GraphConfig",
    "build_day_graphs",
    "load_sectors",
    "pairwise_corr",
    "returns_matrix",
]

GraphKind = Literal["dense", "knn", "sector", "knn+sector"]
EDGE_ATTR_NAMES = ("corr", "same_sector")
SECTOR_COLUMNS = ("symbol", "sector", "sub_industry")


def _few(items: list[str], n: int = 8) -> str:
    """A short listing of ``items`` for an error message."""
    head = ", ".join(items[:n])
    return f"{head}, ... ({len(items)} in all)" if len(items) > n else head


class GraphConfig(Config):
    """Which graph the ranking model attends over, and how the correlation kNN graph is rebuilt."""

    kind: GraphKind = Field("knn", description=(
        "dense: every stock to every stock; knn: each stock to its knn_k most correlated (trailing, "
        "past only); sector: stocks of the same sector; knn+sector: the union"))
    knn_k: int = Field(10, ge=1, le=MAX_SYMBOLS,
                       description="neighbours per stock in the kNN graph (directed)")
    corr_window: int = Field(60, ge=2, le=MAX_BARS,
                             description="trading days of trailing daily returns per correlation")
    rebuild_every: int = Field(20, ge=1, le=MAX_BARS, description="trading days between kNN graph rebuilds")
    min_overlap: int | None = Field(None, ge=2, description=(
        "fewest common valid return days for a correlation; null: corr_window // 2"))
    sector_file: str | None = Field(None, description=(
        "CSV with symbol,sector,sub_industry (e.g. ../shared/data/sp500_sectors.csv); needed for "
        "sector kinds and the same_sector edge attribute unless sectors are passed in"))
    edge_attrs: bool = Field(True, description="return edge attributes [trailing corr, same_sector]")

    @model_validator(mode="after")
    def _overlap_fits(self) -> GraphConfig:
        if self.min_overlap is not None and self.min_overlap > self.corr_window:
            raise ValueError(f"min_overlap ({self.min_overlap}) must be <= corr_window ({self.corr_window})")
        if self.corr_window // 2 < 2 and self.min_overlap is None:
            raise ValueError(f"corr_window {self.corr_window}: the default min_overlap corr_window // 2 "
                             "is below 2; set min_overlap")
        return self

    @property
    def overlap(self) -> int:
        """The resolved ``min_overlap``."""
        return self.min_overlap if self.min_overlap is not None else self.corr_window // 2

    @property
    def needs_sectors(self) -> bool:
        return self.kind in ("sector", "knn+sector") or self.edge_attrs

    @property
    def needs_corr(self) -> bool:
        return self.kind in ("knn", "knn+sector") or self.edge_attrs


# ---- inputs -----------------------------------------------------------------------------


def load_sectors(path: str | Path, symbols: list[str]) -> tuple[list[str], list[str | None]]:
    """(sector per symbol, sub-industry per symbol or None) from a symbol,sector,sub_industry CSV.

    The shared file holds end-of-period GICS classifications, not point-in-time ones: edges built
    from it carry a little look-ahead for stocks that changed sector during the period.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"sector file {path} does not exist (expected a CSV with columns "
                                f"{list(SECTOR_COLUMNS)}, e.g. ../shared/data/sp500_sectors.csv)")
    df = pl.read_csv(path, infer_schema=False)
    missing = [c for c in SECTOR_COLUMNS if c not in df.columns]
    if missing:
        raise ValueError(f"sector file {path}: missing column(s) {missing}; has {df.columns}")
    dup = df.filter(pl.col("symbol").is_duplicated()).get_column("symbol").unique().sort().to_list()
    if dup:
        raise ValueError(f"sector file {path}: symbol(s) listed twice: {_few(dup)}")
    rows = {r["symbol"]: r for r in df.select(SECTOR_COLUMNS).iter_rows(named=True)}
    absent = [s for s in symbols if s not in rows]
    if absent:
        raise KeyError(f"sector file {path}: {len(absent)} symbol(s) not in the file: {_few(absent)}")
    no_sector = [s for s in symbols if not (rows[s]["sector"] or "").strip()]
    if no_sector:
        raise ValueError(f"sector file {path}: empty sector for {_few(no_sector)}")
    sectors = [str(rows[s]["sector"]).strip() for s in symbols]
    subs = [(str(v).strip() or None) if (v := rows[s]["sub_industry"]) is not None else None
            for s in symbols]
    return sectors, subs


def _to_ns(values: Any, what: str) -> np.ndarray:
    """(n,) int64 epoch ns (UTC) from a polars Date/Datetime series, a numpy datetime64 or int64 array."""
    if isinstance(values, pl.Series):
        if values.dtype == pl.Date:
            values = values.cast(pl.Datetime("ns"))
        if not isinstance(values.dtype, pl.Datetime):
            raise TypeError(f"{what}: expected a Date or Datetime series, got {values.dtype}")
        return values.dt.epoch("ns").to_numpy().astype(np.int64)
    arr = np.asarray(values)
    if np.issubdtype(arr.dtype, np.datetime64):
        return arr.astype("datetime64[ns]").astype(np.int64)
    if np.issubdtype(arr.dtype, np.integer):
        return arr.astype(np.int64)
    raise TypeError(f"{what}: expected epoch-ns int64, datetime64 or a polars Date/Datetime series, "
                    f"got {arr.dtype}")


def returns_matrix(bars: pl.DataFrame, symbols: list[str], calendar: Any = None) -> np.ndarray:
    """(D, S) float64 daily log returns of ``adj_close`` on ``calendar`` (default: the bars' dates).

    ``bars`` has ``symbol``, ``adj_close`` and a ``ts`` (Datetime) or ``date`` (Date) column;
    ``calendar`` is (D,) ascending (epoch ns as ``DayPanel.dates``, datetime64, or a polars series).
    Row d is log(adj_close[d] / adj_close[d - 1]) over consecutive calendar dates: NaN where the
    stock has no bar (or a null/non-positive price) on d or on the previous calendar date, and on d = 0.
    Bars on dates outside the calendar are ignored.
    """
    time_col = "ts" if "ts" in bars.columns else "date"
    missing = [c for c in ("symbol", "adj_close", time_col) if c not in bars.columns]
    if missing:
        raise ValueError(f"bars: missing column(s) {missing} (need symbol, adj_close and ts or date); "
                         f"has {bars.columns}")
    if len(set(symbols)) != len(symbols):
        raise ValueError(f"symbols repeat: {_few(sorted({s for s in symbols if symbols.count(s) > 1}))}")
    bars = bars.filter(pl.col("symbol").is_in(symbols))
    present = set(bars.get_column("symbol").unique().to_list())
    absent = [s for s in symbols if s not in present]
    if absent:
        raise KeyError(f"bars: no rows for {len(absent)} symbol(s): {_few(absent)}")
    ts = _to_ns(bars.get_column(time_col), f"bars.{time_col}")  # (N,)
    cal = np.unique(ts) if calendar is None else _to_ns(calendar, "calendar")  # (D,)
    if cal.ndim != 1 or np.any(np.diff(cal) <= 0):
        raise ValueError("calendar must be 1-d and strictly ascending")
    code = {s: i for i, s in enumerate(symbols)}
    sym = np.array([code[s] for s in bars.get_column("symbol").to_list()], dtype=np.int64)  # (N,)
    pos = np.searchsorted(cal, ts)
    on_cal = (pos < cal.shape[0]) & (cal[np.minimum(pos, cal.shape[0] - 1)] == ts)
    keys = pos[on_cal] * len(symbols) + sym[on_cal]
    uniq, counts = np.unique(keys, return_counts=True)
    if np.any(counts > 1):
        d, s = np.divmod(uniq[counts > 1], len(symbols))
        shown = [f"{symbols[j]}@{np.datetime64(int(cal[i]), 'ns')}"
                 for i, j in zip(d[:5], s[:5], strict=True)]
        raise ValueError(f"bars: duplicated (symbol, {time_col}) keys, e.g. {shown}; deduplicate first")
    price = bars.get_column("adj_close").cast(pl.Float64).fill_null(np.nan).to_numpy()[on_cal]
    grid = np.full((cal.shape[0], len(symbols)), np.nan)  # (D, S)
    grid[pos[on_cal], sym[on_cal]] = np.where(price > 0, price, np.nan)
    out = np.full_like(grid, np.nan)  # (D, S)
    with np.errstate(invalid="ignore", divide="ignore"):
        out[1:] = np.log(grid[1:] / grid[:-1])
    return out


# ---- correlation kNN --------------------------------------------------------------------


def pairwise_corr(window: np.ndarray, min_overlap: int) -> tuple[np.ndarray, np.ndarray]:
    """(S, S) Pearson correlation over each pair's common valid rows of ``window`` (w, S), NaN where
    the overlap is below ``min_overlap`` or a side is constant there; and the (S, S) overlap counts.

    Vectorised with matrix products over the validity mask (like ``pandas.DataFrame.corr``).
    """
    valid = np.isfinite(window)  # (w, S)
    m = valid.astype(np.float64)
    # centre each column on its own valid mean: pairwise correlation is shift invariant, and
    # centring keeps the sums small (less cancellation in the one-pass formula)
    cnt = m.sum(axis=0)
    mean = np.where(cnt > 0, np.where(valid, window, 0.0).sum(axis=0) / np.maximum(cnt, 1), 0.0)
    x = np.where(valid, window - mean, 0.0)  # (w, S)
    n = m.T @ m  # (S, S) common valid rows
    sx = x.T @ m  # (S, S) [i, j]: sum of x_i over rows where j is valid too
    sxx = (x * x).T @ m  # (S, S)
    sxy = x.T @ x  # (S, S)
    with np.errstate(invalid="ignore", divide="ignore"):
        cov = sxy - sx * sx.T / n
        var_i = sxx - sx * sx / n
        var_j = var_i.T
        corr = cov / np.sqrt(var_i * var_j)
    # a side constant on the overlap (variance at rounding level): no correlation, as in pandas
    ok = (n >= min_overlap) & (var_i > 1e-12 * sxx) & (var_j > 1e-12 * sxx.T) & np.isfinite(corr)
    return np.where(ok, np.clip(corr, -1.0, 1.0), np.nan), n.astype(np.int64)


def _knn(corr: np.ndarray, k: int) -> np.ndarray:
    """(S, S) bool directed kNN: row i marks the ``k`` largest finite correlations of i (not self)."""
    s = corr.shape[0]
    adj = np.zeros((s, s), dtype=bool)
    k = min(k, s - 1)
    if k <= 0:
        return adj
    score = np.where(np.isfinite(corr), corr, -np.inf)  # (S, S)
    np.fill_diagonal(score, -np.inf)
    idx = np.argpartition(-score, k - 1, axis=1)[:, :k]  # (S, k) largest k per row
    picked = np.take_along_axis(score, idx, axis=1) > -np.inf  # (S, k)
    rows = np.broadcast_to(np.arange(s)[:, None], idx.shape)
    adj[rows[picked], idx[picked]] = True
    return adj


@dataclass
class CorrelationGraph:
    """Trailing-correlation kNN graphs, one per rebuild epoch (epoch 0: before the first rebuild).

    Rebuild dates are calendar positions ``r = corr_window, corr_window + rebuild_every, ...``; the
    graph of rebuild r uses return rows ``[r - corr_window, r)`` only (strictly before r) and is used
    on every date d with r <= d < next rebuild. Dates before the first complete window (d <
    corr_window) get epoch 0: no edges (self-loops only) and zero correlation. The kNN is directed:
    row i holds i's ``k`` most correlated stocks (largest correlation, self excluded, only pairs with
    at least ``min_overlap`` common valid days), so a row has at most k edges; it is not symmetrised.
    """

    rebuild_days: np.ndarray  # (R,) int64 calendar positions of the rebuilds
    day_epoch: np.ndarray  # (D,) int64 epoch used on each date, 0 = before the first rebuild
    knn: np.ndarray  # (R + 1, S, S) bool, diagonal False (self-loops added by DayGraphs)
    corr: np.ndarray  # (R + 1, S, S) float32 trailing correlation, 0 where none

    @classmethod
    def build(cls, returns: np.ndarray, k: int, corr_window: int, rebuild_every: int,
              min_overlap: int) -> CorrelationGraph:
        """From the (D, S) daily return matrix (NaN = no return); one loop step per rebuild date."""
        if returns.ndim != 2:
            raise ValueError(f"returns must be (D, S), got shape {returns.shape}")
        if k < 1 or corr_window < 2 or rebuild_every < 1 or not 2 <= min_overlap <= corr_window:
            raise ValueError(f"bad graph parameters: knn_k={k} (>= 1), corr_window={corr_window} (>= 2), "
                             f"rebuild_every={rebuild_every} (>= 1), min_overlap={min_overlap} "
                             "(2..corr_window)")
        d, s = returns.shape
        rebuild = np.arange(corr_window, d, rebuild_every, dtype=np.int64)  # (R,)
        knn = np.zeros((rebuild.shape[0] + 1, s, s), dtype=bool)  # (R + 1, S, S)
        corr = np.zeros((rebuild.shape[0] + 1, s, s), dtype=np.float32)  # (R + 1, S, S)
        data = np.asarray(returns, dtype=np.float64)
        for e, r in enumerate(rebuild, start=1):
            c, _ = pairwise_corr(data[r - corr_window:r], min_overlap)  # (S, S), past rows only
            knn[e] = _knn(c, k)
            corr[e] = np.nan_to_num(c, nan=0.0).astype(np.float32)
        day_epoch = np.searchsorted(rebuild, np.arange(d), side="right").astype(np.int64)  # (D,)
        return cls(rebuild, day_epoch, knn, corr)


# ---- day graphs -------------------------------------------------------------------------


@dataclass
class DayGraphs:
    """What the day panel asks for: per-date adjacency and edge attributes, stored per epoch.

    One (S, S) graph per rebuild epoch plus a (D,) day -> epoch index, so a panel of 1,260 days x
    489^2 is never materialised for all days at once; ``for_days`` builds only the dates asked for.
    """

    kind: GraphKind
    symbols: list[str]
    day_epoch: np.ndarray  # (D,) int64
    knn: np.ndarray | None  # (R + 1, S, S) bool, or None when the kind has no kNN part
    corr: np.ndarray | None  # (R + 1, S, S) float32, or None without edge attributes
    same_sector: np.ndarray | None  # (S, S) bool, or None without sectors
    edge_attrs: bool
    rebuild_days: np.ndarray  # (R,) int64 calendar positions of the kNN rebuilds

    @property
    def n_days(self) -> int:
        return int(self.day_epoch.shape[0])

    @property
    def n_symbols(self) -> int:
        return len(self.symbols)

    @property
    def edge_attr_names(self) -> tuple[str, ...]:
        return EDGE_ATTR_NAMES if self.edge_attrs else ()

    def for_days(self, day_idx: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        """(adj (D', S, S) bool, edge_attr (D', S, S, E) float32 or None) on calendar positions
        ``day_idx``; E = len(edge_attr_names)."""
        idx = np.asarray(day_idx)
        if idx.ndim != 1 or not np.issubdtype(idx.dtype, np.integer):
            raise ValueError(f"day_idx must be a 1-d integer array, got {idx.dtype} shape {idx.shape}")
        bad = idx[(idx < 0) | (idx >= self.n_days)]
        if bad.size:
            raise IndexError(f"day_idx {bad[:5].tolist()} out of range [0, {self.n_days})")
        ep = self.day_epoch[idx]  # (D',)
        s = self.n_symbols
        eye = np.eye(s, dtype=bool)
        if self.kind == "dense":
            adj = np.ones((idx.shape[0], s, s), dtype=bool)  # (D', S, S)
        else:
            adj = np.broadcast_to(eye, (idx.shape[0], s, s)).copy()  # (D', S, S)
            if self.kind in ("knn", "knn+sector"):
                assert self.knn is not None
                adj |= self.knn[ep]
            if self.kind in ("sector", "knn+sector"):
                assert self.same_sector is not None
                adj |= self.same_sector
        if not self.edge_attrs:
            return adj, None
        assert self.corr is not None and self.same_sector is not None
        attr = np.empty((idx.shape[0], s, s, len(EDGE_ATTR_NAMES)), dtype=np.float32)  # (D', S, S, E)
        attr[..., 0] = self.corr[ep]
        attr[..., 1] = self.same_sector
        return adj, attr


def build_day_graphs(cfg: GraphConfig, returns: np.ndarray, symbols: list[str],
                     sectors: list[str] | None = None) -> DayGraphs:
    """The day graphs of ``cfg`` from (D, S) daily returns (``returns_matrix``) on the panel calendar.

    ``sectors`` (one per symbol) is needed for the sector kinds and for edge attributes; without it,
    ``cfg.sector_file`` is read (``load_sectors``).
    """
    returns = np.asarray(returns)
    if returns.ndim != 2 or returns.shape[1] != len(symbols):
        raise ValueError(f"returns shape {returns.shape} != (D, symbols={len(symbols)})")
    if len(set(symbols)) != len(symbols):
        raise ValueError(f"symbols repeat: {_few(sorted({s for s in symbols if symbols.count(s) > 1}))}")
    if sectors is None and cfg.needs_sectors:
        if cfg.sector_file is None:
            why = f"kind {cfg.kind!r}" if cfg.kind in ("sector", "knn+sector") else "edge_attrs (same_sector)"
            raise ValueError(f"graph: {why} needs sectors: pass sectors, set sector_file, "
                             "or use kind knn/dense with edge_attrs: false")
        sectors, _ = load_sectors(cfg.sector_file, symbols)
    same = None
    if sectors is not None:
        if len(sectors) != len(symbols):
            raise ValueError(f"sectors has {len(sectors)} entries, symbols {len(symbols)}")
        sec = np.asarray(sectors, dtype=object)
        same = sec[:, None] == sec[None, :]  # (S, S) bool
    d = returns.shape[0]
    if cfg.needs_corr:
        cg = CorrelationGraph.build(returns, cfg.knn_k, cfg.corr_window, cfg.rebuild_every, cfg.overlap)
        day_epoch, rebuild = cg.day_epoch, cg.rebuild_days
        knn = cg.knn if cfg.kind in ("knn", "knn+sector") else None
        corr = cg.corr if cfg.edge_attrs else None
    else:
        day_epoch, rebuild = np.zeros(d, dtype=np.int64), np.zeros(0, dtype=np.int64)
        knn, corr = None, None
    return DayGraphs(kind=cfg.kind, symbols=list(symbols), day_epoch=day_epoch, knn=knn, corr=corr,
                     same_sector=same, edge_attrs=cfg.edge_attrs, rebuild_days=rebuild)
