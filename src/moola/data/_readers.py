"""Readers: CSV/Parquet exports of the common venues, and freqtrade data directories
(Feather, Parquet, JSON), into canonical bars with source lines.

Every frame a reader returns carries ``_file`` and ``_line`` (1-based physical line; the
row number + 1 for Parquet and Feather, as if line 1 were a header; the 1-based row of the
list for freqtrade JSON) so that validation can name the exact row at fault.

freqtrade names its files ``BTC_USDT-1m.feather`` (spot) and ``BTC_USDT_USDT-1m-futures.feather``
(futures); the symbol is the pair without separators, ``BTCUSDT``, and a futures pair keeps
its settle currency, ``BTCUSDT:USDT`` (what ``moola data fetch`` stores for ccxt's
``BTC/USDT:USDT``), so spot and futures bars of one pair never merge in one store.
"""

from __future__ import annotations

import csv
import gzip
import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path

import numpy as np
import polars as pl

from moola.data._errors import IngestError
from moola.data._schema import Timeframe
from moola.data._timestamps import epoch_unit, parse_timestamps


class Format(StrEnum):
    """Known export layouts; ``auto`` detects one of the others from the file itself."""

    AUTO = "auto"
    YAHOO = "yahoo"
    BINANCE = "binance"
    KRAKEN = "kraken"
    COINBASE = "coinbase"
    FREQTRADE = "freqtrade"
    GENERIC = "generic"


CSV_SUFFIXES = (".csv", ".txt")
PARQUET_SUFFIXES = (".parquet", ".pq")
FEATHER_SUFFIXES = (".feather",)
JSON_SUFFIXES = (".json", ".json.gz")  # freqtrade's json and jsongz data formats
DATA_SUFFIXES = CSV_SUFFIXES + PARQUET_SUFFIXES + FEATHER_SUFFIXES + JSON_SUFFIXES
FREQTRADE_COLUMNS = ("date", "open", "high", "low", "close", "volume")
# freqtrade candle types whose files hold something other than traded bars.
_FREQTRADE_NOT_BARS = {"mark", "index", "premiumindex", "funding_rate"}
_FREQTRADE_NAME = re.compile(
    r"(?P<base>[A-Za-z0-9]+)_(?P<quote>[A-Za-z0-9]+)(?:_(?P<settle>[A-Za-z0-9]+))?"
    r"-(?P<tf>\d+[smhdwM])(?:-(?P<kind>[A-Za-z_]+))?"
)
VALUE_COLUMNS = ("open", "high", "low", "close", "volume", "adj_close", "trades")

# Headerless layouts by column count: canonical name per position (None = ignored column).
BINANCE_KLINES = (
    "ts", "open", "high", "low", "close", "volume",
    None, None, "trades", None, None, None,
)
BINANCE_6 = ("ts", "open", "high", "low", "close", "volume")
KRAKEN_OHLCVT = ("ts", "open", "high", "low", "close", "volume", "trades")
COINBASE_CANDLES = ("ts", "low", "high", "open", "close", "volume")

# Header names (lower-cased, stripped) that map onto canonical columns.
HEADER_ALIASES: dict[str, str] = {
    "date": "ts", "datetime": "ts", "timestamp": "ts", "time": "ts", "ts": "ts",
    "open_time": "ts", "open time": "ts", "opentime": "ts", "unix": "ts",
    "open": "open", "high": "high", "low": "low", "close": "close",
    "volume": "volume", "vol": "volume",
    "adj close": "adj_close", "adj_close": "adj_close", "adjclose": "adj_close",
    "trades": "trades", "count": "trades", "number_of_trades": "trades",
    "symbol": "symbol", "name": "symbol", "ticker": "symbol",
}

_EXCHANGE_TOKENS = {
    "binance", "binanceus", "kraken", "coinbase", "coinbasepro", "bitstamp", "bybit", "okx",
    "yahoo", "data", "ohlc", "ohlcv", "candles", "klines", "daily", "minute",
}
_TF_TOKENS = {t.value for t in Timeframe}


@dataclass(frozen=True)
class FreqtradeName:
    """What a freqtrade file name says: ``BTC_USDT_USDT-1m-futures`` -> BTCUSDT:USDT, 1m."""

    symbol: str
    timeframe: Timeframe
    futures: bool


@dataclass(frozen=True)
class RawBars:
    """One source file read into canonical columns, before validation."""

    frame: pl.DataFrame  # canonical columns + _file (str) + _line (int64)
    path: Path
    format: Format
    timeframe: Timeframe | None  # from the file name, if it says; else inferred later


