"""The one training loop on real windows: every preset overfits 32 samples, runs are seeded,
optimizers and LR schedules do what the config documents, bf16 runs, early stopping restores
the best epoch, the loss options change the loss, and ``evaluate`` keeps input order."""

from __future__ import annotations

import math
from itertools import pairwise
from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from rich.console import Console
from safetensors.torch import load_file

import moola.training.trainer as trainer_mod
from _train_helpers import (
    ALL_PRESETS,
    DIRECTION_PRESETS,
    direction_windows,
    ohlc_windows,
    quiet_config,
    seeded_model,
    state_digest,
    states_equal,
    windows_for,
)
from moola.models import build_model, transformer_direction
from moola.training import (
    Callback,
    ClassificationObjective,
    DirectionObjective,
    TensorData,
    Trainer,
    epoch_order,
)

# one torch thread per test; tiny sets make the parameter-ratio guard fire
pytestmark = [pytest.mark.usefixtures("one_torch_thread"),
              pytest.mark.filterwarnings("ignore::moola.training.guards.GuardWarning")]


def _fit(model, objective, train, val=None, callbacks=(), run_dir=None, **cfg) -> tuple[Trainer, Any]:
    cfg.setdefault("num_threads", 1)
    t = Trainer(model, objective, quiet_config(**cfg), run_dir=run_dir, callbacks=callbacks,
                show_progress=False,
                console=Console(quiet=True))
    return t, t.fit(train, val)


def _small_transformer(seed: int = 0, n_features: int = 31):
    """A dropout-free direction transformer: its forward depends on the weights alone."""
    torch.manual_seed(seed)
    return build_model(transformer_direction(n_features, d_model=32, heads=4, layers=1, ff=64,
                                             dropout=0.0))


# ---------------------------------------------------------------------------- overfitting


class StopWhenFit(Callback):
    """Stop once the eval-mode training accuracy reaches the target (bounds the runtime)."""

    def __init__(self, target: float) -> None:
        self.target = target

    def on_epoch_end(self, trainer, epoch, logs):
        if trainer.train_eval_metrics()["accuracy"] >= self.target:
            trainer.stop_training = True


@pytest.mark.slow
@pytest.mark.parametrize("preset", ALL_PRESETS)
def test_each_preset_overfits_32_real_samples(preset):
    d = windows_for(preset, 32)
    assert d["x"].shape == (32, 105, 31 if preset in DIRECTION_PRESETS else 4)
    assert 0.25 < d["y"].mean() < 0.75  # both classes present: 95% is not the majority share
    objective = DirectionObjective() if preset in DIRECTION_PRESETS else ClassificationObjective(2)
    model = seeded_model(preset, seed=0)
    data = TensorData(d)
    t, res = _fit(model, objective, data, callbacks=[StopWhenFit(0.95)], epochs=200, batch_size=8,
                  optimizer={"lr": 3e-3, "weight_decay": 0.0})
    loss, metrics, _ = t.evaluate(data)  # independent of the loop's own logs
    assert metrics["accuracy"] >= 0.95, (preset, len(res.history), res.history[-1])
    assert loss < res.history[0]["train_loss"] * 0.8
    if preset in ("jade", "jade_compact"):  # the pointer head learned as well
        assert "pointer_mae" in metrics
        assert metrics["pointer_mae"] < res.history[0]["train_pointer_mae"]


# ------------------------------------------------------------------------------ seeding


def test_same_seed_gives_bitwise_identical_weights_and_another_seed_differs():
    """Dropout, shuffling and init all follow the seed: two runs agree bit for bit."""
    data = TensorData(ohlc_windows(24, pointers=True))

    def run(init_seed: int, train_seed: int, disturb: bool = False) -> tuple[dict, list]:
        m = seeded_model("jade_compact", seed=init_seed)
        if disturb:  # fit seeds dropout itself: the global RNG state before it must not matter
            torch.manual_seed(12345)
            torch.rand(7)
        _, res = _fit(m, ClassificationObjective(2), data, epochs=2, batch_size=8, seed=train_seed)
        return {k: v.clone() for k, v in m.state_dict().items()}, res.history

    a, ha = run(0, 0)
    b, hb = run(0, 0)
    assert states_equal(a, b)
    assert [h["train_loss"] for h in ha] == [h["train_loss"] for h in hb]
    d, _ = run(0, 0, disturb=True)
    assert states_equal(a, d)
    c, _ = run(0, 1)  # only the training seed (shuffle + dropout) differs
    assert not states_equal(a, c)
    e, _ = run(1, 0)  # only the init differs
    assert not states_equal(a, e)


