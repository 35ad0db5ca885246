"""Feature sets on real bars: layout, keys, warm-up, per-symbol isolation, hashing, save/load."""

from __future__ import annotations

import re
from functools import cache, lru_cache
from pathlib import Path

import numpy as np
import pandas as pd
import polars as pl
import pytest

from _real_data import (
    clean_daily_symbols,
    daily_symbols,
    load_crypto,
    load_daily,
    two_crypto_symbols,
)
from moola.data._gaps import mark_gaps
from moola.data._schema import Timeframe
from moola.features import (
    FeatureMatrix,
    UnknownFeatureSetError,
    build_features,
    feature_table_markdown,
    get_feature_set,
    list_feature_sets,
    schema_hash,
)
from moola.features._build import infer_timeframe

ROOT = Path(__file__).resolve().parents[1]
EXPECTED_COUNTS = {"ohlc4": 4, "relative11": 11, "crypto39": 39, "alpha158": 158, "alpha360": 360}
SETS = tuple(EXPECTED_COUNTS)
# Qlib's own rules make these NaN on degenerate windows (zero std, zero previous volume).
ALPHA158_MAY_BE_NAN = re.compile(r"^(CORR|CORD|RSQR)\d+$")
KEY_SCHEMA = {
    "symbol": pl.String(),
    "ts": pl.Datetime("ns", "UTC"),
    "gap_before": pl.Boolean(),
    "is_filled": pl.Boolean(),
}


@lru_cache(maxsize=1)
def _daily_small() -> pl.DataFrame:
    """Six real symbols, 400 bars each, including the warts of the fixture (zero volume)."""
    syms = list(clean_daily_symbols(4))
    warty = [s for s in ("BHF", "UA", "LVLT") if s in daily_symbols()]
    return load_daily(tuple(syms + warty[:2]), max_rows_per_symbol=400)


@cache
def _built(set_name: str, data: str) -> FeatureMatrix:
    df = _daily_small() if data == "daily" else load_crypto(3000)
    return build_features(df, set_name)


def _positions(symbols: pl.Series) -> np.ndarray:
    """0-based row index within each symbol."""
    return symbols.to_frame("s").select(pl.int_range(pl.len()).over("s")).to_series().to_numpy()


def test_registry_counts_and_order() -> None:
    sets = list_feature_sets()
    assert [fs.name for fs in sets] == list(SETS)
    for fs in sets:
        assert len(fs.specs) == EXPECTED_COUNTS[fs.name], fs.name
        assert len(set(fs.names)) == len(fs.names)
        assert all(s.expr is not None and s.formula for s in fs.specs)
        assert fs.kind == "per_symbol"


def test_unknown_set_name_lists_known_names() -> None:
    with pytest.raises(KeyError) as err:
        get_feature_set("alpha159")
    assert isinstance(err.value, UnknownFeatureSetError)
    msg = str(err.value)
    assert "alpha159" in msg
    for name in SETS:
        assert name in msg
    with pytest.raises(UnknownFeatureSetError):
        build_features(load_crypto(100), "nope")


def test_unknown_parameter_is_rejected() -> None:
    with pytest.raises(TypeError):
        get_feature_set("relative11", atr_window=3)
    with pytest.raises(ValueError, match="windows"):
        get_feature_set("alpha158", windows=(1, 5))


@pytest.mark.parametrize("set_name", SETS)
@pytest.mark.parametrize("data", ["daily", "crypto"])
def test_matrix_layout(set_name: str, data: str) -> None:
    fm = _built(set_name, data)
    df = _daily_small() if data == "daily" else load_crypto(3000)
    assert fm.values.dtype == np.float32
    assert fm.values.flags["C_CONTIGUOUS"]
    assert fm.values.shape == (df.height, EXPECTED_COUNTS[set_name])
    assert fm.names == get_feature_set(set_name).names
    assert fm.set_name == set_name
    assert dict(fm.keys.schema) == KEY_SCHEMA
    assert fm.keys.select("symbol", "ts").equals(df.select("symbol", "ts"))
    assert not np.isinf(fm.values).any()


