"""The pointer head on a transferred, frozen encoder: it must reach the pointers' base rate.

Why: the shipped patterns sit at nearly fixed bars before the window's end (predicting the
training median gives a mean error of ~2.4 bars). A from-scratch encoder learns to carry that
position in its per-bar states; a frozen transferred one cannot, and a per-bar linear head with
no position term then stayed 20-40 bars off (the pretrained arms of ``moola oof``). The head's
position prior is what lets it learn the base rate on any frozen encoder.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from moola.datasets import stratified_group_kfold
from moola.datasets.normalize import Standardizer
from moola.datasets.tasks import LabeledSet, LabeledWindowsData, load_labeled
from moola.models import build_model, jade_compact
from moola.models.encoders import RNNEncoder
from moola.models.heads import PointerHead
from moola.models.transfer import EncoderSpec, freeze, transfer_encoder
from moola.training import ClassificationObjective

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def shipped(tmp_path_factory) -> LabeledSet:
    return load_labeled(LabeledWindowsData(), Path(tmp_path_factory.mktemp("ptr")))


def _frozen_transfer_pointer_mae(data: LabeledSet, prior_gain: float) -> tuple[float, float]:
    """(test pointer MAE, train-median MAE) of jade_compact whose transferred encoder is frozen.

    The source is another seed's BiLSTM passed in memory, through the real transfer and freeze
    path; training mirrors an OOF cell (AdamW 2e-3, batch 32, 12 epochs, clip 1.0, the
    classification objective with its pointer term), on fold 0 of a 3-fold grouped split.
    """
    fold = stratified_group_kfold(data.spans, data.y, n_splits=3, seed=0)[0]
    tr, te = fold.train, fold.test
    norm = Standardizer().fit(data.x[tr])
    x_tr = torch.tensor(norm.transform(data.x[tr]), dtype=torch.float32)  # (N, T, F)
    x_te = torch.tensor(norm.transform(data.x[te]), dtype=torch.float32)
    y_tr = torch.tensor(data.y[tr])
    assert data.pointers is not None
    p_tr = torch.tensor(data.pointers[tr], dtype=torch.long)  # (N, 2)

    cfg = jade_compact(n_features=data.x.shape[2], n_classes=len(data.classes))
    torch.manual_seed(1)
    source = RNNEncoder(data.x.shape[2], hidden=56, layers=2, bidirectional=True)
    spec = EncoderSpec.from_encoder(source)
    state = {f"encoder.rnn.{k}": v for k, v in source.rnn.state_dict().items()}
    torch.manual_seed(0)
    model = build_model(cfg)
    model.heads["pointer"] = PointerHead(model.encoder.out_dim, prior_gain=prior_gain)
    report = transfer_encoder(model, (spec, state), "full")
    assert report.n_transferred == report.n_target_encoder_tensors == 16
    freeze(model, report.transferred_names)

    obj = ClassificationObjective(len(data.classes), pointer_weight=0.5)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=2e-3,
                            weight_decay=0.01)
    gen = torch.Generator().manual_seed(0)
    for _ in range(12):
        model.train()
        order = torch.randperm(len(tr), generator=gen)
        for b in range(0, len(tr), 32):
            i = order[b:b + 32]
            loss = obj.loss(model({"x": x_tr[i]}), {"y": y_tr[i], "pointers": p_tr[i]})
            opt.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
    model.eval()
    with torch.no_grad():
        out = model({"x": x_te})
    pred = torch.stack([out["start_logits"].argmax(-1), out["end_logits"].argmax(-1)], 1).numpy()
    median = np.round(np.median(data.pointers[tr], axis=0))
    return (float(np.abs(pred - data.pointers[te]).mean()),
            float(np.abs(median - data.pointers[te]).mean()))


def test_head_on_a_frozen_transferred_encoder_reaches_the_base_rate(shipped):
    mae, base = _frozen_transfer_pointer_mae(shipped, prior_gain=PointerHead(1).prior_gain)
    assert base < 4.0  # the premise: the shipped pointers are nearly positional
    assert mae <= base + 2.0, (mae, base)


def test_without_a_usable_prior_the_frozen_head_is_far_off(shipped):
    """The cause, kept as a check: gain 0 is the old head (no position term)."""
    mae, base = _frozen_transfer_pointer_mae(shipped, prior_gain=0.0)
    assert mae > base + 10.0, (mae, base)


@settings(max_examples=40, deadline=None)
@given(T=st.integers(1, 40), max_len=st.integers(1, 30), d=st.integers(1, 6),
       seed=st.integers(0, 2**16))
def test_prior_is_counted_from_the_last_bar(T, max_len, d, seed):
    """With no content weight the logits are the prior read backwards from the window's end;
    prepending bars never moves the prior of the bars already there (clamped past max_len)."""
    g = torch.Generator().manual_seed(seed)
    head = PointerHead(d, max_len=max_len, prior_gain=3.0)
    with torch.no_grad():
        head.fc.weight.zero_()
        head.position_prior.copy_(torch.randn(max_len, 2, generator=g))
    h = torch.randn(2, T, d, generator=g)  # (B, T, D)
    out = head(h)
    back = [min(T - 1 - t, max_len - 1) for t in range(T)]
    want = 3.0 * head.position_prior.detach()[back]  # (T, 2)
    assert torch.allclose(out["start_logits"], want[:, 0].expand(2, T))
    assert torch.allclose(out["end_logits"], want[:, 1].expand(2, T))
    longer = head(torch.cat([torch.randn(2, 5, d, generator=g), h], dim=1))
    assert torch.allclose(longer["start_logits"][:, 5:], out["start_logits"])


def test_a_checkpoint_from_before_the_prior_loads_as_the_same_function():
    head = PointerHead(8)
    old = {"fc.weight": torch.randn(2, 8)}  # what the head saved before it had a prior
    head.load_state_dict(old)  # strict: the missing prior is filled, nothing else is relaxed
    assert torch.equal(head.position_prior, torch.zeros_like(head.position_prior))
    h = torch.randn(3, 11, 8)  # (B, T, D)
    logits = h @ old["fc.weight"].T  # (B, T, 2)
    out = head(h)
    assert torch.allclose(out["start_logits"], logits[..., 0])
    assert torch.allclose(out["end_logits"], logits[..., 1])
    with pytest.raises(RuntimeError, match=r"fc\.weight"):
        PointerHead(8).load_state_dict({"position_prior": torch.zeros(512, 2)})
