"""One model pooled over several symbols, on real Bybit one-minute bars of three perpetuals
(the first 2,400 minutes of ADA, BTC and DOGE, which start 1, 0 and 3 minutes apart).

A learned symbol embedding (``symbol_embedding: true``) gives each symbol its own vector on the
encoder output; its ids are the run's sorted symbols, the list manifest.json keeps. The run
trains, saves, and the Predictor serves exactly the probabilities ``moola evaluate`` scored.
``data.align`` keeps only the timestamps every symbol has and accounts for every dropped bar:
a late start and a missing minute are reported, and nothing is shifted."""

from __future__ import annotations

import io
import json
import warnings
from datetime import timedelta
from pathlib import Path

import numpy as np
import polars as pl
import pytest
import torch
from rich.console import Console

from _real_data import SHARED_DATA, require_shared
from moola.data import Store, Timeframe, ingest
from moola.datasets.tasks import DataConfig, load_features, prepare_data
from moola.inference import Predictor
from moola.models import build_model, count_parameters, preset_config, with_symbol_embedding
from moola.pipelines.predict import run_predict
from moola.pipelines.train import RunConfig, resolve_model, run_evaluate, run_train
from moola.training import from_checkpoint
from moola.training.manifest import read_manifest

pytestmark = pytest.mark.usefixtures("one_torch_thread")

BYBIT = SHARED_DATA / "crypto_bybit_1m"
SYMBOLS = ["ADAUSDT", "BTCUSDT", "DOGEUSDT"]  # sorted: symbol ids 0, 1, 2
LATE = {"ADAUSDT": 1, "BTCUSDT": 0, "DOGEUSDT": 3}  # minutes after the earliest first bar
ROWS = 2400
HOLE = 700  # BTCUSDT's row dropped in the misaligned store: one missing minute
PROBA = ["proba_down", "proba_up", "raw_proba_down", "raw_proba_up"]


def _store(root: Path, *, drop_btc_row: int | None = None) -> tuple[Path, pl.DataFrame]:
    """The first ROWS bars of each symbol as CSV files in Bybit's layout, ingested into a store;
    and the rows written (``ts`` parsed), to compare against."""
    src = require_shared(BYBIT)
    files = root / "csv"
    files.mkdir(parents=True)
    frames = []
    for sym in SYMBOLS:
        df = pl.read_csv(src / f"{sym}_1m.csv", n_rows=ROWS)
        if sym == "BTCUSDT" and drop_btc_row is not None:
            df = df.filter(pl.int_range(pl.len()) != drop_btc_row)
        df.write_csv(files / f"{sym}_1m.csv")
        frames.append(df.with_columns(symbol=pl.lit(sym)))
    store = root / "store"
    ingest([files], Store(store))
    written = pl.concat(frames).with_columns(
        ts=pl.col("timestamp").str.to_datetime(time_zone="UTC").cast(pl.Datetime("ns", "UTC")))
    return store, written


def _cfg(out: Path, store: Path, **kw: object) -> RunConfig:
    base: dict = {
        "name": "pooled", "out_dir": str(out), "preset": None, "baselines": ["majority"],
        "economics": None, "symbol_embedding": True,
        "data": {"store": str(store), "timeframe": "1m", "window": 16, "stride": 4,
                 "feature_set": "ohlc4", "horizon": 1},
        "model": {"name": "tiny_pooled", "encoder": {"kind": "lstm", "input_size": 4, "hidden": 16,
                                                     "layers": 1},
                  "direction": {"mlp": [16], "dropout": 0.0}},
        "train": {"epochs": 2, "batch_size": 64, "device": "cpu", "num_threads": 1,
                  "early_stopping": None},
    }
    base.update(kw)
    return RunConfig.from_dict(base)