def parse_columns_mapping(spec: str | None) -> dict[str, str] | None:
    """``ts=open_time,open=o,...`` (names or 0-based positions) -> {canonical: source}."""
    if not spec:
        return None
    out: dict[str, str] = {}
    for part in spec.split(","):
        if "=" not in part:
            raise IngestError(
                f"--columns entry '{part}' is not of the form canonical=source",
                hint="e.g. --columns ts=time,open=o,high=h,low=l,close=c,volume=v",
            )
        key, val = (s.strip() for s in part.split("=", 1))
        if key not in ("ts", "symbol", *VALUE_COLUMNS):
            raise IngestError(f"--columns names unknown canonical column '{key}'")
        out[key] = val
    missing = {"ts", "open", "high", "low", "close", "volume"} - set(out)
    if missing:
        raise IngestError(f"--columns lacks {sorted(missing)}")
    return out


def list_input_files(paths: Sequence[str | Path]) -> list[Path]:
    """Expand directories into their data files (sorted); reject what is not data."""
    files: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            found = sorted(f for f in p.iterdir() if f.is_file() and _data_suffix(f) is not None)
            if not found:
                raise IngestError(
                    f"directory holds no data files ({', '.join(DATA_SUFFIXES)})", path=p
                )
            files.extend(found)
        elif p.is_file():
            files.append(p)
        else:
            raise IngestError("no such file or directory", path=p)
    return files


def _data_suffix(path: Path) -> str | None:
    """The data suffix of a file name (``.json.gz`` counts as one), or None."""
    name = path.name.lower()
    return next((s for s in sorted(DATA_SUFFIXES, key=len, reverse=True) if name.endswith(s)), None)


def _stem(path: Path) -> str:
    suffix = _data_suffix(path)
    return path.name[: -len(suffix)] if suffix else path.stem


def freqtrade_name(path: Path) -> FreqtradeName | None:
    """Parse a freqtrade data file name; None when the name is not one. ``read_file`` asks
    only for Feather, Parquet and JSON files (freqtrade writes no CSV; CSV names keep the
    generic rules). A freqtrade name with a timeframe moola does not store, or a candle type
    that is not traded bars (mark, index, premium index, funding rate), is an error."""
    m = _FREQTRADE_NAME.fullmatch(_stem(path))
    if m is None:
        return None
    kind = (m["kind"] or "spot").lower()
    if kind in _FREQTRADE_NOT_BARS:
        raise IngestError(
            f"freqtrade '{m['kind']}' candles are not traded bars", path=path,
            hint="ingest the spot files and the -futures files; leave the others out",
        )
    if kind not in ("spot", "futures"):
        raise IngestError(
            f"unknown freqtrade candle type '{m['kind']}'", path=path,
            hint="freqtrade names spot files PAIR-TF and futures files PAIR-TF-futures",
        )
    if m["tf"] not in _TF_TOKENS:
        raise IngestError(
            f"timeframe '{m['tf']}' in the file name is not one moola stores",
            path=path, hint=f"valid: {', '.join(t.value for t in Timeframe)}",
        )
    futures = kind == "futures"
    if futures != (m["settle"] is not None):
        raise IngestError(
            "freqtrade futures files are named BASE_QUOTE_SETTLE-TF-futures, spot files "
            "BASE_QUOTE-TF; this name mixes the two", path=path,
        )
    symbol = f"{m['base']}{m['quote']}".upper()
    if futures:
        symbol += f":{m['settle'].upper()}"
    return FreqtradeName(symbol=symbol, timeframe=Timeframe(m["tf"]), futures=futures)


def symbol_from_filename(path: Path) -> str | None:
    """``binanceus_BTCUSD_1m_2023-03-01.csv`` -> BTCUSD; ``AAPL_data.csv`` -> AAPL."""
    for tok in re.split(r"[_\-\s.]+", path.stem):
        low = tok.lower()
        if not tok or low in _EXCHANGE_TOKENS or low in _TF_TOKENS or tok.isdigit():
            continue
        if re.fullmatch(r"[A-Za-z][A-Za-z0-9]*", tok):
            return tok.upper()
    return None


def timeframe_from_filename(path: Path) -> Timeframe | None:
    for tok in re.split(r"[_\-\s.]+", path.stem):
        if tok.lower() in _TF_TOKENS:
            return Timeframe(tok.lower())
    return None


