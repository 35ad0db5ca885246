"""Timestamp parsing for every reader: epoch numbers (unit by magnitude), ISO dates and
datetimes, native datetimes; all to UTC nanoseconds.

A row whose timestamp is missing, unparseable or outside what the store can hold (nanoseconds
since 1970 in 64 bits: 1677-09-21 .. 2262-04-11) is not an exception here but a *row fault*:
its timestamp is null and the returned detail says why, so validation can list every bad line
at once and apply the ``bad_timestamp`` policy. What concerns the whole file (epoch units or
time zones mixed in a way nobody can resolve) raises an ``IngestError`` naming the line.
"""

from __future__ import annotations

from pathlib import Path
from typing import cast

import numpy as np
import polars as pl

from moola.data._errors import IngestError
from moola.data._schema import TS_DTYPE

# The representable range of the store's ns timestamps, in microseconds (parsing is done in us,
# whose range is +-290k years, so a year-2262+ string cannot wrap around silently as ns does).
_NS_MIN_US = -(2**63) // 1000 + 1
_NS_MAX_US = (2**63 - 1) // 1000
RANGE_TEXT = "1677-09-21 .. 2262-04-11 UTC"
_EPOCH_SCALE = {"s": 1e9, "ms": 1e6, "us": 1e3, "ns": 1.0}

_AWARE_FORMATS = [
    "%Y-%m-%d %H:%M:%S%:z", "%Y-%m-%dT%H:%M:%S%:z", "%Y-%m-%d %H:%M:%S%.f%:z",
    "%Y-%m-%dT%H:%M:%S%.f%:z", "%Y-%m-%dT%H:%M:%S%z", "%Y-%m-%d %H:%M:%S%z",
    "%Y-%m-%dT%H:%M:%S%.fZ", "%Y-%m-%dT%H:%M:%SZ", "%Y-%m-%d %H:%M%:z", "%Y-%m-%dT%H:%M%:z",
]
_NAIVE_FORMATS = [
    "%Y-%m-%d", "%Y-%m-%d %H:%M:%S", "%Y-%m-%dT%H:%M:%S", "%Y-%m-%d %H:%M", "%Y-%m-%dT%H:%M",
    "%Y-%m-%d %H:%M:%S%.f", "%Y-%m-%dT%H:%M:%S%.f", "%Y/%m/%d", "%m/%d/%Y",
]
OFFSET_PATTERN = r"(Z|[+-]\d{2}:?\d{2})$"  # a trailing UTC offset: Z, +05:30, -0400
_EXPECTED = "expected ISO-8601 (2023-03-01 00:00:00+00:00), a date, or unix epoch numbers"


def epoch_unit(x: float) -> str:
    """Unit of an epoch number by magnitude (s below 1e11, ms below 1e14, us below 1e17)."""
    ax = abs(x)
    if ax < 1e11:
        return "s"
    if ax < 1e14:
        return "ms"
    if ax < 1e17:
        return "us"
    return "ns"


def parse_timestamps(
    path: Path, values: list[str] | pl.Series, lines: np.ndarray
) -> tuple[pl.Series, pl.Series]:
    """(ts in UTC ns, fault detail per row): a row's detail is null when its timestamp is good.

    Rows in one file may carry different UTC offsets (a local-time export across a daylight-saving
    change, ``-04:00`` then ``-05:00``): each converts to UTC on its own.
    """
    s = values if isinstance(values, pl.Series) else pl.Series("ts", values, dtype=pl.String)
    dtype = s.dtype
    if isinstance(dtype, pl.Datetime):
        naive = s.dt.convert_time_zone("UTC").dt.replace_time_zone(None) if dtype.time_zone else s
        return _checked(naive.dt.cast_time_unit("us"), s.cast(pl.String), s.is_null())
    if dtype == pl.Date:
        return _checked(s.cast(pl.Datetime("us")), s.cast(pl.String), s.is_null())
    if dtype == pl.Boolean or dtype == pl.Time or not (dtype.is_numeric() or dtype == pl.String):
        what = "a time of day without a date" if dtype == pl.Time else f"type {dtype}"
        raise IngestError(f"the timestamp column holds {what}", path=path, column="ts",
                          hint="expected datetimes, dates, epoch numbers or ISO-8601 strings")
    if dtype.is_numeric():
        return _from_epoch(path, s.cast(pl.Float64), lines)
    s = s.str.strip_chars()
    missing = s.is_null() | (s == "")
    as_num = s.cast(pl.Float64, strict=False)
    numeric = as_num.is_not_null()
    if int(numeric.sum()) * 2 > int((~missing).sum()):  # mostly epoch numbers
        ts, detail = _from_epoch(path, as_num, lines)
        stray = pl.DataFrame({"s": s, "d": detail, "bad": ~missing & ~numeric}).select(
            pl.when(pl.col("bad"))
            .then(pl.format("timestamp '{}' is not an epoch number like the rest of the file", pl.col("s")))
            .otherwise(pl.col("d"))
        ).to_series()
        return ts, stray.alias("detail")
    return _from_strings(path, s, missing, lines)


