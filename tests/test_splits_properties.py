"""Property tests: no split ever lets a training interval touch an evaluation interval."""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import numpy as np
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from moola.datasets.splits import (
    SampleSpans,
    assert_no_overlap,
    chronological_split,
    overlap_groups,
    purged_kfold,
    purged_time_folds,
    stratified_group_kfold,
    walk_forward,
)

SETTINGS = settings(
    max_examples=80, deadline=None, suppress_health_check=[HealthCheck.filter_too_much]
)
# errors that only mean "too little data for these settings", never a broken split
TOO_SMALL = ("empty", "too few", "exceeds", "needs at least", "leaves no training",
             "leaves no samples")


@dataclass
class Panel:
    spans: SampleSpans
    window: int
    horizon: int


@st.composite
def panels(draw: st.DrawFn, max_len: int = 80) -> Panel:
    """Windows over 1-3 symbols on one bar calendar, with random offsets, lengths and gaps."""
    window = draw(st.integers(1, 8))
    horizon = draw(st.integers(0, 5))
    n_sym = draw(st.integers(1, 3))
    ends, syms = [], []
    for k in range(n_sym):
        offset = draw(st.integers(0, 15))
        length = draw(st.integers(window + horizon, max_len))
        step = draw(st.integers(1, 3))
        pos = np.arange(offset + window - 1, offset + length - horizon, step)
        keep = np.asarray(draw(st.lists(st.booleans(), min_size=pos.size, max_size=pos.size)))
        if keep.size and keep.any():
            pos = pos[keep] if draw(st.booleans()) else pos
        ends.append(pos)
        syms.append(np.full(pos.size, k))
    end_pos = np.concatenate(ends)
    assume(end_pos.size > 0)
    sp = SampleSpans.from_windows(end_pos, window, horizon, group=np.concatenate(syms))
    return Panel(sp, window, horizon)


def _skip_if_too_small(err: ValueError) -> None:
    if not any(word in str(err) for word in TOO_SMALL):
        raise err
    assume(False)


def _brute_overlap(sp: SampleSpans, a: np.ndarray, b: np.ndarray, gap: int) -> bool:
    """O(n*m) reference: does any pair come within `gap` of each other (or overlap)?"""
    if a.size == 0 or b.size == 0:
        return False
    sa, ea = sp.start[a][:, None], sp.end[a][:, None]
    sb, eb = sp.start[b][None, :], sp.end[b][None, :]
    return bool(np.any((sb <= ea + gap) & (sa <= eb + gap)))


# --------------------------------------------------------------------------------------------
# chronological_split
# --------------------------------------------------------------------------------------------


@SETTINGS
@given(
    panel=panels(),
    val=st.floats(0.05, 0.45),
    test=st.floats(0.05, 0.45),
    embargo=st.integers(0, 6),
)
def test_chronological_clean_and_ordered(
    panel: Panel, val: float, test: float, embargo: int
) -> None:
    sp = panel.spans
    try:
        s = chronological_split(sp, val=val, test=test, embargo=embargo)
    except ValueError as err:
        _skip_if_too_small(err)
        return
    parts = (s.train, s.val, s.test)
    for p in parts:
        assert p.dtype == np.int64 and np.all(np.diff(p) > 0)
    assert len(np.unique(np.concatenate(parts))) == sum(p.size for p in parts)
    assert sum(p.size for p in parts) + s.purged + s.embargoed == len(sp)
    for i, a in enumerate(parts):
        for b in parts[i + 1 :]:
            # (a) no overlap (b) embargo gap (c) chronological order, all at once:
            assert sp.end[a].max() + embargo < sp.start[b].min()
            assert_no_overlap(sp, a, b, embargo=embargo)
            assert not _brute_overlap(sp, a, b, embargo)


