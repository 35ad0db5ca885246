"""FreezeSchedule with the exact tensor names a transfer report lists: frozen tensors stay
bit-for-bit at their transferred values (and get no optimizer state) while frozen, train once
unfrozen, and the transferred tensors' param group runs at the lower encoder LR throughout.

Real windows (bundled S&P 500 daily bars), a real transfer (``transfer_encoder``), the real
loop (``Trainer``); the optimizer the loop builds is captured to read its state and groups.
"""

from __future__ import annotations

import pytest
import torch
from rich.console import Console
from torch import nn

import moola.training.trainer as trainer_mod
from _train_helpers import ohlc_windows, quiet_config
from moola.models import build_model, lstm_classifier
from moola.models.transfer import EncoderSpec, param_groups, transfer_encoder
from moola.training import (
    Callback,
    ClassificationObjective,
    FreezeSchedule,
    TensorData,
    Trainer,
)

H = 16
FREEZE = 2  # epochs 0 and 1 frozen
EPOCHS = 4
BASE_LR = 1e-2
ENC_LR = 1e-3  # the configured lower encoder LR


# one torch thread per test; tiny sets make the parameter-ratio guard fire
pytestmark = [pytest.mark.usefixtures("one_torch_thread"),
              pytest.mark.filterwarnings("ignore::moola.training.guards.GuardWarning")]


def _source() -> tuple[EncoderSpec, dict[str, torch.Tensor]]:
    """A seeded bidirectional 2x16 LSTM as a transfer source (distinct from any target init)."""
    torch.manual_seed(123)
    rnn = nn.LSTM(4, H, 2, batch_first=True, bidirectional=True)
    spec = EncoderSpec("lstm", 2, H, True, 4, feature_set="ohlc4", feature_schema_hash="h")
    return spec, {f"encoder.rnn.{k}": v.detach().clone() for k, v in rnn.state_dict().items()}


def _target(bidirectional: bool) -> nn.Module:
    torch.manual_seed(0)
    return build_model(lstm_classifier(4, 2, hidden=H, layers=2, bidirectional=bidirectional,
                                       attn_hidden=16, attn_heads=2, pointer=True))


@pytest.fixture
def captured(monkeypatch) -> list[torch.optim.Optimizer]:
    """The optimizer the training loop builds (it is local to ``fit``)."""
    got: list[torch.optim.Optimizer] = []
    real = trainer_mod.build_optimizer

    def build(cfg, params):
        opt = real(cfg, params)
        got.append(opt)
        return opt

    monkeypatch.setattr(trainer_mod, "build_optimizer", build)
    return got


class Recorder(Callback):
    """Checks at every optimizer step of the frozen epochs; snapshots at every epoch end."""

    def __init__(self, model: nn.Module, frozen: list[str], opts: list[torch.optim.Optimizer],
                 start: dict[str, torch.Tensor]) -> None:
        params = dict(model.named_parameters())
        self.frozen = {n: params[n] for n in frozen}
        self.opts = opts
        self.start = start
        self.epoch = -1
        self.steps_checked = 0
        self.group_lrs: list[tuple[float, ...]] = []
        self.requires_grad: dict[int, dict[str, bool]] = {}
        self.snapshots: dict[int, dict[str, torch.Tensor]] = {}
        self.state_after: dict[int, set[str]] = {}

    def on_epoch_start(self, trainer, epoch):
        self.epoch = epoch
        self.requires_grad[epoch] = {n: p.requires_grad for n, p in trainer.model.named_parameters()}

    def on_batch_end(self, trainer, step, loss, batch_size):
        (opt,) = self.opts
        self.group_lrs.append(tuple(g["lr"] for g in opt.param_groups))
        if self.epoch < FREEZE:
            for n, p in self.frozen.items():
                assert torch.equal(p.detach(), self.start[n]), f"{n} moved at step {step} while frozen"
                assert not opt.state.get(p), f"{n} has optimizer state while frozen"
            self.steps_checked += 1

    def on_epoch_end(self, trainer, epoch, logs):
        (opt,) = self.opts
        self.snapshots[epoch] = {n: p.detach().clone() for n, p in trainer.model.named_parameters()}
        self.state_after[epoch] = {n for n, p in self.frozen.items() if opt.state.get(p)}