def test_epoch_order_depends_only_on_seed_and_epoch():
    assert torch.equal(epoch_order(50, 3, 2), epoch_order(50, 3, 2))
    assert not torch.equal(epoch_order(50, 3, 2), epoch_order(50, 3, 1))
    assert not torch.equal(epoch_order(50, 3, 2), epoch_order(50, 4, 2))
    assert sorted(epoch_order(50, 3, 2).tolist()) == list(range(50))


# --------------------------------------------------------------------------- optimizers


@pytest.fixture
def captured(monkeypatch) -> dict[str, list]:
    """The optimizer the loop builds, and the LR of param group 0 at each optimizer step."""
    got: dict[str, list] = {"opt": [], "lr": []}
    real = trainer_mod.build_optimizer

    def build(cfg, params):
        opt = real(cfg, params)
        opt.register_step_pre_hook(lambda o, a, k: got["lr"].append(o.param_groups[0]["lr"]))
        got["opt"].append(opt)
        return opt

    monkeypatch.setattr(trainer_mod, "build_optimizer", build)
    return got


def _reference_optimizer(name: str, params, lr: float) -> torch.optim.Optimizer:
    from pytorch_optimizer import AdaBelief

    wd = 1e-2
    return {
        "adamw": lambda: torch.optim.AdamW(params, lr=lr, weight_decay=wd, betas=(0.9, 0.999)),
        "adam": lambda: torch.optim.Adam(params, lr=lr, weight_decay=wd, betas=(0.9, 0.999)),
        "sgd": lambda: torch.optim.SGD(params, lr=lr, weight_decay=wd, momentum=0.9),
        "adabelief": lambda: AdaBelief(params, lr=lr, weight_decay=wd, betas=(0.9, 0.999)),
    }[name]()


@pytest.mark.parametrize("name", ["adamw", "adam", "sgd", "adabelief"])
def test_each_optimizer_steps_exactly_like_its_torch_reference(name, captured):
    """Three steps through the loop equal three hand-written steps of the named optimizer
    with the configured hyperparameters, on the same batches in the same order."""
    d = direction_windows(24)
    lr = 3e-3
    model = _small_transformer()
    init = {k: v.clone() for k, v in model.state_dict().items()}
    _fit(model, DirectionObjective(), TensorData(d), epochs=1, batch_size=8, grad_clip=None,
         seed=4, optimizer={"name": name, "lr": lr, "weight_decay": 1e-2})
    assert type(captured["opt"][0]).__name__.lower() == name
    assert captured["lr"] == [lr] * 3

    ref = _small_transformer()
    assert states_equal(ref.state_dict(), init)
    opt = _reference_optimizer(name, ref.parameters(), lr)
    order = epoch_order(24, 4, 0)
    x, y = torch.from_numpy(d["x"]), torch.from_numpy(d["y"])
    ref.train()
    for b in range(3):
        idx = order[b * 8:(b + 1) * 8]
        loss = F.binary_cross_entropy_with_logits(ref({"x": x[idx]})["direction"], y[idx].float())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    got, want = model.state_dict(), ref.state_dict()
    assert not states_equal(got, init)
    for k in want:
        torch.testing.assert_close(got[k], want[k], rtol=1e-6, atol=1e-7, msg=k)


# --------------------------------------------------------------------------- schedulers


def _sched_run(captured, epochs: int, n: int = 8, batch_size: int = 2, lr: float = 3e-3,
               val: TensorData | None = None, **sched) -> tuple[list[float], Any]:
    d = TensorData(direction_windows(n))
    _, res = _fit(_small_transformer(), DirectionObjective(), d, val, epochs=epochs,
                  batch_size=batch_size, optimizer={"lr": lr}, scheduler=sched)
    return captured["lr"], res


def test_no_scheduler_keeps_the_lr(captured):
    lrs, _ = _sched_run(captured, epochs=2, name="none")
    assert lrs == [3e-3] * 8


def test_warmup_ramps_linearly_then_holds(captured):
    lrs, _ = _sched_run(captured, epochs=2, name="none", warmup_steps=5)
    want = [3e-3 * (i + 1) / 5 for i in range(5)] + [3e-3] * 3
    assert lrs == pytest.approx(want, rel=1e-12, abs=0)


