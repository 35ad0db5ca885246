"""Hand-made split examples with known answers, argument errors and the leaky counter-example."""

from __future__ import annotations

import datetime as dt

import numpy as np
import pytest

from moola.datasets.splits import (
    Fold,
    SampleSpans,
    Split,
    assert_no_overlap,
    chronological_split,
    overlap_groups,
    purged_kfold,
    purged_time_folds,
    stratified_group_kfold,
    walk_forward,
)


def idx(*ranges: range | int) -> list[int]:
    out: list[int] = []
    for r in ranges:
        out.extend([r] if isinstance(r, int) else list(r))
    return out


def single(n: int = 20, window: int = 5, horizon: int = 2) -> SampleSpans:
    """Sample i: input bars [i, i+window-1], label bars up to i+window-1+horizon."""
    return SampleSpans.from_windows(np.arange(window - 1, window - 1 + n), window, horizon)


# --------------------------------------------------------------------------------------------
# SampleSpans
# --------------------------------------------------------------------------------------------


def test_from_windows_intervals() -> None:
    sp = single(4, window=5, horizon=2)
    assert sp.start.tolist() == [0, 1, 2, 3]
    assert sp.end.tolist() == [6, 7, 8, 9]
    assert sp.start.dtype == np.int64 and len(sp) == 4
    assert not sp.start.flags.writeable


def test_spans_copy_input() -> None:
    start = np.array([0, 1, 2])
    sp = SampleSpans(start, start + 1)
    start[0] = 99
    assert sp.start[0] == 0


def test_spans_validation_names_offending_index() -> None:
    with pytest.raises(ValueError, match=r"sample 2 has start > end \(5 > 4\)"):
        SampleSpans(np.array([0, 1, 5]), np.array([1, 2, 4]))
    with pytest.raises(ValueError, match="differ in length"):
        SampleSpans(np.array([0, 1]), np.array([1, 2, 3]))
    with pytest.raises(ValueError, match=r"start\[1\] = 1.5 is not integer-like"):
        SampleSpans(np.array([0.0, 1.5]), np.array([1, 2]))
    with pytest.raises(ValueError, match="group has shape"):
        SampleSpans(np.array([0, 1]), np.array([1, 2]), group=np.array(["a"]))
    with pytest.raises(ValueError, match="label has shape"):
        SampleSpans(np.array([0, 1]), np.array([1, 2]), label=[0, 1, 1])
    with pytest.raises(ValueError, match="integer or datetime64"):
        SampleSpans(np.array(["a", "b"]), np.array(["c", "d"]))
    with pytest.raises(ValueError, match="1-D"):
        SampleSpans(np.zeros((2, 2), np.int64), np.zeros((2, 2), np.int64))
    with pytest.raises(ValueError, match="window"):
        SampleSpans.from_windows(np.arange(3), 0, 1)
    with pytest.raises(ValueError, match="horizon"):
        SampleSpans.from_windows(np.arange(3), 2, -1)
    # integral floats are fine
    assert SampleSpans(np.array([0.0, 1.0]), np.array([2.0, 3.0])).end.tolist() == [2, 3]


def test_spans_datetime_become_ns() -> None:
    d = np.array(["2024-01-01", "2024-01-02"], dtype="datetime64[D]")
    sp = SampleSpans(d, d + np.timedelta64(1, "D"))
    assert sp.is_datetime
    assert sp.start[1] - sp.start[0] == 86_400 * 10**9
    with pytest.raises(ValueError, match="NaT"):
        SampleSpans(np.array(["2024-01-01", "NaT"], dtype="datetime64[ns]"), d)
    with pytest.raises(ValueError, match="both be datetime64"):
        SampleSpans(d, np.array([1, 2]))


# --------------------------------------------------------------------------------------------
# chronological_split
# --------------------------------------------------------------------------------------------


