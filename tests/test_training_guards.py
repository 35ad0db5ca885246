"""Every training guard fires on a crafted broken case and stays silent on a healthy run.

Data guards (``TensorData``): object dtype, non-float x, NaN/inf x. Loop guards: NaN made by
``prepare`` inside a batch, a non-finite loss. Health guards (``GuardWarning``): more than 1000
parameters per training sample, an epoch with no optimizer step, an epoch whose weights or loss
did not change, validation accuracy 15+ points above training accuracy, class collapse (a
single predicted class, or a class recalled below 0.3, judged on the model the run keeps).
All inputs are real windows (bundled S&P 500 daily bars and BTCUSD 1-minute features).
"""

from __future__ import annotations

import io
import math
import warnings
from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np
import pytest
import torch
from rich.console import Console

from _real_data import daily_symbols
from _train_helpers import direction_windows, ohlc_windows, quiet_config, seeded_model
from moola.models import RegressionHeadConfig, build_model, count_parameters, transformer_direction
from moola.training import (
    ClassificationObjective,
    DataGuardError,
    DirectionObjective,
    GuardWarning,
    RegressionObjective,
    TensorData,
    Trainer,
)
from moola.training.guards import COLLAPSE, ONE_CLASS, single_predicted_class

# pytest.warns(match=...) re-emits the other guard warnings of a run; the tests check those
# through FitResult.warnings instead (see _kinds), so the re-emitted copies are noise
pytestmark = [pytest.mark.usefixtures("one_torch_thread"),
              pytest.mark.filterwarnings("ignore::moola.training.guards.GuardWarning")]

KINDS = {
    "ratio": "the model can memorise the set",
    "no_step": "made no optimizer step",
    "no_weight": "no weight changed",
    "same_loss": "the loss did not change",
    "gap": "points above training accuracy",
    "collapse": COLLAPSE,
}


def _kinds(messages: list[str]) -> list[str]:
    """Which guard produced each message (exactly one kind per message)."""
    out = []
    for m in messages:
        hit = [k for k, text in KINDS.items() if text in m]
        assert len(hit) == 1, m
        out += hit
    return out




@contextmanager
def no_guard_warning() -> Iterator[list[warnings.WarningMessage]]:
    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always")
        yield rec
    guard = [str(w.message) for w in rec if issubclass(w.category, GuardWarning)]
    assert not guard, guard


def _trainer(model, objective, **cfg) -> Trainer:
    return Trainer(model, objective, quiet_config(**cfg), show_progress=False,
                   console=Console(quiet=True))


# ------------------------------------------------------------------------ data guards


def test_object_dtype_input_is_refused():
    d = ohlc_windows(8)
    ragged = np.empty(8, dtype=object)  # windows of different lengths: numpy makes objects
    for i in range(8):
        ragged[i] = d["x"][i, : 100 + i]
    with pytest.raises(DataGuardError, match="object-dtype"):
        TensorData({"x": ragged, "y": d["y"]})
    with pytest.raises(DataGuardError, match="object-dtype"):
        TensorData({"x": d["x"].astype(object), "y": d["y"]})
    TensorData(d)  # the same windows as float32 pass


@pytest.mark.parametrize("dtype", [np.int64, np.int32, np.uint8, np.bool_])
def test_non_float_input_is_refused(dtype):
    d = ohlc_windows(8)
    with pytest.raises(DataGuardError, match="dtype"):
        TensorData({"x": (d["x"] * 100).astype(dtype), "y": d["y"]})


def test_non_float_tensor_input_and_non_array_are_refused():
    d = ohlc_windows(8)
    with pytest.raises(DataGuardError, match="floating point"):
        TensorData({"x": torch.from_numpy(d["x"]).long(), "y": d["y"]})
    with pytest.raises(DataGuardError, match="numpy array or tensor"):
        TensorData({"x": d["x"].tolist(), "y": d["y"]})
    # float64 is accepted and stored as float32; integer labels are fine
    td = TensorData({"x": d["x"].astype(np.float64), "y": d["y"]})
    assert td.tensors["x"].dtype == torch.float32 and td.tensors["y"].dtype == torch.int64


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_nan_or_inf_in_x_is_refused_with_its_index(bad):
    d = ohlc_windows(8)
    d["x"][5, 17, 2] = bad
    with pytest.raises(DataGuardError, match=r"1 NaN/inf value\(s\), first at index \(5, 17, 2\)"):
        TensorData(d)
    with pytest.raises(DataGuardError, match="NaN/inf"):
        TensorData({"x": torch.from_numpy(d["x"]), "y": d["y"]})


