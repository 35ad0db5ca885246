"""freqtrade data directories: Feather, Parquet and JSON files named ``BTC_USDT-1m.*`` (spot)
and ``BTC_USDT_USDT-1m-futures.*`` (futures) are auto-detected and read into the same
canonical bars, with symbol and timeframe from the name.

The fixture ``tests/fixtures/freqtrade/BTC_USDT-1m.feather`` is the first 300 rows of the
real Binance spot file in the shared data (``crypto_binance_spot_3m``), written with pyarrow
as freqtrade writes it; the Parquet and JSON variants are written from it in each test.
"""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import numpy as np
import polars as pl
import pyarrow.feather as pf
import pyarrow.parquet as pq
import pytest

from _real_data import SHARED_DATA, require_shared
from moola.data import Format, IngestError, Store, Timeframe, ingest, read_file

FIXTURE = Path(__file__).parent / "fixtures" / "freqtrade" / "BTC_USDT-1m.feather"
SHARED_SPOT = SHARED_DATA / "crypto_binance_spot_3m"
SHARED_BYBIT = SHARED_DATA / "crypto_bybit_1m"
OHLCV = ("open", "high", "low", "close", "volume")
N_FIXTURE = 300


def _source() -> pl.DataFrame:
    """The fixture as polars reads it: date (UTC), open, high, low, close, volume."""
    return pl.read_ipc(FIXTURE)


def _write(df: pl.DataFrame, path: Path) -> Path:
    """Write ``df`` (freqtrade columns) the way freqtrade writes each of its data formats."""
    name = path.name
    if name.endswith(".feather"):
        pf.write_feather(df.to_arrow(), path)
    elif name.endswith(".parquet"):
        pq.write_table(df.to_arrow(), path)
    else:  # json / json.gz: a list of [ms, o, h, l, c, v] rows (pandas orient="values")
        ms = df.get_column("date").dt.epoch("ms").to_list()
        rows = [[t, *vals] for t, *vals in zip(ms, *(df.get_column(c).to_list() for c in OHLCV),
                                                strict=True)]
        text = json.dumps(rows).encode()
        path.write_bytes(gzip.compress(text) if name.endswith(".gz") else text)
    return path


def _assert_bars(frame: pl.DataFrame, src: pl.DataFrame) -> None:
    assert frame.height == src.height
    assert frame.get_column("ts").to_list() == src.get_column("date").to_list()
    for c in OHLCV:
        np.testing.assert_array_equal(frame.get_column(c).to_numpy(),
                                      src.get_column(c).to_numpy(), err_msg=c)


def test_fixture_is_the_real_file_head() -> None:
    """The committed fixture is exactly the shared file's first rows (when it is here)."""
    shared = require_shared(SHARED_SPOT / "BTC_USDT-1m.feather")
    assert _source().equals(pl.read_ipc(shared).head(N_FIXTURE))


@pytest.mark.parametrize("suffix", [".feather", ".parquet", ".json", ".json.gz"])
@pytest.mark.parametrize(
    ("stem", "symbol"),
    [("BTC_USDT-1m", "BTCUSDT"), ("BTC_USDT_USDT-1m-futures", "BTCUSDT:USDT")],
    ids=["spot", "futures"],
)
def test_each_file_type_and_name_form(tmp_path: Path, suffix: str, stem: str, symbol: str) -> None:
    src = _source()
    p = _write(src, tmp_path / f"{stem}{suffix}")
    raw = read_file(p)  # auto
    assert raw.format is Format.FREQTRADE
    assert raw.timeframe is Timeframe.M1
    assert raw.frame.get_column("symbol").unique().to_list() == [symbol]
    _assert_bars(raw.frame, src)
    assert raw.frame.get_column("ts").dtype == pl.Datetime("ns", "UTC")
    assert raw.frame.get_column("ts")[0].isoformat() == "2025-05-20T00:00:00+00:00"
    first_line = 1 if ".json" in suffix else 2  # JSON: row 1; columnar: row r as line r+2
    assert raw.frame.get_column("_line").to_list() == list(range(first_line, first_line + src.height))
    assert read_file(p, Format.FREQTRADE).frame.equals(raw.frame)