def test_chronological_known_purge() -> None:
    # 20 samples, window 5, horizon 2: sample i spans [i, i+6].
    # 20 distinct ends -> test 6, val 7, train 7: train 0..6, val 7..13, test 14..19.
    # Purge train: end >= min val start (7) -> i+6 >= 7 -> 1..6 go; val: i+6 >= 14 -> 8..13 go.
    sp = single(20, 5, 2)
    s = chronological_split(sp, val=0.35, test=0.3)
    assert isinstance(s, Split)
    assert s.train.tolist() == [0]
    assert s.val.tolist() == [7]
    assert s.test.tolist() == idx(range(14, 20))
    assert (s.purged, s.embargoed) == (12, 0)
    assert s.train.dtype == np.int64


def test_chronological_known_embargo() -> None:
    # 30 samples [i, i+6]: train 0..11, val 12..20, test 21..29 before purge.
    sp = single(30, 5, 2)
    s = chronological_split(sp, val=0.3, test=0.3)
    assert s.train.tolist() == idx(range(6))
    assert s.val.tolist() == [12, 13, 14]
    assert s.test.tolist() == idx(range(21, 30))
    # embargo 1: val needs start > 11 + 1, test needs start > 20 + 1
    e = chronological_split(sp, val=0.3, test=0.3, embargo=1)
    assert e.train.tolist() == idx(range(6))
    assert e.val.tolist() == [13, 14]
    assert e.test.tolist() == idx(range(22, 30))
    assert (e.purged, e.embargoed) == (12, 2)
    assert_no_overlap(sp, e.train, e.val, embargo=1)
    assert_no_overlap(sp, e.val, e.test, embargo=1)
    with pytest.raises(ValueError, match="within embargo=2"):
        assert_no_overlap(sp, e.train, e.val, embargo=2)


def test_leaky_without_purge() -> None:
    """The purge is what keeps the split clean: switching it off must leak."""
    sp = single(30, 5, 2)
    leaky = chronological_split(sp, val=0.3, test=0.3, purge=False)
    assert leaky.train.tolist() == idx(range(12))
    assert leaky.val.tolist() == idx(range(12, 21))
    with pytest.raises(ValueError, match=r"train sample 6 \[6, 12\] overlaps other sample 12"):
        assert_no_overlap(sp, leaky.train, leaky.val)
    with pytest.raises(ValueError, match="overlaps"):
        assert_no_overlap(sp, leaky.val, leaky.test)
    clean = chronological_split(sp, val=0.3, test=0.3)
    for a, b in [(clean.train, clean.val), (clean.train, clean.test), (clean.val, clean.test)]:
        assert_no_overlap(sp, a, b)


def test_chronological_embargo_without_purge_still_gaps() -> None:
    sp = single(30, 5, 2)
    s = chronological_split(sp, val=0.3, test=0.3, purge=False, embargo=1)
    assert s.purged == 0
    assert_no_overlap(sp, s.train, s.val, embargo=1)
    assert_no_overlap(sp, s.val, s.test, embargo=1)


def test_chronological_cross_symbol_purge() -> None:
    # symbol b's training sample 3 [0, 5] overlaps only symbol a's val sample 1 [5, 9]:
    # panels share one time axis, so it must still be purged
    start = np.array([0, 5, 10, 0, 6, 10])
    end = np.array([4, 9, 14, 5, 9, 14])
    sp = SampleSpans(start, end, group=np.array(list("aaabbb")))
    s = chronological_split(sp, dates=(7, 12))
    assert s.val.tolist() == [1, 4]
    assert s.test.tolist() == [2, 5]
    assert s.train.tolist() == [0]
    assert (s.purged, s.embargoed) == (1, 0)
    assert_no_overlap(sp, [3], [4], same_group_only=True)  # not a same-symbol overlap
    with pytest.raises(ValueError, match="train sample 3 \\[0, 5\\] overlaps other sample 1"):
        assert_no_overlap(sp, [3], s.val)


