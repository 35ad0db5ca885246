"""Timestamp parsing for every reader: epoch numbers (unit by magnitude), ISO dates and
datetimes, native datetimes; all to UTC nanoseconds, every failure naming the line."""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import cast

import numpy as np
import polars as pl

from moola.data._errors import IngestError
from moola.data._schema import TS_DTYPE


def epoch_unit(x: float) -> str:
    ax = abs(x)
    if ax < 1e11:
        return "s"
    if ax < 1e14:
        return "ms"
    if ax < 1e17:
        return "us"
    return "ns"


_OFFSET_RE = re.compile(r"(Z|[+-]\d{2}:?\d{2})$")


def parse_timestamps(path: Path, values: list[str] | pl.Series, lines: np.ndarray) -> pl.Series:
    """Epoch numbers (unit by magnitude), ISO dates or datetimes; one UTC offset per file."""
    s = values if isinstance(values, pl.Series) else pl.Series("ts", values, dtype=pl.String)
    if s.null_count():
        i = int(s.is_null().arg_true()[0])
        raise IngestError("missing timestamp", path=path, line=int(lines[i]), column="ts")
    if isinstance(s.dtype, pl.Datetime):
        out = s.dt.replace_time_zone("UTC") if s.dtype.time_zone is None else s.dt.convert_time_zone("UTC")
        return out.cast(TS_DTYPE).alias("ts")
    if s.dtype == pl.Date:
        return s.cast(pl.Datetime("ns")).dt.replace_time_zone("UTC").alias("ts")
    if s.dtype.is_numeric():
        return _from_epoch(path, s.cast(pl.Float64), lines)
    s = s.str.strip_chars()
    as_num = s.cast(pl.Float64, strict=False)
    if as_num.null_count() == 0:
        return _from_epoch(path, as_num, lines)
    if as_num.null_count() < len(s):
        i = int(as_num.is_null().arg_true()[0])
        raise IngestError(
            f"timestamp {s[i]!r} mixes with numeric epoch timestamps elsewhere in the file",
            path=path, line=int(lines[i]), column="ts",
        )
    offsets = s.str.extract(r"(Z|[+-]\d{2}:?\d{2})$", 1)
    has_off = offsets.is_not_null()
    if has_off.any() and not has_off.all():
        i = int((~has_off).arg_true()[0])
        j = int(has_off.arg_true()[0])
        raise IngestError(
            f"timestamp {s[i]!r} has no UTC offset while line {int(lines[j])} has {offsets[j]!r}",
            path=path, line=int(lines[i]), column="ts", hint="mixed time zones",
        )
    if has_off.any():
        norm = offsets.str.replace("Z", "+00:00").str.replace(r"^([+-]\d{2})(\d{2})$", "$1:$2")
        distinct = norm.unique()
        if len(distinct) > 1:
            first = norm[0]
            i = int((norm != first).arg_true()[0])
            raise IngestError(
                f"timestamp {s[i]!r} has offset {norm[i]} but line {int(lines[0])} has {first}",
                path=path, line=int(lines[i]), column="ts",
                hint="mixed time zones in one file; export in one zone (UTC)",
            )
        parsed = _try_formats(s, ["%Y-%m-%d %H:%M:%S%:z", "%Y-%m-%dT%H:%M:%S%:z",
                                  "%Y-%m-%d %H:%M:%S%.f%:z", "%Y-%m-%dT%H:%M:%S%.f%:z",
                                  "%Y-%m-%dT%H:%M:%S%z", "%Y-%m-%d %H:%M:%S%z",
                                  "%Y-%m-%dT%H:%M:%S%.fZ", "%Y-%m-%dT%H:%M:%SZ"],
                              aware=True)
    else:
        parsed = _try_formats(s, ["%Y-%m-%d", "%Y-%m-%d %H:%M:%S", "%Y-%m-%dT%H:%M:%S",
                                  "%Y-%m-%d %H:%M", "%Y-%m-%d %H:%M:%S%.f",
                                  "%Y-%m-%dT%H:%M:%S%.f", "%Y/%m/%d", "%m/%d/%Y"],
                              aware=False)
    if parsed is None or parsed.null_count():
        best = parsed if parsed is not None else pl.Series([None] * len(s), dtype=TS_DTYPE)
        i = int(best.is_null().arg_true()[0])
        raise IngestError(
            f"unparseable timestamp {s[i]!r}", path=path, line=int(lines[i]), column="ts",
            hint="expected ISO-8601 (2023-03-01 00:00:00+00:00), a date, or unix epoch numbers",
        )
    return parsed.alias("ts")


def _try_formats(s: pl.Series, formats: list[str], *, aware: bool) -> pl.Series | None:
    """The format that parses the most rows (polars needs one format per column)."""
    best: pl.Series | None = None
    for f in formats:
        try:
            p = s.str.strptime(pl.Datetime("ns", "UTC" if aware else None), f, strict=False)
        except pl.exceptions.ComputeError:
            continue
        if best is None or p.null_count() < best.null_count():
            best = p
        if p.null_count() == 0:
            break
    if best is None:
        return None
    if not aware:
        best = best.dt.replace_time_zone("UTC")
    return best.dt.convert_time_zone("UTC").cast(TS_DTYPE)


def _from_epoch(path: Path, s: pl.Series, lines: np.ndarray) -> pl.Series:
    if s.is_nan().any() or s.is_infinite().any():
        i = int((s.is_nan() | s.is_infinite()).arg_true()[0])
        raise IngestError(f"timestamp {s[i]} is not finite", path=path, line=int(lines[i]), column="ts")
    units = {epoch_unit(float(cast(float, x))) for x in (s.min(), s.max())}
    if len(units) > 1:
        codes = np.searchsorted([1e11, 1e14, 1e17], np.abs(s.to_numpy()), side="right")
        i = int(np.argmax(codes != codes[0]))  # first row whose unit differs from the first's
        raise IngestError(
            f"epoch timestamps mix units ({sorted(units)}): min {s.min()!r}, max {s.max()!r}",
            path=path, line=int(lines[i]), column="ts",
        )
    unit = units.pop()
    scale = {"s": 1e9, "ms": 1e6, "us": 1e3, "ns": 1.0}[unit]
    too_big = (s * scale).abs() >= 2.0**63
    if too_big.any():
        i = int(too_big.arg_true()[0])
        raise IngestError(f"epoch timestamp {s[i]} ({unit}) is out of range", path=path,
                          line=int(lines[i]), column="ts")
    ns = (s * scale).round().cast(pl.Int64)
    if not math.isclose(float(cast(float, s.min())) * scale, float(cast(int, ns.min())), rel_tol=1e-12,
                        abs_tol=1e3):
        raise IngestError("epoch timestamps overflow", path=path, column="ts")
    return ns.cast(pl.Datetime("ns")).dt.replace_time_zone("UTC").alias("ts")
