"""The cross-sectional ranking model: GAT depth, per-layer lists, masking, graph locality,
permutation equivariance, the Alpha360 lags layout, presets, YAML and FAN causality."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from moola.config import ConfigError
from moola.models import UnknownPresetError, count_parameters
from moola.models.config import RNNEncoderConfig, TransformerEncoderConfig
from moola.models.graph import FAN, FANConfig, GATConfig, GATLayer, GATStack, build_gat_stack
from moola.models.ranking import (
    RANKING_PRESETS,
    RankingModel,
    RankingModelConfig,
    build_ranking_model,
    describe_ranking_presets,
    lags_to_steps,
    ranking_preset_config,
)

D, S, T, F_IN, H = 2, 12, 8, 5, 2


def _batch(seed: int = 0, edge_dim: int = 2, d: int = D, s: int = S, t: int = T, f: int = F_IN
           ) -> dict[str, torch.Tensor]:
    """A small day batch: a few absent stocks, a random symmetric graph, edge attributes."""
    g = torch.Generator().manual_seed(seed)
    mask = torch.ones(d, s, dtype=torch.bool)
    mask[0, [2 % s, 7 % s]] = False
    mask[1, [0, 5 % s, 11 % s]] = False
    adj = torch.rand(d, s, s, generator=g) < 0.35
    adj = adj | adj.transpose(1, 2)
    x = torch.randn(d, s, t, f, generator=g) * mask[:, :, None, None]
    y = torch.randn(d, s, H, generator=g) * mask[:, :, None]
    out = {"x": x, "mask": mask, "adj": adj, "y": y, "y_mask": mask[:, :, None].expand(d, s, H).clone()}
    if edge_dim:
        out["edge_attr"] = torch.randn(d, s, s, edge_dim, generator=g)
    return out


def _config(layers: int = 2, heads: int | list[int] = 2, concat: bool | list[bool] = True,
            graph: str = "knn", edge_dim: int = 2, fan: bool = True, skip: bool = True,
            hidden: int = 8) -> RankingModelConfig:
    return RankingModelConfig.model_validate({
        "name": "tiny",
        "encoder": {"kind": "gru", "input_size": F_IN, "hidden": 6, "layers": 1},
        "fan": {"windows": [2, 4]} if fan else None,
        "gat": {"layers": layers, "hidden": hidden, "heads": heads, "concat": concat,
                "edge_dim": edge_dim, "graph": graph},
        "horizons": [1, 5], "head_hidden": 7, "skip": skip,
    })


def _loss(model: RankingModel, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    score = model(batch)["ranking"]  # (D, S, H)
    m = batch["y_mask"]
    return ((score - batch["y"])[m] ** 2).mean()


# ------------------------------------------------------------------ (a) every depth trains

@pytest.mark.parametrize("list_heads", [False, True], ids=["scalar-heads", "list-heads"])
@pytest.mark.parametrize("layers", [1, 2, 3, 4, 8])
def test_every_gat_depth_builds_and_trains(layers: int, list_heads: bool) -> None:
    torch.manual_seed(layers)
    heads: int | list[int] = [(1, 2, 4)[i % 3] for i in range(layers)] if list_heads else 2
    concat: bool | list[bool] = [i % 2 == 0 for i in range(layers)] if list_heads else True
    cfg = _config(layers=layers, heads=heads, concat=concat)
    model = build_ranking_model(cfg)
    assert len(model.gat) == layers
    resolved = cfg.gat.per_layer(6)
    assert [la.heads for la in model.gat.layers] == [r[2] for r in resolved]
    assert [la.concat for la in model.gat.layers] == cfg.gat.layer_concat
    if not list_heads:
        assert cfg.gat.layer_concat == [True] * (layers - 1) + [False]  # the last layer averages
    assert all(la.out_features == 8 for la in model.gat.layers)
    batch = _batch(layers)
    before = {n: p.detach().clone() for n, p in model.gat.named_parameters()}
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    losses = []
    for step in range(5):
        opt.zero_grad()
        loss = _loss(model, batch)
        loss.backward()
        if step == 0:
            for n, p in model.gat.named_parameters():
                assert p.grad is not None and torch.isfinite(p.grad).all(), n
                assert p.grad.abs().max() > 0, f"{n} got a zero gradient"
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0]
    for n, p in model.gat.named_parameters():
        assert not torch.equal(p.detach(), before[n]), f"{n} did not change"
    out = model(batch)["ranking"]
    assert out.shape == (D, S, H) and torch.isfinite(out).all()


# ------------------------------------------------------------------ (b) per-layer lists

@pytest.mark.parametrize("field", ["heads", "concat"])
def test_per_layer_list_of_wrong_length_names_the_field(field: str) -> None:
    value = [2, 2] if field == "heads" else [True, False]
    with pytest.raises(ValueError, match=rf"gat\.{field} has 2 entries but gat\.layers is 3"):
        GATConfig(layers=3, hidden=8, **{field: value})
    data = _config().to_dict()
    data["gat"].update({"layers": 3, field: value})
    with pytest.raises(ConfigError, match=rf"{field} has 2 entries"):
        RankingModelConfig.from_dict(data)


def test_concatenating_heads_must_divide_hidden() -> None:
    with pytest.raises(ValueError, match=r"gat\.heads\[0\] \(3\) must divide gat\.hidden \(8\)"):
        GATConfig(layers=2, hidden=8, heads=3)
    assert GATConfig(layers=1, hidden=8, heads=3).per_layer(5) == [(5, 8, 3, False)]  # averages: fine


def test_per_layer_resolves_widths_and_an_explicit_last_concat() -> None:
    cfg = GATConfig(layers=3, hidden=12, heads=[2, 3, 4], concat=[True, False, True])
    assert cfg.per_layer(7) == [(7, 6, 2, True), (12, 12, 3, False), (12, 3, 4, True)]
    stack = build_gat_stack(cfg, 7)
    assert stack.out_dim == 12 and stack.layers[2].concat
    assert GATConfig(layers=0).per_layer(7) == [] and build_gat_stack(GATConfig(layers=0), 7).out_dim == 7


# ------------------------------------------------------------------ (c) masking and locality

def test_absent_stocks_score_zero_and_never_reach_present_ones() -> None:
    torch.manual_seed(0)
    model = build_ranking_model(_config(layers=2)).eval()
    batch = _batch()
    with torch.no_grad():
        base = model(batch)["ranking"]
        changed = dict(batch)
        changed["x"] = batch["x"].clone()
        changed["x"][~batch["mask"]] = 100 * torch.randn(int((~batch["mask"]).sum()), T, F_IN)
        edited = model(changed)["ranking"]
    assert torch.equal(base[~batch["mask"]], torch.zeros_like(base[~batch["mask"]]))
    assert torch.equal(base, edited)


def test_depth_one_score_ignores_non_neighbours_but_not_neighbours() -> None:
    torch.manual_seed(1)
    model = build_ranking_model(_config(layers=1, heads=2)).eval()
    batch = _batch(3)
    day, i = 0, 4
    nbrs = batch["adj"][day, i] & batch["mask"][day]
    nbrs[i] = False
    far = [j for j in range(S) if batch["mask"][day, j] and not nbrs[j] and j != i]
    near = [j for j in range(S) if nbrs[j]]
    assert far and near, "the fixture graph must give stock 4 both neighbours and non-neighbours"
    with torch.no_grad():
        base = model(batch)["ranking"][day, i]
        for j, should_change in [(far[0], False), (near[0], True)]:
            edited = dict(batch)
            edited["x"] = batch["x"].clone()
            edited["x"][day, j] += 3 * torch.randn(T, F_IN)
            got = model(edited)["ranking"][day, i]
            if should_change:
                assert (got - base).abs().max() > 1e-4
            else:
                torch.testing.assert_close(got, base, rtol=0, atol=1e-6)


def test_dense_graph_ignores_adj_and_sparse_graph_requires_it() -> None:
    torch.manual_seed(2)
    dense = build_ranking_model(_config(graph="dense")).eval()
    batch = _batch()
    no_adj = {k: v for k, v in batch.items() if k != "adj"}
    with torch.no_grad():
        torch.testing.assert_close(dense(batch)["ranking"], dense(no_adj)["ranking"])
    knn = build_ranking_model(_config(graph="knn"))
    with pytest.raises(KeyError, match=r"batch\['adj'\] \(D, S, S\)"):
        knn(no_adj)
    with pytest.raises(KeyError, match=r"batch\['edge_attr'\] \(D, S, S, 2\)"):
        knn({k: v for k, v in batch.items() if k != "edge_attr"})


def test_shape_errors_name_the_tensor_and_expected_shape() -> None:
    model = build_ranking_model(_config())
    batch = _batch()
    with pytest.raises(ValueError, match=r"x must be \(D, S, T, F\) with F = 5, got \(2, 12, 8, 4\)"):
        model({**batch, "x": batch["x"][..., :4]})
    with pytest.raises(ValueError, match=r"mask must be \(D, S\) = \(2, 12\) bool, like x, got \(2, 11\)"):
        model({**batch, "mask": batch["mask"][:, :11]})
    with pytest.raises(ValueError, match=r"edge_attr must be \(D, S, S, E\) = \(2, 12, 12, 2\)"):
        model({**batch, "edge_attr": batch["edge_attr"][..., :1]})
    with pytest.raises(KeyError, match="no 'x' tensor"):
        model({"mask": batch["mask"]})


def test_gat_layer_has_no_nan_for_isolated_stocks_or_empty_days() -> None:
    torch.manual_seed(3)
    layer = GATLayer(4, 3, heads=2, concat=True, edge_dim=0)
    h = torch.randn(2, 5, 4)
    mask = torch.tensor([[True, True, False, True, True], [False] * 5])
    adj = torch.zeros(2, 5, 5, dtype=torch.bool)
    adj[0, 0, 1] = True  # stock 0 sees 1; everyone else is isolated
    out, att = layer(h, mask, adj, return_attention=True)
    assert out.shape == (2, 5, 6) and att.shape == (2, 2, 5, 5)
    assert torch.isfinite(out).all() and torch.isfinite(att).all()
    torch.testing.assert_close(att.sum(-1), torch.ones(2, 2, 5))
    assert torch.equal(out[~mask], torch.zeros_like(out[~mask]))
    assert att[0, :, 3, 3].eq(1).all()  # isolated: attends to itself
    dense = torch.ones(2, 5, 5, dtype=torch.bool)
    h2 = h.clone()
    h2[~mask] = 50 * torch.randn(int((~mask).sum()), 4)  # absent rows' inputs must not leak in
    a, b = layer(h, mask, dense), layer(h2, mask, dense)
    assert isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor)
    torch.testing.assert_close(a, b, rtol=0, atol=1e-6)
    assert att[0, :, 0, 1].gt(0).all() and att[0, :, 0, 2:].eq(0).all()


def test_model_attention_averages_heads_and_zeroes_absent_stocks() -> None:
    torch.manual_seed(4)
    model = build_ranking_model(_config(layers=2, graph="dense")).eval()
    batch = _batch()
    with torch.no_grad():
        att = model.attention(batch)
    assert att.shape == (D, S, S)
    m = batch["mask"]
    torch.testing.assert_close(att.sum(-1)[m], torch.ones(int(m.sum())))
    assert att[~m].abs().sum() == 0 and att.transpose(1, 2)[~m].abs().sum() == 0
    no_graph = build_ranking_model(_config(layers=0))
    with pytest.raises(ValueError, match=r"gat\.layers = 0"):
        no_graph.attention(batch)


# ------------------------------------------------------------------ (d) permutation equivariance

def test_dense_attention_is_permutation_equivariant_across_stocks() -> None:
    torch.manual_seed(5)
    model = build_ranking_model(_config(layers=3, graph="dense")).eval()
    batch = _batch(7)
    perm = torch.randperm(S)
    permuted = {"x": batch["x"][:, perm], "mask": batch["mask"][:, perm],
                "edge_attr": batch["edge_attr"][:, perm][:, :, perm]}
    with torch.no_grad():
        base = model(batch)["ranking"]
        got = model(permuted)["ranking"]
        att, att_p = model.attention(batch), model.attention(permuted)
    torch.testing.assert_close(got, base[:, perm], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(att_p, att[:, perm][:, :, perm], rtol=1e-5, atol=1e-6)


# ------------------------------------------------------------------ (e) lags layout

def test_lags_reshape_matches_qlib_and_the_window_model() -> None:
    torch.manual_seed(6)
    fields, lags = 3, 7
    steps = torch.randn(D, S, lags, fields)  # (D, S, lags, fields): what the encoder should read
    flat = steps.permute(0, 1, 3, 2).reshape(D, S, 1, fields * lags)  # field 0 lags oldest first, ...
    n = D * S
    manual = flat.reshape(n, fields * lags).reshape(n, fields, lags).permute(0, 2, 1)  # Qlib GATs
    torch.testing.assert_close(lags_to_steps(flat.reshape(n, -1), fields), manual, rtol=0, atol=0)
    torch.testing.assert_close(manual.reshape(D, S, lags, fields), steps, rtol=0, atol=0)
    common = {"name": "l", "encoder": {"kind": "lstm", "input_size": fields, "hidden": 4, "layers": 1},
              "gat": {"layers": 1, "hidden": 4, "heads": 1}, "horizons": [1]}
    lag_model = build_ranking_model(RankingModelConfig.model_validate(
        {**common, "input_layout": "lags", "lag_fields": fields})).eval()
    win_model = build_ranking_model(RankingModelConfig.model_validate(common)).eval()
    win_model.load_state_dict(lag_model.state_dict())
    mask = torch.ones(D, S, dtype=torch.bool)
    mask[1, 3] = False
    with torch.no_grad():
        a = lag_model({"x": flat, "mask": mask})["ranking"]
        b = win_model({"x": steps, "mask": mask})["ranking"]
    torch.testing.assert_close(a, b)
    with pytest.raises(ValueError, match=r"not a multiple of 3"):
        lag_model({"x": flat[..., :-1], "mask": mask})
    with pytest.raises(ValueError, match=r"x must be \(D, S, 1, F\)"):
        lag_model({"x": steps, "mask": mask})


def test_lags_layout_config_checks() -> None:
    enc = {"kind": "lstm", "input_size": 6}
    with pytest.raises(ConfigError, match="needs lag_fields"):
        RankingModelConfig.from_dict({"name": "a", "encoder": enc, "input_layout": "lags", "horizons": [1]})
    with pytest.raises(ConfigError, match=r"lag_fields \(5\) must equal encoder.input_size \(6\)"):
        RankingModelConfig.from_dict({"name": "a", "encoder": enc, "input_layout": "lags",
                                      "lag_fields": 5, "horizons": [1]})
    with pytest.raises(ConfigError, match="horizons must be unique"):
        RankingModelConfig.from_dict({"name": "a", "encoder": enc, "horizons": [1, 1]})


# ------------------------------------------------------------------ (f) presets

PINNED = {"gats_like": 60_420, "atft_gat_fan": 121_194, "temporal_only": 95_834}


def _preset_batch(cfg: RankingModelConfig, d: int = 2, s: int = 6) -> dict[str, torch.Tensor]:
    b = _batch(0, edge_dim=cfg.gat.edge_dim, d=d, s=s, t=20, f=cfg.n_features)
    b["mask"] = torch.ones(d, s, dtype=torch.bool)
    b["mask"][0, 1] = False
    if cfg.input_layout == "lags":
        b["x"] = torch.randn(d, s, 1, cfg.n_features * 60)
    return b


def test_presets_pin_their_parameter_counts() -> None:
    assert set(PINNED) == set(RANKING_PRESETS)
    for name in RANKING_PRESETS:
        torch.manual_seed(0)
        cfg = ranking_preset_config(name)
        model = build_ranking_model(cfg)
        assert count_parameters(model) == PINNED[name], name
        out = model.eval()(_preset_batch(cfg))["ranking"]
        assert out.shape == (2, 6, 4) and torch.isfinite(out).all()
    rows = describe_ranking_presets()
    assert [(r.name, r.params) for r in rows] == list(PINNED.items())
    assert all(r.description for r in rows)


def test_gats_like_count_by_hand() -> None:
    lstm = (4 * 64 * (6 + 64) + 8 * 64) + (4 * 64 * (64 + 64) + 8 * 64)
    gat = 64 * 64 + 2 * 64 + 64  # projection, a_src + a_dst, bias; identity residual
    head = (64 * 64 + 64) + (64 * 4 + 4)
    assert count_parameters(build_ranking_model(ranking_preset_config("gats_like"))) == lstm + gat + head


def test_preset_shapes_overrides_and_unknown_names() -> None:
    cfg = ranking_preset_config("atft_gat_fan", n_features=12, horizons=(1, 5))
    assert (cfg.n_features, cfg.horizons, cfg.gat.graph, cfg.gat.edge_dim) == (12, [1, 5], "knn+sector", 2)
    assert cfg.fan == FANConfig(windows=[5, 10, 20]) and cfg.gat.layers in (2, 3)
    abl = ranking_preset_config("temporal_only", n_features=12, horizons=(1, 5))
    assert abl.gat.layers == 0 and abl.encoder == cfg.encoder and abl.fan == cfg.fan
    gl = ranking_preset_config("gats_like")
    got = (gl.input_layout, gl.lag_fields, gl.gat.layers, gl.gat.graph, gl.fan)
    assert got == ("lags", 6, 1, "dense", None)
    with pytest.raises(UnknownPresetError, match="known presets: gats_like, atft_gat_fan, temporal_only"):
        ranking_preset_config("hist")


def test_transformer_encoder_works_in_the_ranking_model() -> None:
    torch.manual_seed(8)
    cfg = _config().model_copy(update={"encoder": TransformerEncoderConfig(
        input_size=F_IN, d_model=8, heads=2, layers=1, ff=16, causal=True)})
    out = build_ranking_model(cfg).eval()(_batch())["ranking"]
    assert out.shape == (D, S, H) and torch.isfinite(out).all()


# ------------------------------------------------------------------ (g) YAML round trip

@pytest.mark.parametrize("name", [*RANKING_PRESETS, "lists"])
def test_ranking_config_round_trips_yaml(tmp_path, name: str) -> None:
    cfg = (_config(layers=3, heads=[1, 2, 4], concat=[True, False, True]) if name == "lists"
           else ranking_preset_config(name))
    path = tmp_path / "model.yaml"
    cfg.to_yaml(path)
    back = RankingModelConfig.from_yaml(path)
    assert back == cfg
    assert isinstance(back.encoder, RNNEncoderConfig)
    a, b = build_ranking_model(cfg).state_dict(), build_ranking_model(back).state_dict()
    assert {k: v.shape for k, v in a.items()} == {k: v.shape for k, v in b.items()}


# ------------------------------------------------------------------ (h) FAN

def test_fan_matches_rolling_zscores_and_starts_as_an_equal_blend() -> None:
    torch.manual_seed(9)
    x = torch.randn(3, 15, 2, dtype=torch.float64) * 4 + 50
    fan = FAN(2, windows=(3, 6), eps=1e-5).double()
    z = fan.zscores(x)
    for wi, w in enumerate((3, 6)):
        for f in range(2):
            s = pd.Series(x[1, :, f].numpy())
            r = s.rolling(w, min_periods=1)
            want = (s - r.mean()) / (r.std(ddof=0) + 1e-5)
            np.testing.assert_allclose(z[1, :, f, wi].numpy(), want.to_numpy(), atol=1e-8)
    torch.testing.assert_close(fan(x), z.mean(-1))


@settings(max_examples=25, deadline=None)
@given(t=st.integers(0, 18), seed=st.integers(0, 10_000))
def test_fan_output_at_t_ignores_later_steps(t: int, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    fan = FAN(3, windows=(2, 5, 9))
    with torch.no_grad():
        fan.alpha.copy_(torch.randn(3, 3, generator=g))
    x = torch.randn(2, 20, 3, generator=g)
    later = x.clone()
    later[:, t + 1:] = 10 * torch.randn(2, 19 - t, 3, generator=g)
    with torch.no_grad():
        torch.testing.assert_close(fan(later)[:, : t + 1], fan(x)[:, : t + 1], rtol=0, atol=0)
        if t < 19:
            assert not torch.equal(fan(later)[:, t + 1:], fan(x)[:, t + 1:])


def test_fan_gradients_reach_alpha_gamma_beta() -> None:
    torch.manual_seed(10)
    fan = FAN(4, windows=(2, 5, 10))
    x = torch.randn(3, 12, 4)
    x[:, :3] = 0.0  # a flat stretch: std 0 must not make a NaN gradient
    (fan(x) * torch.randn(3, 12, 4)).sum().backward()
    for p in (fan.alpha, fan.gamma, fan.beta):
        assert p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().min() > 0
    with pytest.raises(ValueError, match="windows must be unique"):
        FANConfig(windows=[5, 5])


def test_gat_stack_checks_layer_widths() -> None:
    with pytest.raises(ValueError, match="layer 0 outputs 6 features but layer 1 expects 5"):
        GATStack([GATLayer(4, 3, 2, True), GATLayer(5, 3, 2, False)])
