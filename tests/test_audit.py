"""Plausibility audit on 1-minute BTC bars with the logistic baseline as the model: an honest
model passes both checks; a model fed its own label's future return fails the shifted check."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from _direction_data import MinuteTask, btc_minute
from moola.evaluation import logistic_baseline
from moola.evaluation.audit import (
    UNKNOWN,
    AuditConfig,
    permute_labels,
    plausibility_audit,
    shift_labels,
)

CLASSES = ["down", "up"]
AUDIT = AuditConfig(n_boot=500)


def logistic_fit_predict(x_train: np.ndarray, y_train: np.ndarray, x_test: np.ndarray) -> np.ndarray:
    """The audit's model: the logistic baseline; it never sees test labels (zeros are passed)."""
    return logistic_baseline(x_train, y_train, x_test, np.zeros(x_test.shape[0], dtype=np.int64),
                             CLASSES, lags=5).proba_test


@pytest.fixture(scope="module")
def minute(tmp_path_factory: pytest.TempPathFactory) -> MinuteTask:
    return btc_minute(tmp_path_factory.mktemp("minute"))


def _minutes(m: MinuteTask, split: str) -> np.ndarray:
    return m.data.meta[split]["end_ts"].dt.epoch("ns").to_numpy() // 60_000_000_000


def _shifted(m: MinuteTask, split: str) -> np.ndarray:
    return shift_labels(m.data.y[split], group=m.data.meta[split]["symbol"].to_numpy(),
                        position=_minutes(m, split))


def test_shifted_labels_are_the_direction_one_bar_later(minute: MinuteTask) -> None:
    ys = _shifted(minute, "test")
    minutes = _minutes(minute, "test")
    up = (minute.forward_return["test"] > 0).astype(int)
    by_minute = dict(zip(minutes.tolist(), up.tolist(), strict=True))
    for i in range(0, minutes.size, 97):
        want = by_minute.get(int(minutes[i]) + 1, UNKNOWN)
        assert ys[i] == want, i
    assert ys[-1] == UNKNOWN and (ys != UNKNOWN).mean() > 0.95


@settings(max_examples=60, deadline=None)
@given(rows=st.lists(st.tuples(st.integers(0, 2), st.integers(0, 30), st.integers(0, 1)), max_size=40,
                     unique_by=lambda r: (r[0], r[1])))
def test_shift_labels_matches_a_brute_force_lookup(rows: list[tuple[int, int, int]]) -> None:
    g = np.array([r[0] for r in rows], dtype=np.int64)
    pos = np.array([r[1] for r in rows], dtype=np.int64)
    y = np.array([r[2] for r in rows], dtype=np.int64)
    want = [next((y[j] for j in range(len(rows)) if g[j] == g[i] and pos[j] == pos[i] + 1), UNKNOWN)
            for i in range(len(rows))]
    np.testing.assert_array_equal(shift_labels(y, group=g, position=pos), np.array(want, dtype=np.int64))


def test_permute_labels_is_seeded_and_keeps_the_class_counts(minute: MinuteTask) -> None:
    y = minute.data.y["train"]
    a, b = permute_labels(y, 1), permute_labels(y, 1)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, permute_labels(y, 2))
    assert np.bincount(a).tolist() == np.bincount(y).tolist()
    assert 0.45 < (a == y).mean() < 0.55  # the link to the rows is gone


def test_an_honest_model_passes(minute: MinuteTask) -> None:
    d = minute.data
    res = plausibility_audit(logistic_fit_predict, d.x["train"], d.y["train"], d.x["test"], d.y["test"],
                             y_train_shifted=_shifted(minute, "train"),
                             y_test_shifted=_shifted(minute, "test"), cfg=AUDIT, seed=0)
    assert res.passed, res.lines()
    assert res.first_line.startswith("audit: passed")
    perm, shift = res.checks
    assert perm.name == "permuted" and shift.name == "shifted"
    assert perm.measured["ci_low"] <= 0 <= perm.measured["ci_high"] + 0.01
    assert abs(perm.measured["accuracy"] - perm.measured["majority_rate"]) < 0.03
    assert shift.measured["drop"] < 0.05
    assert res.to_dict()["checks"]["shifted"]["passed"] is True


def test_the_future_return_as_a_feature_fails_the_shifted_check(minute: MinuteTask) -> None:
    d = minute.data

    def leak(split: str) -> np.ndarray:  # (N, T, F + 1): the label's own forward return on every step
        fwd = np.broadcast_to(minute.forward_return[split][:, None, None], (*d.x[split].shape[:2], 1))
        return np.concatenate([d.x[split], fwd.astype(np.float32)], axis=2)

    x_train, x_test = leak("train"), leak("test")
    proba = logistic_fit_predict(x_train, d.y["train"], x_test)
    assert (proba.argmax(1) == d.y["test"]).mean() > 0.95  # "too good": the leak works
    res = plausibility_audit(logistic_fit_predict, x_train, d.y["train"], x_test, d.y["test"],
                             y_train_shifted=_shifted(minute, "train"),
                             y_test_shifted=_shifted(minute, "test"), proba_test=proba, cfg=AUDIT, seed=0)
    assert not res.passed
    assert res.first_line.startswith("audit: FAILED (") and "shifted)" in res.first_line
    shift = res.checks[1]
    assert shift.measured["drop"] > 0.3 and shift.measured["ci_low"] > AUDIT.max_shift_drop
    assert res.lines()[2].startswith("shifted: FAILED")
    # (the permuted check may fail too, by the sign of the spurious weight a model fitted on
    # permuted labels puts on so strong a feature; only the shifted check is certain to catch it)


def test_a_pipeline_that_sees_test_labels_fails_the_permuted_check(minute: MinuteTask) -> None:
    """A fit_predict that ignores its training labels and peeks at the true test labels is not
    fooled by permuting the training set: its accuracy stays far above the majority rate."""
    d = minute.data
    truth = d.y["test"]

    def cheat(x_train: np.ndarray, y_train: np.ndarray, x_test: np.ndarray) -> np.ndarray:
        y = truth if x_test.shape[0] == truth.shape[0] else truth[_shifted(minute, "test") != UNKNOWN]
        return np.eye(2)[y]

    res = plausibility_audit(cheat, d.x["train"], d.y["train"], d.x["test"], d.y["test"],
                             y_train_shifted=_shifted(minute, "train"),
                             y_test_shifted=_shifted(minute, "test"), cfg=AUDIT)
    assert not res.checks[0].passed and res.checks[0].measured["ci_low"] > 0.3


def test_bad_input_is_named(minute: MinuteTask) -> None:
    d = minute.data
    ys_tr, ys_te = _shifted(minute, "train"), _shifted(minute, "test")
    with pytest.raises(ValueError, match="y_test_shifted has 10 rows but y_test has"):
        plausibility_audit(logistic_fit_predict, d.x["train"], d.y["train"], d.x["test"], d.y["test"],
                           y_train_shifted=ys_tr, y_test_shifted=ys_te[:10])
    with pytest.raises(TypeError, match="y_train must be a 1-D integer"):
        permute_labels(d.y["train"].astype(float), 0)
    with pytest.raises(ValueError, match="two rows share a"):
        shift_labels(np.array([0, 1]), position=np.array([3, 3]))
    with pytest.raises(ValueError, match=r"fit_predict returned shape \(3, 2\)"):
        plausibility_audit(lambda a, b, c: np.zeros((3, 2)), d.x["train"], d.y["train"], d.x["test"],
                           d.y["test"], y_train_shifted=ys_tr, y_test_shifted=ys_te)
