"""Hand-labelled windows: a labels file joined to a FeatureMatrix, with every bad row explained.

A labels file (CSV or Parquet) has ``symbol, end_ts, label`` and optionally
``pointer_start, pointer_end`` (0-based bar offsets inside the window, start <= end). A row
names the window of ``window`` bars of ``symbol`` whose last bar is at ``end_ts``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from moola._io import atomic_write
from moola.data import TS_DTYPE
from moola.datasets.windows import flag_prefix, gap_flags, nan_rows, symbol_ranges, ts_ns
from moola.features import FeatureMatrix

__all__ = ["LabeledWindows", "load_labels", "save_labels"]

REQUIRED = ("symbol", "end_ts", "label")
POINTERS = ("pointer_start", "pointer_end")
MEMORY_SOURCE = "<memory>"

# Every accepted timestamp spelling; each is tried and the first that parses wins.
_TS_FORMATS: tuple[str, ...] = (
    *(
        f"%Y-%m-%d{sep}%H:%M{sec}{tz}"
        for sep in (" ", "T")
        for sec in (":%S%.f", ":%S", "")
        for tz in ("%:z", "%z", "Z", "")
    ),
    "%Y-%m-%d",
)


def _parse_ts(col: pl.Series) -> pl.Series:
    """Any of ``_TS_FORMATS`` to Datetime(ns, UTC); naive times are taken as UTC; bad -> null."""
    s = col.cast(pl.String).str.strip_chars()
    tried = [
        s.str.to_datetime(format=f, time_unit="ns", time_zone="UTC", strict=False)
        for f in _TS_FORMATS
    ]
    return pl.select(pl.coalesce(tried)).to_series().alias(col.name)


def _to_utc_ts(col: pl.Series) -> pl.Series:
    """Typed timestamp column from whatever the file stored (string, date, datetime)."""
    dtype = col.dtype
    if dtype == pl.String or dtype == pl.Null:
        return _parse_ts(col)
    if dtype == pl.Date:
        return col.cast(pl.Datetime("ns")).dt.replace_time_zone("UTC")
    if isinstance(dtype, pl.Datetime):
        col = col.dt.cast_time_unit("ns")
        if dtype.time_zone is None:
            return col.dt.replace_time_zone("UTC")
        return col.dt.convert_time_zone("UTC")
    raise TypeError(f"end_ts must be a timestamp or ISO string, got dtype {dtype}")


def _to_int(col: pl.Series) -> tuple[pl.Series, pl.Series]:
    """(Int64 values, bool 'present but not an integer') for a pointer column."""
    dtype = col.dtype
    if dtype == pl.String or dtype == pl.Null:
        s = col.cast(pl.String).str.strip_chars()
        s = pl.select(pl.when(s.str.len_chars() == 0).then(None).otherwise(s)).to_series()
        ints = s.cast(pl.Int64, strict=False)
        return ints, s.is_not_null() & ints.is_null()
    if dtype.is_integer():
        return col.cast(pl.Int64), pl.Series([False] * col.len())
    if dtype.is_float():
        ok = col.is_null() | (col.is_finite() & (col.round(0) == col))
        ints = pl.select(pl.when(ok).then(col).otherwise(None)).to_series().cast(pl.Int64)
        return ints, ~ok
    raise TypeError(f"{col.name} must hold integers, got dtype {dtype}")


def _to_label(col: pl.Series, classes: list[str] | None) -> pl.Series:
    """String labels; integer codes become ``classes[i]`` when classes are given."""
    if col.dtype.is_integer() or (col.dtype == pl.String and classes):
        s = col.cast(pl.String).str.strip_chars()
        if not classes:
            return s
        known = set(classes)
        mapped = [
            v if v is None or v in known else _code_to_class(v, classes) for v in s.to_list()
        ]
        return pl.Series(col.name, mapped, dtype=pl.String)
    return col.cast(pl.String).str.strip_chars()


def _code_to_class(v: str, classes: list[str]) -> str:
    """``'1'`` -> ``classes[1]``; anything else is kept so it is rejected as unknown later."""
    try:
        i = int(v)
    except ValueError:
        return v
    return classes[i] if 0 <= i < len(classes) else v


def _type_labels(
    raw: pl.DataFrame, classes: list[str] | None, source: str
) -> pl.DataFrame:
    """Typed label frame plus ``file_row``, ``parse_error`` and ``source`` bookkeeping columns."""
    missing = [c for c in REQUIRED if c not in raw.columns]
    if missing:
        raise ValueError(f"{source}: labels lack required column(s) {missing}; has {raw.columns}")
    has_ptr = [c in raw.columns for c in POINTERS]
    if any(has_ptr) and not all(has_ptr):
        raise ValueError(f"{source}: give both {POINTERS} or neither")
    n = raw.height
    symbol = raw.get_column("symbol").cast(pl.String).str.strip_chars()
    end_ts = _to_utc_ts(raw.get_column("end_ts"))
    label = _to_label(raw.get_column("label"), classes)
    errors: list[list[str]] = [[] for _ in range(n)]
    raw_ts = raw.get_column("end_ts").cast(pl.String).to_list()
    for i in np.flatnonzero(end_ts.is_null().to_numpy()):
        errors[i].append(f"unparsable end_ts {raw_ts[i]!r}")
    for i in np.flatnonzero(symbol.fill_null("").eq("").to_numpy()):
        errors[i].append("missing symbol")
    for i in np.flatnonzero(label.fill_null("").eq("").to_numpy()):
        errors[i].append("missing label")
    cols: dict[str, pl.Series] = {
        "file_row": (
            raw.get_column("file_row").cast(pl.Int64) if "file_row" in raw.columns
            else pl.Series("file_row", np.arange(1, n + 1, dtype=np.int64))
        ),
        "symbol": symbol,
        "end_ts": end_ts,
        "label": label,
    }
    if all(has_ptr):
        for c in POINTERS:
            ints, bad = _to_int(raw.get_column(c))
            raw_p = raw.get_column(c).cast(pl.String).to_list()
            for i in np.flatnonzero(bad.to_numpy()):
                errors[i].append(f"unparsable {c} {raw_p[i]!r}")
            cols[c] = ints.alias(c)
    parse_error = pl.Series(
        "parse_error", ["; ".join(e) if e else None for e in errors], dtype=pl.String
    )
    if "source" in raw.columns:
        source_col = raw.get_column("source").cast(pl.String).fill_null(source)
    else:
        source_col = pl.Series("source", [source] * n, dtype=pl.String)
    out = pl.DataFrame(cols).with_columns(parse_error, source_col.alias("source"))
    return out


def load_labels(path: str | Path, classes: list[str] | None = None) -> pl.DataFrame:
    """Read and type a labels file without dropping anything; ``from_labels`` judges rows.

    Columns: ``file_row`` (1-based data row), ``symbol``, ``end_ts`` (Datetime ns UTC; naive
    times are UTC), ``label`` (String; integer codes map to ``classes[i]`` when given),
    optional Int64 pointers, ``parse_error`` (why a cell did not parse, else null), ``source``.
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix in (".parquet", ".pq"):
        raw = pl.read_parquet(path)
    elif suffix in (".csv", ".txt"):
        raw = pl.read_csv(path, infer_schema=False)  # all String: we parse and report per row
    else:
        raise ValueError(f"{path}: labels must be .csv or .parquet, got {suffix!r}")
    return _type_labels(raw, classes, str(path))


