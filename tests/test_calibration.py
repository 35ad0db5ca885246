"""ECE / reliability bins against hand computations, and temperature scaling."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.special import expit, softmax

from moola.evaluation.calibration import (
    TemperatureScaler,
    expected_calibration_error,
    reliability_curve,
)

# 10 samples, 3 classes. With 5 bins ((0,.2], (.2,.4], (.4,.6], (.6,.8], (.8,1]):
#   bin (.4,.6]: conf .50 right, .55 wrong, .45 right -> mean conf .50, acc 2/3, n 3
#   bin (.6,.8]: conf .70 right, .65 right, .75 wrong -> mean conf .70, acc 2/3, n 3
#   bin (.8,1.]: conf .90 right, .85 right, .90 right, .95 wrong -> mean conf .90, acc 3/4, n 4
# ECE = .3*|2/3-.5| + .3*|2/3-.7| + .4*|.75-.9| = .3*(1/6) + .3*(1/30) + .4*.15
#     = .05 + .01 + .06 = .12
HAND_PROBA = np.array(
    [
        [0.50, 0.30, 0.20],
        [0.20, 0.55, 0.25],
        [0.45, 0.35, 0.20],
        [0.70, 0.20, 0.10],
        [0.10, 0.65, 0.25],
        [0.15, 0.10, 0.75],
        [0.90, 0.05, 0.05],
        [0.05, 0.85, 0.10],
        [0.05, 0.05, 0.90],
        [0.95, 0.03, 0.02],
    ]
)
HAND_Y = np.array([0, 2, 0, 0, 1, 0, 0, 1, 2, 1])


def test_ece_matches_hand_computation() -> None:
    assert expected_calibration_error(HAND_Y, HAND_PROBA, n_bins=5) == pytest.approx(0.12, abs=1e-12)


def test_reliability_curve_matches_hand_bins() -> None:
    c = reliability_curve(HAND_Y, HAND_PROBA, n_bins=5)
    np.testing.assert_array_equal(c.count, [0, 0, 3, 3, 4])
    np.testing.assert_allclose(c.confidence[2:], [0.5, 0.7, 0.9], atol=1e-12)
    np.testing.assert_allclose(c.accuracy[2:], [2 / 3, 2 / 3, 0.75], atol=1e-12)
    assert np.isnan(c.confidence[:2]).all() and np.isnan(c.accuracy[:2]).all()
    np.testing.assert_allclose(c.bin_lower, [0, 0.2, 0.4, 0.6, 0.8])
    np.testing.assert_allclose(c.bin_upper, [0.2, 0.4, 0.6, 0.8, 1.0])
    assert c.ece == pytest.approx(0.12, abs=1e-12)
    assert [r["count"] for r in c.as_records()] == [0, 0, 3, 3, 4]


def test_ece_default_is_15_bins() -> None:
    # with 15 bins (edges k/15) the same example splits differently, e.g. .45 -> (6/15, 7/15],
    # .50 and .55 -> (7/15, 8/15]; recompute with an independent ceil-based binning.
    conf = HAND_PROBA.max(axis=1)
    right = HAND_PROBA.argmax(axis=1) == HAND_Y
    bins = np.ceil(conf * 15).astype(int) - 1  # no confidence here lies on a 1/15 edge
    ece = 0.0
    for b in np.unique(bins):
        m = bins == b
        ece += m.mean() * abs(right[m].mean() - conf[m].mean())
    assert expected_calibration_error(HAND_Y, HAND_PROBA) == pytest.approx(ece, abs=1e-12)
    assert abs(ece - 0.12) > 1e-3  # the bin count matters on this example


def test_ece_zero_when_confident_and_right() -> None:
    y = np.array([0, 1, 2, 1, 0])
    proba = np.eye(3)[y]
    assert expected_calibration_error(y, proba) == 0.0
    # 0.999 confident and always right: ECE = 1 - 0.999
    p = np.full((5, 3), 0.0005)
    p[np.arange(5), y] = 0.999
    assert expected_calibration_error(y, p) == pytest.approx(0.001, abs=1e-12)


def test_ece_one_when_confident_and_wrong() -> None:
    y = np.array([0, 1, 0, 1])
    assert expected_calibration_error(y, np.eye(2)[1 - y]) == pytest.approx(1.0)


def test_confidence_on_bin_edge_goes_to_lower_bin() -> None:
    # bins are right-closed: 0.6 is in (0.4, 0.6], 0.8 in (0.6, 0.8], 1.0 in (0.8, 1.0]
    proba = np.array([[0.4, 0.6], [0.2, 0.8], [0.0, 1.0], [0.6, 0.4]])
    y = np.array([1, 1, 1, 1])
    c = reliability_curve(y, proba, n_bins=5)
    np.testing.assert_array_equal(c.count, [0, 0, 2, 1, 1])
    # bin (0.4, 0.6]: two samples with conf 0.6, one right -> |0.5 - 0.6| * 2/4
    # bin (0.6, 0.8]: conf 0.8 right -> 0.2 * 1/4 ; bin (0.8, 1]: conf 1 right -> 0
    assert c.ece == pytest.approx(0.1 * 0.5 + 0.2 * 0.25, abs=1e-12)
    # 15 bins: a uniform 3-class row has confidence 1/3 = 5/15, the upper edge of bin 4
    c15 = reliability_curve(np.array([0]), np.full((1, 3), 1 / 3))
    assert int(np.flatnonzero(c15.count)[0]) == 4


def test_binary_positive_probabilities_accepted() -> None:
    p = np.array([0.9, 0.2, 0.6, 0.4])
    y = np.array([1, 0, 0, 1])
    two = np.column_stack([1 - p, p])
    assert expected_calibration_error(y, p, 5) == expected_calibration_error(y, two, 5)


@pytest.mark.parametrize(
    ("y", "proba", "exc", "arg"),
    [
        (np.array([0, 1]), np.array([[0.5, 0.6], [0.5, 0.5]]), ValueError, "proba"),
        (np.array([0.0, 1.0]), np.array([[0.5, 0.5], [0.5, 0.5]]), TypeError, "y_true"),
        (np.array([0, 1]), np.array([[0.5, 0.5], [0.5, 0.5]], dtype=object), TypeError, "proba"),
        (np.array([0, 1, 1]), np.array([[0.5, 0.5], [0.5, 0.5]]), ValueError, "y_true"),
        (np.array([0, 3]), np.array([[0.5, 0.5], [0.5, 0.5]]), ValueError, "y_true"),
    ],
)
def test_ece_validates_inputs(y: np.ndarray, proba: np.ndarray, exc: type, arg: str) -> None:
    with pytest.raises(exc, match=arg):
        expected_calibration_error(y, proba)


# ------------------------------------------------------------------ temperature scaling


def _overconfident(n: int, c: int, factor: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    true_logits = rng.normal(scale=1.5, size=(n, c))
    p = softmax(true_logits, axis=1)
    y = np.array([rng.choice(c, p=row) for row in p])
    return true_logits * factor, y


def _nll(logits: np.ndarray, y: np.ndarray, t: float) -> float:
    p = softmax(logits / t, axis=1)
    return float(-np.mean(np.log(p[np.arange(len(y)), y])))


def test_temperature_recovers_overconfidence_and_improves_heldout_nll() -> None:
    z_val, y_val = _overconfident(3000, 4, 5.0, seed=1)
    z_test, y_test = _overconfident(3000, 4, 5.0, seed=2)
    ts = TemperatureScaler().fit(z_val, y_val)
    assert ts.temperature_ > 1.0
    assert 4.0 < ts.temperature_ < 6.0  # the logits were inflated 5x
    before = _nll(z_test, y_test, 1.0)
    proba = ts.transform(z_test)
    after = float(-np.mean(np.log(proba[np.arange(len(y_test)), y_test])))
    assert after < before - 0.1
    assert ts.nll(z_test, y_test) == pytest.approx(after, rel=1e-9)
    assert ts.nll_after_ < ts.nll_before_
    np.testing.assert_allclose(proba.sum(axis=1), 1.0, atol=1e-12)
    # ECE also improves on the held-out split
    raw = softmax(z_test, axis=1)
    assert expected_calibration_error(y_test, proba) < expected_calibration_error(y_test, raw)


def test_temperature_below_one_for_underconfident_logits() -> None:
    z, y = _overconfident(2000, 3, 0.3, seed=3)
    assert TemperatureScaler().fit(z, y).temperature_ < 1.0


def test_temperature_uses_only_the_data_it_is_fitted_on() -> None:
    z_val, y_val = _overconfident(800, 3, 4.0, seed=4)
    z_test, y_test = _overconfident(800, 3, 0.5, seed=5)  # deliberately different calibration
    ts = TemperatureScaler().fit(z_val, y_val)
    t_fit = ts.temperature_
    # the fitted T is the minimiser of the VALIDATION NLL (brute-force grid on log T)
    grid = np.exp(np.linspace(np.log(0.05), np.log(20), 4001))
    t_grid = grid[np.argmin([_nll(z_val, y_val, t) for t in grid])]
    assert t_fit == pytest.approx(t_grid, rel=5e-3)
    # transforming the test split does not touch the fitted state
    ts.transform(z_test)
    ts.nll(z_test, y_test)
    assert ts.temperature_ == t_fit
    # the test split alone would give a very different temperature
    assert TemperatureScaler().fit(z_test, y_test).temperature_ < 1.0 < t_fit


def test_temperature_binary_1d_logits() -> None:
    rng = np.random.default_rng(6)
    z = rng.normal(scale=2.0, size=4000)
    y = (rng.random(4000) < expit(z)).astype(np.int64)
    ts = TemperatureScaler().fit(3.0 * z[:2000], y[:2000])
    assert 2.4 < ts.temperature_ < 3.6
    proba = ts.transform(3.0 * z[2000:])
    assert proba.shape == (2000, 2)
    np.testing.assert_allclose(proba[:, 1], expit(3.0 * z[2000:] / ts.temperature_), rtol=1e-10)
    np.testing.assert_allclose(proba.sum(axis=1), 1.0)


def test_temperature_scaler_is_sklearn_style_and_validates() -> None:
    ts = TemperatureScaler(init_temperature=2.0)
    assert not hasattr(ts, "temperature_")  # __init__ only stores parameters
    with pytest.raises(RuntimeError, match="not fitted"):
        ts.transform(np.zeros((2, 2)))
    with pytest.raises(ValueError, match="y_val"):
        ts.fit(np.zeros((3, 2)), np.array([0, 1]))
    with pytest.raises(TypeError, match="logits_val"):
        ts.fit(np.zeros((2, 2), dtype=object), np.array([0, 1]))
    with pytest.raises(ValueError, match="temperature"):
        TemperatureScaler(min_temperature=0.0).fit(np.zeros((2, 2)), np.array([0, 1]))
    ts.fit(np.array([[2.0, -1.0], [0.5, 1.0], [-1.0, 1.0]]), np.array([0, 0, 1]))
    assert ts.temperature_ > 0
    with pytest.raises(ValueError, match="classes"):
        ts.transform(np.zeros((2, 3)))