@SETTINGS
@given(
    panel=panels(),
    cut=st.tuples(st.floats(0.2, 0.7), st.floats(0.1, 0.5)),
    embargo=st.integers(0, 4),
)
def test_chronological_purge_matches_bruteforce(
    panel: Panel, cut: tuple[float, float], embargo: int
) -> None:
    """With explicit dates, the kept sets equal an O(n^2) reading of the definition."""
    sp = panel.spans
    lo, span = int(sp.end.min()), int(sp.end.max() - sp.end.min())
    vs = lo + round(cut[0] * span)
    ts = max(vs + 1, lo + round(min(cut[0] + cut[1], 0.95) * span))
    try:
        s = chronological_split(sp, dates=(vs, ts), embargo=embargo)
    except ValueError as err:
        _skip_if_too_small(err)
        return
    seg = np.where(sp.end < vs, 0, np.where(sp.end < ts, 1, 2))
    n = len(sp)
    overl = (sp.start[:, None] <= sp.end[None, :]) & (sp.start[None, :] <= sp.end[:, None])
    # purge: drop an earlier-segment sample that overlaps any later-segment sample
    keep = ~np.array([np.any(overl[i] & (seg > seg[i])) for i in range(n)])
    # embargo: drop a later sample starting within `embargo` of any kept earlier sample's end
    for k in (1, 2):
        if embargo > 0:
            earlier_end = sp.end[keep & (seg < k)]
            for i in np.flatnonzero(keep & (seg == k)):
                if earlier_end.size and sp.start[i] <= earlier_end.max() + embargo:
                    keep[i] = False
    assert s.train.tolist() == np.flatnonzero(keep & (seg == 0)).tolist()
    assert s.val.tolist() == np.flatnonzero(keep & (seg == 1)).tolist()
    assert s.test.tolist() == np.flatnonzero(keep & (seg == 2)).tolist()


@SETTINGS
@given(panel=panels(), val=st.floats(0.1, 0.4), test=st.floats(0.1, 0.4))
def test_chronological_without_purge_is_a_plain_cut(panel: Panel, val: float, test: float) -> None:
    sp = panel.spans
    try:
        s = chronological_split(sp, val=val, test=test, purge=False)
    except ValueError as err:
        _skip_if_too_small(err)
        return
    assert s.purged == s.embargoed == 0
    assert s.train.size + s.val.size + s.test.size == len(sp)
    assert sp.end[s.train].max() < sp.end[s.val].min() <= sp.end[s.val].max() < sp.end[s.test].min()
    # the purge is not decorative: if intervals are longer than one bar, the cut leaks
    if panel.window + panel.horizon > 1 and np.unique(np.diff(np.unique(sp.end))).tolist() == [1]:
        with pytest.raises(ValueError, match="overlaps"):
            assert_no_overlap(sp, s.train, s.val)


# --------------------------------------------------------------------------------------------
# purged_kfold
# --------------------------------------------------------------------------------------------


@SETTINGS
@given(panel=panels(), n_splits=st.integers(2, 6), embargo=st.integers(0, 6))
def test_purged_kfold_clean(panel: Panel, n_splits: int, embargo: int) -> None:
    sp = panel.spans
    try:
        folds = purged_kfold(sp, n_splits, embargo=embargo)
    except ValueError as err:
        _skip_if_too_small(err)
        return
    assert len(folds) == n_splits
    tested = np.concatenate([f.test for f in folds])
    assert sorted(tested.tolist()) == list(range(len(sp)))  # each sample tested exactly once
    for k, f in enumerate(folds):
        assert f.train.size > 0 and f.test.size > 0
        assert np.intersect1d(f.train, f.test).size == 0
        assert f.train.size + f.test.size + f.purged + f.embargoed == len(sp)
        assert not _brute_overlap(sp, f.train, f.test, 0)
        assert_no_overlap(sp, f.train, f.test, embargo=embargo, embargo_side="after")
        after = f.train[sp.start[f.train] > sp.end[f.test].max()]
        assert np.all(sp.start[after] > sp.end[f.test].max() + embargo)
        if k:  # test blocks are contiguous and ordered in time
            assert sp.end[folds[k - 1].test].max() < sp.end[f.test].min()


# --------------------------------------------------------------------------------------------
# walk_forward
# --------------------------------------------------------------------------------------------


