"""Fuzzing the CSV reader: garbage and mutated real exports either parse to canonical bars
or raise ``MoolaDataError`` (which the CLI turns into one message and exit code 2) — never any
other exception, which would surface to the user as a traceback."""

from __future__ import annotations

import contextlib
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from _data_helpers import assert_canonical, btc_csv_lines, btc_text_rows
from moola.data import Format, MoolaDataError, Timeframe, read_file, validate_raw

SETTINGS = settings(
    max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow], database=None
)

# Valid seeds in several layouts, all from real BTC prices.
_ROWS = btc_text_rows(8)
SEEDS = {
    "binance_header_iso": btc_csv_lines(8),
    "binance_klines": [
        f"{s * 1000},{o},{h},{lo},{c},{v},{(s + 60) * 1000 - 1},1.5,{i},0.1,0.2,0"
        for i, (s, (o, h, lo, c, v)) in enumerate(_ROWS)
    ],
    "kraken": [f"{s},{o},{h},{lo},{c},{v},{i}" for i, (s, (o, h, lo, c, v)) in enumerate(_ROWS)],
    "coinbase": [f"{s},{lo},{h},{o},{c},{v}" for s, (o, h, lo, c, v) in _ROWS],
    "yahoo": [
        "Date,Open,High,Low,Close,Adj Close,Volume,Name",
        "2013-02-08,67.7142,68.4014,66.8928,67.8542,60.5566,158168416,AAPL",
        "2013-02-11,68.0714,69.2771,67.6071,68.5614,61.1878,129029425,AAPL",
        "2013-02-12,68.5014,68.9114,66.8205,66.8428,59.6541,151829363,AAPL",
    ],
}


@pytest.fixture(scope="module")
def workdir() -> Iterator[Path]:
    with tempfile.TemporaryDirectory() as d:
        yield Path(d)


def _check(path: Path, fmt: Format = Format.AUTO) -> None:
    try:
        raw = read_file(path, fmt)
    except MoolaDataError as e:
        assert str(e)  # a message for the user
        return
    assert_canonical(raw.frame)
    assert raw.frame.height > 0
    # what a reader accepts, validation either accepts or rejects with a located error
    with contextlib.suppress(MoolaDataError):
        validate_raw(raw.frame, Timeframe.M1)


@SETTINGS
@given(data=st.binary(max_size=400))
def test_random_bytes(workdir: Path, data: bytes) -> None:
    p = workdir / "BTCUSD_bytes.csv"
    p.write_bytes(data)
    _check(p)


@SETTINGS
@given(text=st.text(alphabet=st.sampled_from(list("0123456789,.-+:eE \n\r\t\"'TZnaif")) | st.characters(),
                    max_size=300))
def test_random_text(workdir: Path, text: str) -> None:
    p = workdir / "BTCUSD_text.csv"
    p.write_text(text, encoding="utf-8", errors="surrogatepass")
    _check(p)


_mutation = st.one_of(
    st.tuples(st.just("drop_field"), st.integers(0, 100), st.integers(0, 20)),
    st.tuples(st.just("insert_text"), st.integers(0, 10_000), st.text(max_size=12)),
    st.tuples(st.just("swap_lines"), st.integers(0, 100), st.integers(0, 100)),
    st.tuples(st.just("unicode"), st.integers(0, 10_000), st.characters()),
    st.tuples(st.just("dup_line"), st.integers(0, 100), st.integers(0, 0)),
    st.tuples(st.just("del_line"), st.integers(0, 100), st.integers(0, 0)),
    st.tuples(st.just("set_field"), st.integers(0, 100),
              st.sampled_from(["", "nan", "inf", "-1", "0", "1e30", "1e400", "-0", "x", "[red]",
                               "2023-03-01", "9" * 25, "1.5e19", "NaT", "None", '"', "1,2"])),
)


def _mutate(lines: list[str], muts: list[tuple]) -> str:
    lines = list(lines)
    for kind, a, b in muts:
        if not lines:
            break
        i = a % len(lines)
        if kind == "drop_field":
            f = lines[i].split(",")
            del f[b % len(f)]
            lines[i] = ",".join(f)
        elif kind == "set_field":
            f = lines[i].split(",")
            f[(a // 7) % len(f)] = b
            lines[i] = ",".join(f)
        elif kind == "swap_lines":
            j = b % len(lines)
            lines[i], lines[j] = lines[j], lines[i]
        elif kind == "dup_line":
            lines.insert(i, lines[i])
        elif kind == "del_line":
            del lines[i]
        else:  # insert text / a unicode character at a character offset
            text = "\n".join(lines)
            k = a % (len(text) + 1)
            lines = (text[:k] + b + text[k:]).split("\n")
    return "\n".join(lines) + "\n"


@SETTINGS
@given(
    seed=st.sampled_from(sorted(SEEDS)),
    muts=st.lists(_mutation, min_size=1, max_size=4),
    fmt=st.sampled_from([Format.AUTO, Format.AUTO, Format.AUTO, *Format]),
)
def test_mutated_real_csv(workdir: Path, seed: str, muts: list[tuple], fmt: Format) -> None:
    p = workdir / "BTCUSD_mut.csv"
    p.write_text(_mutate(SEEDS[seed], muts), encoding="utf-8", errors="surrogatepass")
    _check(p, fmt)


def test_unmutated_seeds_parse(workdir: Path) -> None:
    for name, lines in SEEDS.items():
        p = workdir / "BTCUSD_seed.csv"
        p.write_text("\n".join(lines) + "\n")
        raw = read_file(p)
        assert raw.frame.height == len(lines) - (1 if name.startswith(("binance_header", "yahoo")) else 0)


@pytest.mark.parametrize(
    "text",
    [
        "1e19,1,1,1,1,1,5\n1e19,1,1,1,1,1,5\n",  # epoch beyond int64 nanoseconds
        "-1e30,1,2,0.5,1,1,5\n",
        "1677628800,1,2,0.5,1,1,1e30\n1677628860,1,2,0.5,1,1,5\n",  # trade count beyond int64
        "a" * 200_000 + "\n",  # a field beyond the csv module's limit
        "open_time,open,high,low,close,volume\n99999999999999999999,1,2,0.5,1,1\n",
    ],
    ids=["epoch-overflow", "negative-epoch-overflow", "trades-overflow", "huge-field", "ts-overflow"],
)
def test_known_crashers_raise_moola_errors(workdir: Path, text: str) -> None:
    p = workdir / "BTCUSD_crash.csv"
    p.write_text(text)
    with pytest.raises(MoolaDataError):  # by the reader, or by validation of the row it faulted
        validate_raw(read_file(p).frame, Timeframe.M1)