def save_labels(df: pl.DataFrame, path: str | Path) -> Path:
    """Write labels as CSV or Parquet (by suffix) in the form ``load_labels`` reads back."""
    path = Path(path)
    missing = [c for c in REQUIRED if c not in df.columns]
    if missing:
        raise ValueError(f"labels lack required column(s) {missing}")
    cols = [*REQUIRED, *[c for c in POINTERS if c in df.columns]]
    out = df.select(cols).with_columns(_to_utc_ts(df.get_column("end_ts")))
    suffix = path.suffix.lower()
    if suffix in (".parquet", ".pq"):
        return atomic_write(path, out.write_parquet)
    if suffix in (".csv", ".txt"):
        text = out.with_columns(pl.col("end_ts").dt.to_string("%Y-%m-%d %H:%M:%S%.f%:z"))
        return atomic_write(path, text.write_csv)
    raise ValueError(f"{path}: labels must be .csv or .parquet, got {suffix!r}")


@dataclass(frozen=True)
class _Located:
    """Where each label row's window sits in the matrix, and what is wrong with it."""

    sym_code: np.ndarray  # (n,) index into the matrix's symbols, -1 unknown
    end_row: np.ndarray  # (n,) row of the bar at end_ts, -1 none
    start_row: np.ndarray  # (n,) first window row (0 where the window is not full)
    history: np.ndarray  # (n,) bars of the symbol up to and at end_ts
    full: np.ndarray  # (n,) bool: end bar found and a whole window of history
    has_nan: np.ndarray  # (n,) bool
    gap_row: np.ndarray  # (n,) first row inside the window with gap_before, -1 none


