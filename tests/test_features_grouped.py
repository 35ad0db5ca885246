"""The grouped, write-as-you-go feature build equals the one-shot build, and no group boundary
lets one symbol's bars into another's windows (real S&P bars with missing days and late starts)."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from moola.data import Store, StoreError, Timeframe, ingest, mark_gaps
from moola.features import FeatureMatrix, compute_features, get_feature_set
from moola.pipelines.data import run_features_build

BARS = Path(__file__).parent / "fixtures" / "qlib_alpha158" / "bars.parquet"  # 13 real symbols


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("grouped") / "store"
    ingest([BARS], Store(root))
    return root


def _values(path: Path) -> FeatureMatrix:
    return FeatureMatrix.load(path)


@pytest.mark.parametrize("align", ["bars", "calendar"])
def test_grouped_file_equals_one_shot_bit_for_bit(store: Path, tmp_path: Path, align: str) -> None:
    # ~1,300 bars per group: a boundary after nearly every symbol
    grouped = run_features_build(store, "alpha158", tmp_path / "g.parquet", align=align,
                                 group_rows=1300)
    one = run_features_build(store, "alpha158", tmp_path / "o.parquet", align=align, group_rows=0)
    a, b = _values(grouped.path), _values(one.path)
    assert grouped.rows == one.rows == a.keys.height and grouped.schema_hash == one.schema_hash
    assert a.keys.equals(b.keys)
    assert np.array_equal(a.values, b.values, equal_nan=True)
    assert a.params["align"] == align
    assert len(pl.read_parquet_schema(grouped.path)) == 4 + 158


def test_a_symbol_in_a_group_equals_the_symbol_alone(store: Path, tmp_path: Path) -> None:
    build = run_features_build(store, "alpha158", tmp_path / "g.parquet", group_rows=1300)
    fm = _values(build.path)
    st = Store(store)
    panel = st.read(Timeframe("1d"))
    calendar = panel.get_column("ts").unique().sort()
    fs = get_feature_set("alpha158")
    for sym, rows in fm.symbol_slices().items():
        alone = compute_features(mark_gaps(st.read(Timeframe("1d"), [sym]), Timeframe("1d"),
                                           calendar=calendar), fs)
        assert np.array_equal(fm.values[rows], alone.values, equal_nan=True), sym


def test_a_wild_neighbour_does_not_leak_across_a_group_boundary(tmp_path: Path) -> None:
    """The symbol before ESS is scaled x1000 in price and volume: ESS's values do not move."""
    bars = pl.read_parquet(BARS)
    before = sorted(bars.get_column("symbol").unique())
    prev = before[before.index("ESS") - 1]
    wild = bars.with_columns(
        [pl.when(pl.col("symbol") == prev).then(pl.col(c) * 1000).otherwise(pl.col(c)).alias(c)
         for c in ("open", "high", "low", "close", "adj_close", "volume")])
    out = {}
    for name, frame in (("calm", bars), ("wild", wild)):
        src = tmp_path / f"{name}.parquet"
        frame.write_parquet(src)
        ingest([src], Store(tmp_path / name))
        for align in ("bars", "calendar"):
            b = run_features_build(tmp_path / name, "alpha158", tmp_path / f"{name}{align}.pq",
                                   align=align, group_rows=2000)
            out[name, align] = _values(b.path)
    for align in ("bars", "calendar"):
        calm, wild_fm = out["calm", align], out["wild", align]
        ess = calm.symbol_slices()["ESS"]
        assert np.array_equal(calm.values[ess], wild_fm.values[ess], equal_nan=True)
        p = calm.symbol_slices()[prev]
        assert not np.array_equal(calm.values[p], wild_fm.values[p], equal_nan=True)


def test_symbol_subset_uses_the_subsets_calendar(store: Path, tmp_path: Path) -> None:
    b = run_features_build(store, "alpha158", tmp_path / "s.parquet", symbols=["UA", "AAPL"],
                           align="calendar", group_rows=1)
    fm = _values(b.path)
    assert sorted(fm.symbol_slices()) == ["AAPL", "UA"]
    bars = mark_gaps(Store(store).read(Timeframe("1d"), ["AAPL", "UA"]), Timeframe("1d"))
    alone = compute_features(bars, get_feature_set("alpha158", align="calendar"))
    assert np.array_equal(fm.values, alone.values, equal_nan=True)


