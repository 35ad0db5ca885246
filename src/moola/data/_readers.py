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

import contextlib
import csv
import errno
import gc
import gzip
import io
import json
import os
import re
import stat
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Protocol

import numpy as np
import polars as pl

from moola.data._errors import IngestError
from moola.data._schema import FAULT_EMPTY, FAULT_SYMBOL, FAULT_TIMESTAMP, Timeframe
from moola.data._symbols import ALPHABET_TEXT, symbol_problem
from moola.data._timestamps import OFFSET_PATTERN, epoch_unit, parse_timestamps


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
    """Expand directories into their data files (sorted); reject what is not data, saying what
    it is (a FIFO is never opened: reading one would block)."""
    files: list[Path] = []
    for p in map(Path, paths):
        st = _stat(p)
        if stat.S_ISDIR(st.st_mode):
            files.extend(_directory_files(p))
        else:
            _require_regular(p, st)
            files.append(p)
    return files


def _stat(path: Path) -> os.stat_result:
    """``stat`` (following links) whose failure says what is there: a loop, a dangling link,
    nothing; other OS errors (permission) propagate to the CLI's OS-error message."""
    try:
        return path.stat()
    except OSError as e:
        if e.errno == errno.ELOOP:
            raise IngestError("symbolic link loop: the link leads back to itself", path=path,
                              hint="point the link at a data file") from e
        if e.errno not in (errno.ENOENT, errno.ENOTDIR):
            raise
        if path.is_symlink():
            raise IngestError(f"dangling symbolic link to {os.readlink(path)} (the target does not "
                              "exist)", path=path) from e
        raise IngestError("no such file or directory", path=path) from e


def _kind(mode: int) -> str | None:
    """What a non-regular file is, in words; None for a regular file."""
    if stat.S_ISREG(mode):
        return None
    if stat.S_ISDIR(mode):
        return "a directory"
    if stat.S_ISFIFO(mode):
        return "a FIFO (named pipe)"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device file"
    if stat.S_ISSOCK(mode):
        return "a socket"
    return "not a regular file"


def _require_regular(path: Path, st: os.stat_result) -> None:
    kind = _kind(st.st_mode)
    if kind is not None:
        raise IngestError(f"is {kind}, not a file", path=path, hint="pass data files or directories")


def _directory_files(folder: Path) -> list[Path]:
    """The data files of a directory; a data-named entry that is not a regular file is an error
    (a dangling link, a FIFO) rather than silently left out. Sub-directories are not read."""
    entries = sorted(folder.iterdir())
    found: list[Path] = []
    for f in entries:
        if _data_suffix(f) is None:
            continue
        st = _stat(f)
        if stat.S_ISDIR(st.st_mode):
            continue
        _require_regular(f, st)
        found.append(f)
    if not found:
        raise IngestError(
            f"directory holds no data files ({', '.join(DATA_SUFFIXES)}); {_describe(entries)}",
            path=folder,
        )
    return found


def _describe(entries: list[Path], limit: int = 5) -> str:
    """What a directory holds instead of data files, e.g. ``it has 2 entries: a.md, sub/``."""
    if not entries:
        return "it is empty"
    shown = []
    for f in entries[:limit]:
        try:
            kind = _kind(f.stat().st_mode)
        except OSError:
            kind = "a broken link"
        shown.append(f.name + ("/" if kind == "a directory" else f" ({kind})" if kind else ""))
    more = f", ... ({len(entries) - limit} more)" if len(entries) > limit else ""
    return f"it has {len(entries)} entr{'y' if len(entries) == 1 else 'ies'}: {', '.join(shown)}{more}"


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
    delimiter: str | None = None,
) -> RawBars:
    """Read one file into canonical columns; every failure names file, line and column.
    ``delimiter`` applies to CSV only (None: detected from the first lines)."""
    _require_regular(path, _stat(path))
    suffix = _data_suffix(path)
    ft = freqtrade_name(path) if suffix is not None and suffix not in CSV_SUFFIXES else None
    if suffix in JSON_SUFFIXES:
        frame, detected = _read_freqtrade_json(path, fmt, columns)
    elif suffix in PARQUET_SUFFIXES + FEATHER_SUFFIXES:
        frame, detected = _read_parquet(path, fmt, columns, freqtrade=ft is not None)
    elif suffix in CSV_SUFFIXES:
        frame, detected = _read_csv(path, fmt, columns, delimiter)
    else:
        raise IngestError(
            f"unsupported file type '{path.suffix.lower()}'", path=path,
            hint=f"use one of {', '.join(DATA_SUFFIXES)}",
        )
    frame = _attach_symbol(frame, path, symbol, ft.symbol if ft else symbol_from_filename(path))
    tf = ft.timeframe if ft is not None else timeframe_from_filename(path)
    return RawBars(frame=frame, path=path, format=detected, timeframe=tf)