def test_directory_with_spot_and_futures_keeps_them_apart(tmp_path: Path) -> None:
    """One freqtrade directory, three file types: spot and futures of a pair never merge."""
    src = _source()
    d = tmp_path / "binance"
    d.mkdir()
    _write(src.head(200), d / "BTC_USDT-1m.feather")
    _write(src.slice(100), d / "ETH_USDT-1m.json")  # another "pair": same prices, other symbol
    _write(src.with_columns(pl.col("close") * 1.001, pl.col("high") * 1.001),
           d / "BTC_USDT_USDT-1m-futures.parquet")
    store = Store(tmp_path / "store")
    res = ingest([d], store)
    assert {r.format for r in res.files} == {Format.FREQTRADE}
    assert list(res.writes) == [Timeframe.M1]
    bars = store.read(Timeframe.M1)
    counts = dict(bars.group_by("symbol").len().iter_rows())
    assert counts == {"BTCUSDT": 200, "ETHUSDT": N_FIXTURE - 100, "BTCUSDT:USDT": N_FIXTURE}
    fut = bars.filter(pl.col("symbol") == "BTCUSDT:USDT")
    np.testing.assert_allclose(fut.get_column("close").to_numpy(),
                               src.get_column("close").to_numpy() * 1.001)


def test_freqtrade_layout_in_a_file_not_named_like_freqtrade(tmp_path: Path) -> None:
    """A Feather file is freqtrade's layout whatever its name; the symbol comes from the name
    as for every other export, and Parquet stays the generic/Yahoo reader without a hint."""
    src = _source()
    raw = read_file(_write(src, tmp_path / "binance_BTCUSDT_1m.feather"))
    assert raw.format is Format.FREQTRADE
    assert raw.frame.get_column("symbol")[0] == "BTCUSDT"
    _assert_bars(raw.frame, src)
    pq_raw = read_file(_write(src, tmp_path / "BTCUSDT_1m.parquet"), Format.FREQTRADE)
    assert pq_raw.format is Format.FREQTRADE
    _assert_bars(pq_raw.frame, src)


# ------------------------------------------------------------------------------- bad input


@pytest.mark.parametrize("suffix", [".feather", ".parquet"])
def test_missing_column_names_file_and_column(tmp_path: Path, suffix: str) -> None:
    p = _write(_source().drop("volume"), tmp_path / f"BTC_USDT-1m{suffix}")
    with pytest.raises(IngestError) as e:
        read_file(p)
    assert e.value.path == str(p)
    assert e.value.column == "volume"
    assert "lacks column(s) ['volume']" in str(e.value)
    assert str(p) in str(e.value)


def test_renamed_date_column_is_missing_date(tmp_path: Path) -> None:
    p = _write(_source().rename({"date": "timestamp"}), tmp_path / "ETH_USDT-1m.parquet")
    with pytest.raises(IngestError, match=r"lacks column\(s\) \['date'\]") as e:
        read_file(p)
    assert e.value.column == "date"


def test_extra_column_is_ambiguous(tmp_path: Path) -> None:
    """A file named like freqtrade's with a Yahoo-style adj_close is not freqtrade's."""
    df = _source().with_columns(adj_close=pl.col("close"))
    p = _write(df, tmp_path / "BTC_USDT-1m.parquet")
    with pytest.raises(IngestError, match=r"ambiguous file.*\['adj_close'\]") as e:
        read_file(p)
    assert e.value.path == str(p)
    # saying which layout it is resolves it
    assert read_file(p, Format.YAHOO).format is Format.YAHOO


