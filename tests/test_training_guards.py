"""Every training guard fires on a crafted broken case and stays silent on a healthy run.

Data guards (``TensorData``): object dtype, non-float x, NaN/inf x. Loop guards: NaN made by
``prepare`` inside a batch, a non-finite loss. Health guards (``GuardWarning``): more than 1000
parameters per training sample (naming a smaller preset), an epoch with no optimizer step, an
epoch whose weights or loss did not change, "trained nothing" (weights unchanged, loss at the
class prior, or a constant guess), validation accuracy above training accuracy beyond binomial
noise, class collapse (a single predicted class, or a class recalled below 0.3, judged on the
model the run keeps, whatever stopped it; classes absent from validation left out). Inputs are
real windows (bundled S&P 500 daily bars and BTCUSD 1-minute features) or noisy synthetic series.
"""

from __future__ import annotations

import io
import math
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from functools import lru_cache
from pathlib import Path

import numpy as np
import pytest
import torch
from rich.console import Console

from _real_data import daily_symbols
from _train_helpers import ROOT, direction_windows, ohlc_windows, quiet_config, seeded_model
from moola.models import (
    PRESETS,
    RegressionHeadConfig,
    build_model,
    count_parameters,
    preset_config,
    transformer_direction,
)
from moola.training import (
    Callback,
    ClassificationObjective,
    DataGuardError,
    DirectionObjective,
    GuardWarning,
    OptimizerConfig,
    RegressionObjective,
    TensorData,
    Trainer,
)
from moola.training.guards import (
    COLLAPSE,
    ONE_CLASS,
    TRAINED_NOTHING,
    loss_unchanged,
    single_predicted_class,
    smaller_presets,
    val_above_train,
    wilson_interval,
)

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
    "trained_nothing": TRAINED_NOTHING,
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
    assert _kinds(res.warnings) == ["ratio", "trained_nothing"]  # one step on 8 windows: a constant guess
    # no preset gets 8 samples within 1000:1: the advice names the smallest one
    (p, name), *_ = sorted((q, n) for n, q in _preset_sizes(4).items())
    assert f"The smallest preset for 4 features and 2 classes, {name} ({p:,} parameters" \
        in res.warnings[0] and "instead of jade with more data or pretraining" in res.warnings[0]


def test_parameter_ratio_threshold_is_exactly_1000():
    """direction_transformer has 85,761 parameters: 85 samples (1,009:1) warn, 86 (997:1) not."""
    model_params = count_parameters(seeded_model("direction_transformer"))
    assert model_params == 85_761
    over = direction_windows(85)
    under = direction_windows(86)
    t = _trainer(seeded_model("direction_transformer"), DirectionObjective(), epochs=1, batch_size=128)
    with pytest.warns(GuardWarning, match="85,761 parameters for 85 training samples"):
        res = t.fit(TensorData(over))
    # one optimizer step on next-bar noise: trained nothing as well
    assert _kinds(res.warnings) == ["ratio", "trained_nothing"]
    # the advice names the largest preset within 1000:1 for 31 features (the seeds' 62,337)
    p, name = max((q, n) for n, q in _preset_sizes(31).items() if q <= 85_000)
    assert (p, name) == (62_337, "direction_lstm") or p > 62_337
    assert f"Use the smaller preset {name} ({p:,} parameters, {p / 85:,.0f}:1) instead of " \
        "direction_transformer" in res.warnings[0]
    t = _trainer(seeded_model("direction_transformer"), DirectionObjective(), epochs=1, batch_size=128)
    res = t.fit(TensorData(under))
    assert "ratio" not in _kinds(res.warnings)


def _preset_sizes(n_features: int, n_classes: int = 2) -> dict[str, int]:
    return {n: count_parameters(build_model(preset_config(n, n_features=n_features,
                                                          n_classes=n_classes))) for n in PRESETS}


