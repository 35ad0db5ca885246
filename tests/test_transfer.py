"""Encoder transfer: full and forward-only loads, loud refusals, and what the report says."""

from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file
from torch import nn

from _real_data import clean_daily_symbols, load_daily
from moola.features import build_features
from moola.models import build_model, jade, simple_lstm
from moola.models.transfer import (
    EncoderCheckpointError,
    EncoderSpec,
    IncompatibleEncoderError,
    encoder_param_names,
    expected_rnn_shapes,
    freeze,
    param_groups,
    read_encoder_dir,
    transfer_encoder,
    unfreeze,
)

H = 128
WINDOW = 105
LAYER1_REASON = "input width 256 (bidirectional layer 0 output) != 128 (unidirectional layer 0 output)"


@lru_cache(maxsize=1)
def _ohlc4() -> tuple[np.ndarray, str]:
    """A real 105-bar ohlc4 window (after the 1-bar warm-up) and the set's schema hash."""
    df = load_daily(clean_daily_symbols(1), max_rows_per_symbol=WINDOW + 1)
    fm = build_features(df, "ohlc4")
    window = fm.values[1 : WINDOW + 1]
    assert window.shape == (WINDOW, 4) and np.isfinite(window).all()
    return window, fm.schema_hash


def real_window() -> torch.Tensor:
    """(1, 105, 4), scaled x100 so the log ratios (~1e-2) drive the gates well off zero."""
    return torch.from_numpy(_ohlc4()[0].copy()).unsqueeze(0) * 100.0


def source_lstm(layers: int = 2, hidden: int = H, bidirectional: bool = True,
                seed: int = 0, kind: str = "lstm") -> nn.LSTM | nn.GRU:
    torch.manual_seed(seed)
    cls = nn.LSTM if kind == "lstm" else nn.GRU
    return cls(4, hidden, layers, batch_first=True, bidirectional=bidirectional).eval()


def write_encoder_dir(path: Path, rnn: nn.RNNBase, *, schema_hash: str | None = "ohlc4",
                      meta_overrides: dict | None = None) -> Path:
    """The pretraining module's on-disk contract, written by hand (plus keys transfer ignores)."""
    path.mkdir(parents=True, exist_ok=True)
    tensors = {f"encoder.rnn.{k}": v.detach().clone().contiguous() for k, v in rnn.state_dict().items()}
    tensors["mask_token"] = torch.zeros(4)
    tensors["head.weight"] = torch.ones(4, 2 * rnn.hidden_size)
    save_file(tensors, str(path / "encoder.safetensors"))
    meta = {
        "type": "lstm" if isinstance(rnn, nn.LSTM) else "gru",
        "layers": rnn.num_layers,
        "hidden": rnn.hidden_size,
        "bidirectional": rnn.bidirectional,
        "input_size": rnn.input_size,
        "feature_set": "ohlc4",
        "feature_schema_hash": _ohlc4()[1] if schema_hash == "ohlc4" else schema_hash,
        "window": WINDOW,
    } | (meta_overrides or {})
    (path / "encoder.json").write_text(json.dumps(meta))
    return path


def rnn_params(model: nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.named_parameters() if n.startswith("encoder.rnn.")}


@pytest.fixture
def bilstm() -> nn.LSTM:
    rnn = source_lstm()
    assert isinstance(rnn, nn.LSTM)
    return rnn


@pytest.fixture
def src_dir(tmp_path: Path, bilstm: nn.LSTM) -> Path:
    return write_encoder_dir(tmp_path / "enc", bilstm)


# --- full ------------------------------------------------------------------------------------


