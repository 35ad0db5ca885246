"""The rule-based pattern labeler: rules checked by hand, determinism, the pool, the config."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from polars.testing import assert_frame_equal

from moola.config import ConfigError, schema_markdown
from moola.data import Store, ingest
from moola.datasets import LabeledWindows, WindowSet, load_labels
from moola.datasets.patterns import (
    CLASSES,
    LabelerConfig,
    build_pool,
    candidate_windows,
    class_balance,
    label_windows,
    make_labels_file,
    match_window,
    prepare_bars,
    scan_windows,
)
from moola.features import adjusted_bars, build_features

ROOT = Path(__file__).resolve().parents[1]
BUNDLED = ROOT / "data" / "bundled" / "sp500_subset.parquet"
SHIPPED = ROOT / "data" / "labels" / "sp500_patterns.csv"
CONFIG = ROOT / "configs" / "labeler.yaml"
DOC = ROOT / "docs" / "labeler.md"
W = 105


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Store:
    st = Store(tmp_path_factory.mktemp("patterns") / "store")
    ingest([BUNDLED], st)
    return st


@pytest.fixture(scope="module")
def bars(store: Store) -> pl.DataFrame:
    return prepare_bars(store)


@pytest.fixture(scope="module")
def shipped_cfg() -> LabelerConfig:
    return LabelerConfig.from_yaml(CONFIG)


@pytest.fixture(scope="module")
def labels(bars: pl.DataFrame, shipped_cfg: LabelerConfig) -> pl.DataFrame:
    return label_windows(bars, shipped_cfg)


# ---------------------------------------------------------------- determinism, shipped file
def test_same_output_twice(bars: pl.DataFrame, labels: pl.DataFrame,
                           shipped_cfg: LabelerConfig) -> None:
    assert_frame_equal(label_windows(bars, shipped_cfg), labels)


def test_shipped_csv_is_reproduced_byte_for_byte(store: Store, shipped_cfg: LabelerConfig,
                                                 tmp_path: Path) -> None:
    out = tmp_path / "labels.csv"
    make_labels_file(out, store, shipped_cfg)
    assert out.read_bytes() == SHIPPED.read_bytes(), (
        "data/labels/sp500_patterns.csv is stale: regenerate it with make_labels_file"
    )


def test_shipped_labels_load_with_zero_rejections(bars: pl.DataFrame) -> None:
    fm = build_features(bars, "ohlc4")
    lab = load_labels(SHIPPED, classes=list(CLASSES))
    lw = LabeledWindows.from_labels(fm, lab, W, classes=list(CLASSES))
    assert lw.rejected.height == 0, lw.rejected
    assert len(lw) == lab.height
    assert lw.pointers is not None and (lw.pointers[:, 0] <= lw.pointers[:, 1]).all()


def test_shipped_counts_and_balance(labels: pl.DataFrame) -> None:
    bal = class_balance(labels)
    n = labels.height
    assert 100 <= n <= 200, n
    assert min(bal.values()) >= 0.3 * n, bal
    # no two labeled windows of one symbol share a bar
    for (_,), g in labels.sort("start_ts").partition_by("symbol", as_dict=True).items():
        starts, ends = g["start_ts"].to_numpy(), g["end_ts"].to_numpy()
        assert (starts[1:] > ends[:-1]).all()
    # every pattern ends in the last end_slack bars and pointers are ordered
    assert labels["pointer_end"].min() >= W - 5
    assert (labels["pointer_start"] <= labels["pointer_end"]).all()


def test_fast_scan_equals_the_per_window_rule(bars: pl.DataFrame,
                                              shipped_cfg: LabelerConfig) -> None:
    """The vectorised scan gives exactly what match_window gives, window by window."""
    sub = bars.filter(pl.col("symbol").is_in(["AAPL", "ESS", "GE", "UA", "XOM"]))
    cfg = shipped_cfg.model_copy(update={"label_from": None})
    fast = scan_windows(sub, cfg)
    ws = candidate_windows(sub, cfg)
    adj = adjusted_bars(sub)
    h, lo, c = (adj[x].to_numpy() for x in ("high", "low", "close"))
    rows = []
    for s in ws.starts.tolist():
        m = match_window(h[s : s + W], lo[s : s + W], c[s : s + W], cfg)
        if m is not None:
            rows.append((s + W - 1, m.label, m.pointer_start, m.pointer_end, m.direction,
                         m.impulse_start, m.impulse_end, m.impulse_atr, m.retrace))
    cols = ["end_row", "label", "pointer_start", "pointer_end", "direction", "impulse_start",
            "impulse_end", "impulse_atr", "retrace"]
    ref = pl.DataFrame(rows, schema=cols, orient="row")
    assert ref.height > 500
    assert_frame_equal(fast.select(cols), ref, check_exact=True)


def test_labels_never_look_past_the_window(bars: pl.DataFrame,
                                           shipped_cfg: LabelerConfig) -> None:
    """Cutting every bar after a day changes no match of a window ending by that day."""
    cut = datetime(2016, 6, 30, tzinfo=UTC)
    cfg = shipped_cfg.model_copy(update={"label_from": None})
    full = scan_windows(bars, cfg).filter(pl.col("end_ts") <= cut)
    part = scan_windows(bars.filter(pl.col("ts") <= cut), cfg)
    assert full.height > 1000
    assert_frame_equal(part.drop("start_row", "end_row"), full.drop("start_row", "end_row"))


# ---------------------------------------------------------------- hand-checked windows
def _raw_window(symbol: str, end: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The 105 adjusted bars up to ``end`` straight from the parquet (no moola code)."""
    raw = (
        pl.read_parquet(BUNDLED)
        .filter((pl.col("symbol") == symbol) & pl.col("close").is_not_null())
        .filter(pl.col("date") <= datetime.fromisoformat(end).date())
        .sort("date")
        .tail(W)
    )
    f = raw["adj_close"].to_numpy() / raw["close"].to_numpy()
    return raw["high"].to_numpy() * f, raw["low"].to_numpy() * f, raw["close"].to_numpy() * f


