"""Variable-length series: batch["valid"] (B, T) bool, True = a real step, right padding.

A series padded with junk after its length gives the outputs of the series alone, for every
encoder kind and every head; padding gets no gradient, no pooling weight and no pointer mass."""

from __future__ import annotations

import pytest
import torch

from moola.models import (
    PRESETS,
    ClassifierHeadConfig,
    DirectionHeadConfig,
    InceptionTimeEncoderConfig,
    ModelConfig,
    PointerHeadConfig,
    ReconstructionHeadConfig,
    RegressionHeadConfig,
    ResNet1DEncoderConfig,
    RNNEncoderConfig,
    TransformerEncoderConfig,
    build_model,
    padded_valid,
    preset_config,
)
from moola.models.heads import AttentionPooling, LastPooling, MeanPooling

pytestmark = pytest.mark.usefixtures("one_torch_thread")

F_IN = 3
LENGTHS = (7, 30, 19, 1)  # real steps per row; padded to T_PAD
T_PAD = 41
TOL = 1e-5

ENCODERS = {
    "lstm": RNNEncoderConfig(kind="lstm", input_size=F_IN, hidden=8, layers=2),
    "bilstm": RNNEncoderConfig(kind="lstm", input_size=F_IN, hidden=8, layers=2, bidirectional=True),
    "bigru": RNNEncoderConfig(kind="gru", input_size=F_IN, hidden=8, layers=1, bidirectional=True),
    "patch-lstm": RNNEncoderConfig(input_size=F_IN, hidden=8, layers=2, bidirectional=True, patch=4),
    "patch-gru": RNNEncoderConfig(kind="gru", input_size=F_IN, hidden=8, layers=1, patch=8),
    "transformer": TransformerEncoderConfig(input_size=F_IN, d_model=16, heads=2, layers=2, ff=32),
    "transformer-causal": TransformerEncoderConfig(input_size=F_IN, d_model=16, heads=2, layers=2, ff=32,
                                                   causal=True, pos_encoding="learned", max_len=64),
    "inception_time": InceptionTimeEncoderConfig(input_size=F_IN, filters=4, depth=6, bottleneck=4),
    "inception-no-residual": InceptionTimeEncoderConfig(input_size=F_IN, filters=4, depth=2,
                                                        kernel_sizes=[10, 5], residual=False),
    "resnet1d": ResNet1DEncoderConfig(input_size=F_IN, filters=[8, 8, 16]),
}


def _every_head(enc, pooling: str) -> ModelConfig:
    return ModelConfig(
        name="everything",
        encoder=enc,
        classifier=ClassifierHeadConfig(n_classes=3, hidden=8, heads=2, pooling=pooling, dropout=0.0),
        pointer=PointerHeadConfig(),
        direction=DirectionHeadConfig(mlp=[8], pooling="last", dropout=0.0),
        regression=RegressionHeadConfig(horizons=[1, 5], pooling="mean"),
        reconstruction=ReconstructionHeadConfig(out_features=F_IN),
    )


def _padded(seed: int = 0) -> tuple[list[torch.Tensor], torch.Tensor, torch.Tensor]:
    """Series of LENGTHS bars each, and the same right-padded to T_PAD with large junk."""
    g = torch.Generator().manual_seed(seed)
    series = [torch.randn(1, n, F_IN, generator=g) for n in LENGTHS]
    x = 1e3 * torch.randn(len(LENGTHS), T_PAD, F_IN, generator=g)  # junk beyond each length
    for i, s in enumerate(series):
        x[i, : s.shape[1]] = s[0]
    valid = padded_valid(torch.tensor(LENGTHS), T_PAD)
    return series, x, valid


def _assert_same_as_alone(model, series, x, valid) -> None:
    with torch.no_grad():
        padded = model({"x": x, "valid": valid})
        for i, s in enumerate(series):
            n = s.shape[1]
            alone = model({"x": s})
            for key, v in alone.items():
                got = padded[key][i]
                if key in ("start_logits", "end_logits", "reconstruction"):  # per bar: the real bars
                    got = got[:n]
                torch.testing.assert_close(got, v[0], atol=TOL, rtol=TOL,
                                           msg=lambda m, k=key, n=n: f"{k} n={n}: {m}")


@pytest.mark.parametrize("pooling", ["attention", "mean", "last"])
@pytest.mark.parametrize("kind", list(ENCODERS))
def test_padding_junk_never_changes_an_output(kind, pooling):
    torch.manual_seed(0)
    model = build_model(_every_head(ENCODERS[kind], pooling)).eval()
    _assert_same_as_alone(model, *_padded())


@pytest.mark.parametrize("name", list(PRESETS))
def test_every_preset_is_padding_invariant(name):
    torch.manual_seed(0)
    model = build_model(preset_config(name, n_features=F_IN)).eval()
    _assert_same_as_alone(model, *_padded(1))