def test_full_into_jade_loads_every_tensor_bitwise(src_dir: Path, bilstm: nn.LSTM) -> None:
    torch.manual_seed(1)
    model = build_model(jade())
    heads_before = {n: p.detach().clone() for n, p in model.heads.named_parameters()}
    report = transfer_encoder(model, src_dir, "full", expected_schema_hash=_ohlc4()[1])

    text = str(report)
    assert text.splitlines()[0].startswith("16/16 encoder tensors transferred")
    assert (report.n_transferred, report.n_target_encoder_tensors) == (16, 16)
    assert report.unused == {}
    assert report.layers == [f"layer {k} {d}: 4/4 tensors transferred"
                             for k in (0, 1) for d in ("forward", "backward")]
    source = bilstm.state_dict()
    for name, p in model.encoder.rnn.named_parameters():
        assert torch.equal(p.detach(), source[name]), name
    assert sorted(report.transferred_names) == sorted(encoder_param_names(model))
    for n, p in model.heads.named_parameters():  # heads are not the encoder's business
        assert torch.equal(p.detach(), heads_before[n]), n

    model.eval()
    x = real_window()
    with torch.no_grad():
        torch.testing.assert_close(model.encode(x), bilstm(x)[0], rtol=0, atol=0)


def test_full_one_layer_source_into_two_layer_target_is_loud(tmp_path: Path) -> None:
    """The '8 of 16' partial load users hit: refused, every missing layer-1 tensor named."""
    src = write_encoder_dir(tmp_path / "enc1", source_lstm(layers=1))
    model = build_model(jade())
    before = rnn_params(model)
    with pytest.raises(IncompatibleEncoderError) as err:
        transfer_encoder(model, src, "full")
    msg = str(err.value)
    assert "only 8 of 16 target encoder tensors match" in msg
    assert "layers: source 1 != target 2" in msg
    for name, shape in expected_rnn_shapes(EncoderSpec("lstm", 2, H, True, 4)).items():
        if "_l1" in name:
            assert f"{name}: missing in source (target shape {shape})" in msg
    assert err.value.report is not None and err.value.report.n_transferred == 8
    after = rnn_params(model)
    assert all(torch.equal(before[n], after[n]) for n in before)  # nothing was loaded


def test_full_hidden_mismatch_names_both_shapes(tmp_path: Path) -> None:
    src = write_encoder_dir(tmp_path / "enc64", source_lstm(hidden=64))
    model = build_model(jade())
    before = rnn_params(model)
    with pytest.raises(IncompatibleEncoderError) as err:
        transfer_encoder(model, src, "full")
    msg = str(err.value)
    assert "hidden size: source 64 != target 128" in msg
    assert "encoder.rnn.weight_ih_l0: source shape (256, 4) != target shape (512, 4)" in msg
    assert "encoder.rnn.weight_hh_l1_reverse: source shape (256, 64) != target shape (512, 128)" in msg
    assert all(torch.equal(before[n], p) for n, p in rnn_params(model).items())


def test_full_bidirectional_into_unidirectional_points_to_forward_only(src_dir: Path) -> None:
    with pytest.raises(IncompatibleEncoderError, match="use mode='forward-only'") as err:
        transfer_encoder(build_model(simple_lstm()), src_dir, "full")
    assert "encoder.rnn.weight_ih_l0_reverse: (512, 4) in source but not in target" in str(err.value)


# --- forward-only ----------------------------------------------------------------------------


def test_forward_only_into_simple_lstm_report_and_weights(src_dir: Path, bilstm: nn.LSTM) -> None:
    torch.manual_seed(2)
    model = build_model(simple_lstm())
    init = rnn_params(model)
    report = transfer_encoder(model, src_dir, "forward-only", expected_schema_hash=_ohlc4()[1])

    text = str(report)
    assert text.splitlines()[0].startswith("4/8 encoder tensors transferred")
    assert (report.n_transferred, report.n_target_encoder_tensors) == (4, 8)
    assert report.layers[0] == "layer 0 forward: 4/4 tensors transferred"
    assert report.layers[1].startswith(f"layer 1 forward: 0/4 — {LAYER1_REASON}: not transferred")
    assert len(report.layers) == 2
    status = {t.target: t.status for t in report.tensors}
    assert status == {
        "encoder.rnn.weight_ih_l0": "transferred", "encoder.rnn.weight_hh_l0": "transferred",
        "encoder.rnn.bias_ih_l0": "transferred", "encoder.rnn.bias_hh_l0": "transferred",
        "encoder.rnn.weight_ih_l1": "shape_mismatch", "encoder.rnn.weight_hh_l1": "skipped",
        "encoder.rnn.bias_ih_l1": "skipped", "encoder.rnn.bias_hh_l1": "skipped",
    }
    backward = sorted(n for n, why in report.unused.items() if why == "backward direction")
    assert backward == sorted(n for n in expected_rnn_shapes(EncoderSpec("lstm", 2, H, True, 4))
                              if n.endswith("_reverse"))
    assert len(backward) == 8
    assert "8 unused (backward direction)" in text
    assert "mask_token" not in report.unused and "head.weight" not in report.unused

    source = bilstm.state_dict()
    after = rnn_params(model)
    for kind in ("weight_ih", "weight_hh", "bias_ih", "bias_hh"):
        assert torch.equal(after[f"encoder.rnn.{kind}_l0"], source[f"{kind}_l0"])
        assert not torch.equal(after[f"encoder.rnn.{kind}_l0"], source[f"{kind}_l0_reverse"])
        assert torch.equal(after[f"encoder.rnn.{kind}_l1"], init[f"encoder.rnn.{kind}_l1"])
    assert report.transferred_names == [f"encoder.rnn.{k}_l0" for k in
                                        ("weight_ih", "weight_hh", "bias_ih", "bias_hh")]