# ---------------------------------------------------------------------------------- CSV

# Records per batch: the reader holds one batch of raw cells at a time, never the whole file.
CELL_PADDING = " \t"  # what is trimmed from both ends of every cell
CSV_BATCH_ROWS = 200_000
# Delimiters tried when --delimiter is not given; on a tie the earlier one wins.
DELIMITER_CANDIDATES = (",", ";", "\t", "|")
_DELIMITER_NAMES = {"tab": "\t", "\\t": "\t"}
_SAMPLE_LINES = 20  # non-empty lines read to detect the delimiter
_SAMPLE_CHARS = 1 << 20
_BLANK_LINE = "blank line"
_DELIMITERS_ONLY = "row of only delimiters"
_TS_OFFSET = re.compile(OFFSET_PATTERN)


def parse_delimiter(spec: str | None) -> str | None:
    """``--delimiter``: ``,`` ``;`` ``tab`` (or ``\\t``) ``|`` or any one character; None detects."""
    if spec is None:
        return None
    value = _DELIMITER_NAMES.get(spec.lower(), spec)
    if len(value) != 1 or value in '"\r\n':
        raise IngestError(
            f"--delimiter {spec!r} is not one character other than a quote or a line break",
            hint="use , ; tab | or another single character",
        )
    return value


def _delimiter_name(delim: str) -> str:
    return "tab" if delim == "\t" else delim


def _read_csv(
    path: Path, fmt: Format, columns: dict[str, str] | None, delimiter: str | None = None
) -> tuple[pl.DataFrame, Format]:
    """Stream the file through ``csv.reader`` in batches of ``CSV_BATCH_ROWS`` records; every
    physical line ends up in a stored row, an ``empty_row`` fault row or an error."""
    delim = delimiter if delimiter is not None else _detect_delimiter(path)
    batch_rows = CSV_BATCH_ROWS
    frames: list[pl.DataFrame] = []
    with _gc_paused(), path.open(encoding="utf-8-sig", errors="strict", newline="") as fh:
        records = _csv_records(path, csv.reader(fh, delimiter=delim))
        faults: list[tuple[int, str]] = []
        first = _first_record(records, faults)
        if first is None:
            extra = f" ({len(faults)} blank or delimiter-only lines)" if faults else ""
            raise IngestError(f"file is empty: no header and no data rows{extra}", path=path)
        reader = _CsvBatches(path, fmt, columns, delim, *first)
        rows: list[list[str]] = [] if reader.header is not None else [first[1]]
        lines: list[int] = [] if reader.header is not None else [first[0]]
        width = reader.width
        for start, rec in records:
            if len(rec) == width:
                rows.append(rec)
                lines.append(start)
                if len(rows) < batch_rows:
                    continue
            elif (empty := _empty_kind(rec)) is not None:
                faults.append((start, empty))
                if len(faults) < batch_rows:
                    continue
            else:
                if rows:  # an error on an earlier line of this batch comes first
                    reader.frame(rows, lines, [])
                raise reader.width_error(start, rec)
            frames.append(reader.frame(rows, lines, faults))
            rows, lines, faults = [], [], []
        if rows or faults:
            frames.append(reader.frame(rows, lines, faults))
    if reader.good_rows == 0:
        raise IngestError("file has a header but no data rows", path=path, line=reader.first_line)
    return reader.concat(frames), reader.detected


