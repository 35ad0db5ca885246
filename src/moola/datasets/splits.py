"""Train/validation/test splitting: the one place where time is cut.

Every sample is an interval in time: ``start`` is the first bar its input uses and ``end`` the
last bar its *label* uses (window end + horizon). Intervals are closed, so two samples overlap
iff ``a.start <= b.end and b.start <= a.end``. Times are int64 (ns since epoch, or positions on a
common bar calendar); the splitters never look at units, they only compare numbers.

Semantics shared by all splitters:

* **Cut time.** A sample belongs to the segment / fold that contains its ``end`` (the time its
  label is known). Fractions and sizes count *distinct* end times, so all symbols of a panel
  that share a bar always land on the same side (multi-symbol panels are one time axis).
* **Purge.** A training sample is dropped when its interval overlaps the interval span
  ``[min start, max end]`` of a later (or, for k-fold, the test) segment, regardless of symbol.
* **Embargo.** An extra gap in time units: after the cut, ``later.start > earlier.end + embargo``
  holds for every retained pair (so ``embargo`` whole bars lie strictly between them when times
  are bar positions). ``chronological_split`` enforces it by trimming the *start* of the later
  segment; ``walk_forward`` by trimming the end of training; ``purged_kfold`` (de Prado) only
  after each test block, by dropping training samples that start within ``embargo`` of its end.

``purged_time_folds`` (the OOF verdict's splitter for small labelled panels) purges per symbol
instead: a window long relative to the panel's history would, purged against every symbol's test
span, empty the training set. See its docstring for the exact rule.
"""

from __future__ import annotations

import datetime as _dt
import itertools
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

__all__ = [
    "Fold",
    "SampleSpans",
    "Split",
    "assert_no_overlap",
    "chronological_split",
    "overlap_groups",
    "purged_kfold",
    "purged_time_folds",
    "stratified_group_kfold",
    "stratified_split",
    "walk_forward",
]

IntArray = np.ndarray  # 1-D int64 positions into the sample arrays


# --------------------------------------------------------------------------------------------
# coercion helpers
# --------------------------------------------------------------------------------------------


def _as_times(values: Any, name: str) -> tuple[np.ndarray, bool]:
    """Coerce a 1-D array of times to int64; returns (array, was_datetime)."""
    arr = np.asarray(values)
    if arr.ndim != 1:
        raise ValueError(f"{name} must be 1-D, got shape {arr.shape}")
    if np.issubdtype(arr.dtype, np.datetime64):
        ns = arr.astype("datetime64[ns]")
        bad = np.flatnonzero(np.isnat(ns))
        if bad.size:
            raise ValueError(f"{name}[{int(bad[0])}] is NaT")
        return ns.view(np.int64).copy(), True
    if arr.dtype == np.bool_ or not (
        np.issubdtype(arr.dtype, np.integer) or np.issubdtype(arr.dtype, np.floating)
    ):
        if arr.size == 0:
            return np.empty(0, np.int64), False
        raise ValueError(f"{name} must have an integer or datetime64 dtype, got {arr.dtype}")
    if np.issubdtype(arr.dtype, np.floating):
        bad = np.flatnonzero(~np.isfinite(arr) | (arr != np.round(arr)))
        if bad.size:
            raise ValueError(
                f"{name}[{int(bad[0])}] = {arr[bad[0]].item()!r} is not integer-like "
                "(times must be integers or datetime64)"
            )
    return arr.astype(np.int64, copy=True), False


def _scalar_time(value: Any, name: str, is_datetime: bool) -> int:
    """A boundary time as int64 in the spans' units (datetimes only for datetime spans)."""
    if isinstance(value, (str, _dt.datetime, _dt.date, np.datetime64)) or hasattr(
        value, "to_datetime64"
    ):
        if not is_datetime:
            raise ValueError(f"{name} is a datetime but the spans hold plain integer times")
        if hasattr(value, "to_datetime64"):
            value = value.to_datetime64()
        ts = np.datetime64(value, "ns")
        if np.isnat(ts):
            raise ValueError(f"{name} is NaT")
        return int(ts.astype(np.int64))
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)):
        raise ValueError(f"{name} must be an integer time or a datetime, got {value!r}")
    return int(value)


