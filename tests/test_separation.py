"""Time separation between pretraining and evaluation.

``build_pool`` keeps a pool window only when it lies more than ``embargo_bars`` bars of the
union calendar away from every labeled window (any symbol by default, the same symbol only
with ``exclusion="symbol"``), and keeps every window that does: both checked against a brute
force on real bundled bars with random label sets, pools and embargoes. ``check_encoder_separation``
refuses exactly the encoders whose recorded pool or normaliser coverage comes within the embargo
of an evaluated period (brute force on random intervals), names the overlaps and the fix, turns
into a TRANSDUCTIVE headline when allowed, and refuses encoder dirs of unknown coverage."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from functools import lru_cache
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from _real_data import load_daily
from moola.datasets import build_pool
from moola.datasets.windows import WindowSet
from moola.features import FeatureMatrix, build_features
from moola.training.manifest import Manifest, TimeRange, read_manifest, write_manifest
from moola.training.separation import LeakageError, check_encoder_separation, evaluated_intervals

W = 20  # window length of the property tests (short: more windows, more label interplay)
DAY = 86400.0


@lru_cache(maxsize=1)
def _matrix() -> FeatureMatrix:
    """Three real symbols over staggered row ranges: the union calendar is wider than any one
    symbol's, and labels on one symbol meet other symbols' windows only part of the time."""
    bars = load_daily(("AAPL", "MSFT", "XOM"), max_rows_per_symbol=420)
    rank = pl.int_range(pl.len()).over("symbol")
    bars = bars.filter(
        ((pl.col("symbol") == "AAPL") & (rank < 300))
        | ((pl.col("symbol") == "MSFT") & (rank >= 60) & (rank < 380))
        | ((pl.col("symbol") == "XOM") & (rank >= 150))
    )
    return build_features(bars, "ohlc4")


def _positions(fm: FeatureMatrix) -> tuple[np.ndarray, np.ndarray]:
    """Each row's position on the union calendar (independently: sorted distinct times), and
    the rows' symbols."""
    ts = fm.keys["ts"].dt.epoch("ns").to_numpy()
    cal = np.array(sorted(set(ts.tolist())))
    return np.searchsorted(cal, ts), fm.keys["symbol"].cast(pl.String).to_numpy()


@given(data=st.data())
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_pool_keeps_exactly_the_windows_clear_of_every_labeled_window(data) -> None:
    fm = _matrix()
    pos, row_sym = _positions(fm)
    all_ws = WindowSet.from_matrix(fm, W)
    n = len(all_ws)
    # a random pool to filter and a random label set (label = the W bars up to its end row)
    rng = np.random.default_rng(data.draw(st.integers(0, 2**32 - 1), label="pool seed"))
    pool_in = np.flatnonzero(rng.random(n) < data.draw(st.floats(0.02, 1.0), label="pool density"))
    label_idx = np.array(data.draw(st.lists(st.integers(0, n - 1), min_size=0, max_size=8)), dtype=np.int64)
    embargo = data.draw(st.integers(0, 12))
    exclusion = data.draw(st.sampled_from(["time", "symbol"]))
    ends = all_ws.end_rows[label_idx]
    labels = pl.DataFrame({"symbol": row_sym[ends].tolist(),
                           "end_ts": fm.keys["ts"].gather(pl.Series(ends, dtype=pl.Int64))})
    src = all_ws.subset(pool_in)
    kept = build_pool(src, labels, window=W, min_pool=0, exclusion=exclusion, embargo_bars=embargo)

    l_s, l_e = pos[ends - (W - 1)], pos[ends]  # windows never cross symbols: W rows back
    l_sym = row_sym[ends]

    def too_close(ws: WindowSet) -> np.ndarray:  # (N, L): window i within embargo of label j
        s, e = pos[ws.start_rows][:, None], pos[ws.end_rows][:, None]
        near = ~((l_s[None, :] - e > embargo) | (s - l_e[None, :] > embargo))
        if exclusion == "symbol":
            near &= row_sym[ws.start_rows][:, None] == l_sym[None, :]
        return near

    assert not too_close(kept).any()  # nothing kept lies within embargo of a labeled window
    kept_starts = set(kept.start_rows.tolist())
    assert kept_starts <= set(src.start_rows.tolist())
    dropped = np.array([i for i, r in enumerate(src.start_rows.tolist()) if r not in kept_starts],
                       dtype=np.int64)
    assert len(kept) + len(dropped) == len(src)
    if len(dropped):  # maximal: every dropped window really violates the rule
        assert too_close(src.subset(dropped)).any(1).all()