@contextlib.contextmanager
def _gc_paused() -> Iterator[None]:
    """A batch is a few hundred thousand small lists that the cyclic GC would rescan on every
    pass (reading takes ~1.8x as long with it on); they hold no cycles."""
    was = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was:
            gc.enable()


class _LineReader(Protocol):
    """What ``csv.reader`` returns: records, and the physical line the last one ended on."""

    @property
    def line_num(self) -> int: ...

    def __iter__(self) -> Iterator[list[str]]: ...


def _csv_records(path: Path, reader: _LineReader) -> Iterator[tuple[int, list[str]]]:
    """(physical 1-based line where the record starts, cells); a quoted cell may span lines."""
    last = 0
    try:
        for rec in reader:
            yield last + 1, rec
            last = reader.line_num
    except UnicodeDecodeError as e:
        raise _utf8_error(path) from e
    except csv.Error as e:
        raise IngestError(f"not readable as CSV ({e})", path=path, line=reader.line_num) from e


def _first_record(
    records: Iterator[tuple[int, list[str]]], faults: list[tuple[int, str]]
) -> tuple[int, list[str]] | None:
    """The first record with a non-blank cell; the blank ones before it become faults."""
    for start, rec in records:
        empty = _empty_kind(rec)
        if empty is None:
            return start, rec
        faults.append((start, empty))
    return None


def _empty_kind(rec: list[str]) -> str | None:
    """Why a record holds no data (a blank line, or only delimiters), or None when it does."""
    if "".join(rec).strip():
        return None
    return _BLANK_LINE if len(rec) <= 1 else _DELIMITERS_ONLY


def _utf8_error(path: Path) -> IngestError:
    """The text decoder reads ahead in chunks, so find the first bad byte again line by line."""
    offset = 0
    with path.open("rb") as fb:
        for n, raw in enumerate(fb, 1):
            try:
                raw.decode("utf-8")
            except UnicodeDecodeError as e:
                return IngestError(f"not UTF-8 text (byte {offset + e.start})", path=path, line=n,
                                   hint="re-export the file as UTF-8")
            offset += len(raw)
    return IngestError("not UTF-8 text", path=path, hint="re-export the file as UTF-8")


def _detect_delimiter(path: Path) -> str:
    """The candidate that splits the first non-empty line into the most fields and keeps that
    width on most of the next few lines; a comma when none splits it."""
    sample = _sample_text(path)
    best, best_key = ",", (0, 0)
    for cand in DELIMITER_CANDIDATES:
        try:
            widths = [len(r) for r in csv.reader(io.StringIO(sample), delimiter=cand)
                      if "".join(r).strip()]
        except csv.Error:
            continue  # the real read names the line
        if not widths or widths[0] < 2:
            continue
        key = (sum(w == widths[0] for w in widths), widths[0])
        if key > best_key:
            best, best_key = cand, key
    return best


def _sample_text(path: Path) -> str:
    """The first ``_SAMPLE_LINES`` non-empty physical lines (at most ``_SAMPLE_CHARS`` chars)."""
    parts: list[str] = []
    size = nonempty = 0
    try:
        with path.open(encoding="utf-8-sig", errors="strict", newline="") as fh:
            while nonempty < _SAMPLE_LINES and size < _SAMPLE_CHARS:
                line = fh.readline(_SAMPLE_CHARS - size)
                if not line:
                    break
                parts.append(line)
                size += len(line)
                nonempty += bool(line.strip())
    except UnicodeDecodeError as e:
        raise _utf8_error(path) from e
    return "".join(parts)


def _split_elsewhere(cell: str, delim: str) -> tuple[str, int] | None:
    """Another candidate delimiter that splits a one-field line, and into how many fields."""
    best: tuple[str, int] | None = None
    for cand in DELIMITER_CANDIDATES:
        if cand == delim or cand not in cell:
            continue
        try:
            n = len(next(csv.reader(io.StringIO(cell, newline=""), delimiter=cand), []))
        except csv.Error:
            continue  # e.g. a quoted line break: no suggestion, the plain error stands
        if n > 1 and (best is None or n > best[1]):
            best = (cand, n)
    return best