@pytest.mark.parametrize(
    ("body", "line", "match"),
    [
        ('[[1747699200000, 1.0, 2.0, 0.5, 1.5, 3.0], [1747699260000, 1.0, 2.0, 0.5]]', 2,
         "row 2 is"),
        ('[[1747699200000, "1.0", 2.0, 0.5, 1.5, 3.0]]', 1, "row 1 is"),
        ('{"date": [1747699200000]}', None, "non-empty list"),
        ('[[1747699200000, 1.0, 2.0, 0.5, 1.5', None, "not readable as freqtrade JSON"),
    ],
    ids=["short-row", "string-value", "not-a-list", "truncated"],
)
def test_bad_json(tmp_path: Path, body: str, line: int | None, match: str) -> None:
    p = tmp_path / "BTC_USDT-1m.json"
    p.write_text(body)
    with pytest.raises(IngestError, match=match) as e:
        read_file(p)
    assert e.value.path == str(p)
    assert e.value.line == line


@pytest.mark.parametrize(
    ("name", "match"),
    [
        ("BTC_USDT_USDT-8h-funding_rate.feather", "'funding_rate' candles are not traded bars"),
        ("BTC_USDT_USDT-1m-mark.feather", "'mark' candles are not traded bars"),
        ("BTC_USDT-3m.feather", "timeframe '3m'.*valid: 1m, 5m, 15m, 1h, 4h, 1d"),
        ("BTC_USDT-1m-futures.feather", "mixes the two"),
        ("BTC_USDT-1m-options.feather", "unknown freqtrade candle type 'options'"),
    ],
)
def test_bad_freqtrade_names(tmp_path: Path, name: str, match: str) -> None:
    p = _write(_source().head(5), tmp_path / name)
    with pytest.raises(IngestError, match=match) as e:
        read_file(p)
    assert e.value.path == str(p)


def test_csv_names_keep_the_generic_rules(tmp_path: Path) -> None:
    """freqtrade writes no CSV: a CSV named like ``X_Y-3m`` is not parsed as freqtrade's."""
    src = _source().head(20)
    p = tmp_path / "AAPL_data-3m.csv"
    src.rename({"date": "timestamp"}).write_csv(p)
    raw = read_file(p)
    assert raw.format is Format.GENERIC
    assert raw.frame.get_column("symbol")[0] == "AAPL"
    _assert_bars(raw.frame, src)


def test_json_refuses_other_formats(tmp_path: Path) -> None:
    p = _write(_source().head(5), tmp_path / "BTC_USDT-1m.json")
    with pytest.raises(IngestError, match="--format binance does not apply to JSON"):
        read_file(p, Format.BINANCE)


# ----------------------------------------------------------------------- shared real data


def test_shared_binance_spot_directory(tmp_path: Path) -> None:
    """The acceptance: the freqtrade Feather directory is auto-detected and every one of the
    130,708 bars per symbol is stored, with no finding."""
    d = require_shared(SHARED_SPOT)
    store = Store(tmp_path / "store")
    res = ingest([d], store)
    assert {r.format for r in res.files} == {Format.FREQTRADE}
    rep = res.reports[Timeframe.M1]
    assert rep.rows_in == rep.rows_out == 2 * 130_708
    assert not rep.has_findings
    assert store.symbols(Timeframe.M1) == ["BTCUSDT", "ETHUSDT"]
    bars = store.read(Timeframe.M1)
    per = bars.group_by("symbol").agg(pl.len(), pl.col("ts").min().alias("first"),
                                      pl.col("ts").max().alias("last")).sort("symbol")
    assert per.get_column("len").to_list() == [130_708, 130_708]
    assert {t.isoformat() for t in per.get_column("first")} == {"2025-05-20T00:00:00+00:00"}
    assert {t.isoformat() for t in per.get_column("last")} == {"2025-08-18T18:27:00+00:00"}


def test_shared_bybit_directory(tmp_path: Path) -> None:
    """The Bybit month (plain CSV, ISO timestamps with offset) ingests as it is: seven
    symbols, 43,200 bars each."""
    d = require_shared(SHARED_BYBIT)
    store = Store(tmp_path / "store")
    ingest([d], store)
    bars = store.read(Timeframe.M1)
    counts = dict(bars.group_by("symbol").len().iter_rows())
    assert counts == {s: 43_200 for s in
                      ("ADAUSDT", "BNBUSDT", "BTCUSDT", "DOGEUSDT", "DOTUSDT", "ETHUSDT", "SOLUSDT")}
