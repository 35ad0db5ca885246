"""Classification / regression metrics against hand and independent computations."""

from __future__ import annotations

import json

import numpy as np
import pytest
from scipy.stats import rankdata
from sklearn.metrics import brier_score_loss, roc_auc_score

from moola.evaluation.metrics import binary_metrics, classification_metrics, regression_metrics

CLASSES = ["down", "flat", "up"]
Y = np.array([0, 0, 0, 1, 1, 2, 2, 2])
P = np.array(
    [
        [0.7, 0.2, 0.1],  # pred 0, right
        [0.3, 0.6, 0.1],  # pred 1, wrong
        [0.5, 0.1, 0.4],  # pred 0, right
        [0.2, 0.7, 0.1],  # pred 1, right
        [0.1, 0.3, 0.6],  # pred 2, wrong
        [0.1, 0.1, 0.8],  # pred 2, right
        [0.2, 0.5, 0.3],  # pred 1, wrong
        [0.3, 0.3, 0.4],  # pred 2, right
    ]
)


def test_classification_metrics_match_hand_computation() -> None:
    m = classification_metrics(Y, P, CLASSES)
    assert m["n_samples"] == 8
    assert m["accuracy"] == pytest.approx(5 / 8)
    assert m["confusion_matrix"] == [[2, 1, 0], [0, 1, 1], [0, 1, 2]]
    # recall 2/3, 1/2, 2/3 ; precision 2/2, 1/3, 2/3
    assert m["balanced_accuracy"] == pytest.approx((2 / 3 + 1 / 2 + 2 / 3) / 3)
    pc = m["per_class"]
    assert [pc[c]["recall"] for c in CLASSES] == pytest.approx([2 / 3, 1 / 2, 2 / 3])
    assert [pc[c]["precision"] for c in CLASSES] == pytest.approx([1.0, 1 / 3, 2 / 3])
    f1 = [2 * p * r / (p + r) for p, r in ((1.0, 2 / 3), (1 / 3, 1 / 2), (2 / 3, 2 / 3))]
    assert [pc[c]["f1"] for c in CLASSES] == pytest.approx(f1)
    assert f1 == pytest.approx([0.8, 0.4, 2 / 3])
    assert m["macro_f1"] == pytest.approx(np.mean(f1))
    assert [pc[c]["support"] for c in CLASSES] == [3, 2, 3]
    assert m["log_loss"] == pytest.approx(-np.mean(np.log([0.7, 0.3, 0.5, 0.7, 0.3, 0.8, 0.3, 0.4])))
    # Brier: mean over the 8 x 3 entries of (p - onehot)^2
    sq = sum((P[i, c] - (Y[i] == c)) ** 2 for i in range(8) for c in range(3))
    assert m["brier"] == pytest.approx(sq / 24)
    assert m["brier"] == pytest.approx(brier_score_loss(Y, P, labels=[0, 1, 2]) / 3)
    assert m["roc_auc"] == pytest.approx(roc_auc_score(Y, P, multi_class="ovr", average="macro"))
    assert m["roc_auc_reason"] is None
    assert m["class_collapse"] == []
    assert m["pred_share"] == pytest.approx({"down": 2 / 8, "flat": 3 / 8, "up": 3 / 8})
    json.dumps(m)  # JSON-serialisable as is


def test_binary_metrics_use_positive_class_probability() -> None:
    y = np.array([0, 1, 1, 0, 1, 0, 1, 1])
    p = np.array([0.2, 0.8, 0.4, 0.3, 0.9, 0.6, 0.55, 0.7])
    m = binary_metrics(y, p)
    assert m["classes"] == ["down", "up"]
    assert m["roc_auc"] == pytest.approx(roc_auc_score(y, p))
    # hand: positives {.8,.4,.9,.55,.7} vs negatives {.2,.3,.6}: 13 of 15 pairs ranked right
    assert m["roc_auc"] == pytest.approx(13 / 15)
    assert m["brier"] == pytest.approx(brier_score_loss(y, p))
    assert m["brier"] == pytest.approx(np.mean((p - y) ** 2))
    assert m["accuracy"] == pytest.approx(np.mean((p > 0.5) == y))
    assert m == classification_metrics(y, np.column_stack([1 - p, p]), ["down", "up"])


def test_roc_auc_none_with_reason_for_absent_class() -> None:
    y = np.array([1, 1, 1, 1])
    p = np.array([[0.2, 0.8], [0.6, 0.4], [0.3, 0.7], [0.1, 0.9]])
    m = classification_metrics(y, p, ["down", "up"])
    assert m["roc_auc"] is None
    assert "down" in m["roc_auc_reason"] and "absent" in m["roc_auc_reason"]
    assert m["accuracy"] == pytest.approx(0.75)
    # multiclass with one class absent
    m3 = classification_metrics(Y[Y != 1], P[Y != 1], CLASSES)
    assert m3["roc_auc"] is None and "flat" in m3["roc_auc_reason"]