def _atr_by_hand(h: np.ndarray, lo: np.ndarray, c: np.ndarray, a: int) -> float:
    trs = []
    for t in range(a - 13, a + 1):
        trs.append(max(h[t], c[t - 1]) - min(lo[t], c[t - 1]))
    return sum(trs) / 14


# (symbol, end day, label, direction, a, b, pointer_start, pointer_end, impulse in ATR,
#  range in ATR (consolidation) or retracement ratio) -- read off plots of each window and
#  recomputed below with plain numpy from the raw file at the documented thresholds.
HAND = [
    ("WMT", "2015-07-06", "consolidation", -1, 71, 86, 87, 100, 7.372128, 2.236365),
    ("HD", "2016-08-17", "consolidation", 1, 68, 83, 84, 104, 6.985819, 2.411840),
    ("ESS", "2016-03-02", "retracement", -1, 79, 91, 92, 104, 6.899722, 0.755725),
    ("JNJ", "2017-04-06", "retracement", 1, 73, 88, 89, 100, 9.474484, 0.431268),
]


@pytest.mark.parametrize("case", HAND, ids=[f"{c[0]}-{c[1]}" for c in HAND])
def test_hand_checked_window(case: tuple, labels: pl.DataFrame) -> None:
    sym, end, label, d, a, b, ps, pe, k_exp, x_exp = case
    row = labels.filter(
        (pl.col("symbol") == sym) & (pl.col("end_ts").dt.strftime("%Y-%m-%d") == end)
    )
    assert row.height == 1, f"{sym} {end} is no longer in the labeled set"
    got = row.row(0, named=True)
    assert (got["label"], got["direction"], got["impulse_start"], got["impulse_end"],
            got["pointer_start"], got["pointer_end"]) == (label, d, a, b, ps, pe)

    h, lo, c = _raw_window(sym, end)
    assert len(c) == W
    atr = _atr_by_hand(h, lo, c, a)
    # impulse: <= 15 bars, close[a] the extreme of the 15 closes before b, close[b] the
    # extreme of closes a..b, size >= 4 ATR
    assert 1 <= b - a <= 15 and a >= 14
    before_b = c[b - 15 : b]
    assert d * c[a] == min(d * before_b)
    assert d * c[b] == max(d * c[a : b + 1])
    move = d * (c[b] - c[a])
    k = move / atr
    assert k >= 4.0
    assert k == pytest.approx(k_exp, rel=1e-5)
    assert pe >= W - 5 and ps == b + 1
    if label == "consolidation":
        seg_range = h[ps : pe + 1].max() - lo[ps : pe + 1].min()
        assert seg_range / atr <= 2.5
        assert seg_range / atr == pytest.approx(x_exp, rel=1e-5)
        assert pe - ps + 1 >= 10
        give_back = (d * c[b] - d * c[ps : pe + 1]) / move
        assert give_back.max() < 0.382
        if pe < W - 1:  # maximal: one more bar breaks the range or the hold
            nxt_range = h[ps : pe + 2].max() - lo[ps : pe + 2].min()
            assert nxt_range / atr > 2.5 or (d * c[b] - d * c[pe + 1]) / move >= 0.382
    else:
        after = d * c[b + 1 :]
        assert after.max() <= d * c[b]  # no close beyond the impulse end since
        assert d * c[pe] == after.min()  # pe is the extreme of the counter-move
        ratio = (d * c[b] - d * c[pe]) / move
        assert 0.382 <= ratio <= 0.786
        assert ratio == pytest.approx(x_exp, rel=1e-5)
        assert 3 <= pe - b <= 15