@pytest.fixture(scope="module")
def pooled(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """One pooled run over the three symbols with a symbol embedding: (run dir, store)."""
    root = tmp_path_factory.mktemp("pooled")
    store, _ = _store(root)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        outcome = run_train(_cfg(root / "runs", store), show_progress=False,
                            console=Console(file=io.StringIO()))
    return outcome.run_dir, store


def test_a_pooled_run_records_its_symbols_and_sizes_the_embedding_to_them(pooled):
    run_dir, _ = pooled
    m = read_manifest(run_dir)
    assert m.symbols == SYMBOLS
    resolved = RunConfig.from_yaml(run_dir / "config.yaml")
    assert resolved.model is not None and resolved.model.symbol_embedding is not None
    assert resolved.model.symbol_embedding.n_symbols == 3
    assert resolved.model.symbol_embedding.dim is None
    model = from_checkpoint(run_dir)
    table = model.symbol_embedding.table.weight  # type: ignore[union-attr]
    assert tuple(table.shape) == (3, 16)  # one vector per symbol in the encoder's width
    # the resolved config reproduces the model: the same embedding, not a second one
    again = resolve_model(resolved, 4, 2, SYMBOLS)
    assert again == resolved.model


def test_the_predictor_serves_what_evaluate_scored_bit_for_bit(pooled, tmp_path):
    run_dir, store = pooled
    run_evaluate(run_dir, console=Console(file=io.StringIO()))
    scored = pl.read_parquet(run_dir / "evaluation_test_rows.parquet")
    assert sorted(scored["symbol"].unique()) == SYMBOLS
    served = run_predict(run_dir, store, tmp_path / "p.parquet", since=scored["ts"].min())
    both = scored.join(served, on=["symbol", "ts"], how="left", suffix="_served")
    assert both.height == scored.height
    for c in PROBA:
        assert both[f"{c}_served"].null_count() == 0, c
        assert (both[c] == both[f"{c}_served"]).all(), (c, (both[c] - both[f"{c}_served"]).abs().max())
    # evaluate's loss is the one training reported on test: the ids reached the model there too
    metrics = json.loads((run_dir / "metrics.json").read_text())
    evaluated = json.loads((run_dir / "evaluation_test.json").read_text())
    # to 1e-6: training scored test in batches of another size, whose CPU kernels may differ in the
    # last bits on some machines (seen on an AVX-512 Xeon: 4e-8)
    assert evaluated["test"]["loss"] == pytest.approx(metrics["run"]["test_loss"], rel=1e-6)


def test_the_embedding_changes_outputs_across_symbol_ids(pooled):
    run_dir, store = pooled
    model = from_checkpoint(run_dir).eval()
    p = Predictor.from_dir(run_dir)
    bars = Store(store).read(Timeframe.M1, ["BTCUSDT"])
    from moola.datasets.windows import WindowSet

    ws = WindowSet.from_matrix(p.features(bars, Timeframe.M1), 16)
    x = torch.from_numpy(np.ascontiguousarray(p.normalizer_.transform(ws.batch(np.arange(64))),
                                              dtype=np.float32))
    with torch.no_grad():
        logits = [model({"x": x, "symbol_id": torch.full((64,), k)})["direction"] for k in range(3)]
    for a in range(3):
        for b in range(a + 1, 3):
            assert (logits[a] - logits[b]).abs().min() > 0, (a, b)  # every window moves
    # the Predictor feeds BTCUSDT's id (1): its probabilities are those of logit row 1
    served = p.predict_windows(ws, np.arange(64))
    assert np.array_equal(served[:, 1], torch.sigmoid(logits[1]).numpy())


def test_a_model_with_an_embedding_refuses_a_batch_without_symbol_id(pooled):
    model = from_checkpoint(pooled[0])
    x = torch.zeros(2, 16, 4)
    with pytest.raises(KeyError, match=r"needs batch\['symbol_id'\] \(B,\).*keys: \['x'\]"):
        model({"x": x})
    with pytest.raises(ValueError, match=r"symbol_id must lie in \[0, 3\).*got values in \[-1, 1\]"):
        model({"x": x, "symbol_id": torch.tensor([1, -1])})


def test_the_predictor_refuses_a_symbol_the_run_never_saw(pooled):
    run_dir, store = pooled
    btc = Store(store).read(Timeframe.M1, ["BTCUSDT"]).with_columns(symbol=pl.lit("SOLUSDT"))
    with pytest.raises(ValueError, match=r"\['SOLUSDT'\] are not among the run's symbols "
                                         r"\['ADAUSDT', 'BTCUSDT', 'DOGEUSDT'\]"):
        Predictor.from_dir(run_dir).predict_frame(btc)


def test_without_an_embedding_symbol_id_is_ignored_and_presets_keep_their_size():
    cfg = preset_config("direction_lstm", n_features=4)
    torch.manual_seed(0)
    plain = build_model(cfg).eval()
    x = torch.randn(8, 16, 4)
    with torch.no_grad():
        a = plain({"x": x})["direction"]
        b = plain({"x": x, "symbol_id": torch.arange(8)})["direction"]
    assert torch.equal(a, b)
    assert cfg.symbol_embedding is None and "symbol_embedding" not in dict(plain.named_modules())
    n = count_parameters(plain)
    assert count_parameters(build_model(with_symbol_embedding(cfg, 5))) == n + 5 * 64
    assert count_parameters(build_model(with_symbol_embedding(cfg, 5, dim=8))) == n + 5 * 8 + 8 * 64


def test_an_embedding_sized_for_other_symbols_is_refused(tmp_path):
    cfg = _cfg(tmp_path, tmp_path, symbol_embedding=False)
    assert cfg.model is not None
    cfg.model = with_symbol_embedding(cfg.model, 5)
    with pytest.raises(ValueError, match=r"n_symbols is 5, but the run has 3 symbol\(s\) "
                                         r"\['ADAUSDT', 'BTCUSDT', 'DOGEUSDT'\]"):
        resolve_model(cfg, 4, 2, SYMBOLS)


# ------------------------------------------------------------------------------ data.align


@pytest.fixture(scope="module")
def holed(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, pl.DataFrame]:
    """The three symbols' real bars with BTCUSDT's minute HOLE removed."""
    return _store(tmp_path_factory.mktemp("holed"), drop_btc_row=HOLE)


def _windows(data, part: str = "train") -> dict[str, set]:
    meta = data.meta[part]
    return {s: set(zip(g["start_ts"].to_list(), g["end_ts"].to_list(), strict=True))
            for (s,), g in meta.group_by("symbol")}


def test_align_keeps_common_timestamps_reports_the_cost_and_shifts_nothing(holed):
    store, written = holed
    cfg = DataConfig(store=str(store), timeframe="1m", window=16, stride=4, feature_set="ohlc4",
                     align=True, normalize="none")
    data = prepare_data(cfg, store)
    al = data.alignment
    assert al is not None and not al.complete
    acc = {s.symbol: s for s in al.symbols}
    btc = written.filter(pl.col("symbol") == "BTCUSDT")["ts"]
    hole = btc[0] + timedelta(minutes=HOLE)  # the removed minute (BTC has no other hole)
    assert hole not in set(btc.to_list()) and btc[HOLE] == hole + timedelta(minutes=1)
    assert {s: a.late_start for s, a in acc.items()} == LATE
    assert acc["BTCUSDT"].missing == 1 and acc["BTCUSDT"].first_missing == (hole,)
    assert acc["ADAUSDT"].absent_elsewhere == acc["DOGEUSDT"].absent_elsewhere == 1
    # DOGE starts 3 minutes after BTC: those minutes go, and are counted, never moved
    assert acc["BTCUSDT"].dropped_before == 3 and acc["DOGEUSDT"].dropped_before == 0
    assert al.start == written.filter(pl.col("symbol") == "DOGEUSDT")["ts"][0]
    summary = "\n".join(al.summary())
    assert "BTCUSDT: misses 1 bar(s) in the common span" in summary and hole.isoformat() in summary

    # every kept bar is the source row at its own (symbol, ts): values never shifted
    _, bars, _ = load_features(cfg, store)
    joined = bars.join(written, on=["symbol", "ts"], how="left", suffix="_src")
    for c in ("open", "high", "low", "close", "volume"):
        assert (joined[c] == joined[f"{c}_src"]).all(), c
    assert bars.group_by("symbol").len()["len"].to_list() == [al.timestamps.len()] * 3

    # one clock: every symbol has the same windows, and none spans the missing minute
    wins = _windows(data)
    assert wins["ADAUSDT"] == wins["BTCUSDT"] == wins["DOGEUSDT"]
    assert not any(a <= hole <= b + timedelta(minutes=1) for a, b in wins["ADAUSDT"])
    # without align the symbols' windows differ (late starts, and only BTC has the hole)
    loose = _windows(prepare_data(cfg.model_copy(update={"align": False}), store))
    assert loose["ADAUSDT"] != loose["BTCUSDT"]
    assert any(a <= hole <= b for a, b in loose["ADAUSDT"])


def test_an_aligned_run_prints_and_keeps_the_account(holed, tmp_path):
    store, _ = holed
    cfg = _cfg(tmp_path, store, name="aligned")
    cfg.data.align = True
    cfg.train.epochs = 1
    text = io.StringIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        outcome = run_train(cfg, show_progress=False, console=Console(file=text, width=200))
    record = json.loads((outcome.run_dir / "alignment.json").read_text())
    assert record["complete"] is False and record["timeframe"] == "1m"
    assert record["summary"][0] in text.getvalue()
    btc = next(s for s in record["symbols"] if s["symbol"] == "BTCUSDT")
    assert btc["missing"] == 1 and len(btc["first_missing"]) == 1
    assert RunConfig.from_yaml(outcome.run_dir / "config.yaml").data.align is True


def test_an_aligned_run_is_served_aligned_bit_for_bit(tmp_path):
    """The manifest records data.align; the Predictor cuts the served bars to the common
    timestamps as training did, so it reproduces evaluate's rows and probabilities around a
    minute BTC misses inside the test segment (ADA and DOGE lose it too)."""
    store, _ = _store(tmp_path, drop_btc_row=ROWS - 150)
    cfg = _cfg(tmp_path, store, name="aligned_served")
    cfg.data.align = True
    cfg.train.epochs = 1
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        outcome = run_train(cfg, show_progress=False, console=Console(file=io.StringIO()))
    assert read_manifest(outcome.run_dir).aligned is True
    run_evaluate(outcome.run_dir, console=Console(file=io.StringIO()))
    scored = pl.read_parquet(outcome.run_dir / "evaluation_test_rows.parquet")
    served = run_predict(outcome.run_dir, store, tmp_path / "p.parquet", since=scored["ts"].min())
    # every symbol is served on the same clock: the hole BTC has, ADA and DOGE have too
    ends = [set(served.filter(pl.col("symbol") == sym)["ts"].to_list()) for sym in SYMBOLS]
    assert ends[0] == ends[1] == ends[2]
    both = scored.join(served, on=["symbol", "ts"], how="left", suffix="_served")
    for c in PROBA:
        assert both[f"{c}_served"].null_count() == 0, c
        assert (both[c] == both[f"{c}_served"]).all(), c