def _duration(value: Any, name: str, is_datetime: bool) -> int:
    """A non-negative duration in the spans' units (timedeltas become ns)."""
    if isinstance(value, (_dt.timedelta, np.timedelta64)) or hasattr(value, "to_timedelta64"):
        if not is_datetime:
            raise ValueError(f"{name} is a timedelta but the spans hold plain integer times")
        if hasattr(value, "to_timedelta64"):
            value = value.to_timedelta64()
        out = int(np.timedelta64(value, "ns").astype(np.int64))
    elif isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)):
        raise ValueError(f"{name} must be an integer or a timedelta, got {value!r}")
    else:
        out = int(value)
    if out < 0:
        raise ValueError(f"{name} must be >= 0, got {value!r}")
    return out


def _positions(mask: np.ndarray) -> IntArray:
    return np.flatnonzero(mask).astype(np.int64)


def _check_n_splits(n_splits: Any, minimum: int) -> int:
    if isinstance(n_splits, (bool, np.bool_)) or not isinstance(n_splits, (int, np.integer)):
        raise ValueError(f"n_splits must be an int, got {n_splits!r}")
    if n_splits < minimum:
        raise ValueError(f"n_splits must be >= {minimum}, got {n_splits}")
    return int(n_splits)


# --------------------------------------------------------------------------------------------
# containers
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class SampleSpans:
    """Time intervals [start, end] of samples (input start .. label end), plus symbol and label.

    Times are stored as read-only int64 copies; datetime64 input becomes ns since epoch.
    """

    start: np.ndarray
    end: np.ndarray
    group: np.ndarray | None = None
    label: np.ndarray | None = None
    is_datetime: bool = field(default=False, init=False)

    def __post_init__(self) -> None:
        start, dt_start = _as_times(self.start, "start")
        end, dt_end = _as_times(self.end, "end")
        if dt_start != dt_end and start.size:
            raise ValueError("start and end must both be datetime64 or both be integers")
        if start.shape != end.shape:
            raise ValueError(f"start and end differ in length: {start.size} != {end.size}")
        bad = np.flatnonzero(start > end)
        if bad.size:
            i = int(bad[0])
            raise ValueError(f"sample {i} has start > end ({start[i]} > {end[i]})")
        start.setflags(write=False)
        end.setflags(write=False)
        object.__setattr__(self, "start", start)
        object.__setattr__(self, "end", end)
        object.__setattr__(self, "is_datetime", bool(dt_start))
        for name in ("group", "label"):
            value = getattr(self, name)
            if value is None:
                continue
            arr = np.array(value, copy=True)
            if arr.shape != start.shape:
                raise ValueError(f"{name} has shape {arr.shape}, expected ({start.size},)")
            arr.setflags(write=False)
            object.__setattr__(self, name, arr)

    def __len__(self) -> int:
        return int(self.start.size)

    @classmethod
    def from_windows(
        cls,
        end_pos: Any,
        window: int,
        horizon: int,
        group: Any = None,
        label: Any = None,
    ) -> SampleSpans:
        """Spans of windows over bar positions: input bars [end-window+1, end], label to +horizon.

        ``end_pos`` must be positions on one calendar shared by all symbols, so that equal
        positions mean equal times across symbols.
        """
        if isinstance(window, bool) or not isinstance(window, (int, np.integer)) or window < 1:
            raise ValueError(f"window must be an int >= 1, got {window!r}")
        if isinstance(horizon, bool) or not isinstance(horizon, (int, np.integer)) or horizon < 0:
            raise ValueError(f"horizon must be an int >= 0, got {horizon!r}")
        pos, is_dt = _as_times(end_pos, "end_pos")
        if is_dt:
            raise ValueError("end_pos must be integer bar positions, not datetimes")
        return cls(pos - (int(window) - 1), pos + int(horizon), group=group, label=label)

    def _group_codes(self) -> np.ndarray:
        if self.group is None:
            return np.zeros(len(self), np.int64)
        return np.unique(self.group, return_inverse=True)[1].astype(np.int64).reshape(-1)


