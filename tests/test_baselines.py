"""Baselines on a real small task: 105-bar windows of BTC 1-minute log returns, next-60-bar
direction, 300 train / 100 test windows in time order. One fitted case is shared (module fixture)
because aeon's MiniRocket compiles numba code on first use."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import accuracy_score
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from _direction_data import MinuteTask, btc_minute
from moola.datasets.tasks import prepare_data
from moola.evaluation.baselines import (
    KNOWN_BASELINES,
    LAGS,
    LIGHTGBM_TREES,
    LOGISTIC_C,
    LOGISTIC_MAX_ITER,
    TABLE_METRICS,
    BaselineResult,
    baseline_table,
    last_bar_return,
    lightgbm_baseline,
    logistic_baseline,
    majority_baseline,
    persistence_baseline,
    run_baselines,
    summary_features,
)
from moola.evaluation.metrics import classification_metrics

BTC_CSV = Path(__file__).resolve().parents[1] / "data" / "bundled" / "binanceus_BTCUSD_1m.csv"
WINDOW = 105
HORIZON = 60
N_TRAIN, N_TEST, GAP = 300, 100, 2  # GAP windows dropped between train and test (purge)
CLASSES = ("down", "up")


@dataclass
class Task:
    X_train: np.ndarray
    y_train: np.ndarray
    X_test: np.ndarray
    y_test: np.ndarray


def make_btc_task() -> Task:
    """Window k ends at bar e = WINDOW + HORIZON*k and holds the WINDOW log returns up to e;
    its label is 1 ("up") when close[e + HORIZON] > close[e], else 0. Windows step by HORIZON,
    so consecutive label horizons do not overlap, and GAP windows separate train from test."""
    close = pl.read_csv(BTC_CSV, columns=["close"])["close"].to_numpy().astype(np.float64)
    logc = np.log(close)
    ret = np.diff(logc, prepend=np.nan)  # ret[t] = log c[t] - log c[t-1]
    n = N_TRAIN + GAP + N_TEST
    ends = WINDOW + HORIZON * np.arange(n)
    assert ends[-1] + HORIZON < close.size
    X = np.stack([ret[e - WINDOW + 1 : e + 1] for e in ends])[:, :, None].astype(np.float32)
    y = (close[ends + HORIZON] > close[ends]).astype(np.int64)
    assert np.isfinite(X).all()
    return Task(X[:N_TRAIN], y[:N_TRAIN], X[N_TRAIN + GAP :], y[N_TRAIN + GAP :])


@pytest.fixture(scope="module")
def task() -> Task:
    return make_btc_task()


@pytest.fixture(scope="module")
def results(task: Task) -> list[BaselineResult]:
    return run_baselines(task.X_train, task.y_train, task.X_test, task.y_test, CLASSES, seed=0)


def test_task_shape(task: Task) -> None:
    assert task.X_train.shape == (N_TRAIN, WINDOW, 1) and task.X_train.dtype == np.float32
    assert task.X_test.shape == (N_TEST, WINDOW, 1)
    assert 0.2 < task.y_train.mean() < 0.8  # both directions occur


def test_table_has_the_three_baselines(results: list[BaselineResult], task: Task) -> None:
    table = baseline_table(results)
    assert table["model"].to_list() == ["majority", "logistic", "minirocket"]
    assert set(TABLE_METRICS) <= set(table.columns)
    for r in results:
        assert r.proba_test.shape == (N_TEST, 2)
        assert r.fit_seconds >= 0
        # every number in the table is the metrics of the stored test probabilities
        again = classification_metrics(task.y_test, r.proba_test, CLASSES)
        row = table.filter(pl.col("model") == r.name).row(0, named=True)
        for k in TABLE_METRICS:
            if again[k] is None:
                assert row[k] is None
            else:
                assert row[k] == again[k], (r.name, k)


def test_table_with_model_row_first(results: list[BaselineResult], task: Task) -> None:
    rng = np.random.default_rng(0)
    p = rng.uniform(0.3, 0.7, N_TEST)
    model = classification_metrics(task.y_test, np.column_stack([1 - p, p]), CLASSES)
    table = baseline_table(results, model_metrics=model, model_name="lstm")
    assert table["model"].to_list() == ["lstm", "majority", "logistic", "minirocket"]
    assert table["kind"].to_list() == ["model", "baseline", "baseline", "baseline"]
    assert table.row(0, named=True)["accuracy"] == model["accuracy"]
    assert table.row(0, named=True)["fit_seconds"] is None


def test_logistic_accuracy_recomputed_independently(results: list[BaselineResult], task: Task) -> None:
    pipe = make_pipeline(StandardScaler(), LogisticRegression(
        C=LOGISTIC_C, tol=1e-3, max_iter=LOGISTIC_MAX_ITER, random_state=0))
    pipe.fit(task.X_train.reshape(N_TRAIN, -1), task.y_train)
    acc = accuracy_score(task.y_test, pipe.predict(task.X_test.reshape(N_TEST, -1)))
    table = baseline_table(results)
    assert table.filter(pl.col("model") == "logistic")["accuracy"].item() == acc
    logistic = next(r for r in results if r.name == "logistic")
    np.testing.assert_allclose(
        logistic.proba_test, pipe.predict_proba(task.X_test.reshape(N_TEST, -1)), rtol=1e-12
    )


def test_majority_accuracy_is_test_frequency_of_train_majority(
    results: list[BaselineResult], task: Task
) -> None:
    maj_class = int(np.bincount(task.y_train, minlength=2).argmax())
    expected = float(np.mean(task.y_test == maj_class))
    maj = next(r for r in results if r.name == "majority")
    assert maj.metrics["accuracy"] == expected
    assert maj.params["majority_class"] == CLASSES[maj_class]
    # probabilities are the train prior on every row
    prior = np.bincount(task.y_train, minlength=2) / N_TRAIN
    np.testing.assert_allclose(maj.proba_test, np.tile(prior, (N_TEST, 1)))
    assert maj.metrics["balanced_accuracy"] == pytest.approx(0.5)


def test_minirocket_returns_valid_probabilities(results: list[BaselineResult]) -> None:
    mr = next(r for r in results if r.name == "minirocket")
    p = mr.proba_test
    assert np.isfinite(p).all() and (p >= 0).all() and (p <= 1).all()
    np.testing.assert_allclose(p.sum(axis=1), 1.0, atol=1e-12)
    assert mr.params["calibrated"] is False
    assert mr.params["n_features"] % 84 == 0 and mr.params["n_features"] > 0
    assert 0.0 <= mr.metrics["accuracy"] <= 1.0
    assert not math.isnan(mr.metrics["log_loss"])
    assert len({tuple(row) for row in np.round(p, 12)}) > 1  # not a constant prediction


def test_inputs_validated(task: Task) -> None:
    bad = task.X_train.astype(object)
    with pytest.raises(TypeError, match="X_train"):
        run_baselines(bad, task.y_train, task.X_test, task.y_test, CLASSES)
    with pytest.raises(TypeError, match="X_test"):
        majority_baseline(task.X_train, task.y_train, task.X_test.astype(object), task.y_test, CLASSES)
    with pytest.raises(TypeError, match="y_train"):
        logistic_baseline(task.X_train, task.y_train.astype(float), task.X_test, task.y_test, CLASSES)
    with pytest.raises(ValueError, match="X_train"):
        run_baselines(task.X_train[:, :, 0], task.y_train, task.X_test, task.y_test, CLASSES)
    with pytest.raises(ValueError, match="y_test"):
        run_baselines(task.X_train, task.y_train, task.X_test, task.y_test[:10], CLASSES)
    with pytest.raises(ValueError, match="unknown baseline"):
        run_baselines(task.X_train, task.y_train, task.X_test, task.y_test, CLASSES, which=("knn",))


def test_class_weight_option_changes_logistic(task: Task) -> None:
    # only the training data drives the fit: a train set made 80 % "up" shifts predictions up
    keep = np.flatnonzero(task.y_train == 1)
    drop = np.flatnonzero(task.y_train == 0)[: max(1, keep.size // 4)]
    idx = np.sort(np.concatenate([keep, drop]))
    xtr, ytr = task.X_train[idx], task.y_train[idx]
    plain = logistic_baseline(xtr, ytr, task.X_test, task.y_test, CLASSES)
    balanced = logistic_baseline(xtr, ytr, task.X_test, task.y_test, CLASSES, class_weight="balanced")
    assert balanced.params["class_weight"] == "balanced"
    assert balanced.proba_test[:, 1].mean() < plain.proba_test[:, 1].mean()


# ------------------------------------------------- persistence and LightGBM on 1-minute BTC bars


@pytest.fixture(scope="module")
def minute(tmp_path_factory: pytest.TempPathFactory) -> MinuteTask:
    """10-bar ohlc4 windows, next-bar direction, stride 1: ~21k train / 4.5k test rows."""
    return btc_minute(tmp_path_factory.mktemp("minute"))


def _minute_baselines(m: MinuteTask, which: tuple[str, ...], **kw: object) -> list[BaselineResult]:
    d = m.data
    return run_baselines(d.x["train"], d.y["train"], d.x["test"], d.y["test"], d.classes, which=which,
                         last_return_train=m.last_return["train"], last_return_test=m.last_return["test"],
                         **kw)  # type: ignore[arg-type]


def test_last_bar_return_is_the_raw_close_return_of_the_windows_last_bar(minute: MinuteTask) -> None:
    raw = prepare_data(minute.cfg.model_copy(update={"normalize": "none"}), minute.store)
    close_lr = raw.feature_names.index("close_lr")
    for k in ("train", "val", "test"):
        np.testing.assert_allclose(raw.x[k][:, -1, close_lr], minute.last_return[k], atol=1e-6)
    assert 0 < (minute.last_return["test"] > 0).mean() < 0.6


def test_persistence_predicts_the_sign_of_the_last_return(minute: MinuteTask) -> None:
    (res,) = _minute_baselines(minute, ("persistence",))
    up = minute.last_return["test"] > 0
    np.testing.assert_array_equal(res.proba_test.argmax(axis=1), up.astype(int))
    assert res.metrics["accuracy"] == pytest.approx(float((up.astype(int) == minute.data.y["test"]).mean()))
    # its confidence is the rule's train hit rate (floored above 0.5 so argmax stays the sign)
    hits = ((minute.last_return["train"] > 0).astype(int) == minute.data.y["train"]).mean()
    assert res.params["train_hit_rate"] == pytest.approx(hits, abs=1e-4)
    assert res.proba_test.max() == pytest.approx(max(res.params["train_hit_rate"], 0.5), abs=1e-5)
    np.testing.assert_allclose(res.proba_test.sum(axis=1), 1.0)


def test_ternary_persistence_labels_the_last_return_with_the_dead_zone(minute: MinuteTask) -> None:
    """down/flat/up: 'flat' when |last return| < the dead zone, else its sign; argmax is the rule."""
    d, dz = minute.data, 2e-4
    lab = {k: np.where(np.abs(minute.forward_return[k]) < dz, 1, np.where(minute.forward_return[k] > 0, 2, 0))
           for k in ("train", "test")}
    res = persistence_baseline(d.x["train"], lab["train"], d.x["test"], lab["test"], ["down", "flat", "up"],
                               last_return_train=minute.last_return["train"],
                               last_return_test=minute.last_return["test"], dead_zone=dz)
    r = minute.last_return["test"]
    rule = np.where(np.abs(r) < dz, 1, np.where(r > 0, 2, 0))
    assert set(np.unique(rule)) == {0, 1, 2}  # the real minutes have all three
    np.testing.assert_array_equal(res.proba_test.argmax(axis=1), rule)
    assert res.metrics["accuracy"] == pytest.approx(float((rule == lab["test"]).mean()))
    np.testing.assert_allclose(res.proba_test.sum(axis=1), 1.0)


def test_persistence_refuses_missing_or_bad_returns(minute: MinuteTask) -> None:
    d = minute.data
    with pytest.raises(ValueError, match="last_return_train and last_return_test"):
        run_baselines(d.x["train"], d.y["train"], d.x["test"], d.y["test"], d.classes,
                      which=("persistence",))
    with pytest.raises(ValueError, match="last_return_test has 10 returns but X_test has"):
        persistence_baseline(d.x["train"], d.y["train"], d.x["test"], d.y["test"], d.classes,
                             last_return_train=minute.last_return["train"],
                             last_return_test=minute.last_return["test"][:10])
    bad = minute.last_return["train"].copy()
    bad[7] = np.nan
    with pytest.raises(ValueError, match="last_return_train contains NaN or inf at row 7"):
        persistence_baseline(d.x["train"], d.y["train"], d.x["test"], d.y["test"], d.classes,
                             last_return_train=bad, last_return_test=minute.last_return["test"])
    with pytest.raises(ValueError, match=r"direction rule \(down, up\) or \(down, flat, up\)"):
        persistence_baseline(d.x["train"], d.y["train"], d.x["test"], d.y["test"], ["a", "b", "c", "d"],
                             last_return_train=minute.last_return["train"],
                             last_return_test=minute.last_return["test"])
    first = d.meta["train"].head(1)
    lone_bar = first.select("symbol", ts="end_ts", close=pl.lit(1.0))  # no bar before it
    with pytest.raises(ValueError, match=r"window 0 \(BTCUSD ending .*\) has no previous bar"):
        last_bar_return(lone_bar, first)
    with pytest.raises(ValueError, match="meta lacks column"):
        last_bar_return(lone_bar, first.drop("end_ts"))


def test_lightgbm_is_deterministic_and_reads_the_same_lagged_features_as_logistic(minute: MinuteTask) -> None:
    d = minute.data
    a = _minute_baselines(minute, ("logistic", "lightgbm"), lags=LAGS, seed=3)
    b = _minute_baselines(minute, ("lightgbm",), lags=LAGS, seed=3)
    assert [r.name for r in a] == ["logistic", "lightgbm"]
    np.testing.assert_array_equal(a[1].proba_test, b[0].proba_test)
    assert a[0].params["lags"] == a[1].params["lags"] == LAGS
    assert a[1].params["n_estimators"] == LIGHTGBM_TREES
    # the logistic on lags equals a pipeline fitted by hand on the last LAGS bars
    n_tr, n_te = d.x["train"].shape[0], d.x["test"].shape[0]
    pipe = make_pipeline(StandardScaler(), LogisticRegression(
        C=LOGISTIC_C, tol=1e-3, max_iter=LOGISTIC_MAX_ITER, random_state=3))
    pipe.fit(d.x["train"][:, -LAGS:, :].reshape(n_tr, -1), d.y["train"])
    by_hand = pipe.predict_proba(d.x["test"][:, -LAGS:, :].reshape(n_te, -1))
    np.testing.assert_allclose(a[0].proba_test, by_hand, rtol=1e-10)
    p = a[1].proba_test
    assert p.shape == (n_te, 2) and np.isfinite(p).all() and len(np.unique(p[:, 1])) > 10
    assert 0.45 < a[1].metrics["accuracy"] < 0.6  # 1-minute direction: near a coin flip, not a leak


def test_all_known_baselines_on_the_same_rows(minute: MinuteTask) -> None:
    which = tuple(w for w in KNOWN_BASELINES if w != "minirocket")
    results = _minute_baselines(minute, which, lags=LAGS)
    table = baseline_table(results)
    assert table["model"].to_list() == list(which)
    n_te = minute.data.y["test"].shape[0]
    for r in results:
        assert r.proba_test.shape == (n_te, 2)
        again = classification_metrics(minute.data.y["test"], r.proba_test, minute.data.classes)
        assert again["accuracy"] == r.metrics["accuracy"]


def test_lags_validated(minute: MinuteTask) -> None:
    d = minute.data
    for lags in (0, d.x["train"].shape[1] + 1):
        with pytest.raises(ValueError, match="lags must be between 1 and the window length 10"):
            lightgbm_baseline(d.x["train"], d.y["train"], d.x["test"], d.y["test"], d.classes, lags=lags)
    with pytest.raises(ValueError, match=r"choose from .*'persistence'.*'lightgbm'"):
        run_baselines(d.x["train"], d.y["train"], d.x["test"], d.y["test"], d.classes, which=("xgboost",))


def test_logistic_summary_features_equal_a_pipeline_fitted_by_hand(task: Task) -> None:
    r = logistic_baseline(task.X_train, task.y_train, task.X_test, task.y_test, CLASSES,
                          features="summary")
    pipe = make_pipeline(StandardScaler(), LogisticRegression(C=LOGISTIC_C, tol=1e-3,
                                                              max_iter=LOGISTIC_MAX_ITER, random_state=0))
    pipe.fit(summary_features(task.X_train), task.y_train)
    np.testing.assert_allclose(r.proba_test, pipe.predict_proba(summary_features(task.X_test)), rtol=1e-10)
    assert summary_features(task.X_test).shape == (N_TEST, 5 * task.X_test.shape[2])
    assert r.params["features"] == "summary" and r.params["C"] == LOGISTIC_C
    assert np.isfinite(r.metrics["log_loss"])  # the calibrated probabilities reach log loss


def test_logistic_unknown_features_lists_choices(task: Task) -> None:
    with pytest.raises(ValueError, match=r"flat.*summary"):
        logistic_baseline(task.X_train, task.y_train, task.X_test, task.y_test, CLASSES, features="pca")
