"""The pretrain recipe end to end on the bundled S&P 500 data: a tiny ``run_pretrain`` writes an
encoder directory that declares its architecture and feature schema and, in ``manifest.json``,
the time its pool and normaliser covered; it trains only on pool windows more than the embargo
away from every shipped labeled window on ANY symbol, and ``moola train --pretrained-encoder``
loads it (16/16 full, 4/8 forward-only) or refuses it loudly (wrong shapes, other features) with
exit code 2. An encoder whose pool overlaps the evaluated time (``data.exclusion=symbol``) is
refused by ``moola train`` (val/test) and ``moola oof`` (every labeled window), and runs only
with ``allow_transductive=true``, its report's first line saying TRANSDUCTIVE."""

from __future__ import annotations

import json
import warnings
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import polars as pl
import pytest
import torch
import yaml
from safetensors.torch import load_file
from typer.testing import CliRunner, Result

from _real_data import load_daily
from _train_helpers import ROOT
from moola.cli import app
from moola.datasets import load_scaler
from moola.datasets.windows import WindowSet
from moola.features import build_features
from moola.models.transfer import ENCODER_META, ENCODER_WEIGHTS, expected_rnn_shapes, read_encoder_dir
from moola.pipelines.pretrain import PretrainConfig, run_pretrain
from moola.training import GuardWarning, resolve_precision
from moola.training.manifest import read_manifest

PRETRAIN_DEMO = ROOT / "configs" / "pretrain_demo.yaml"
TRAIN_DEMO = ROOT / "configs" / "train_demo.yaml"
OOF_DEMO = ROOT / "configs" / "oof_demo.yaml"
LABELS = ROOT / "data" / "labels" / "sp500_patterns.csv"
WINDOW = 105
EMBARGO = 5  # pretrain_demo.yaml's data.embargo_bars
TINY = ["train.epochs=1", "train.device=cpu", "train.num_threads=1"]
# one symbol, every 20th window, one epoch, one baseline: a real run in a few seconds
TRAIN_TINY = ["train.epochs=1", "data.symbols=[AAPL]", "data.stride=20", "baselines=[majority]",
              "train.device=cpu", "train.num_threads=1"]
pytestmark = pytest.mark.filterwarnings("ignore::moola.training.guards.GuardWarning")  # tiny sets


@pytest.fixture(scope="module", autouse=True)
def _restore_threads() -> Iterator[None]:
    """The runs set torch to one thread (train.num_threads=1); put the count back after."""
    before = torch.get_num_threads()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", GuardWarning)
        yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    """One out_dir for the module: the bundled store is ingested once."""
    return tmp_path_factory.mktemp("pretrain")


def _pretrain(root: Path, name: str, *overrides: str) -> Path:
    cfg = PretrainConfig.from_yaml(PRETRAIN_DEMO, [f"out_dir={root}", f"name={name}", *TINY, *overrides])
    return run_pretrain(cfg, show_progress=False)


@pytest.fixture(scope="module")
def jade_encoder(root) -> tuple[Path, list[tuple[WindowSet, np.ndarray, np.ndarray]]]:
    """BiLSTM 2x56 (jade_compact's encoder), recording every window batch the pipeline reads."""
    calls: list[tuple[WindowSet, np.ndarray, np.ndarray]] = []
    real = WindowSet.batch

    def spy(self, idx=None):
        out = real(self, idx)
        rows = np.arange(len(self)) if idx is None else np.atleast_1d(np.arange(len(self))[idx])
        calls.append((self, rows, out))
        return out

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(WindowSet, "batch", spy)
        out = _pretrain(root, "enc56", "data.max_pool=200", "encoder.hidden=56")
    return out, calls


@pytest.fixture(scope="module")
def wide_encoder(root) -> Path:
    """BiLSTM 2x128: fits simple_lstm forward-only, not jade_compact."""
    return _pretrain(root, "enc128", "data.max_pool=100", "encoder.hidden=128")


@pytest.fixture(scope="module")
def symbol_excluded_encoder(root) -> Path:
    """2x56, its pool excluding labeled windows only on their own symbol: it covers labeled
    (and later validation/test) time on other symbols."""
    return _pretrain(root, "enc_symbol", "data.max_pool=200", "encoder.hidden=56",
                     "data.exclusion=symbol")


@pytest.fixture(scope="module")
def relative11_encoder(root) -> Path:
    """A 2x56 encoder pretrained on another feature set (relative11, 11 features)."""
    return _pretrain(root, "enc_rel11", "data.max_pool=100", "encoder.hidden=56",
                     "data.feature_set=relative11")