@dataclass(frozen=True, eq=False)
class Split:
    """Chronological train/val/test positions, with how many samples purge and embargo removed."""

    train: IntArray
    val: IntArray
    test: IntArray
    purged: int = 0
    embargoed: int = 0


@dataclass(frozen=True, eq=False)
class Fold:
    """One train/test fold, with how many training candidates purge and embargo removed."""

    train: IntArray
    test: IntArray
    purged: int = 0
    embargoed: int = 0

    def to_dict(self) -> dict[str, Any]:
        """Plain lists and ints, for a JSON record of the folds a run used."""
        return {"train": self.train.tolist(), "test": self.test.tolist(),
                "purged": int(self.purged), "embargoed": int(self.embargoed)}


def _spans(spans: SampleSpans) -> SampleSpans:
    if not isinstance(spans, SampleSpans):
        raise ValueError(f"spans must be a SampleSpans, got {type(spans).__name__}")
    if len(spans) == 0:
        raise ValueError("spans is empty: nothing to split")
    return spans


# --------------------------------------------------------------------------------------------
# checker
# --------------------------------------------------------------------------------------------


def _first_hit(
    a_start: np.ndarray, a_end: np.ndarray, b_start: np.ndarray, b_end: np.ndarray
) -> tuple[int, int] | None:
    """First (by a) pair of closed intervals that intersect, in O((n+m) log m)."""
    if a_start.size == 0 or b_start.size == 0:
        return None
    order = np.argsort(b_start, kind="stable")
    bs, be = b_start[order], b_end[order]
    cummax = np.maximum.accumulate(be)
    arg = np.maximum.accumulate(np.where(be == cummax, np.arange(be.size), 0))
    k = np.searchsorted(bs, a_end, side="right")  # b's with b.start <= a.end
    has = k > 0
    kk = np.where(has, k - 1, 0)
    hit = np.flatnonzero(has & (cummax[kk] >= a_start))
    if hit.size == 0:
        return None
    i = int(hit[0])
    return i, int(order[arg[kk[i]]])


def assert_no_overlap(
    spans: SampleSpans,
    train_idx: Any,
    other_idx: Any,
    *,
    embargo: Any = 0,
    same_group_only: bool = False,
    embargo_side: Literal["both", "after"] = "both",
) -> None:
    """Raise ValueError naming the first train/other pair closer in time than allowed.

    A pair is clean when one interval ends more than ``embargo`` before the other starts
    (``embargo=0``: plain non-overlap). ``embargo_side="after"`` requires the gap only for
    training samples that come after an ``other`` sample (de Prado's one-sided embargo).
    """
    if embargo_side not in ("both", "after"):
        raise ValueError(f"embargo_side must be 'both' or 'after', got {embargo_side!r}")
    e = _duration(embargo, "embargo", spans.is_datetime)
    a = np.asarray(train_idx, dtype=np.int64).reshape(-1)
    b = np.asarray(other_idx, dtype=np.int64).reshape(-1)
    n = len(spans)
    for name, idx in (("train_idx", a), ("other_idx", b)):
        if idx.size and (idx.min() < 0 or idx.max() >= n):
            raise ValueError(f"{name} holds positions outside [0, {n})")
    ea = e if embargo_side == "both" else 0
    s, t = spans.start, spans.end
    codes = spans._group_codes() if same_group_only else np.zeros(n, np.int64)
    hits: list[tuple[int, int]] = []
    for g in np.unique(codes[a]) if a.size else []:
        aa, bb = a[codes[a] == g], b[codes[b] == g]
        # [a.start, a.end + ea] vs [b.start, b.end + e] intersect <=> the pair is too close
        hit = _first_hit(s[aa], t[aa] + ea, s[bb], t[bb] + e)
        if hit is not None:
            hits.append((int(aa[hit[0]]), int(bb[hit[1]])))
    if hits:
        i, j = min(hits)
        what = "overlaps" if s[i] <= t[j] and s[j] <= t[i] else f"is within embargo={e} of"
        raise ValueError(
            f"train sample {i} [{s[i]}, {t[i]}] {what} other sample {j} [{s[j]}, {t[j]}]"
        )


