"""Members of one ensemble share their feature set, so the runtime computes each tick's
features once (a ``FeatureStream``), not once per member, and serves exactly what each member
computing its own would serve.

Three members trained on crypto39 (look-back 138) over two real 1-minute BTC series: an LSTM
streamed through its ring (reads the look-back before the new bars), a GRU with another window,
and a causal Transformer read as full windows (reads look-back + window - 1 rows). The shared
buffer is sized for the Transformer; the ring members read a longer frame than on their own,
and their features, reasons and probabilities stay bit-identical, through a missing minute,
backfill ticks, and a member reset mid-stream (it computes its own until its look-back is full,
then rejoins).
"""

from __future__ import annotations

import io
import warnings
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from rich.console import Console

from _real_data import two_crypto_symbols
from moola.data import Store, Timeframe
from moola.inference import EnsembleConfig, Predictor
from moola.pipelines.runtime import run_runtime
from moola.pipelines.train import RunConfig, run_train
from moola.runtime import FeatureStream, Ledger, MemberStep, RuntimeConfig, StreamingMember, share_features

pytestmark = pytest.mark.usefixtures("one_torch_thread")

TF = Timeframe("1m")
ROWS = 2500  # bars per symbol
HOLE = ROWS - 90  # BTCUSD_B's bar removed: a missing minute inside the replayed stretch
REPLAY = 360  # bars per symbol replayed: 138 + 30 warm-up, then ~190 served bars
RESET_AT = 100  # the tick after which one member is reset


@pytest.fixture(scope="module")
def setup(tmp_path_factory) -> tuple[Path, dict[str, Path]]:
    """(store, run dirs): three pooled crypto39 members, one epoch each on both series."""
    root = tmp_path_factory.mktemp("shared")
    pair = two_crypto_symbols(ROWS, 6000)
    clock = pair.filter(pl.col("symbol") == "BTCUSD")["ts"]
    bars = pl.concat([pair.filter(pl.col("symbol") == "BTCUSD"),
                      pair.filter(pl.col("symbol") == "BTCUSD_B").with_columns(ts=clock)])
    idx = pl.int_range(pl.len()).over("symbol")
    bars = bars.filter(~((pl.col("symbol") == "BTCUSD_B") & (idx == HOLE)))
    Store(root / "store").write(bars, TF)
    data = {"store": str(root / "store"), "timeframe": "1m", "stride": 20, "horizon": 1,
            "feature_set": "crypto39"}
    common = {"out_dir": str(root / "runs"), "baselines": ["majority"], "economics": None, "preset": None,
              "train": {"epochs": 1, "batch_size": 64, "device": "cpu", "num_threads": 1,
                        "early_stopping": None}}
    members = {
        "lstm": (30, {"name": "sh_lstm", "direction": {"mlp": [16], "dropout": 0.0},
                      "encoder": {"kind": "lstm", "input_size": 39, "hidden": 16, "layers": 2}}),
        "gru": (20, {"name": "sh_gru", "direction": {"mlp": [16], "dropout": 0.0},
                     "encoder": {"kind": "gru", "input_size": 39, "hidden": 16, "layers": 1}}),
        "tfm": (16, {"name": "sh_tfm", "direction": {"mlp": [16], "dropout": 0.0},
                     "encoder": {"kind": "transformer", "input_size": 39, "d_model": 16, "heads": 2,
                                 "layers": 1, "ff": 32, "causal": True, "max_len": 32}}),
    }
    runs = {}
    for name, (window, model) in members.items():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            done = run_train(RunConfig.from_dict({**common, "name": name, "model": model,
                                                  "data": {**data, "window": window}}),
                             show_progress=False, console=Console(file=io.StringIO()))
        runs[name] = done.run_dir
    return root / "store", runs


def _ticks(store: Path) -> list[pl.DataFrame]:
    """The last ``REPLAY`` minutes of both symbols as a feed delivers them: one tick per
    minute, every 50th tick three minutes more (a backfill)."""
    bars = Store(store).read(TF)
    minutes = bars["ts"].unique().sort().tail(REPLAY)
    ticks, i = [], 0
    while i < len(minutes):
        k = 1 + (3 if len(ticks) % 50 == 49 else 0)
        ticks.append(bars.filter(pl.col("ts").is_between(minutes[i], minutes[min(i + k, len(minutes)) - 1])))
        i += k
    return ticks


def _members(runs: dict[str, Path]) -> list[StreamingMember]:
    return [StreamingMember(Predictor.from_dir(runs[k])) for k in ("lstm", "gru", "tfm")]