def test_time_exclusion_drops_other_symbols_windows_in_labeled_time() -> None:
    """One label on AAPL: time exclusion drops MSFT/XOM windows that meet it, symbol exclusion
    keeps them; the embargo widens the gap on the union calendar."""
    fm = _matrix()
    ws = WindowSet.from_matrix(fm, W)
    aapl = np.flatnonzero(ws.meta["symbol"].cast(pl.String).to_numpy() == "AAPL")
    end = int(ws.end_rows[aapl[200]])
    labels = pl.DataFrame({"symbol": ["AAPL"], "end_ts": fm.keys["ts"].gather(pl.Series([end]))})
    by_time = build_pool(fm, labels, window=W, min_pool=0, embargo_bars=0)
    by_symbol = build_pool(fm, labels, window=W, min_pool=0, exclusion="symbol", embargo_bars=0)
    lab_s, lab_e = fm.keys["ts"][end - (W - 1)], fm.keys["ts"][end]
    meets = (pl.col("start_ts") <= lab_e) & (pl.col("end_ts") >= lab_s)
    assert by_time.meta.filter(meets).height == 0
    others = by_symbol.meta.filter(meets)
    assert others.height > 0 and set(others["symbol"].cast(pl.String)) == {"MSFT", "XOM"}
    assert len(build_pool(fm, labels, window=W, min_pool=0, embargo_bars=10)) < len(by_time)
    with pytest.raises(ValueError, match="exclusion must be 'time' or 'symbol'"):
        build_pool(fm, labels, window=W, min_pool=0, exclusion="day")  # type: ignore[arg-type]


# ------------------------------------------------------------------------ the encoder check

T0 = datetime(2015, 1, 1, tzinfo=UTC)


def _tr(a: float, b: float) -> TimeRange:
    """Days after T0."""
    return TimeRange(start=T0 + timedelta(days=a), end=T0 + timedelta(days=b))


def _encoder(tmp: Path, pool: list[TimeRange], norm: list[TimeRange] | None = None,
             embargo_bars: int | None = 0) -> Path:
    tmp.mkdir(parents=True, exist_ok=True)
    write_manifest(tmp, Manifest(kind="encoder", feature_set="ohlc4", timeframe="1d",
                                 pool_intervals=pool, normalizer_fit=pool if norm is None else norm,
                                 embargo_bars=embargo_bars, pool_exclusion="symbol",
                                 labels_excluded="labels.csv"))
    return tmp


interval = st.tuples(st.integers(0, 400), st.integers(0, 60)).map(lambda t: (t[0], t[0] + t[1]))


@given(pool=st.lists(interval, min_size=1, max_size=5), ev=st.lists(interval, min_size=1, max_size=5),
       embargo=st.integers(0, 10), own=st.integers(0, 10))
@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
def test_refuses_exactly_when_some_pool_interval_comes_within_the_embargo(tmp_path, pool, ev, embargo, own):
    enc = _encoder(tmp_path / "enc", [_tr(a, b) for a, b in pool], embargo_bars=own)
    gap = max(embargo, own)  # the encoder's own embargo (bars of 1 day) is a floor
    clash = any(not (c - b > gap or a - d > gap) for a, b in pool for c, d in ev)
    evaluated = [_tr(a, b) for a, b in ev]
    if clash:
        with pytest.raises(LeakageError, match=str(enc)):
            check_encoder_separation(enc, evaluated, embargo * DAY)
        warning = check_encoder_separation(enc, evaluated, embargo * DAY, allow_transductive=True)
        assert warning is not None and warning.startswith("TRANSDUCTIVE: the encoder's pool overlaps")
    else:
        assert check_encoder_separation(enc, evaluated, embargo * DAY) is None