# --------------------------------------------------------------------------------------------
# chronological split
# --------------------------------------------------------------------------------------------


def _fraction(value: Any, name: str) -> float:
    try:
        f = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a fraction in (0, 1), got {value!r}") from None
    if not 0.0 < f < 1.0:
        raise ValueError(f"{name} must be a fraction in (0, 1), got {value!r}")
    return f


def stratified_split(y: Any, val_size: float = 0.2, *, seed: int = 0) -> tuple[IntArray, IntArray]:
    """(train, val) positions for a labeled set with no time order: each class keeps its share
    in both (at least one validation and one training sample per class with two or more).

    Windows cut from one series are NOT such a set: neighbours overlap in time, so use
    ``chronological_split`` (time-blocked, purged and embargoed) for them.
    """
    f = _fraction(val_size, "val_size")
    y = np.asarray(y)
    if y.ndim != 1 or y.size < 2:
        raise ValueError(f"y must be 1-D with at least 2 labels, got shape {y.shape}")
    rng = np.random.default_rng(seed)
    val: list[np.ndarray] = []
    for c in np.unique(y):
        idx = rng.permutation(np.flatnonzero(y == c))
        k = 0 if idx.size < 2 else int(np.clip(round(f * idx.size), 1, idx.size - 1))
        val.append(idx[:k])
    v = np.sort(np.concatenate(val)).astype(np.int64)
    return np.setdiff1d(np.arange(y.size), v).astype(np.int64), v


def chronological_split(
    spans: SampleSpans,
    *,
    val: float = 0.15,
    test: float = 0.15,
    dates: Sequence[Any] | None = None,
    purge: bool = True,
    embargo: Any = 0,
) -> Split:
    """Cut train | val | test on sample ``end`` times, then purge and embargo at each cut.

    Segments: ``end < val_start`` -> train, ``val_start <= end < test_start`` -> val, the rest
    -> test. Boundaries are ``dates=(val_start, test_start)`` or, by default, the distinct end
    times split by fraction (``val``/``test`` of them, rounded, at least one each).
    Purge drops an earlier-segment sample whose ``end >= `` the earliest ``start`` of any later
    segment (its interval reaches into what comes after). Embargo (> 0) then drops a later
    sample whose ``start <= max(end of all earlier kept samples) + embargo``, so every kept
    pair satisfies ``later.start > earlier.end + embargo`` (this holds even with purge=False).
    """
    spans = _spans(spans)
    e = _duration(embargo, "embargo", spans.is_datetime)
    s, t = spans.start, spans.end
    if dates is not None:
        if len(dates) != 2:
            raise ValueError(f"dates must be (val_start, test_start), got {dates!r}")
        vs = _scalar_time(dates[0], "dates[0]", spans.is_datetime)
        ts = _scalar_time(dates[1], "dates[1]", spans.is_datetime)
        if not vs < ts:
            raise ValueError(f"dates must satisfy val_start < test_start, got {dates!r}")
    else:
        fv, ft = _fraction(val, "val"), _fraction(test, "test")
        if fv + ft >= 1.0:
            raise ValueError(f"val + test must be < 1, got val={val!r}, test={test!r}")
        u = np.unique(t)
        n_test, n_val = max(1, round(ft * u.size)), max(1, round(fv * u.size))
        n_train = u.size - n_val - n_test
        if n_train < 1:
            raise ValueError(
                f"too few distinct end times ({u.size}) for val={val!r}, test={test!r}"
            )
        vs, ts = int(u[n_train]), int(u[n_train + n_val])
    seg = np.where(t < vs, 0, np.where(t < ts, 1, 2))
    keep = np.ones(t.size, dtype=bool)
    purged = embargoed = 0
    if purge:
        for k in (0, 1):
            later = seg > k
            if later.any():
                drop = (seg == k) & (t >= s[later].min())
                purged += int(drop.sum())
                keep &= ~drop
    if e > 0:
        for k in (1, 2):
            earlier = keep & (seg < k)
            if earlier.any():
                drop = keep & (seg == k) & (s <= t[earlier].max() + e)
                embargoed += int(drop.sum())
                keep &= ~drop
    out = [_positions(keep & (seg == k)) for k in range(3)]
    for name, idx, k in zip(("train", "val", "test"), out, range(3), strict=True):
        if idx.size == 0:
            before = int((seg == k).sum())
            raise ValueError(
                f"{name} segment is empty ({before} samples before purge/embargo); "
                "use more data, other fractions/dates, or a smaller embargo"
            )
    return Split(out[0], out[1], out[2], purged=purged, embargoed=embargoed)