def read_file(
    path: Path,
    fmt: Format = Format.AUTO,
    *,
    symbol: str | None = None,
    columns: dict[str, str] | None = None,
) -> RawBars:
    """Read one file into canonical columns; every failure names file, line and column."""
    suffix = _data_suffix(path)
    ft = freqtrade_name(path) if suffix is not None and suffix not in CSV_SUFFIXES else None
    if suffix in JSON_SUFFIXES:
        frame, detected = _read_freqtrade_json(path, fmt, columns)
    elif suffix in PARQUET_SUFFIXES + FEATHER_SUFFIXES:
        frame, detected = _read_parquet(path, fmt, columns, freqtrade=ft is not None)
    elif suffix in CSV_SUFFIXES:
        frame, detected = _read_csv(path, fmt, columns)
    else:
        raise IngestError(
            f"unsupported file type '{path.suffix.lower()}'", path=path,
            hint=f"use one of {', '.join(DATA_SUFFIXES)}",
        )
    frame = _attach_symbol(frame, path, symbol, ft.symbol if ft else symbol_from_filename(path))
    tf = ft.timeframe if ft is not None else timeframe_from_filename(path)
    return RawBars(frame=frame, path=path, format=detected, timeframe=tf)


# ---------------------------------------------------------------------------------- CSV


def _read_csv(
    path: Path, fmt: Format, columns: dict[str, str] | None
) -> tuple[pl.DataFrame, Format]:
    data = path.read_bytes()
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        bom = 3 if data.startswith(b"\xef\xbb\xbf") else 0
        raise IngestError(
            f"not UTF-8 text (byte {e.start + bom})", path=path,
            line=data[: e.start + bom].count(b"\n") + 1,
        ) from e
    rows: list[list[str]] = []
    lines: list[int] = []
    reader = csv.reader(text.splitlines())
    try:
        for rec in reader:
            if not rec or all(not c.strip() for c in rec):
                continue  # blank lines are not data
            rows.append([c.strip() for c in rec])
            lines.append(reader.line_num)
    except csv.Error as e:
        raise IngestError(f"not readable as CSV ({e})", path=path, line=reader.line_num) from e
    if not rows:
        raise IngestError("file is empty: no header and no data rows", path=path)

    header = rows[0] if _looks_like_header(rows[0], columns) else None
    if header is not None:
        rows, lines = rows[1:], lines[1:]
        if not rows:
            raise IngestError("file has a header but no data rows", path=path, line=lines[0] if lines else 1)
    width = len(header) if header is not None else len(rows[0])
    for rec, ln in zip(rows, lines, strict=True):
        if header is not None and [c.lower() for c in rec] == [c.lower() for c in header]:
            raise IngestError("repeated header row inside the data", path=path, line=ln)
        if len(rec) != width:
            raise IngestError(
                f"expected {width} columns (as on the first {'header' if header else 'row'}), "
                f"found {len(rec)}",
                path=path,
                line=ln,
            )
    raw = {i: [r[i] for r in rows] for i in range(width)}
    line_arr = np.asarray(lines, dtype=np.int64)

    if header is not None:
        names = [h.strip().lower() for h in header]
        mapping, detected = _map_header(path, names, fmt, columns)
        source = {canon: raw[names.index(src)] for canon, src in mapping.items()}
    else:
        layout, detected = _headerless_layout(path, raw, width, fmt, columns, lines)
        source = {canon: raw[i] for i, canon in enumerate(layout) if canon is not None}
    return _to_frame(path, source, line_arr, detected), detected


def _looks_like_header(rec: list[str], columns: dict[str, str] | None = None) -> bool:
    """A header row has at least one known column name (or one that ``--columns`` names)
    and no numeric first cell."""
    first = rec[0]
    if _is_number(first):
        return False
    names = set(HEADER_ALIASES)
    if columns is not None:
        names |= {v.strip().lower() for v in columns.values() if not v.strip().isdigit()}
    return any(c.strip().lower() in names for c in rec)


def _is_number(s: str) -> bool:
    try:
        float(s)
    except ValueError:
        return False
    return True


