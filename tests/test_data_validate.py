"""Validation on real data: every known wart of the S&P panel counted exactly, remembered by the
store, and every policy alternative doing what it says on real BTC bars with injected warts."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import polars as pl
import pytest

from _data_helpers import (
    BTC_CSV,
    SHARED_PANEL,
    SP500_SUBSET,
    btc_csv_lines,
    cli,
    sp500_subset,
    write_csv_lines,
)
from _real_data import ROOT, SHARED_ENV, require_shared, shared_data_dir
from moola.data import (
    Action,
    IngestResult,
    Policy,
    Reason,
    Store,
    Timeframe,
    ValidationFailed,
    fill_gaps,
    infer_timeframe,
    ingest,
    read_file,
    validate_bars,
    validate_raw,
)
from moola.data._validate import ALLOWED, DEFAULT_POLICY

D1, M1 = Timeframe.D1, Timeframe.M1
NULL_ROWS = {"BHF": 531, "UA": 5, "ESS": 1, "MMC": 1}


@pytest.fixture(scope="module")
def subset(tmp_path_factory: pytest.TempPathFactory) -> tuple[IngestResult, Store]:
    store = Store(tmp_path_factory.mktemp("subset") / "store")
    return ingest([SP500_SUBSET], store), store


def _per_symbol(report, reason: str) -> dict[str, int]:
    f = report.frame().filter(pl.col("reason") == reason)
    return dict(zip(f["symbol"].to_list(), f["count"].to_list(), strict=True))


# ------------------------------------------------------------------ the S&P subset


def test_subset_warts_counted_exactly(subset: tuple[IngestResult, Store]) -> None:
    res, _ = subset
    rep = res.reports[D1]
    tot = rep.totals()
    assert tot["all_null"] == 538
    assert _per_symbol(rep, "all_null") == NULL_ROWS
    assert tot["duplicate_identical"] == 1
    assert _per_symbol(rep, "duplicate_identical") == {"LVLT": 1}
    assert tot["duplicate_conflicting"] == 1
    assert _per_symbol(rep, "duplicate_conflicting") == {"COH": 1}
    assert "gap" not in tot  # null rows occupy their calendar slot; weekends are no gaps
    for r in ("partial_null", "non_finite", "nonpositive_price", "negative_volume", "non_monotonic"):
        assert r not in tot
    actions = rep.to_dict()["actions"]
    assert actions["all_null"] == "drop"
    assert actions["duplicate_identical"] == "drop"
    assert actions["duplicate_conflicting"] == "keep"


def test_subset_row_accounting(subset: tuple[IngestResult, Store]) -> None:
    res, store = subset
    rep = res.reports[D1]
    rejects = store.read_rejects(D1)
    assert rep.rows_in == 37_107
    assert rep.rows_in == rep.rows_out + rejects.height
    assert rejects.height == 538 + 1 + 1
    assert store.read(D1).height == rep.rows_out == 36_567
    by_reason = dict(rejects.group_by("reason").len().iter_rows())
    assert by_reason == {"all_null": 538, "duplicate_identical": 1, "duplicate_conflicting": 1}
    # rejects remember where each row came from (Parquet row r = line r + 2)
    src = sp500_subset().with_row_index("row")
    first_bhf_null = src.filter(
        (pl.col("symbol") == "BHF") & pl.col("close").is_null()
    )["row"][0]
    bhf = rejects.filter((pl.col("symbol") == "BHF") & (pl.col("reason") == "all_null"))
    assert bhf["line"].min() == first_bhf_null + 2
    assert bhf["file"].unique().to_list() == [str(SP500_SUBSET)]


def test_conflicting_duplicate_keeps_the_last_row(subset: tuple[IngestResult, Store]) -> None:
    _, store = subset
    src = sp500_subset().filter(
        (pl.col("symbol") == "COH") & (pl.col("date") == pl.date(2017, 10, 30))
    )
    assert src.height == 2 and src["volume"][0] != src["volume"][1]
    bars = store.read(D1, ["COH"])
    row = bars.filter(pl.col("ts").dt.date() == pl.date(2017, 10, 30))
    assert row.height == 1
    assert row["volume"][0] == src["volume"][1]  # the second (last) row of the source
    lvlt = store.read(D1, ["LVLT"]).filter(pl.col("ts").dt.date() == pl.date(2017, 10, 31))
    assert lvlt.height == 1


def test_store_validation_reports_the_same(subset: tuple[IngestResult, Store]) -> None:
    res, store = subset
    at_ingest = res.reports[D1]
    again = validate_bars(store.read(D1), D1, store.read_rejects(D1))
    assert again.totals() == at_ingest.totals()
    cols = ["reason", "symbol", "count", "action"]
    assert again.frame().select(cols).equals(at_ingest.frame().select(cols))
    assert again.rows_in == at_ingest.rows_in
    assert again.rows_out == at_ingest.rows_out


def test_no_gap_on_the_daily_panel_even_without_null_rows(subset: tuple[IngestResult, Store]) -> None:
    _, store = subset
    # without the rejects (null rows) the same bars DO show holes: the slot rule matters
    without = validate_bars(store.read(D1), D1, None)
    assert without.totals().get("gap", 0) > 0
    with_rejects = validate_bars(store.read(D1), D1, store.read_rejects(D1))
    assert "gap" not in with_rejects.totals()


def test_duplicate_conflicting_drop_removes_both_rows(tmp_path: Path) -> None:
    store = Store(tmp_path / "s")
    pol = Policy.from_overrides(["duplicate_conflicting=drop"])
    rep = ingest([SP500_SUBSET], store, policy=pol).reports[D1]
    assert rep.totals()["duplicate_conflicting"] == 1  # keys, not rows
    coh = store.read(D1, ["COH"])
    assert coh.filter(pl.col("ts").dt.date() == pl.date(2017, 10, 30)).height == 0
    rej = store.read_rejects(D1).filter(pl.col("reason") == "duplicate_conflicting")
    assert rej.height == 2
    assert rep.rows_in == rep.rows_out + store.read_rejects(D1).height
    again = validate_bars(store.read(D1), D1, store.read_rejects(D1), pol)
    assert again.totals()["duplicate_conflicting"] == 1
    assert again.totals() == rep.totals()


def _first_row(src: pl.DataFrame, symbol: str, y: int, m: int, d: int) -> int:
    return src.filter((pl.col("symbol") == symbol) & (pl.col("date") == pl.date(y, m, d)))["row"][0]


@pytest.mark.parametrize(
    ("override", "line_of"),
    [
        ("all_null=fail", lambda s: s.filter(pl.col("close").is_null())["row"][0] + 2),
        ("duplicate_identical=fail", lambda s: _first_row(s, "LVLT", 2017, 10, 31) + 2),
        ("duplicate_conflicting=fail", lambda s: _first_row(s, "COH", 2017, 10, 30) + 2),
    ],
)
def test_fail_policies_on_the_subset_name_the_row(override: str, line_of: Callable, tmp_path: Path) -> None:
    with pytest.raises(ValidationFailed) as ei:
        ingest([SP500_SUBSET], Store(tmp_path / "s"), policy=Policy.from_overrides([override]))
    src = sp500_subset().with_row_index("row")
    assert ei.value.path == str(SP500_SUBSET)
    assert ei.value.line == line_of(src)
    assert not (tmp_path / "s" / "manifest.json").exists()


# ------------------------------------------- every policy alternative, on real BTC bars

N = 60  # data rows; row i sits on physical line i + 2


def _fields(lines: list[str], i: int) -> list[str]:
    return lines[i].split(",")


def _setf(lines: list[str], i: int, **kw: str) -> None:
    names = ["ts", "open", "high", "low", "close", "volume"]
    f = _fields(lines, i)
    for k, v in kw.items():
        f[names.index(k)] = v
    lines[i] = ",".join(f)


def _all_null(ls: list[str]) -> None:
    for i in (11, 21):
        ls[i] = _fields(ls, i)[0] + ",,,,,"


def _partial(ls: list[str]) -> None:
    _setf(ls, 11, high="")
    _setf(ls, 21, volume="nan")


def _nonfinite(ls: list[str]) -> None:
    _setf(ls, 11, close="inf")
    _setf(ls, 21, volume="-inf")


def _nonpos(ls: list[str]) -> None:
    _setf(ls, 11, low="0")
    _setf(ls, 21, low="-5")


def _negvol(ls: list[str]) -> None:
    _setf(ls, 11, volume="-1")
    _setf(ls, 21, volume="-0.5")


def _unsorted(ls: list[str]) -> None:
    ls[11], ls[12] = ls[12], ls[11]


def _dup_same(ls: list[str]) -> None:
    ls.insert(12, ls[11])


def _dup_conflict(ls: list[str]) -> None:
    f = _fields(ls, 11)
    f[5] = "123.25"
    ls.insert(12, ",".join(f))


def _ohlc(ls: list[str]) -> None:
    for i in (11, 21):
        f = _fields(ls, i)
        assert f[2] != f[3]
        _setf(ls, i, high=f[3], low=f[2])


def _gap(ls: list[str]) -> None:
    del ls[11:14]


def _extreme(ls: list[str]) -> None:
    f = _fields(ls, 11)
    _setf(ls, 11, **{k: repr(float(f[j]) * 1.2) for j, k in enumerate(["open", "high", "low", "close"], 1)})


def _stale(ls: list[str]) -> None:
    c = _fields(ls, 10)[4]
    for i in range(11, 17):
        _setf(ls, i, open=c, high=c, low=c, close=c, volume="0")


def _empty_row(ls: list[str]) -> None:
    ls.insert(12, ",,,,,")


def _bad_ts(ls: list[str]) -> None:
    _setf(ls, 11, ts="2262-04-12 00:00:00+00:00")  # one day past what ns timestamps hold
    _setf(ls, 21, ts="2023-13-45 00:00:00+00:00")


def _bad_symbol(ls: list[str]) -> None:
    ls[0] += ",symbol"
    for i in range(1, len(ls)):
        ls[i] += ",BTC\x00USD" if i == 11 else ",BTCUSD"


def _off_grid(ls: list[str]) -> None:
    _setf(ls, 11, ts=_fields(ls, 11)[0].replace(":00+", ":30+", 1))


@dataclass(frozen=True)
class Wart:
    edit: Callable[[list[str]], None]
    count: int  # reported count
    removed: int  # rows removed by drop
    fail_line: int
    column: str | None = None
    rows_in: int = N


WARTS: dict[Reason, Wart] = {
    Reason.EMPTY_ROW: Wart(_empty_row, 1, 1, 13, rows_in=N + 1),
    Reason.BAD_TIMESTAMP: Wart(_bad_ts, 2, 2, 12, "ts"),
    Reason.BAD_SYMBOL: Wart(_bad_symbol, 1, 1, 12, "symbol"),
    Reason.OFF_GRID: Wart(_off_grid, 1, 1, 12, "ts"),
    Reason.ALL_NULL: Wart(_all_null, 2, 2, 12),
    Reason.PARTIAL_NULL: Wart(_partial, 2, 2, 12, "high"),
    Reason.NON_FINITE: Wart(_nonfinite, 2, 2, 12, "close"),
    Reason.NONPOSITIVE_PRICE: Wart(_nonpos, 2, 2, 12, "low"),
    Reason.NEGATIVE_VOLUME: Wart(_negvol, 2, 2, 12, "volume"),
    Reason.NON_MONOTONIC: Wart(_unsorted, 1, 0, 13, "ts"),
    Reason.DUPLICATE_IDENTICAL: Wart(_dup_same, 1, 1, 12, rows_in=N + 1),
    Reason.DUPLICATE_CONFLICTING: Wart(_dup_conflict, 1, 2, 12, rows_in=N + 1),
    Reason.OHLC_INCONSISTENT: Wart(_ohlc, 2, 2, 12),
    Reason.GAP: Wart(_gap, 3, 0, 12, "ts", rows_in=N - 3),
    Reason.EXTREME_RETURN: Wart(_extreme, 2, 0, 12, "close"),
    Reason.STALE_PRICE: Wart(_stale, 6, 0, 12, "close"),
}


def _wart_file(tmp: Path, reason: Reason) -> Path:
    lines = btc_csv_lines(N)
    WARTS[reason].edit(lines)
    return write_csv_lines(tmp / "BTCUSD_1m.csv", lines)


def test_warts_cover_every_reason() -> None:
    assert set(WARTS) == set(Reason)
    assert set(DEFAULT_POLICY) == set(Reason)


def test_clean_slice_has_no_findings(tmp_path: Path) -> None:
    raw = read_file(write_csv_lines(tmp_path / "BTCUSD_1m.csv", btc_csv_lines(N)))
    v = validate_raw(raw.frame, M1)
    assert not v.report.has_findings
    assert v.bars.height == N


@pytest.mark.parametrize(
    ("reason", "action"),
    [(r, a) for r, allowed in ALLOWED.items() for a in allowed],
    ids=[f"{r}={a}" for r, allowed in ALLOWED.items() for a in allowed],
)
def test_every_policy_alternative(tmp_path: Path, reason: Reason, action: Action) -> None:
    wart = WARTS[reason]
    p = _wart_file(tmp_path, reason)
    raw = read_file(p)
    assert raw.frame.height == wart.rows_in
    pol = Policy.from_overrides([f"{reason}={action}"])

    if action is Action.FAIL:
        with pytest.raises(ValidationFailed) as ei:
            validate_raw(raw.frame, M1, pol)
        e = ei.value
        assert e.path == str(p)
        assert e.line == wart.fail_line, str(e)
        if wart.column:
            assert e.column == wart.column, str(e)
        assert f"policy {reason}=fail" in str(e)
        return

    v = validate_raw(raw.frame, M1, pol)
    rep = v.report
    assert rep.totals()[str(reason)] == wart.count, rep.totals()
    assert {r["action"] for r in rep.rows if r["reason"] == reason} == {str(action)}
    assert rep.rows_in == wart.rows_in
    # nothing else is reported, except the gap that removed rows leave behind
    others = set(rep.totals()) - {str(reason)}
    if action is Action.DROP and reason not in (Reason.ALL_NULL, Reason.DUPLICATE_IDENTICAL):
        assert others <= {"gap"}, rep.totals()
    else:
        assert not others, rep.totals()

    bars, rej = v.bars, v.rejects
    ts = bars["ts"]
    assert ts.is_sorted() and ts.n_unique() == bars.height
    if action is Action.DROP:
        assert bars.height == wart.rows_in - wart.removed
        assert rej.height == wart.removed
        assert rej["reason"].unique().to_list() == [str(reason)]
        assert rep.rows_in == rep.rows_out + rej.height
        assert rej["file"].unique().to_list() == [str(p)]
    elif action is Action.KEEP:
        kept_losers = 1 if reason is Reason.DUPLICATE_CONFLICTING else 0
        assert bars.height == wart.rows_in - kept_losers
        assert rej.height == kept_losers
        assert rep.rows_in == rep.rows_out + rej.height
    elif action is Action.SNAP:  # the bar moves to the start of its minute, which was free
        assert reason is Reason.OFF_GRID
        assert bars.height == N and rej.height == 0
        assert (ts.dt.second() == 0).all() and (ts.diff().drop_nulls().dt.total_seconds() == 60).all()
    else:  # FILL
        assert reason is Reason.GAP
        assert bars.height == N
        assert bars["is_filled"].sum() == 3
        assert (ts.diff().drop_nulls().dt.total_seconds() == 60).all()


def test_duplicate_conflicting_keep_keeps_the_later_row(tmp_path: Path) -> None:
    raw = read_file(_wart_file(tmp_path, Reason.DUPLICATE_CONFLICTING))
    v = validate_raw(raw.frame, M1)
    key_ts = raw.frame["ts"][11]
    assert v.bars.filter(pl.col("ts") == key_ts)["volume"].to_list() == [123.25]
    assert v.rejects["line"].to_list() == [12]


def test_non_monotonic_keep_sorts(tmp_path: Path) -> None:
    raw = read_file(_wart_file(tmp_path, Reason.NON_MONOTONIC))
    v = validate_raw(raw.frame, M1, Policy.from_overrides(["non_monotonic=keep"]))
    assert v.bars["ts"].is_sorted()
    assert v.bars.height == N


def test_stale_price_needs_a_long_enough_run(tmp_path: Path) -> None:
    lines = btc_csv_lines(N)
    c = _fields(lines, 10)[4]
    for i in range(11, 15):  # a run of 4 < stale_run=5
        _setf(lines, i, open=c, high=c, low=c, close=c, volume="0")
    raw = read_file(write_csv_lines(tmp_path / "BTCUSD_1m.csv", lines))
    assert "stale_price" not in validate_raw(raw.frame, M1).report.totals()
    rep = validate_raw(raw.frame, M1, Policy(stale_run=4)).report
    assert rep.totals()["stale_price"] == 4


def test_extreme_return_threshold_override(tmp_path: Path) -> None:
    raw = read_file(write_csv_lines(tmp_path / "BTCUSD_1m.csv", btc_csv_lines(N)))
    rets = raw.frame.select(pl.col("close").log().diff().abs().max()).item()
    rep = validate_raw(raw.frame, M1, Policy(extreme_return=rets / 2)).report
    assert rep.totals()["extreme_return"] >= 1
    assert validate_raw(raw.frame, M1, Policy(extreme_return=rets * 1.01)).report.totals() == {}


def test_gap_fill_on_daily_bars_is_refused(subset: tuple[IngestResult, Store]) -> None:
    _, store = subset
    bars = store.read(D1, ["AAPL", "MSFT"]).filter(pl.int_range(pl.len()) != 10)  # an AAPL day
    with pytest.raises(ValueError, match="intraday"):
        validate_raw(bars, D1, Policy.from_overrides(["gap=fill"]))


# --------------------------------------------------------------- gap=fill on crypto


def test_gap_fill_on_crypto_makes_flat_zero_volume_bars(tmp_path: Path) -> None:
    n = 3000
    lines = btc_csv_lines(n)
    removed = [*range(101, 106), 1001, *range(2001, 2011)]  # 5 + 1 + 10 bars, lines 102-106, ...
    for i in sorted(removed, reverse=True):
        del lines[i]
    p = write_csv_lines(tmp_path / "BTCUSD_1m.csv", lines)
    store = Store(tmp_path / "s")

    keep = validate_raw(read_file(p).frame, M1)  # default gap=keep keeps the holes
    assert keep.report.totals() == {"gap": 16}
    assert keep.bars.height == n - 16 and "is_filled" not in keep.bars.columns

    res = ingest([p], store, policy=Policy.from_overrides(["gap=fill"]))
    rep = res.reports[M1]
    assert rep.totals() == {"gap": 16}
    assert rep.rows_in == n - 16 and rep.rows_out == n
    bars = store.read(M1)
    assert bars.height == n
    assert (bars["ts"].diff().drop_nulls().dt.total_seconds() == 60).all()
    filled = bars.filter(pl.col("is_filled"))
    assert filled.height == 16
    assert (filled["volume"] == 0).all()
    for c in ("open", "high", "low"):
        assert (filled[c] == filled["close"]).all()
    # each filled bar sits at the close of the last real bar before the gap
    src = read_file(write_csv_lines(tmp_path / "full_BTCUSD_1m.csv", btc_csv_lines(n))).frame
    prev_close = src["close"].to_list()
    for i in removed:
        row = bars.row(i - 1, named=True)
        assert row["is_filled"]
        last_real = max(j for j in range(1, i) if j not in removed)
        assert row["close"] == prev_close[last_real - 1]
        assert row["ts"] == src["ts"][i - 1]
    real = bars.filter(~pl.col("is_filled"))
    assert real.height == n - 16
    # the store remembers: the same gap count, as fill, and the filler is not "stale"
    again = validate_bars(bars, M1, store.read_rejects(M1))
    assert again.totals() == {"gap": 16}
    assert {r["action"] for r in again.rows} == {"fill"}


def test_fill_gaps_direct() -> None:
    src = read_file(BTC_CSV).frame.head(30).drop("_file", "_line")
    holed = src.filter(~pl.int_range(pl.len()).is_in([3, 4, 20]))
    out = fill_gaps(holed, M1)
    assert out.height == 30
    assert out["ts"].to_list() == src["ts"].to_list()
    assert out["is_filled"].sum() == 3
    assert out["close"][3] == out["close"][4] == src["close"][2]


def test_infer_timeframe() -> None:
    minute = read_file(BTC_CSV).frame.head(100)
    assert infer_timeframe(minute) is M1
    daily = sp500_subset().filter(pl.col("symbol") == "AAPL").select(
        "symbol", pl.col("date").cast(pl.Datetime("ns")).dt.replace_time_zone("UTC").alias("ts")
    )
    assert infer_timeframe(daily) is D1
    assert infer_timeframe(minute.gather_every(5)) is Timeframe.M5
    with pytest.raises(ValueError, match="fewer than two"):
        infer_timeframe(minute.head(1))
    with pytest.raises(ValueError, match="matches no timeframe"):
        infer_timeframe(minute.gather_every(7))


def test_policy_parsing() -> None:
    p = Policy.from_overrides(["gap=fill", "ohlc_inconsistent=drop"])
    assert p.actions[Reason.GAP] is Action.FILL
    assert p.actions[Reason.OHLC_INCONSISTENT] is Action.DROP
    assert p.actions[Reason.ALL_NULL] is Action.DROP  # defaults untouched
    with pytest.raises(ValueError, match="not allowed") as ei:
        Policy.from_overrides(["all_null=keep", "nope=drop", "gap"])
    msg = str(ei.value)
    assert "unknown reason 'nope'" in msg and "'gap' is not reason=action" in msg


# --------------------------------------------------------------------- --strict


def test_strict_exit_codes(tmp_path: Path) -> None:
    s1, s2 = tmp_path / "sp", tmp_path / "btc"
    res = cli("data", "ingest", SP500_SUBSET, "--store", s1, "--strict")
    assert res.exit_code == 1
    assert (s1 / "manifest.json").exists()  # findings are not errors: the data was written
    assert cli("data", "validate", "--store", s1, "--strict").exit_code == 1
    assert cli("data", "validate", "--store", s1).exit_code == 0
    res = cli("data", "ingest", BTC_CSV, "--store", s2, "--strict")
    assert res.exit_code == 0, res.output
    res = cli("data", "validate", "--store", s2, "--strict", "--json", tmp_path / "v.json")
    assert res.exit_code == 0, res.output
    report = json.loads((tmp_path / "v.json").read_text())
    assert report["1m"]["totals"] == {}
    assert report["1m"]["rows_out"] == 30_240


# ------------------------------------------------------------ the full shared panel


def test_shared_data_is_found_beside_the_repo_or_by_env_and_never_skipped_in_ci(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(SHARED_ENV, raising=False)
    assert shared_data_dir() == ROOT.parent / "shared" / "data"  # ../shared, never a machine path
    monkeypatch.setenv(SHARED_ENV, str(tmp_path))
    assert shared_data_dir() == tmp_path.resolve()
    (tmp_path / "here.parquet").write_bytes(b"x")
    assert require_shared(tmp_path / "here.parquet") == tmp_path / "here.parquet"
    missing = tmp_path / "sp500_daily_2012_2017.parquet"
    for ci in ("", "0", "false"):
        monkeypatch.setenv("CI", ci)
        with pytest.raises(pytest.skip.Exception):
            require_shared(missing)
    for ci in ("true", "1"):
        monkeypatch.setenv("CI", ci)
        with pytest.raises(pytest.fail.Exception, match=f"{missing}.*CI is set"):
            require_shared(missing)


def test_full_shared_panel(tmp_path: Path) -> None:
    require_shared(SHARED_PANEL)  # skips only off CI: in CI these numbers must be checked
    store = tmp_path / "s"
    res = cli("data", "ingest", SHARED_PANEL, "--store", store)
    assert res.exit_code == 0, res.output
    out = tmp_path / "v.json"
    res = cli("data", "validate", "--store", store, "--json", out)
    assert res.exit_code == 0, res.output
    assert "all-null rows: 538; duplicate keys: 2 (1 conflicting)" in res.stdout
    rep = json.loads(out.read_text())["1d"]
    tot = rep["totals"]
    assert tot["all_null"] == 538
    assert tot["duplicate_identical"] + tot["duplicate_conflicting"] == 2
    assert tot["duplicate_conflicting"] == 1
    assert {s: rep["per_symbol"][s]["all_null"] for s in NULL_ROWS} == NULL_ROWS
    assert "gap" not in tot
    assert rep["rows_in"] == 608_160
    assert rep["rows_in"] == rep["rows_out"] + 540
