"""SequenceClassifier: fit/predict on any labeled series, variable lengths, save/load, and the
README example executed as written."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from moola import SequenceClassifier
from moola.datasets.splits import stratified_split
from moola.pipelines.classify import as_padded

ROOT = Path(__file__).resolve().parents[1]


def _shapes(n: int, T: int = 96, seed: int = 0) -> tuple[list[np.ndarray], np.ndarray]:
    """Cylinder-bell-funnel-like series of varying length (a plateau, a ramp up, a ramp down)."""
    rng = np.random.default_rng(seed)
    X, y = [], []
    for i in range(n):
        c = i % 3
        L = int(rng.integers(T // 2, T + 1))
        t = np.arange(L)
        a = int(rng.integers(L // 8, L // 4))
        b = int(rng.integers(L // 2, L - 2))
        inside = (t >= a) & (t <= b)
        shape = [np.ones(L), (t - a) / (b - a), (b - t) / (b - a)][c]
        X.append(((6 + rng.standard_normal()) * inside * shape + rng.standard_normal(L))[:, None])
        y.append(["cylinder", "bell", "funnel"][c])
    return X, np.array(y)


def test_as_padded_masks_trailing_padding_and_refuses_inner_nan() -> None:
    x, mask = as_padded([np.ones((3, 2)), np.ones((5, 2))])
    assert x.shape == (2, 5, 2) and mask.sum(1).tolist() == [3, 5] and x[0, 3:].sum() == 0
    nan_padded = np.ones((2, 4, 1))
    nan_padded[0, 2:] = np.nan
    assert as_padded(nan_padded)[1].sum(1).tolist() == [2, 4]
    inner = np.ones((1, 4, 1))
    inner[0, 1] = np.nan
    with pytest.raises(ValueError, match="series 0 has NaN at step 1"):
        as_padded(inner)
    with pytest.raises(ValueError, match="same number of features"):
        as_padded([np.ones((3, 2)), np.ones((3, 1))])
    with pytest.raises(TypeError, match="dtype"):
        as_padded(np.array([["a", "b"]]))
    nft, _ = as_padded(np.zeros((2, 3, 7)), layout="NFT")
    assert nft.shape == (2, 7, 3)


def test_stratified_split_keeps_every_class_on_both_sides() -> None:
    y = np.array([0] * 20 + [1] * 5 + [2] * 2)
    tr, va = stratified_split(y, 0.2, seed=1)
    assert set(y[va]) == {0, 1, 2} and set(y[tr]) == {0, 1, 2}
    assert np.intersect1d(tr, va).size == 0 and tr.size + va.size == y.size


def test_fit_predict_variable_length_string_labels_and_reload(tmp_path: Path) -> None:
    X, y = _shapes(90)
    clf = SequenceClassifier(preset="inception_compact", min_steps=250, val_size=0.2, random_state=0)
    assert clf.fit(X[:60], y[:60]) is clf
    assert clf.classes_.tolist() == ["bell", "cylinder", "funnel"]
    proba = clf.predict_proba(X[60:])
    assert proba.shape == (30, 3) and np.allclose(proba.sum(1), 1)
    acc = clf.score(X[60:], y[60:])
    assert acc > 0.7, f"test accuracy {acc:.2f} on an easy 3-class set"
    assert clf.temperature_ != 1.0  # fitted on the validation split
    clf.save(tmp_path / "clf")
    back = SequenceClassifier.load(tmp_path / "clf")
    np.testing.assert_allclose(back.predict_proba(X[60:]), proba, atol=1e-6)
    assert back.predict(X[60:63]).dtype.kind == "U"
    with pytest.raises(ValueError, match="features per step"):
        back.predict(np.zeros((2, 10, 3)))


def test_padding_does_not_change_a_prediction() -> None:
    X, y = _shapes(30, seed=2)
    clf = SequenceClassifier(preset="inception_compact", min_steps=30).fit(X, y)
    alone = clf.predict_proba([X[0]])
    with_longer = clf.predict_proba([X[0], np.ones((200, 1))])[:1]
    np.testing.assert_allclose(with_longer, alone, atol=1e-5)


def test_bad_labels_and_overrides_are_named() -> None:
    X, _ = _shapes(6)
    with pytest.raises(ValueError, match="single class"):
        SequenceClassifier(min_steps=1).fit(X, ["a"] * 6)
    with pytest.raises(ValueError, match="one label per series"):
        SequenceClassifier(min_steps=1).fit(X, ["a", "b"])
    with pytest.raises(Exception, match=r"model\.' or 'train\."):
        SequenceClassifier(min_steps=1, overrides={"lr": 1.0}).fit(X, ["a", "b"] * 3)
    with pytest.raises(RuntimeError, match="not fitted"):
        SequenceClassifier().predict(X)


def test_readme_example_runs_as_written(tmp_path: Path) -> None:
    readme = (ROOT / "README.md").read_text()
    m = re.search(r"<!-- readme-example: sequence-classifier -->\n```python\n(.*?)```", readme, re.S)
    assert m, "README.md lost its SequenceClassifier example"
    script = tmp_path / "example.py"
    script.write_text(m.group(1))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    out = subprocess.run([sys.executable, str(script)], cwd=tmp_path, env=env, capture_output=True,
                         text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    acc = float(re.search(r"test accuracy ([0-9.]+)", out.stdout).group(1))  # type: ignore[union-attr]
    assert acc >= 0.8, out.stdout
    assert (tmp_path / "runs" / "sines" / "manifest.json").is_file()


def _write_npz(path: Path, n_train: int = 45, n_test: int = 30) -> None:
    X, y = _shapes(n_train + n_test, seed=4)
    T = max(len(x) for x in X)
    padded = np.full((len(X), T, 1), np.nan, dtype=np.float32)
    for i, x in enumerate(X):
        padded[i, : len(x)] = x
    np.savez(path, X=padded[:n_train], y=y[:n_train], X_test=padded[n_train:], y_test=y[n_train:])


def test_cli_train_arrays_without_a_store_scores_beside_baselines(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from moola.cli import app

    _write_npz(tmp_path / "shapes.npz")
    out = tmp_path / "run"
    res = CliRunner().invoke(app, ["train", "--arrays", str(tmp_path / "shapes.npz"), "--out", str(out),
                                   "--preset", "inception_compact", "min_steps=150", "train.grad_clip=2.0"])
    assert res.exit_code == 0, res.output
    assert "best baseline" in res.output and "minirocket" in res.output
    import json

    m = json.loads((out / "metrics.json").read_text())
    assert set(m["baselines"]) == {"majority", "logistic", "minirocket"} and m["test_accuracy"] > 0.6
    assert SequenceClassifier.load(out).train_config_.grad_clip == 2.0
    bad = CliRunner().invoke(app, ["train", "--arrays", str(tmp_path / "shapes.npz"), "epochs_x=3"])
    assert bad.exit_code == 2 and "not a SequenceClassifier parameter" in bad.output
    both = CliRunner().invoke(app, ["train", "--arrays", "a.npz", "--config", "b.yaml"])
    assert both.exit_code == 2 and "exactly one of --config" in both.output


def test_labeled_parquet_long_format_and_its_errors(tmp_path: Path) -> None:
    import polars as pl

    from moola.pipelines.classify import load_labeled_arrays

    X, y = _shapes(8, seed=5)
    rows = [{"series": i, "label": str(y[i]), "split": "train" if i < 6 else "test", "v": float(v)}
            for i, x in enumerate(X) for v in x[:, 0]]
    pl.DataFrame(rows).write_parquet(tmp_path / "long.parquet")
    d = load_labeled_arrays(tmp_path / "long.parquet")
    assert len(d["X"]) == 6 and len(d["X_test"]) == 2 and d["X"][0].shape == (len(X[0]), 1)
    assert d["y"].tolist() == y[:6].tolist()
    pl.DataFrame(rows).with_columns(pl.lit("dev").alias("split")).write_parquet(tmp_path / "bad.parquet")
    with pytest.raises(ValueError, match="valid values: train, test"):
        load_labeled_arrays(tmp_path / "bad.parquet")
    np.savez(tmp_path / "no_y.npz", X=np.zeros((2, 3, 1)))
    with pytest.raises(KeyError, match=r"missing array\(s\) \['y'\]"):
        load_labeled_arrays(tmp_path / "no_y.npz")


def test_pretraining_starts_every_member_from_the_autoencoder_encoder() -> None:
    """pretrain_steps trains the preset's LSTM as a masked autoencoder on the inputs (labels
    unused); the classifier's encoder then starts from those weights, not from a fresh init."""
    import torch

    from moola.models import build_model

    X, y = _shapes(24, T=48, seed=6)
    clf = SequenceClassifier(preset="jade_compact", min_steps=1, epochs=1, lr=1e-9,
                             pretrain_steps=20, random_state=3)
    clf.fit(X[:12], y[:12], X_unlabeled=X[12:])
    torch.manual_seed(3)
    fresh = build_model(clf.model_config_).state_dict()
    got = clf.models_[0].state_dict()
    enc = [k for k in got if k.startswith("encoder.")]
    assert enc and all(not torch.allclose(got[k], fresh[k]) for k in enc if got[k].ndim > 1)
    with pytest.raises(ValueError, match="per-bar recurrent encoder"):
        SequenceClassifier(preset="inception_compact", min_steps=1, pretrain_steps=5).fit(X, y)


def test_time_channel_is_on_for_ragged_sets_and_carries_length() -> None:
    """Masking hides padding and so each series' length; the t / T channel gives it back, and
    padding still changes nothing."""
    from moola.pipelines.classify import SequenceClassifier as SC

    rng = np.random.default_rng(7)
    X = [rng.standard_normal((L, 1)).astype(np.float32) for L in (20, 60) * 12]  # noise, class = length
    y = ["short", "long"] * 12
    clf = SC(preset="inception_compact", min_steps=200).fit(X, y)
    assert clf.time_channel_ and clf.model_config_.n_features == 2
    assert clf.score(X, y) == 1.0
    same = SC(preset="inception_compact", min_steps=1).fit([x[:20] for x in X], y)
    assert not same.time_channel_ and same.model_config_.n_features == 1
    alone = clf.predict_proba([X[0]])
    np.testing.assert_allclose(clf.predict_proba([X[0], np.ones((90, 1))])[:1], alone, atol=1e-5)