def test_cosine_warm_restarts_follow_the_formula_and_restart(captured):
    lrs, _ = _sched_run(captured, epochs=4, name="cosine_warm_restarts", T_0=2, eta_min=1e-4)
    base, eta, nb = 3e-3, 1e-4, 4
    want = [eta + (base - eta) * (1 + math.cos(math.pi * ((e + b / nb) % 2) / 2)) / 2
            for e in range(4) for b in range(nb)]
    assert lrs == pytest.approx(want, rel=1e-9, abs=0)
    assert lrs[0] == pytest.approx(base) and lrs[8] == pytest.approx(base)  # restart at epoch 3
    assert all(lrs[i + 1] < lrs[i] for i in range(7))  # decays within the cycle
    assert lrs[7] < 0.1 * base


def test_cosine_warm_restarts_with_t_mult_lengthens_cycles(captured):
    lrs, _ = _sched_run(captured, epochs=7, n=4, name="cosine_warm_restarts", T_0=2, T_mult=2)
    starts = [i for i, lr in enumerate(lrs) if lr == pytest.approx(3e-3)]
    assert starts == [0, 4, 12]  # cycles of 2 and 4 epochs (2 steps each)


def test_cosine_warm_restarts_with_warmup_scales_the_cosine(captured):
    lrs, _ = _sched_run(captured, epochs=2, name="cosine_warm_restarts", T_0=2, warmup_steps=4)
    cos = [3e-3 * (1 + math.cos(math.pi * (s / 4) / 2)) / 2 for s in range(8)]
    want = [c * min(1.0, (i + 1) / 4) for i, c in enumerate(cos)]
    assert lrs == pytest.approx(want, rel=1e-9, abs=0)


def test_one_cycle_rises_to_its_peak_then_anneals(captured):
    lrs, _ = _sched_run(captured, epochs=5, name="one_cycle", max_lr=1e-2, pct_start=0.3)
    assert len(lrs) == 20
    peak = int(np.argmax(lrs))
    assert lrs[peak] == pytest.approx(1e-2, rel=1e-9)
    assert peak == round(0.3 * 20) - 1
    assert lrs[0] == pytest.approx(1e-2 / 25, rel=1e-9)  # torch's default div_factor
    assert lrs[-1] == pytest.approx(1e-2 / 25 / 1e4, rel=1e-6, abs=0)  # final_div_factor
    assert all(a < b for a, b in pairwise(lrs[:peak + 1]))
    assert all(a > b for a, b in pairwise(lrs[peak:]))


def test_one_cycle_peak_defaults_to_the_optimizer_lr(captured):
    lrs, _ = _sched_run(captured, epochs=5, name="one_cycle")
    assert max(lrs) == pytest.approx(3e-3, rel=1e-9) and lrs[0] == pytest.approx(3e-3 / 25)


class DetachedDirection(DirectionObjective):
    """The classic detached-graph bug: the loss is computed from detached outputs, so every
    gradient is exactly 0, the weights never move and every metric is flat."""

    def loss(self, out, batch):
        flat = super().loss({"direction": out["direction"].detach()}, batch)
        return flat + 0.0 * out["direction"].sum()


def test_plateau_halves_the_lr_when_the_metric_is_flat(captured):
    """After ``patience`` (1) flat epochs the LR is cut by ``factor``, and again 2 epochs later."""
    d = TensorData(direction_windows(8))
    val = TensorData(direction_windows(8, offset=50 * 105))
    _, res = _fit(_small_transformer(), DetachedDirection(), d, val, epochs=6, batch_size=4,
                  optimizer={"lr": 1e-3, "weight_decay": 0.0},
                  scheduler={"name": "plateau", "patience": 1, "factor": 0.5})
    vloss = [h["val_loss"] for h in res.history]
    assert len(set(vloss)) == 1  # flat indeed
    per_epoch = [h["lr"] for h in res.history]
    assert per_epoch == pytest.approx([1e-3, 1e-3, 1e-3, 5e-4, 5e-4, 2.5e-4], rel=1e-12, abs=0)
    assert captured["lr"] == pytest.approx([lr for lr in per_epoch for _ in range(2)], rel=1e-12, abs=0)


