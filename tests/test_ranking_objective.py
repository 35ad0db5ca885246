"""The ranking objective: soft ranks, per-day losses over present stocks, IC / RankIC metrics."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy.stats import rankdata, spearmanr
from torch import Tensor, nn

from moola.config import ConfigError
from moola.training import EarlyStoppingConfig, TensorData, TrainConfig, Trainer
from moola.training.ranking import (
    RankingLossConfig,
    RankingObjective,
    daily_corr,
    masked_pearson,
    soft_rank,
)


def _spaced(rng: np.random.Generator, d: int, s: int) -> np.ndarray:
    """(d, s) values without near-ties: shuffled multiples of 1 plus jitter under 0.3."""
    return np.stack([rng.permutation(s) + rng.uniform(0, 0.3, s) for _ in range(d)]).astype(np.float64)


def _exact_ranks(x: np.ndarray) -> np.ndarray:
    return np.stack([rankdata(v) for v in x])


# ---------------------------------------------------------------- soft_rank
def test_soft_rank_tends_to_exact_ranks_as_temperature_shrinks() -> None:
    rng = np.random.default_rng(0)
    x = _spaced(rng, 3, 40) * 0.01  # spread ~0.12: the relative temperature must not care
    m = torch.ones(3, 40, dtype=torch.bool)
    exact = _exact_ranks(x)
    errs = [np.abs(soft_rank(torch.tensor(x), m, t).numpy() - exact).max() for t in (0.3, 0.05, 1e-3)]
    assert errs[0] > errs[1] > errs[2]
    assert errs[2] < 1e-3
    np.testing.assert_allclose(soft_rank(torch.tensor(x), m, None).numpy(), exact)


def test_exact_ranks_average_ties_like_rankdata() -> None:
    x = torch.tensor([[3.0, 1.0, 3.0, 2.0, 1.0, 3.0]])
    got = soft_rank(x, torch.ones_like(x, dtype=torch.bool), None)
    np.testing.assert_allclose(got.numpy()[0], rankdata(x.numpy()[0]))


def test_soft_rank_is_differentiable() -> None:
    rng = np.random.default_rng(1)
    x = torch.tensor(_spaced(rng, 2, 30), dtype=torch.float32, requires_grad=True)
    m = torch.ones(2, 30, dtype=torch.bool)
    m[1, :5] = False
    w = torch.randn(2, 30)
    (soft_rank(x, m, 0.5) * w).sum().backward()
    g = x.grad
    assert g is not None and torch.isfinite(g).all()
    assert (g[m].abs() > 0).all()
    assert (g[~m] == 0).all()  # an absent stock's score receives no gradient


def test_masked_entries_do_not_affect_the_other_ranks() -> None:
    rng = np.random.default_rng(2)
    x = torch.tensor(_spaced(rng, 3, 12))
    m = torch.rand(3, 12, generator=torch.Generator().manual_seed(0)) > 0.3
    base = soft_rank(x, m, 0.2)
    x2 = x.clone()
    x2[~m] = torch.tensor([1e6, -1e6, float("nan")]).repeat(12)[: int((~m).sum())].double()
    changed = soft_rank(x2, m, 0.2)
    torch.testing.assert_close(changed, base)
    assert (base[~m] == 0).all()
    for d in range(3):  # same as ranking only the present stocks
        sub = soft_rank(x[d, m[d]][None], torch.ones(1, int(m[d].sum()), dtype=torch.bool), 0.2)
        torch.testing.assert_close(base[d, m[d]], sub[0])


def test_masked_pearson_skips_undefined_days_with_finite_grads() -> None:
    a = torch.tensor([[1.0, 2.0, 3.0, 4.0], [5.0, 5.0, 5.0, 5.0], [1.0, 2.0, 0.0, 0.0]],
                     requires_grad=True)
    b = torch.tensor([[2.0, 4.0, 6.0, 9.0], [1.0, 2.0, 3.0, 4.0], [3.0, 1.0, 0.0, 0.0]])
    m = torch.tensor([[True] * 4, [True] * 4, [True, False, False, False]])
    r, ok = masked_pearson(a, b, m)
    assert ok.tolist() == [True, False, False]  # day 1 constant, day 2 a single stock
    assert r[1] == 0 and r[2] == 0
    np.testing.assert_allclose(float(r[0].detach()), np.corrcoef([1, 2, 3, 4], [2, 4, 6, 9])[0, 1], rtol=1e-6)
    r.sum().backward()
    assert a.grad is not None and torch.isfinite(a.grad).all()


# --------------------------------------------------------------- the loss
def _batch(pred: Tensor, y: Tensor, mask: Tensor, y_mask: Tensor
           ) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
    d, s, _ = y.shape
    return {"ranking": pred}, {"x": torch.zeros(d, s, 1, 1), "y": y, "mask": mask, "y_mask": y_mask}


def test_differentiable_spearman_is_0_when_ordered_and_2_when_reversed() -> None:
    rng = np.random.default_rng(3)
    y = torch.tensor(_spaced(rng, 4, 60), dtype=torch.float32)[..., None]  # (4, 60, 1)
    mask = torch.ones(4, 60, dtype=torch.bool)
    obj = RankingObjective([1], RankingLossConfig(mse=0.0, rank=1.0, temperature=0.05))
    pred = 0.1 * y + 3.0  # same order, another scale
    assert float(obj.loss(*_batch(pred, y, mask, mask[..., None]))) < 0.01
    assert float(obj.loss(*_batch(-pred, y, mask, mask[..., None]))) > 1.99


def _reference_loss(pred: np.ndarray, y: np.ndarray, mask: np.ndarray, y_mask: np.ndarray,
                    cfg: RankingLossConfig) -> float:
    """The loss written out day by day with numpy and scipy."""
    total = 0.0
    for h, w in enumerate(cfg.horizon_weights or []):
        mses, ics, rks = [], [], []
        for d in range(pred.shape[0]):
            sel = mask[d] & y_mask[d, :, h]
            p, t = pred[d, sel, h].astype(np.float64), y[d, sel, h].astype(np.float64)
            if p.size:
                mses.append(np.mean((p - t) ** 2))
            if p.size >= 2:
                ics.append(1 - np.corrcoef(p, t)[0, 1])
                tau = cfg.temperature * p.std()
                sr = 0.5 + (1 / (1 + np.exp(-(p[:, None] - p[None, :]) / tau))).sum(1)
                rks.append(1 - np.corrcoef(sr, rankdata(t))[0, 1])
        total += w * (cfg.mse * np.mean(mses) + cfg.ic * np.mean(ics) + cfg.rank * np.mean(rks))
    return total


def _tiny() -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """2 days, 4 stocks, 2 horizons; stock 3 absent on day 1; horizon 2 of day 1 knows 1 label."""
    g = torch.Generator().manual_seed(4)
    pred, y = torch.randn(2, 4, 2, generator=g), torch.randn(2, 4, 2, generator=g)
    mask = torch.tensor([[True, True, True, True], [True, True, True, False]])
    y_mask = torch.ones(2, 4, 2, dtype=torch.bool)
    y_mask[0, 2, 0] = False
    y_mask[1, 1:, 1] = False
    y[~y_mask] = 0.0
    return pred, y, mask, y_mask


def test_combined_loss_matches_a_hand_computed_value() -> None:
    pred, y, mask, y_mask = _tiny()
    cfg = RankingLossConfig(mse=1.0, ic=0.5, rank=0.25, temperature=0.3, horizon_weights=[1.0, 0.4])
    obj = RankingObjective([1, 5], cfg)
    got = float(obj.loss(*_batch(pred, y, mask, y_mask)))
    want = _reference_loss(pred.numpy(), y.numpy(), mask.numpy(), y_mask.numpy(), cfg)
    assert got == pytest.approx(want, rel=1e-5)
    # default weights are 1 / H each
    eq = RankingObjective([1, 5], cfg.model_copy(update={"horizon_weights": None}))
    want_eq = _reference_loss(pred.numpy(), y.numpy(), mask.numpy(), y_mask.numpy(),
                              cfg.model_copy(update={"horizon_weights": [0.5, 0.5]}))
    assert float(eq.loss(*_batch(pred, y, mask, y_mask))) == pytest.approx(want_eq, rel=1e-5)


@pytest.mark.parametrize("weights", [{"mse": 1.0}, {"mse": 1.0, "ic": 1.0, "rank": 1.0}])
def test_loss_ignores_masked_entries(weights: dict[str, float]) -> None:
    pred, y, mask, y_mask = _tiny()
    obj = RankingObjective([1, 5], RankingLossConfig(**weights))
    base = float(obj.loss(*_batch(pred, y, mask, y_mask)))
    hidden = ~(mask[..., None] & y_mask)  # (D, S, H): absent stock or unknown label
    y2, p2 = y.clone(), pred.clone()
    y2[hidden] = 100.0
    p2[hidden] = -50.0
    assert float(obj.loss(*_batch(p2, y2, mask, y_mask))) == pytest.approx(base, rel=1e-6)
    y3 = y.clone()
    y3[0, 0, 0] += 1.0  # a visible label does move it
    assert float(obj.loss(*_batch(pred, y3, mask, y_mask))) != pytest.approx(base, rel=1e-6)


def test_wrong_length_horizon_weights_names_the_field() -> None:
    with pytest.raises(ValueError, match="horizon_weights"):
        RankingObjective([1, 5, 10], RankingLossConfig(horizon_weights=[1.0, 1.0]))
    with pytest.raises(ConfigError, match="horizon_weights"):
        RankingLossConfig.from_dict({"horizon_weights": [1.0, -1.0]})
    with pytest.raises(ValueError, match="monitor_horizon"):
        RankingObjective([1, 5], monitor_horizon=10)


def test_loss_config_round_trips_yaml(tmp_path: Path) -> None:
    cfg = RankingLossConfig(mse=0.5, rank=1.0, horizon_weights=[2.0, 1.0])
    p = tmp_path / "loss.yaml"
    cfg.to_yaml(p)
    assert RankingLossConfig.from_yaml(p) == cfg
    with pytest.raises(ConfigError, match="temprature"):
        RankingLossConfig.from_dict({"temprature": 0.1})


def test_torchsort_backend_without_torchsort_says_how_to_install() -> None:
    if importlib.util.find_spec("torchsort") is not None:
        pytest.skip("torchsort is installed")
    with pytest.raises(ImportError, match="pip install torchsort"):
        RankingObjective([1], RankingLossConfig(backend="torchsort", rank=1.0))


# ----------------------------------------------------------------- metrics
def _collect_all(obj: RankingObjective, batches: list[tuple[dict[str, Tensor], dict[str, Tensor]]]
                 ) -> dict[str, np.ndarray]:
    parts: dict[str, list[np.ndarray]] = {}
    for out, b in batches:
        for k, v in obj.collect(out, b).items():
            parts.setdefault(k, []).append(v)
    return {k: np.concatenate(v) for k, v in parts.items()}


def test_rank_ic_of_perfect_predictions_is_one() -> None:
    g = torch.Generator().manual_seed(5)
    y_raw = torch.randn(6, 20, 2, generator=g) * 0.02
    mask = torch.ones(6, 20, dtype=torch.bool)
    mask[2, 5:] = False
    y_mask = torch.ones(6, 20, 2, dtype=torch.bool)
    obj = RankingObjective([1, 5], monitor_horizon=5)
    pred = torch.exp(50 * y_raw)  # monotone, not linear
    out, b = _batch(pred, y_raw * 50, mask, y_mask)
    b["y_raw"] = y_raw
    m = obj.metrics(_collect_all(obj, [(out, b)]))
    assert m["rank_ic_h1"] == pytest.approx(1.0) and m["rank_ic_h5"] == pytest.approx(1.0)
    assert m["rank_ic"] == m["rank_ic_h5"]
    assert m["ic_h1"] < 0.999  # Pearson sees the curvature
    assert np.isnan(m["rank_icir_h1"])  # every day is 1: no spread


def test_metrics_match_scipy_spearman_per_day() -> None:
    rng = np.random.default_rng(6)
    d, s, h = 10, 25, 2
    y_raw = rng.normal(size=(d, s, h)).round(1)  # ties in the labels
    pred = y_raw + rng.normal(size=(d, s, h))
    mask = rng.random((d, s)) > 0.2
    y_mask = rng.random((d, s, h)) > 0.1
    y_raw[~y_mask] = np.nan
    y_mask[3, :, 1] = False
    y_mask[3, :2, 1] = True  # 2 labels on day 3, horizon 2
    y_raw[3, :2, 1] = [0.5, 0.5]  # ... tied: undefined, left out
    obj = RankingObjective([1, 5])
    t = lambda a: torch.tensor(a, dtype=torch.float32)  # noqa: E731
    batches = []
    for lo, hi in ((0, 4), (4, 7), (7, 10)):  # no 'day' key: the running counter numbers days
        out, b = _batch(t(pred[lo:hi]), t(np.nan_to_num(y_raw[lo:hi])), torch.tensor(mask[lo:hi]),
                        torch.tensor(y_mask[lo:hi]))
        b["y_raw"] = t(y_raw[lo:hi])
        batches.append((out, b))
    c = _collect_all(obj, batches)
    assert c["day"].tolist() == sorted(c["day"].tolist()) and len(np.unique(c["day"])) == d
    m = obj.metrics(c)
    for j, hz in enumerate((1, 5)):
        rics, ics = [], []
        for k in range(d):
            sel = mask[k] & y_mask[k, :, j]
            a, b_ = pred[k, sel, j].astype(np.float32), y_raw[k, sel, j].astype(np.float32)
            if sel.sum() >= 2 and np.ptp(b_) > 0:
                rics.append(spearmanr(a, b_)[0])
                ics.append(np.corrcoef(a.astype(np.float64), b_.astype(np.float64))[0, 1])
        assert m[f"rank_ic_h{hz}"] == pytest.approx(np.mean(rics), abs=1e-9)
        assert m[f"ic_h{hz}"] == pytest.approx(np.mean(ics), abs=1e-6)
        assert m[f"icir_h{hz}"] == pytest.approx(np.mean(ics) / np.std(ics, ddof=1), rel=1e-5)
        assert m[f"days_h{hz}"] == len(rics)
    assert m["days_h5"] == d - 1
    assert m["rank_ic"] == m["rank_ic_h1"]
    # the counter restarts after metrics: a second evaluation numbers its days from 0 again
    assert obj.collect(*batches[0])["day"].min() == 0


def test_collect_uses_the_batch_day_when_present() -> None:
    pred, y, mask, y_mask = _tiny()
    out, b = _batch(pred, y, mask, y_mask)
    b["day"] = torch.tensor([17, 18])
    c = RankingObjective([1, 5]).collect(out, b)
    assert c["day"].tolist() == [17] * 4 + [18] * 3
    assert c["pred"].shape == (7, 2) and np.isnan(c["y_raw"][~c["y_mask"]]).all()


def test_daily_corr_rejects_unknown_kind() -> None:
    with pytest.raises(ValueError, match="spearman"):
        daily_corr(np.arange(4.0), np.arange(4.0), np.zeros(4), "kendall")  # type: ignore[arg-type]


# ---------------------------------------------------------------- training
def _planted(days: int, s: int, f: int, seed: int) -> dict[str, Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(days, s, 1, f, generator=g)  # (D, S, T=1, F)
    w = torch.tensor([1.0, -0.5, 0.25, 0.0][:f])
    y = x[:, :, 0] @ w + 0.5 * torch.randn(days, s, generator=g)  # (D, S)
    mask = torch.rand(days, s, generator=g) > 0.1
    y = torch.where(mask, (y - y.mean(1, keepdim=True)) / y.std(1, keepdim=True), 0.0)[..., None]
    return {"x": x, "y": y, "y_raw": y.clone(), "mask": mask, "y_mask": mask[..., None].clone(),
            "day": torch.arange(days)}


class _Linear(nn.Module):
    """Scores each present stock from its last bar: (D, S, T, F) -> (D, S, 1)."""

    def __init__(self, f: int) -> None:
        super().__init__()
        self.lin = nn.Linear(f, 1)
        with torch.no_grad():
            self.lin.weight.copy_(torch.tensor([[-1.0, 0.5, 0.3, 1.0][:f]]))  # anti-correlated start

    def forward(self, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        return {"ranking": self.lin(batch["x"][:, :, -1])}


def test_rank_loss_alone_learns_a_planted_signal() -> None:
    torch.manual_seed(0)
    train, val = _planted(48, 40, 4, 7), _planted(16, 40, 4, 8)
    obj = RankingObjective([1], RankingLossConfig(mse=0.0, rank=1.0))
    model = _Linear(4)
    opt = torch.optim.Adam(model.parameters(), lr=0.05)

    def val_rank_ic() -> float:
        with torch.no_grad():
            return obj.metrics(obj.collect(model(val), val))["rank_ic"]

    before = val_rank_ic()
    for step in range(200):
        idx = torch.arange(step * 8, step * 8 + 8) % 48
        b = {k: v[idx] for k, v in train.items()}
        loss = obj.loss(model(b), b)
        opt.zero_grad()
        loss.backward()
        opt.step()
    after = val_rank_ic()
    assert before < 0.0
    assert after > 0.8 and after > before + 0.8


def test_trainer_early_stops_on_val_rank_ic() -> None:
    train, val = _planted(32, 30, 4, 9), _planted(8, 30, 4, 10)
    cfg = TrainConfig(epochs=4, batch_size=4, eval_batch_size=4, device="cpu", grad_clip=None,
                      optimizer={"lr": 0.05, "weight_decay": 0.0},
                      early_stopping=EarlyStoppingConfig(metric="val_rank_ic", mode="max", patience=3))
    tr = Trainer(_Linear(4), RankingObjective([1], RankingLossConfig(mse=0.2, rank=1.0)), cfg,
                 show_progress=False)
    res = tr.fit(TensorData(train), TensorData(val))
    ics = [h["val_rank_ic"] for h in res.history]
    assert ics[-1] > 0.7 and ics[-1] > ics[0]
    assert {"val_ic_h1", "val_icir_h1", "val_mse"} <= set(res.history[-1])