class _CsvBatches:
    """What the first non-empty record decided (header, width, column mapping), applied to each
    batch of records in turn."""

    def __init__(self, path: Path, fmt: Format, columns: dict[str, str] | None, delim: str,
                 first_line: int, first: list[str]) -> None:
        self.path, self.fmt, self.columns, self.delim = path, fmt, columns, delim
        self.first_line = first_line
        self.width = len(first)
        if self.width == 1:
            self._one_column(first[0])
        stripped = [c.strip() for c in first]
        self.header = stripped if _looks_like_header(stripped, columns) else None
        self.index: dict[str, int] | None = None
        self.detected = Format.GENERIC
        if self.header is not None:
            names = [h.lower() for h in self.header]
            mapping, self.detected = _map_header(path, names, fmt, columns)
            self.index = {canon: names.index(src) for canon, src in mapping.items()}
        self.good_rows = 0
        self.order: list[str] = []
        self._ts_first: tuple[str, int] | None = None  # (first good timestamp cell, its line)

    def _one_column(self, cell: str) -> None:
        other = _split_elsewhere(cell, self.delim)
        if other is not None:
            name = _delimiter_name(other[0])
            raise IngestError(
                f"the first line is one column when split on {_delimiter_name(self.delim)!r}, "
                f"but {name!r} splits it into {other[1]} fields",
                path=self.path, line=self.first_line, hint=f"pass --delimiter '{name}'",
            )

    def width_error(self, line: int, rec: list[str]) -> IngestError:
        what = "header" if self.header is not None else "row"
        hint = None
        other = _split_elsewhere(rec[0], self.delim) if len(rec) == 1 else None
        if other is not None:
            hint = f"this line splits into {other[1]} fields on {_delimiter_name(other[0])!r}"
        return IngestError(
            f"expected {self.width} columns (as on the first {what}), found {len(rec)}",
            path=self.path, line=line, hint=hint,
        )

    def frame(self, rows: list[list[str]], lines: list[int], faults: list[tuple[int, str]]
              ) -> pl.DataFrame:
        """One batch: good records through ``_to_frame``, blank ones as ``empty_row`` fault rows."""
        faults = list(faults)
        parts: list[pl.DataFrame] = []
        if rows:
            cells = pl.DataFrame(
                [pl.Series(f"c{i}", col, dtype=pl.String) for i, col in enumerate(zip(*rows, strict=True))]
            ).with_columns(pl.all().str.strip_chars(CELL_PADDING))  # not line breaks: a symbol
            # cell ending in one is refused, not silently trimmed
            line_arr = np.asarray(lines, dtype=np.int64)
            empty = cells.select(pl.all_horizontal(pl.all() == "")).to_series()
            if empty.any():
                detail = _BLANK_LINE if self.width == 1 else _DELIMITERS_ONLY
                faults += [(int(line_arr[i]), detail) for i in empty.arg_true()]
                cells, line_arr = cells.filter(~empty), line_arr[~empty.to_numpy()]
            self._repeated_header(cells, line_arr)
            if cells.height:
                parts.append(self._good(cells, line_arr))
        if faults:
            parts.append(_empty_rows(self.path, sorted(faults)))
        if len(parts) == 1:
            return parts[0]
        return pl.concat(parts, how="diagonal_relaxed").sort("_line")

    def _repeated_header(self, cells: pl.DataFrame, line_arr: np.ndarray) -> None:
        if self.header is None or not cells.height:
            return
        same = cells.select(pl.all_horizontal(
            [pl.col(f"c{i}").str.to_lowercase() == h.lower() for i, h in enumerate(self.header)]
        )).to_series()
        if same.any():
            raise IngestError("repeated header row inside the data", path=self.path,
                              line=int(line_arr[int(same.arg_true()[0])]))

    def _good(self, cells: pl.DataFrame, line_arr: np.ndarray) -> pl.DataFrame:
        if self.index is None:  # headerless: the first batch decides the layout
            raw = {i: cells.get_column(f"c{i}").head(500).to_list() for i in range(self.width)}
            layout, self.detected = _headerless_layout(
                self.path, raw, self.width, self.fmt, self.columns, [int(line_arr[0])]
            )
            self.index = {canon: i for i, canon in enumerate(layout) if canon is not None}
        source = {canon: cells.get_column(f"c{i}") for canon, i in self.index.items()}
        out = _to_frame(self.path, source, line_arr, self.detected)
        self._check_ts_kind(source.get("ts"), out, line_arr)
        self.good_rows += out.height
        self.order += [c for c in out.columns if c not in self.order]
        return out

    def _check_ts_kind(self, ts: pl.Series | None, out: pl.DataFrame, line_arr: np.ndarray) -> None:
        """Each batch is parsed on its own; what must hold for the whole file (one epoch unit,
        offsets on all rows or none) is checked on the first good timestamp of each batch."""
        if ts is None or ts.dtype != pl.String:
            return
        ok = out.get_column("ts").is_not_null() & (ts != "")
        if not ok.any():
            return
        i = int(ok.arg_true()[0])
        value, line = str(ts[i]), int(line_arr[i])
        if self._ts_first is None:
            self._ts_first = (value, line)
            return
        first, first_line = self._ts_first
        kind, was = _ts_kind(value), _ts_kind(first)
        if kind == was:
            return
        if kind[0] == was[0] == "epoch":
            msg = f"epoch timestamps mix units: {kind[1]} here, {was[1]} on line {first_line}"
        elif was[0] == "aware" and kind[0] == "naive":
            msg = f"timestamp {value!r} has no UTC offset while line {first_line} has one ({first!r})"
        elif was[0] == "naive" and kind[0] == "aware":
            msg = f"timestamp {value!r} has a UTC offset while line {first_line} has none ({first!r})"
        else:
            form = "an epoch number" if kind[0] == "epoch" else "a date/time string"
            msg = f"timestamp {value!r} is {form}, unlike line {first_line} ({first!r})"
        raise IngestError(msg, path=self.path, line=line, column="ts",
                          hint="one timestamp form per file; export every row the same way")

    def concat(self, frames: list[pl.DataFrame]) -> pl.DataFrame:
        """Batch frames in file order; canonical columns first, then _file, _line, faults."""
        df = frames[0] if len(frames) == 1 else pl.concat(frames, how="diagonal_relaxed")
        tail = ["_file", "_line", "_fault", "_detail"]
        head = [c for c in self.order if c not in tail]
        rest = [c for c in df.columns if c not in head and c not in tail]
        return df.select([*head, *rest, *[c for c in tail if c in df.columns]])