def _ohlc4_hash() -> str:
    """The ohlc4 schema hash, computed on the bundled bars (independently of the pipeline)."""
    return build_features(load_daily(("AAPL",), max_rows_per_symbol=300), "ohlc4").schema_hash


def cli(*args: str | Path) -> Result:
    return CliRunner().invoke(app, [str(a) for a in args], catch_exceptions=False)


# ------------------------------------------------------------------------------ the encoder dir


def test_pretrain_writes_an_encoder_dir_that_declares_its_architecture(jade_encoder):
    out, _ = jade_encoder
    for f in (ENCODER_WEIGHTS, ENCODER_META, "normalizer.json", "metrics.json", "report.html",
              "config.yaml", "learning_curves.png", "reconstruction.png", "manifest.json"):
        assert (out / f).is_file(), f
    assert not (out / "meta.json").exists()  # the manifest replaces it
    m = read_manifest(out)
    assert (m.kind, m.feature_set, m.window, m.timeframe) == ("encoder", "ohlc4", WINDOW, "1d")
    assert m.feature_names == ["open_lr", "high_lr", "low_lr", "close_lr"]
    assert m.feature_schema_hash == _ohlc4_hash()
    assert (m.embargo_bars, m.pool_exclusion) == (EMBARGO, "time")
    assert m.labels_excluded is not None and Path(m.labels_excluded).resolve() == LABELS.resolve()
    assert m.normalizer == json.loads((out / "normalizer.json").read_text())
    assert len(m.symbols) >= 20 and m.symbols == sorted(m.symbols)
    assert m.data_fingerprint and m.n_params and m.git_sha != "unknown"
    meta = json.loads((out / ENCODER_META).read_text())
    assert meta == {"type": "lstm", "layers": 2, "hidden": 56, "bidirectional": True, "input_size": 4,
                    "feature_set": "ohlc4", "feature_schema_hash": _ohlc4_hash(), "window": WINDOW}
    # the weights are exactly the tensors that architecture has (read_encoder_dir validates both)
    spec, state = read_encoder_dir(out)
    assert {k: tuple(v.shape) for k, v in state.items()} == expected_rnn_shapes(spec)
    assert len(state) == 16
    assert all(torch.isfinite(v).all() for v in state.values())
    raw = load_file(str(out / ENCODER_WEIGHTS))
    assert any(not torch.equal(raw[k], torch.zeros_like(raw[k])) for k in state)
    # the resolved config names the real input size; the metrics are finite numbers
    cfg = yaml.safe_load((out / "config.yaml").read_text())
    assert cfg["encoder"]["input_size"] == 4 and cfg["encoder"]["hidden"] == 56
    # the demo config names no precision: auto, recorded as what this machine ran
    assert cfg["train"]["precision"] == resolve_precision("auto", torch.device("cpu"))
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["epochs_run"] == 1
    for k in ("val_masked_mse", "val_masked_mse_predict_zero"):
        assert np.isfinite(metrics[k]) and metrics[k] > 0
    html = (out / "report.html").read_text()
    for png in ("learning_curves.png", "reconstruction.png"):
        assert f'src="{png}"' in html and (out / png).stat().st_size > 1000


def _label_ranges() -> pl.DataFrame:
    """(symbol, start_ns, end_ns) of every shipped labeled window, read from the CSV and the raw
    bundled bars (window = the 105 bars up to end_ts), widest of the two."""
    csv = pl.read_csv(LABELS)
    bars = load_daily()
    rows = []
    for r in csv.iter_rows(named=True):
        ts = bars.filter(pl.col("symbol") == r["symbol"])["ts"].dt.epoch("ns").to_numpy()
        end = int(pl.Series([r["end_ts"]]).str.to_datetime(time_zone="UTC").dt.epoch("ns")[0])
        start_csv = int(pl.Series([r["start_ts"]]).str.to_datetime(time_zone="UTC").dt.epoch("ns")[0])
        i = int(np.searchsorted(ts, end))
        assert ts[i] == end, r
        rows.append((r["symbol"], min(int(ts[max(i - (WINDOW - 1), 0)]), start_csv), end))
    return pl.DataFrame(rows, schema=["symbol", "start", "end"], orient="row")


def _calendar() -> np.ndarray:
    """The union calendar of the raw bundled bars (ns), independently of the pipeline."""
    return np.unique(load_daily()["ts"].dt.epoch("ns").to_numpy())


