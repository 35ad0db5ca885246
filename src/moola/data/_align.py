"""Several symbols on one clock: keep the timestamps every symbol has, and say what it cost.

Markets rarely start on the same minute (the Bybit month starts 1-3 minutes apart per
symbol) and each can miss bars the others have. A pooled data set that needs one clock
keeps only the common timestamps; nothing is shifted, filled or interpolated here, and
every dropped bar is counted per symbol and cause, so a late start or a hole is visible.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

import numpy as np
import polars as pl

from moola.data._errors import MoolaDataError
from moola.data._schema import TS_DTYPE, Timeframe


class AlignmentError(MoolaDataError):
    """Symbols that cannot share a clock (no overlap, duplicate or missing keys)."""


@dataclass(frozen=True)
class SymbolAlignment:
    """One symbol's side of the alignment. ``bars`` = ``dropped_before`` + ``dropped_after``
    + ``off_clock`` + ``absent_elsewhere`` + ``kept``."""

    symbol: str
    first_ts: datetime
    last_ts: datetime
    bars: int
    late_start: int  # clock ticks between the earliest symbol's first bar and this one's
    dropped_before: int  # bars before the common start (another symbol starts later)
    dropped_after: int  # bars after the common end (another symbol ends earlier)
    off_clock: int  # bars not on the timeframe's grid (e.g. 16:39:30 in 1m): never moved
    missing: int  # clock ticks inside the common span this symbol has no bar for
    absent_elsewhere: int  # bars dropped because another symbol lacks that timestamp
    kept: int
    first_missing: tuple[datetime, ...]  # up to the first 5 missing ticks, to look them up


@dataclass(frozen=True)
class Alignment:
    """The bars at the timestamps every symbol has, and the per-symbol account."""

    bars: pl.DataFrame  # input rows at the common timestamps, sorted by (symbol, ts)
    timestamps: pl.Series  # (T,) the common timestamps, TS_DTYPE
    timeframe: Timeframe
    start: datetime  # the common span: latest first bar ... earliest last bar
    end: datetime
    symbols: tuple[SymbolAlignment, ...]

    @property
    def complete(self) -> bool:
        """True when no symbol lost a bar inside the common span."""
        return all(s.missing == 0 and s.off_clock == 0 for s in self.symbols)

    def report(self) -> pl.DataFrame:
        """One row per symbol: span, late start and every count of the account."""
        return pl.DataFrame(
            [{k: v for k, v in s.__dict__.items() if k != "first_missing"} for s in self.symbols]
        )

    def summary(self) -> list[str]:
        """Human-readable lines: the common span, then each symbol that lost something."""
        lines = [
            f"{len(self.symbols)} symbols on one {self.timeframe.value} clock: "
            f"{self.timestamps.len()} common timestamps, {self.start.isoformat()} .. "
            f"{self.end.isoformat()}"
        ]
        for s in self.symbols:
            if s.bars == s.kept and not s.missing:
                continue
            parts = [f"starts {s.late_start} bar(s) after the earliest symbol"] if s.late_start else []
            if s.missing:
                seen = ", ".join(t.isoformat() for t in s.first_missing)
                parts.append(f"misses {s.missing} bar(s) in the common span (first: {seen})")
            dropped = (
                f"{s.bars - s.kept} of {s.bars} bars dropped ({s.dropped_before} before the "
                f"common start, {s.dropped_after} after its end, {s.off_clock} off the "
                f"{self.timeframe.value} grid, {s.absent_elsewhere} missing in another symbol)"
            )
            lines.append(f"  {s.symbol}: {'; '.join([*parts, dropped])}, {s.kept} kept")
        return lines


def align_symbols(bars: pl.DataFrame, timeframe: Timeframe | str) -> Alignment:
    """Keep the rows of ``bars`` (columns ``symbol``, ``ts`` and any values) whose timestamp
    every symbol has, within the span all symbols cover, and account for every dropped bar.

    The clock is the timeframe's grid (multiples of its step since the epoch, UTC) for
    intraday bars and the union of all symbols' timestamps for daily bars (a trading
    calendar). A bar is never shifted onto the grid: an off-grid bar is dropped and counted.
    """
    tf = Timeframe(timeframe)
    missing_cols = [c for c in ("symbol", "ts") if c not in bars.columns]
    if missing_cols:
        raise AlignmentError(f"bars lack column(s) {missing_cols}; they have {bars.columns}")
    if bars.height == 0:
        raise AlignmentError("no bars to align")
    df = bars.with_columns(pl.col("ts").cast(TS_DTYPE)).with_columns(
        _ns=pl.col("ts").cast(pl.Int64)
    )
    dup = df.select("symbol", "_ns").is_duplicated()
    if dup.any():
        row = df.row(int(dup.arg_true()[0]), named=True)
        raise AlignmentError(
            f"duplicate bar for {row['symbol']} at {row['ts'].isoformat()}",
            hint="validate the bars first (moola data ingest resolves duplicates)",
        )
    step = int(tf.step.total_seconds()) * 10**9
    on_grid = (pl.col("_ns") % step == 0) if tf.is_intraday else pl.lit(True)
    df = df.with_columns(_on=on_grid)
    names = sorted(df.get_column("symbol").unique().to_list())
    ts_of = {
        s: np.sort(g.filter(pl.col("_on")).get_column("_ns").to_numpy())
        for (s,), g in df.group_by("symbol")
    }
    empty = [s for s in names if ts_of[s].size == 0]
    if empty:
        raise AlignmentError(f"symbols {empty} have no bar on the {tf.value} grid")
    firsts = {s: int(ts_of[s][0]) for s in names}
    lasts = {s: int(ts_of[s][-1]) for s in names}
    start, end = max(firsts.values()), min(lasts.values())
    if start > end:
        spans = ", ".join(f"{s} {_dt(firsts[s]).isoformat()}..{_dt(lasts[s]).isoformat()}"
                          for s in names)
        raise AlignmentError(f"the symbols share no time span: {spans}")
    if tf.is_intraday:
        clock = np.arange(min(firsts.values()), max(lasts.values()) + 1, step, dtype=np.int64)
    else:
        clock = np.unique(np.concatenate([ts_of[s] for s in names]))
    span = clock[(clock >= start) & (clock <= end)]
    common = span
    for s in names:
        common = common[np.isin(common, ts_of[s], assume_unique=True)]

    accounts = []
    for s in names:
        t = ts_of[s]
        inside = t[(t >= start) & (t <= end)]
        miss = span[~np.isin(span, inside, assume_unique=True)]
        n_bars = int(df.filter(pl.col("symbol") == s).height)
        accounts.append(SymbolAlignment(
            symbol=s,
            first_ts=_dt(firsts[s]),
            last_ts=_dt(lasts[s]),
            bars=n_bars,
            late_start=int(np.searchsorted(clock, firsts[s])),
            dropped_before=int(np.sum(t < start)),
            dropped_after=int(np.sum(t > end)),
            off_clock=n_bars - t.size,
            missing=int(miss.size),
            absent_elsewhere=int(inside.size - common.size),
            kept=int(common.size),
            first_missing=tuple(_dt(int(x)) for x in miss[:5]),
        ))
    kept = (
        df.filter(pl.col("_on"))
        .join(pl.DataFrame({"_ns": pl.Series(common, dtype=pl.Int64)}), on="_ns", how="semi")
        .drop("_ns", "_on")
        .sort("symbol", "ts")
    )
    return Alignment(
        bars=kept,
        timestamps=pl.Series("ts", common, dtype=pl.Int64).cast(TS_DTYPE),
        timeframe=tf,
        start=_dt(start),
        end=_dt(end),
        symbols=tuple(accounts),
    )


def _dt(ns: int) -> datetime:
    """Epoch ns -> aware UTC datetime (bars are minute-aligned; microseconds suffice)."""
    return pl.Series([ns], dtype=pl.Int64).cast(TS_DTYPE).item()