class _Counted:
    """Counts calls of ``Predictor.features`` (the real method, wrapped)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.calls = 0
        original = Predictor.features

        def counted(p: Predictor, bars: pl.DataFrame, timeframe: Timeframe,  # type: ignore[no-untyped-def]
                    **kwargs):
            self.calls += 1
            return original(p, bars, timeframe, **kwargs)

        monkeypatch.setattr(Predictor, "features", counted)


def _replay(members: list[StreamingMember], ticks: list[pl.DataFrame], *, shared: bool,
            reset: int | None = None) -> tuple[list[list[MemberStep]], list[FeatureStream]]:
    """Every member's steps over the ticks, sharing one FeatureStream or each on its own;
    ``reset``: member index reset after tick ``RESET_AT``."""
    streams = share_features(members) if shared else []
    out: list[list[MemberStep]] = [[] for _ in members]
    for t, tick in enumerate(ticks):
        for fs in streams:
            fs.update(tick)
        for i, m in enumerate(members):
            out[i].extend(m.step_bars(tick))
        if reset is not None and t == RESET_AT:
            members[reset].reset()
    return out, streams


def _same(a: list[MemberStep], b: list[MemberStep]) -> None:
    assert len(a) == len(b)
    for x, y in zip(a, b, strict=True):
        assert (x.symbol, x.ts, x.reason) == (y.symbol, y.ts, y.reason)
        assert x.proba_up == y.proba_up and x.raw_proba_up == y.raw_proba_up  # bit for bit
        assert np.array_equal(x.features, y.features, equal_nan=True)


@pytest.mark.slow
def test_three_members_compute_the_features_once_per_tick_and_serve_bit_identical_results(
        setup, monkeypatch):
    store, runs = setup
    ticks = _ticks(store)
    count = _Counted(monkeypatch)
    alone, _ = _replay(_members(runs), ticks, shared=False)
    assert count.calls == 3 * len(ticks)
    count.calls = 0
    members = _members(runs)
    together, streams = _replay(members, ticks, shared=True)
    assert len(streams) == 1 and count.calls == len(ticks)  # once per tick for three members
    assert streams[0].feature_passes == len(ticks) and all(m.feature_passes == 0 for m in members)
    assert streams[0].tail == 138 + 16 - 1 and [m.tail for m in members] == [138, 138, 153]
    assert [m.recurrent for m in members] == [True, True, False]
    for a, b, m in zip(alone, together, members, strict=True):
        _same(a, b)
        served = [s for s in b if s.proba_up is not None]
        assert len(served) >= 2 * (REPLAY - m.required_bars - 40)  # a real comparison
        assert {s.reason for s in b} >= {"warmup", None}
    assert any(s.reason == "gap" for s in together[0])  # the missing minute went through both paths


@pytest.mark.slow
def test_a_reset_member_computes_its_own_until_its_look_back_is_full_then_rejoins(setup):
    store, runs = setup
    ticks = _ticks(store)
    alone, _ = _replay(_members(runs), ticks, shared=False, reset=2)
    members = _members(runs)
    together, streams = _replay(members, ticks, shared=True, reset=2)
    for a, b in zip(alone, together, strict=True):
        _same(a, b)
    # the Transformer, reset after tick RESET_AT, computed its own features for its look-back
    # (one pass a tick, about 138 ticks, fewer with a backfill tick among them), then rejoined
    assert [m.feature_passes for m in members[:2]] == [0, 0]
    assert 130 <= members[2].feature_passes <= 138 < len(ticks) - RESET_AT - 1
    assert streams[0].feature_passes == len(ticks)
    assert all(s.proba_up is not None for s in together[2][-20:])  # served again on shared rows


def test_members_of_other_feature_sets_get_their_own_stream(setup):
    _, runs = setup
    members = _members(runs)
    assert len(share_features(members)) == 1
    with pytest.raises(ValueError, match="at least one member"):
        FeatureStream([])


def test_the_runtime_computes_each_ticks_features_once_for_its_members(setup, tmp_path, monkeypatch):
    store, runs = setup
    spec = tmp_path / "ensemble.yaml"
    EnsembleConfig.from_dict({"weights": "fixed", "members": [
        {"ref": str(runs[k]), "name": k, "weight": w} for k, w in (("lstm", 0.3), ("gru", 0.3), ("tfm", 0.4))
    ]}).to_yaml(spec)
    db = f"sqlite:///{tmp_path / 'rt.sqlite'}"
    cfg = RuntimeConfig.from_dict({"name": "rt", "ensemble": str(spec), "symbols": ["BTCUSD", "BTCUSD_B"],
                                   "feed": {"kind": "replay", "source": str(store), "last_fraction": 0.02},
                                   "db": db, "thresholds": {"band": 0.0}})
    count = _Counted(monkeypatch)
    summary = run_runtime(cfg, console=Console(file=io.StringIO(), width=200), view=False)
    assert summary.ticks > 40 and summary.signals > 0
    assert count.calls == summary.ticks  # not 3 x ticks
    with Ledger(db) as ledger:
        sig = ledger.signals("rt")
    assert sig.filter(pl.col("status") == "signal").height == summary.signals