def test_chronological_dates_and_datetime_equivalence() -> None:
    n = 40
    base = np.datetime64("2024-01-01", "ns")
    day = np.timedelta64(1, "D")
    sp_int = single(n, 3, 1)
    sp_dt = SampleSpans(base + sp_int.start * day, base + sp_int.end * day)
    a = chronological_split(sp_int, dates=(20, 30), embargo=2)
    b = chronological_split(
        sp_dt,
        dates=("2024-01-21", np.datetime64("2024-01-31")),
        embargo=np.timedelta64(2, "D"),
    )
    c = chronological_split(
        sp_dt, dates=(dt.datetime(2024, 1, 21), dt.date(2024, 1, 31)), embargo=dt.timedelta(2)
    )
    for x in (b, c):
        assert x.train.tolist() == a.train.tolist()
        assert x.val.tolist() == a.val.tolist()
        assert x.test.tolist() == a.test.tolist()
    # sample i spans [i, i+3]; val = ends in [20, 30) -> i in 17..26, purge train i+3 >= 17
    assert a.train.tolist() == idx(range(14))
    # embargo: val start > 13 + 3 + 2 = 18; val purge: i+3 >= 27 -> 24..26 go
    assert a.val.tolist() == idx(range(19, 24))
    # test i >= 27, start > 23 + 3 + 2 = 28
    assert a.test.tolist() == idx(range(29, 40))


def test_chronological_bad_arguments() -> None:
    sp = single(30)
    empty = SampleSpans(np.array([], np.int64), np.array([], np.int64))
    with pytest.raises(ValueError, match="empty"):
        chronological_split(empty)
    for bad in (0.0, 1.0, -0.1, 1.5, "x"):
        with pytest.raises(ValueError, match=r"^val must be"):
            chronological_split(sp, val=bad)
        with pytest.raises(ValueError, match=r"^test must be"):
            chronological_split(sp, test=bad)
    with pytest.raises(ValueError, match="val \\+ test must be < 1"):
        chronological_split(sp, val=0.5, test=0.5)
    with pytest.raises(ValueError, match="too few distinct end times"):
        chronological_split(single(2, 1, 0), val=0.3, test=0.3)
    with pytest.raises(ValueError, match="val_start < test_start"):
        chronological_split(sp, dates=(20, 10))
    with pytest.raises(ValueError, match="dates must be"):
        chronological_split(sp, dates=(20,))
    with pytest.raises(ValueError, match="dates\\[0\\] is a datetime"):
        chronological_split(sp, dates=("2024-01-01", 30))
    with pytest.raises(ValueError, match="embargo is a timedelta"):
        chronological_split(sp, embargo=np.timedelta64(1, "D"))
    with pytest.raises(ValueError, match="embargo must be >= 0"):
        chronological_split(sp, embargo=-1)
    with pytest.raises(ValueError, match="val segment is empty"):
        chronological_split(single(20), val=0.2, test=0.2)
    with pytest.raises(ValueError, match="spans must be a SampleSpans"):
        chronological_split(np.arange(3))  # type: ignore[arg-type]


# --------------------------------------------------------------------------------------------
# purged_kfold
# --------------------------------------------------------------------------------------------


def test_purged_kfold_known() -> None:
    sp = single(30, 5, 2)  # [i, i+6]
    folds = purged_kfold(sp, 3, embargo=1)
    assert all(isinstance(f, Fold) for f in folds)
    assert [f.test.tolist() for f in folds] == [
        idx(range(10)),
        idx(range(10, 20)),
        idx(range(20, 30)),
    ]
    # fold 0: test span [0, 15]; purge starts <= 15 (10..15), embargo start 16
    assert folds[0].train.tolist() == idx(range(17, 30))
    assert (folds[0].purged, folds[0].embargoed) == (6, 1)
    # fold 1: span [10, 25]; purge ends >= 10 (4..9) and starts <= 25 (20..25); embargo 26
    assert folds[1].train.tolist() == idx(range(4), range(27, 30))
    assert (folds[1].purged, folds[1].embargoed) == (12, 1)
    # fold 2: span [20, 35]; purge ends >= 20 (14..19); nothing after
    assert folds[2].train.tolist() == idx(range(14))
    assert (folds[2].purged, folds[2].embargoed) == (6, 0)
    for f in folds:
        assert_no_overlap(sp, f.train, f.test, embargo=1, embargo_side="after")


def test_purged_kfold_keeps_equal_times_together() -> None:
    # 3 symbols on one calendar: a fold never splits a bar across train and test
    pos = np.tile(np.arange(10), 3)
    sp = SampleSpans.from_windows(pos, 1, 0, group=np.repeat([0, 1, 2], 10))
    folds = purged_kfold(sp, 4)
    tested = np.concatenate([f.test for f in folds])
    assert sorted(tested.tolist()) == list(range(30))
    for f in folds:
        assert set(sp.end[f.test]).isdisjoint(sp.end[f.train])
        assert len(f.test) % 3 == 0


