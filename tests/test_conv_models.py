"""Convolutional encoders (InceptionTime, ResNet-1D) and the patched LSTM: per-bar shapes for every
preset, structure, pooling choice, YAML, transfer refusals, and a conv preset that learns."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from moola.models import (
    CONV_ENCODER_KINDS,
    PRESETS,
    ClassifierHeadConfig,
    InceptionTimeEncoder,
    InceptionTimeEncoderConfig,
    ModelConfig,
    ResNet1DEncoder,
    ResNet1DEncoderConfig,
    RNNEncoder,
    RNNEncoderConfig,
    build_model,
    count_parameters,
    describe_presets,
    inception_time_classifier,
    preset_config,
    resnet1d_classifier,
)
from moola.models.heads import AttentionPooling, MeanPooling
from moola.models.transfer import EncoderSpec, IncompatibleEncoderError, transfer_encoder
from test_models_presets import expected_shapes

pytestmark = pytest.mark.usefixtures("one_torch_thread")

NEW_PRESETS = ("patch_lstm", "inception_time", "inception_compact", "resnet1d")




# --- every preset on the lengths of the labeled series ---------------------------------------


@pytest.mark.parametrize("n_features", [1, 3])
@pytest.mark.parametrize("name", list(PRESETS))
def test_every_preset_gives_its_shapes_on_short_and_long_series(name, n_features):
    torch.manual_seed(0)
    model = build_model(preset_config(name, n_features=n_features)).eval()
    for T in (24, 150, 427):
        with torch.no_grad():
            out = model({"x": torch.randn(2, T, n_features)})
            h = model.encode(torch.randn(2, T, n_features))
        assert {k: tuple(v.shape) for k, v in out.items()} == expected_shapes(model.config, 2, T), (name, T)
        assert h.shape == (2, T, model.encoder.out_dim), (name, T)
        assert all(torch.isfinite(v).all() for v in out.values()), (name, T)


@pytest.mark.parametrize("T", [1, 2, 7, 24])
def test_conv_encoders_keep_the_time_axis_for_odd_and_even_kernels(T):
    x = torch.randn(3, T, 2)
    for enc in (InceptionTimeEncoder(2, filters=4, depth=4, kernel_sizes=(40, 20, 10), bottleneck=4),
                InceptionTimeEncoder(2, filters=4, depth=3, kernel_sizes=(39, 19, 9), bottleneck=0),
                ResNet1DEncoder(2, filters=(8, 16), kernel_sizes=(8, 5, 3)),
                ResNet1DEncoder(2, filters=(8,), kernel_sizes=(4,))):
        assert enc(x).shape == (3, T, enc.out_dim)


# --- the architectures as the papers give them ------------------------------------------------


def test_inception_time_is_six_modules_of_four_32_filter_branches_with_two_shortcuts():
    model = build_model(preset_config("inception_time", n_features=4))
    enc = model.encoder
    assert isinstance(enc, InceptionTimeEncoder) and enc.out_dim == 128
    assert len(enc.blocks) == 6 and len(enc.shortcuts) == 2  # a residual every 3 modules
    for m in enc.blocks:
        assert [c.kernel_size[0] for c in m.convs] == [39, 19, 9]
        assert [c.out_channels for c in m.convs] == [32, 32, 32] and m.pool_conv.out_channels == 32
        assert m.bottleneck is not None and m.bottleneck.out_channels == 32
    assert all(s.conv is not None for s in enc.shortcuts)  # InceptionTime: always a 1x1 conv
    head = model.heads["classifier"]
    assert isinstance(head.pool, MeanPooling) and head.fc.in_features == 128  # global average pooling
    assert set(model.heads) == {"classifier"}


def test_inception_skips_the_bottleneck_on_a_single_channel():
    enc = build_model(preset_config("inception_time", n_features=1)).encoder
    assert enc.blocks[0].bottleneck is None and enc.blocks[1].bottleneck is not None


def test_resnet1d_is_three_blocks_of_8_5_3_with_64_128_128_filters():
    model = build_model(preset_config("resnet1d", n_features=1))
    enc = model.encoder
    assert isinstance(enc, ResNet1DEncoder) and enc.out_dim == 128
    assert [b.convs[0].out_channels for b in enc.blocks] == [64, 128, 128]
    for b in enc.blocks:
        assert [c.kernel_size[0] for c in b.convs] == [8, 5, 3]
        assert all(isinstance(bn, nn.BatchNorm1d) for bn in b.bns)
    # a 1x1 conv on the shortcut only where the width grows (1 -> 64, 64 -> 128), BN alone after
    assert [b.shortcut.conv is not None for b in enc.blocks] == [True, True, False]
    assert isinstance(model.heads["classifier"].pool, MeanPooling)


def test_patch_lstm_is_a_patch_8_bilstm_with_pointer():
    model = build_model(preset_config("patch_lstm", n_features=4))
    enc = model.encoder
    assert isinstance(enc, RNNEncoder) and enc.patch == 8 and enc.patch_embed is not None
    assert (enc.patch_embed.kernel_size, enc.patch_embed.stride) == ((8,), (8,))
    assert (enc.rnn.input_size, enc.rnn.hidden_size, enc.rnn.num_layers, enc.rnn.bidirectional) == (
        64, 64, 1, True)
    assert set(model.heads) == {"classifier", "pointer"}


def test_new_presets_describe_their_architecture_in_models_list():
    rows = {r.name: r for r in describe_presets((150, 1))}
    assert rows["inception_time"].description.startswith("InceptionTime (Ismail Fawaz et al. 2020)")
    assert rows["inception_compact"].description.startswith("InceptionTime, compact")
    assert rows["resnet1d"].description.startswith("ResNet-1D (Wang et al. 2017)")
    assert rows["patch_lstm"].description.startswith("Patch-8 strided conv + 1-layer BiLSTM")
    for name in NEW_PRESETS:
        assert rows[name].params == count_parameters(build_model(preset_config(name, n_features=1)))


def test_models_list_prints_the_new_presets_with_their_counts():
    from typer.testing import CliRunner

    from moola.cli import app

    res = CliRunner().invoke(app, ["models", "list", "--input-shape", "150x1"], catch_exceptions=False)
    assert res.exit_code == 0, res.output
    rows = {line.split()[1]: line for line in res.stdout.splitlines() if line.split()[1:2]}
    for name in NEW_PRESETS:
        n = count_parameters(build_model(preset_config(name, n_features=1)))
        assert f"{n:,}" in rows[name], (name, rows.get(name))


def test_conv_encoder_kinds_are_the_discriminator_values():
    kinds = (InceptionTimeEncoderConfig(input_size=1).kind, ResNet1DEncoderConfig(input_size=1).kind)
    assert kinds == CONV_ENCODER_KINDS


# --- the classifier's pooling choice ----------------------------------------------------------


def test_classifier_pooling_defaults_to_attention_and_old_configs_load_unchanged():
    assert ClassifierHeadConfig().pooling == "attention"
    old = {"name": "x", "encoder": {"kind": "lstm", "input_size": 2, "hidden": 8, "layers": 1},
           "classifier": {"n_classes": 3, "hidden": 16, "heads": 2}}
    cfg = ModelConfig.from_dict(old)
    assert cfg.classifier.pooling == "attention" and cfg.encoder.patch == 1
    model = build_model(cfg)
    assert isinstance(model.heads["classifier"].pool, AttentionPooling)
    assert not any("patch_embed" in k for k in model.state_dict())  # patch 1: rnn.* keys only


@pytest.mark.parametrize("pooling", ["mean", "last"])
def test_classifier_pools_by_mean_or_last_into_a_linear_of_the_encoder_width(pooling):
    enc = RNNEncoderConfig(input_size=2, hidden=8, layers=1, bidirectional=True)
    cfg = ModelConfig(name="x", encoder=enc, classifier=ClassifierHeadConfig(n_classes=3, pooling=pooling))
    model = build_model(cfg)
    head = model.heads["classifier"]
    assert head.fc.in_features == 16 and not any(isinstance(m, AttentionPooling) for m in head.modules())
    if pooling == "last":
        assert head.pool.bidirectional  # the backward half taken at t = 0
    assert model({"x": torch.randn(2, 9, 2)})["logits"].shape == (2, 3)


# --- configs ----------------------------------------------------------------------------------


@pytest.mark.parametrize("cfg", [
    inception_time_classifier(3, 4, filters=8, depth=4, kernel_sizes=(41, 11), bottleneck=0,
                              residual=False, pooling="attention", pointer=True, dropout=0.2),
    resnet1d_classifier(2, 2, filters=(16, 32), kernel_sizes=(7, 3), pooling="last"),
    *(preset_config(n, n_features=3, n_classes=3) for n in NEW_PRESETS),
], ids=lambda c: c.name)
def test_conv_and_patch_configs_round_trip_yaml(tmp_path, cfg):
    path = tmp_path / "model.yaml"
    cfg.to_yaml(path)
    loaded = ModelConfig.from_yaml(path)
    assert loaded == cfg and type(loaded.encoder) is type(cfg.encoder)
    assert count_parameters(build_model(loaded)) == count_parameters(build_model(cfg))


def test_conv_config_problems_are_reported_by_key():
    from moola.config import ConfigError

    with pytest.raises(ConfigError) as exc:
        ModelConfig.from_dict({"name": "x", "encoder": {"kind": "inception_time", "input_size": 1,
                                                        "kernel_sizes": [], "filters": 0},
                               "pointer": {}})
    keys = {p.split(":")[0] for p in exc.value.problems}
    assert {"encoder.inception_time.kernel_sizes", "encoder.inception_time.filters"} <= keys
    with pytest.raises(ConfigError, match="patch"):
        RNNEncoderConfig.from_dict({"input_size": 4, "patch": 0})


# --- the patched LSTM -------------------------------------------------------------------------


@pytest.mark.parametrize("T", [1, 7, 8, 9, 150, 427])
def test_patched_lstm_gives_one_vector_per_bar_from_T_over_patch_steps(T):
    torch.manual_seed(0)
    enc = RNNEncoder(3, hidden=6, layers=2, bidirectional=True, patch=8).eval()
    steps = []
    enc.rnn.register_forward_hook(lambda _m, inp, _out: steps.append(inp[0].shape[1]))
    with torch.no_grad():
        h = enc(torch.randn(2, T, 3))
    assert h.shape == (2, T, 12) and steps == [-(-T // 8)]
    # every bar carries its patch's output: constant within a patch, changing between patches
    assert torch.equal(h[:, : min(T, 8)], h[:, :1].expand(-1, min(T, 8), -1))
    if T > 8:
        assert not torch.equal(h[:, 7], h[:, 8])


def test_patched_lstm_heads_read_every_bar():
    cfg = preset_config("patch_lstm", n_features=2)
    model = build_model(cfg)
    out = model({"x": torch.randn(3, 150, 2)})
    assert out["start_logits"].shape == (3, 150)
    # the pointer's position prior still differs bar by bar within a patch
    with torch.no_grad():
        model.heads["pointer"].position_prior.normal_()
    s = model({"x": torch.randn(1, 16, 2)})["start_logits"][0]
    assert len(set(s[:8].tolist())) > 1


# --- transfer into the new encoders: refused, naming what is supported ------------------------


def _rnn_source(n_features: int = 4) -> tuple[EncoderSpec, dict[str, torch.Tensor]]:
    torch.manual_seed(0)
    model = build_model(preset_config("jade", n_features=n_features))
    state = {k: v for k, v in model.state_dict().items() if k.startswith("encoder.rnn.")}
    return EncoderSpec.from_encoder(model.encoder), state


@pytest.mark.parametrize("name", ["inception_time", "resnet1d"])
def test_transfer_into_a_conv_encoder_names_the_supported_kinds(name):
    model = build_model(preset_config(name, n_features=4))
    with pytest.raises(IncompatibleEncoderError) as exc:
        transfer_encoder(model, _rnn_source())
    msg = str(exc.value)
    assert "'lstm' or 'gru'" in msg and repr(name) in msg


def test_transfer_into_a_patched_lstm_is_refused_and_a_plain_one_still_loads():
    with pytest.raises(IncompatibleEncoderError, match="patch 1"):
        transfer_encoder(build_model(preset_config("patch_lstm", n_features=4)), _rnn_source())
    with pytest.raises(IncompatibleEncoderError, match="patched RNN encoder"):
        EncoderSpec.from_encoder(RNNEncoder(4, hidden=8, patch=4))
    target = build_model(preset_config("jade", n_features=4))
    report = transfer_encoder(target, _rnn_source())
    assert report.n_transferred == report.n_target_encoder_tensors == 16


# --- a conv preset learns a small realistic labeled set ---------------------------------------


def _waves(n: int = 60, T: int = 200, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """n noisy series of T bars, a third each sine / square / sawtooth (label 0 / 1 / 2), with
    random period (20-60 bars), phase and amplitude, plus N(0, 0.3) noise: (n, T, 1), (n,)."""
    g = np.random.default_rng(seed)
    y = np.arange(n) % 3
    t = np.arange(T)
    period, phase, amp = g.uniform(20, 60, n), g.uniform(0, 1, n), g.uniform(0.5, 1.5, n)
    u = (t[None] / period[:, None] + phase[:, None]) % 1.0  # (n, T) position in the cycle
    waves = np.stack([np.sin(2 * np.pi * u), np.sign(np.sin(2 * np.pi * u)), 2 * u - 1])  # (3, n, T)
    x = amp[:, None] * waves[y, np.arange(n)] + g.normal(0, 0.3, (n, T))
    return torch.tensor(x[..., None], dtype=torch.float32), torch.tensor(y)


def _accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    model.eval()
    with torch.no_grad():
        return float((model({"x": x})["logits"].argmax(1) == y).float().mean())


def test_inception_compact_fits_sine_square_sawtooth():
    x, y = _waves()
    torch.manual_seed(0)
    model = build_model(preset_config("inception_compact", n_features=1, n_classes=3))
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    g = torch.Generator().manual_seed(0)
    acc = 0.0
    for _ in range(30):  # epochs of 3 batches of 20; ~0.6 s each on one thread
        model.train()
        for b in torch.randperm(len(y), generator=g).split(20):
            loss = F.cross_entropy(model({"x": x[b]})["logits"], y[b])
            opt.zero_grad()
            loss.backward()
            opt.step()
        if (acc := _accuracy(model, x, y)) >= 0.95:  # eval mode: batch norm's running statistics
            break
    assert acc >= 0.9, f"training accuracy {acc:.2f}"
    x_new, y_new = _waves(seed=1)
    assert _accuracy(model, x_new, y_new) >= 0.8  # and it is the shapes it learned, not the noise


def test_patched_and_conv_encoders_are_refused_where_only_per_bar_recurrence_works() -> None:
    """The runtime's staggered-state ring serves a unidirectional per-bar RNN only, and a
    pretraining run refuses a patched encoder before it trains, not when it saves."""
    from moola.config import ConfigError
    from moola.models import DirectionHeadConfig, ModelConfig, RNNEncoderConfig
    from moola.pipelines.pretrain import PretrainConfig
    from moola.runtime._streaming import ring_refusal

    patched = ModelConfig(name="p", encoder=RNNEncoderConfig(input_size=4, hidden=8, layers=1, patch=4),
                          direction=DirectionHeadConfig(pooling="last"))
    assert "patches of 4 bars" in str(ring_refusal(patched))
    assert ring_refusal(patched.model_copy(update={"encoder": RNNEncoderConfig(
        input_size=4, hidden=8, layers=1)})) is None
    assert "not recurrent" in str(ring_refusal(preset_config("inception_compact")))
    with pytest.raises(ConfigError, match=r"encoder\.patch must be 1"):
        PretrainConfig.from_dict({"encoder": {"input_size": 4, "patch": 4}})