@pytest.mark.parametrize("set_name", SETS)
@pytest.mark.parametrize("data", ["daily", "crypto"])
def test_warmup_nan_only_at_start_of_each_symbol(set_name: str, data: str) -> None:
    fm = _built(set_name, data)
    fs = get_feature_set(set_name)
    pos = _positions(fm.keys["symbol"])
    clean = fm.keys["symbol"].is_in([*clean_daily_symbols(30), "BTCUSD"]).to_numpy()
    nan = np.isnan(fm.values)
    for j, spec in enumerate(fs.specs):
        warm = pos < spec.lookback
        assert nan[warm, j].all(), f"{spec.name}: a warm-up row has a value"
        if set_name == "alpha158" and ALPHA158_MAY_BE_NAN.match(spec.name):
            continue
        assert not nan[(pos == spec.lookback) & clean, j].any(), (
            f"{spec.name}: first row after warm-up is NaN (look-back {spec.lookback} too long?)"
        )
        bad = nan[~warm, j]
        assert not bad.any(), f"{spec.name}: {int(bad.sum())} NaN rows after the warm-up"


@pytest.mark.parametrize("set_name", SETS)
def test_clean_symbols_have_no_nan_after_warmup(set_name: str) -> None:
    """On the clean symbols nothing at all is NaN after the warm-up, whatever the set."""
    fm = _built(set_name, "daily")
    fs = get_feature_set(set_name)
    pos = _positions(fm.keys["symbol"])
    clean = fm.keys["symbol"].is_in(list(clean_daily_symbols(30))).to_numpy()
    assert clean.any()
    lookback = np.array([s.lookback for s in fs.specs])
    after = pos[:, None] >= lookback[None, :]
    assert not np.isnan(fm.values[clean][after[clean]]).any()


@pytest.mark.parametrize("set_name", SETS)
def test_features_are_computed_per_symbol(set_name: str) -> None:
    """The panel result equals each symbol computed alone, and changing symbol A's bars does
    not move symbol B's features (B's first rows never read A's last bars)."""
    df = _daily_small()
    fm = _built(set_name, "daily")
    for sym, sl in fm.symbol_slices().items():
        alone = build_features(df.filter(pl.col("symbol") == sym), set_name)
        np.testing.assert_allclose(
            fm.values[sl], alone.values, rtol=1e-6, atol=1e-9, equal_nan=True, err_msg=sym
        )
    first, second = sorted(fm.symbol_slices())[:2]
    # Multiply the last 70 bars of the first symbol by 10 (and its volume by 3).
    tail = pl.int_range(pl.len()).over("symbol") >= pl.len().over("symbol") - 70
    hit = (pl.col("symbol") == first) & tail
    prices = ("open", "high", "low", "close", "adj_close")
    changed = df.with_columns(
        *[pl.when(hit).then(pl.col(c) * 10).otherwise(pl.col(c)).alias(c) for c in prices],
        pl.when(hit).then(pl.col("volume") * 3).otherwise(pl.col("volume")).alias("volume"),
    )
    fm2 = build_features(changed, set_name)
    sl_b = fm.symbol_slices()[second]
    # Sums are taken afresh per window; only rolling std keeps float state, at 1e-15 level.
    np.testing.assert_allclose(fm2.values[sl_b], fm.values[sl_b], rtol=1e-6, atol=1e-9,
                               equal_nan=True)
    assert not np.array_equal(fm2.values[fm.symbol_slices()[first]],
                              fm.values[fm.symbol_slices()[first]], equal_nan=True)


def test_gap_and_filled_keys_are_carried() -> None:
    df = _daily_small()
    # A real gap: drop ten bars from the middle of one symbol.
    sym = df["symbol"][0]
    idx = pl.int_range(pl.len()).over("symbol")
    gappy = df.filter(~((pl.col("symbol") == sym) & idx.is_between(100, 109)))
    fm = build_features(gappy, "ohlc4")
    expected = mark_gaps(gappy, Timeframe.D1)["gap_before"]
    assert fm.keys["gap_before"].equals(expected)
    sym_keys = fm.keys.filter(pl.col("symbol") == sym)
    assert sym_keys["gap_before"][100]
    assert sym_keys["gap_before"].sum() >= 1
    assert not fm.keys["is_filled"].any()

    # Provided columns are carried as they are, not recomputed.
    flags = (pl.int_range(pl.len()) % 7 == 3).alias("gap_before")
    filled = (pl.int_range(pl.len()) % 5 == 0).alias("is_filled")
    with_keys = df.with_columns(flags, filled)
    fm2 = build_features(with_keys, "relative11")
    assert fm2.keys["gap_before"].equals(with_keys["gap_before"])
    assert fm2.keys["is_filled"].equals(with_keys["is_filled"])

    crypto = load_crypto(500)
    crypto = crypto.filter(~pl.int_range(pl.len()).is_between(200, 202))
    fmc = build_features(crypto, "crypto39")
    assert fmc.keys["gap_before"].sum() == 1
    assert fmc.keys["gap_before"][200]