# ---------------------------------------------------------------- synthetic textbook cases
def _flat(n: int, level: float = 100.0) -> np.ndarray:
    return level + 0.3 * np.sin(np.arange(n) * 1.7)


def _bars_frame(c: np.ndarray, half: float = 0.5) -> pl.DataFrame:
    """One symbol of daily bars around closes ``c`` (one lead bar for the features)."""
    c = np.r_[c[0], c]
    ts = pl.datetime_range(datetime(2020, 1, 1, tzinfo=UTC), datetime(2026, 1, 1, tzinfo=UTC),
                           "1d", eager=True, time_unit="ns")
    ts = ts.filter(ts.dt.weekday() <= 5)[: len(c)]
    return pl.DataFrame({
        "symbol": "SYN", "ts": ts, "open": np.r_[c[0], c[:-1]], "high": c + half,
        "low": c - half, "close": c, "volume": 1e6,
    })


def test_textbook_consolidation() -> None:
    # flat 0..59, up 1.2 a bar 60..69 (b = 69), then 35 tight bars just under close[b]
    c = np.r_[_flat(60), 100 + 1.2 * np.arange(1, 11), 111.5 + 0.2 * np.sin(np.arange(35))]
    cfg = LabelerConfig(label_from=None)
    m = match_window(c + 0.5, c - 0.5, c, cfg)
    assert m is not None and m.label == "consolidation"
    assert abs(m.pointer_start - 70) <= 1 and abs(m.pointer_end - 104) <= 1
    got = label_windows(_bars_frame(c), cfg)
    assert got.height == 1 and got["label"][0] == "consolidation"
    assert abs(got["pointer_start"][0] - 70) <= 1 and abs(got["pointer_end"][0] - 104) <= 1


def test_textbook_retracement() -> None:
    # flat 0..81, up 1 a bar 82..93 (b = 93), down 0.7 a bar 94..101 (~45%), small bounce
    c = np.r_[_flat(82), 100 + np.arange(1, 13), 112 - 0.7 * np.arange(1, 9),
              106.4 + 0.3 * np.arange(1, 4)]
    assert c.size == W
    cfg = LabelerConfig(label_from=None)
    m = match_window(c + 0.5, c - 0.5, c, cfg)
    assert m is not None and m.label == "retracement"
    assert abs(m.pointer_start - 94) <= 1 and abs(m.pointer_end - 101) <= 1
    assert 0.382 <= m.retrace <= 0.786
    got = label_windows(_bars_frame(c), cfg)
    assert got.height == 1 and got["label"][0] == "retracement"
    assert abs(got["pointer_start"][0] - 94) <= 1 and abs(got["pointer_end"][0] - 101) <= 1


def test_flat_series_has_no_pattern() -> None:
    c = _flat(W)
    assert match_window(c + 0.5, c - 0.5, c, LabelerConfig(label_from=None)) is None


def _random_walk(n_sym: int, n: int, seed: int) -> pl.DataFrame:
    rng = np.random.default_rng(seed)
    frames = []
    for s in range(n_sym):
        c = 100 * np.exp(np.cumsum(rng.normal(0, 0.015, n)))
        frame = _bars_frame(c[1:]).with_columns(
            pl.lit(f"RW{s}").alias("symbol"),
            pl.Series("high", c * np.exp(np.abs(rng.normal(0, 0.008, n)))),
            pl.Series("low", c * np.exp(-np.abs(rng.normal(0, 0.008, n)))),
        )
        frames.append(frame)
    return pl.concat(frames)


def test_random_walk_gets_few_labels_at_strict_thresholds() -> None:
    rw = _random_walk(4, 800, seed=7)
    strict = LabelerConfig(label_from=None, impulse_atr=7.0, range_atr=1.5, min_len=15,
                           retrace_min=0.5, retrace_max=0.618, retrace_max_bars=10)
    n_windows = len(candidate_windows(rw, strict))
    assert n_windows > 2500
    matched = scan_windows(rw, strict)
    assert matched.height <= 0.01 * n_windows, class_balance(matched)
    assert class_balance(matched)["consolidation"] == 0
    assert label_windows(rw, strict).height <= 5
    # the same noise at the shipped thresholds: patterns are shapes, and noise has shapes
    assert scan_windows(rw, LabelerConfig(label_from=None)).height > 10 * max(matched.height, 1)


