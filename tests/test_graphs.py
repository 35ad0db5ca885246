"""Stock graphs for graph attention: no look-ahead, pandas-exact correlations, kNN, real sectors."""

from __future__ import annotations

from datetime import date
from pathlib import Path

import numpy as np
import pandas as pd
import polars as pl
import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from _real_data import BUNDLED_DAILY, SHARED_DATA, load_daily, require_shared
from moola.config import ConfigError
from moola.datasets.graphs import (
    EDGE_ATTR_NAMES,
    CorrelationGraph,
    DayGraphs,
    GraphConfig,
    build_day_graphs,
    load_sectors,
    pairwise_corr,
    returns_matrix,
)

SECTORS_CSV = SHARED_DATA / "sp500_sectors.csv"
SMALL = {"knn_k": 2, "corr_window": 8, "rebuild_every": 5, "min_overlap": 4}


def _random_returns(seed: int, d: int, s: int, nan_frac: float = 0.15) -> np.ndarray:
    """(D, S) returns with a common factor (so correlations differ) and scattered NaNs."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(d, 1)) * rng.uniform(0, 1.5, size=(1, s)) + rng.normal(size=(d, s))
    x[rng.random((d, s)) < nan_frac] = np.nan
    return x


def _sectors(s: int) -> list[str]:
    return [f"sec{i % 3}" for i in range(s)]


@pytest.fixture(scope="module")
def subset() -> tuple[np.ndarray, list[str], np.ndarray]:
    """(D, S) returns of the bundled real 30-stock subset, its symbols and (D,) calendar (ns)."""
    bars = load_daily()
    symbols = sorted(bars.get_column("symbol").unique().to_list())
    calendar = np.unique(bars.get_column("ts").dt.epoch("ns").to_numpy())
    return returns_matrix(bars, symbols, calendar), symbols, calendar


# ---- no look-ahead ------------------------------------------------------------------------


@settings(max_examples=60, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), d=st.integers(12, 50), s=st.integers(2, 7),
       cut=st.floats(0, 1), kind=st.sampled_from(["knn", "knn+sector", "dense"]))
def test_graph_on_date_ignores_returns_from_that_date_on(
    seed: int, d: int, s: int, cut: float, kind: str
) -> None:
    returns = _random_returns(seed, d, s)
    day = min(int(cut * d), d - 1)
    changed = returns.copy()
    changed[day:] = _random_returns(seed + 1, d - day, s, nan_frac=0.3)  # rows >= day rewritten
    cfg = GraphConfig(kind=kind, **SMALL)
    syms = [f"S{i}" for i in range(s)]
    a = build_day_graphs(cfg, returns, syms, _sectors(s))
    b = build_day_graphs(cfg, changed, syms, _sectors(s))
    upto = np.arange(day + 1)  # every date <= day sees the same graph
    adj_a, attr_a = a.for_days(upto)
    adj_b, attr_b = b.for_days(upto)
    np.testing.assert_array_equal(adj_a, adj_b)
    assert attr_a is not None and attr_b is not None
    np.testing.assert_array_equal(attr_a, attr_b)


def test_returns_of_a_rebuild_date_reach_only_later_rebuilds() -> None:
    """The counterpart that keeps the property honest: the rebuild at r + rebuild_every does use
    row r, while the one at r does not."""
    returns = _random_returns(3, 40, 6, nan_frac=0.0)
    g = CorrelationGraph.build(returns, 2, 8, 5, 4)
    r = int(g.rebuild_days[1])
    changed = returns.copy()
    changed[r] = changed[r] * -5.0
    h = CorrelationGraph.build(changed, 2, 8, 5, 4)
    np.testing.assert_array_equal(g.corr[:3], h.corr[:3])  # epochs 0..2 (rebuilds < and == r)
    assert not np.array_equal(g.corr[3], h.corr[3])


# ---- correlations -------------------------------------------------------------------------


def test_pairwise_corr_matches_pandas_with_nans() -> None:
    x = _random_returns(11, 70, 9, nan_frac=0.25)
    x[:, 7] = 0.01  # constant: no correlation
    x[5, 7] = np.nan
    x[:60, 8] = np.nan  # only 10 valid rows: below min_overlap for every pair
    corr, n = pairwise_corr(x, min_overlap=12)
    ref = pd.DataFrame(x).corr(min_periods=12).to_numpy()
    np.testing.assert_array_equal(np.isnan(corr), np.isnan(ref))
    np.testing.assert_allclose(corr, ref, rtol=0, atol=1e-10, equal_nan=True)
    valid = np.isfinite(x).astype(int)
    np.testing.assert_array_equal(n, valid.T @ valid)
    assert np.isnan(corr[:, 7]).all() and np.isnan(corr[:, 8]).all()


def test_epoch_correlation_is_the_trailing_window_before_the_rebuild() -> None:
    x = _random_returns(5, 60, 6)
    g = CorrelationGraph.build(x, 2, 8, 5, 4)
    assert g.rebuild_days.tolist() == list(range(8, 60, 5))
    for e, r in enumerate(g.rebuild_days, start=1):
        ref = pd.DataFrame(x[r - 8:r]).corr(min_periods=4).fillna(0.0).to_numpy()
        np.testing.assert_allclose(g.corr[e], ref, atol=1e-6)
    # the day -> epoch index: last rebuild <= d, epoch 0 before the first complete window
    expected = np.array([sum(int(r) <= day for r in g.rebuild_days) for day in range(60)])
    np.testing.assert_array_equal(g.day_epoch, expected)
    assert not g.knn[0].any() and not g.corr[0].any()


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), s=st.integers(2, 9), k=st.integers(1, 5))
def test_knn_rows_hold_the_k_largest_valid_correlations(seed: int, s: int, k: int) -> None:
    x = _random_returns(seed, 40, s, nan_frac=0.3)
    g = CorrelationGraph.build(x, k, 10, 7, 5)
    for e, r in enumerate(g.rebuild_days, start=1):
        corr, _ = pairwise_corr(x[r - 10:r], 5)
        np.fill_diagonal(corr, np.nan)
        for i in range(s):
            nb = g.knn[e, i]
            cand = np.isfinite(corr[i])
            assert not nb[i] and not (nb & ~cand).any()  # no self, only valid pairs
            assert nb.sum() == min(k, cand.sum())  # at most k, and k when there are enough
            if (cand & ~nb).any() and nb.any():
                assert corr[i, nb].min() >= corr[i, cand & ~nb].max()


def test_knn_adjacency_has_at_most_k_neighbours_plus_self(
    subset: tuple[np.ndarray, list[str], np.ndarray],
) -> None:
    returns, symbols, _ = subset
    g = build_day_graphs(GraphConfig(kind="knn", knn_k=4, edge_attrs=False), returns, symbols)
    adj, attr = g.for_days(np.arange(g.n_days))
    assert attr is None
    eye = np.eye(len(symbols), dtype=bool)
    assert adj[:, eye].all()  # the diagonal is always allowed
    off = (adj & ~eye).sum(axis=2)  # (D, S)
    assert off.max() == 4
    assert (off[:60] == 0).all()  # before the first complete 60-day window: self-loops only
    assert (off[60:] == 4).mean() > 0.9  # most stocks have a full neighbourhood later


def test_real_xom_nearest_neighbour_is_cvx_in_2016_2017(
    subset: tuple[np.ndarray, list[str], np.ndarray],
) -> None:
    returns, symbols, calendar = subset
    g = build_day_graphs(GraphConfig(kind="knn", edge_attrs=False), returns, symbols)
    xom, cvx = symbols.index("XOM"), symbols.index("CVX")
    days = pl.Series(calendar[g.rebuild_days]).cast(pl.Datetime("ns")).dt.date().to_list()
    epochs = [e for e, d in enumerate(days, start=1) if date(2016, 1, 1) <= d <= date(2017, 12, 31)]
    assert len(epochs) >= 20
    assert g.knn is not None
    assert all(g.knn[e, xom, cvx] and g.knn[e, cvx, xom] for e in epochs)  # k = 10: every rebuild
    cg = CorrelationGraph.build(returns, 10, 60, 20, 30)
    corr = cg.corr[epochs, xom].copy()  # (n, S)
    corr[:, xom] = -np.inf
    top1 = corr.argmax(axis=1)
    assert (top1 == cvx).mean() >= 0.75  # and its single nearest one at most rebuilds


# ---- sectors ------------------------------------------------------------------------------


def test_sector_graph_on_the_real_file_links_exactly_same_sector_pairs() -> None:
    path = require_shared(SECTORS_CSV)
    panel = require_shared(SHARED_DATA / "sp500_daily_2012_2017.parquet")
    symbols = sorted(pl.read_parquet(panel, columns=["symbol"]).get_column("symbol").unique().to_list())
    assert len(symbols) == 489
    sectors, subs = load_sectors(path, symbols)
    assert all(s for s in sectors) and len(set(sectors)) == 11
    assert sum(s is not None for s in subs) == 484
    table = dict(pl.read_csv(path).select("symbol", "sector").iter_rows())
    g = build_day_graphs(GraphConfig(kind="sector"), np.full((3, 489), np.nan), symbols, sectors)
    adj, attr = g.for_days(np.array([0, 2]))
    code = np.array([sorted(set(table.values())).index(table[s]) for s in symbols])
    expected = code[:, None] == code[None, :]  # (S, S)
    np.testing.assert_array_equal(adj[0], expected)
    np.testing.assert_array_equal(adj[1], expected)
    ix = {s: i for i, s in enumerate(symbols)}
    assert adj[0, ix["XOM"], ix["CVX"]] and not adj[0, ix["XOM"], ix["AAPL"]]
    assert attr is not None and attr.shape == (2, 489, 489, 2)
    np.testing.assert_array_equal(attr[..., 1], expected.astype(np.float32)[None].repeat(2, 0))
    assert not attr[..., 0].any()  # no history yet: correlation attribute 0


def test_knn_plus_sector_is_the_union_and_dense_is_all(
    subset: tuple[np.ndarray, list[str], np.ndarray],
) -> None:
    returns, symbols, _ = subset
    require_shared(SECTORS_CSV)
    base = {"knn_k": 3, "sector_file": str(SECTORS_CSV)}
    days = np.array([0, 100, 700, 1259])
    adj = {k: build_day_graphs(GraphConfig(kind=k, **base), returns, symbols).for_days(days)
           for k in ("knn", "sector", "knn+sector", "dense")}
    np.testing.assert_array_equal(adj["knn+sector"][0], adj["knn"][0] | adj["sector"][0])
    assert adj["dense"][0].all()
    assert (adj["knn+sector"][0] != adj["knn"][0]).any() and (adj["knn+sector"][0] != adj["sector"][0]).any()
    attrs = [a[1] for a in adj.values()]
    for a in attrs[1:]:  # the attributes do not depend on the kind
        np.testing.assert_array_equal(a, attrs[0])
    ix = {s: i for i, s in enumerate(symbols)}
    a = attrs[0]
    assert a is not None and a[2, ix["XOM"], ix["CVX"], 1] == 1.0 and a[2, ix["XOM"], ix["AAPL"], 1] == 0.0
    assert a[2, ix["XOM"], ix["CVX"], 0] > 0.3


# ---- storage and shapes -------------------------------------------------------------------


def test_full_size_panel_is_stored_per_epoch_and_for_days_gives_eight_days() -> None:
    d, s = 1260, 489
    returns = _random_returns(0, d, s, nan_frac=0.05)
    cfg = GraphConfig(kind="knn+sector")
    g = build_day_graphs(cfg, returns, [f"S{i}" for i in range(s)], _sectors(s))
    n_ep = len(g.rebuild_days) + 1
    assert n_ep == 61 and g.day_epoch.shape == (d,)
    assert g.knn is not None and g.knn.shape == (n_ep, s, s)
    assert g.corr is not None and g.corr.shape == (n_ep, s, s)
    stored = g.knn.nbytes + g.corr.nbytes
    assert stored * 15 < d * s * s * (1 + 4 * len(EDGE_ATTR_NAMES))  # not dense over all days
    adj, attr = g.for_days(np.array([0, 1, 59, 60, 61, 500, 1000, 1259]))
    assert adj.shape == (8, s, s) and adj.dtype == np.bool_
    assert attr is not None and attr.shape == (8, s, s, 2) and attr.dtype == np.float32
    assert (adj[3] != adj[2]).any()  # day 60 is the first rebuild


# ---- returns matrix -----------------------------------------------------------------------


def test_returns_matrix_uses_adj_close_and_nans_gaps() -> None:
    bars = load_daily(("AAPL", "MMC", "UA"))
    symbols = ["UA", "AAPL", "MMC"]
    cal = np.unique(load_daily().get_column("ts").dt.epoch("ns").to_numpy())
    r = returns_matrix(bars, symbols, cal)
    assert r.shape == (cal.shape[0], 3)
    assert np.isnan(r[0]).all()
    aapl = bars.filter(pl.col("symbol") == "AAPL").get_column("adj_close").to_numpy()
    np.testing.assert_allclose(r[1:, 1], np.log(aapl[1:] / aapl[:-1]))  # AAPL has every date
    ua_start = bars.filter(pl.col("symbol") == "UA").get_column("ts").min()
    first = int(np.searchsorted(cal, pl.Series([ua_start]).dt.epoch("ns")[0]))
    assert first > 500 and np.isnan(r[: first + 1, 0]).all() and np.isfinite(r[first + 1, 0])
    gap = int(np.searchsorted(cal, pl.Series([date(2015, 4, 28)]).cast(pl.Datetime("ns"))
                              .dt.epoch("ns")[0]))
    assert np.isnan(r[gap, 2]) and np.isnan(r[gap + 1, 2])  # MMC's missing day and the day after
    assert np.isfinite(r[gap - 1, 2]) and np.isfinite(r[gap + 2, 2])


def test_returns_matrix_rejects_duplicates_and_unknown_symbols() -> None:
    raw = pl.read_parquet(BUNDLED_DAILY)  # COH 2017-10-30 and LVLT 2017-10-31 are duplicated
    with pytest.raises(ValueError, match=r"duplicated \(symbol, date\).*COH"):
        returns_matrix(raw.filter(pl.col("adj_close").is_not_null()), ["COH", "LVLT"])
    with pytest.raises(KeyError, match="ZZZ"):
        returns_matrix(load_daily(("AAPL",)), ["AAPL", "ZZZ"])
    with pytest.raises(ValueError, match="adj_close"):
        returns_matrix(load_daily(("AAPL",)).drop("adj_close"), ["AAPL"])


# ---- config and errors --------------------------------------------------------------------


def test_config_round_trips_and_rejects_bad_values() -> None:
    cfg = GraphConfig(kind="knn+sector", knn_k=5, min_overlap=20, sector_file="s.csv")
    assert GraphConfig.from_dict(yaml.safe_load(cfg.to_yaml())) == cfg
    assert GraphConfig().overlap == 30 and cfg.overlap == 20
    for bad, key in (({"kind": "star"}, "kind"), ({"knn_k": 0}, "knn_k"),
                     ({"corr_window": 10, "min_overlap": 11}, "min_overlap"),
                     ({"rebuild_every": 0}, "rebuild_every"), ({"k": 3}, "k")):
        with pytest.raises(ConfigError, match=key):
            GraphConfig.from_dict(bad)


def test_load_sectors_errors_name_the_problem(tmp_path: Path) -> None:
    path = require_shared(SECTORS_CSV)
    with pytest.raises(KeyError, match=r"2 symbol\(s\) not in the file: NOPE, ZZZZ"):
        load_sectors(path, ["AAPL", "NOPE", "ZZZZ"])
    with pytest.raises(FileNotFoundError, match=r"nowhere\.csv"):
        load_sectors(path.parent / "nowhere.csv", ["AAPL"])
    bad = tmp_path / "s.csv"
    bad.write_text("symbol,name,industry\nAAPL,Apple,Tech\n")
    with pytest.raises(ValueError, match=r"missing column\(s\) \['sector', 'sub_industry'\]"):
        load_sectors(bad, ["AAPL"])
    sectors, subs = load_sectors(path, ["XOM", "CVX"])
    assert sectors == ["Energy", "Energy"] and all(subs)


def test_builder_and_for_days_errors() -> None:
    x = _random_returns(1, 30, 4)
    syms = ["A", "B", "C", "D"]
    with pytest.raises(ValueError, match="returns shape"):
        build_day_graphs(GraphConfig(**SMALL), x[:, :3], syms, _sectors(4))
    with pytest.raises(ValueError, match="kind 'sector' needs sectors"):
        build_day_graphs(GraphConfig(kind="sector", **SMALL), x, syms)
    with pytest.raises(ValueError, match="edge_attrs"):
        build_day_graphs(GraphConfig(kind="knn", **SMALL), x, syms)
    with pytest.raises(ValueError, match="symbols repeat: A"):
        build_day_graphs(GraphConfig(kind="knn", edge_attrs=False, **SMALL), x, ["A", "A", "C", "D"])
    g = build_day_graphs(GraphConfig(kind="knn", edge_attrs=False, **SMALL), x, syms)
    assert isinstance(g, DayGraphs) and g.edge_attr_names == ()
    with pytest.raises(IndexError, match=r"\[30\] out of range \[0, 30\)"):
        g.for_days(np.array([0, 30]))
    with pytest.raises(ValueError, match="1-d integer"):
        g.for_days(np.array([0.5]))