def test_parameter_advice_names_a_smaller_preset_or_says_none_is():
    """The ratio warning's advice is sized to the run's features and classes: from a large preset
    it names smaller ones; from the smallest preset it says that none is smaller."""
    sizes = _preset_sizes(4)
    big = seeded_model("jade")
    text = smaller_presets(big, n_samples=1000)
    fits = sorted((p, n) for n, p in sizes.items() if p <= 1_000_000 and p < sizes["jade"])
    p, name = fits[-1]
    assert text.startswith(f"Use the smaller preset {name} ({p:,} parameters, {p / 1000:,.0f}:1) "
                           "instead of jade"), text
    smallest = min(sizes, key=sizes.__getitem__)
    model = seeded_model(smallest, n_features=4)
    state = torch.get_rng_state()
    text = smaller_presets(model, n_samples=10)
    assert text.startswith(f"No preset is smaller than {smallest} for 4 features and 2 classes"), text
    assert torch.equal(torch.get_rng_state(), state)  # building the candidates moved no RNG


def test_epoch_without_an_optimizer_step_warns():
    d = ohlc_windows(8)
    empty = TensorData({"x": d["x"][:0], "y": d["y"][:0]})
    t = _trainer(seeded_model("jade_compact"), ClassificationObjective(2), epochs=2)
    with pytest.warns(GuardWarning, match="epoch 1 made no optimizer step"):
        res = t.fit(empty)
    # 0 samples: ratio too, and the weights end as they began
    assert _kinds(res.warnings) == ["ratio", "no_step", "no_step", "trained_nothing"]
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
    assert _kinds(res.warnings) == ["ratio", "no_weight", "trained_nothing"]
    assert "no weight differs from the start after 2 epoch(s)" in res.warnings[-1]


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
    assert _kinds(res.warnings) == ["ratio", "same_loss", "trained_nothing"]  # weights moved by 1e-21
    assert "no weight differs" not in res.warnings[-1]


def test_a_converged_loss_near_zero_is_not_a_stalled_one():
    """Seen on small labeled sets: a memorised training set's loss moves from 1.5e-5 to 1.4999e-5
    between epochs; that is convergence, not a stalled run. A loss at ln 2 that moves by 1e-9 is."""
    assert not loss_unchanged(1.52824e-05, 1.5282e-05)
    assert not loss_unchanged(0.0, 0.0)
    assert loss_unchanged(0.6931471, 0.6931471 + 1e-9)
    assert loss_unchanged(12.5, 12.5)
    assert not loss_unchanged(0.6931, 0.6921)  # a real step


def _last_bar_labels(d: dict[str, np.ndarray], threshold: float) -> np.ndarray:
    """A learnable real label: was the window's last close-to-close log return above the
    threshold (feature 3 is log(close / previous close), standardised)."""
    return (d["x"][:, -1, 3] > threshold).astype(np.int64)


def test_validation_accuracy_far_above_training_accuracy_warns():
    """Leakage-like: training labels are noise (next-bar direction) while the validation labels
    all equal the class the collapsed model predicts, so val accuracy ~1 vs train ~0.5: beyond
    the binomial noise of 16 validation and 32 training windows."""
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
    assert (t.n_val_, t.n_train_eval_) == (16, 32)
    kinds = _kinds(res.warnings)
    assert kinds.count("gap") == sum(val_above_train(h["val_accuracy"], 16, h["train_accuracy"], 32,
                                                     min_gap=0.05) for h in res.history) >= 1
    # one class is absent from val: its recall is undefined (NaN), so no collapse is reported
    assert all(math.isnan(h[f"val_recall_{1 - majority}"]) for h in res.history)
    assert "collapse" not in kinds and set(kinds) <= {"ratio", "gap", "trained_nothing"}