def _manual_lstm(x: torch.Tensor, w_ih: torch.Tensor, w_hh: torch.Tensor, b_ih: torch.Tensor,
                 b_hh: torch.Tensor) -> torch.Tensor:
    """One LSTM direction written out (gates i, f, g, o in PyTorch's order), left to right."""
    h = torch.zeros(x.shape[0], w_hh.shape[1], dtype=torch.float64)
    c = torch.zeros_like(h)
    outs = []
    for t in range(x.shape[1]):
        i, f, g, o = (x[:, t] @ w_ih.T + b_ih + h @ w_hh.T + b_hh).chunk(4, dim=-1)
        c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
        h = torch.sigmoid(o) * torch.tanh(c)
        outs.append(h)
    return torch.stack(outs, dim=1)


def test_forward_only_layer0_reproduces_the_bilstm_forward_direction(
        src_dir: Path, bilstm: nn.LSTM) -> None:
    """On a real window, the target's layer 0 computes what the BiLSTM's forward half computed."""
    model = build_model(simple_lstm())
    transfer_encoder(model, src_dir, "forward-only")
    x = real_window()
    target = dict(model.encoder.rnn.named_parameters())
    uni = nn.LSTM(4, H, 1, batch_first=True)  # the target's layer 0 on its own
    bi0 = nn.LSTM(4, H, 1, batch_first=True, bidirectional=True)  # the source's layer 0
    src = bilstm.state_dict()
    with torch.no_grad():
        for name, p in uni.named_parameters():
            p.copy_(target[name])
        for name, p in bi0.named_parameters():
            p.copy_(src[name])
        ours = uni(x)[0]
        theirs = bi0(x)[0]
        manual = _manual_lstm(x.double(), *(src[f"{k}_l0"].double()
                                            for k in ("weight_ih", "weight_hh", "bias_ih", "bias_hh")))
    torch.testing.assert_close(ours, theirs[..., :H], rtol=0, atol=0)
    torch.testing.assert_close(ours.double(), manual, rtol=1e-5, atol=1e-6)
    assert ours.abs().max() > 0.05  # the window really drives the cell
    assert not torch.allclose(ours, theirs[..., H:], atol=1e-3)  # and it is not the backward half


def test_forward_only_extra_target_layers_are_missing_not_an_error(tmp_path: Path) -> None:
    src = write_encoder_dir(tmp_path / "enc1", source_lstm(layers=1))
    report = transfer_encoder(build_model(simple_lstm()), src, "forward-only")
    assert report.headline == "4/8 encoder tensors transferred"
    assert report.layers[1].startswith("layer 1 forward: 0/4 — layer 1 not in source")
    assert [t.status for t in report.tensors[4:]] == ["missing"] * 4
    assert "missing (not in source)" in str(report)


