"""Readers and format detection: real prices re-encoded in each venue's layout come back
as the same canonical bars (UTC ns timestamps, un-swapped columns, the right symbol)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import polars as pl
import pytest

from _data_helpers import (
    BTC_CSV,
    CRYPTO_MARKETS,
    OHLCV,
    assert_canonical,
    btc_frame,
    btc_text_rows,
    shared_crypto,
    sp500_symbol,
    write_binance6,
    write_binance_klines,
    write_coinbase,
    write_csv_lines,
    write_kraken,
    write_yahoo,
)
from _real_data import require_shared
from moola.data import (
    Format,
    IngestError,
    Store,
    Timeframe,
    ingest,
    list_input_files,
    parse_columns_mapping,
    read_file,
)

N = 50


def _assert_same_bars(df: pl.DataFrame, src: pl.DataFrame) -> None:
    assert df.height == src.height
    assert df.get_column("ts").to_list() == src.get_column("ts").to_list()
    for c in OHLCV:
        np.testing.assert_array_equal(df.get_column(c).to_numpy(), src.get_column(c).to_numpy(), err_msg=c)


# ----------------------------------------------------------------------- crypto venues


@pytest.mark.parametrize("unit", ["ms", "us"])
def test_binance_klines_12_columns(tmp_path: Path, unit: str) -> None:
    p = write_binance_klines(tmp_path / f"BTCUSDT-1m-2023-03-{unit}.csv", N, unit=unit)
    raw = read_file(p)
    assert raw.format is Format.BINANCE
    assert raw.timeframe is Timeframe.M1
    df = raw.frame
    assert_canonical(df)
    _assert_same_bars(df, btc_frame(N))
    assert df.get_column("symbol").unique().to_list() == ["BTCUSDT"]
    assert df.get_column("trades").to_list() == list(range(100, 100 + N))
    # ms and µs encode the same instants: the first bar opens 2023-03-01 00:00 UTC
    assert df.get_column("ts")[0].isoformat() == "2023-03-01T00:00:00+00:00"
    assert df.get_column("_line").to_list() == list(range(1, N + 1))  # headerless: line 1 = row 1


def test_binance_6_columns_with_header(tmp_path: Path) -> None:
    p = write_binance6(tmp_path / "binanceus_ETHBTC_1m.csv", N, header=True)
    raw = read_file(p)
    assert raw.format is Format.BINANCE
    _assert_same_bars(raw.frame, btc_frame(N))
    assert raw.frame.get_column("symbol")[0] == "ETHBTC"
    assert raw.frame.get_column("_line").to_list() == list(range(2, N + 2))


def test_binance_6_columns_headerless_ms(tmp_path: Path) -> None:
    p = write_binance6(tmp_path / "BTCUSD.csv", N, header=False)
    raw = read_file(p)
    assert raw.format is Format.BINANCE
    _assert_same_bars(raw.frame, btc_frame(N))


def test_kraken_ohlcvt(tmp_path: Path) -> None:
    p = write_kraken(tmp_path / "XBTUSD_1.csv", N)
    raw = read_file(p)
    assert raw.format is Format.KRAKEN
    assert_canonical(raw.frame)
    _assert_same_bars(raw.frame, btc_frame(N))
    assert raw.frame.get_column("trades").to_list() == list(range(7, 7 + N))
    assert raw.frame.get_column("symbol")[0] == "XBTUSD"


def test_coinbase_candles_columns_unswapped(tmp_path: Path) -> None:
    p = write_coinbase(tmp_path / "coinbase_BTC-USD_60.csv", N)
    raw = read_file(p)
    assert raw.format is Format.COINBASE
    df = raw.frame
    assert_canonical(df)
    _assert_same_bars(df, btc_frame(N))
    # the file's 2nd column is LOW and 4th is OPEN: canonical open/low must come back swapped
    first = btc_text_rows(N)[0][1]
    assert df.get_column("open")[0] == float(first[0])
    assert df.get_column("low")[0] == float(first[2])
    assert df.select((pl.col("high") >= pl.max_horizontal("open", "close")).all()).item()
    assert df.select((pl.col("low") <= pl.min_horizontal("open", "close")).all()).item()
    assert df.get_column("symbol")[0] == "BTC"


def test_coinbase_explicit_format_and_header(tmp_path: Path) -> None:
    rows = btc_text_rows(N)
    lines = ["time,low,high,open,close,volume"] + [
        f"{s},{lo},{h},{o},{c},{v}" for s, (o, h, lo, c, v) in rows
    ]
    p = write_csv_lines(tmp_path / "candles.csv", lines)
    raw = read_file(p, symbol="BTC-USD")
    assert raw.format is Format.COINBASE
    _assert_same_bars(raw.frame, btc_frame(N))
    raw2 = read_file(write_coinbase(tmp_path / "cb.csv", N), Format.COINBASE, symbol="BTC-USD")
    _assert_same_bars(raw2.frame, btc_frame(N))


def test_bundled_crypto_csv_auto(tmp_path: Path) -> None:
    raw = read_file(BTC_CSV)
    assert raw.format is Format.BINANCE
    assert raw.timeframe is Timeframe.M1
    assert raw.frame.height == 30_240
    assert raw.frame.get_column("symbol").unique().to_list() == ["BTCUSD"]
    ts = raw.frame.get_column("ts")
    assert ts.dtype == pl.Datetime("ns", "UTC")
    assert ts[0].isoformat() == "2023-03-01T00:00:00+00:00"
    assert ts[-1].isoformat() == "2023-03-21T23:59:00+00:00"
    assert (ts.diff().drop_nulls().dt.total_seconds() == 60).all()
    res = ingest([BTC_CSV], Store(tmp_path / "s"))
    rep = res.reports[Timeframe.M1]
    assert rep.rows_in == rep.rows_out == 30_240
    assert "gap" not in rep.totals()
    assert Store(tmp_path / "s").read().height == 30_240


@pytest.mark.parametrize("market", CRYPTO_MARKETS)
def test_shared_crypto_csvs_auto(tmp_path: Path, market: str) -> None:
    p = require_shared(shared_crypto(market))
    res = ingest([p], Store(tmp_path / "s"))
    assert [r.format for r in res.files] == [Format.BINANCE]
    assert list(res.reports) == [Timeframe.M1]
    rep = res.reports[Timeframe.M1]
    assert rep.rows_in == rep.rows_out == 30_240
    assert rep.totals().get("gap", 0) == 0
    bars = Store(tmp_path / "s").read()
    assert bars.get_column("symbol").unique().to_list() == [market]
    assert (bars.get_column("ts").diff().drop_nulls().dt.total_seconds() == 60).all()


# ---------------------------------------------------------------------------- Yahoo


@pytest.mark.parametrize("with_name", [False, True])
def test_yahoo_csv(tmp_path: Path, with_name: bool) -> None:
    src = sp500_symbol("AAPL", N)
    fname = "prices.csv" if with_name else "AAPL_data.csv"
    p = write_yahoo(tmp_path / fname, src, name=with_name)
    raw = read_file(p)
    assert raw.format is Format.YAHOO
    df = raw.frame
    assert_canonical(df)
    assert df.get_column("symbol").unique().to_list() == ["AAPL"]
    expected_ts = src.get_column("date").cast(pl.Datetime("ns")).dt.replace_time_zone("UTC")
    assert df.get_column("ts").to_list() == expected_ts.to_list()
    for c in ("open", "high", "low", "close", "adj_close", "volume"):
        np.testing.assert_array_equal(df[c].to_numpy(), src[c].to_numpy(), err_msg=c)


def test_yahoo_name_column_beats_file_name_and_symbol_option_beats_both(tmp_path: Path) -> None:
    src = pl.concat([sp500_symbol("AAPL", 10), sp500_symbol("MSFT", 10)])
    p = write_yahoo(tmp_path / "XOM_data.csv", src, name=True)
    assert sorted(read_file(p).frame["symbol"].unique().to_list()) == ["AAPL", "MSFT"]
    assert read_file(p, symbol="ZZZ").frame["symbol"].unique().to_list() == ["ZZZ"]


def test_directory_of_per_symbol_yahoo_files(tmp_path: Path) -> None:
    d = tmp_path / "stocks"
    syms = ["AAPL", "MSFT", "KO"]
    for s in syms:
        write_yahoo(d / f"{s}_data.csv", sp500_symbol(s, 30))
    assert [f.name for f in list_input_files([d])] == sorted(f"{s}_data.csv" for s in syms)
    store = Store(tmp_path / "s")
    res = ingest([d], store)
    assert {r.format for r in res.files} == {Format.YAHOO}
    assert list(res.reports) == [Timeframe.D1]
    assert store.symbols() == sorted(syms)
    bars = store.read()
    for s in syms:
        got = bars.filter(pl.col("symbol") == s)
        np.testing.assert_array_equal(got["close"].to_numpy(), sp500_symbol(s, 30)["close"].to_numpy())


# -------------------------------------------------------------------------- Parquet


def test_parquet_input(tmp_path: Path) -> None:
    src = sp500_symbol("KO", None)
    p = tmp_path / "ko.parquet"
    src.write_parquet(p)
    raw = read_file(p)
    assert raw.format is Format.YAHOO
    df = raw.frame
    assert_canonical(df)
    assert df.height == src.height
    assert df["ts"].to_list() == (
        src["date"].cast(pl.Datetime("ns")).dt.replace_time_zone("UTC").to_list()
    )
    np.testing.assert_array_equal(df["adj_close"].to_numpy(), src["adj_close"].to_numpy())
    assert df["_line"][0] == 2  # row 0 reported as line 2 (line 1 = header)


def test_parquet_with_datetime_column(tmp_path: Path) -> None:
    src = btc_frame(N).with_columns(pl.col("ts").dt.replace_time_zone(None).alias("timestamp")).drop("ts")
    p = tmp_path / "BTCUSD_1m.parquet"
    src.write_parquet(p)
    raw = read_file(p)
    _assert_same_bars(raw.frame, btc_frame(N))
    assert raw.frame["symbol"][0] == "BTCUSD"


# -------------------------------------------------------------------------- generic


def test_generic_columns_by_name(tmp_path: Path) -> None:
    rows = btc_text_rows(N)
    # column names no venue uses, in an unusual order, plus a column to ignore
    lines = ["zeit,schluss,hoch,tief,eroeffnung,menge,extra"] + [
        f"{s},{c},{h},{lo},{o},{v},x" for s, (o, h, lo, c, v) in rows
    ]
    p = write_csv_lines(tmp_path / "BTCEUR.csv", lines)
    cols = parse_columns_mapping(
        "ts=zeit,open=eroeffnung,high=hoch,low=tief,close=schluss,volume=menge"
    )
    raw = read_file(p, Format.GENERIC, columns=cols)
    assert raw.format is Format.GENERIC
    _assert_same_bars(raw.frame, btc_frame(N))
    assert raw.frame["_line"][0] == 2


def test_generic_columns_by_name_with_known_aliases(tmp_path: Path) -> None:
    rows = btc_text_rows(N)
    lines = ["time,o,h,l,c,v"] + [f"{s},{o},{h},{lo},{c},{v}" for s, (o, h, lo, c, v) in rows]
    p = write_csv_lines(tmp_path / "BTCEUR.csv", lines)
    cols = parse_columns_mapping("ts=time,open=o,high=h,low=l,close=c,volume=v")
    raw = read_file(p, Format.GENERIC, columns=cols)
    _assert_same_bars(raw.frame, btc_frame(N))


def test_generic_columns_by_position(tmp_path: Path) -> None:
    rows = btc_text_rows(N)
    # 8 headerless columns (no known width): volume first, a junk column, ts in the middle
    lines = [f"{v},junk,{s * 1000},{o},{h},{lo},{c},1" for s, (o, h, lo, c, v) in rows]
    p = write_csv_lines(tmp_path / "BTCUSD.csv", lines)
    cols = parse_columns_mapping("ts=2,open=3,high=4,low=5,close=6,volume=0")
    raw = read_file(p, Format.GENERIC, columns=cols)
    assert raw.format is Format.GENERIC
    _assert_same_bars(raw.frame, btc_frame(N))
    assert raw.frame["_line"][0] == 1


def test_generic_positions_on_a_header_file(tmp_path: Path) -> None:
    p = write_binance6(tmp_path / "BTCUSD.csv", N, header=True)
    cols = parse_columns_mapping("ts=0,open=1,high=2,low=3,close=4,volume=5")
    raw = read_file(p, Format.GENERIC, columns=cols)
    _assert_same_bars(raw.frame, btc_frame(N))


# ------------------------------------------------------------------- timestamps / tz


def test_uniform_offset_is_converted_to_utc(tmp_path: Path) -> None:
    rows = btc_text_rows(5)
    lines = ["timestamp,open,high,low,close,volume"]
    for s, (o, h, lo, c, v) in rows:
        # the same instants written in +02:00
        from datetime import UTC, datetime, timedelta, timezone

        t = datetime.fromtimestamp(s, UTC).astimezone(timezone(timedelta(hours=2)))
        lines.append(f"{t.isoformat()},{o},{h},{lo},{c},{v}")
    p = write_csv_lines(tmp_path / "BTCUSD.csv", lines)
    df = read_file(p).frame
    assert df["ts"].to_list() == btc_frame(5)["ts"].to_list()


def test_naive_datetimes_are_utc(tmp_path: Path) -> None:
    rows = btc_text_rows(5)
    from datetime import UTC, datetime

    lines = ["timestamp,open,high,low,close,volume"] + [
        f"{datetime.fromtimestamp(s, UTC).strftime('%Y-%m-%d %H:%M:%S')},{o},{h},{lo},{c},{v}"
        for s, (o, h, lo, c, v) in rows
    ]
    df = read_file(write_csv_lines(tmp_path / "BTCUSD.csv", lines)).frame
    assert df["ts"].to_list() == btc_frame(5)["ts"].to_list()


# ------------------------------------------------------------------------ ambiguity


def _flat_six(tmp_path: Path, n: int = 20) -> Path:
    """o=h=l=c: valid bars in Binance/Kraken order AND in Coinbase order; epoch seconds."""
    lines = []
    for s, (_o, _h, _lo, c, v) in btc_text_rows(n):
        lines.append(f"{s},{c},{c},{c},{c},{v}")
    return write_csv_lines(tmp_path / "BTCUSD.csv", lines)


def test_ambiguous_six_columns_raises_with_advice(tmp_path: Path) -> None:
    p = _flat_six(tmp_path)
    with pytest.raises(IngestError) as ei:
        read_file(p)
    msg = str(ei.value)
    assert "ambiguous" in msg
    assert "--format" in msg
    assert str(p) in msg
    assert ei.value.line == 1
    # naming the format resolves it
    for fmt in (Format.COINBASE, Format.KRAKEN):
        raw = read_file(p, fmt)
        assert raw.format is fmt
        assert raw.frame.height == 20


def test_six_columns_neither_layout_raises(tmp_path: Path) -> None:
    # high below low in every row: invalid in both orders
    lines = [f"{s},{lo},{lo},{h},{h},{v}" for s, (_o, h, lo, _c, v) in btc_text_rows(10)]
    p = write_csv_lines(tmp_path / "BTCUSD.csv", lines)
    with pytest.raises(IngestError, match="neither"):
        read_file(p)


def test_explicit_format_contradicting_header_raises(tmp_path: Path) -> None:
    p = write_yahoo(tmp_path / "AAPL.csv", sp500_symbol("AAPL", 5))
    with pytest.raises(IngestError, match="yahoo header"):
        read_file(p, Format.BINANCE)


def test_symbol_from_file_name_variants(tmp_path: Path) -> None:
    from moola.data._readers import symbol_from_filename, timeframe_from_filename

    assert symbol_from_filename(Path("binanceus_BTCUSD_1m_2023-03-01.csv")) == "BTCUSD"
    assert symbol_from_filename(Path("AAPL_data.csv")) == "AAPL"
    assert symbol_from_filename(Path("BTCUSDT-1m-2023-03.csv")) == "BTCUSDT"
    assert symbol_from_filename(Path("2023_data.csv")) is None
    assert timeframe_from_filename(Path("BTCUSDT-1m-2023-03.csv")) is Timeframe.M1
    assert timeframe_from_filename(Path("AAPL_data.csv")) is None


def test_no_symbol_anywhere_raises(tmp_path: Path) -> None:
    p = write_binance6(tmp_path / "2023_data.csv", 5)
    with pytest.raises(IngestError, match="--symbol"):
        read_file(p)
