"""Several symbols on one clock: ``align_symbols`` keeps the timestamps all symbols share,
never moves a bar, and accounts per symbol for late starts, holes and off-grid bars."""

from __future__ import annotations

from datetime import timedelta

import polars as pl
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from _real_data import SHARED_DATA, load_crypto, load_daily, require_shared
from moola.data import (
    Alignment,
    AlignmentError,
    Store,
    SymbolAlignment,
    Timeframe,
    align_symbols,
    ingest,
)

SHARED_BYBIT = SHARED_DATA / "crypto_bybit_1m"
# minutes after 16:39 at which each Bybit file starts (from the files themselves)
BYBIT_LATE = {"ADAUSDT": 1, "BNBUSDT": 1, "BTCUSDT": 0, "DOGEUSDT": 3, "DOTUSDT": 2,
              "ETHUSDT": 0, "SOLUSDT": 2}


@pytest.fixture(scope="module")
def bybit(tmp_path_factory: pytest.TempPathFactory) -> pl.DataFrame:
    d = require_shared(SHARED_BYBIT)
    store = Store(tmp_path_factory.mktemp("bybit") / "store")
    ingest([d], store)
    return store.read(Timeframe.M1)


def _account(al: Alignment, symbol: str) -> SymbolAlignment:
    return next(s for s in al.symbols if s.symbol == symbol)


def _assert_rows_unchanged(aligned: pl.DataFrame, source: pl.DataFrame) -> None:
    """Every kept row is the source row at the same (symbol, ts): nothing shifted."""
    cols = [c for c in ("open", "high", "low", "close", "volume") if c in aligned.columns]
    joined = aligned.join(source, on=["symbol", "ts"], how="left", suffix="_src")
    for c in cols:
        assert joined.get_column(c).equals(joined.get_column(f"{c}_src"), check_names=False), c


def test_bybit_month_starts_apart(bybit: pl.DataFrame) -> None:
    al = align_symbols(bybit, "1m")
    assert al.start.isoformat() == "2025-05-30T16:42:00+00:00"  # DOGEUSDT's first bar
    assert al.end.isoformat() == "2025-06-29T16:38:00+00:00"  # BTC/ETH's last bar
    assert al.timestamps.len() == 43_200 - 3
    assert {s.symbol: s.late_start for s in al.symbols} == BYBIT_LATE
    for s in al.symbols:
        assert s.bars == 43_200 and s.missing == 0 and s.off_clock == 0
        assert s.kept == 43_197
        assert s.dropped_before == 3 - BYBIT_LATE[s.symbol]
        assert s.dropped_after == BYBIT_LATE[s.symbol]
    assert al.complete
    per = al.bars.group_by("symbol").agg(pl.col("ts"))
    assert all(ts == al.timestamps.to_list() for ts in per.get_column("ts").to_list())
    _assert_rows_unchanged(al.bars, bybit)
    text = "\n".join(al.summary())
    assert "DOGEUSDT: starts 3 bar(s) after the earliest symbol" in text


def test_holes_are_reported_not_filled(bybit: pl.DataFrame) -> None:
    t0 = pl.datetime(2025, 6, 10, 12, 0, time_zone="UTC")
    sol_hole = (pl.col("symbol") == "SOLUSDT") & pl.col("ts").is_between(
        t0, t0 + timedelta(minutes=4))  # 5 minutes
    eth_hole = (pl.col("symbol") == "ETHUSDT") & (pl.col("ts") == t0 + timedelta(hours=1))
    holed = bybit.filter(~(sol_hole | eth_hole))
    al = align_symbols(holed, Timeframe.M1)
    sol, eth, btc = (_account(al, s) for s in ("SOLUSDT", "ETHUSDT", "BTCUSDT"))
    assert (sol.missing, eth.missing, btc.missing) == (5, 1, 0)
    assert sol.first_missing[0].isoformat() == "2025-06-10T12:00:00+00:00"
    assert len(sol.first_missing) == 5
    assert (sol.absent_elsewhere, eth.absent_elsewhere, btc.absent_elsewhere) == (1, 5, 6)
    assert al.timestamps.len() == 43_197 - 6
    assert not al.complete
    assert "SOLUSDT: starts 2 bar(s) after the earliest symbol; misses 5 bar(s)" in "\n".join(
        al.summary())
    _assert_rows_unchanged(al.bars, holed)