def test_single_predicted_class_from_recalls():
    assert single_predicted_class([0.0, 1.0]) == 1
    assert single_predicted_class([1.0, 0.0]) == 0
    assert single_predicted_class([0.01, 0.99]) == 1  # 1 in 100 'down' windows: still one class
    assert single_predicted_class([0.0, 0.97, 0.02]) == 1
    assert single_predicted_class([0.05, 0.97]) is None  # rare, but two classes are predicted
    assert single_predicted_class([0.45, 0.55]) is None
    assert single_predicted_class([0.0, 0.0]) is None  # predicts a class that is absent
    assert single_predicted_class([1.0]) is None  # one class exists: nothing to collapse
    # NaN: a class absent from the labels is left out, not counted as never predicted
    assert single_predicted_class([math.nan, 1.0]) is None  # one present class: nothing to judge
    assert single_predicted_class([math.nan, 1.0, 0.0]) == 1
    assert single_predicted_class([0.6, math.nan, 0.5]) is None


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
    # learning the one training class is a constant guess: trained nothing, said before collapse
    assert _kinds(res.warnings) == ["ratio", "trained_nothing", "collapse"]
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
    assert _kinds(res.warnings) == ["ratio", "trained_nothing", "collapse"]


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
    # the guard only judges the end of training: exactly one collapse warning (and predicting
    # the 95% class is the majority-rate constant guess: trained nothing)
    assert _kinds(res.warnings) == ["ratio", "trained_nothing", "collapse"]


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
    # train_accuracy is the training pass's (dropout on, weights moving); eval mode is higher
    assert last["val_accuracy"] >= 0.8 and last["train_accuracy"] >= 0.7
    assert t.train_eval_metrics()["accuracy"] >= 0.8
    assert min(last["val_recall_0"], last["val_recall_1"]) >= 0.3


# ---------------------------------------------- collapse whatever stopped the run, absent classes


class StopAfter(Callback):
    """Ends the run after ``epochs`` epochs by the callback route (not early stopping)."""

    def __init__(self, epochs: int) -> None:
        self.epochs = epochs

    def on_epoch_end(self, trainer, epoch, logs):
        if epoch + 1 >= self.epochs:
            trainer.stop_training = True


def test_collapse_is_judged_when_another_callback_stops_the_run():
    """A callback's ``stop_training`` ends the run after 2 of 8 epochs: the kept (last) model is
    still judged, and a collapse to the one training class is reported."""
    train, val = _dominated(20)
    t = Trainer(seeded_model("direction_transformer", n_features=4), DirectionObjective(),
                quiet_config(epochs=8, batch_size=20), callbacks=[StopAfter(2)], show_progress=False,
                console=Console(quiet=True))
    res = t.fit(TensorData(train), TensorData(val))
    assert res.stopped_early and len(res.history) == 2
    assert res.warnings[-1].startswith(f"{COLLAPSE}: the kept model (epoch 2 of 2 run) {ONE_CLASS} 1")


@lru_cache(maxsize=8)
def _sines_and_ramps(n: int, seed: int, n_classes: int = 2) -> tuple[np.ndarray, np.ndarray]:
    """``n`` noisy 100-step series in equal shares: ramps (class 0: up or down, random level),
    sines (class 1: 2-5 cycles, random phase and amplitude) and, with 3 classes, flat series
    (class 2); N(0, 0.3) noise on every step."""
    rng = np.random.default_rng(seed)
    t = np.linspace(0.0, 1.0, 100)
    y = np.arange(n) % n_classes
    rng.shuffle(y)
    x = np.empty((n, 100, 1), np.float32)
    for i in range(n):
        amp = rng.uniform(0.5, 1.5)
        if y[i] == 1:
            x[i, :, 0] = amp * np.sin(2 * np.pi * rng.uniform(2, 5) * t + rng.uniform(0, 2 * np.pi))
        elif y[i] == 0:
            x[i, :, 0] = amp * rng.choice([-1, 1]) * (2 * t - 1) + rng.uniform(-0.5, 0.5)
        else:
            x[i, :, 0] = rng.uniform(-0.5, 0.5)
        x[i, :, 0] += rng.normal(0.0, 0.3, 100)
    return x, y.astype(np.int64)