def test_the_refusal_names_the_overlaps_and_how_to_rebuild(tmp_path) -> None:
    enc = _encoder(tmp_path / "enc", [_tr(0, 100), _tr(200, 300)])
    evaluated = [_tr(d, d + 1) for d in range(50, 290, 10) if not 100 + 5 < d < 200 - 5]
    with pytest.raises(LeakageError) as err:
        check_encoder_separation(enc, evaluated, 5 * DAY, labels="data/labels/x.csv")
    msg = str(err.value)
    assert isinstance(err.value, ValueError)
    assert f"encoder {enc}" in msg
    assert "overlaps the validation/test periods" in msg
    n = len(evaluated)
    assert f"{n} overlapping pair(s)" in msg and f"(and {n - 3} more)" in msg
    assert f"{_tr(0, 100)} meets {_tr(50, 51)}" in msg
    assert f"moola pretrain --config {enc / 'config.yaml'}" in msg
    assert "data.exclusion=time data.labels=data/labels/x.csv" in msg
    assert "data.pool_end=2015-02-15" in msg  # first overlapping start (day 50) minus 5 days
    assert "exclusion=symbol against labels.csv" in msg
    assert "allow_transductive=true" in msg
    # the gap must exceed the embargo: 5 days after the pool's end is still too close
    assert check_encoder_separation(enc, [_tr(305.5, 320)], 5 * DAY) is None
    with pytest.raises(LeakageError):
        check_encoder_separation(enc, [_tr(305, 320)], 5 * DAY)


def test_a_normaliser_fitted_on_evaluated_time_is_refused_alone(tmp_path) -> None:
    enc = _encoder(tmp_path / "enc", [_tr(0, 10)], norm=[_tr(0, 10), _tr(40, 50)])
    with pytest.raises(LeakageError, match="normaliser was fitted on windows overlapping"):
        check_encoder_separation(enc, [_tr(45, 46)], 0)
    assert check_encoder_separation(enc, [_tr(60, 70)], 0) is None


def test_manifest_periods_and_window_frames_are_accepted(tmp_path) -> None:
    enc = _encoder(tmp_path / "enc", [_tr(0, 100)])
    periods = {"val": {"AAPL": _tr(200, 210)}, "test": {"MSFT": _tr(90, 120)}}
    with pytest.raises(LeakageError, match="1 overlapping pair"):
        check_encoder_separation(enc, periods, 0)
    assert check_encoder_separation(enc, {"val": {"AAPL": _tr(200, 210)}}, 0) is None
    meta = pl.DataFrame({"start_ts": [T0 + timedelta(days=d) for d in (150, 155, 300)],
                         "end_ts": [T0 + timedelta(days=d) for d in (160, 170, 310)]})
    assert evaluated_intervals(meta) == [_tr(150, 170), _tr(300, 310)]
    assert check_encoder_separation(enc, evaluated_intervals(meta), 0) is None
    assert check_encoder_separation(enc, [], 0) is None


def test_an_encoder_dir_of_unknown_coverage_is_refused_unless_allowed(tmp_path) -> None:
    """A pre-manifest encoder dir (meta.json only) records no pool intervals."""
    enc = tmp_path / "old_encoder"
    enc.mkdir()
    (enc / "encoder.json").write_text(json.dumps({"type": "lstm"}))
    (enc / "meta.json").write_text(json.dumps({"feature_set": "ohlc4", "pool_windows": 3000}))
    assert read_manifest(enc).pool_intervals == []
    with pytest.raises(LeakageError) as err:
        check_encoder_separation(enc, [_tr(0, 1)], 0, what="labeled")
    msg = str(err.value)
    assert "unknown" in msg and "meta.json (format_version 1)" in msg
    assert f"moola pretrain --config {enc / 'config.yaml'}" in msg
    warning = check_encoder_separation(enc, [_tr(0, 1)], 0, what="labeled", allow_transductive=True)
    assert warning is not None
    assert warning.splitlines()[0] == ("TRANSDUCTIVE: the encoder's pool may overlap the labeled "
                                       "periods (allow_transductive=true)")