@pytest.mark.parametrize("kind", ["inception_time", "resnet1d"])
def test_batch_norm_trains_on_real_steps_only(kind):
    """In training mode batch norm normalises by batch statistics: a padded row alone must give
    the statistics (and outputs, and running statistics) of its unpadded series."""
    torch.manual_seed(0)
    a = build_model(_every_head(ENCODERS[kind], "mean")).train()
    b = build_model(_every_head(ENCODERS[kind], "mean")).train()
    b.load_state_dict(a.state_dict())
    series, x, valid = _padded()
    i = 1
    n = series[i].shape[1]
    out_pad = a({"x": x[i : i + 1], "valid": valid[i : i + 1]})
    out_alone = b({"x": series[i]})
    torch.testing.assert_close(out_pad["logits"], out_alone["logits"], atol=TOL, rtol=TOL)
    torch.testing.assert_close(out_pad["reconstruction"][:, :n], out_alone["reconstruction"],
                               atol=TOL, rtol=TOL)
    sa, sb = a.state_dict(), b.state_dict()
    for k in sa:
        if "running_" in k:
            torch.testing.assert_close(sa[k], sb[k], atol=TOL, rtol=TOL, msg=k)


@pytest.mark.parametrize("kind", list(ENCODERS))
def test_padded_steps_get_no_gradient(kind):
    torch.manual_seed(0)
    model = build_model(_every_head(ENCODERS[kind], "attention")).eval()
    _, x, valid = _padded()
    x = x.clone().requires_grad_(True)
    out = model({"x": x, "valid": valid})
    loss = sum(v[valid].sum() if v.ndim >= 2 and v.shape[1] == T_PAD else v.sum() for v in out.values())
    loss.backward()
    assert x.grad is not None
    assert float(x.grad[~valid].abs().max()) == 0.0
    assert float(x.grad[valid].abs().max()) > 0.0


def test_an_all_true_mask_is_the_unmasked_model():
    torch.manual_seed(0)
    model = build_model(_every_head(ENCODERS["bilstm"], "attention")).eval()
    x = torch.randn(2, 12, F_IN)
    with torch.no_grad():
        a = model({"x": x})
        b = model({"x": x, "valid": torch.ones(2, 12, dtype=torch.bool)})
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_pointer_gives_padded_bars_no_probability_and_counts_its_prior_from_the_last_real_bar():
    torch.manual_seed(0)
    model = build_model(_every_head(ENCODERS["lstm"], "attention")).eval()
    with torch.no_grad():
        model.heads["pointer"].position_prior.normal_()
    _, x, valid = _padded()
    with torch.no_grad():
        out = model({"x": x, "valid": valid})
    for key in ("start_logits", "end_logits"):
        p = out[key].softmax(-1)
        assert float(p[~valid].max()) == 0.0
        torch.testing.assert_close(p.sum(-1), torch.ones(len(LENGTHS)))


def test_the_pretraining_mask_key_is_not_a_padding_mask():
    """batch["mask"] (True = a step hidden by masked pretraining) is read by the
    MaskedAutoencoder, never by SequenceModel."""
    torch.manual_seed(0)
    model = build_model(_every_head(ENCODERS["resnet1d"], "mean")).eval()
    x = torch.randn(2, 12, F_IN)
    hidden = torch.zeros(2, 12, dtype=torch.bool)
    hidden[:, 3:6] = True
    with torch.no_grad():
        a, b = model({"x": x}), model({"x": x, "mask": hidden})
    assert all(torch.equal(a[k], b[k]) for k in a)


# --- the poolings on their own ------------------------------------------------------------------


def test_poolings_read_real_steps_only():
    torch.manual_seed(0)
    h = torch.randn(3, 6, 4)
    valid = padded_valid(torch.tensor([6, 2, 4]), 6)
    last = LastPooling(4)(h, valid)
    assert torch.equal(last, torch.stack([h[0, 5], h[1, 1], h[2, 3]]))
    bi = LastPooling(4, bidirectional=True)(h, valid)  # forward half at the last real bar, backward at 0
    assert torch.equal(bi[:, :2], last[:, :2]) and torch.equal(bi[:, 2:], h[:, 0, 2:])
    mean = MeanPooling(4)(h, valid)
    torch.testing.assert_close(mean[1], h[1, :2].mean(0))
    att = AttentionPooling(4, hidden=8, heads=2)
    with torch.no_grad():
        _, w = att(h, return_weights=True, valid=valid)
    assert float(w[~valid].abs().max()) == 0.0
    torch.testing.assert_close(w.sum(-1), torch.ones(3))


@pytest.mark.parametrize(("valid", "error", "match"), [
    (torch.ones(2, 5, dtype=torch.int64), TypeError, "bool"),
    (torch.ones(2, 4, dtype=torch.bool), ValueError, r"shape \(B, T\)"),
    (torch.tensor([[True] * 5, [False] * 5]), ValueError, "without a real step"),
    (torch.tensor([[True] * 5, [False, True, True, True, True]]), ValueError, "right padding"),
    (torch.tensor([[True] * 5, [True, False, True, False, False]]), ValueError, "right padding"),
])
def test_a_bad_valid_mask_is_a_clear_error(valid, error, match):
    model = build_model(_every_head(ENCODERS["lstm"], "mean"))
    with pytest.raises(error, match=match):
        model({"x": torch.randn(2, 5, F_IN), "valid": valid})