# --------------------------------------------------------------------------------------------
# purged k-fold
# --------------------------------------------------------------------------------------------


def _time_blocks(t: np.ndarray, n_blocks: int) -> np.ndarray:
    """Block id per sample: distinct end times cut into contiguous runs of similar sample count."""
    u, inv, counts = np.unique(t, return_inverse=True, return_counts=True)
    if n_blocks > u.size:
        raise ValueError(f"n_splits={n_blocks} exceeds the number of distinct end times ({u.size})")
    cum = np.cumsum(counts)
    raw = np.searchsorted(cum, cum[-1] * np.arange(1, n_blocks) / n_blocks, side="left") + 1
    cuts = np.empty(n_blocks - 1, np.int64)  # distinct times in blocks 0..k-1
    prev = 0
    for k in range(1, n_blocks):  # keep at least one distinct time in every block
        prev = int(min(max(raw[k - 1], prev + 1), u.size - (n_blocks - k)))
        cuts[k - 1] = prev
    return np.searchsorted(cuts, np.arange(u.size), side="right")[inv.reshape(-1)]


def purged_kfold(spans: SampleSpans, n_splits: int = 5, *, embargo: Any = 0) -> list[Fold]:
    """K-fold over contiguous time blocks with de Prado's purge and (post-test) embargo.

    Test folds are contiguous blocks of distinct ``end`` times with similar sample counts.
    Training is every other sample, minus those overlapping the test span
    ``[min start, max end]`` (purge) and those starting within ``embargo`` after it (embargo).
    """
    spans = _spans(spans)
    n = _check_n_splits(n_splits, 2)
    e = _duration(embargo, "embargo", spans.is_datetime)
    s, t = spans.start, spans.end
    block = _time_blocks(t, n)
    folds: list[Fold] = []
    for k in range(n):
        test = block == k
        lo, hi = s[test].min(), t[test].max()
        cand = ~test
        purge = cand & (t >= lo) & (s <= hi)
        emb = cand & ~purge & (s > hi) & (s <= hi + e)
        train = cand & ~purge & ~emb
        if not train.any():
            raise ValueError(f"fold {k}: training set is empty after purge/embargo")
        folds.append(Fold(_positions(train), _positions(test), int(purge.sum()), int(emb.sum())))
    return folds


# --------------------------------------------------------------------------------------------
# walk-forward
# --------------------------------------------------------------------------------------------


def _size(value: Any, name: str) -> int | None:
    if value is None:
        return None
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)):
        raise ValueError(f"{name} must be an int (distinct end times), got {value!r}")
    if value < 1:
        raise ValueError(f"{name} must be >= 1, got {value}")
    return int(value)


