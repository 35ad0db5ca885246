"""The loop's per-epoch classification metrics equal scikit-learn's (they are counted with
bincount instead, for speed): accuracy, balanced accuracy and per-class recall, including classes
absent from ``y`` (recall NaN, left out of the balanced mean) and single-class ``y``."""

from __future__ import annotations

import warnings

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn.metrics import balanced_accuracy_score, recall_score

from moola.training import ClassificationObjective
from moola.training.objectives import class_recalls


@settings(max_examples=300, deadline=None)
@given(n_classes=st.integers(2, 5), data=st.data())
def test_metrics_equal_scikit_learn(n_classes: int, data: st.DataObject) -> None:
    n = data.draw(st.integers(1, 60))
    y = np.array(data.draw(st.lists(st.integers(0, n_classes - 1), min_size=n, max_size=n)))
    pred = np.array(data.draw(st.lists(st.integers(0, n_classes - 1), min_size=n, max_size=n)))
    proba = np.full((n, n_classes), 0.1 / n_classes)
    proba[np.arange(n), pred] = 0.9  # argmax is pred
    m = ClassificationObjective(n_classes).metrics({"y": y, "proba": proba})
    ref = recall_score(y, pred, labels=list(range(n_classes)), average=None, zero_division=0)
    present = np.bincount(y, minlength=n_classes) > 0
    np.testing.assert_array_equal(np.isnan(class_recalls(y, pred, n_classes)), ~present)
    for k in range(n_classes):
        if present[k]:
            assert m[f"recall_{k}"] == ref[k]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        bal = balanced_accuracy_score(y, pred) if len(np.unique(y)) > 1 else (pred == y).mean()
    assert abs(m["balanced_accuracy"] - bal) < 1e-12
    assert m["accuracy"] == (pred == y).mean()
    assert m["min_recall"] == min(ref[present])