def test_plateau_keeps_the_lr_while_the_metric_improves(captured):
    """patience 0: an epoch that improves the best val_loss keeps the LR, any other halves it."""
    d = TensorData(ohlc_windows(32))
    thr = float(np.median(d.tensors["x"][:, -1, 3]))
    y = (d.tensors["x"][:, -1, 3] > thr).long()  # learnable: the last bar's close return
    train = TensorData({"x": d.tensors["x"], "y": y})
    _, res = _fit(_small_transformer(n_features=4), DirectionObjective(), train, train,
                  epochs=6, batch_size=8, optimizer={"lr": 3e-3},
                  scheduler={"name": "plateau", "patience": 0, "factor": 0.5})
    vloss = [h["val_loss"] for h in res.history]
    lr = [h["lr"] for h in res.history]
    best, kept = math.inf, 0
    for e in range(5):  # the metric of epoch e sets the LR of epoch e + 1
        improved = vloss[e] < best * (1 - 1e-4)  # torch's default relative threshold
        if improved:
            best = vloss[e]
            kept += e > 0
        assert lr[e + 1] == pytest.approx(lr[e] * (1.0 if improved else 0.5)), (e, vloss, lr)
    assert kept >= 2, (vloss, lr)  # it did improve after epoch 1, and kept the LR then


@pytest.mark.parametrize(("monitor", "with_val", "source"), [
    ("val_loss", True, "val_loss"),
    ("val_accuracy", True, "val_accuracy"),
    ("val_loss", False, "train_loss"),
    ("val_accuracy", False, "train_accuracy"),  # max mode must watch an accuracy, not a loss
    ("train_loss", True, "train_loss"),
])
def test_plateau_watches_the_monitored_metric(monkeypatch, monitor, with_val, source):
    seen: list[float] = []
    real_step = torch.optim.lr_scheduler.ReduceLROnPlateau.step

    def spy(self, metrics, *a, **k):
        seen.append(float(metrics))
        return real_step(self, metrics, *a, **k)

    monkeypatch.setattr(torch.optim.lr_scheduler.ReduceLROnPlateau, "step", spy)
    d = TensorData(direction_windows(8))
    val = TensorData(direction_windows(8, offset=50 * 105)) if with_val else None
    _, res = _fit(_small_transformer(), DirectionObjective(), d, val, epochs=3, batch_size=4,
                  scheduler={"name": "plateau", "monitor": monitor})
    assert seen == [h[source] for h in res.history]


def test_plateau_refuses_a_monitor_that_is_never_logged():
    d = TensorData(direction_windows(8))
    with pytest.raises(KeyError, match="val_acuracy"):
        _fit(_small_transformer(), DirectionObjective(), d, epochs=1, batch_size=4,
             scheduler={"name": "plateau", "monitor": "val_acuracy"})


# -------------------------------------------------------------------------------- bf16


def test_bf16_precision_runs_under_autocast_and_keeps_fp32_weights():
    d = TensorData(direction_windows(16))
    dtypes: list[torch.dtype] = []

    def run(precision: str) -> tuple[torch.nn.Module, Any, Trainer]:
        m = _small_transformer()
        lin = next(mod for mod in m.modules() if isinstance(mod, torch.nn.Linear))
        lin.register_forward_hook(lambda mod, i, o: dtypes.append(o.dtype))
        t, res = _fit(m, DirectionObjective(), d, epochs=2, batch_size=8, precision=precision)
        return m, res, t

    m16, r16, t16 = run("bf16")
    assert torch.bfloat16 in dtypes and torch.float32 not in dtypes
    dtypes.clear()
    _, r32, _ = run("fp32")
    assert set(dtypes) == {torch.float32}
    assert all(p.dtype == torch.float32 for p in m16.parameters())
    l16 = [h["train_loss"] for h in r16.history]
    l32 = [h["train_loss"] for h in r32.history]
    assert all(math.isfinite(v) for v in l16)
    assert l16 != l32 and l16 == pytest.approx(l32, abs=0.05)  # bf16 rounding, same training
    loss, _, c = t16.evaluate(d)
    assert math.isfinite(loss) and c["proba"].dtype == np.float32
    np.testing.assert_allclose(c["proba"].sum(1), 1.0, rtol=1e-6)
    # scored as served: precision="fp32" is the plain fp32 forward pass, bit for bit
    dtypes.clear()
    _, _, c32 = t16.evaluate(d, precision="fp32")
    assert set(dtypes) == {torch.float32}
    fp32_trainer = Trainer(m16, DirectionObjective(), quiet_config(precision="fp32"),
                           show_progress=False, console=Console(quiet=True))
    np.testing.assert_array_equal(c32["proba"], fp32_trainer.evaluate(d)[2]["proba"])
    assert not np.array_equal(c["proba"], c32["proba"])  # the bf16 pass does differ