def walk_forward(
    spans: SampleSpans,
    *,
    n_splits: int,
    train_size: int | None = None,
    test_size: int | None = None,
    mode: Literal["expanding", "rolling"] = "expanding",
    embargo: Any = 0,
    purge: bool = True,
) -> list[Fold]:
    """Successive test blocks at the end of the data, each trained only on what came before.

    Sizes count distinct ``end`` times. The ``n_splits`` test blocks of ``test_size`` times
    (default: ``U // (n_splits + 1)``) tile the most recent times; the first training window
    is the ``train_size`` times before the first block (default: all of them). ``expanding``
    keeps that window's start fixed, ``rolling`` slides it. Purge drops training samples with
    ``end >= min start`` of the test block; embargo (> 0) also drops those with
    ``end + embargo >= min start``, so ``test.start > train.end + embargo``.
    """
    spans = _spans(spans)
    n = _check_n_splits(n_splits, 1)
    if mode not in ("expanding", "rolling"):
        raise ValueError(f"mode must be 'expanding' or 'rolling', got {mode!r}")
    e = _duration(embargo, "embargo", spans.is_datetime)
    train_size, test_size = _size(train_size, "train_size"), _size(test_size, "test_size")
    s, t = spans.start, spans.end
    u, inv = np.unique(t, return_inverse=True)
    rank = inv.reshape(-1)
    n_u = u.size
    if test_size is None:
        test_size = n_u // (n + 1)
        if test_size < 1:
            raise ValueError(f"n_splits={n} needs at least {n + 1} distinct end times, got {n_u}")
    first = n_u - n * test_size
    if first < 1:
        raise ValueError(
            f"n_splits={n} x test_size={test_size} leaves no training times ({n_u} distinct)"
        )
    if train_size is None:
        train_size = first
    elif train_size > first:
        raise ValueError(
            f"train_size={train_size} exceeds the {first} distinct end times before the first "
            f"test block (n_splits={n}, test_size={test_size})"
        )
    folds: list[Fold] = []
    for k in range(n):
        b0 = first + k * test_size
        lo = first - train_size if mode == "expanding" else b0 - train_size
        test = (rank >= b0) & (rank < b0 + test_size)
        cand = (rank >= lo) & (rank < b0)
        min_start = s[test].min()
        purged = cand & (t >= min_start) if purge else np.zeros_like(cand)
        emb = cand & ~purged & (t + e >= min_start) if e > 0 else np.zeros_like(cand)
        train = cand & ~purged & ~emb
        if not train.any():
            raise ValueError(f"fold {k}: training set is empty after purge/embargo")
        folds.append(Fold(_positions(train), _positions(test), int(purged.sum()), int(emb.sum())))
    return folds


# --------------------------------------------------------------------------------------------
# time-blocked folds for small labelled panels (the OOF verdict)
# --------------------------------------------------------------------------------------------


def _touches(
    a_start: np.ndarray, a_end: np.ndarray, b_start: np.ndarray, b_end: np.ndarray
) -> np.ndarray:
    """Mask over a: does a's closed interval intersect any of b's, in O((n+m) log m)."""
    out = np.zeros(a_start.size, dtype=bool)
    if a_start.size == 0 or b_start.size == 0:
        return out
    order = np.argsort(b_start, kind="stable")
    bs, cummax = b_start[order], np.maximum.accumulate(b_end[order])
    k = np.searchsorted(bs, a_end, side="right")  # b's with b.start <= a.end
    has = k > 0
    out[has] = cummax[k[has] - 1] >= a_start[has]
    return out


def _first_block(t: np.ndarray, min_train: int, n_test_blocks: int) -> np.ndarray:
    """Block id per sample: 0 for the earliest distinct end times holding >= ``min_train``
    samples, then ``n_test_blocks`` contiguous blocks of similar sample count."""
    u, inv, counts = np.unique(t, return_inverse=True, return_counts=True)
    rank = inv.reshape(-1)
    if min_train >= t.size:
        raise ValueError(f"min_train={min_train} leaves no samples to test ({t.size} in all)")
    first = int(np.searchsorted(np.cumsum(counts), min_train, side="left")) + 1
    if u.size - first < n_test_blocks:
        raise ValueError(
            f"min_train={min_train} leaves {u.size - first} distinct end times, too few for "
            f"{n_test_blocks} test blocks"
        )
    block = np.zeros(t.size, np.int64)
    rest = rank >= first
    block[rest] = 1 + _time_blocks(t[rest], n_test_blocks)
    return block