def _from_strings(
    path: Path, s: pl.Series, missing: pl.Series, lines: np.ndarray
) -> tuple[pl.Series, pl.Series]:
    """ISO dates and datetimes; offsets per row, or none at all (read as UTC)."""
    offsets = s.str.extract(OFFSET_PATTERN, 1)
    has_off = offsets.is_not_null()
    present = ~missing
    if (has_off & present).any() and (~has_off & present).any():
        i = int((~has_off & present).arg_true()[0])
        j = int(has_off.arg_true()[0])
        raise IngestError(
            f"timestamp {s[i]!r} has no UTC offset while line {int(lines[j])} has {offsets[j]!r}",
            path=path, line=int(lines[i]), column="ts",
            hint="mixed time zones: a local time without an offset is ambiguous (daylight saving "
            "repeats an hour each autumn); export every row in UTC or with its UTC offset",
        )
    aware = bool((has_off & present).any())
    parsed = _best_format(s, _AWARE_FORMATS if aware else _NAIVE_FORMATS, aware=aware)
    return _checked(parsed, s, missing)


def _best_format(s: pl.Series, formats: list[str], *, aware: bool) -> pl.Series:
    """Naive UTC microseconds by the format that parses the most rows (polars needs one per column)."""
    best: pl.Series | None = None
    for f in formats:
        try:
            p = s.str.strptime(pl.Datetime("us", "UTC" if aware else None), f, strict=False)
        except pl.exceptions.ComputeError:
            continue
        if best is None or p.null_count() < best.null_count():
            best = p
        if p.null_count() == s.null_count():
            break
    if best is None:
        return pl.Series("ts", [None] * len(s), dtype=pl.Datetime("us"))
    return best.dt.replace_time_zone(None) if aware else best


def _checked(us: pl.Series, text: pl.Series, missing: pl.Series) -> tuple[pl.Series, pl.Series]:
    """Naive-UTC microsecond datetimes -> (UTC ns, detail): unparsed and out-of-range rows fault."""
    raw = us.cast(pl.Int64)
    unparsed = raw.is_null() & ~missing
    out_of_range = raw.is_not_null() & ((raw < _NS_MIN_US) | (raw > _NS_MAX_US))
    detail = (
        pl.when(missing).then(pl.lit("missing timestamp"))
        .when(unparsed).then(pl.format("unparseable timestamp '{}' ({})", text, pl.lit(_EXPECTED)))
        .when(out_of_range).then(pl.format("timestamp '{}' is out of range ({})", text,
                                           pl.lit(RANGE_TEXT)))
        .otherwise(None)
    )
    frame = pl.DataFrame({"raw": raw, "text": text.cast(pl.String), "missing": missing,
                          "unparsed": unparsed, "out_of_range": out_of_range})
    detail_s = frame.select(detail.alias("detail")).get_column("detail")
    ns = (pl.when(out_of_range).then(None).otherwise(raw).cast(pl.Int64) * 1000)
    ts = frame.select(ns.alias("ts")).get_column("ts").cast(pl.Datetime("ns")).dt.replace_time_zone("UTC")
    return ts.cast(TS_DTYPE).alias("ts"), detail_s.cast(pl.String).alias("detail")


def _from_epoch(path: Path, s: pl.Series, lines: np.ndarray) -> tuple[pl.Series, pl.Series]:
    """Epoch numbers, one unit per file by magnitude; non-finite or unrepresentable rows fault."""
    finite = s.is_not_null() & s.is_finite()
    good = s.filter(finite)
    units = {epoch_unit(float(cast(float, x))) for x in (good.min(), good.max())} if len(good) else {"s"}
    if len(units) > 1:
        ok = finite.to_numpy()
        codes = np.searchsorted([1e11, 1e14, 1e17], np.abs(good.to_numpy()), side="right")
        i = int(np.flatnonzero(ok)[int(np.argmax(codes != codes[0]))])  # first row of another unit
        raise IngestError(
            f"epoch timestamps mix units ({sorted(units)}): min {good.min()!r}, max {good.max()!r}",
            path=path, line=int(lines[i]), column="ts",
        )
    scale = _EPOCH_SCALE[units.pop()]
    ns_float = s * scale
    in_range = finite & (ns_float.abs() < 2.0**63 - 1024)
    ns = pl.DataFrame({"v": ns_float, "ok": in_range}).select(
        pl.when(pl.col("ok")).then(pl.col("v").round()).otherwise(None).cast(pl.Int64)
    ).to_series()
    frame = pl.DataFrame({"s": s, "finite": finite, "ok": in_range})
    detail = frame.select(
        pl.when(pl.col("s").is_null()).then(pl.lit("missing timestamp"))
        .when(~pl.col("finite")).then(pl.format("timestamp {} is not finite", pl.col("s")))
        .when(~pl.col("ok")).then(pl.format("epoch timestamp {} is out of range ({})", pl.col("s"),
                                             pl.lit(RANGE_TEXT)))
        .otherwise(None).alias("d")
    ).get_column("d")
    ts = ns.cast(pl.Datetime("ns")).dt.replace_time_zone("UTC").cast(TS_DTYPE)
    return ts.alias("ts"), detail.cast(pl.String).alias("detail")