# ---------------------------------------------------------------- the unlabeled pool
def test_pool_is_disjoint_from_labeled_time_and_large(bars: pl.DataFrame) -> None:
    fm = build_features(bars, "ohlc4")
    lab = load_labels(SHIPPED, classes=list(CLASSES))
    # the per-symbol rule (opt-in; the default, by time on every symbol: tests/test_separation.py)
    pool = build_pool(fm, lab, window=W, min_pool=10_000, exclusion="symbol", embargo_bars=0)
    assert len(pool) >= 10_000
    meta = pool.meta
    shipped = pl.read_csv(SHIPPED)
    for sym, start, end in shipped.select("symbol", "start_ts", "end_ts").iter_rows():
        s = datetime.fromisoformat(start.replace("Z", "+00:00"))
        e = datetime.fromisoformat(end.replace("Z", "+00:00"))
        clash = meta.filter(
            (pl.col("symbol") == sym) & (pl.col("start_ts") <= e) & (pl.col("end_ts") >= s)
        )
        assert clash.height == 0, (sym, start, end, clash.head(3))
    # nothing else is dropped: every valid window outside the pool meets a labeled window
    all_ws = WindowSet.from_matrix(fm, W)
    out = all_ws.meta.join(meta.select("start_row"), on="start_row", how="anti")
    spans = shipped.select(
        "symbol",
        pl.col("start_ts").str.to_datetime(time_zone="UTC").alias("ls"),
        pl.col("end_ts").str.to_datetime(time_zone="UTC").alias("le"),
    )
    met = out.join(spans, on="symbol").filter(
        (pl.col("start_ts") <= pl.col("le")) & (pl.col("end_ts") >= pl.col("ls"))
    )
    assert met["start_row"].n_unique() == out.height == len(all_ws) - len(pool)


def test_pool_accepts_windowset_and_labeledwindows(bars: pl.DataFrame) -> None:
    fm = build_features(bars, "ohlc4")
    lab = load_labels(SHIPPED, classes=list(CLASSES))
    lw = LabeledWindows.from_labels(fm, lab, W, classes=list(CLASSES))
    a = build_pool(fm, lab)
    b = build_pool(WindowSet.from_matrix(fm, W), lw)
    assert np.array_equal(a.starts, b.starts)


def test_pool_refuses_too_small_or_unknown_labels(bars: pl.DataFrame) -> None:
    fm = build_features(bars, "ohlc4")
    lab = load_labels(SHIPPED, classes=list(CLASSES))
    with pytest.raises(ValueError, match="at least 1000000"):
        build_pool(fm, lab, min_pool=1_000_000)
    bad = lab.with_columns(pl.lit(datetime(2030, 1, 1, tzinfo=UTC)).alias("end_ts"))
    with pytest.raises(ValueError, match="no bar in the matrix"):
        build_pool(fm, bad)


# ---------------------------------------------------------------- config and docs
def test_shipped_config_is_the_default(shipped_cfg: LabelerConfig) -> None:
    assert shipped_cfg == LabelerConfig()


def test_config_yaml_round_trip(tmp_path: Path) -> None:
    cfg = LabelerConfig(impulse_atr=3.5, label_from=None, max_per_symbol=3,
                        priority=["retracement", "consolidation"])
    path = tmp_path / "labeler.yaml"
    cfg.to_yaml(path)
    assert LabelerConfig.from_yaml(path) == cfg
    assert LabelerConfig.from_yaml(path, ["end_slack=7"]).end_slack == 7


def test_bad_config_lists_every_problem(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("impulse_atr: -1\nmin_len: many\nhold_max: 1.5\nbogus: 1\n")
    with pytest.raises(ConfigError) as err:
        LabelerConfig.from_yaml(path)
    keys = {p.split(":")[0] for p in err.value.problems}
    assert keys == {"impulse_atr", "min_len", "hold_max", "bogus"}
    with pytest.raises(ConfigError) as err:
        LabelerConfig.from_dict({"retrace_min": 0.8, "retrace_max": 0.5, "retrace_min_bars": 9,
                                 "retrace_max_bars": 3, "priority": ["retracement"]})
    keys = {p.split(":")[0] for p in err.value.problems}
    assert keys == {"retrace_min", "retrace_min_bars", "priority"}


def test_doc_is_current(labels: pl.DataFrame) -> None:
    text = DOC.read_text()
    assert schema_markdown(LabelerConfig).strip() in text, (
        "docs/labeler.md threshold table is stale: regenerate with schema_markdown(LabelerConfig)"
    )
    bal = class_balance(labels)
    n = labels.height
    line = (f"{n} windows: {bal['consolidation']} consolidation "
            f"({bal['consolidation'] / n:.0%}), {bal['retracement']} retracement "
            f"({bal['retracement'] / n:.0%})")
    assert line in text, f"docs/labeler.md should state the class balance: {line}"