def test_timeframe_inference_and_input_checks() -> None:
    assert infer_timeframe(load_crypto(100)) is Timeframe.M1
    assert infer_timeframe(_daily_small()) is Timeframe.D1
    shuffled = _daily_small().sample(fraction=1.0, seed=1, shuffle=True)
    with pytest.raises(ValueError, match="sorted"):
        build_features(shuffled, "ohlc4")
    with pytest.raises(ValueError, match="required columns"):
        build_features(_daily_small().drop("volume"), "ohlc4")


def test_schema_hash_stable_and_sensitive_to_params() -> None:
    df = load_daily(clean_daily_symbols(2), max_rows_per_symbol=200)
    a = build_features(df, "relative11")
    b = build_features(df, "relative11")
    assert a.schema_hash == b.schema_hash
    # names, order, parameters and the code hash of the set's formulas (tests/test_manifest.py)
    assert a.schema_hash == schema_hash("relative11", a.names, a.params, code=a.code_hash)
    assert a.code_hash == get_feature_set("relative11").code_hash
    assert build_features(df, "relative11", atr=14).schema_hash == a.schema_hash
    c = build_features(df, "relative11", atr=10)
    assert c.schema_hash != a.schema_hash
    assert c.params["atr"] == 10
    d = build_features(df, "alpha158", windows=(5, 10))
    assert d.values.shape[1] == 13 + 29 * 2
    assert d.schema_hash != build_features(df, "alpha158").schema_hash
    hashes = {fs.name: schema_hash(fs.name, fs.names, dict(fs.params)) for fs in list_feature_sets()}
    assert len(set(hashes.values())) == len(hashes)


def test_adj_close_adjustment_matches_pre_adjusted_bars() -> None:
    """With adj_close, features equal those of bars adjusted by hand (factor = adj/close;
    prices times factor, volume divided by it), and differ from the raw bars."""
    df = _daily_small()
    factor = pl.col("adj_close") / pl.col("close")
    manual = df.with_columns(
        *[(pl.col(c) * factor).alias(c) for c in ("open", "high", "low", "close")],
        (pl.col("volume") / factor).alias("volume"),
    ).drop("adj_close")
    for set_name in ("relative11", "alpha158"):
        auto = build_features(df, set_name)
        ref = build_features(manual, set_name)
        np.testing.assert_allclose(auto.values, ref.values, rtol=1e-5, atol=1e-6, equal_nan=True)
    raw = build_features(df.drop("adj_close"), "alpha158")
    assert not np.allclose(raw.values, build_features(df, "alpha158").values, equal_nan=True)


@pytest.mark.parametrize("set_name", SETS)
def test_save_load_round_trip(set_name: str, tmp_path: Path) -> None:
    fm = _built(set_name, "crypto" if set_name == "crypto39" else "daily")
    path = fm.save(tmp_path / f"{set_name}.parquet")
    back = FeatureMatrix.load(path)
    assert back.names == fm.names
    assert back.params == fm.params
    assert back.schema_hash == fm.schema_hash
    assert back.keys.equals(fm.keys)
    np.testing.assert_array_equal(back.values, fm.values)
    assert back.values.flags["C_CONTIGUOUS"] and back.values.dtype == np.float32


def test_multi_symbol_crypto_panel() -> None:
    panel = two_crypto_symbols(1200, 15000)
    fm = build_features(panel, "crypto39")
    for sym, sl in fm.symbol_slices().items():
        alone = build_features(panel.filter(pl.col("symbol") == sym), "crypto39")
        np.testing.assert_allclose(fm.values[sl], alone.values, rtol=1e-5, atol=1e-7,
                                   equal_nan=True, err_msg=sym)


def test_docs_table_is_generated_and_current() -> None:
    text = feature_table_markdown()
    for fs in list_feature_sets():
        assert f"## `{fs.name}` ({len(fs.specs)} features" in text
        for s in fs.specs:
            assert f"`{s.name}`" in text
    assert "adj_close / close" in text
    assert (ROOT / "docs" / "features.md").read_text() == text + "\n"


