"""The direction label with a dead zone (binary drops small moves, ternary calls them flat),
the split by fractions or dates with an embargo that follows the horizon, and a ternary run
training a 3-class head, all on the bundled BTC/USD 1-minute bars."""

from __future__ import annotations

import itertools
import json
import warnings
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from pydantic import ValidationError

from _train_helpers import ROOT
from moola.config import ConfigError
from moola.datasets.tasks import (
    DataConfig,
    SplitConfig,
    calendar_positions,
    direction_labels,
    load_features,
    prepare_data,
    resolve_store,
)
from moola.models import ModelConfig, preset_config
from moola.pipelines.train import RunConfig, run_train
from moola.training.manifest import read_manifest

DEMO = ROOT / "configs" / "direction_demo.yaml"


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> Path:
    return resolve_store(DataConfig(bundled="btcusd_1m"), tmp_path_factory.mktemp("btc"))


def _cfg(**kw) -> DataConfig:
    base = {"bundled": "btcusd_1m", "timeframe": "1m", "window": 32, "stride": 7}
    return DataConfig(**(base | kw))


def _returns(data, store: Path, cfg: DataConfig) -> dict[str, np.ndarray]:
    """Each split's forward log return read straight from the bars at its windows' last bars."""
    _, bars, _ = load_features(cfg, store)
    fwd = bars.select("symbol", "ts", r=(pl.col("close").shift(-cfg.horizon).over("symbol")
                                         / pl.col("close")).log())
    out = {}
    for k, m in data.meta.items():
        r = m.join(fwd, left_on=["symbol", "end_ts"], right_on=["symbol", "ts"], how="left")["r"]
        assert r.null_count() == 0
        out[k] = r.to_numpy()
    return out


# ------------------------------------------------------------------------------ labels


def test_binary_without_a_dead_zone_is_the_sign_of_the_return(store):
    cfg = _cfg(horizon=5)
    data = prepare_data(cfg, store)
    assert data.classes == ["down", "up"] == cfg.classes
    explicit = prepare_data(_cfg(horizon=5, direction="binary", dead_zone_bps=0), store)
    for k, r in _returns(data, store, cfg).items():
        assert (data.y[k] == (r > 0)).all(), k
        assert (explicit.y[k] == data.y[k]).all() and explicit.meta[k].equals(data.meta[k])


def test_binary_dead_zone_drops_small_moves_and_only_those(store):
    plain, cfg = _cfg(horizon=1), _cfg(horizon=1, dead_zone_bps=2.0)
    full, data = prepare_data(plain, store), prepare_data(cfg, store)
    rets = _returns(data, store, cfg)
    for k, r in rets.items():
        assert (np.abs(r) >= 2e-4).all(), k
        assert (data.y[k] == (r > 0)).all(), k
    # the windows dropped are exactly the small moves: every split's kept count falls
    all_r = np.concatenate(list(_returns(full, store, plain).values()))
    small = int((np.abs(all_r) < 2e-4).sum())
    assert small > 0.2 * all_r.size  # one-minute BTC: many moves under 2 bp
    assert sum(len(v) for v in data.y.values()) < sum(len(v) for v in full.y.values()) - small // 2


def test_ternary_labels_down_flat_up(store):
    cfg = _cfg(horizon=5, direction="ternary", dead_zone_bps=3.0)
    data = prepare_data(cfg, store)
    assert data.classes == ["down", "flat", "up"]
    for k, r in _returns(data, store, cfg).items():
        want = np.where(np.abs(r) < 3e-4, 1, np.where(r > 0, 2, 0))
        assert (data.y[k] == want).all(), k
        assert set(np.unique(data.y[k])) == {0, 1, 2}, k


@settings(max_examples=50, deadline=None)
@given(r=arrays(np.float64, st.integers(1, 40), elements=st.floats(-0.01, 0.01)),
       dz=st.sampled_from([0.0, 0.5, 1.0, 5.0]))