def purged_time_folds(
    spans: SampleSpans,
    n_splits: int,
    *,
    scheme: Literal["walk_forward", "blocked"] = "walk_forward",
    embargo: Any = 0,
    min_train: int | None = None,
) -> list[Fold]:
    """Folds over contiguous time blocks, purged per symbol and embargoed in time.

    Blocks cut the distinct ``end`` times (when a label is known) into contiguous runs of
    similar sample count, so equal times stay together. ``walk_forward`` (the default): a first
    block only trains (at least ``min_train`` samples; default ``N // (n_splits + 1)``), then
    fold k tests block k+1 and trains only on the blocks before it: no fold trains on later
    data, and the first block is never tested. ``blocked``: ``n_splits`` blocks, each tested
    once, trained on the blocks on both sides (later data too: ask for it explicitly).

    A training candidate is dropped when, with ``B = [min end, max end]`` of the test block:

    * **purge**: its ``[start, end]`` overlaps a test sample of the same ``group`` (symbol;
      every sample when ``group`` is None): the two windows share bars;
    * **embargo**: otherwise, it comes within ``embargo`` of such a test sample, or its
      ``[start, end]`` comes within ``embargo`` of ``B`` (before the block: ``end >= B.lo -
      embargo``; after it, ``start <= B.hi + embargo``: no kept window reads bars of the test
      block's label times, on any symbol).

    Other symbols' windows that merely share earlier bars with a test window are kept: they
    were all known before any test label was.
    """
    spans = _spans(spans)
    if scheme not in ("walk_forward", "blocked"):
        raise ValueError(f"scheme must be 'walk_forward' or 'blocked', got {scheme!r}")
    n = _check_n_splits(n_splits, 1 if scheme == "walk_forward" else 2)
    e = _duration(embargo, "embargo", spans.is_datetime)
    s, t = spans.start, spans.end
    if scheme == "blocked":
        if min_train is not None:
            raise ValueError("min_train applies to scheme='walk_forward' only (blocked folds "
                             "train on every block but the test one)")
        block = _time_blocks(t, n)
    elif min_train is None:
        block = _time_blocks(t, n + 1)
    else:
        block = _first_block(t, _size(min_train, "min_train") or 1, n)
    codes = spans._group_codes()
    folds: list[Fold] = []
    for k in range(n):
        tb = k if scheme == "blocked" else k + 1
        test = block == tb
        cand = ~test if scheme == "blocked" else block < tb
        lo, hi = t[test].min(), t[test].max()
        overlap = np.zeros(t.size, dtype=bool)
        near = (t >= lo - e) & (s <= hi + e)
        for g in np.unique(codes[test]):
            c = np.flatnonzero(cand & (codes == g))
            j = np.flatnonzero(test & (codes == g))
            overlap[c] = _touches(s[c], t[c], s[j], t[j])
            near[c] |= _touches(s[c], t[c], s[j] - e, t[j] + e)
        purged = cand & overlap
        emb = cand & ~overlap & near
        train = cand & ~purged & ~emb
        if not train.any():
            raise ValueError(
                f"fold {k}: training set is empty after purge/embargo ({int(cand.sum())} "
                f"candidates, {int(purged.sum())} purged, {int(emb.sum())} embargoed)"
            )
        folds.append(Fold(_positions(train), _positions(test), int(purged.sum()), int(emb.sum())))
    return folds


# --------------------------------------------------------------------------------------------
# stratified group k-fold for tiny labelled sets
# --------------------------------------------------------------------------------------------