@SETTINGS
@given(
    panel=panels(),
    n_splits=st.integers(1, 4),
    mode=st.sampled_from(["expanding", "rolling"]),
    sizes=st.tuples(st.none() | st.integers(1, 40), st.none() | st.integers(1, 15)),
    embargo=st.integers(0, 5),
)
def test_walk_forward_trains_on_the_past(
    panel: Panel,
    n_splits: int,
    mode: str,
    sizes: tuple[int | None, int | None],
    embargo: int,
) -> None:
    sp = panel.spans
    train_size, test_size = sizes
    try:
        folds = walk_forward(
            sp,
            n_splits=n_splits,
            train_size=train_size,
            test_size=test_size,
            mode=mode,  # type: ignore[arg-type]
            embargo=embargo,
        )
    except ValueError as err:
        _skip_if_too_small(err)
        return
    assert len(folds) == n_splits
    n_times = []
    for k, f in enumerate(folds):
        assert f.train.size > 0 and f.test.size > 0
        # (e) every time a training sample touches precedes every time of every test sample
        assert sp.end[f.train].max() + embargo < sp.start[f.test].min()
        assert not _brute_overlap(sp, f.train, f.test, embargo)
        n_times.append(np.unique(sp.end[f.test]).size)
        if k:
            assert sp.end[folds[k - 1].test].max() < sp.end[f.test].min()
            if mode == "expanding":
                assert sp.end[f.train].min() <= sp.end[folds[k - 1].train].min()
    assert len(set(n_times)) == 1  # equal-size test blocks
    last = folds[-1].test
    assert sp.end[last].max() == sp.end.max()  # tests reach the most recent data


# --------------------------------------------------------------------------------------------
# purged_time_folds (the OOF verdict's folds)
# --------------------------------------------------------------------------------------------


def _too_close(sp: SampleSpans, i: int, test: np.ndarray, embargo: int) -> tuple[bool, bool]:
    """O(m) reading of the definition for candidate i: (overlaps a same-symbol test window,
    comes within `embargo` of one or of the test block's end-time span)."""
    lo, hi = sp.end[test].min(), sp.end[test].max()
    same = test[sp.group[test] == sp.group[i]]
    overlap = bool(np.any((sp.start[same] <= sp.end[i]) & (sp.start[i] <= sp.end[same])))
    near = bool(np.any((sp.start[same] - embargo <= sp.end[i]) & (sp.start[i] <= sp.end[same] + embargo)))
    near |= bool(sp.end[i] >= lo - embargo and sp.start[i] <= hi + embargo)
    return overlap, near


@SETTINGS
@given(
    panel=panels(),
    n_splits=st.integers(1, 5),
    scheme=st.sampled_from(["walk_forward", "blocked"]),
    embargo=st.integers(0, 6),
    min_train=st.none() | st.integers(1, 40),
)
def test_purged_time_folds_properties(
    panel: Panel, n_splits: int, scheme: str, embargo: int, min_train: int | None
) -> None:
    sp = panel.spans
    n = len(sp)
    if scheme == "blocked":
        assume(n_splits >= 2)
        min_train = None
    try:
        folds = purged_time_folds(sp, n_splits, scheme=scheme,  # type: ignore[arg-type]
                                  embargo=embargo, min_train=min_train)
    except ValueError as err:
        _skip_if_too_small(err)
        return
    assert len(folds) == n_splits
    tested = np.concatenate([f.test for f in folds])
    assert np.unique(tested).size == tested.size  # no window is tested twice
    if scheme == "blocked":
        assert sorted(tested.tolist()) == list(range(n))  # every window tested exactly once
    else:  # exactly the windows after the first (train-only) block are tested, once each
        first = sp.end < sp.end[folds[0].test].min()
        assert sorted(tested.tolist()) == np.flatnonzero(~first).tolist()
        if min_train is not None:
            assert first.sum() >= min_train
            # the first block is the shortest prefix of end times holding min_train windows
            assert (sp.end < sp.end[first].max()).sum() < min_train
    for k, f in enumerate(folds):
        assert f.train.size > 0 and f.test.size > 0
        assert np.intersect1d(f.train, f.test).size == 0
        lo, hi = sp.end[f.test].min(), sp.end[f.test].max()
        # no training window within `embargo` of its fold's test block
        assert not np.any((sp.end[f.train] >= lo - embargo) & (sp.start[f.train] <= hi + embargo))
        assert_no_overlap(sp, f.train, f.test, embargo=embargo, same_group_only=True)
        if scheme == "walk_forward":  # never trains on later data
            assert sp.end[f.train].max() + embargo < lo
            assert np.all(sp.end[f.train] < sp.end[f.test].min())
        if k:  # test blocks are contiguous and ordered in time
            assert sp.end[folds[k - 1].test].max() < lo
        # purge and embargo remove exactly what the definition says, nothing more
        cand = (np.setdiff1d(np.arange(n), f.test) if scheme == "blocked"
                else np.flatnonzero(sp.end < lo))
        verdicts = {int(i): _too_close(sp, int(i), f.test, embargo) for i in cand}
        kept = sorted(i for i, (o, near) in verdicts.items() if not (o or near))
        assert f.train.tolist() == kept
        assert f.purged == sum(o for o, _ in verdicts.values())
        assert f.embargoed == sum(near and not o for o, near in verdicts.values())