def _map_header(
    path: Path, names: list[str], fmt: Format, columns: dict[str, str] | None
) -> tuple[dict[str, str], Format]:
    if len(set(names)) != len(names):
        dup = sorted({n for n in names if names.count(n) > 1})
        raise IngestError(f"duplicate column names {dup} in the header", path=path, line=1)
    mapping: dict[str, str] = {}
    if columns is not None:
        for canon, src in columns.items():
            src_l = src.lower()
            if src_l.isdigit() and int(src_l) < len(names):
                src_l = names[int(src_l)]
            if src_l not in names:
                raise IngestError(
                    f"--columns maps {canon} to '{src}', which is not in the header {names}",
                    path=path, line=1,
                )
            mapping[canon] = src_l
        return mapping, Format.GENERIC
    for n in names:
        alias = HEADER_ALIASES.get(n)
        if alias is None:
            continue
        if alias in mapping:
            raise IngestError(
                f"columns '{mapping[alias]}' and '{n}' both look like '{alias}'",
                path=path, line=1, hint="pass --format generic --columns to say which",
            )
        mapping[alias] = n
    missing = [c for c in ("ts", "open", "high", "low", "close", "volume") if c not in mapping]
    if missing:
        raise IngestError(
            f"header {names} lacks {missing}",
            path=path, line=1, hint="pass --format generic --columns ts=...,open=...",
        )
    if "adj_close" in mapping or names[0] == "date":
        detected = Format.YAHOO
    elif mapping["ts"] == "open_time":
        detected = Format.BINANCE
    elif names[:6] == ["time", "low", "high", "open", "close", "volume"]:
        detected = Format.COINBASE
    else:
        detected = Format.GENERIC
    if fmt not in (Format.AUTO, Format.GENERIC) and fmt != detected:
        raise IngestError(
            f"--format {fmt} given but the header {names} is a {detected} header", path=path, line=1
        )
    return mapping, detected


def _headerless_layout(
    path: Path,
    raw: dict[int, list[str]],
    width: int,
    fmt: Format,
    columns: dict[str, str] | None,
    lines: list[int],
) -> tuple[tuple[str | None, ...], Format]:
    if columns is not None:
        layout: list[str | None] = [None] * width
        for canon, src in columns.items():
            if not src.isdigit() or int(src) >= width:
                raise IngestError(
                    f"--columns maps {canon} to '{src}': a headerless file needs 0-based "
                    f"positions below {width}",
                    path=path,
                )
            layout[int(src)] = canon
        return tuple(layout), Format.GENERIC
    explicit: dict[Format, dict[int, tuple[str | None, ...]]] = {
        Format.BINANCE: {12: BINANCE_KLINES, 6: BINANCE_6},
        Format.KRAKEN: {7: KRAKEN_OHLCVT, 6: KRAKEN_OHLCVT[:6]},
        Format.COINBASE: {6: COINBASE_CANDLES},
    }
    if fmt in explicit:
        layouts = explicit[fmt]
        if width not in layouts:
            raise IngestError(
                f"--format {fmt} expects {sorted(layouts)} columns without a header, found {width}",
                path=path, line=lines[0],
            )
        return layouts[width], fmt
    if fmt is Format.YAHOO:
        raise IngestError("Yahoo exports have a header; this file has none", path=path, line=lines[0])
    if fmt is Format.GENERIC:
        raise IngestError(
            "a headerless file in --format generic needs --columns with positions",
            path=path, hint="e.g. --columns ts=0,open=1,high=2,low=3,close=4,volume=5",
        )
    # auto
    if width == 12:
        return BINANCE_KLINES, Format.BINANCE
    if width == 7:
        return KRAKEN_OHLCVT, Format.KRAKEN
    if width == 6:
        return _disambiguate_six(path, raw, lines)
    raise IngestError(
        f"{width} columns and no header: not a known export "
        "(Binance klines have 12, Kraken OHLCVT 7, Coinbase candles and Binance's short form 6)",
        path=path, line=lines[0], hint="pass --format generic --columns ts=0,open=1,...",
    )