def overlap_groups(spans: SampleSpans, *, block: Any = None) -> np.ndarray:
    """Group id per sample: same symbol and chained interval overlap, or the same time block.

    Components come from a sort-and-sweep per symbol; ``block`` (time units) additionally joins
    every sample whose ``end`` falls in the same bin ``end // block``, across symbols.
    """
    n = len(spans)
    s, t = spans.start, spans.end
    codes = spans._group_codes()
    order = np.lexsort((s, codes))
    cs, ss, ts = codes[order], s[order], t[order]
    run_end = np.empty(n, np.int64)
    new_sym = np.ones(n, dtype=bool)
    new_sym[1:] = cs[1:] != cs[:-1]
    bounds = np.append(np.flatnonzero(new_sym), n)
    for a, b in itertools.pairwise(bounds):
        run_end[a:b] = np.maximum.accumulate(ts[a:b])
    new_comp = new_sym.copy()
    new_comp[1:] |= ss[1:] > run_end[:-1]
    comp_sorted = np.cumsum(new_comp) - 1
    comp = np.empty(n, np.int64)
    comp[order] = comp_sorted
    if block is None:
        return comp
    width = _duration(block, "block", spans.is_datetime)
    if width <= 0:
        raise ValueError(f"block must be > 0, got {block!r}")
    bin_id = np.unique(t // width, return_inverse=True)[1].reshape(-1)  # calendar-aligned bins
    n_comp = int(comp.max()) + 1
    # bipartite graph: overlap components <-> time bins; its components are the final groups
    graph = coo_matrix((np.ones(n), (comp, n_comp + bin_id)), shape=(n_comp + n, n_comp + n))
    labels = connected_components(graph, directed=False)[1]
    return np.unique(labels[comp], return_inverse=True)[1].reshape(-1).astype(np.int64)


def stratified_group_kfold(
    spans: SampleSpans,
    labels: Any = None,
    n_splits: int = 5,
    *,
    seed: int = 0,
    block: Any = None,
) -> list[Fold]:
    """Class-balanced k-fold for small labelled sets where overlapping windows never straddle.

    Samples are grouped by :func:`overlap_groups` (same symbol with chained interval overlap,
    optionally same ``block`` time bin), then sklearn's ``StratifiedGroupKFold`` (shuffled,
    ``random_state=seed``) assigns groups to folds to balance class proportions. Each sample is
    tested exactly once. ``labels`` defaults to ``spans.label``. Folds are not time blocks: for
    a verdict on time series use :func:`purged_time_folds`.
    """
    from sklearn.model_selection import StratifiedGroupKFold

    spans = _spans(spans)
    n = _check_n_splits(n_splits, 2)
    if labels is None:
        labels = spans.label
    if labels is None:
        raise ValueError("labels is required (pass labels= or SampleSpans(label=...))")
    y = np.asarray(labels).reshape(-1)
    if y.size != len(spans):
        raise ValueError(f"labels has {y.size} entries, expected {len(spans)}")
    groups = overlap_groups(spans, block=block)
    n_groups = int(groups.max()) + 1
    if n > n_groups:
        raise ValueError(f"n_splits={n} exceeds the number of non-overlapping groups ({n_groups})")
    y_code = np.unique(y, return_inverse=True)[1].reshape(-1)
    counts = np.bincount(y_code)
    if np.all(counts < n):  # sklearn's own error here names neither the labels nor the counts
        raise ValueError(f"n_splits={n} exceeds the number of samples of every class "
                         f"(per class: {dict(zip(np.unique(y).tolist(), counts.tolist(), strict=True))})")
    splitter = StratifiedGroupKFold(n_splits=n, shuffle=True, random_state=seed)
    with warnings.catch_warnings():  # "least populated class has only k members": expected here
        warnings.filterwarnings("ignore", "The least populated class", UserWarning)
        parts = [np.sort(te).astype(np.int64)
                 for _, te in splitter.split(np.zeros(y.size), y_code, groups)]
    folds: list[Fold] = []
    for k, test_idx in enumerate(parts):
        if test_idx.size == 0:
            raise ValueError(f"fold {k} is empty: too few groups ({n_groups}) for n_splits={n}")
        train_idx = np.setdiff1d(np.arange(y.size, dtype=np.int64), test_idx)
        # grouping already separates same-symbol overlaps; a failure here is a bug
        assert_no_overlap(spans, train_idx, test_idx, same_group_only=True)
        folds.append(Fold(train_idx, test_idx, 0, 0))
    return folds
