"""The Trainer is written against ``BatchSource``: in-memory tensors, pretraining views and day
panels all implement it, and the loop trains on any of them through ``model(batch)``."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest
import torch
from rich.console import Console
from torch import Tensor, nn

from _train_helpers import ohlc_windows, quiet_config
from moola.data import Store, ingest
from moola.datasets import DayPanel, DayPanelSource
from moola.datasets.tasks import bundled_dir, forward_log_return
from moola.features import build_features
from moola.pretraining import ViewsData
from moola.training import BatchSource, Objective, TensorData, Trainer
from moola.training.data import epoch_order


@pytest.fixture(scope="module")
def panel(tmp_path_factory) -> DayPanel:
    store = Store(tmp_path_factory.mktemp("store"))
    ingest([bundled_dir() / "sp500_subset.parquet"], store)
    bars = store.read("1d")
    fm = build_features(bars, "ohlc4")
    target = forward_log_return(bars, 1).astype(np.float32)
    return DayPanel.from_matrix(fm, window=20, horizon=1, min_stocks=5, target=target)


def test_every_source_is_a_batch_source(panel):
    td = TensorData(ohlc_windows(8))
    for source in (td, ViewsData(td, 3), DayPanelSource(panel)):
        assert isinstance(source, BatchSource), type(source).__name__
    assert len(ViewsData(td, 3)) == 24


def test_day_panel_batches_are_dense_masked_days_without_materialising_the_panel(panel):
    src = DayPanelSource(panel, days=np.arange(10, 40))
    assert len(src) == 30
    order = torch.arange(30)
    batches = list(src.batches(order, batch_size=8, start=1))  # a resumed epoch skips batch 0
    assert len(batches) == 3
    b = batches[0]
    S = panel.n_symbols
    assert b["x"].shape == (8, S, 20, 4) and b["x"].dtype == torch.float32  # (D, S, T, F)
    assert b["mask"].shape == (8, S) and b["mask"].dtype == torch.bool
    assert b["symbol_id"].shape == (8, S) and int(b["symbol_id"][0, -1]) == S - 1
    # the batch is days 18..25 of the panel, exactly as DayPanel.batch gathers them
    ref = panel.batch(np.arange(18, 26))
    np.testing.assert_array_equal(b["mask"].numpy(), ref.mask)
    np.testing.assert_array_equal(b["x"].numpy(), ref.X)
    assert torch.all(b["x"][~b["mask"]] == 0), "absent stocks are zeros, to be masked"
    np.testing.assert_allclose(b["y"].numpy()[ref.mask], ref.target[ref.mask])
    assert torch.all(b["y"][~b["mask"]] == 0)


class _CrossSectionModel(nn.Module):
    """Scores every present stock of each day from its last bar (a stand-in ranker)."""

    def __init__(self, n_features: int) -> None:
        super().__init__()
        self.fc = nn.Linear(n_features, 1)

    def forward(self, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        x = batch["x"]  # (D, S, T, F)
        score = self.fc(x[:, :, -1, :]).squeeze(-1)  # (D, S)
        return {"score": score.masked_fill(~batch["mask"], 0.0)}


class _MaskedMSE(Objective):
    """Squared error over present stocks only: absent ones must not move the weights."""

    def loss(self, out, batch):
        m = batch["mask"].float()
        return (((out["score"] - batch["y"]) ** 2) * m).sum() / m.sum().clamp_min(1.0)

    def collect(self, out, batch):
        return {"n_present": batch["mask"].sum(1).cpu().numpy()}

    def metrics(self, collected):
        return {"stocks_per_day": float(collected["n_present"].mean())}


def test_the_trainer_fits_a_day_panel_source_through_model_batch(panel):
    days = np.arange(len(panel))
    train, val = DayPanelSource(panel, days[:200]), DayPanelSource(panel, days[200:260])
    model = _CrossSectionModel(4)
    before = model.fc.weight.detach().clone()
    trainer = Trainer(model, _MaskedMSE(), quiet_config(epochs=2, batch_size=16, num_threads=1),
                      show_progress=False, console=Console(quiet=True))
    fit = trainer.fit(train, val)
    assert trainer.n_train_ == 200 and trainer.global_step_ == 2 * 13
    assert not torch.equal(before, model.fc.weight), "the weights moved"
    assert fit.history[-1]["val_stocks_per_day"] == pytest.approx(panel.mask[200:260].sum(1).mean())


def test_trainer_constructor_only_stores_what_it_is_given():
    model = nn.Linear(2, 2)
    t = Trainer(model, _MaskedMSE(), quiet_config(device="cpu"), show_progress=False)
    learned = [k for k in vars(t) if k.endswith("_") and not k.startswith("_")]
    assert learned == [], f"state before fit: {learned}"
    assert t.callbacks == () and t.console is None


def test_epoch_order_is_a_permutation_every_source_accepts(panel):
    order = epoch_order(30, seed=1, epoch=0)
    assert sorted(order.tolist()) == list(range(30))
    seen = torch.cat([b["mask"].sum(1) for b in DayPanelSource(panel, np.arange(30)).batches(order, 7)])
    assert len(seen) == 30


def test_panel_frame_is_real_data(panel):
    # the bundled subset has warts: some stocks are absent on some days
    assert pl.Series(panel.mask.sum(1)).min() < panel.n_symbols