def test_off_grid_bar_is_dropped_never_moved() -> None:
    a = load_crypto(120).with_columns(pl.lit("A").alias("symbol"))
    b = load_crypto(120).with_columns(pl.lit("B").alias("symbol"))
    odd = a.with_columns(
        pl.when(pl.int_range(pl.len()) == 50).then(pl.col("ts") + timedelta(seconds=30))
        .otherwise(pl.col("ts")).cast(pl.Datetime("ns", "UTC")).alias("ts"))
    al = align_symbols(pl.concat([odd, b]), "1m")
    acc = _account(al, "A")
    assert (acc.off_clock, acc.missing, acc.kept) == (1, 1, 119)
    assert _account(al, "B").absent_elsewhere == 1
    assert al.bars.filter(pl.col("ts").dt.second() != 0).height == 0
    _assert_rows_unchanged(al.bars, pl.concat([odd, b]))


def test_daily_uses_the_union_calendar() -> None:
    """Daily bars have no regular grid: the clock is every date any symbol trades."""
    df = load_daily(max_rows_per_symbol=300)
    syms = sorted(df.get_column("symbol").unique().to_list())[:2]
    df = df.filter(pl.col("symbol").is_in(syms))
    second = df.filter(pl.col("symbol") == syms[1])
    dropped = second.slice(100, 3).get_column("ts")
    holed = df.filter(~((pl.col("symbol") == syms[1]) & pl.col("ts").is_in(dropped.implode())))
    al = align_symbols(holed, "1d")
    assert _account(al, syms[1]).missing == 3
    assert _account(al, syms[0]).absent_elsewhere == 3
    assert [t.isoformat() for t in _account(al, syms[1]).first_missing] == [
        t.isoformat() for t in dropped.to_list()]


def test_errors_name_the_problem() -> None:
    a = load_crypto(60).with_columns(pl.lit("A").alias("symbol"))
    b = load_crypto(60, offset=600).with_columns(pl.lit("B").alias("symbol"))
    with pytest.raises(AlignmentError, match="share no time span: A 2023-03-01T00:00"):
        align_symbols(pl.concat([a, b]), "1m")
    with pytest.raises(AlignmentError, match="duplicate bar for A at 2023-03-01T00:00:00"):
        align_symbols(pl.concat([a, a.head(1)]), "1m")
    with pytest.raises(AlignmentError, match=r"lack column\(s\) \['symbol'\]"):
        align_symbols(a.drop("symbol"), "1m")


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    st.lists(
        st.tuples(
            st.integers(0, 20),  # start offset (minutes)
            st.integers(30, 80),  # length (minutes)
            st.sets(st.integers(0, 79), max_size=8),  # holes (positions in the series)
        ),
        min_size=2, max_size=4,
    )
)
def test_alignment_properties(specs: list[tuple[int, int, set[int]]]) -> None:
    """The kept timestamps are exactly those every symbol has inside the common span; the
    account of each symbol adds up; kept rows are the source rows."""
    src = load_crypto(120)
    frames = []
    for i, (off, n, holes) in enumerate(specs):
        part = src.slice(off, n).with_columns(pl.lit(f"S{i}").alias("symbol"))
        keep = [j for j in range(part.height) if j not in holes or j in (0, part.height - 1)]
        frames.append(part[keep])
    bars = pl.concat(frames)
    sets = {f.get_column("symbol")[0]: set(f.get_column("ts").to_list()) for f in frames}
    start = max(min(s) for s in sets.values())
    end = min(max(s) for s in sets.values())
    if start > end:
        with pytest.raises(AlignmentError):
            align_symbols(bars, "1m")
        return
    al = align_symbols(bars, "1m")
    expect = sorted(set.intersection(*sets.values()))
    assert al.timestamps.to_list() == expect
    minutes = int((end - start).total_seconds() // 60) + 1
    for acc in al.symbols:
        assert acc.bars == (acc.dropped_before + acc.dropped_after + acc.off_clock
                            + acc.absent_elsewhere + acc.kept)
        inside = {t for t in sets[acc.symbol] if start <= t <= end}
        assert acc.missing == minutes - len(inside)
        assert acc.kept == len(expect)
    assert al.bars.height == len(expect) * len(specs)
    _assert_rows_unchanged(al.bars, bars)