def _run(mode: str, bidirectional: bool, headline: str,
         captured) -> tuple[nn.Module, Recorder, list[str], Trainer]:
    model = _target(bidirectional)
    report = transfer_encoder(model, _source(), mode)
    assert str(report).startswith(headline), str(report)
    names = report.transferred_names
    # the transferred values are the source's, and they are where the frozen weights must stay
    src = _source()[1]
    start = {n: p.detach().clone() for n, p in model.named_parameters()}
    for n in names:
        assert torch.equal(start[n], src[n])
    rec = Recorder(model, names, captured, start)
    groups = param_groups(model, names, base_lr=BASE_LR, encoder_lr=ENC_LR)
    cfg = quiet_config(epochs=EPOCHS, batch_size=8,
                       optimizer={"name": "adamw", "lr": BASE_LR, "weight_decay": 0.1})
    t = Trainer(model, ClassificationObjective(2), cfg, callbacks=[FreezeSchedule(names, FREEZE), rec],
                param_groups=groups, show_progress=False,
                console=Console(quiet=True))
    t.fit(TensorData(ohlc_windows(32, pointers=True)))
    return model, rec, names, t


@pytest.mark.parametrize(("mode", "bidirectional", "headline", "n_transferred"), [
    ("forward-only", False, "4/8 encoder tensors transferred", 4),
    ("full", True, "16/16 encoder tensors transferred", 16),
])
def test_frozen_tensors_stay_bitwise_then_train_once_unfrozen(mode, bidirectional, headline,
                                                              n_transferred, captured):
    model, rec, names, trainer = _run(mode, bidirectional, headline, captured)
    assert len(names) == n_transferred
    assert rec.steps_checked == FREEZE * 4  # 32 windows / batch 8: every frozen step was checked
    selected = set(names)
    for epoch in range(EPOCHS):
        frozen_now = epoch < FREEZE
        for n, rg in rec.requires_grad[epoch].items():
            # exactly the transferred names are frozen, nothing else (not a prefix match)
            assert rg == (not (frozen_now and n in selected)), (epoch, n, rg)
    # during the frozen epochs: transferred tensors bitwise at their transferred values, with no
    # optimizer state (AdamW weight decay 0.1 would have moved them had they been stepped) ...
    for epoch in range(FREEZE):
        for n in names:
            assert torch.equal(rec.snapshots[epoch][n], rec.start[n]), (epoch, n)
        assert rec.state_after[epoch] == set(), epoch
    # ... while every other parameter trained in the very first epoch
    others = [n for n, _ in model.named_parameters() if n not in selected]
    assert others
    for n in others:
        assert not torch.equal(rec.snapshots[0][n], rec.start[n]), f"{n} did not train in epoch 1"
    if mode == "forward-only":  # the untransferred encoder layer is not frozen by the names
        assert any(n.startswith("encoder.rnn.") for n in others)
    # once unfrozen they train: changed in the first unfrozen epoch, and they now have state
    for n in names:
        assert not torch.equal(rec.snapshots[FREEZE][n], rec.snapshots[FREEZE - 1][n]), n
        assert not torch.equal(rec.snapshots[EPOCHS - 1][n], rec.start[n]), n
    assert rec.state_after[FREEZE] == selected
    assert all(p.requires_grad for p in model.parameters())
    assert f"epoch {FREEZE + 1}: unfroze {n_transferred} tensors" in trainer.messages_


def test_transferred_group_runs_at_the_configured_lower_lr(captured):
    model, rec, names, _ = _run("forward-only", False, "4/8 encoder tensors transferred", captured)
    (opt,) = captured
    params = dict(model.named_parameters())
    by_name = {g["name"]: g for g in opt.param_groups}
    assert set(by_name) == {"transferred_encoder", "base"}
    enc, base = by_name["transferred_encoder"], by_name["base"]
    assert {id(p) for p in enc["params"]} == {id(params[n]) for n in names}
    assert {id(p) for p in base["params"]} == {id(p) for n, p in params.items() if n not in names}
    # the LR of each group at every optimizer step, frozen epochs and after (scheduler "none")
    order = [g["name"] for g in opt.param_groups]
    want = tuple(ENC_LR if name == "transferred_encoder" else BASE_LR for name in order)
    assert len(rec.group_lrs) == EPOCHS * 4
    assert set(rec.group_lrs) == {want}


def test_prefix_selection_and_an_empty_selection():
    """A string is a name prefix; a selection that matches nothing is an error, not a no-op."""
    model = _target(False)
    start = {n: p.detach().clone() for n, p in model.named_parameters()}
    cfg = quiet_config(epochs=1, batch_size=8)
    data = TensorData(ohlc_windows(16, pointers=True))
    t = Trainer(model, ClassificationObjective(2), cfg, callbacks=[FreezeSchedule("encoder.", 1)],
                show_progress=False,
                console=Console(quiet=True))
    t.fit(data)
    for n, p in model.named_parameters():
        assert torch.equal(p.detach(), start[n]) == n.startswith("encoder."), n
    t = Trainer(_target(False), ClassificationObjective(2), cfg,
                callbacks=[FreezeSchedule({"encoder.rnn.weight_ih_l9"}, 1)], show_progress=False,
                console=Console(quiet=True))
    with pytest.raises(ValueError, match="matches no parameter"):
        t.fit(data)
