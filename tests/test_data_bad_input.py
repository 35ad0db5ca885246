"""Bad input through the CLI: exit code 2, ONE message naming the file, the line and (where
one applies) the column, and a pre-populated store left byte-for-byte untouched."""

from __future__ import annotations

import re
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from pathlib import Path

import polars as pl
import pytest

from _data_helpers import (
    btc_csv_lines,
    cli,
    snapshot,
    sp500_symbol,
    write_binance_klines,
    write_csv_lines,
    write_yahoo,
)
from moola.data import Store, Timeframe, read_file, validate_raw


@dataclass
class Case:
    """``make(dir)`` writes the inputs and returns (paths, extra CLI args)."""

    make: Callable[[Path], tuple[list[Path], list[str]]]
    where: str | None  # file (or directory) the message must name; relative to the input dir
    line: int | None = None
    column: str | None = None
    says: tuple[str, ...] = field(default_factory=tuple)  # more text the message must contain


def _btc(d: Path, edit: Callable[[list[str]], None] | None = None, n: int = 20,
         name: str = "BTCUSD_1m.csv") -> Path:
    """The bundled BTC export's layout (header on line 1, data from line 2), edited."""
    lines = btc_csv_lines(n)
    if edit is not None:
        edit(lines)
    return write_csv_lines(d / name, lines)


def _set(line: int, col: int, value: str) -> Callable[[list[str]], None]:
    """Set field ``col`` (0 = open_time, ..., 5 = volume) on physical ``line`` (1-based)."""

    def edit(lines: list[str]) -> None:
        f = lines[line - 1].split(",")
        f[col] = value
        lines[line - 1] = ",".join(f)

    return edit


def one(p: Path, *args: str) -> tuple[list[Path], list[str]]:
    return [p], list(args)


def _swap(lines: list[str]) -> None:
    lines[9], lines[10] = lines[10], lines[9]  # physical lines 10 and 11


def _mixed_dir(d: Path) -> tuple[list[Path], list[str]]:
    sub = d / "mixed"
    write_yahoo(sub / "AAPL_data.csv", sp500_symbol("AAPL", 20))
    write_binance_klines(sub / "BTCUSDT-1m-2023-03.csv", 20)
    return [sub], []