def test_a_bf16_run_validates_each_epoch_in_fp32_as_served():
    """The epoch a bf16 run keeps is chosen on the fp32 scores Predictor will serve, not on the
    autocast pass: the logged val_ numbers are the fp32 evaluation of the weights, bit for bit."""
    d, v = TensorData(direction_windows(16)), TensorData(direction_windows(12, offset=16 * 105))
    m = _small_transformer()
    t, res = _fit(m, DirectionObjective(), d, v, epochs=1, batch_size=8, precision="bf16",
                  early_stopping=None)
    logged = res.history[-1]
    loss32, m32, _ = t.evaluate(v, precision="fp32")
    loss16, _, _ = t.evaluate(v)
    assert logged["val_loss"] == loss32 and logged["val_balanced_accuracy"] == m32["balanced_accuracy"]
    assert loss16 != loss32  # the autocast pass would have logged something else


@pytest.mark.parametrize(("flags", "want"), [("fpu sse avx512f avx512_bf16 avx512vl", "bf16"),
                                            ("fpu sse amx_tile amx_bf16 amx_int8", "bf16"),
                                            ("fpu sse avx2 avx512f avx512bw", "fp32")])
def test_auto_precision_is_bf16_only_on_a_cpu_that_computes_it(monkeypatch, request, tmp_path, flags,
                                                               want):
    """auto reads the CPU's flags: bf16 with AVX512-BF16 or AMX, fp32 where bf16 would be emulated
    (slower than fp32); the trainer runs what it resolved and says so in ``precision_``."""
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text(f"processor\t: 0\nmodel name\t: test\nflags\t\t: {flags}\n\n")
    real_open = open
    monkeypatch.setattr("builtins.open", lambda f, *a, **k: real_open(
        cpuinfo if str(f) == "/proc/cpuinfo" else f, *a, **k))
    trainer_mod._cpu_flags.cache_clear()  # read once a process: this test's file, then the real one
    request.addfinalizer(trainer_mod._cpu_flags.cache_clear)
    assert trainer_mod.resolve_precision("auto", torch.device("cpu")) == want
    assert trainer_mod.resolve_precision("fp32", torch.device("cpu")) == "fp32"
    assert trainer_mod.resolve_precision("bf16", torch.device("cpu")) == "bf16"
    d = TensorData(direction_windows(16))
    dtypes: list[torch.dtype] = []
    m = _small_transformer()
    lin = next(mod for mod in m.modules() if isinstance(mod, torch.nn.Linear))
    lin.register_forward_hook(lambda mod, i, o: dtypes.append(o.dtype))
    t, _ = _fit(m, DirectionObjective(), d, epochs=1, batch_size=8, precision="auto")
    assert t.precision_ == want
    assert set(dtypes) == {torch.bfloat16 if want == "bf16" else torch.float32}
    with pytest.raises(ValueError, match="valid: auto, fp32, bf16"):
        trainer_mod.resolve_precision("fp16", torch.device("cpu"))


def test_pretraining_defaults_to_auto_precision_unless_the_config_says():
    """Pretraining runs bf16 where the CPU has it (its validation loss is equal in bf16); a
    config that names a precision keeps it, and the choice survives a YAML round trip."""
    from moola.pipelines.pretrain import PretrainConfig

    assert PretrainConfig().train.precision == "auto"
    assert PretrainConfig.model_validate({"train": {"epochs": 3}}).train.precision == "auto"
    fp32 = PretrainConfig.model_validate({"train": {"epochs": 3, "precision": "fp32"}})
    assert fp32.train.precision == "fp32" and fp32.train.epochs == 3
    assert PretrainConfig.model_validate(fp32.model_dump()).train.precision == "fp32"
    assert quiet_config().precision == "fp32"  # a bare TrainConfig stays fp32