def test_forward_only_refusals(tmp_path: Path, src_dir: Path) -> None:
    uni = write_encoder_dir(tmp_path / "uni", source_lstm(bidirectional=False))
    with pytest.raises(IncompatibleEncoderError, match="needs a bidirectional source"):
        transfer_encoder(build_model(simple_lstm()), uni, "forward-only")
    with pytest.raises(IncompatibleEncoderError, match="needs a unidirectional target"):
        transfer_encoder(build_model(jade()), src_dir, "forward-only")
    small = write_encoder_dir(tmp_path / "h64", source_lstm(hidden=64))
    with pytest.raises(IncompatibleEncoderError) as err:
        transfer_encoder(build_model(simple_lstm()), small, "forward-only")
    assert "hidden size: source 64 != target 128" in str(err.value)
    assert "encoder.rnn.weight_hh_l0: source shape (256, 64) != target shape (512, 128)" in str(err.value)
    gru = write_encoder_dir(tmp_path / "gru", source_lstm(kind="gru"))
    with pytest.raises(IncompatibleEncoderError, match="type: source gru != target lstm"):
        transfer_encoder(build_model(simple_lstm()), gru, "forward-only")


# --- feature schema --------------------------------------------------------------------------


def test_schema_hash_mismatch_names_both_hashes(src_dir: Path) -> None:
    model = build_model(jade())
    before = rnn_params(model)
    with pytest.raises(IncompatibleEncoderError) as err:
        transfer_encoder(model, src_dir, "full", expected_schema_hash="0123456789abcdef")
    assert f"source {_ohlc4()[1]}" in str(err.value)
    assert "expected 0123456789abcdef" in str(err.value)
    assert all(torch.equal(before[n], p) for n, p in rnn_params(model).items())


def test_input_size_mismatch_names_both_sizes(src_dir: Path) -> None:
    with pytest.raises(IncompatibleEncoderError, match="input size: source 4 features != target 11"):
        transfer_encoder(build_model(jade(n_features=11)), src_dir, "full")


def test_source_without_hash_strict_and_lenient(tmp_path: Path, bilstm: nn.LSTM) -> None:
    src = write_encoder_dir(tmp_path / "nohash", bilstm, schema_hash=None)
    with pytest.raises(IncompatibleEncoderError, match="declares no feature schema hash"):
        transfer_encoder(build_model(jade()), src, "full", expected_schema_hash=_ohlc4()[1])
    report = transfer_encoder(build_model(jade()), src, "full", expected_schema_hash=_ohlc4()[1],
                              strict=False)
    assert report.n_transferred == 16 and "warning: source declares no feature schema hash" in str(report)


# --- the encoder directory contract ----------------------------------------------------------


def test_read_encoder_dir_round_trip(src_dir: Path, bilstm: nn.LSTM) -> None:
    spec, state = read_encoder_dir(src_dir)
    assert spec == EncoderSpec("lstm", 2, H, True, 4, "ohlc4", _ohlc4()[1], WINDOW)
    assert set(state) == {f"encoder.rnn.{k}" for k in bilstm.state_dict()}  # extras dropped
    assert EncoderSpec.from_dict(spec.to_dict()) == spec


def test_in_memory_source(bilstm: nn.LSTM) -> None:
    spec = EncoderSpec("lstm", 2, H, True, 4)
    state = {f"encoder.rnn.{k}": v for k, v in bilstm.state_dict().items()}
    assert transfer_encoder(build_model(jade()), (spec, state), "full").n_transferred == 16
    with pytest.raises(EncoderCheckpointError, match=r"weight_ih_l0_reverse: not part of the declared"):
        transfer_encoder(build_model(jade()), (EncoderSpec("lstm", 2, H, False, 4), state), "full")
    del state["encoder.rnn.bias_hh_l1"]
    with pytest.raises(EncoderCheckpointError, match=r"bias_hh_l1: declared \(512,\) but absent"):
        transfer_encoder(build_model(jade()), (spec, state), "full")