def test_nan_in_a_reconstruction_target_is_refused():
    d = ohlc_windows(4)
    target = d["x"].copy()
    target[0, 0, 0] = np.nan
    with pytest.raises(DataGuardError, match="'target'"):
        TensorData({"x": d["x"], "target": target})


# ------------------------------------------------------------------------ loop guards


class RescaledMasking(ClassificationObjective):
    """Masks bars and rescales by the kept fraction, as dropout-style augmentation does.

    ``safe=False`` is the classic bug: a window whose bars are all masked is divided by 0,
    so NaN enters the batch inside ``prepare`` (after TensorData's checks)."""

    def __init__(self, safe: bool) -> None:
        super().__init__(2)
        self.safe = safe

    def prepare(self, batch, training):
        if not training:
            return batch
        x = batch["x"]
        keep = torch.ones(x.shape[:2], dtype=x.dtype)
        keep[0] = 0.0  # the first window of each batch is masked entirely
        frac = keep.mean(1, keepdim=True)
        if self.safe:
            frac = frac.clamp_min(1.0 / x.shape[1])
        return {**batch, "x": x * keep[..., None] / frac[..., None]}


def test_nan_made_inside_a_batch_by_prepare_stops_the_loop():
    d = TensorData(ohlc_windows(16))
    model = seeded_model("jade_compact")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    t = _trainer(model, RescaledMasking(safe=False), batch_size=8)
    with pytest.raises(FloatingPointError, match=r"batch 0 of epoch 1 holds NaN/inf in 'x'"), \
            warnings.catch_warnings():
        warnings.simplefilter("ignore", GuardWarning)
        t.fit(d)
    # it stopped before any optimizer step touched the weights
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_finite_prepare_trains_normally():
    d = TensorData(ohlc_windows(16))
    t = _trainer(seeded_model("jade_compact"), RescaledMasking(safe=True), batch_size=8, epochs=1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", GuardWarning)
        res = t.fit(d)
    assert math.isfinite(res.history[0]["train_loss"])


def test_non_finite_loss_stops_the_loop():
    """A regression target is not a model input, so a NaN there surfaces as the loss."""
    d = direction_windows(8)
    y = np.log(np.linspace(1.0, 1.1, 8)).astype(np.float32)[:, None]
    y[3] = np.nan
    model = build_model(transformer_direction(31).model_copy(
        update={"direction": None, "regression": RegressionHeadConfig(horizons=[1])}))
    t = _trainer(model, RegressionObjective(), batch_size=8)
    with pytest.raises(FloatingPointError, match="non-finite loss nan at epoch 1, batch 0"), \
            warnings.catch_warnings():
        warnings.simplefilter("ignore", GuardWarning)
        t.fit(TensorData({"x": d["x"], "y": y}))


# ---------------------------------------------------------------------- health guards


def test_more_than_1000_parameters_per_sample_warns():
    d = TensorData(ohlc_windows(8, pointers=True))
    t = _trainer(seeded_model("jade"), ClassificationObjective(2), epochs=1, batch_size=8)
    with pytest.warns(GuardWarning, match=r"616,578 parameters for 8 training samples \(77,072:1"):
        res = t.fit(d)
    assert _kinds(res.warnings) == ["ratio"]


def test_parameter_ratio_threshold_is_exactly_1000():
    """direction_transformer has 85,761 parameters: 85 samples (1,009:1) warn, 86 (997:1) not."""
    model_params = count_parameters(seeded_model("direction_transformer"))
    assert model_params == 85_761
    over = direction_windows(85)
    under = direction_windows(86)
    t = _trainer(seeded_model("direction_transformer"), DirectionObjective(), epochs=1, batch_size=128)
    with pytest.warns(GuardWarning, match="85,761 parameters for 85 training samples"):
        res = t.fit(TensorData(over))
    assert _kinds(res.warnings) == ["ratio"]
    t = _trainer(seeded_model("direction_transformer"), DirectionObjective(), epochs=1, batch_size=128)
    with no_guard_warning():
        res = t.fit(TensorData(under))
    assert res.warnings == []


def test_epoch_without_an_optimizer_step_warns():
    d = ohlc_windows(8)
    empty = TensorData({"x": d["x"][:0], "y": d["y"][:0]})
    t = _trainer(seeded_model("jade_compact"), ClassificationObjective(2), epochs=2)
    with pytest.warns(GuardWarning, match="epoch 1 made no optimizer step"):
        res = t.fit(empty)
    assert _kinds(res.warnings) == ["ratio", "no_step", "no_step"]  # 0 samples: ratio too
    assert all(h["step"] == 0 for h in res.history)


def test_epoch_whose_weights_did_not_change_warns():
    """A zero learning rate in every parameter group: the optimizer steps, nothing moves."""
    d = TensorData(direction_windows(16))
    model = seeded_model("direction_transformer")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    t = Trainer(model, DirectionObjective(), quiet_config(epochs=2, batch_size=8),
                param_groups=[{"params": list(model.parameters()), "lr": 0.0}], show_progress=False,
                console=Console(quiet=True))
    with pytest.warns(GuardWarning, match=r"epoch 2: no weight changed"):
        res = t.fit(d)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert res.history[-1]["step"] == 4  # the steps did happen
    assert _kinds(res.warnings) == ["ratio", "no_weight"]


def test_epoch_whose_loss_did_not_change_warns():
    """A learning rate of 1e-20 moves only the zero-initialised biases, by ~1e-21: the weights
    differ bitwise, the loss does not (no dropout, one sample per batch)."""
    d = TensorData(direction_windows(10))
    torch.manual_seed(0)
    model = build_model(transformer_direction(31, dropout=0.0))
    zero = [n for n, p in model.named_parameters() if (p == 0).all()]
    assert zero, "expected zero-initialised biases (LayerNorm / attention)"
    before = {k: v.clone() for k, v in model.state_dict().items()}
    t = _trainer(model, DirectionObjective(), epochs=2, batch_size=1,
                 optimizer={"name": "sgd", "lr": 1e-20, "momentum": 0.0, "weight_decay": 0.0})
    with pytest.warns(GuardWarning, match=r"epoch 2: the loss did not change"):
        res = t.fit(d)
    assert not all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert _kinds(res.warnings) == ["ratio", "same_loss"]


def _last_bar_labels(d: dict[str, np.ndarray], threshold: float) -> np.ndarray:
    """A learnable real label: was the window's last close-to-close log return above the
    threshold (feature 3 is log(close / previous close), standardised)."""
    return (d["x"][:, -1, 3] > threshold).astype(np.int64)


def test_validation_accuracy_far_above_training_accuracy_warns():
    """Leakage-like: training labels are noise (next-bar direction) while the validation labels
    all equal the class the collapsed model predicts, so val accuracy ~1 vs train ~0.5."""
    train = ohlc_windows(32)
    majority = int(np.bincount(train["y"]).argmax())
    val = ohlc_windows(16, symbols=("MSFT", "KO"))
    val["y"][:] = majority
    t = _trainer(seeded_model("direction_transformer", n_features=4), DirectionObjective(),
                 epochs=2, batch_size=32)
    with pytest.warns(GuardWarning, match=r"validation accuracy .* points above training accuracy"):
        res = t.fit(TensorData(train), TensorData(val))
    last = res.history[-1]
    assert last["val_accuracy"] - last["train_accuracy"] > 0.15
    kinds = _kinds(res.warnings)
    # one class absent from val: its recall is 0, so collapse is reported too
    assert kinds.count("gap") == sum(h["val_accuracy"] - h["train_accuracy"] > 0.15
                                     for h in res.history) >= 1
    assert set(kinds) <= {"ratio", "gap", "collapse"}


def test_single_predicted_class_from_recalls():
    assert single_predicted_class([0.0, 1.0]) == 1
    assert single_predicted_class([1.0, 0.0]) == 0
    assert single_predicted_class([0.01, 0.99]) == 1  # 1 in 100 'down' windows: still one class
    assert single_predicted_class([0.0, 0.97, 0.02]) == 1
    assert single_predicted_class([0.05, 0.97]) is None  # rare, but two classes are predicted
    assert single_predicted_class([0.45, 0.55]) is None
    assert single_predicted_class([0.0, 0.0]) is None  # predicts a class that is absent
    assert single_predicted_class([1.0]) is None  # one class exists: nothing to collapse


def _dominated(share_up: int) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """Real next-bar training windows of which ``share_up`` in 20 are 'up' (up-windows kept),
    and a validation set from other symbols with both classes."""
    pool = ohlc_windows(80)
    up, down = np.flatnonzero(pool["y"] == 1), np.flatnonzero(pool["y"] == 0)
    idx = np.sort(np.concatenate([up[:share_up], down[:20 - share_up]]))
    train = {k: v[idx] for k, v in pool.items()}
    val = ohlc_windows(16, symbols=("MSFT", "KO"))
    assert 0.25 < val["y"].mean() < 0.75
    return train, val


def _recording_trainer(model, objective, **cfg) -> tuple[Trainer, io.StringIO]:
    out = io.StringIO()
    console = Console(file=out, force_terminal=True, color_system="truecolor", width=300)
    return Trainer(model, objective, quiet_config(**cfg), show_progress=False,
                   console=console), out


def test_a_model_that_predicts_one_class_is_called_collapsed_loudly():
    """Constant training labels (every real window called 'up'): the model learns the constant,
    predicts only 'up' on a two-class validation set; said in red every epoch, then once as a
    warning about the kept model."""
    train, val = _dominated(20)
    assert train["y"].min() == 1
    t, out = _recording_trainer(seeded_model("direction_transformer", n_features=4),
                                DirectionObjective(), epochs=3, batch_size=20)
    with pytest.warns(GuardWarning, match=rf"{COLLAPSE}: the kept model \(epoch 3 of 3 run\) "
                      rf"{ONE_CLASS} 1 on validation"):
        res = t.fit(TensorData(train), TensorData(val))
    assert all(h["val_recall_0"] == 0.0 and h["val_balanced_accuracy"] == 0.5 for h in res.history)
    assert _kinds(res.warnings) == ["ratio", "collapse"]
    assert "3 of 3 epochs predicted a single class" in res.warnings[-1]
    text = out.getvalue()
    red = [ln for ln in text.splitlines() if "COLLAPSE epoch" in ln]
    assert len(red) == 3 and all("\x1b[1;31m" in ln for ln in red)  # bold red, one per epoch
    assert "predicts only class 1 on validation (balanced accuracy 0.500" in text


def test_collapse_is_judged_on_the_epoch_early_stopping_keeps():
    """Early stopping ends the run before its last configured epoch and restores an earlier one:
    the guard judges that epoch (it used to skip the check when the run stopped early)."""
    train, val = _dominated(20)
    t, _ = _recording_trainer(seeded_model("direction_transformer", n_features=4),
                              DirectionObjective(), epochs=8, batch_size=20,
                              early_stopping={"metric": "val_loss", "patience": 1})
    with pytest.warns(GuardWarning, match=ONE_CLASS):
        res = t.fit(TensorData(train), TensorData(val))
    assert res.stopped_early and len(res.history) < 8
    kept = res.best_epoch + 1
    assert f"the kept model (epoch {kept} of {len(res.history)} run)" in res.warnings[-1]
    assert _kinds(res.warnings) == ["ratio", "collapse"]


def test_class_collapse_warns_when_one_class_dominates():
    """95% of the training labels are 'up' (real next-bar labels), no class weights: 'down' is
    (almost) never predicted, so the kept model is called collapsed."""
    train, val = _dominated(19)
    assert train["y"].mean() == 0.95
    t = _trainer(seeded_model("direction_transformer", n_features=4), DirectionObjective(),
                 epochs=3, batch_size=20)
    with pytest.warns(GuardWarning, match=rf"{COLLAPSE}: the kept model"):
        res = t.fit(TensorData(train), TensorData(val))
    assert res.history[-1]["val_recall_0"] < 0.3
    # the guard only judges the end of training: exactly one collapse warning
    assert _kinds(res.warnings) == ["ratio", "collapse"]


def test_a_healthy_run_raises_no_guard_warning():
    """Balanced, learnable real labels, 700 parameters per sample, a validation set from other
    symbols: every guard stays silent and the model learns."""
    symbols = tuple(s for s in daily_symbols() if s not in ("UA", "BHF"))  # >= 11 windows each
    train = ohlc_windows(120, symbols=symbols[:12])
    val = ohlc_windows(40, symbols=symbols[12:16])
    thr = float(np.median(train["x"][:, -1, 3]))
    train["y"], val["y"] = _last_bar_labels(train, thr), _last_bar_labels(val, thr)
    assert 0.3 < val["y"].mean() < 0.7
    model = seeded_model("direction_transformer", n_features=4)
    assert count_parameters(model) / 120 < 1000
    t = _trainer(model, DirectionObjective(), epochs=4, batch_size=24,
                 optimizer={"lr": 3e-3})
    with no_guard_warning():
        res = t.fit(TensorData(train), TensorData(val))
    assert res.warnings == []
    last = res.history[-1]
    assert last["val_accuracy"] >= 0.8 and last["train_accuracy"] >= 0.8
    assert min(last["val_recall_0"], last["val_recall_1"]) >= 0.3