def test_run_configs_stay_fp32_unless_they_say():
    """Supervised runs keep fp32 by default: bf16-trained LSTMs scored 0.05-0.34 pp lower
    validation balanced accuracy in all 6 seed pairs (BENCHMARKS.md); auto or bf16 opt in."""
    from moola.pipelines.train import RunConfig

    for preset in ("simple_lstm", "direction_lstm", "direction_transformer", "inception_time"):
        assert RunConfig.from_dict({"preset": preset}).train.precision == "fp32", preset
    auto = RunConfig.from_dict({"preset": "simple_lstm", "train": {"precision": "auto"}})
    assert RunConfig.model_validate(auto.to_dict()).train.precision == "auto"


# ---------------------------------------------------------------------- early stopping


class Snapshots(Callback):
    """The weights at the end of every epoch (runs after EarlyStopping)."""

    def __init__(self) -> None:
        self.states: list[dict[str, torch.Tensor]] = []

    def on_epoch_end(self, trainer, epoch, logs):
        self.states.append({k: v.detach().clone() for k, v in trainer.model.state_dict().items()})


@pytest.mark.parametrize("restore_best", [True, False])
def test_early_stopping_stops_and_restores_the_best_epoch(tmp_path, restore_best):
    """Noise labels: the validation loss falls, then rises as the model memorises."""
    train = TensorData(direction_windows(32))
    val = TensorData(direction_windows(32, offset=40 * 105))
    snaps = Snapshots()
    model = _small_transformer()
    t, res = _fit(model, DirectionObjective(), train, val, callbacks=[snaps], run_dir=tmp_path,
                  epochs=60, batch_size=8, optimizer={"lr": 3e-3},
                  early_stopping={"metric": "val_loss", "patience": 3, "restore_best": restore_best})
    vloss = [h["val_loss"] for h in res.history]
    assert res.stopped_early, vloss
    best = int(np.argmin(vloss))
    assert res.best_epoch == best
    assert len(res.history) == best + 1 + 3 < 60
    assert best < len(res.history) - 1
    final = load_file(str(tmp_path / "weights.safetensors"))
    assert states_equal(final, model.state_dict())
    if restore_best:
        assert states_equal(final, snaps.states[best])
        assert not states_equal(final, snaps.states[-1])
        # the resumable checkpoint kept the same best weights
        import json

        latest = json.loads((tmp_path / "ckpt" / "latest.json").read_text())
        kept = load_file(str(tmp_path / "ckpt" / latest["dir"] / "best.safetensors"))
        assert states_equal(kept, final)
        # and evaluating the restored model gives the best epoch's validation loss
        vl, _, _ = t.evaluate(val)
        assert vl == pytest.approx(vloss[best], rel=1e-6)
    else:
        assert states_equal(final, snaps.states[-1])


def test_early_stopping_on_a_max_metric_with_min_delta():
    train = TensorData(direction_windows(32))
    val = TensorData(direction_windows(32, offset=40 * 105))
    _, res = _fit(_small_transformer(), DirectionObjective(), train, val, epochs=40, batch_size=8,
                  optimizer={"lr": 3e-3},
                  early_stopping={"metric": "val_accuracy", "mode": "max", "patience": 2,
                                  "min_delta": 0.5})
    # nothing can improve accuracy by 0.5 after the first epoch: stop after 1 + patience
    assert res.stopped_early and res.best_epoch == 0 and len(res.history) == 3


def test_early_stopping_on_a_metric_that_is_not_logged_fails_loudly():
    d = TensorData(direction_windows(8))
    with pytest.raises(KeyError, match="val_loss"):
        _fit(_small_transformer(), DirectionObjective(), d, epochs=2, batch_size=4,
             early_stopping={"metric": "val_loss"})


# --------------------------------------------------------------------------- loss options


@pytest.fixture(scope="module")
def fixed_batch() -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """Real windows through a seeded jade_compact: logits and pointer logits, fixed."""
    d = ohlc_windows(16, pointers=True)
    model = seeded_model("jade_compact", seed=0).eval()
    batch = {k: torch.from_numpy(v) for k, v in d.items()}
    with torch.no_grad():
        out = model(batch)
    # spread the logits so the options matter (a fresh model is nearly uniform)
    out["logits"] = out["logits"] * 40
    return out, batch


def _plain_ce(out, batch) -> float:
    return float(F.cross_entropy(out["logits"], batch["y"]))