def test_bad_requests_name_what_is_wrong(store: Path, tmp_path: Path) -> None:
    with pytest.raises(StoreError, match="NOPE"):
        run_features_build(store, "alpha158", tmp_path / "x.parquet", symbols=["AAPL", "NOPE"])
    with pytest.raises(ValueError, match="no align parameter"):
        run_features_build(store, "ohlc4", tmp_path / "x.parquet", align="calendar")
    with pytest.raises(ValueError, match="bars, calendar"):
        run_features_build(store, "alpha158", tmp_path / "x.parquet", align="qlib")
    assert not (tmp_path / "x.parquet").exists()


def test_writer_refuses_mixed_schemas_and_leaves_no_file(store: Path, tmp_path: Path) -> None:
    bars = mark_gaps(Store(store).read(Timeframe("1d"), ["ESS"]), Timeframe("1d"))
    a = compute_features(bars, get_feature_set("alpha158"))
    c = compute_features(bars, get_feature_set("alpha158", align="calendar"))
    out = tmp_path / "mixed.parquet"
    with pytest.raises(ValueError, match="schema hash"), FeatureMatrix.writer(out) as w:
        w.append(a)
        w.append(c)
    assert not out.exists() and list(tmp_path.iterdir()) == []
    with pytest.raises(ValueError, match="no feature rows"), FeatureMatrix.writer(out):
        pass


def test_a_workers_table_writes_the_same_file(store: Path, tmp_path: Path) -> None:
    """The build's workers hand the writer each group's Arrow table: the file equals the one
    written from the matrices, for the kernel, the expressions and the calendar; a table of
    another set's columns is refused."""
    tf = Timeframe("1d")
    for fs in (get_feature_set("alpha158"), replace(get_feature_set("alpha158"), kernel=None),
               get_feature_set("alpha158", align="calendar"), get_feature_set("crypto39")):
        groups = [mark_gaps(Store(store).read(tf, [s]), tf) for s in ("ESS", "UA")]
        direct, columns = tmp_path / "direct.parquet", tmp_path / "columns.parquet"
        with FeatureMatrix.writer(direct) as w:
            for bars in groups:
                w.append(compute_features(bars, fs))
        with FeatureMatrix.writer(columns) as w:
            for bars in groups:
                w.append_table(compute_features(bars, fs).to_arrow(), fs)
        assert w.rows == sum(g.height for g in groups)
        a, b = FeatureMatrix.load(direct), FeatureMatrix.load(columns)
        np.testing.assert_array_equal(a.values, b.values, err_msg=f"{fs.name} {fs.align}")
        assert a.keys.equals(b.keys) and a.schema_hash == b.schema_hash
    bars = mark_gaps(Store(store).read(tf, ["ESS"]), tf)
    other = compute_features(bars, get_feature_set("ohlc4")).to_arrow()
    with pytest.raises(ValueError, match="not the features of 'alpha158'"), \
            FeatureMatrix.writer(tmp_path / "bad.parquet") as w:
        w.append_table(other, get_feature_set("alpha158"))


def test_the_cli_says_when_a_kernel_ran_through_the_jit(store: Path, tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """Without an ahead-of-time build (``moola features compile``) every build pays Numba's
    start-up: the command says so and how to fix it; with one it says nothing."""
    from typer.testing import CliRunner

    import moola.features
    from moola.cli import app

    args = ["features", "build", "--store", str(store), "--set", "alpha158", "--symbols", "ESS"]
    monkeypatch.setattr(moola.features, "compiled_kernels",
                        lambda fs=None: {"moola.features._alpha158_numba": None})
    res = CliRunner().invoke(app, [*args, "--out", str(tmp_path / "a.parquet")])
    assert res.exit_code == 0, res.output
    assert "ran through Numba's JIT" in res.output and "moola features compile" in res.output
    monkeypatch.setattr(moola.features, "compiled_kernels",
                        lambda fs=None: {"moola.features._alpha158_numba": tmp_path / "x.so"})
    res = CliRunner().invoke(app, [*args, "--out", str(tmp_path / "b.parquet")])
    assert res.exit_code == 0 and "JIT" not in res.output, res.output