def _disambiguate_six(
    path: Path, raw: dict[int, list[str]], lines: list[int]
) -> tuple[tuple[str | None, ...], Format]:
    """Six headerless columns: Binance (ms, o,h,l,c,v), Coinbase (s, l,h,o,c,v), Kraken (s, o,h,l,c,v)."""
    n = min(len(raw[0]), 500)
    try:
        t = np.array([float(x) for x in raw[0][:n]])
        vals = np.array([[float(x) for x in raw[i][:n]] for i in range(1, 5)])  # (4, n)
    except ValueError as e:
        raise IngestError(
            f"cannot tell the layout of 6 headerless columns: non-numeric value ({e})",
            path=path, line=lines[0],
        ) from e
    unit = epoch_unit(float(np.nanmedian(t)))

    def consistent(o: np.ndarray, h: np.ndarray, lo: np.ndarray, c: np.ndarray) -> bool:
        return bool(np.all((h >= np.maximum(o, c)) & (lo <= np.minimum(o, c)) & (h >= lo)))

    a, b, c_, d = vals
    candidates = []
    if consistent(a, b, c_, d):  # o, h, l, c
        candidates.append((BINANCE_6, Format.BINANCE) if unit != "s" else (KRAKEN_OHLCVT[:6], Format.KRAKEN))
    if consistent(c_, b, a, d):  # l, h, o, c -> o=c_, h=b, l=a
        candidates.append((COINBASE_CANDLES, Format.COINBASE))
    if len(candidates) == 1:
        return candidates[0]
    seen = f"6 headerless columns, first timestamp {raw[0][0]} (unit looks like {unit})"
    if not candidates:
        raise IngestError(
            f"{seen}: neither time,open,high,low,close,volume nor Coinbase's "
            "time,low,high,open,close,volume gives valid bars",
            path=path, line=lines[0], hint="pass --format generic --columns ts=0,open=...",
        )
    raise IngestError(
        f"ambiguous file: {seen}; the first {n} rows are valid bars both as "
        "time,open,high,low,close,volume (Binance/Kraken) and as time,low,high,open,close,volume "
        "(Coinbase)",
        path=path, line=lines[0], hint="pass --format binance, --format kraken or --format coinbase",
    )


# ------------------------------------------------------------------------------ Parquet


def _read_parquet(
    path: Path, fmt: Format, columns: dict[str, str] | None, *, freqtrade: bool = False
) -> tuple[pl.DataFrame, Format]:
    """Parquet or Feather (Arrow IPC). A file named like freqtrade's, or any Feather file,
    is read as freqtrade's layout unless ``--format``/``--columns`` say otherwise."""
    feather = _data_suffix(path) in FEATHER_SUFFIXES
    kind = "Feather" if feather else "Parquet"
    try:
        df = pl.read_ipc(path) if feather else pl.read_parquet(path)
    except Exception as e:
        raise IngestError(f"not a readable {kind} file ({type(e).__name__}: {e})", path=path) from e
    if df.height == 0:
        raise IngestError(f"{kind} file has no rows", path=path)
    names = [c.strip().lower() for c in df.columns]
    df.columns = names
    lines = np.arange(2, df.height + 2, dtype=np.int64)  # row r shown as line r+2 (1 = header)
    as_freqtrade = fmt is Format.FREQTRADE or (
        fmt is Format.AUTO and columns is None and (freqtrade or (feather and "date" in names))
    )
    if as_freqtrade:
        _check_freqtrade_columns(path, names, named=freqtrade)
        source_ft: dict[str, pl.Series] = {
            ("ts" if c == "date" else c): df.get_column(c) for c in FREQTRADE_COLUMNS
        }
        return _to_frame(path, source_ft, lines, Format.FREQTRADE), Format.FREQTRADE
    mapping, detected = _map_header(path, names, Format.AUTO if fmt is Format.AUTO else fmt, columns)
    source: dict[str, pl.Series] = {canon: df.get_column(src) for canon, src in mapping.items()}
    return _to_frame(path, source, lines, detected), detected


def _check_freqtrade_columns(path: Path, names: list[str], *, named: bool) -> None:
    """freqtrade writes exactly date, open, high, low, close, volume: a missing one is an
    error naming it; an extra one means the file is not freqtrade's (ambiguous)."""
    missing = [c for c in FREQTRADE_COLUMNS if c not in names]
    if missing:
        raise IngestError(
            f"freqtrade file lacks column(s) {missing}; it has {names}",
            path=path, column=missing[0],
            hint="freqtrade writes date, open, high, low, close, volume",
        )
    extra = [c for c in names if c not in FREQTRADE_COLUMNS]
    if extra:
        why = "is named like a freqtrade file" if named else "is a Feather file"
        raise IngestError(
            f"ambiguous file: it {why} but has columns {extra} that freqtrade never writes",
            path=path, hint="pass --format (e.g. generic with --columns) to say which layout it is",
        )