def _locate(fm: FeatureMatrix, labels: pl.DataFrame, window: int) -> _Located:
    """Vectorised join of label rows to matrix rows by (symbol, end_ts) plus window checks."""
    n = labels.height
    keys = fm.keys.select("symbol", pl.col("ts").cast(TS_DTYPE)).with_row_index("_row")
    joined = labels.select("symbol", pl.col("end_ts").cast(TS_DTYPE)).join(
        keys, left_on=["symbol", "end_ts"], right_on=["symbol", "ts"], how="left",
        maintain_order="left",
    )
    if joined.height != n:  # duplicate keys in fm would fan rows out
        raise ValueError("FeatureMatrix keys have duplicate (symbol, ts) rows")
    end_row = joined.get_column("_row").cast(pl.Int64).fill_null(-1).to_numpy()
    names, bounds = symbol_ranges(fm)
    sym_index = {s: i for i, s in enumerate(names)}
    sym_code = np.array(
        [sym_index.get(s, -1) if s else -1 for s in labels.get_column("symbol").to_list()],
        dtype=np.int64,
    )
    found = end_row >= 0
    sym_start = np.where(sym_code >= 0, bounds[np.maximum(sym_code, 0), 0], 0)
    history = np.where(found, end_row - sym_start + 1, 0)
    full = found & (history >= window)
    start_row = np.where(full, end_row - window + 1, 0)
    stop = np.where(full, end_row + 1, 0)  # one past the window's last row
    nan_p = flag_prefix(nan_rows(fm.values))
    has_nan = full & (nan_p[stop] > nan_p[start_row])
    gaps = gap_flags(fm.keys)
    gap_p = flag_prefix(gaps)
    has_gap = full & (gap_p[stop] > gap_p[np.minimum(start_row + 1, stop)])
    gap_row = np.full(n, -1, dtype=np.int64)
    if has_gap.any():
        gap_rows = np.flatnonzero(gaps)
        gap_row[has_gap] = gap_rows[np.searchsorted(gap_rows, start_row[has_gap] + 1)]
    return _Located(sym_code, end_row, start_row, history, full, has_nan, gap_row)


def _pointer_reasons(ps: float, pe: float, window: int) -> list[str]:
    """Why a (start, end) pointer pair is invalid for this window length; [] if valid."""
    if np.isnan(ps) or np.isnan(pe):
        return ["pointer missing: pointer_start and pointer_end are both required"]
    out = []
    if not (0 <= ps < window and 0 <= pe < window):
        out.append(f"pointer outside window: ({int(ps)}, {int(pe)}) not in [0, {window - 1}]")
    if ps > pe:
        out.append(f"pointer start > end: {int(ps)} > {int(pe)}")
    return out