def _synthetic(n: int, seed: int, n_classes: int = 2) -> dict[str, np.ndarray]:
    x, y = _sines_and_ramps(n, seed, n_classes)
    return {"x": x.copy(), "y": y.copy()}


def _fit_synthetic(train: dict[str, np.ndarray], val: dict[str, np.ndarray], epochs: int,
                   **cfg) -> tuple[Trainer, object]:
    """direction_transformer (84k parameters for 1 feature) on sines vs ramps, lr 3e-3."""
    cfg = {"optimizer": {"lr": 3e-3}, **cfg}
    t = _trainer(seeded_model("direction_transformer", n_features=1), DirectionObjective(),
                 epochs=epochs, batch_size=16, **cfg)
    return t, t.fit(TensorData(train), TensorData(val))


def test_a_class_absent_from_validation_is_not_reported():
    """Ramps, sines and flat series learned by a 3-class classifier, validated on ramps and sines
    only: the flat class has no validation recall (NaN, not 0), so it is reported neither as
    recalled below 0.3 nor as a class the model stopped predicting."""
    val = _synthetic(72, 1, n_classes=3)
    val = {k: v[val["y"] < 2] for k, v in val.items()}
    torch.manual_seed(0)
    model = build_model(preset_config("direction_transformer", n_features=1, n_classes=3))
    t = _trainer(model, ClassificationObjective(3), epochs=4, batch_size=16, optimizer={"lr": 3e-3})
    res = t.fit(TensorData(_synthetic(144, 0, n_classes=3)), TensorData(val))
    last = res.history[-1]
    assert all(math.isnan(h["val_recall_2"]) for h in res.history)
    assert last["val_min_recall"] == min(last["val_recall_0"], last["val_recall_1"]) >= 0.5
    assert last["train_recall_2"] >= 0.6  # the flat class is learned where it exists
    assert res.warnings == []


# ---------------------------------------------------------------------------- trained nothing


def test_lr_zero_is_allowed_and_every_scheduler_keeps_it_zero():
    """lr 0 is a valid (smoke-run) setting; no scheduler divides by it or lifts it (cosine's
    eta_min is a floor for a positive lr), so the weights end as they began: trained nothing."""
    assert OptimizerConfig(lr=0.0).lr == 0.0
    with pytest.raises(ValueError, match="lr"):
        OptimizerConfig(lr=-1e-3)
    d = TensorData(_synthetic(32, 0))
    for sched in ({"name": "none", "warmup_steps": 2}, {"name": "cosine_warm_restarts", "T_0": 1,
                  "eta_min": 1e-4}, {"name": "one_cycle"}, {"name": "plateau", "monitor": "train_loss"}):
        model = seeded_model("direction_lstm", n_features=1)
        before = {k: v.clone() for k, v in model.state_dict().items()}
        t = _trainer(model, DirectionObjective(), epochs=2, batch_size=8, scheduler=sched,
                     optimizer={"lr": 0.0})
        res = t.fit(d)
        assert all(h["lr"] == 0.0 and math.isfinite(h["train_loss"]) for h in res.history), sched
        assert all(torch.equal(before[k], v) for k, v in model.state_dict().items()), sched
        assert res.warnings[-1].startswith(f"{TRAINED_NOTHING}: no weight differs from the start"), sched


def test_a_run_at_lr_zero_trained_nothing():
    """Learning rate 0 on learnable series: the per-epoch 'no weight changed' warnings stay, and
    the run ends with one trained-nothing warning (weights as they began, loss at ln 2)."""
    t, res = _fit_synthetic(_synthetic(128, 0), _synthetic(48, 1), epochs=2, optimizer={"lr": 0.0})
    kinds = _kinds(res.warnings)
    assert kinds.count("no_weight") == 1 and kinds.count("trained_nothing") == 1
    nothing = next(w for w in res.warnings if w.startswith(TRAINED_NOTHING))
    assert "no weight differs from the start after 2 epoch(s)" in nothing
    assert f"is not below {math.log(2):.4f}, the loss of predicting the class frequencies of the 128 " \
        "training labels (50%/50%)" in nothing
    assert t.train_label_counts_.tolist() == [64, 64]