def _merged(start: np.ndarray, end: np.ndarray) -> list[tuple[int, int]]:
    """Union of [start_i, end_i] as disjoint sorted intervals (a plain loop)."""
    out: list[list[int]] = []
    for a, b in sorted(zip(start.tolist(), end.tolist(), strict=True)):
        if out and a <= out[-1][1]:
            out[-1][1] = max(out[-1][1], b)
        else:
            out.append([a, b])
    return [(a, b) for a, b in out]


def _ns(ranges) -> list[tuple[int, int]]:
    return [(int(r.start.timestamp()) * 10**9, int(r.end.timestamp()) * 10**9) for r in ranges]


def test_pretraining_pool_keeps_the_embargo_from_every_labeled_window_on_any_symbol(jade_encoder):
    out, calls = jade_encoder
    metrics = json.loads((out / "metrics.json").read_text())
    assert [len(c[1]) for c in calls] == [metrics["train_windows"], metrics["val_windows"]]
    labels = _label_ranges()
    assert labels.height == 122
    cal = _calendar()
    l_s = np.searchsorted(cal, labels["start"].to_numpy())
    l_e = np.searchsorted(cal, labels["end"].to_numpy())
    assert (cal[l_s] == labels["start"].to_numpy()).all() and (cal[l_e] == labels["end"].to_numpy()).all()

    def far_from_labels(s_ns: np.ndarray, e_ns: np.ndarray) -> np.ndarray:
        """(N,) every labeled window (any symbol) lies more than EMBARGO calendar bars away."""
        s, e = np.searchsorted(cal, s_ns)[:, None], np.searchsorted(cal, e_ns)[:, None]
        return ((l_s[None, :] - e > EMBARGO) | (s - l_e[None, :] > EMBARGO)).all(1)

    spans = []
    for ws, idx, x in calls:
        assert x.shape == (len(idx), WINDOW, 4)
        meta = ws.meta[idx]
        s = meta["start_ts"].dt.epoch("ns").to_numpy()
        e = meta["end_ts"].dt.epoch("ns").to_numpy()
        assert ((e - s) > 0).all()
        assert far_from_labels(s, e).all()
        spans.append((s, e, meta["symbol"].cast(pl.String).to_numpy()))
    (tr_s, tr_e, tr_sym), (va_s, va_e, _) = spans
    assert len(tr_s) + len(va_s) == metrics["train_windows"] + metrics["val_windows"] >= 100
    assert len(set(tr_sym)) >= 20  # exclusion is by time: the pool spans the symbols
    # the pool's own split is chronological across symbols, purged with the embargo
    assert np.searchsorted(cal, tr_e).max() + EMBARGO < np.searchsorted(cal, va_s).min()
    # the manifest records exactly the time those windows covered, and it is separated too
    m = read_manifest(out)
    assert _ns(m.pool_intervals) == _merged(np.concatenate([tr_s, va_s]), np.concatenate([tr_e, va_e]))
    assert _ns(m.normalizer_fit) == _merged(tr_s, tr_e)
    pool = np.array(_ns(m.pool_intervals))
    assert far_from_labels(pool[:, 0], pool[:, 1]).all()
    # the normaliser was fitted on exactly the pool's training windows
    x_tr = calls[0][2].reshape(-1, 4).astype(np.float64)
    scaler = load_scaler(out / "normalizer.json")
    np.testing.assert_allclose(scaler.mean_, x_tr.mean(0), rtol=1e-5, atol=1e-9)
    np.testing.assert_allclose(scaler.scale_, x_tr.std(0), rtol=1e-4)


def test_symbol_exclusion_is_opt_in_and_its_pool_meets_labeled_time(symbol_excluded_encoder):
    m = read_manifest(symbol_excluded_encoder)
    assert m.pool_exclusion == "symbol"
    labels = _label_ranges()
    pool = np.array(_ns(m.pool_intervals))
    meets = (pool[:, 0][:, None] <= labels["end"].to_numpy()[None, :]) & \
        (labels["start"].to_numpy()[None, :] <= pool[:, 1][:, None])
    assert meets.any()  # other symbols' windows in labeled time: transductive for the labels


# ------------------------------------------------------------------------- moola train loads it