def test_plain_classification_loss_is_cross_entropy(fixed_batch):
    out, batch = fixed_batch
    no_ptr = {k: v for k, v in batch.items() if k != "pointers"}
    assert float(ClassificationObjective(2).loss(out, no_ptr)) == pytest.approx(_plain_ce(out, batch))
    # focal with gamma 0 is plain CE too
    assert float(ClassificationObjective(2, focal_gamma=0.0).loss(out, no_ptr)) == \
        pytest.approx(_plain_ce(out, batch))


def test_focal_loss_changes_the_loss_as_its_formula_says(fixed_batch):
    out, batch = fixed_batch
    no_ptr = {k: v for k, v in batch.items() if k != "pointers"}
    got = float(ClassificationObjective(2, focal_gamma=2.0).loss(out, no_ptr))
    logp = F.log_softmax(out["logits"], -1).gather(1, batch["y"][:, None]).squeeze(1)
    want = float((-(1 - logp.exp()) ** 2 * logp).mean())
    assert got == pytest.approx(want, rel=1e-5)
    assert got < _plain_ce(out, batch) * 0.9  # easy samples are down-weighted


def test_label_smoothing_changes_the_loss(fixed_batch):
    out, batch = fixed_batch
    no_ptr = {k: v for k, v in batch.items() if k != "pointers"}
    got = float(ClassificationObjective(2, label_smoothing=0.2).loss(out, no_ptr))
    want = float(F.cross_entropy(out["logits"], batch["y"], label_smoothing=0.2))
    assert got == pytest.approx(want, rel=1e-6)
    assert abs(got - _plain_ce(out, batch)) > 1e-3
    # smoothing inside the focal branch: targets (1 - s) one-hot + s / C
    gotf = float(ClassificationObjective(2, focal_gamma=1.0, label_smoothing=0.2).loss(out, no_ptr))
    logp = F.log_softmax(out["logits"], -1)
    target = F.one_hot(batch["y"], 2).float() * 0.8 + 0.1
    pt = logp.exp().gather(1, batch["y"][:, None]).squeeze(1)
    wantf = float((-(target * logp).sum(-1) * (1 - pt)).mean())
    assert gotf == pytest.approx(wantf, rel=1e-5)


def test_class_weights_change_the_loss(fixed_batch):
    out, batch = fixed_batch
    no_ptr = {k: v for k, v in batch.items() if k != "pointers"}
    w = torch.tensor([3.0, 0.5])
    got = float(ClassificationObjective(2, class_weights=w).loss(out, no_ptr))
    want = float(F.cross_entropy(out["logits"], batch["y"], weight=w))
    assert got == pytest.approx(want, rel=1e-6)
    assert abs(got - _plain_ce(out, batch)) > 1e-3
    # focal + weights: weighted mean of the focal terms
    gotf = float(ClassificationObjective(2, class_weights=w, focal_gamma=2.0).loss(out, no_ptr))
    logp = F.log_softmax(out["logits"], -1).gather(1, batch["y"][:, None]).squeeze(1)
    per = -(1 - logp.exp()) ** 2 * logp
    ww = w[batch["y"]]
    assert gotf == pytest.approx(float((per * ww).sum() / ww.sum()), rel=1e-5)


def test_pointer_weight_adds_the_pointer_loss(fixed_batch):
    out, batch = fixed_batch
    base = float(ClassificationObjective(2, pointer_weight=0.0).loss(out, batch))
    assert base == pytest.approx(_plain_ce(out, batch))
    ptr = float(F.cross_entropy(out["start_logits"], batch["pointers"][:, 0])
                + F.cross_entropy(out["end_logits"], batch["pointers"][:, 1]))
    got = float(ClassificationObjective(2, pointer_weight=0.5).loss(out, batch))
    assert got == pytest.approx(base + 0.5 * ptr / 2, rel=1e-6)


def test_direction_loss_options_change_the_loss():
    d = direction_windows(16)
    m = _small_transformer().eval()
    with torch.no_grad():
        out = m({"x": torch.from_numpy(d["x"])})
    out["direction"] = out["direction"] * 10
    batch = {"y": torch.from_numpy(d["y"])}
    plain = float(DirectionObjective().loss(out, batch))
    assert plain == pytest.approx(float(F.binary_cross_entropy_with_logits(
        out["direction"], batch["y"].float())), rel=1e-6)
    smooth = float(DirectionObjective(label_smoothing=0.2).loss(out, batch))
    assert smooth == pytest.approx(float(F.binary_cross_entropy_with_logits(
        out["direction"], batch["y"].float() * 0.8 + 0.1)), rel=1e-6)
    weighted = float(DirectionObjective(pos_weight=3.0).loss(out, batch))
    assert len({round(plain, 6), round(smooth, 6), round(weighted, 6)}) == 3