def _read_freqtrade_json(
    path: Path, fmt: Format, columns: dict[str, str] | None
) -> tuple[pl.DataFrame, Format]:
    """freqtrade's JSON: one list of ``[ms, open, high, low, close, volume]`` rows."""
    if fmt not in (Format.AUTO, Format.FREQTRADE) or columns is not None:
        given = f"--format {fmt}" if fmt not in (Format.AUTO, Format.FREQTRADE) else "--columns"
        raise IngestError(
            f"{given} does not apply to JSON: JSON is read as freqtrade's layout only",
            path=path, hint="drop the option, or pass --format freqtrade",
        )
    data = path.read_bytes()
    try:
        if path.name.lower().endswith(".gz"):
            data = gzip.decompress(data)
        rows = json.loads(data)
    except (OSError, EOFError, ValueError) as e:
        raise IngestError(f"not readable as freqtrade JSON ({type(e).__name__}: {e})", path=path) from e
    if not isinstance(rows, list) or not rows:
        raise IngestError(
            "freqtrade JSON must be a non-empty list of [ms, open, high, low, close, volume] rows",
            path=path,
        )
    width = len(FREQTRADE_COLUMNS)
    for i, row in enumerate(rows):
        ok = isinstance(row, list) and len(row) == width and all(
            v is None or (isinstance(v, int | float) and not isinstance(v, bool)) for v in row
        )
        if not ok:
            raise IngestError(
                f"row {i + 1} is {str(row)[:80]}: expected [ms, open, high, low, close, volume] "
                "numbers", path=path, line=i + 1,
            )
    lines = np.arange(1, len(rows) + 1, dtype=np.int64)
    source: dict[str, pl.Series] = {
        ("ts" if c == "date" else c): pl.Series(c, [r[j] for r in rows], dtype=pl.Float64)
        for j, c in enumerate(FREQTRADE_COLUMNS)
    }
    return _to_frame(path, source, lines, Format.FREQTRADE), Format.FREQTRADE


# ------------------------------------------------------------------------- conversion


def _to_frame(
    path: Path,
    source: Mapping[str, list[str] | pl.Series],
    lines: np.ndarray,
    detected: Format,
) -> pl.DataFrame:
    cols: dict[str, pl.Series] = {}
    for name, values in source.items():
        if name == "ts":
            cols["ts"] = parse_timestamps(path, values, lines)
        elif name == "symbol":
            cols["symbol"] = pl.Series("symbol", values).cast(pl.String)
        else:
            cols[name] = _parse_numeric(path, name, values, lines)
    df = pl.DataFrame(cols)
    for c in ("adj_close", "trades"):
        if c in df.columns and df.get_column(c).null_count() == df.height:
            df = df.drop(c)
    return df.with_columns(
        _file=pl.lit(str(path)), _line=pl.Series("_line", lines, dtype=pl.Int64)
    )


def _parse_numeric(
    path: Path, name: str, values: list[str] | pl.Series, lines: np.ndarray
) -> pl.Series:
    s = values if isinstance(values, pl.Series) else pl.Series(name, values, dtype=pl.String)
    if s.dtype == pl.String:
        blank = s.str.strip_chars().is_in(["", "null", "NULL", "None", "NA", "N/A", "nan", "NaN"])
        parsed = s.cast(pl.Float64, strict=False)
        bad = parsed.is_null() & ~blank & s.is_not_null()
        if bad.any():
            i = int(bad.arg_true()[0])
            raise IngestError(
                f"non-numeric value {s[i]!r}", path=path, line=int(lines[i]), column=name
            )
        s = parsed
    elif s.dtype.is_numeric():
        s = s.cast(pl.Float64)
    else:
        raise IngestError(f"column has type {s.dtype}, expected numbers", path=path, column=name)
    s = s.fill_nan(None)
    if name == "trades":
        frac = s.is_not_null() & ((s != s.floor()) | (s.abs() >= 2.0**63))
        if frac.any():
            i = int(frac.arg_true()[0])
            raise IngestError(f"trade count {s[i]} is not an integer", path=path,
                              line=int(lines[i]), column=name)
        return s.cast(pl.Int64).alias(name)
    return s.alias(name)


def _attach_symbol(
    frame: pl.DataFrame, path: Path, symbol: str | None, guess: str | None
) -> pl.DataFrame:
    """``--symbol``, else the file's symbol column, else ``guess`` (from the file name)."""
    if symbol is not None:
        return frame.with_columns(symbol=pl.lit(symbol))
    if "symbol" in frame.columns:
        sym = frame.get_column("symbol")
        missing = sym.is_null() | (sym.str.strip_chars() == "")
        if missing.any():
            i = int(missing.arg_true()[0])
            raise IngestError("missing symbol", path=path,
                              line=int(frame.get_column("_line")[i]), column="symbol")
        return frame
    if guess is None:
        raise IngestError(
            "no symbol column and none in the file name", path=path, hint="pass --symbol"
        )
    return frame.with_columns(symbol=pl.lit(guess))