@pytest.mark.parametrize("labels", ["shuffled", "unrelated_80_20"])
def test_a_constant_guess_trained_nothing(labels):
    """Labels that have nothing to do with the series (shuffled, or an unrelated 80/20 draw): the
    weights move, but the model ends a constant guess of the class prior: its loss is not below
    the prior's (ln 2 for 50/50; 0.47 for 18/82), its accuracy within noise of the majority."""
    train = _synthetic(128, 0)
    rng = np.random.default_rng(5)
    train["y"] = rng.permutation(train["y"]) if labels == "shuffled" \
        else (rng.random(128) < 0.8).astype(np.int64)
    _, res = _fit_synthetic(train, _synthetic(48, 1), epochs=3)
    nothing = [w for w in res.warnings if w.startswith(TRAINED_NOTHING)]
    assert len(nothing) == 1 and "no weight differs" not in nothing[0]
    counts = np.bincount(train["y"], minlength=2)
    prior = DirectionObjective().prior_loss(counts)
    if labels == "shuffled":
        assert prior == pytest.approx(math.log(2))
    assert res.history[-1]["train_loss"] > 0.995 * prior
    assert f"not below {prior:.4f}, the loss of predicting the class frequencies" in nothing[0]


def test_a_run_that_learns_has_not_trained_nothing():
    """Sines vs ramps learned in 4 epochs: loss well under ln 2, accuracy far above 50%: silent."""
    _, res = _fit_synthetic(_synthetic(128, 0), _synthetic(48, 1), epochs=4)
    last = res.history[-1]
    assert last["train_loss"] < 0.9 * math.log(2) and last["train_accuracy"] >= 0.85
    assert last["val_accuracy"] >= 0.8
    assert res.warnings == []


def test_prior_loss_is_the_best_constant_prediction():
    """The trained-nothing floor equals the loss of the best constant logits, with class weights,
    label smoothing and pos_weight as the objectives apply them; ln C for balanced classes."""
    from scipy.optimize import minimize

    rng = np.random.default_rng(0)
    y = torch.tensor(rng.choice(3, size=300, p=[0.6, 0.3, 0.1]))
    counts = np.bincount(y.numpy(), minlength=3)
    assert ClassificationObjective(3).prior_loss(np.array([5, 5, 5])) == pytest.approx(math.log(3))
    for obj in (ClassificationObjective(3), ClassificationObjective(3, label_smoothing=0.2,
                class_weights=torch.tensor([1.0, 2.0, 5.0]))):
        best = minimize(lambda z, o=obj: float(o.loss({"logits": torch.tensor(z).float().expand(300, 3)},
                                                      {"y": y})), np.zeros(3), method="Nelder-Mead",
                        options={"xatol": 1e-8, "fatol": 1e-10, "maxiter": 4000}).fun
        assert obj.prior_loss(counts) == pytest.approx(best, abs=1e-6)
    yb = (y == 0).long()
    obj = DirectionObjective(pos_weight=2.0, label_smoothing=0.1)
    best = minimize(lambda z: float(obj.loss({"direction": torch.tensor(z[0]).float().expand(300)},
                                             {"y": yb})), np.zeros(1), method="Nelder-Mead",
                    options={"xatol": 1e-8, "fatol": 1e-10}).fun
    assert obj.prior_loss(np.bincount(yb.numpy(), minlength=2)) == pytest.approx(best, abs=1e-6)
    assert ClassificationObjective(2, focal_gamma=2.0).prior_loss(counts[:2]) is None  # no floor


# ------------------------------------------------------------------- binomial leakage alarm


