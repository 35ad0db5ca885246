"""Bad input through the CLI: exit code 2, ONE message naming the file, the line and (where
one applies) the column, and a pre-populated store left byte-for-byte untouched."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
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
    "mixed-timezones": Case(lambda d: one(_btc(d, _set(7, 0, "2023-03-01 07:05:00+02:00"))),
                            "BTCUSD_1m.csv", 7, "ts", says=("+02:00",)),
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