# ------------------------------------------------------------------------------ evaluate


def test_evaluate_returns_predictions_in_input_order():
    d = ohlc_windows(29, pointers=True)
    model = seeded_model("jade_compact", seed=2)
    before = state_digest(model)
    t = Trainer(model, ClassificationObjective(2), quiet_config(batch_size=4), show_progress=False)
    _, metrics, c = t.evaluate(TensorData(d), batch_size=4)  # 8 batches, a ragged last one
    np.testing.assert_array_equal(c["y"], d["y"])
    np.testing.assert_array_equal(c["ptr_true"], d["pointers"])
    model.eval()
    with torch.no_grad():
        for i in (0, 5, 28):  # one window at a time
            p = torch.softmax(model({"x": torch.from_numpy(d["x"][i:i + 1])})["logits"], -1)[0].numpy()
            np.testing.assert_allclose(c["proba"][i], p, rtol=1e-5, atol=1e-6)
    assert metrics["accuracy"] == pytest.approx(float((c["proba"].argmax(1) == d["y"]).mean()))
    # a permuted input gives the permuted predictions
    perm = np.random.default_rng(0).permutation(29)
    _, _, cp = t.evaluate(TensorData({k: v[perm] for k, v in d.items()}), batch_size=7)
    np.testing.assert_array_equal(cp["y"], d["y"][perm])
    np.testing.assert_allclose(cp["proba"], c["proba"][perm], rtol=1e-5, atol=1e-6)
    assert state_digest(model) == before  # evaluate changed no weight
    assert not model.training


def test_early_stopping_ignores_the_frozen_phase_it_is_told_to():
    """A fine-tuning run keeps an epoch after unfreezing even when a frozen epoch scored best."""
    from types import SimpleNamespace

    from moola.training import EarlyStopping

    model = torch.nn.Linear(2, 1)
    stub = SimpleNamespace(model=model, stop_training=False, log=lambda _m: None)
    es = EarlyStopping("val_loss", "min", patience=2, start_epoch=3)
    for epoch, loss in enumerate([0.1, 0.2, 0.3, 0.5, 0.4, 0.45, 0.6]):
        with torch.no_grad():
            model.bias.fill_(float(epoch))
        es.on_epoch_end(stub, epoch, {"val_loss": loss})
        if stub.stop_training:
            break
    assert es.best_epoch == 4 and es.best == 0.4, "epochs 0-2 (frozen) never count as best"
    assert epoch == 6 and stub.stop_training, "patience counts from the first unfrozen epoch"
    assert float(es.best_weights["bias"]) == 4.0
    cfg = quiet_config(early_stopping={"metric": "val_loss", "patience": 2})
    assert cfg.stopping_after(3).early_stopping.start_epoch == 3
    assert cfg.stopping_after(3).stopping_after(1).early_stopping.start_epoch == 3
    assert quiet_config().stopping_after(3).early_stopping is None


# ---------------------------------------------------------------------------- min_steps


def test_min_steps_raises_epochs_and_early_stopping_waits_for_them():
    """36 samples in batches of 64 are one step per epoch: 3 epochs would be 3 steps. min_steps
    makes it 40, and a patience of 1 cannot end the run before step 40 even when the validation
    loss is worse every epoch (a learning rate far too high for the model)."""
    data = TensorData(direction_windows(36))
    val = TensorData(direction_windows(16, offset=36 * 105))
    t, res = _fit(_small_transformer(), DirectionObjective(), data, val, epochs=3, batch_size=64,
                  min_steps=40, optimizer={"lr": 0.5},
                  early_stopping={"metric": "val_loss", "patience": 1})
    assert t.epochs_ == 40 and t.batches_per_epoch_ == 1
    assert t.early_stopping_ is not None and t.early_stopping_.start_epoch == 39
    assert t.global_step_ == 40 and len(res.history) == 40
    t2, _ = _fit(_small_transformer(), DirectionObjective(), data, val, epochs=3, batch_size=64)
    assert t2.epochs_ == 3 and t2.global_step_ == 3  # without it: what was asked