def _row_reasons(
    labels: pl.DataFrame,
    loc: _Located,
    ptr: np.ndarray | None,
    window: int,
    allow_gaps: bool,
    ts_all: pl.Series,
) -> list[list[str]]:
    """Every reason each label row cannot be used (empty list = row is fine so far)."""
    parse_err = labels.get_column("parse_error").to_list()
    symbols = labels.get_column("symbol").to_list()
    end_ts = labels.get_column("end_ts").to_list()
    file_rows = labels.get_column("file_row").to_list()
    reasons: list[list[str]] = [[e] if e else [] for e in parse_err]
    seen: dict[tuple[Any, Any], int] = {}
    for i, r in enumerate(reasons):
        key = (symbols[i], end_ts[i])
        if key in seen and end_ts[i] is not None:
            r.append(f"duplicate of row {seen[key]}")
        else:
            seen.setdefault(key, file_rows[i])
        if symbols[i] and loc.sym_code[i] < 0:
            r.append(f"unknown symbol {symbols[i]!r}")
        elif loc.sym_code[i] >= 0 and end_ts[i] is not None and loc.end_row[i] < 0:
            r.append(f"no bar at end_ts {end_ts[i]} for {symbols[i]}")
        elif loc.end_row[i] >= 0 and not loc.full[i]:
            r.append(
                f"not enough history: {int(loc.history[i])} bars up to end_ts, "
                f"window needs {window}"
            )
        if loc.gap_row[i] >= 0 and not allow_gaps:
            r.append(f"gap inside window: bars missing before {ts_all[int(loc.gap_row[i])]}")
        if loc.has_nan[i]:
            r.append("NaN inside window (warm-up or missing feature values)")
        if ptr is not None and "unparsable pointer" not in (parse_err[i] or ""):
            r.extend(_pointer_reasons(ptr[i, 0], ptr[i, 1], window))
    return reasons