def test_binary_is_ternary_without_its_flat_class(r, dz):
    keep, yb = direction_labels(r, DataConfig(dead_zone_bps=dz))
    assert (keep == (np.abs(r) >= dz * 1e-4)).all() and yb.size == keep.sum()
    if dz:
        all_kept, yt = direction_labels(r, DataConfig(direction="ternary", dead_zone_bps=dz))
        assert all_kept.all()
        assert ((yt == 1) == ~keep).all() and (yt[keep] // 2 == yb).all()


def test_label_options_are_checked_naming_the_keys():
    with pytest.raises(ValidationError, match=r"ternary needs data\.dead_zone_bps > 0"):
        DataConfig(direction="ternary")
    with pytest.raises(ValidationError, match="task: direction only"):
        DataConfig(task="regression", dead_zone_bps=1.0)
    with pytest.raises(ValidationError, match="greater than or equal to 0"):
        DataConfig(dead_zone_bps=-1)


# ------------------------------------------------------------------------------ splits


def _label_spans(data, store: Path, cfg: DataConfig) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    fm, _, _ = load_features(cfg, store)
    cal = np.unique(fm.keys["ts"].dt.epoch("ns").to_numpy())
    assert (calendar_positions(cal) == np.arange(cal.size)).all()
    pos = {k: (np.searchsorted(cal, m["start_ts"].dt.epoch("ns").to_numpy()),
               np.searchsorted(cal, m["end_ts"].dt.epoch("ns").to_numpy()) + cfg.horizon)
           for k, m in data.meta.items()}
    return pos


@settings(max_examples=5, deadline=None)
@given(horizon=st.sampled_from([1, 5, 15, 30]), dz=st.sampled_from([0.0, 1.0, 4.0]),
       stride=st.integers(5, 25))
def test_the_default_embargo_follows_the_horizon(store, horizon, dz, stride):
    """With no embargo set, it is max(5, horizon) bars: no later split's window starts within
    that many bars of an earlier split's label end, whatever the dead zone dropped."""
    cfg = _cfg(horizon=horizon, dead_zone_bps=dz, stride=stride)
    assert cfg.embargo_bars == max(5, horizon) >= horizon
    data = prepare_data(cfg, store)
    span = _label_spans(data, store, cfg)
    for early, late in (("train", "val"), ("train", "test"), ("val", "test")):
        gap = span[late][0].min() - span[early][1].max()
        assert gap > cfg.embargo_bars, (early, late, gap)
    n = sum(len(v) for v in data.y.values()) + data.split.purged + data.split.embargoed
    assert abs(len(data.y["test"]) / n - 0.15) < 0.02  # 70/15/15 by default


def test_a_date_split_cuts_on_the_last_bar(store):
    vs, ts = "2023-03-14T00:00:00", "2023-03-17T12:00:00+00:00"
    cfg = _cfg(horizon=5, split=SplitConfig(val_start=vs, test_start=ts))
    data = prepare_data(cfg, store)
    v0, t0 = datetime(2023, 3, 14, tzinfo=UTC), datetime(2023, 3, 17, 12, tzinfo=UTC)
    assert cfg.split.dates == (v0, t0)
    end = {k: m["end_ts"] for k, m in data.meta.items()}
    assert end["train"].max() < v0 <= end["val"].min() and end["val"].max() < t0 <= end["test"].min()
    span = _label_spans(data, store, cfg)
    assert span["val"][0].min() - span["train"][1].max() > 5
    assert span["test"][0].min() - span["val"][1].max() > 5


def test_fractions_or_dates_not_both():
    with pytest.raises(ValidationError, match=r"not both: got val and val_start, test_start"):
        SplitConfig(val=0.2, val_start="2023-03-14", test_start="2023-03-17")
    with pytest.raises(ValidationError, match="test_start is missing"):
        SplitConfig(val_start="2023-03-14")
    with pytest.raises(ValidationError, match="must be before test_start"):
        SplitConfig(val_start="2023-03-17", test_start="2023-03-14")
    assert SplitConfig().fractions == (0.15, 0.15) and SplitConfig(val=0.2).fractions == (0.2, 0.15)


def test_a_date_split_overrides_a_config_with_fractions_and_round_trips(tmp_path):
    dates = ["data.split.val_start=2023-03-14", "data.split.test_start=2023-03-17T12:00:00Z"]
    with pytest.raises(ConfigError, match=r"data\.split: .*not both: got val, test and val_start"):
        RunConfig.from_yaml(DEMO, dates)  # the demo sets val: 0.2, test: 0.2
    cfg = RunConfig.from_yaml(DEMO, [*dates, "data.split.val=null", "data.split.test=null"])
    assert cfg.data.split.dates == (datetime(2023, 3, 14, tzinfo=UTC),
                                    datetime(2023, 3, 17, 12, tzinfo=UTC))
    cfg.to_yaml(tmp_path / "c.yaml")
    assert RunConfig.from_yaml(tmp_path / "c.yaml") == cfg


def test_a_date_after_the_data_names_the_empty_segment(store):
    cfg = _cfg(split=SplitConfig(val_start="2023-03-14", test_start="2024-01-01"))
    with pytest.raises(ValueError, match="test segment is empty"):
        prepare_data(cfg, store)


# ------------------------------------------------------------------------------ ternary run


@pytest.fixture(scope="module")
def ternary_run(tmp_path_factory) -> tuple[Path, RunConfig]:
    out = tmp_path_factory.mktemp("ternary")
    cfg = RunConfig.from_yaml(DEMO, [
        f"out_dir={out}", "data.stride=20", "train.epochs=1", "data.horizon=5",
        "data.direction=ternary", "data.dead_zone_bps=3", "preset=direction_lstm",
        "data.feature_set=crypto39", "baselines=[majority,logistic]", "train.device=cpu",
        "train.num_threads=1"])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        outcome = run_train(cfg, show_progress=False)
    return outcome.run_dir, cfg


def test_a_ternary_direction_run_trains_a_3_class_head(ternary_run):
    run_dir, _ = ternary_run
    resolved = RunConfig.from_yaml(run_dir / "config.yaml")
    assert resolved.model is not None and resolved.model.direction is None
    assert resolved.model.classifier is not None and resolved.model.classifier.n_classes == 3
    assert resolved.model == preset_config("direction_lstm", n_features=39, n_classes=3)
    m = read_manifest(run_dir)
    assert m.classes == ["down", "flat", "up"] and m.embargo_bars == 5
    assert m.label is not None and "1 ('flat') when |r| < 3 bp" in m.label
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["classes"] == ["down", "flat", "up"]
    cm = np.asarray(metrics["model"]["confusion_matrix"])
    assert cm.shape == (3, 3) and cm.sum() == metrics["run"]["n_test"] == metrics["model"]["n_samples"]
    assert set(metrics["baseline_metrics"]) == {"majority", "logistic"}


def test_a_binary_direction_head_refuses_ternary_labels(tmp_path):
    model = ModelConfig.model_validate(preset_config("direction_lstm", n_features=4).model_dump())
    cfg = RunConfig.from_yaml(DEMO, [
        f"out_dir={tmp_path}", "data.stride=50", "train.epochs=1", "data.direction=ternary",
        "data.dead_zone_bps=2", "baselines=[majority]", "train.device=cpu"])
    cfg = cfg.model_copy(update={"model": model, "preset": None})
    with pytest.raises(ValueError, match=r"model\.direction predicts one binary logit but the "
                                         r"labels have 3 classes"):
        run_train(cfg, show_progress=False)


# ------------------------------------------------------------------------------ walk-forward


@settings(max_examples=25, deadline=None)
@given(n_folds=st.integers(2, 5), embargo=st.integers(0, 12), rolling=st.booleans(),
       horizon=st.integers(1, 6), seed=st.integers(0, 2**16))
def test_walk_forward_folds_tile_the_end_and_never_train_on_later_time(n_folds, embargo, rolling,
                                                                       horizon, seed):
    """Each fold: train < val < test in time with the embargo between them, test blocks disjoint
    and in order, nothing after a fold's block used; rolling trains on a fixed-length segment."""
    from moola.datasets.splits import SampleSpans
    from moola.datasets.tasks import WalkForwardConfig, walk_forward_fold

    rng = np.random.default_rng(seed)
    n = 600
    start = np.sort(rng.integers(0, 3000, n))
    end = start + rng.integers(5, 40, n) + horizon
    spans = SampleSpans(start, end)
    tests = []
    for k in range(n_folds):
        wf = WalkForwardConfig(n_folds=n_folds, fold=k, mode="rolling" if rolling else "expanding",
                               train=0.2 if rolling else None)
        sp = walk_forward_fold(spans, wf, val=0.08, test=0.08, embargo=embargo)
        tr, va, te = (np.asarray(i) for i in (sp.train, sp.val, sp.test))
        assert tr.size and va.size and te.size
        assert end[tr].max() + embargo < start[va].min()  # purge + embargo between segments
        assert end[va].max() + embargo < start[te].min()
        tests.append(te)
        if rolling:
            assert np.unique(end[tr]).size <= round(0.2 * np.unique(end).size)
    for a, b in itertools.pairwise(tests):
        assert end[a].max() < end[b].min()  # blocks in order, disjoint
    assert end[tests[-1]].max() == end.max()  # the last block reaches the end of the data


def test_walk_forward_options_are_checked_naming_the_keys():
    with pytest.raises(ValidationError, match=r"choose 0\.\.2"):
        SplitConfig(walk_forward={"n_folds": 3, "fold": 3})
    with pytest.raises(ValidationError, match="rolling mode"):
        SplitConfig(walk_forward={"n_folds": 3, "mode": "rolling"})
    with pytest.raises(ValidationError, match="not by dates"):
        SplitConfig(walk_forward={"n_folds": 3}, val_start="2023-03-10", test_start="2023-03-12")


def test_a_walk_forward_fold_prepares_real_minutes(store):
    """On the bundled BTC minutes: fold 0's test ends before fold 1's starts; the last fold's test
    ends on the last window."""
    def fold(k):
        cfg = DataConfig(bundled="btcusd_1m", window=16, stride=5, horizon=3, feature_set="ohlc4",
                         split={"val": 0.1, "test": 0.1, "walk_forward": {"n_folds": 2, "fold": k}})
        return prepare_data(cfg, store)

    d0, d1 = fold(0), fold(1)
    assert d0.meta["test"]["end_ts"].max() < d1.meta["test"]["end_ts"].min()
    assert d0.meta["val"]["end_ts"].max() < d0.meta["test"]["start_ts"].min()
    assert len(d1.y["train"]) > len(d0.y["train"])  # expanding


def test_a_zero_return_is_down_by_default_and_up_or_dropped_when_asked(store):
    """One-minute BTC has many unchanged closes: the key says what they are, and only they move."""
    down = prepare_data(_cfg(horizon=1), store)
    up = prepare_data(_cfg(horizon=1, zero_return="up"), store)
    drop = prepare_data(_cfg(horizon=1, zero_return="drop"), store)
    rets = _returns(down, store, _cfg(horizon=1))
    assert sum(int((r == 0).sum()) for r in rets.values()) > 10  # the real data has flat minutes
    for k, r in rets.items():
        zero = r == 0
        assert (down.y[k][zero] == 0).all() and (up.y[k][zero] == 1).all()
        assert (down.y[k][~zero] == up.y[k][~zero]).all()
        assert len(drop.y[k]) < len(down.y[k])
    rd = _returns(drop, store, _cfg(horizon=1, zero_return="drop"))
    assert all((r != 0).all() for r in rd.values())
    with pytest.raises(ValueError, match="zero_return applies to binary direction labels without a dead"):
        _cfg(zero_return="drop", dead_zone_bps=1.0)