def _ts_kind(value: str) -> tuple[str, str]:
    """('epoch', unit), ('aware', '') or ('naive', '') of one timestamp cell: offsets may differ
    from row to row (daylight saving), their presence may not."""
    if _is_number(value):
        return "epoch", epoch_unit(float(value))
    return ("aware", "") if _TS_OFFSET.search(value) else ("naive", "")


def _empty_rows(path: Path, faults: list[tuple[int, str]]) -> pl.DataFrame:
    """Blank lines and delimiter-only rows: counted rows (``empty_row``) with every value null."""
    return pl.DataFrame(
        {
            "_file": pl.Series([str(path)] * len(faults), dtype=pl.String),
            "_line": pl.Series([ln for ln, _ in faults], dtype=pl.Int64),
            "_fault": pl.Series([FAULT_EMPTY] * len(faults), dtype=pl.String),
            "_detail": pl.Series([d for _, d in faults], dtype=pl.String),
        }
    )


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
    one = width == 1
    raise IngestError(
        f"{'one column' if one else f'{width} columns'} and no header: not a known export "
        "(Binance klines have 12, Kraken OHLCVT 7, Coinbase candles and Binance's short form 6)",
        path=path, line=lines[0],
        hint="if fields are split by another character, pass --delimiter" if one
        else "pass --format generic --columns ts=0,open=1,...",
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
    clash = {n: [c for c in df.columns if c.strip().lower() == n] for n in names if names.count(n) > 1}
    if clash:
        name, originals = next(iter(clash.items()))
        raise IngestError(
            f"columns {originals} are the same column '{name}' once case and spaces are ignored",
            path=path, column=originals[1],
            hint="drop or rename one of them; column names are read without regard to case",
        )
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
    ts_fault: pl.Series | None = None
    for name, values in source.items():
        if name == "ts":
            cols["ts"], ts_fault = parse_timestamps(path, values, lines)
        elif name == "symbol":
            cols["symbol"] = pl.Series("symbol", values).cast(pl.String)
        else:
            cols[name] = _parse_numeric(path, name, values, lines)
    df = pl.DataFrame(cols)
    for c in ("adj_close", "trades"):
        if c in df.columns and df.get_column(c).null_count() == df.height:
            df = df.drop(c)
    df = df.with_columns(_file=pl.lit(str(path)), _line=pl.Series("_line", lines, dtype=pl.Int64))
    if ts_fault is not None and ts_fault.null_count() < len(ts_fault):
        df = df.with_columns(
            _fault=pl.when(ts_fault.is_not_null()).then(pl.lit(FAULT_TIMESTAMP)).otherwise(None),
            _detail=ts_fault,
        )
    return df


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
    """``--symbol``, else the file's symbol column, else ``guess`` (from the file name).

    A symbol cell outside the alphabet (``_symbols``) makes its row a ``bad_symbol`` fault; the
    row keeps the nearest valid symbol of the file so its reject can be filed under it."""
    if symbol is not None:
        _check_given_symbol(symbol, path, "--symbol")
        return frame.with_columns(symbol=pl.lit(symbol))
    if "symbol" not in frame.columns:
        if guess is None:
            raise IngestError("no symbol column and none in the file name", path=path, hint="pass --symbol")
        _check_given_symbol(guess, path, "the file name")
        return frame.with_columns(symbol=pl.lit(guess))
    faulted = _optional(frame, "_fault").is_not_null()
    sym = frame.get_column("symbol")
    missing = (sym.is_null() | (sym.str.strip_chars() == "")) & ~faulted
    if missing.any():
        i = int(missing.arg_true()[0])
        raise IngestError("missing symbol", path=path, line=int(frame.get_column("_line")[i]),
                          column="symbol")
    sym = sym.str.strip_chars(CELL_PADDING)
    distinct = sym.filter(~faulted).unique().to_list()
    problems = {v: p for v in distinct if (p := symbol_problem(v)) is not None}
    bad = sym.is_in(list(problems)) & ~faulted if problems else pl.Series([False] * frame.height)
    if problems and (bad | faulted).all():
        raise IngestError(f"no row has a valid symbol: {next(iter(problems.values()))}", path=path,
                          line=int(frame.get_column("_line")[int(bad.arg_true()[0])]), column="symbol",
                          hint=f"a symbol is {ALPHABET_TEXT}")
    usable = ~bad & sym.is_not_null() & (sym != "")
    own = frame.with_columns(symbol=sym)
    if not faulted.any() and not bad.any():
        return own
    filed = pl.when(usable).then(pl.col("symbol")).otherwise(None).forward_fill().backward_fill()
    if not bad.any():  # rows faulted by the reader file under their own or the nearest symbol
        return own.with_columns(symbol=filed)
    detail = sym.replace_strict(problems, default=None, return_dtype=pl.String)
    return own.with_columns(
        symbol=filed,
        _fault=pl.when(bad).then(pl.lit(FAULT_SYMBOL)).otherwise(_optional(frame, "_fault")),
        _detail=pl.when(bad).then(detail).otherwise(_optional(frame, "_detail")),
    )


def _optional(frame: pl.DataFrame, name: str) -> pl.Series:
    """A reader's fault column (``_fault``/``_detail``), all-null when it found no fault."""
    if name in frame.columns:
        return frame.get_column(name)
    return pl.Series(name, [None] * frame.height, dtype=pl.String)


def _check_given_symbol(symbol: str, path: Path, source: str) -> None:
    """A symbol that applies to the whole file is checked at once: nothing of the file is usable."""
    problem = symbol_problem(symbol)
    if problem is not None:
        raise IngestError(f"{problem} (from {source})", path=path, column="symbol",
                          hint=f"a symbol is {ALPHABET_TEXT}; pass --symbol")
