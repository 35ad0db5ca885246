"""Presets: pinned architectures, output shapes, every parameter learning, sizes, YAML, listing."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from moola.models import (
    MAX_PARAMS_PER_SAMPLE,
    PRESETS,
    ModelConfig,
    UnknownPresetError,
    build_model,
    count_parameters,
    describe_presets,
    preset_config,
)
from test_models import assert_every_parameter_learns

B, T = 8, 105


def expected_shapes(cfg: ModelConfig, B: int = B, T: int = T) -> dict[str, tuple[int, ...]]:
    """The output shapes a model built from ``cfg`` must give for (B, T, F) inputs."""
    shapes: dict[str, tuple[int, ...]] = {}
    if cfg.classifier:
        shapes["logits"] = (B, cfg.classifier.n_classes)
    if cfg.pointer:
        shapes["start_logits"] = shapes["end_logits"] = (B, T)
    if cfg.direction:
        shapes["direction"] = (B,)
    return shapes


@pytest.fixture(scope="module", params=list(PRESETS))
def preset(request) -> tuple[str, nn.Module, torch.Tensor]:
    torch.manual_seed(0)
    model = build_model(preset_config(request.param))
    return request.param, model, torch.randn(B, T, model.n_features)


def test_preset_output_shapes(preset):
    name, model, x = preset
    model.eval()
    with torch.no_grad():
        out = model({"x": x})
    assert {k: tuple(v.shape) for k, v in out.items()} == expected_shapes(model.config)
    assert all(torch.isfinite(v).all() for v in out.values()), name


def test_every_preset_parameter_gets_a_gradient(preset):
    _, model, x = preset
    assert_every_parameter_learns(model, x)


@pytest.mark.parametrize("name", list(PRESETS))
def test_preset_config_round_trips_yaml(tmp_path, name):
    cfg = preset_config(name)
    assert cfg.name == name
    path = tmp_path / f"{name}.yaml"
    cfg.to_yaml(path)
    assert ModelConfig.from_yaml(path) == cfg


def test_simple_lstm_is_unidirectional_2x128_with_8_head_pooling():
    model = build_model(preset_config("simple_lstm"))
    rnn = model.encoder.rnn
    assert isinstance(rnn, nn.LSTM)
    assert (rnn.hidden_size, rnn.num_layers, rnn.bidirectional) == (128, 2, False)
    assert rnn.batch_first
    pool = model.heads["classifier"].pool
    assert (pool.out_dim, pool.heads) == (128, 8)
    assert set(model.heads) == {"classifier"}


def test_jade_is_bidirectional_2x128_with_pointer():
    model = build_model(preset_config("jade"))
    rnn = model.encoder.rnn
    assert isinstance(rnn, nn.LSTM)
    assert (rnn.hidden_size, rnn.num_layers, rnn.bidirectional) == (128, 2, True)
    assert set(model.heads) == {"classifier", "pointer"}
    assert model.encoder.out_dim == 256


def test_jade_compact_is_the_same_family_under_150k():
    cfg, big = preset_config("jade_compact", n_features=4), preset_config("jade")
    model = build_model(cfg)
    assert count_parameters(model) <= 150_000
    assert model.encoder.rnn.bidirectional and model.encoder.rnn.num_layers == 2
    assert set(model.heads) == set(build_model(big).heads) == {"classifier", "pointer"}


def test_direction_presets():
    lstm = build_model(preset_config("direction_lstm"))
    assert lstm.n_features == 31
    assert (lstm.encoder.rnn.hidden_size, lstm.encoder.rnn.num_layers) == (64, 2)
    assert not lstm.encoder.rnn.bidirectional
    widths = [m.out_features for m in lstm.heads["direction"].mlp if isinstance(m, nn.Linear)]
    assert widths == [64, 1]  # 64 -> 64 -> 1
    bi = build_model(preset_config("direction_bilstm"))
    assert (bi.encoder.rnn.hidden_size, bi.encoder.rnn.bidirectional, bi.encoder.out_dim) == (64, True, 128)
    first = next(m for m in bi.heads["direction"].mlp if isinstance(m, nn.Linear))
    assert (first.in_features, first.out_features) == (128, 64)  # 128 -> 64 -> 1
    tf = preset_config("direction_transformer").encoder
    assert (tf.kind, tf.d_model, tf.heads, tf.layers, tf.causal) == ("transformer", 64, 4, 2, True)


# nn.LSTM keeps two bias vectors per layer and direction (b_ih and b_hh), so one layer holds
# 4 * (in * h + h * h + 2h) per direction; the head's Linear layers hold in * out + out.
#   direction_lstm, 31 in:   layer 1 4*(31*64 + 64*64 + 128) = 24,832; layer 2 4*(64*64 + 64*64
#     + 128) = 33,280; head 64*64 + 64 + 64 + 1 = 4,225; total 62,337 (the seeds' count)
#   direction_lstm, 39 in:   layer 1 4*(39*64 + 4,096 + 128) = 26,880; 26,880 + 33,280 + 4,225
#     = 64,385
#   direction_bilstm, 31 in: layer 1 2 * 24,832 = 49,664; layer 2 2 * 4*(128*64 + 64*64 + 128)
#     = 99,328; head 128*64 + 64 + 64 + 1 = 8,321; total 157,313 (the printed architecture)
#   direction_bilstm, 39 in: 2 * 26,880 + 99,328 + 8,321 = 161,409
EXACT_COUNTS = {
    ("direction_lstm", 31): 62_337,
    ("direction_lstm", 39): 64_385,
    ("direction_bilstm", 31): 157_313,
    ("direction_bilstm", 39): 161_409,
    ("direction_transformer", 31): 85_761,
    ("direction_transformer", 39): 86_273,
}


# The convolutional and patched presets, two classes, by hand (convs carry no bias; a batch
# norm holds 2 * width; counts do not depend on T):
#   inception_time, 1 in:  module 1 (no bottleneck on one channel) 32*(39+19+9) + 32 + 256 = 2,432;
#     modules 2-6 each 128*32 + 32*32*67 + 128*32 + 256 = 77,056; shortcuts 1*128 + 256 and
#     128*128 + 256; GAP + linear 128*2 + 2 = 258; total 404,994
#   inception_time, 4 in:  module 1 4*32 + 68,608 + 4*32 + 256 = 69,120; shortcut 1 4*128 + 256;
#     total 472,066
#   inception_compact, 1 in: 16*67 + 16 + 128 = 1,216; 2 * (64*16 + 16*16*67 + 64*16 + 128)
#     = 38,656; shortcut 64 + 128; linear 130; total 40,194 (4 in: 56,578)
#   resnet1d, 1 in: block 1 1*64*8 + 64*64*5 + 64*64*3 + 3*128 + shortcut 64 + 128 = 33,856;
#     block 2 64*128*8 + 128*128*(5+3) + 3*256 + 64*128 + 256 = 205,824; block 3 128*128*16 +
#     3*256 + BN shortcut 256 = 263,168; linear 258; total 503,106 (4 in: +3*64*8 +3*64 = 504,834)
#   patch_lstm, 1 in: patch conv 1*8*64 + 64 = 576; BiLSTM 2 * 4*(64*64 + 64*64 + 128) = 66,560;
#     attention pooling 128*64 + (128*64 + 64) + (64*64 + 64) + 64 = 20,672; linear 130; pointer
#     128*2 + 512*2 = 1,280; total 89,218 (4 in: + 3*8*64 = 90,754)
EXACT_COUNTS.update({
    ("inception_time", 1): 404_994,
    ("inception_time", 4): 472_066,
    ("inception_compact", 1): 40_194,
    ("inception_compact", 4): 56_578,
    ("resnet1d", 1): 503_106,
    ("resnet1d", 4): 504_834,
    ("patch_lstm", 1): 89_218,
    ("patch_lstm", 4): 90_754,
})


@pytest.mark.parametrize(("name", "n_features"), list(EXACT_COUNTS))
def test_direction_presets_have_their_exact_parameter_counts(name, n_features):
    assert count_parameters(build_model(preset_config(name, n_features=n_features))) == EXACT_COUNTS[
        (name, n_features)]


def test_models_list_shows_each_direction_count_at_60x31():
    from typer.testing import CliRunner

    from moola.cli import app

    res = CliRunner().invoke(app, ["models", "list", "--input-shape", "60x31"], catch_exceptions=False)
    assert res.exit_code == 0, res.output
    rows = {line.split()[1]: line for line in res.stdout.splitlines() if line.split()[1:2]
            and line.split()[1] in PRESETS}
    for (name, f), n in EXACT_COUNTS.items():
        if f == 31:
            assert f"{n:,}" in rows[name], (name, rows.get(name))


def test_direction_presets_take_a_class_head_for_ternary_labels():
    for name in ("direction_lstm", "direction_bilstm", "direction_transformer"):
        cfg = preset_config(name, n_features=39, n_classes=3)
        assert cfg.direction is None and cfg.classifier is not None and cfg.classifier.n_classes == 3
        assert cfg.encoder == preset_config(name, n_features=39).encoder
        assert build_model(cfg)({"x": torch.randn(2, 60, 39)})["logits"].shape == (2, 3)


def test_count_parameters_matches_a_hand_count():
    lstm = nn.LSTM(4, 8)  # 4 gates * 8 * (4 + 8) weights + 2 * 4 * 8 biases
    assert count_parameters(lstm) == 4 * 8 * 12 + 2 * 32
    lstm.bias_ih_l0.requires_grad_(False)
    assert count_parameters(lstm, trainable_only=True) == 4 * 8 * 12 + 32


def test_preset_config_overrides_features_and_classes():
    cfg = preset_config("jade", n_features=11, n_classes=3)
    assert (cfg.n_features, cfg.classifier.n_classes) == (11, 3)
    assert build_model(cfg)({"x": torch.randn(2, 20, 11)})["logits"].shape == (2, 3)
    assert preset_config("direction_lstm", n_classes=2) == preset_config("direction_lstm")
    with pytest.raises(ValueError, match="n_classes must be >= 2, got 1"):
        preset_config("direction_lstm", n_classes=1)


def test_unknown_preset_lists_known_names():
    with pytest.raises(KeyError) as exc:
        preset_config("jadee")
    assert isinstance(exc.value, UnknownPresetError)
    assert all(name in str(exc.value) for name in PRESETS)


def test_describe_presets_sizes_match_built_models():
    rows = describe_presets(input_shape=(105, 31))
    assert [r.name for r in rows] == list(PRESETS)
    for r in rows:
        assert r.params == count_parameters(build_model(preset_config(r.name, n_features=31)))
        assert r.params_per_sample is None and r.warning is None
    assert {r.name: r.task for r in rows}["jade"] == "classifier+pointer"


def test_describe_presets_warns_above_1000_per_sample_only():
    params = {r.name: r.params for r in describe_presets((105, 4))}
    n_at_limit = params["jade"] // MAX_PARAMS_PER_SAMPLE  # ratio just above 1000:1
    rows = {r.name: r for r in describe_presets((105, 4), n_samples=n_at_limit)}
    assert rows["jade"].params_per_sample > MAX_PARAMS_PER_SAMPLE
    assert rows["jade"].warning.startswith(f"{params['jade']:,} parameters for {n_at_limit:,} samples (")
    assert ":1)" in rows["jade"].warning
    plenty = {r.name: r for r in describe_presets((105, 4), n_samples=params["jade"] // 999)}
    assert plenty["jade"].params_per_sample <= MAX_PARAMS_PER_SAMPLE
    assert plenty["jade"].warning is None


def test_describe_presets_example_ratio_text():
    rows = {r.name: r for r in describe_presets((105, 4), n_samples=174)}
    jade = rows["jade"]
    assert f"({jade.params / 174:,.0f}:1)" in jade.warning
    assert rows["jade_compact"].warning is None  # the compact preset exists for exactly this case


def test_describe_presets_flags_windows_longer_than_the_transformer_max_len():
    rows = {r.name: r for r in describe_presets((600, 4))}
    assert "exceeds max_len 512" in rows["direction_transformer"].warning
    assert rows["direction_lstm"].warning is None
