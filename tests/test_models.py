"""Configs, encoders, heads and SequenceModel: shapes, causality, input guards, YAML round-trips."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from moola.config import ConfigError
from moola.models import (
    AttentionPooling,
    ClassifierHeadConfig,
    DirectionHeadConfig,
    ModelConfig,
    PointerHeadConfig,
    ReconstructionHeadConfig,
    RegressionHeadConfig,
    RNNEncoder,
    RNNEncoderConfig,
    SequenceModel,
    TransformerEncoder,
    TransformerEncoderConfig,
    build_model,
)
from moola.models.heads import ClassifierHead, LastPooling, PointerHead

B, T, F_IN = 8, 105, 4


def _all_heads_config(encoder: RNNEncoderConfig | TransformerEncoderConfig) -> ModelConfig:
    return ModelConfig(
        name="everything",
        encoder=encoder,
        classifier=ClassifierHeadConfig(n_classes=3, hidden=32, heads=4),
        pointer=PointerHeadConfig(weight=0.3),
        direction=DirectionHeadConfig(mlp=[16], pooling="attention"),
        regression=RegressionHeadConfig(horizons=[1, 5, 20], pooling="mean"),
        reconstruction=ReconstructionHeadConfig(out_features=F_IN),
    )


ENCODERS = {
    "gru": RNNEncoderConfig(kind="gru", input_size=F_IN, hidden=16, layers=2, bidirectional=True),
    "transformer-learned": TransformerEncoderConfig(
        input_size=F_IN, d_model=16, heads=2, layers=1, ff=32, pos_encoding="learned", max_len=128
    ),
    "transformer-none": TransformerEncoderConfig(
        input_size=F_IN, d_model=16, heads=2, layers=1, ff=32, pos_encoding="none", causal=True
    ),
}


# --- configs --------------------------------------------------------------------------------


@pytest.mark.parametrize("enc", ENCODERS.values(), ids=ENCODERS.keys())
def test_config_round_trips_yaml(tmp_path, enc):
    cfg = _all_heads_config(enc)
    path = tmp_path / "model.yaml"
    cfg.to_yaml(path)
    loaded = ModelConfig.from_yaml(path)
    assert loaded == cfg
    assert type(loaded.encoder) is type(cfg.encoder)
    assert loaded.to_yaml() == cfg.to_yaml()


def test_bad_config_lists_every_problem_at_once():
    data = {
        "name": "bad",
        "encoder": {"kind": "transformer", "input_size": 4, "d_model": 64, "heads": 5},
        "classifier": {"hidden": -8},
        "colour": "blue",
    }
    with pytest.raises(ConfigError) as exc:
        ModelConfig.from_dict(data)
    problems = exc.value.problems
    assert len(problems) == 3, problems
    msg = str(exc.value)
    assert "heads (5) must divide d_model (64)" in msg
    assert any(p.startswith("classifier.hidden") for p in problems)
    assert any(p.startswith("colour") for p in problems)


def test_config_needs_a_head_and_a_known_encoder_kind():
    with pytest.raises(ConfigError, match="at least one head"):
        ModelConfig.from_dict({"name": "headless", "encoder": {"kind": "lstm", "input_size": 4}})
    with pytest.raises(ConfigError, match="encoder"):
        ModelConfig.from_dict(
            {"name": "x", "encoder": {"kind": "mamba", "input_size": 4}, "pointer": {"weight": 1.0}}
        )


def test_head_config_validation():
    with pytest.raises(ConfigError, match=r"heads \(3\) must divide hidden \(128\)"):
        ClassifierHeadConfig.from_dict({"heads": 3})
    with pytest.raises(ConfigError, match="horizons"):
        RegressionHeadConfig.from_dict({"horizons": [5, 5]})
    with pytest.raises(ConfigError, match="pooling"):
        DirectionHeadConfig.from_dict({"pooling": "max"})
    with pytest.raises(ConfigError, match="dropout"):
        RNNEncoderConfig.from_dict({"input_size": 4, "dropout": 1.0})


# --- encoders -------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["lstm", "gru"])
@pytest.mark.parametrize("bidirectional", [False, True])
def test_rnn_encoder_shape(kind, bidirectional):
    enc = RNNEncoder(F_IN, hidden=16, layers=2, bidirectional=bidirectional, kind=kind)
    out = enc(torch.randn(B, T, F_IN))
    assert enc.out_dim == 16 * (2 if bidirectional else 1)
    assert out.shape == (B, T, enc.out_dim)
    assert isinstance(enc.rnn, nn.LSTM if kind == "lstm" else nn.GRU)


def test_rnn_state_dict_uses_standard_lstm_names():
    cfg = ModelConfig(
        name="bi",
        encoder=RNNEncoderConfig(input_size=F_IN, hidden=8, layers=2, bidirectional=True),
        pointer=PointerHeadConfig(),
    )
    model = build_model(cfg)
    enc_keys = {k.removeprefix("encoder.rnn.") for k in model.state_dict() if k.startswith("encoder.")}
    reference = nn.LSTM(F_IN, 8, num_layers=2, bidirectional=True, batch_first=True)
    assert enc_keys == set(reference.state_dict())
    assert "weight_hh_l1_reverse" in enc_keys
    assert all(k.startswith("encoder.rnn.") for k in model.state_dict() if k.startswith("encoder."))
    # ... so the weights load straight into a plain nn.LSTM of the same shape.
    enc_state = {k.removeprefix("encoder.rnn."): v for k, v in model.state_dict().items() if "rnn" in k}
    reference.load_state_dict(enc_state)


@pytest.mark.parametrize("pos_encoding", ["sinusoidal", "learned", "none"])
def test_transformer_encoder_shape(pos_encoding):
    enc = TransformerEncoder(F_IN, d_model=16, heads=4, layers=2, ff=32, pos_encoding=pos_encoding)
    assert enc(torch.randn(B, T, F_IN)).shape == (B, T, 16)
    assert enc.out_dim == 16


def _future_changes_past(causal: bool, k: int = 40) -> bool:
    torch.manual_seed(0)
    enc = TransformerEncoder(F_IN, d_model=16, heads=4, layers=2, ff=32, causal=causal).eval()
    x = torch.randn(2, T, F_IN)
    x2 = x.clone()
    x2[:, k + 1 :] = torch.randn(2, T - k - 1, F_IN) * 5
    with torch.no_grad():
        a, b = enc(x), enc(x2)
    assert not torch.allclose(a[:, k + 1 :], b[:, k + 1 :])  # the change itself is visible
    return not torch.allclose(a[:, : k + 1], b[:, : k + 1], atol=1e-6)


def test_causal_transformer_never_sees_later_bars():
    assert not _future_changes_past(causal=True)


def test_non_causal_transformer_does_see_later_bars():
    assert _future_changes_past(causal=False)


def test_transformer_rejects_sequences_longer_than_max_len():
    enc = TransformerEncoder(F_IN, d_model=16, heads=4, layers=1, ff=32, max_len=50)
    with pytest.raises(ValueError, match="max_len 50"):
        enc(torch.randn(1, 51, F_IN))


def test_transformer_layers_start_from_different_weights():
    enc = TransformerEncoder(F_IN, d_model=16, heads=4, layers=2, ff=32)
    w0, w1 = (layer.self_attn.in_proj_weight for layer in enc.layers)
    assert not torch.equal(w0, w1)


# --- heads ----------------------------------------------------------------------------------


def test_attention_pooling_shapes_and_weights():
    pool = AttentionPooling(in_dim=12, hidden=32, heads=4)
    h = torch.randn(B, T, 12)
    pooled, weights = pool(h, return_weights=True)
    assert pooled.shape == (B, 32)
    assert weights.shape == (B, T)
    assert torch.allclose(weights.sum(dim=1), torch.ones(B))
    assert (weights >= 0).all()
    assert torch.equal(pool(h), pooled)
    with pytest.raises(ValueError, match=r"heads \(5\) must divide hidden \(32\)"):
        AttentionPooling(12, hidden=32, heads=5)


def test_attention_pooling_defaults_are_128_by_8():
    pool = AttentionPooling(in_dim=12)
    assert (pool.out_dim, pool.heads) == (128, 8)


def test_last_pooling_takes_each_direction_where_it_ends():
    enc = RNNEncoder(F_IN, hidden=6, layers=1, bidirectional=True)
    x = torch.randn(B, T, F_IN)
    h = enc(x)  # (B, T, [forward 6 | backward 6])
    _, (h_n, _) = enc.rnn(x)  # final state of each direction: (2, B, 6)
    pooled = LastPooling(12, bidirectional=True)(h)
    assert torch.allclose(pooled, torch.cat([h_n[0], h_n[1]], dim=-1))
    assert torch.equal(LastPooling(12)(h), h[:, -1])


def test_classifier_and_pointer_heads():
    h = torch.randn(B, T, 24)
    assert ClassifierHead(24, n_classes=5)(h)["logits"].shape == (B, 5)
    out = PointerHead(24)(h)
    assert out["start_logits"].shape == out["end_logits"].shape == (B, T)


# --- SequenceModel --------------------------------------------------------------------------


def _loss(out: dict[str, torch.Tensor], x: torch.Tensor, n_classes: int) -> torch.Tensor:
    """A loss touching every output, as training would: CE, pointer CE over time, BCE, MSE."""
    g = torch.Generator().manual_seed(1)
    n, steps = x.shape[:2]
    loss = torch.zeros((), dtype=x.dtype)
    if "logits" in out:
        loss = loss + F.cross_entropy(out["logits"], torch.randint(n_classes, (n,), generator=g))
    if "start_logits" in out:
        for key in ("start_logits", "end_logits"):
            loss = loss + F.cross_entropy(out[key], torch.randint(steps, (n,), generator=g))
    if "direction" in out:
        target = torch.randint(2, (n,), generator=g).to(x.dtype)
        loss = loss + F.binary_cross_entropy_with_logits(out["direction"], target)
    if "regression" in out:
        target = torch.randn(out["regression"].shape, generator=g, dtype=x.dtype)
        loss = loss + F.mse_loss(out["regression"], target)
    if "reconstruction" in out:
        loss = loss + F.mse_loss(out["reconstruction"], x)
    return loss


def assert_every_parameter_learns(model: nn.Module, x: torch.Tensor, n_classes: int = 2) -> None:
    """Every parameter gets a gradient from a loss over all heads.

    Run in float64: at init some real gradients are ~1e-7, while a parameter the loss cannot
    see (e.g. a bias under a softmax) still shows float32 round-off of ~1e-11; in float64 the
    latter drops to ~1e-20, so a 1e-12 floor separates them cleanly.
    """
    model = copy.deepcopy(model).double().train()
    x = x.double()
    _loss(model({"x": x}), x, n_classes).backward()
    dead = [n for n, p in model.named_parameters() if p.grad is None or p.grad.abs().max() < 1e-12]
    assert not dead, f"parameters without gradient: {dead}"


@pytest.mark.parametrize("enc", ENCODERS.values(), ids=ENCODERS.keys())
def test_model_with_every_head(enc):
    torch.manual_seed(0)
    model = build_model(_all_heads_config(enc))
    x = torch.randn(B, T, F_IN)
    out = model({"x": x})
    assert {k: tuple(v.shape) for k, v in out.items()} == {
        "logits": (B, 3),
        "start_logits": (B, T),
        "end_logits": (B, T),
        "direction": (B,),
        "regression": (B, 3),
        "reconstruction": (B, T, F_IN),
    }
    assert model.encode(x).shape == (B, T, model.encoder.out_dim)
    assert model.config == _all_heads_config(enc)
    assert_every_parameter_learns(model, x, n_classes=3)


def test_model_takes_built_modules():
    enc = RNNEncoder(F_IN, hidden=8, layers=1)
    model = SequenceModel(enc, {"pointer": PointerHead(enc.out_dim)})
    assert model.config is None
    assert set(model({"x": torch.randn(2, 10, F_IN)})) == {"start_logits", "end_logits"}
    with pytest.raises(ValueError, match="at least one head"):
        SequenceModel(enc, {})


@pytest.fixture(scope="module")
def small_model() -> SequenceModel:
    enc = RNNEncoder(F_IN, hidden=8, layers=1)
    return SequenceModel(enc, {"classifier": ClassifierHead(enc.out_dim, hidden=16, heads=2)})


@pytest.mark.parametrize("dtype", [torch.int64, torch.bool])
def test_non_float_input_is_a_type_error_naming_the_dtype(small_model, dtype):
    with pytest.raises(TypeError, match=str(dtype)):
        small_model({"x": torch.ones(2, 10, F_IN, dtype=dtype)})


def test_non_tensor_input_is_a_type_error(small_model):
    with pytest.raises(TypeError, match="ndarray"):
        small_model({"x": np.zeros((2, 10, F_IN), dtype=object)})


def test_a_bare_tensor_is_refused_with_the_model_contract(small_model):
    with pytest.raises(TypeError, match=r"model\(batch\).*model\(\{'x': x\}\)"):
        small_model(torch.randn(2, 10, F_IN))
    with pytest.raises(KeyError, match="no 'x'"):
        small_model({"features": torch.randn(2, 10, F_IN)})


@pytest.mark.parametrize("shape", [(2, 10, F_IN + 1), (2, 10), (10, F_IN, 1)])
def test_wrong_feature_count_is_a_value_error_naming_the_expected_shape(small_model, shape):
    with pytest.raises(ValueError, match=rf"\(B, T, F\) with F = {F_IN}"):
        small_model({"x": torch.randn(*shape)})


def test_float64_input_is_accepted_by_a_float64_model():
    enc = RNNEncoder(F_IN, hidden=8, layers=1)
    model = SequenceModel(enc, {"classifier": ClassifierHead(enc.out_dim, hidden=16, heads=2)}).double()
    assert model({"x": torch.randn(2, 10, F_IN, dtype=torch.float64)})["logits"].dtype == torch.float64


def test_init_is_deterministic_under_manual_seed():
    cfg = _all_heads_config(ENCODERS["transformer-learned"])

    def state(seed: int) -> dict[str, torch.Tensor]:
        torch.manual_seed(seed)
        return build_model(cfg).state_dict()

    a, b, c = state(7), state(7), state(8)
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not all(torch.equal(a[k], c[k]) for k in a)