def test_purged_kfold_bad_arguments() -> None:
    sp = single(5, 1, 0)
    with pytest.raises(ValueError, match="n_splits must be >= 2"):
        purged_kfold(sp, 1)
    with pytest.raises(ValueError, match="n_splits=6 exceeds the number of distinct end times"):
        purged_kfold(sp, 6)
    with pytest.raises(ValueError, match="n_splits must be an int"):
        purged_kfold(sp, 2.5)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="training set is empty"):
        purged_kfold(single(4, 5, 5), 2)


# --------------------------------------------------------------------------------------------
# walk_forward
# --------------------------------------------------------------------------------------------


def test_walk_forward_expanding_known() -> None:
    sp = single(30, 5, 2)  # [i, i+6]
    folds = walk_forward(sp, n_splits=2, embargo=1)
    # 30 distinct ends, test_size 10: tests 10..19 and 20..29
    assert folds[0].test.tolist() == idx(range(10, 20))
    assert folds[1].test.tolist() == idx(range(20, 30))
    # train end + 1 < 10 -> i + 7 < 10 -> i <= 2
    assert folds[0].train.tolist() == [0, 1, 2]
    assert (folds[0].purged, folds[0].embargoed) == (6, 1)
    assert folds[1].train.tolist() == idx(range(13))


def test_walk_forward_rolling_known() -> None:
    sp = single(30, 5, 2)
    folds = walk_forward(sp, n_splits=2, mode="rolling", train_size=10, test_size=4)
    assert folds[0].test.tolist() == [22, 23, 24, 25]
    assert folds[0].train.tolist() == [12, 13, 14, 15]
    assert folds[1].test.tolist() == [26, 27, 28, 29]
    assert folds[1].train.tolist() == [16, 17, 18, 19]
    leaky = walk_forward(sp, n_splits=2, mode="rolling", train_size=10, test_size=4, purge=False)
    assert leaky[0].train.tolist() == idx(range(12, 22))
    with pytest.raises(ValueError, match="overlaps"):
        assert_no_overlap(sp, leaky[0].train, leaky[0].test)


def test_walk_forward_bad_arguments() -> None:
    sp = single(10, 1, 0)
    with pytest.raises(ValueError, match="n_splits must be >= 1"):
        walk_forward(sp, n_splits=0)
    with pytest.raises(ValueError, match="mode must be"):
        walk_forward(sp, n_splits=2, mode="sliding")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="train_size=9 exceeds"):
        walk_forward(sp, n_splits=2, test_size=2, train_size=9)
    with pytest.raises(ValueError, match="leaves no training times"):
        walk_forward(sp, n_splits=5, test_size=2)
    with pytest.raises(ValueError, match="needs at least 11 distinct end times"):
        walk_forward(sp, n_splits=10)
    with pytest.raises(ValueError, match="test_size must be >= 1"):
        walk_forward(sp, n_splits=2, test_size=0)
    with pytest.raises(ValueError, match="training set is empty"):
        walk_forward(single(10, 5, 5), n_splits=2)


# --------------------------------------------------------------------------------------------
# purged_time_folds
# --------------------------------------------------------------------------------------------


def test_purged_time_folds_walk_forward_known() -> None:
    sp = single(30, 5, 2)  # [i, i+6], one symbol
    folds = purged_time_folds(sp, 2, embargo=1, min_train=10)
    assert [f.test.tolist() for f in folds] == [idx(range(10, 20)), idx(range(20, 30))]
    # fold 0: test windows start at 10; purge i + 6 >= 10 (4..9), embargo i + 6 >= 9 (3)
    assert folds[0].train.tolist() == [0, 1, 2]
    assert (folds[0].purged, folds[0].embargoed) == (6, 1)
    # fold 1: trains on the first block and fold 0's test block, never on 20..29
    assert folds[1].train.tolist() == idx(range(13))
    assert (folds[1].purged, folds[1].embargoed) == (6, 1)
    # default first block: N / (n_splits + 1) = 10 windows, the same folds
    assert [f.train.tolist() for f in purged_time_folds(sp, 2, embargo=1)] == \
        [f.train.tolist() for f in folds]
    assert folds[0].to_dict() == {"train": [0, 1, 2], "test": idx(range(10, 20)),
                                  "purged": 6, "embargoed": 1}