def test_train_loads_a_jade_compact_encoder_16_of_16(jade_encoder, root):
    enc, _ = jade_encoder
    res = cli("train", "--config", TRAIN_DEMO, "--pretrained-encoder", enc, f"out_dir={root}",
              "name=train_full", "preset=jade_compact", "freeze_epochs=1", *TRAIN_TINY)
    assert res.exit_code == 0, res.output
    assert "16/16 encoder tensors transferred" in res.output
    run_dir = root / "train_full"
    report = (run_dir / "transfer_report.txt").read_text()
    assert report.startswith("16/16 encoder tensors transferred (full)")
    assert f"feature schema hash {_ohlc4_hash()} (ohlc4) matches" in report
    # frozen for the whole (1-epoch) run: the saved encoder is the pretrained one, bit for bit
    src = load_file(str(enc / ENCODER_WEIGHTS))
    saved = load_file(str(run_dir / "weights.safetensors"))
    rnn = [k for k in saved if k.startswith("encoder.rnn.")]
    assert len(rnn) == 16
    for k in rnn:
        assert torch.equal(saved[k], src[k]), k
    assert any(not torch.equal(saved[k], torch.zeros_like(saved[k])) for k in saved if k.startswith("heads"))


def test_train_forward_only_into_simple_lstm_reports_4_of_8(wide_encoder, root):
    res = cli("train", "--config", TRAIN_DEMO, "--pretrained-encoder", wide_encoder,
              "--transfer-mode", "forward-only", f"out_dir={root}", "name=train_fwd",
              "preset=simple_lstm", "freeze_epochs=1", *TRAIN_TINY)
    assert res.exit_code == 0, res.output
    assert "4/8 encoder tensors transferred" in res.output
    report = (root / "train_fwd" / "transfer_report.txt").read_text()
    assert report.startswith("4/8 encoder tensors transferred (forward-only)")
    src = load_file(str(wide_encoder / ENCODER_WEIGHTS))
    saved = load_file(str(root / "train_fwd" / "weights.safetensors"))
    for k in ("weight_ih_l0", "weight_hh_l0", "bias_ih_l0", "bias_hh_l0"):
        assert torch.equal(saved[f"encoder.rnn.{k}"], src[f"encoder.rnn.{k}"]), k
    # layer 1 was not transferred: its recurrent weights (same shape) are not the source's
    assert not torch.equal(saved["encoder.rnn.weight_hh_l1"], src["encoder.rnn.weight_hh_l1"])


def test_train_refuses_an_incompatible_encoder_naming_tensors_and_shapes(wide_encoder, root):
    res = cli("train", "--config", TRAIN_DEMO, "--pretrained-encoder", wide_encoder,
              f"out_dir={root}", "name=train_bad", "preset=jade_compact", *TRAIN_TINY)
    assert res.exit_code == 2, res.output
    out = res.output
    assert "only 0 of 16 target encoder tensors match" in out
    assert "hidden size: source 128 != target 56" in out
    assert "encoder.rnn.weight_ih_l0: source shape (512, 4) != target shape (224, 4)" in out
    assert "encoder.rnn.weight_hh_l1_reverse: source shape (512, 128) != target shape (224, 56)" in out
    assert "Traceback" not in out
    assert not (root / "train_bad" / "transfer_report.txt").exists()
    assert not (root / "train_bad" / "weights.safetensors").exists()


def test_train_refuses_an_encoder_of_another_feature_schema_naming_both_hashes(relative11_encoder, root):
    declared = json.loads((relative11_encoder / ENCODER_META).read_text())
    assert declared["feature_set"] == "relative11" and declared["input_size"] == 11
    other, ours = declared["feature_schema_hash"], _ohlc4_hash()
    assert other != ours
    res = cli("train", "--config", TRAIN_DEMO, "--pretrained-encoder", relative11_encoder,
              f"out_dir={root}", "name=train_schema", "preset=jade_compact", *TRAIN_TINY)
    assert res.exit_code == 2, res.output
    assert other in res.output and ours in res.output, res.output
    assert "Traceback" not in res.output
    assert not (root / "train_schema" / "weights.safetensors").exists()


# ------------------------------------------------------- an encoder that saw the evaluated time


def _first_line(html_text: str) -> str:
    """The report's first visible line: its <h1>."""
    return html_text.split("<h1>", 1)[1].split("</h1>", 1)[0]