@dataclass(frozen=True)
class LabeledWindows:
    """Accepted labelled windows as dense arrays, plus the rows that were refused and why."""

    X: np.ndarray  # (n, window, F) float32, C-contiguous copy
    y: np.ndarray  # (n,) int64 index into classes
    classes: list[str]
    pointers: np.ndarray | None  # (n, 2) int64 [start, end] bar offsets, or None
    meta: pl.DataFrame  # file_row, symbol, start_ts, end_ts, start_row, end_row
    rejected: pl.DataFrame  # row, symbol, end_ts, reason
    window: int
    names: tuple[str, ...]
    matrix: FeatureMatrix

    def __len__(self) -> int:
        return int(self.y.shape[0])

    @classmethod
    def from_labels(
        cls,
        fm: FeatureMatrix,
        labels: pl.DataFrame,
        window: int,
        classes: list[str] | None = None,
        allow_gaps: bool = False,
        *,
        strict: bool = False,
    ) -> LabeledWindows:
        """Join labels to ``fm`` by (symbol, end_ts); keep good rows, explain every bad one.

        ``classes`` fixes the class order (y indexes it); otherwise it is the sorted set of
        labels on otherwise-good rows. Pointer columns that are entirely empty count as
        absent (``pointers`` is None). ``strict=True`` raises one ValueError listing all bad
        rows (source, file row, reason) instead of returning them in ``rejected``.
        """
        if window < 1:
            raise ValueError(f"window must be >= 1, got {window}")
        if "parse_error" not in labels.columns:  # not from load_labels: type and check cells
            labels = _type_labels(labels, classes, MEMORY_SOURCE)
        if classes is not None:
            classes = [str(c) for c in classes]
            if not classes or len(set(classes)) != len(classes):
                raise ValueError(f"classes must be non-empty and unique, got {classes}")
        n = labels.height
        has_ptr = all(c in labels.columns for c in POINTERS) and bool(
            labels.select(pl.any_horizontal(pl.col(POINTERS).is_not_null()).any()).item()
        )
        ptr = labels.select(POINTERS).to_numpy().astype(np.float64) if has_ptr else None
        ts_all = fm.keys.get_column("ts")
        loc = _locate(fm, labels, window)
        reasons = _row_reasons(labels, loc, ptr, window, allow_gaps, ts_all)

        label_list = labels.get_column("label").to_list()
        if classes is None:  # inferred from good rows, so no row can hold an unknown label
            classes = sorted(
                {lab for lab, r in zip(label_list, reasons, strict=True) if lab and not r}
            )
        else:
            for i, lab in enumerate(label_list):
                if lab and lab not in classes:
                    reasons[i].append(f"unknown label {lab!r} (classes: {classes})")
        class_index = {c: k for k, c in enumerate(classes)}

        bad = np.array([bool(r) for r in reasons], dtype=bool)
        bad_s = pl.Series(bad)
        file_rows = labels.get_column("file_row").to_list()
        rejected = pl.DataFrame(
            {
                "row": labels.get_column("file_row").cast(pl.Int64).filter(bad_s),
                "symbol": labels.get_column("symbol").filter(bad_s),
                "end_ts": labels.get_column("end_ts").cast(TS_DTYPE).filter(bad_s),
                "reason": pl.Series(["; ".join(r) for r in reasons if r], dtype=pl.String),
            }
        )
        if strict and rejected.height:
            sources = labels.get_column("source").to_list()
            symbols = labels.get_column("symbol").to_list()
            end_ts = labels.get_column("end_ts").to_list()
            lines = [
                f"{sources[i]}: row {file_rows[i]} ({symbols[i]}, {end_ts[i]}): "
                f"{'; '.join(reasons[i])}"
                for i in np.flatnonzero(bad)
            ]
            raise ValueError(
                f"{rejected.height} of {n} label rows rejected:\n" + "\n".join(lines)
            )

        ok = np.flatnonzero(~bad)
        rows = loc.start_row[ok][:, None] + np.arange(window, dtype=np.int64)  # (n, T)
        X = np.ascontiguousarray(np.take(fm.values, rows, axis=0))  # (n, T, F)
        y = np.array([class_index[label_list[i]] for i in ok], dtype=np.int64)
        pointers = ptr[ok].astype(np.int64) if ptr is not None else None
        s_rows = pl.Series("start_row", loc.start_row[ok], dtype=pl.Int64)
        e_rows = pl.Series("end_row", loc.end_row[ok], dtype=pl.Int64)
        meta = pl.DataFrame(
            {
                "file_row": pl.Series([file_rows[i] for i in ok], dtype=pl.Int64),
                "symbol": fm.keys.get_column("symbol").gather(e_rows),
                "start_ts": ts_all.gather(s_rows),
                "end_ts": ts_all.gather(e_rows),
                "start_row": s_rows,
                "end_row": e_rows,
            }
        )
        return cls(
            X=X, y=y, classes=list(classes), pointers=pointers, meta=meta, rejected=rejected,
            window=int(window), names=tuple(fm.names), matrix=fm,
        )

    def spans(self, horizon: int = 0) -> tuple[np.ndarray, np.ndarray]:
        """(start_ns, end_ns) int64 for purged splits: first window bar, last label bar.

        ``horizon`` is how many bars past ``end_ts`` the label looked; they must exist in the
        same symbol, or this raises rather than reach into the next symbol's rows.
        """
        if horizon < 0:
            raise ValueError(f"horizon must be >= 0, got {horizon}")
        ts = ts_ns(self.matrix.keys)
        start = self.meta.get_column("start_row").to_numpy()
        last = self.meta.get_column("end_row").to_numpy() + horizon
        if horizon and len(self):
            _, bounds = symbol_ranges(self.matrix)
            stop = bounds[np.searchsorted(bounds[:, 1], start, side="right"), 1]
            bad = np.flatnonzero(last >= stop)
            if bad.size:
                raise ValueError(
                    f"horizon {horizon} runs past the symbol's last bar for {bad.size} "
                    f"labelled windows (first: file row {self.meta['file_row'][int(bad[0])]})"
                )
        return ts[start], ts[last]

    def class_counts(self) -> dict[str, int]:
        """Examples per class, in class order (a class may have 0)."""
        counts = np.bincount(self.y, minlength=len(self.classes))
        return {c: int(k) for c, k in zip(self.classes, counts, strict=True)}