def test_class_collapse_threshold() -> None:
    # class a: 5 samples, 1 predicted right -> recall 0.2 (collapsed)
    # class b: 4 samples, 2 right -> recall 0.5 (not collapsed); class c: recall 1
    y = np.array([0] * 5 + [1] * 4 + [2] * 3)
    pred = np.array([0, 2, 2, 2, 1, *[1, 1, 2, 2], *[2, 2, 2]])
    proba = np.full((12, 3), 0.1)
    proba[np.arange(12), pred] = 0.8
    m = classification_metrics(y, proba, ["a", "b", "c"])
    assert m["per_class"]["a"]["recall"] == pytest.approx(0.2)
    assert m["per_class"]["b"]["recall"] == pytest.approx(0.5)
    assert m["class_collapse"] == ["a"]


def test_float32_rows_within_tolerance_accepted() -> None:
    p = (P + np.array([5e-5, 0, 0])).astype(np.float32)  # rows sum to 1.00005
    m = classification_metrics(Y, p, CLASSES)
    assert m["accuracy"] == pytest.approx(5 / 8)
    assert np.isfinite(m["log_loss"])


@pytest.mark.parametrize(
    ("y", "proba", "classes", "exc", "arg"),
    [
        (Y, P[:, :2], CLASSES, ValueError, "proba"),  # 2 columns, 3 classes
        (Y, P[:, 0], CLASSES, ValueError, "proba"),  # 1-D
        (Y[:5], P, CLASSES, ValueError, "y_true"),  # row count
        (Y, P * 1.01, CLASSES, ValueError, "sum to 1"),  # rows sum to 1.01
        (Y, P.astype(object), CLASSES, TypeError, "proba"),
        (Y.astype(object), P, CLASSES, TypeError, "y_true"),
        (Y.astype(float), P, CLASSES, TypeError, "y_true"),
        (Y, (P * 10).astype(int), CLASSES, TypeError, "proba"),
        (Y + 1, P, CLASSES, ValueError, "y_true"),  # label 3 out of range
        (Y, P, ["a", "a", "b"], ValueError, "classes"),
    ],
)
def test_classification_metrics_validate(y, proba, classes, exc, arg) -> None:
    with pytest.raises(exc, match=arg):
        classification_metrics(y, proba, classes)


def test_binary_metrics_validate() -> None:
    with pytest.raises(TypeError, match="p_pos"):
        binary_metrics(np.array([0, 1]), np.array(["0.1", "0.9"], dtype=object))
    with pytest.raises(ValueError, match="p_pos"):
        binary_metrics(np.array([0, 1]), np.array([0.1, 1.2]))
    with pytest.raises(ValueError, match="p_pos"):
        binary_metrics(np.array([0, 1]), np.array([[0.1], [0.9]]))


def test_regression_metrics_per_horizon() -> None:
    y = np.array([[0.1, 1.0], [0.2, -1.0], [-0.3, 0.5], [0.4, 2.0], [0.0, 0.0]])
    pred = np.array([[0.0, 0.5], [0.3, -0.5], [-0.1, 1.0], [0.2, 1.0], [0.1, -0.2]])
    m = regression_metrics(y, pred, horizons=["h1", "h5"])
    assert [r["horizon"] for r in m["per_horizon"]] == ["h1", "h5"]
    for j, r in enumerate(m["per_horizon"]):
        e = pred[:, j] - y[:, j]
        assert r["mse"] == pytest.approx(np.mean(e**2))
        assert r["mae"] == pytest.approx(np.mean(np.abs(e)))
        assert r["ic"] == pytest.approx(np.corrcoef(pred[:, j], y[:, j])[0, 1])
        ranks = np.corrcoef(rankdata(pred[:, j]), rankdata(y[:, j]))[0, 1]
        assert r["rank_ic"] == pytest.approx(ranks)
    assert m["mse"] == pytest.approx(np.mean([r["mse"] for r in m["per_horizon"]]))
    # hand: horizon 1 errors -.1, .1, .2, -.2, .1 -> MSE = (.01+.01+.04+.04+.01)/5 = .022
    assert m["per_horizon"][0]["mse"] == pytest.approx(0.022)


def test_regression_metrics_constant_prediction_and_groups() -> None:
    y = np.array([0.1, 0.2, 0.3, 0.4])
    m = regression_metrics(y, np.zeros(4))
    assert m["ic"] is None and m["rank_ic"] is None and m["mse"] == pytest.approx(np.mean(y**2))
    # two cross-sections: perfectly ranked within each -> IC 1 in both
    g = np.array([0, 0, 1, 1, 1, 0])
    yy = np.array([1.0, 2.0, 1.0, 2.0, 3.0, 3.0])
    pp = np.array([0.1, 0.2, -5.0, -4.0, -3.0, 0.3])
    mg = regression_metrics(yy, pp, groups=g)
    assert mg["per_horizon"][0]["rank_ic"] == pytest.approx(1.0)
    assert mg["per_horizon"][0]["rank_ic_groups"] == 2
    with pytest.raises(ValueError, match="pred"):
        regression_metrics(y, np.zeros(3))
    with pytest.raises(TypeError, match="y"):
        regression_metrics(y.astype(object), np.zeros(4))