def test_train_refuses_an_encoder_whose_pool_overlaps_val_and_test(symbol_excluded_encoder, root):
    enc = symbol_excluded_encoder
    res = cli("train", "--config", TRAIN_DEMO, "--pretrained-encoder", enc, f"out_dir={root}",
              "name=train_leak", "preset=jade_compact", *TRAIN_TINY)
    assert res.exit_code == 2, res.output
    out = " ".join(res.output.split())  # rich wraps long lines
    assert f"encoder {enc}" in out
    assert "its pretraining pool" in out and "overlaps the validation/test periods" in out
    assert "overlapping pair(s)" in out and "exclusion=symbol" in out
    assert f"moola pretrain --config {enc / 'config.yaml'}" in out and "data.pool_end=" in out
    assert "allow_transductive=true" in out and "Traceback" not in out
    assert not (root / "train_leak" / "weights.safetensors").exists()  # refused before training

    res = cli("train", "--config", TRAIN_DEMO, "--pretrained-encoder", enc, f"out_dir={root}",
              "name=train_leak_ok", "preset=jade_compact", "allow_transductive=true", *TRAIN_TINY)
    assert res.exit_code == 0, res.output
    assert res.output.lstrip().startswith("TRANSDUCTIVE: the encoder's pool overlaps")
    run_dir = root / "train_leak_ok"
    assert _first_line((run_dir / "report.html").read_text()).startswith(
        "TRANSDUCTIVE: the encoder&#x27;s pool overlaps the validation/test periods")
    notes = json.loads((run_dir / "metrics.json").read_text())["notes"]
    assert notes[0].startswith("TRANSDUCTIVE: the encoder's pool overlaps the validation/test periods")
    assert "16/16 encoder tensors transferred" in res.output


def _oof_cli(enc: Path, root: Path, name: str, *extra: str) -> Result:
    """``moola oof`` at its smallest: 2 folds x 1 seed x 1 epoch, one pretrained arm."""
    return cli("oof", "--config", OOF_DEMO, "--pretrained-encoder", enc, f"out_dir={root}",
               f"name={name}", "folds=2", "seeds=1", "train.epochs=1", "freeze_epochs=0",
               "label_fractions=[]", "arms=[scratch,pretrained_frozen]", "baselines=[majority]",
               "train.device=cpu", "train.num_threads=1", *extra)


def test_oof_refuses_an_encoder_whose_pool_overlaps_the_labeled_windows(symbol_excluded_encoder, root):
    enc = symbol_excluded_encoder
    res = _oof_cli(enc, root, "oof_leak")
    assert res.exit_code == 2, res.output
    out = " ".join(res.output.split())
    assert f"encoder {enc}" in out and "overlaps the labeled (test-fold) periods" in out
    assert f"data.labels={LABELS.resolve()}" in out
    assert "allow_transductive=true" in out and "Traceback" not in out
    assert not (root / "oof_leak" / "oof_predictions.parquet").exists()

    res = _oof_cli(enc, root, "oof_leak_ok", "allow_transductive=true")
    assert res.exit_code == 0, res.output
    assert res.output.lstrip().startswith("TRANSDUCTIVE: the encoder's pool overlaps")
    out_dir = root / "oof_leak_ok"
    assert _first_line((out_dir / "report.html").read_text()).startswith(
        "TRANSDUCTIVE: the encoder&#x27;s pool overlaps the labeled (test-fold) periods")
    verdict = json.loads((out_dir / "verdict.json").read_text())
    assert verdict["transductive"].startswith("TRANSDUCTIVE: the encoder's pool overlaps")


def test_oof_accepts_the_time_separated_encoder(jade_encoder, root):
    enc, _ = jade_encoder
    res = _oof_cli(enc, root, "oof_clean")
    assert res.exit_code == 0, res.output
    assert "TRANSDUCTIVE" not in res.output
    assert json.loads((root / "oof_clean" / "verdict.json").read_text())["transductive"] is None
    assert not _first_line((root / "oof_clean" / "report.html").read_text()).startswith("TRANSDUCTIVE")


def test_the_pretraining_report_opens_with_its_verdict_against_predicting_zero(jade_encoder):
    """The verdict box states the masked MSE beside predicting zero with a block-bootstrap CI of
    the per-window difference; red ('NOT SHOWN') when the CI does not exclude zero."""
    enc, _ = jade_encoder
    metrics = json.loads((enc / "metrics.json").read_text())
    ci = metrics["val_improvement_ci"]
    assert ci["windows"] == metrics["val_windows"] and ci["low"] <= ci["mean"] <= ci["high"]
    assert ci["mean"] == pytest.approx(metrics["val_masked_mse_predict_zero"] - metrics["val_masked_mse"],
                                       abs=0.05)  # mean of per-window differences vs the pooled one
    text = (enc / "report.html").read_text()
    body = text[text.index("<body>"):]
    box = body[body.index("class='verdict'"):body.index("</div>", body.index("class='verdict'"))]
    assert body.index("class='verdict'") < body.index("pretraining summary")
    assert ("The encoder reconstructs" in box) == (ci["low"] > 0)
    assert ("#c0392b" in box) == (ci["low"] <= 0) and "95% CI" in box