def _corrupt_parquet(d: Path) -> tuple[list[Path], list[str]]:
    p = d / "KO.parquet"
    sp500_symbol("KO", 100).write_parquet(p)
    data = p.read_bytes()
    p.write_bytes(data[: len(data) // 2])
    return [p], []


def _non_utf8(d: Path) -> tuple[list[Path], list[str]]:
    lines = btc_csv_lines(20)
    raw = "\n".join(lines).encode()
    parts = raw.split(b"\n")
    parts[5] = parts[5].replace(b"23", b"2\xff3", 1)  # physical line 6
    p = d / "BTCUSD_1m.csv"
    p.write_bytes(b"\n".join(parts) + b"\n")
    return [p], []


def _ambiguous(d: Path) -> tuple[list[Path], list[str]]:
    lines = []
    for ln in btc_csv_lines(20)[1:]:
        ts, _o, _h, _lo, c, v = ln.split(",")
        from datetime import datetime

        sec = int(datetime.fromisoformat(ts).timestamp())
        lines.append(f"{sec},{c},{c},{c},{c},{v}")  # flat bars, epoch seconds
    return [write_csv_lines(d / "BTCUSD.csv", lines)], []


def _width9(d: Path) -> tuple[list[Path], list[str]]:
    p = write_binance_klines(d / "BTCUSDT-1m.csv", 20)
    lines = [",".join(ln.split(",")[:9]) for ln in p.read_text().splitlines()]
    return [write_csv_lines(p, lines)], []


def _good_plus_bad(d: Path) -> tuple[list[Path], list[str]]:
    good = write_yahoo(d / "MSFT_data.csv", sp500_symbol("MSFT", 40))
    bad = write_yahoo(d / "KO_data.csv", sp500_symbol("KO", 40))
    lines = bad.read_text().splitlines()
    f = lines[30].split(",")
    f[4] = "n/a?"  # Close on physical line 31
    lines[30] = ",".join(f)
    write_csv_lines(bad, lines)
    return [good, bad], []


def _yahoo_edit(name: str, line: int, col: int, value: str, n: int = 30,
                *args: str) -> Callable[[Path], tuple[list[Path], list[str]]]:
    def make(d: Path) -> tuple[list[Path], list[str]]:
        p = write_yahoo(d / name, sp500_symbol("KO", n), name=True)
        lines = p.read_text().splitlines()
        f = lines[line - 1].split(",")
        if col < 0:
            f = [f[0]] + [""] * 6 + [f[7]]
        else:
            f[col] = value
        lines[line - 1] = ",".join(f)
        return [write_csv_lines(p, lines)], list(args)

    return make


def _dup_conflicting(d: Path) -> tuple[list[Path], list[str]]:
    lines = btc_csv_lines(20)
    f = lines[7].split(",")
    f[5] = "999.5"
    lines.insert(8, ",".join(f))  # physical line 9 repeats line 8's time with another volume
    return [write_csv_lines(d / "BTCUSD_1m.csv", lines)], ["--policy", "duplicate_conflicting=fail"]


def _gap_fail(d: Path) -> tuple[list[Path], list[str]]:
    lines = btc_csv_lines(20)
    del lines[10:13]  # rows on physical lines 11-13 missing: the bar now on line 11 follows a gap
    return [write_csv_lines(d / "BTCUSD_1m.csv", lines)], ["--policy", "gap=fail"]


def _parquet_lacks_volume(d: Path) -> tuple[list[Path], list[str]]:
    p = d / "KO.parquet"
    sp500_symbol("KO", 30).drop("volume").write_parquet(p)
    return [p], []


def _parquet(name: str,
             edit: Callable[[pl.DataFrame], pl.DataFrame]) -> Callable[[Path], tuple[list[Path], list[str]]]:
    """KO daily bars as Parquet (row r is reported as line r+2), edited."""
    def make(d: Path) -> tuple[list[Path], list[str]]:
        p = d / name
        edit(sp500_symbol("KO", 30)).write_parquet(p)
        return [p], []

    return make


def _at_row(r: int, value: object, dtype: pl.DataType) -> Callable[[pl.DataFrame], pl.DataFrame]:
    """Replace the ``date`` column by one of ``dtype`` whose row ``r`` is ``value``."""
    def edit(df: pl.DataFrame) -> pl.DataFrame:
        col = df.get_column("date").cast(dtype).scatter(r, value)
        return df.with_columns(col.alias("date"))

    return edit


def _naive_dst_repeat(d: Path) -> tuple[list[Path], list[str]]:
    """Local times without offsets across the end of daylight saving: 01:00-01:59 comes twice."""
    t0 = datetime(2023, 11, 5, 0, 0)
    stamps = [t0 + timedelta(minutes=i) for i in range(120)] + [
        t0 + timedelta(hours=1, minutes=i) for i in range(30)]
    rows = [ln.split(",")[1:] for ln in btc_csv_lines(150)[1:]]
    lines = ["time,open,high,low,close,volume"] + [
        ",".join([t.strftime("%Y-%m-%d %H:%M:%S"), *r]) for t, r in zip(stamps, rows, strict=True)]
    return [write_csv_lines(d / "BTCUSD_1m.csv", lines)], []


CASES: dict[str, Case] = {
    "empty-file": Case(lambda d: one(write_csv_lines(d / "BTCUSD.csv", [""])), "BTCUSD.csv",
                       says=("empty",)),
    "header-only": Case(lambda d: one(_btc(d, n=0)), "BTCUSD_1m.csv", 1, says=("no data rows",)),
    "wrong-column-count": Case(lambda d: one(_btc(d, lambda ls: ls.__setitem__(5, ls[5] + ",7"))),
                               "BTCUSD_1m.csv", 6, says=("expected 6 columns", "found 7")),
    "non-numeric-cell": Case(lambda d: one(_btc(d, _set(8, 4, "23k"))), "BTCUSD_1m.csv", 8, "close",
                             says=("'23k'",)),
    "rich-markup-in-cell": Case(lambda d: one(_btc(d, _set(8, 2, "[red]x"))), "BTCUSD_1m.csv", 8,
                                "high", says=("'[red]x'",)),
    "unparseable-timestamp": Case(lambda d: one(_btc(d, _set(4, 0, "2023-03-01 00:61:00+00:00"))),
                                  "BTCUSD_1m.csv", 4, "ts", says=("unparseable",)),
    "missing-timestamp": Case(lambda d: one(_btc(d, _set(4, 0, ""))), "BTCUSD_1m.csv", 4, "ts"),
    # item 1: timestamps the store's ns clock cannot hold, in every input form
    "iso-year-2262": Case(lambda d: one(_btc(d, _set(5, 0, "2262-04-12 00:00:00+00:00"))),
                          "BTCUSD_1m.csv", 5, "ts", says=("out of range", "bad_timestamp")),
    "iso-year-9999": Case(lambda d: one(_btc(d, _set(6, 0, "9999-12-31 23:59:00+00:00"))),
                          "BTCUSD_1m.csv", 6, "ts", says=("'9999-12-31 23:59:00+00:00' is out of range",)),
    "iso-year-1600": Case(lambda d: one(_btc(d, _set(2, 0, "1600-01-01 00:00:00+00:00"))),
                          "BTCUSD_1m.csv", 2, "ts", says=("out of range",)),
    "epoch-seconds-year-2286": Case(
        lambda d: one(write_csv_lines(d / "BTCUSDT-1m.csv", [
            f"{1677628800 + 60 * i},1,2,0.5,1,1" if i != 4 else "10000000000,1,2,0.5,1,1" for i in range(10)
        ])), "BTCUSDT-1m.csv", 5, "ts", says=("out of range",)),
    "epoch-ms-year-2286": Case(
        lambda d: one(write_csv_lines(d / "BTCUSDT-1m.csv", [
            f"{1677628800 + 60 * i}000,1,2,0.5,1,1" if i != 6 else "10000000000000,1,2,0.5,1,1"
            for i in range(10)
        ])), "BTCUSDT-1m.csv", 7, "ts", says=("out of range",)),
    "parquet-datetime-year-3000": Case(
        _parquet("KO.parquet", _at_row(4, datetime(3000, 1, 1), pl.Datetime("us"))), "KO.parquet", 6, "ts",
        says=("out of range",)),
    "parquet-date-year-3000": Case(
        _parquet("KO.parquet", _at_row(7, date(3000, 1, 1), pl.Date())), "KO.parquet", 9, "ts",
        says=("out of range",)),
    "parquet-boolean-timestamps": Case(
        _parquet("KO.parquet", lambda df: df.with_columns(date=pl.lit(True))), "KO.parquet", None, "ts",
        says=("Boolean",)),
    "parquet-time-of-day-timestamps": Case(
        _parquet("KO.parquet", lambda df: df.with_columns(date=pl.lit(time(9, 30)))), "KO.parquet", None,
        "ts", says=("time of day without a date",)),
    "parquet-close-and-Close": Case(
        _parquet("KO.parquet", lambda df: df.with_columns(Close=pl.col("close"))), "KO.parquet", None,
        "Close", says=("'close'", "case")),
    # item 2: a bar between two grid slots
    "off-grid-bar": Case(lambda d: one(_btc(d, _set(6, 0, "2023-03-01 00:04:30+00:00"))),
                         "BTCUSD_1m.csv", 6, "ts", says=("off the 1m grid", "off_grid")),
    # item 3: a row of only delimiters is counted (dropped by default); under fail it is named
    "delimiter-only-row-policy-fail": Case(
        lambda d: one(_btc(d, lambda ls: ls.insert(7, ",,,,,")), "--policy", "empty_row=fail"),
        "BTCUSD_1m.csv", 8, says=("row of only delimiters", "empty_row")),
    # items 4 and 5: symbols a partition directory and a report cannot hold
    "newline-in-quoted-symbol": Case(_yahoo_edit("KO_data.csv", 6, 7, '"K\nO"'), "KO_data.csv", 6,
                                     "symbol", says=("U+000A", "bad_symbol")),
    "trailing-newline-in-quoted-symbol": Case(_yahoo_edit("KO_data.csv", 11, 7, '"KO\n"'), "KO_data.csv", 11,
                                              "symbol", says=("U+000A",)),
    "line-separator-in-symbol": Case(_yahoo_edit("KO_data.csv", 7, 7, "K\u2028O"), "KO_data.csv", 7,
                                     "symbol", says=("U+2028",)),
    "next-line-in-symbol": Case(_yahoo_edit("KO_data.csv", 8, 7, "K\x85O"), "KO_data.csv", 8, "symbol",
                                says=("U+0085",)),
    "nul-in-symbol": Case(_yahoo_edit("KO_data.csv", 9, 7, "K\x00O"), "KO_data.csv", 9, "symbol",
                          says=("U+0000",)),
    "symbol-too-long": Case(_yahoo_edit("KO_data.csv", 10, 7, "K" * 300), "KO_data.csv", 10, "symbol",
                            says=("too long",)),
    "control-char-in-symbol-option": Case(lambda d: one(_btc(d), "--symbol", "BTC\x07USD"),
                                          "BTCUSD_1m.csv", None, "symbol", says=("U+0007", "--symbol")),
    # item 10: naive local times across the end of daylight saving repeat an hour
    "naive-local-time-dst-repeat": Case(_naive_dst_repeat, "BTCUSD_1m.csv", 122, "ts",
                                        says=("non_monotonic", "daylight saving")),
    "aware-and-naive": Case(lambda d: one(_btc(d, _set(9, 0, "2023-03-01 00:07:00"))),
                            "BTCUSD_1m.csv", 9, "ts", says=("no UTC offset",)),
    "unsorted-rows": Case(lambda d: one(_btc(d, _swap)), "BTCUSD_1m.csv", 11, "ts",
                          says=("non_monotonic",)),
    "repeated-header": Case(lambda d: one(_btc(d, lambda ls: ls.insert(11, ls[0]))), "BTCUSD_1m.csv",
                            12, says=("repeated header",)),
    "nan-price": Case(lambda d: one(_btc(d, _set(5, 2, "NaN"))), "BTCUSD_1m.csv", 5, "high",
                      says=("partial_null",)),
    "empty-price": Case(lambda d: one(_btc(d, _set(5, 1, ""))), "BTCUSD_1m.csv", 5, "open",
                        says=("partial_null",)),
    "inf-price": Case(lambda d: one(_btc(d, _set(6, 3, "inf"))), "BTCUSD_1m.csv", 6, "low",
                      says=("non_finite",)),
    "negative-price": Case(lambda d: one(_btc(d, _set(7, 1, "-23144.78"))), "BTCUSD_1m.csv", 7, "open",
                           says=("nonpositive_price",)),
    "zero-price": Case(lambda d: one(_btc(d, _set(8, 4, "0"))), "BTCUSD_1m.csv", 8, "close",
                       says=("nonpositive_price",)),
    "negative-volume": Case(lambda d: one(_btc(d, _set(9, 5, "-1.5"))), "BTCUSD_1m.csv", 9, "volume",
                            says=("negative_volume",)),
    "directory-mixed-formats": Case(_mixed_dir, "mixed", says=("mixes formats", "AAPL_data.csv",
                                                                "BTCUSDT-1m-2023-03.csv")),
    "unknown-headerless-width": Case(_width9, "BTCUSDT-1m.csv", 1, says=("9 columns",)),
    "not-csv-or-parquet": Case(lambda d: one(write_csv_lines(d / "prices.xml", ['<a>1</a>'])),
                               "prices.xml", says=("unsupported file type",)),
    "json-not-freqtrade": Case(lambda d: one(write_csv_lines(d / "prices.json", ['{"a": 1}'])),
                               "prices.json", says=("freqtrade JSON must be a non-empty list",)),
    "corrupt-parquet": Case(_corrupt_parquet, "KO.parquet", says=("Parquet",)),
    "parquet-lacks-column": Case(_parquet_lacks_volume, "KO.parquet", 1, says=("volume",)),
    "non-utf8": Case(_non_utf8, "BTCUSD_1m.csv", 6, says=("UTF-8",)),
    "columns-names-missing": Case(
        lambda d: one(_btc(d), "--format", "generic", "--columns",
                      "ts=open_time,open=open,high=high,low=low,close=close,volume=qty"),
        "BTCUSD_1m.csv", 1, says=("'qty'",)),
    "ambiguous-six-columns": Case(_ambiguous, "BTCUSD.csv", 1, says=("ambiguous", "--format")),
    "good-plus-bad-file": Case(_good_plus_bad, "KO_data.csv", 31, "close", says=("'n/a?'",)),
    "bad-policy-action": Case(lambda d: one(_btc(d), "--policy", "gap=drop"), None,
                              says=("gap=drop not allowed",)),
    "bad-policy-reason": Case(lambda d: one(_btc(d), "--policy", "gaps=keep"), None,
                              says=("unknown reason 'gaps'",)),
    "nonexistent-path": Case(lambda d: ([d / "nope" / "BTCUSD.csv"], []), "nope/BTCUSD.csv",
                             says=("no such file",)),
    "format-yahoo-on-headerless": Case(
        lambda d: one(write_binance_klines(d / "BTCUSDT-1m.csv", 20), "--format", "yahoo"),
        "BTCUSDT-1m.csv", 1, says=("header",)),
    "fractional-trade-count": Case(
        lambda d: one(write_csv_lines(d / "BTCUSDT-1m.csv", [
            ln if i != 2 else ",".join([*ln.split(",")[:8], "12.5", *ln.split(",")[9:]])
            for i, ln in enumerate(write_binance_klines(d / "BTCUSDT-1m.csv", 20).read_text().splitlines())
        ])),
        "BTCUSDT-1m.csv", 3, "trades"),
    "epoch-units-mixed": Case(
        lambda d: one(write_csv_lines(d / "BTCUSDT-1m.csv", [
            ln if i != 4 else ",".join([ln.split(",")[0] + "000000", *ln.split(",")[1:]])
            for i, ln in enumerate(write_binance_klines(d / "BTCUSDT-1m.csv", 20).read_text().splitlines())
        ])),
        "BTCUSDT-1m.csv", 5, "ts", says=("mix units",)),
    "epoch-out-of-range": Case(
        lambda d: one(write_csv_lines(d / "BTCUSDT-1m.csv", [
            f"{1677628800 + 60 * i}000000000,1,2,0.5,1,1" if i != 2 else "10000000000000000000,1,2,0.5,1,1"
            for i in range(10)
        ])),
        "BTCUSDT-1m.csv", 3, "ts", says=("out of range",)),
    "empty-symbol-cell": Case(_yahoo_edit("KO_data.csv", 6, 7, ""), "KO_data.csv", 6, "symbol",
                              says=("missing symbol",)),
    "all-null-row-policy-fail": Case(_yahoo_edit("KO_data.csv", 9, -1, "", 30, "--policy", "all_null=fail"),
                                     "KO_data.csv", 9, says=("all_null",)),
    "duplicate-conflicting-policy-fail": Case(_dup_conflicting, "BTCUSD_1m.csv", 8,
                                              says=("duplicate_conflicting",)),
    "gap-policy-fail": Case(_gap_fail, "BTCUSD_1m.csv", 11, "ts", says=("gap",)),
    "single-row-timeframe-unknown": Case(lambda d: one(_btc(d, n=1, name="BTCUSD.csv")), "BTCUSD.csv",
                                         says=("--timeframe",)),
    "bad-timeframe-option": Case(lambda d: one(_btc(d), "--timeframe", "7m"), None, says=("7m",)),
}


@pytest.fixture(scope="module")
def template_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A store already holding good data (AAPL daily) that no bad ingest may touch."""
    d = tmp_path_factory.mktemp("template")
    src = write_yahoo(d / "AAPL_data.csv", sp500_symbol("AAPL", 60))
    store = d / "store"
    res = cli("data", "ingest", src, "--store", store)
    assert res.exit_code == 0, res.output
    assert (store / "manifest.json").is_file()
    return store


def test_enough_distinct_cases() -> None:
    assert len(CASES) >= 20


@pytest.mark.parametrize("name", sorted(CASES))
def test_bad_input_exits_2_names_location_and_leaves_store_untouched(
    name: str, tmp_path: Path, template_store: Path
) -> None:
    case = CASES[name]
    store = tmp_path / "store"
    shutil.copytree(template_store, store)
    before = snapshot(store)
    inp = tmp_path / "in"
    inp.mkdir()
    paths, extra = case.make(inp)

    res = cli("data", "ingest", *paths, "--store", store, *extra)

    assert res.exit_code == 2, (res.exit_code, res.output)
    err = res.stderr
    assert err.startswith("error:"), err
    assert len(err.strip().splitlines()) == 1, err  # one message, no traceback
    if case.where is not None:
        where = str(inp / case.where)
        if case.line is not None:
            assert f"{where}:{case.line}:" in err, err
        else:
            assert where in err, err
    if case.column is not None:
        assert f"column '{case.column}'" in err, err
    for text in case.says:
        assert text in err, err
    assert snapshot(store) == before, "a failed ingest changed the store"


def test_good_file_alone_would_have_been_written(tmp_path: Path, template_store: Path) -> None:
    """The control for 'good-plus-bad-file': the good file on its own does change the store."""
    store = tmp_path / "store"
    shutil.copytree(template_store, store)
    before = snapshot(store)
    good = write_yahoo(tmp_path / "MSFT_data.csv", sp500_symbol("MSFT", 40))
    res = cli("data", "ingest", good, "--store", store)
    assert res.exit_code == 0, res.output
    assert snapshot(store) != before


def test_validate_on_missing_store_exits_2(tmp_path: Path) -> None:
    res = cli("data", "validate", "--store", tmp_path / "nostore")
    assert res.exit_code == 2
    assert "not a moola store" in res.stderr
    assert str(tmp_path / "nostore") in res.stderr


def test_usage_error_exits_2(tmp_path: Path) -> None:
    res = cli("data", "ingest", tmp_path)  # --store missing
    assert res.exit_code == 2


def test_parquet_bad_value_reports_row_as_line(tmp_path: Path, template_store: Path) -> None:
    """Parquet rows are reported as line row+2 (line 1 = the header)."""
    store = tmp_path / "store"
    shutil.copytree(template_store, store)
    before = snapshot(store)
    df = sp500_symbol("KO", 50).with_columns(
        low=pl.when(pl.int_range(pl.len()) == 17).then(-1.0).otherwise(pl.col("low"))
    )
    p = tmp_path / "KO.parquet"
    df.write_parquet(p)
    res = cli("data", "ingest", p, "--store", store)
    assert res.exit_code == 2
    assert f"{p}:19: column 'low'" in res.stderr, res.stderr
    assert snapshot(store) == before


def test_local_time_offsets_across_a_dst_change_are_read_as_utc(tmp_path: Path) -> None:
    """A New York export around the spring change: -05:00 until 02:00 local, -04:00 after. The
    offsets say exactly which instant each row is, so the file is read, one minute apart in UTC."""
    rows = [ln.split(",")[1:] for ln in btc_csv_lines(60)[1:]]
    utc0 = datetime(2023, 3, 12, 6, 30)  # 01:30 EST
    lines = ["time,open,high,low,close,volume"]
    for i, r in enumerate(rows):
        t = utc0 + timedelta(minutes=i)
        local = t - timedelta(hours=5 if t < datetime(2023, 3, 12, 7, 0) else 4)
        off = "-05:00" if t < datetime(2023, 3, 12, 7, 0) else "-04:00"
        lines.append(",".join([local.strftime("%Y-%m-%dT%H:%M:%S") + off, *r]))
    assert lines[30].startswith("2023-03-12T01:59:00-05:00")
    assert lines[31].startswith("2023-03-12T03:00:00-04:00")
    p = write_csv_lines(tmp_path / "BTCUSD_1m.csv", lines)
    store = tmp_path / "store"
    res = cli("data", "ingest", p, "--store", store)
    assert res.exit_code == 0, res.output
    ts = Store(store).read(Timeframe.M1).get_column("ts")
    assert ts.len() == 60 and ts[0] == datetime(2023, 3, 12, 6, 30, tzinfo=UTC)
    assert (ts.diff().drop_nulls().dt.total_seconds() == 60).all()


def _mixed_file(d: Path) -> tuple[Path, dict[int, str]]:
    """Real BTC minutes with a symbol column, and one line of each of items 1-5 of issue 14 mixed in.
    Returns the file and {physical line: reason} of the bad records."""
    base = btc_csv_lines(40)
    lines = [base[0] + ",symbol"] + [ln + ",BTCUSD" for ln in base[1:]]
    bad: dict[int, str] = {}

    def setf(i: int, col: int, value: str) -> None:
        f = lines[i - 1].split(",")
        f[col] = value
        lines[i - 1] = ",".join(f)

    setf(5, 0, "2262-04-12 00:04:00+00:00"); bad[5] = "bad_timestamp"  # noqa: E702
    setf(8, 0, lines[7].split(",")[0].replace(":00+", ":30+")); bad[8] = "off_grid"  # noqa: E702
    lines[10] = ",,,,,,"; bad[11] = "empty_row"  # noqa: E702
    setf(14, 6, "BTC\x00USD"); bad[14] = "bad_symbol"  # noqa: E702
    setf(17, 6, "B" * 300); bad[17] = "bad_symbol"  # noqa: E702
    setf(20, 6, "BTC\u2028USD"); bad[20] = "bad_symbol"  # noqa: E702
    setf(23, 6, '"BTC\nUSD"'); bad[23] = "bad_symbol"  # noqa: E702 (the record spans lines 23-24)
    return write_csv_lines(d / "BTCUSD_1m.csv", lines), bad


def test_a_mixed_file_names_every_bad_line_and_drop_stores_exactly_the_valid_rows(
    tmp_path: Path, template_store: Path
) -> None:
    p, bad = _mixed_file(tmp_path)
    store = tmp_path / "store"
    shutil.copytree(template_store, store)
    before = snapshot(store)

    # fail (empty rows too): one message naming every bad line; the store is untouched
    res = cli("data", "ingest", p, "--store", store, "--policy", "empty_row=fail")
    assert res.exit_code == 2, res.output
    err = res.stderr
    assert len(err.strip().splitlines()) == 1 and f"{p}:5:" in err, err
    for line, reason in bad.items():
        assert f"line {line}: " in err and reason in err, (line, err)
    assert "7 input line(s)" in err and snapshot(store) == before

    # the defaults fail on all but the empty row, which is dropped and counted
    res = cli("data", "ingest", p, "--store", store)
    assert res.exit_code == 2 and "6 input line(s)" in res.stderr and "line 11:" not in res.stderr
    assert snapshot(store) == before

    # drop: the store holds exactly the valid rows, and every bad line is a counted reject
    res = cli("data", "ingest", p, "--store", store, "--policy", "bad_timestamp=drop",
              "--policy", "off_grid=drop", "--policy", "bad_symbol=drop")
    assert res.exit_code == 0, res.output
    s = Store(store)
    bars = s.read(Timeframe.M1)
    records = 40 - len(bad)  # 40 records (the quoted newline joins lines 23-24 into one)
    assert bars.height == records and bars.get_column("symbol").unique().to_list() == ["BTCUSD"]
    good = set(range(2, 43)) - set(bad) - {24}  # records on lines 2..42, line 24 inside one
    expected = validate_raw(read_file(p).frame.filter(pl.col("_line").is_in(sorted(good))), Timeframe.M1)
    assert bars.select(expected.bars.columns).equals(expected.bars)
    rej = s.read_rejects(Timeframe.M1).sort("line")
    assert dict(zip(rej["line"].to_list(), rej["reason"].to_list(), strict=True)) == bad
    assert set(rej["file"].to_list()) == {str(p)}
    for reason, n in {"bad_timestamp": 1, "off_grid": 1, "empty_row": 1, "bad_symbol": 4}.items():
        assert re.search(rf"{reason}\s*│?\s*{n}\b", res.output), (reason, res.output)