def test_purged_time_folds_blocked_known() -> None:
    sp = single(30, 5, 2)
    folds = purged_time_folds(sp, 3, scheme="blocked", embargo=1)
    assert [f.test.tolist() for f in folds] == [idx(range(10)), idx(range(10, 20)),
                                                idx(range(20, 30))]
    # fold 1, test [10, 16] .. [19, 25]: before, i + 6 >= 10 purged (4..9), 3 embargoed;
    # after, i <= 25 purged (20..25), i = 26 embargoed (starts within 1 bar of the block)
    assert folds[1].train.tolist() == idx(range(3), range(27, 30))
    assert (folds[1].purged, folds[1].embargoed) == (12, 2)


def test_purged_time_folds_purge_other_symbols_only_by_time() -> None:
    # symbol a: windows [0, 5], [10, 15], test window [20, 25]; a window [12, 22] that shares
    # bars 20..22 in time with the test window is kept on another symbol, purged on the same
    def folds(sym: str, embargo: int):
        sp = SampleSpans(np.array([0, 10, 20, 12]), np.array([5, 15, 25, 22]),
                         group=["a", "a", "a", sym])
        (f,) = purged_time_folds(sp, 1, embargo=embargo, min_train=3)
        assert f.test.tolist() == [2]
        return f

    assert folds("b", 2).train.tolist() == [0, 1, 3]  # known (end 22) before the test label (25)
    assert folds("b", 3).train.tolist() == [0, 1]  # end 22 is within 3 bars of the test block
    assert folds("b", 3).embargoed == 1
    f = folds("a", 0)
    assert f.train.tolist() == [0, 1] and (f.purged, f.embargoed) == (1, 0)


def test_purged_time_folds_bad_arguments() -> None:
    sp = single(10, 1, 0)
    with pytest.raises(ValueError, match="scheme must be 'walk_forward' or 'blocked'"):
        purged_time_folds(sp, 2, scheme="kfold")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="n_splits must be >= 2"):
        purged_time_folds(sp, 1, scheme="blocked")
    with pytest.raises(ValueError, match="min_train applies to scheme='walk_forward' only"):
        purged_time_folds(sp, 2, scheme="blocked", min_train=3)
    with pytest.raises(ValueError, match="min_train=10 leaves no samples to test"):
        purged_time_folds(sp, 2, min_train=10)
    with pytest.raises(ValueError, match="min_train=9 leaves 1 distinct end times, too few for 2"):
        purged_time_folds(sp, 2, min_train=9)
    with pytest.raises(ValueError, match="fold 0: training set is empty after purge/embargo"):
        purged_time_folds(single(10, 5, 5), 2)


# --------------------------------------------------------------------------------------------
# stratified_group_kfold and groups
# --------------------------------------------------------------------------------------------


def test_overlap_groups_per_symbol_and_block() -> None:
    start = np.array([0, 2, 6, 0, 10, 11])
    end = np.array([3, 4, 8, 1, 12, 20])
    sp = SampleSpans(start, end, group=np.array(list("aaabbb")))
    g = overlap_groups(sp)
    # a: [0,3]-[2,4] chain, [6,8] alone; b: [0,1] alone, [10,12]-[11,20] chain
    assert g[0] == g[1] and len({g[0], g[2], g[3], g[4]}) == 4 and g[4] == g[5]
    # a different symbol overlapping in time is not merged without a block
    assert g[3] != g[0]
    # block 5: end bins a:0,0,1 b:0,2,4 -> samples 0,1,3 merge; 2 alone; 4,5 merge
    gb = overlap_groups(sp, block=5)
    assert gb[0] == gb[1] == gb[3] and gb[2] not in (gb[0], gb[4]) and gb[4] == gb[5]
    with pytest.raises(ValueError, match="block must be > 0"):
        overlap_groups(sp, block=0)