@SETTINGS
@given(panel=panels(), n_splits=st.integers(1, 4), embargo=st.integers(0, 4))
def test_purged_time_folds_walk_forward_trains_on_growing_pasts(
    panel: Panel, n_splits: int, embargo: int
) -> None:
    """Expanding: each fold's candidates are the previous fold's plus its test block."""
    sp = panel.spans
    try:
        folds = purged_time_folds(sp, n_splits, embargo=embargo)
    except ValueError as err:
        _skip_if_too_small(err)
        return
    for a, b in itertools.pairwise(folds):
        before_a = set(np.flatnonzero(sp.end < sp.end[a.test].min()).tolist())
        before_b = set(np.flatnonzero(sp.end < sp.end[b.test].min()).tolist())
        assert before_b == before_a | set(a.test.tolist())
        assert b.train.size + b.purged + b.embargoed == len(before_b)


# --------------------------------------------------------------------------------------------
# stratified_group_kfold
# --------------------------------------------------------------------------------------------


@SETTINGS
@given(
    panel=panels(max_len=70),
    n_splits=st.integers(2, 5),
    n_classes=st.integers(2, 3),
    seed=st.integers(0, 3),
    block=st.none() | st.integers(5, 40),
    data=st.data(),
)
def test_stratified_group_kfold_properties(
    panel: Panel, n_splits: int, n_classes: int, seed: int, block: int | None, data: st.DataObject
) -> None:
    sp = panel.spans
    n = len(sp)
    y = np.asarray(data.draw(st.lists(st.integers(0, n_classes - 1), min_size=n, max_size=n)))
    try:
        folds = stratified_group_kfold(sp, y, n_splits, seed=seed, block=block)
    except ValueError as err:
        _skip_if_too_small(err)
        return
    tested = np.concatenate([f.test for f in folds])
    assert sorted(tested.tolist()) == list(range(n))  # every sample tested exactly once
    same_sym = sp.group[:, None] == sp.group[None, :]
    overl = (sp.start[:, None] <= sp.end[None, :]) & (sp.start[None, :] <= sp.end[:, None])
    for f in folds:
        assert f.test.size > 0
        assert f.train.size + f.test.size == n
        # no same-symbol overlapping pair straddles train and test
        assert not np.any((same_sym & overl)[np.ix_(f.train, f.test)])
        assert_no_overlap(sp, f.train, f.test, same_group_only=True)
    # class balance, as far as the groups allow
    groups = overlap_groups(sp, block=block)
    n_groups = groups.max() + 1
    per_fold = np.array([np.bincount(y[f.test], minlength=n_classes) for f in folds])
    spread = per_fold.max(axis=0) - per_fold.min(axis=0)
    largest = np.bincount(groups).max()
    if largest == 1:
        assert spread.max() <= 1
    elif n_groups >= 4 * n_splits:
        assert spread.max() <= 2 * largest
    # same seed, same folds
    again = stratified_group_kfold(sp, y, n_splits, seed=seed, block=block)
    assert [f.test.tolist() for f in again] == [f.test.tolist() for f in folds]


@SETTINGS
@given(panel=panels(), block=st.none() | st.integers(1, 30))
def test_overlap_groups_are_minimal_components(panel: Panel, block: int | None) -> None:
    """Groups join exactly the same-symbol overlapping (and same-bin) samples, transitively."""
    sp = panel.spans
    g = overlap_groups(sp, block=block)
    n = len(sp)
    adj = (sp.group[:, None] == sp.group[None, :]) & (
        (sp.start[:, None] <= sp.end[None, :]) & (sp.start[None, :] <= sp.end[:, None])
    )
    if block is not None:
        adj |= (sp.end[:, None] // block) == (sp.end[None, :] // block)
    # reference connected components by label propagation
    ref = np.arange(n)
    while True:
        new = np.array([ref[adj[i]].min() for i in range(n)])
        if np.array_equal(new, ref):
            break
        ref = new
    same_ref = ref[:, None] == ref[None, :]
    same_g = g[:, None] == g[None, :]
    assert np.array_equal(same_ref, same_g)
