"""Masked-reconstruction objective and masked autoencoder, through the real training loop."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from _train_helpers import quiet_config
from moola.models import build_model, preset_config
from moola.models.config import RNNEncoderConfig, TransformerEncoderConfig
from moola.pretraining import (
    AugmentConfig,
    Augmenter,
    MaskConfig,
    MaskedAutoencoder,
    MaskedReconstructionObjective,
    Normalize,
    ViewsData,
    masked_count,
    pretrain_model,
)
from moola.training import Callback, TensorData, Trainer, masked_mse
from test_augment import raw_windows

T = 105


def stats(x: torch.Tensor) -> Normalize:
    flat = x.reshape(-1, x.shape[-1])
    return Normalize(flat.mean(0), flat.std(0))


def small_mae(seed: int = 0) -> MaskedAutoencoder:
    torch.manual_seed(seed)
    return pretrain_model(RNNEncoderConfig(input_size=4, hidden=16, layers=2, bidirectional=True), 4)


def test_prepare_builds_mask_tensor_target_and_hides_masked_values() -> None:
    x = raw_windows()[:32]
    norm = stats(x)
    obj = MaskedReconstructionObjective(MaskConfig(strategy="block"), Augmenter(), norm)
    b = obj.prepare({"x": x}, training=False)
    assert b["x"].shape == (32, T, 4), "the input stays F wide: no indicator channel"
    assert b["mask"].shape == (32, T) and b["mask"].dtype == torch.bool
    assert (b["mask"].sum(1) == masked_count(T, obj.mask_cfg)).all()
    assert torch.allclose(b["target"], norm(x))  # eval: no augmentation
    m = b["mask"]
    assert (b["x"][m] == 0).all(), "masked values must not be visible in the input"
    assert torch.equal(b["x"][~m], b["target"][~m])
    assert torch.equal(x, raw_windows()[:32]), "prepare must not modify the raw batch"


def test_training_prepare_augments_and_draws_masks_from_the_global_rng() -> None:
    x = raw_windows()[:32]
    norm = stats(x)
    obj = MaskedReconstructionObjective(MaskConfig(), Augmenter(AugmentConfig(p=1.0)), norm)
    torch.manual_seed(0)
    a = obj.prepare({"x": x}, training=True)
    torch.manual_seed(0)
    b = obj.prepare({"x": x}, training=True)
    c = obj.prepare({"x": x}, training=True)
    assert torch.equal(a["x"], b["x"]) and torch.equal(a["mask"], b["mask"])
    assert not torch.equal(b["mask"], c["mask"])
    assert not torch.allclose(a["target"], norm(x)), "training targets are augmented"


def test_eval_prepare_is_deterministic_and_does_not_touch_the_global_rng() -> None:
    x = raw_windows()[:64]
    obj = MaskedReconstructionObjective(MaskConfig(strategy="patch"), Augmenter(), stats(x))
    state = torch.get_rng_state()
    a = obj.prepare({"x": x}, training=False)
    b = obj.prepare({"x": x[:40]}, training=False)  # other batching, same windows
    assert torch.equal(torch.get_rng_state(), state)
    assert torch.equal(a["mask"][:40], b["mask"])
    assert torch.equal(a["x"][:40], b["x"])


def test_loss_counts_masked_positions_only() -> None:
    x = raw_windows()[:16]
    obj = MaskedReconstructionObjective(MaskConfig(), None, stats(x))
    b = obj.prepare({"x": x}, training=False)
    m = b["mask"]
    torch.manual_seed(1)
    pred = b["target"] + 0.1 * torch.randn_like(b["target"])
    base = obj.loss({"reconstruction": pred}, b)
    other = pred.clone()
    other[~m] += 100.0
    assert torch.equal(obj.loss({"reconstruction": other}, b), base)
    at_masked = pred.clone()
    at_masked[m] += 1.0
    assert obj.loss({"reconstruction": at_masked}, b) > base + 0.5
    manual = ((pred - b["target"]) ** 2)[m].mean()
    assert torch.allclose(base, manual)
    assert torch.allclose(base, masked_mse(pred, b["target"], m))


def test_mask_token_is_used_and_masked_values_cannot_leak() -> None:
    x = raw_windows()[:8]
    obj = MaskedReconstructionObjective(MaskConfig(strategy="block"), None, stats(x))
    mae = small_mae()
    b = obj.prepare({"x": x}, training=False)
    assert b["x"].shape == (8, T, 4) and b["mask"].shape == (8, T), "the mask travels as its own tensor"
    out = mae(b)
    assert out["reconstruction"].shape == (8, T, 4)
    loss = obj.loss(out, b)
    loss.backward()
    g = mae.mask_token.weight.grad
    assert g is not None and float(g.abs().sum()) > 0, "the gradient must reach the mask token"
    # whatever sits in the feature channels at masked steps, the output is the same
    poked = b["x"].clone()
    poked[b["mask"]] = 123.0
    with torch.no_grad():
        assert torch.equal(mae({**b, "x": poked})["reconstruction"], mae(b)["reconstruction"])
        # ... but the token value matters
        mae.mask_token.weight.add_(1.0)
        assert not torch.equal(mae(b)["reconstruction"], out["reconstruction"].detach())


def test_plain_window_is_encoded_unmasked_and_bad_inputs_are_errors() -> None:
    mae = small_mae()
    x = torch.randn(2, T, 4)
    with torch.no_grad():
        a = mae({"x": x})["reconstruction"]
        b = mae({"x": x, "mask": torch.zeros(2, T, dtype=torch.bool)})["reconstruction"]
    assert torch.equal(a, b)
    with pytest.raises(ValueError, match=r"\(B, T, 4\)"):
        mae({"x": torch.randn(2, T, 6)})
    with pytest.raises(ValueError, match="mask"):
        mae({"x": x, "mask": torch.zeros(2, T)})  # float, not bool
    with pytest.raises(TypeError, match="model\\(batch\\)"):
        mae(x)


def test_default_pretrain_model_is_a_bilstm_2x128_whose_encoder_transfers_by_name() -> None:
    mae = pretrain_model(n_features=4)
    rnn = mae.encoder.rnn
    assert isinstance(rnn, torch.nn.LSTM)
    assert rnn.bidirectional and rnn.num_layers == 2 and rnn.hidden_size == 128
    keys = set(mae.state_dict())
    assert "mask_token.weight" in keys and {"head.fc.weight", "head.fc.bias"} <= keys
    enc = mae.encoder_state_dict()
    assert enc and all(k.startswith("encoder.rnn.") for k in enc)
    clf = build_model(preset_config("jade", n_features=4))
    missing, unexpected = clf.load_state_dict(enc, strict=False)
    assert not unexpected
    assert not [k for k in missing if k.startswith("encoder.")]
    for k, v in enc.items():
        assert torch.equal(clf.state_dict()[k], v)


def test_pretrain_model_accepts_a_transformer_and_checks_widths() -> None:
    mae = pretrain_model(TransformerEncoderConfig(input_size=4, d_model=16, heads=2, ff=32), 4)
    assert mae({"x": torch.randn(2, 20, 4)})["reconstruction"].shape == (2, 20, 4)
    with pytest.raises(ValueError, match="n_features"):
        pretrain_model(RNNEncoderConfig(input_size=3), 4)


def test_normalize_from_scaler_and_checks() -> None:
    from moola.datasets.normalize import Standardizer

    x = raw_windows()[:20]
    sc = Standardizer().fit(x.numpy())
    norm = Normalize.from_scaler(sc)
    np.testing.assert_allclose(norm(x).numpy(), sc.transform(x.numpy()), rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="positive"):
        Normalize([0.0], [0.0])
    with pytest.raises(ValueError, match="features"):
        norm(torch.zeros(1, 2, 3))


def test_trainer_fits_one_epoch_over_views_data() -> None:
    x = raw_windows()
    train, val = x[:96], x[96:160]
    norm = stats(train)
    obj = MaskedReconstructionObjective(MaskConfig(strategy="block"),
                                        Augmenter(AugmentConfig(views=2)), norm)
    mae = small_mae(3)
    data = ViewsData(TensorData({"x": train}), k=2)
    cfg = quiet_config(epochs=1, batch_size=32)
    trainer = Trainer(mae, obj, cfg, show_progress=False)
    before = {k: v.clone() for k, v in mae.state_dict().items()}
    res = trainer.fit(data, TensorData({"x": val}))
    assert trainer.n_train_ == 192 and trainer.global_step_ == 6
    h = res.history[-1]
    assert np.isfinite(h["train_loss"]) and np.isfinite(h["val_loss"])
    assert "val_masked_mse" in h
    changed = [k for k, v in mae.state_dict().items() if not torch.equal(v, before[k])]
    assert "mask_token.weight" in changed and any(k.startswith("encoder.rnn.") for k in changed)
    # validation is measured on the same masks every time and leaves the global RNG alone
    state = torch.get_rng_state()
    v1, _, _ = trainer.evaluate(TensorData({"x": val}))
    v2, _, _ = trainer.evaluate(TensorData({"x": val}), batch_size=17)
    assert torch.equal(torch.get_rng_state(), state)
    assert v1 == pytest.approx(h["val_loss"], rel=1e-6)
    assert v2 == pytest.approx(v1, rel=1e-5)


@pytest.mark.slow
def test_pretraining_learns_on_real_windows() -> None:
    x = raw_windows()
    train, val = x[:256], x[256:384]
    norm = stats(train)
    obj = MaskedReconstructionObjective(MaskConfig(strategy="random"), None, norm)
    mae = small_mae(4)
    cfg = quiet_config(epochs=4, batch_size=32, optimizer={"lr": 3e-3})
    trainer = Trainer(mae, obj, cfg, show_progress=False)
    v0, _, _ = trainer.evaluate(TensorData({"x": val}))
    res = trainer.fit(TensorData({"x": train}), TensorData({"x": val}))
    assert res.history[-1]["val_loss"] < v0


class _Crash(RuntimeError):
    """Raised by the test to stop training mid-epoch, like a killed process."""


class _CrashAt(Callback):
    def __init__(self, step: int) -> None:
        self.step = step

    def on_batch_end(self, trainer: Trainer, step: int, loss: float, bs: int) -> None:
        if step == self.step:
            raise _Crash(f"simulated crash at step {step}")


@pytest.mark.slow
def test_interrupted_pretraining_resumes_bitwise(tmp_path: Path) -> None:
    """All training-time randomness (augmentation, masks) comes from the saved global RNG."""
    x = raw_windows()[:64]
    norm = stats(x)

    def run(run_dir: Path, callbacks: tuple[Callback, ...] | list[Callback] = (),
            resume: bool = False) -> MaskedAutoencoder:
        obj = MaskedReconstructionObjective(MaskConfig(strategy="block"),
                                            Augmenter(AugmentConfig(p=0.7)), norm)
        mae = small_mae(5)
        cfg = quiet_config(epochs=2, batch_size=16, checkpoint_every=3)
        Trainer(mae, obj, cfg, run_dir=run_dir, callbacks=callbacks, show_progress=False).fit(
            ViewsData(TensorData({"x": x}), 2), TensorData({"x": x[:16]}), resume=resume)
        return mae

    ref = run(tmp_path / "ref")
    with pytest.raises(_Crash):
        run(tmp_path / "cut", callbacks=[_CrashAt(11)])  # 8 steps per epoch: mid-epoch 2
    resumed = run(tmp_path / "cut", resume=True)
    a, b = ref.state_dict(), resumed.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