@pytest.mark.parametrize(("n_val", "fires"), [(14, False), (2000, True)])
def test_validation_above_training_is_judged_against_binomial_noise(n_val, fires):
    """The same 20-point gap (val 12/14 = 0.857 vs train 0.657 on 2,000 windows) is noise for 14
    validation windows (their 95% Wilson interval reaches down to 0.60) and leakage for 2,000;
    the old fixed 15-point rule fired on both."""
    va, tr = 12 / 14, 12 / 14 - 0.2
    assert val_above_train(va, n_val, tr, 2000) is fires
    assert wilson_interval(va, 14)[0] == pytest.approx(0.601, abs=1e-3)
    t = _trainer(seeded_model("direction_lstm", n_features=1), DirectionObjective())
    t._setup()
    t.n_val_, t.n_train_, t.n_train_eval_, t.steps_in_epoch_ = n_val, 2000, 2000, 1
    asked: list[int] = []

    def eval_mode(acc: float):
        def metrics(limit: int | None = None) -> dict[str, float]:
            asked.append(1)
            return {"accuracy": acc}
        return metrics

    t.train_eval_metrics = eval_mode(tr)  # eval mode agrees with the training pass
    t.callbacks_[0].on_epoch_end(t, 0, {"train_loss": 0.6, "train_accuracy": tr, "val_accuracy": va})
    assert _kinds(t.warnings_) == (["gap"] if fires else [])
    assert len(asked) == (1 if fires else 0)  # the eval-mode pass runs only when the pass's numbers alarm
    if fires:
        assert f"(n={n_val}) is 20 points above training accuracy 0.657 (n=2000" in t.warnings_[0]
        # the training pass was low only because of dropout / moving weights: eval mode clears it
        t.warnings_.clear()
        t.train_eval_metrics = eval_mode(va)
        t.callbacks_[0].on_epoch_end(t, 1, {"train_loss": 0.5, "train_accuracy": tr, "val_accuracy": va})
        assert "gap" not in _kinds(t.warnings_)  # (this unit call changed no weight: that one is said)


def test_wilson_interval_is_honest_at_the_edges():
    lo, hi = wilson_interval(1.0, 16)  # 16 of 16: not certainty
    assert hi == 1.0 and lo == pytest.approx(0.806, abs=1e-3)
    assert wilson_interval(0.0, 16)[0] == 0.0
    assert wilson_interval(0.5, 0) == (0.0, 1.0)  # no samples: no information
    lo, hi = wilson_interval(0.7, 10_000)
    assert lo == pytest.approx(0.7 - 1.96 * math.sqrt(0.21 / 10_000), abs=1e-4) and hi > 0.7


# ------------------------------------------------------------------------- through the CLI


def test_cli_train_at_lr_zero_says_trained_nothing_in_the_output_and_the_report(tmp_path: Path):
    """``moola train`` on the bundled demo task with ``train.optimizer.lr=0``: the warning is in
    the command's output and opens the report's banner, which is red."""
    from typer.testing import CliRunner

    from moola.cli import app

    args = ["train", "--config", str(ROOT / "configs" / "train_demo.yaml"), f"out_dir={tmp_path}",
            "train.optimizer.lr=0", "train.epochs=1", "data.stride=20", "baselines=[majority]",
            "train.device=cpu", "train.num_threads=1"]
    res = CliRunner().invoke(app, args, catch_exceptions=False)
    assert res.exit_code == 0, res.output
    out = " ".join(res.output.split())
    assert f"WARNING {TRAINED_NOTHING}: no weight differs from the start after 1 epoch(s)" in out
    html = (tmp_path / "demo_direction" / "report.html").read_text()
    banner = html.split("</h1>", 1)[1].split("</div>", 1)[0]
    assert "<b>TRAINED NOTHING: no weight differs from the start after 1 epoch(s)" in banner
    assert "#c0392b" in banner  # red


def test_collapse_warnings_name_the_classes_the_objective_knows():
    """With class names (every pipeline passes them) the warnings say 'up', not '1'."""
    train, val = _dominated(20)
    t, out = _recording_trainer(seeded_model("direction_transformer", n_features=4),
                                DirectionObjective(class_names=["down", "up"]), epochs=2, batch_size=20)
    with pytest.warns(GuardWarning, match=rf"{ONE_CLASS} up on validation \(recall down 0.00, up 1.00"):
        res = t.fit(TensorData(train), TensorData(val))
    assert "class 1" not in res.warnings[-1] and "predicts only class up" in out.getvalue()