def test_read_encoder_dir_errors_name_the_file(tmp_path: Path, bilstm: nn.LSTM) -> None:
    with pytest.raises(EncoderCheckpointError, match="does not exist"):
        read_encoder_dir(tmp_path / "nope")
    d = write_encoder_dir(tmp_path / "a", bilstm)
    (d / "encoder.json").unlink()
    with pytest.raises(EncoderCheckpointError, match=r"lacks .*encoder\.json"):
        read_encoder_dir(d)

    d = write_encoder_dir(tmp_path / "b", bilstm)
    (d / "encoder.json").write_text("{not json")
    with pytest.raises(EncoderCheckpointError, match=r"b/encoder\.json: not valid JSON"):
        read_encoder_dir(d)

    d = write_encoder_dir(tmp_path / "c", bilstm, meta_overrides={"type": "transformer", "layers": 0})
    with pytest.raises(EncoderCheckpointError) as err:
        read_encoder_dir(d)
    assert "c/encoder.json" in str(err.value)
    assert "type: expected one of ['gru', 'lstm'], got 'transformer'" in str(err.value)
    assert "layers: expected a positive integer, got 0" in str(err.value)

    d = write_encoder_dir(tmp_path / "d", bilstm, meta_overrides={"layers": 3})  # json lies
    with pytest.raises(EncoderCheckpointError) as err:
        read_encoder_dir(d)
    assert "d/encoder.safetensors" in str(err.value)
    assert "encoder.rnn.weight_ih_l2: declared (512, 256) but absent" in str(err.value)

    d = write_encoder_dir(tmp_path / "e", bilstm)
    (d / "encoder.safetensors").write_bytes(b"garbage")
    with pytest.raises(EncoderCheckpointError, match=r"e/encoder\.safetensors: not a readable"):
        read_encoder_dir(d)


def test_bad_mode_and_non_rnn_target(src_dir: Path) -> None:
    with pytest.raises(ValueError, match="mode must be one of"):
        transfer_encoder(build_model(jade()), src_dir, "partial")  # type: ignore[arg-type]
    from moola.models import direction_transformer

    with pytest.raises(IncompatibleEncoderError, match="got TransformerEncoder"):
        transfer_encoder(build_model(direction_transformer(n_features=4)), src_dir, "full")


# --- freezing and learning rates -------------------------------------------------------------


def test_freeze_exact_names_after_forward_only(src_dir: Path) -> None:
    model = build_model(simple_lstm())
    report = transfer_encoder(model, src_dir, "forward-only")
    assert freeze(model, report.transferred_names) == 4
    grads = {n: p.requires_grad for n, p in model.named_parameters()}
    assert {n for n, g in grads.items() if not g} == set(report.transferred_names)
    model({"x": real_window()})["logits"].sum().backward()
    for n, p in model.named_parameters():
        assert (p.grad is None) == (n in report.transferred_names), n
    assert unfreeze(model, report.transferred_names) == 4
    assert all(p.requires_grad for p in model.parameters())
    with pytest.raises(KeyError, match=r"encoder\.rnn\.weight_ih_l9"):
        freeze(model, ["encoder.rnn.weight_ih_l9"])


def test_param_groups_give_the_encoder_its_own_lr(src_dir: Path) -> None:
    torch.manual_seed(3)
    model = build_model(simple_lstm())
    report = transfer_encoder(model, src_dir, "forward-only")
    groups = param_groups(model, report.transferred_names, base_lr=1e-2, encoder_lr=1e-5)
    assert [(g["name"], g["lr"], len(g["params"])) for g in groups] == [
        ("transferred_encoder", 1e-5, 4), ("base", 1e-2, len(list(model.parameters())) - 4)]
    ids = [id(p) for g in groups for p in g["params"]]
    assert sorted(ids) == sorted(id(p) for p in model.parameters())  # each exactly once

    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    opt = torch.optim.Adam(groups)
    model.train()
    model({"x": real_window()})["logits"].sum().backward()
    opt.step()  # Adam's first step moves each element by ~lr (sign of its gradient)
    for n, p in model.named_parameters():
        step = (p.detach() - before[n]).abs().max().item()
        if n in report.transferred_names:
            assert step <= 1.01e-5, n
        elif n == "encoder.rnn.weight_hh_l1":
            assert step > 1e-3, n
    with pytest.raises(KeyError, match="nope"):
        param_groups(model, ["nope"], 1e-3, 1e-4)