def test_stratified_group_kfold_never_splits_overlaps() -> None:
    # 3 symbols, windows of 4 bars + 2 horizon every 3 or 8 bars: runs of overlapping neighbours
    rng = np.random.default_rng(0)
    per_sym = [np.cumsum(rng.choice([3, 8], 40)) for _ in range(3)]
    pos = np.concatenate(per_sym)
    sym = np.repeat([0, 1, 2], 40)
    y = rng.integers(0, 2, len(pos))
    sp = SampleSpans.from_windows(pos, 4, 2, group=sym, label=y)
    groups = overlap_groups(sp)
    assert 15 < groups.max() + 1 < len(pos)  # some chains, not all singletons
    folds = stratified_group_kfold(sp, n_splits=5)
    tested = np.concatenate([f.test for f in folds])
    assert sorted(tested.tolist()) == list(range(len(pos)))
    for f in folds:
        assert_no_overlap(sp, f.train, f.test, same_group_only=True)
        assert np.intersect1d(f.train, f.test).size == 0
        assert f.train.size + f.test.size == len(pos)
    # deterministic given seed
    again = stratified_group_kfold(sp, y, 5)
    assert all(a.test.tolist() == b.test.tolist() for a, b in zip(folds, again, strict=True))


def test_stratified_group_kfold_balances_singletons() -> None:
    y = np.array([0] * 30 + [1] * 10)
    sp = SampleSpans.from_windows(np.arange(40) * 3, 1, 1)  # no overlaps: singleton groups
    folds = stratified_group_kfold(sp, y, 5, seed=3)
    for f in folds:
        assert np.bincount(y[f.test], minlength=2).tolist() == [6, 2]


def test_stratified_group_kfold_bad_arguments() -> None:
    sp = SampleSpans.from_windows(np.arange(10), 3, 0)  # one chain -> one group
    with pytest.raises(ValueError, match="labels is required"):
        stratified_group_kfold(sp)
    with pytest.raises(ValueError, match="labels has 3 entries"):
        stratified_group_kfold(sp, [0, 1, 0])
    with pytest.raises(ValueError, match="n_splits=2 exceeds the number of non-overlapping groups"):
        stratified_group_kfold(sp, np.zeros(10), 2)
    with pytest.raises(ValueError, match="n_splits must be >= 2"):
        stratified_group_kfold(sp, np.zeros(10), 1)


# --------------------------------------------------------------------------------------------
# checker
# --------------------------------------------------------------------------------------------


def test_assert_no_overlap_modes() -> None:
    sp = SampleSpans(np.array([0, 5, 0, 20]), np.array([4, 9, 4, 25]), group=list("abba"))
    assert_no_overlap(sp, [0], [1])  # [0,4] vs [5,9]: touching bars differ -> clean
    with pytest.raises(ValueError, match="train sample 0 \\[0, 4\\] is within embargo=1"):
        assert_no_overlap(sp, [0], [1], embargo=1)
    # one-sided: train [0,4] lies before other [5,9]: no gap needed
    assert_no_overlap(sp, [0], [1], embargo=1, embargo_side="after")
    with pytest.raises(ValueError, match="within embargo"):
        assert_no_overlap(sp, [1], [0], embargo=1, embargo_side="after")
    # 0 and 2 overlap in time but are different symbols
    with pytest.raises(ValueError, match="train sample 0 \\[0, 4\\] overlaps other sample 2"):
        assert_no_overlap(sp, [0, 3], [2])
    assert_no_overlap(sp, [0, 3], [2], same_group_only=True)
    with pytest.raises(ValueError, match="outside"):
        assert_no_overlap(sp, [7], [0])
    assert_no_overlap(sp, [], [0, 1])


def test_stratified_group_kfold_with_fewer_samples_per_class_than_folds_names_the_counts() -> None:
    """Found by the hypothesis property test: two samples of two classes and two folds. The
    error is moola's and lists the per-class counts, not sklearn's."""
    sp = SampleSpans(np.array([0, 10]), np.array([1, 11]))
    with pytest.raises(ValueError, match=r"n_splits=2 exceeds the number of samples of every class"):
        stratified_group_kfold(sp, np.array([0, 1]), 2)