def test_learning_curve_panels_name_their_class():
    from moola.evaluation.plots import plot_learning_curves

    history = [{"epoch": e, "train_loss": 1.0 / e, "val_recall_0": 0.5, "val_recall_1": 0.4} for e in (1, 2)]
    fig = plot_learning_curves(history, classes=["consolidation", "retracement"])
    titles = [ax.get_title() for ax in fig.axes if ax.get_title()]
    assert titles == ["loss", "recall of consolidation (recall_0)", "recall of retracement (recall_1)"]
    assert [ax.get_title() for ax in plot_learning_curves(history).axes][1] == "recall_0"


# ------------------------------------------- what the leakage alarm's confirmation pass costs


def _count_confirmations(t: Trainer) -> list[int]:
    """Wrap ``train_eval_metrics`` (the eval-mode pass over training windows) to count its calls."""
    calls: list[int] = []
    real = t.train_eval_metrics

    def counted(limit: int | None = None) -> dict[str, float]:
        calls.append(t.global_step_)
        return real(limit)

    t.train_eval_metrics = counted  # type: ignore[method-assign]
    return calls


def test_a_constant_guess_on_splits_with_other_class_shares_spends_no_confirmation_pass():
    """A constant 'up' model scores each split's 'up' share: 0.857 on validation against 0.657 on
    2,000 training windows is a 20-point gap beyond binomial noise, but both balanced accuracies
    are 0.5, so the class shares explain it: no eval-mode pass, no alarm. The same gap with a
    balanced accuracy that rises too is still confirmed (and then warned) as before."""
    t = _trainer(seeded_model("direction_lstm", n_features=1), DirectionObjective())
    t._setup()
    t.n_val_, t.n_train_, t.n_train_eval_, t.steps_in_epoch_ = 2000, 2000, 2000, 1
    asked: list[int] = []

    def eval_mode(limit: int | None = None) -> dict[str, float]:
        asked.append(1)
        return {"accuracy": 0.657}

    t.train_eval_metrics = eval_mode  # type: ignore[method-assign]
    logs = {"train_loss": 0.6, "train_accuracy": 0.657, "val_accuracy": 0.857,
            "train_balanced_accuracy": 0.5, "val_balanced_accuracy": 0.5}
    t.callbacks_[0].on_epoch_end(t, 0, logs)
    assert asked == [] and "gap" not in _kinds(t.warnings_)
    t.callbacks_[0].on_epoch_end(t, 1, {**logs, "train_loss": 0.5, "val_balanced_accuracy": 0.8})
    assert asked == [1] and "gap" in _kinds(t.warnings_)


def _offset_windows(n: int, seed: int) -> dict[str, np.ndarray]:
    """Noise windows whose level says the class (+-0.4 sd): learned within one epoch."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n)
    x = rng.standard_normal((n, 30, 1)).astype(np.float32)
    x[:, :, 0] += (2 * y[:, None] - 1) * 0.4
    return {"x": x, "y": y.astype(np.int64)}


def test_the_first_epoch_is_judged_on_the_last_quarter_of_its_pass():
    """Learned within the first epoch: validation (end-of-epoch weights) is above the whole
    pass's accuracy, which averages from random weights on, beyond binomial noise. The pass's
    last quarter is already near validation, so the run spends no eval-mode pass over training
    windows and warns of nothing; its logged train_ metrics are still the whole pass's."""
    t = _trainer(seeded_model("direction_lstm", n_features=1), DirectionObjective(),
                 epochs=2, batch_size=16, optimizer={"lr": 3e-3})
    calls = _count_confirmations(t)
    res = t.fit(TensorData(_offset_windows(512, 0)), TensorData(_offset_windows(256, 1)))
    first = res.history[0]
    assert val_above_train(first["val_accuracy"], 256, first["train_accuracy"], 512, min_gap=0.05)
    assert calls == [] and res.warnings == []
    late, n_late = t.late_pass_metrics()
    assert n_late == 128 and late["accuracy"] > res.history[-1]["train_accuracy"] - 0.1