def test_ohlc4_and_relative11_values_on_real_bars() -> None:
    """Spot values from first principles (numpy on the adjusted bars)."""
    df = load_daily(clean_daily_symbols(1), max_rows_per_symbol=300)
    f = (df["adj_close"] / df["close"]).to_numpy()
    o, h, lo, c = (df[k].to_numpy() * f for k in ("open", "high", "low", "close"))
    v = df["volume"].to_numpy() / f
    fm4 = build_features(df, "ohlc4")
    np.testing.assert_allclose(fm4.values[1:, 0], np.log(o[1:] / c[:-1]), rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(fm4.values[1:, 3], np.log(c[1:] / c[:-1]), rtol=1e-5, atol=1e-7)
    fm = build_features(df, "relative11")
    col = {n: fm.values[:, j] for j, n in enumerate(fm.names)}
    i = 250
    tr = np.maximum(h[1:], c[:-1]) - np.minimum(lo[1:], c[:-1])  # tr[k] is bar k + 1
    assert col["range_atr14"][i] == pytest.approx((h[i] - lo[i]) / tr[i - 14 : i].mean(), 1e-5)
    lv = np.log1p(v[i - 19 : i + 1])
    assert col["volume_z20"][i] == pytest.approx((lv[-1] - lv.mean()) / lv.std(), 1e-4)
    assert col["close_pos"][i] == pytest.approx((c[i] - lo[i]) / (h[i] - lo[i]), 1e-5)
    r = np.log(c[1:] / c[:-1])[i - 20 : i]
    assert col["ret_z20"][i] == pytest.approx(r[-1] / np.sqrt(np.mean(r**2)), 1e-4)


def test_crypto39_values_on_real_bars() -> None:
    """RSI, VWAP distance, realised vol and MACD against direct computations (MACD against
    pandas' recursive EWM: the 4*span truncation costs at most ~3e-4 of the EMA weight)."""
    df = load_crypto(3000)
    fm = build_features(df, "crypto39")
    col = {n: fm.values[:, j].astype(np.float64) for j, n in enumerate(fm.names)}
    c, h, lo, v = (df[k].to_numpy() for k in ("close", "high", "low", "volume"))
    i = 2500
    d = np.diff(c)[i - 14 : i]
    assert col["rsi_14"][i] == pytest.approx(d.clip(min=0).sum() / np.abs(d).sum(), 1e-5)
    tp = (h + lo + c)[i - 29 : i + 1] / 3
    vwap = (tp * v[i - 29 : i + 1]).sum() / v[i - 29 : i + 1].sum()
    assert col["vwap_dist_30"][i] == pytest.approx(np.log(c[i] / vwap), rel=1e-4, abs=1e-7)
    r = np.diff(np.log(c))[i - 15 : i]
    assert col["rvol_15"][i] == pytest.approx(np.sqrt(np.sum(r**2)), 1e-5)
    s = pd.Series(c)
    macd = (s.ewm(span=12, adjust=False).mean() - s.ewm(span=26, adjust=False).mean()) / s
    np.testing.assert_allclose(col["macd"][500:], macd.to_numpy()[500:], atol=1e-5)
    signal = macd.ewm(span=9, adjust=False).mean().to_numpy()
    np.testing.assert_allclose(col["macd_signal"][500:], signal[500:], atol=1e-5)
    assert np.abs(col["macd"][500:]).max() > 1e-4  # the check is not vacuous
    minute = df["ts"].dt.hour().cast(pl.Int64).to_numpy() * 60 + df["ts"].dt.minute().to_numpy()
    np.testing.assert_allclose(col["tod_sin"], np.sin(2 * np.pi * minute / 1440), atol=1e-6)


@pytest.mark.parametrize("set_name", SETS)
def test_tiny_inputs(set_name: str) -> None:
    """Empty frames, one bar, and symbols shorter than the warm-up: all rows NaN where the
    look-back is incomplete, right shapes, no crash."""
    df = load_daily(clean_daily_symbols(2), max_rows_per_symbol=3)
    n = EXPECTED_COUNTS[set_name]
    assert build_features(df.head(0), set_name).values.shape == (0, n)
    one = build_features(df.head(1), set_name)
    assert one.values.shape == (1, n) and not one.keys["gap_before"][0]
    fm = build_features(df, set_name)
    fs = get_feature_set(set_name)
    pos = _positions(fm.keys["symbol"])
    lookback = np.array([s.lookback for s in fs.specs])
    assert np.isnan(fm.values[pos[:, None] < lookback[None, :]]).all()