def test_trained_nothing_is_not_confirmed_when_validation_shows_learning():
    """The last pass looks like a constant guess (its numbers are handed in), but validation's
    balanced accuracy, 0.9 on 100 windows per class, is above chance beyond noise: the guard
    neither spends the eval-mode pass nor warns. At 0.52 it confirms in eval mode (and warns)."""
    t = _trainer(seeded_model("direction_lstm", n_features=1), DirectionObjective())
    t._setup()
    t.train_label_counts_, t.val_label_counts_ = np.array([500, 500]), np.array([100, 100])
    t.n_train_, t.n_train_eval_, t.n_val_ = 1000, 1000, 200
    calls = _count_confirmations(t)
    t._train_d = None  # the pass itself is not what is tested: it answers {} when asked
    guard = t.callbacks_[0]
    guard.start_digest = None
    last = {"epoch": 3, "train_loss": 0.6932, "train_accuracy": 0.5, "train_balanced_accuracy": 0.5,
            "val_balanced_accuracy": 0.9}
    guard._trained_nothing(t, [last])
    assert calls == [] and t.warnings_ == []
    guard._trained_nothing(t, [{**last, "val_balanced_accuracy": 0.52}])
    assert calls == [0]


def test_the_leakage_alarm_looks_at_a_validation_sized_sample_before_the_whole_subset():
    """Validation 300 windows at 0.857 against a training pass at 0.657: suspicious. Eval mode
    on a 300-window random share of the 2,000-window subset scores 0.78: 7.7 points lower, but
    within the share's noise (its 95% upper bound 0.823 > validation's lower bound 0.813), so the
    whole subset is never evaluated and nothing is said. Where the share still alarms (0.657),
    the whole subset is evaluated, and the warning quotes its size."""
    t = _trainer(seeded_model("direction_lstm", n_features=1), DirectionObjective())
    t._setup()
    t.n_val_, t.n_train_, t.n_train_eval_, t.steps_in_epoch_ = 300, 2000, 2000, 1
    asked: list[int | None] = []

    def eval_mode(acc: float):
        def metrics(limit: int | None = None) -> dict[str, float]:
            asked.append(limit)
            return {"accuracy": acc}
        return metrics

    logs = {"train_loss": 0.6, "train_accuracy": 0.657, "val_accuracy": 0.857}
    t.train_eval_metrics = eval_mode(0.78)  # type: ignore[method-assign]
    t.callbacks_[0].on_epoch_end(t, 0, logs)
    assert asked == [300] and "gap" not in _kinds(t.warnings_)
    asked.clear()
    t.train_eval_metrics = eval_mode(0.657)  # type: ignore[method-assign]
    t.callbacks_[0].on_epoch_end(t, 1, {**logs, "train_loss": 0.5})
    assert asked == [300, None] and "gap" in _kinds(t.warnings_)
    assert "(n=2000, both in eval mode)" in " ".join(t.warnings_)


def test_train_eval_metrics_on_a_prefix_is_a_random_sample_of_the_fixed_subset():
    """The first k of the fixed subset are a random draw over the whole training set (not its
    first windows in time), and their metrics are cached per step and size."""
    t = _trainer(seeded_model("direction_lstm", n_features=1), DirectionObjective(), epochs=1,
                 batch_size=64)
    data = _offset_windows(1024, 3)
    t.fit(TensorData(data), TensorData(_offset_windows(128, 4)))
    head = t._train_eval_perm[:256]
    assert head.max() > 768 and head.min() < 256  # spread over the set
    full, part = t.train_eval_metrics(), t.train_eval_metrics(limit=256)
    assert set(full) == set(part) and t.train_eval_metrics(limit=256) is part
