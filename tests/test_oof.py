"""The OOF verdict recipe: folds are walk-forward time blocks that never train on later data,
never split a window from one overlapping it (same symbol) and keep the embargo, checked on the
shipped labeled set and on a real set with deliberate overlaps, outer and inner splits alike;
a tiny end-to-end ``run_oof`` (scratch + pretrained arms + baselines, 2 folds) writes complete,
consistent outputs with baselines once per training set; and the fold-level statistics behind
the verdict (seed-averaged fold means, BCa bootstrap, exact sign-flip test, Holm) give the right
answer on tables whose answer is known."""

from __future__ import annotations

import itertools
import json
import re
from functools import lru_cache
from html import unescape
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from _real_data import load_daily
from _train_helpers import ROOT
from moola.evaluation.comparison import (
    PairedDifference,
    bootstrap_ci,
    fold_means,
    holm,
    paired_difference,
    sign_flip_p,
    summarize_arms,
    with_holm,
)
from moola.models import lstm_classifier
from moola.models.transfer import IncompatibleEncoderError
from moola.pipelines.oof import (
    LabeledSet,
    OOFConfig,
    OOFDataConfig,
    _inner_split,
    _subset,
    bar_spans,
    load_labeled,
    oof_folds,
    pretraining_verdict,
    run_oof,
)
from moola.pipelines.pretrain import PretrainConfig, run_pretrain

OOF_DEMO = ROOT / "configs" / "oof_demo.yaml"
PRETRAIN_DEMO = ROOT / "configs" / "pretrain_demo.yaml"
LABELS = ROOT / "data" / "labels" / "sp500_patterns.csv"
WINDOW = 105
H = 16  # encoder width of both the tiny model and the tiny pretrained encoder
MODEL_ARMS = ("scratch", "pretrained_frozen", "pretrained_finetuned")
BASELINES = ("majority", "logistic")
CLASSES = ("consolidation", "retracement")
pytestmark = [pytest.mark.filterwarnings("ignore::moola.training.guards.GuardWarning"),  # tiny sets
              pytest.mark.usefixtures("one_torch_thread_quiet")]


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    """One out_dir (bundled store ingested once) for the module."""
    return tmp_path_factory.mktemp("oof")


# ----------------------------------------------------------- window time ranges, independently


@lru_cache(maxsize=1)
def _bars() -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Per-symbol bar times (ns) of the raw bundled data, and the union calendar."""
    df = load_daily()
    groups = df.partition_by("symbol", as_dict=True).items()
    per = {s: g["ts"].dt.epoch("ns").to_numpy() for (s,), g in groups}
    return per, np.unique(df["ts"].dt.epoch("ns").to_numpy())


def _ranges(meta: pl.DataFrame) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(symbol, first bar ns, last bar ns) of each window, from the raw bars: the 105 bars of
    the symbol up to end_ts (not from the pipeline's own spans)."""
    per, _ = _bars()
    sym = meta["symbol"].to_numpy()
    end = meta["end_ts"].dt.epoch("ns").to_numpy()
    start = np.empty_like(end)
    for i, (s, e) in enumerate(zip(sym, end, strict=True)):
        ts = per[s]
        j = int(np.searchsorted(ts, e))
        assert ts[j] == e
        start[i] = ts[j - (WINDOW - 1)]
    return sym, start, end


def _straddles(ranges, a: np.ndarray, b: np.ndarray) -> list[tuple[int, int]]:
    """Pairs (i in a, j in b) on the same symbol whose time ranges meet."""
    sym, s, e = ranges
    out = []
    for name in np.unique(sym[a]):
        ia, ib = a[sym[a] == name], b[sym[b] == name]
        hit = (s[ia][:, None] <= e[ib][None, :]) & (s[ib][None, :] <= e[ia][:, None])
        out += [(int(ia[i]), int(ib[j])) for i, j in np.argwhere(hit)]
    return out


def _positions(ns: np.ndarray) -> np.ndarray:
    """Bar index on the raw data's union calendar (independent of the pipeline's spans)."""
    _, cal = _bars()
    pos = np.searchsorted(cal, ns)
    assert np.array_equal(cal[pos], ns)
    return pos


def _check_folds(data: LabeledSet, n_splits: int, embargo: int = 10, *, shipped: bool = True
                 ) -> None:
    """The outer folds exactly as run_oof makes them, and the inner splits of each fold's
    training part (all labels and a label-efficiency subset): walk-forward in time, embargoed,
    never splitting overlapping windows of one symbol. ``shipped``: also the sizes and classes
    the shipped set gives (a dense set purges most of an early fold's few windows)."""
    ranges = _ranges(data.meta)
    start, end = _positions(ranges[1]), _positions(ranges[2])
    cfg = OOFConfig(folds=n_splits, arms=["scratch"], embargo_bars=embargo)
    spans = bar_spans(data)
    assert np.array_equal(spans.start, start) and np.array_equal(spans.end, end)
    folds = oof_folds(cfg, spans)  # = run_oof
    assert len(folds) == n_splits
    tested = np.concatenate([f.test for f in folds])
    assert np.unique(tested).size == tested.size  # no window tested twice
    first = end < end[folds[0].test].min()  # the train-only first block: >= min_train windows
    assert first.sum() >= cfg.min_train and np.array_equal(np.sort(tested), np.flatnonzero(~first))
    for k, f in enumerate(folds):
        assert len(f.test) and np.intersect1d(f.train, f.test).size == 0
        assert _straddles(ranges, f.train, f.test) == []
        assert end[f.train].max() + embargo < end[f.test].min()  # never trains on later data
        if k:
            assert end[folds[k - 1].test].max() < end[f.test].min()
        for frac in (None, 25):
            for seed in (0, 1):
                idx = _subset(f.train, data.y, frac, seed)
                assert np.isin(idx, f.train).all()
                if frac is not None:
                    assert abs(len(idx) - min(frac, len(f.train))) <= 1
                    assert set(np.unique(data.y[idx])) == {0, 1} or not shipped
                tr, va = _inner_split(spans, idx, 0.2, embargo)
                assert np.intersect1d(tr, va).size == 0
                assert np.isin(tr, idx).all() and np.isin(va, idx).all()
                if shipped:
                    assert len(va) > 0 and 0.05 < len(va) / len(idx) < 0.4
                if len(va) == 0:
                    continue
                # the inner validation set is the last time block, embargoed from the rest
                assert end[tr].max() + embargo < end[va].min()
                assert _straddles(ranges, tr, va) == [], (n_splits, frac, seed)


@pytest.fixture(scope="module")
def shipped(root) -> LabeledSet:
    return load_labeled(OOFDataConfig(), root)


def test_shipped_labels_load_with_their_time_ranges(shipped):
    csv = pl.read_csv(LABELS)
    assert len(shipped.y) == csv.height == 122
    assert shipped.classes == list(CLASSES)
    assert shipped.x.shape == (122, WINDOW, 4) and np.isfinite(shipped.x).all()
    assert shipped.pointers is not None and shipped.pointers.shape == (122, 2)
    # meta and labels line up with the CSV rows; spans are the windows' own time ranges
    rows = shipped.meta["file_row"].to_numpy() - 1
    assert np.array_equal(shipped.meta["symbol"].to_numpy(), csv["symbol"].to_numpy()[rows])
    assert [CLASSES[k] for k in shipped.y] == csv["label"].to_list()
    _, start, end = _ranges(shipped.meta)
    assert np.array_equal(shipped.spans.start, start) and np.array_equal(shipped.spans.end, end)
    csv_start = csv["start_ts"].str.to_datetime(time_zone="UTC").dt.epoch("ns").to_numpy()[rows]
    assert np.array_equal(start, csv_start)


@pytest.mark.parametrize("n_splits", [2, 3, 5])
def test_folds_of_the_shipped_labels_are_walk_forward_time_blocks(shipped, n_splits):
    _check_folds(shipped, n_splits)


@pytest.fixture(scope="module")
def overlapping(root) -> LabeledSet:
    """The shipped labels plus copies shifted 30 bars earlier and 40 bars later on the same
    symbol (gap-free windows only): a real set full of same-symbol overlaps."""
    per, cal = _bars()
    csv = pl.read_csv(LABELS)
    extra = []
    for r in csv.iter_rows(named=True):
        ts = per[r["symbol"]]
        end = int(pl.Series([r["end_ts"]]).str.to_datetime(time_zone="UTC").dt.epoch("ns")[0])
        i = int(np.searchsorted(ts, end))
        for shift in (-30, 40):
            j = i + shift
            if j - WINDOW < 0 or j >= len(ts):
                continue
            pos = np.searchsorted(cal, ts[j - WINDOW : j + 1])  # the window and its previous bar
            if np.all(np.diff(pos) == 1):
                stamp = pl.Series([ts[j]]).cast(pl.Datetime("ns", "UTC")).dt.strftime("%Y-%m-%dT%H:%M:%SZ")
                extra.append({**r, "end_ts": stamp[0]})
    path = root / "overlapping_labels.csv"
    pl.concat([csv, pl.DataFrame(extra, schema=csv.schema)]).write_csv(path)
    return load_labeled(OOFDataConfig(labels=str(path)), root)


@pytest.mark.parametrize("n_splits", [2, 3, 5])
def test_folds_never_split_overlapping_windows_when_there_are_many(overlapping, n_splits):
    ranges = _ranges(overlapping.meta)
    n = len(overlapping.y)
    assert n > 300
    everything = np.arange(n)
    assert len(_straddles(ranges, everything, everything)) > n + 200  # many real overlaps
    # the check has teeth: a split that ignores time (every other window) straddles
    naive_test = everything[::2]
    assert _straddles(ranges, np.setdiff1d(everything, naive_test), naive_test)
    _check_folds(overlapping, n_splits, shipped=False)
    # the purge has teeth here: same-symbol windows overlapping a test block are dropped
    folds = oof_folds(OOFConfig(folds=n_splits, arms=["scratch"]), bar_spans(overlapping))
    assert sum(f.purged for f in folds) > 0


# ----------------------------------------------------------------------- run_oof end to end


@pytest.fixture(scope="module")
def encoder(root) -> Path:
    cfg = PretrainConfig.from_yaml(PRETRAIN_DEMO, [
        f"out_dir={root}", "name=enc16", "data.max_pool=100", f"encoder.hidden={H}",
        "train.epochs=1", "train.device=cpu", "train.num_threads=1"])
    return run_pretrain(cfg, show_progress=False)


def _oof_config(root: Path, encoder: Path, name: str, *extra: str) -> OOFConfig:
    base = OOFConfig.from_yaml(OOF_DEMO, [
        f"out_dir={root}", f"name={name}", "folds=2", "seeds=1", "train.epochs=2", "freeze_epochs=1",
        "label_fractions=[25]", "efficiency_seeds=2", f"baselines=[{','.join(BASELINES)}]",
        f"pretrained_encoder={encoder}", "train.device=cpu", "train.num_threads=1", *extra])
    # jade_compact's shape (BiLSTM 2 layers + attention + pointer) at the encoder's width 16
    model = lstm_classifier(4, 2, hidden=H, layers=2, bidirectional=True, attn_hidden=16,
                            attn_heads=2, pointer=True, name="tiny_jade")
    return OOFConfig.from_dict({**base.to_dict(), "model": model.to_dict()})


@pytest.fixture(scope="module")
def oof_run(root, encoder) -> tuple[Path, OOFConfig]:
    cfg = _oof_config(root, encoder, "oof_tiny")
    return run_oof(cfg, show_progress=False), cfg


def test_oof_writes_every_output(oof_run):
    out, _ = oof_run
    for f in ("oof_predictions.parquet", "scores.parquet", "fold_scores.parquet", "folds.json",
              "verdict.json", "report.html", "config.yaml", "arm_scores.png", "differences.png",
              "label_efficiency.png"):
        assert (out / f).is_file() and (out / f).stat().st_size > 0, f
    html = (out / "report.html").read_text()
    srcs = re.findall(r'<img src="([^"]+)"', html)
    assert {"arm_scores.png", "differences.png", "label_efficiency.png"} <= set(srcs)
    for s in srcs:
        assert (out / s).is_file() and (out / s).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", s
    assert "16/16 encoder tensors transferred" in html  # the transfer note of the pretrained arms
    # the page's first line is the verdict's first line
    first = json.loads((out / "verdict.json").read_text())["verdict"].splitlines()[0]
    assert unescape(re.search(r"<h1>([^<]*)</h1>", html).group(1)) == first


def test_folds_json_records_the_folds_run_oof_used(oof_run, shipped):
    out, cfg = oof_run
    rec = json.loads((out / "folds.json").read_text())
    assert (rec["scheme"], rec["embargo_bars"], rec["min_train"]) == ("walk_forward", 10, 50)
    folds = oof_folds(cfg, bar_spans(shipped))
    assert [f["test"] for f in rec["folds"]] == [f.test.tolist() for f in folds]
    assert [f["train"] for f in rec["folds"]] == [f.train.tolist() for f in folds]
    for f, r in zip(folds, rec["folds"], strict=True):
        lay = r["layout"]
        assert lay["n_train"] == len(f.train) and lay["n_test"] == len(f.test)
        for i, c in enumerate(CLASSES):  # per-fold class counts, as reported
            assert lay[f"test_{c}"] == int((shipped.y[f.test] == i).sum())
            assert lay[f"train_{c}"] == int((shipped.y[f.train] == i).sum())


def test_predictions_one_row_per_cell_and_window_each_window_once_per_arm(oof_run, shipped):
    out, cfg = oof_run
    p = pl.read_parquet(out / "oof_predictions.parquet")
    arms = {*MODEL_ARMS, *BASELINES}
    assert set(p["arm"].unique()) == arms
    assert set(p["labels"].unique()) == {"25", "all"}
    assert set(p["fold"].unique()) == {0, 1}
    key = ["arm", "fold", "seed", "labels", "symbol", "end_ts"]
    assert p.select(key).is_duplicated().sum() == 0  # one row per (cell, test window)
    # each cell predicts exactly its fold's test windows, folds as run_oof makes them
    folds = oof_folds(cfg, bar_spans(shipped))
    meta = shipped.meta.select("symbol", "end_ts").with_columns(y=pl.Series(shipped.y))
    for (arm, fold, _seed, labels), g in p.group_by("arm", "fold", "seed", "labels"):
        want = meta[folds[fold].test]
        assert g.height == want.height, (arm, fold, labels)
        got = g.select("symbol", "end_ts", pl.col("y_true").alias("y")).sort("symbol", "end_ts")
        assert got.equals(want.sort("symbol", "end_ts")), (arm, fold, labels)
    # with all labels, every tested window appears exactly once per (arm, seed) across folds:
    # all but the train-only first block (min_train = 50 windows)
    n_tested = sum(len(f.test) for f in folds)
    assert 122 - n_tested >= 50
    full = p.filter(pl.col("labels") == "all")
    for key, g in full.group_by("arm", "seed"):
        assert g.height == n_tested and g.select("symbol", "end_ts").n_unique() == n_tested, key
    # ... and every test window comes after all of its fold's training windows
    ranges = _ranges(meta)
    index = {k: i for i, k in enumerate(meta.select("symbol", "end_ts").rows())}
    scratch = full.filter(pl.col("arm") == "scratch")
    for k in (0, 1):
        rows = scratch.filter(pl.col("fold") == k).select("symbol", "end_ts").rows()
        te = np.array([index[r] for r in rows])
        assert np.array_equal(np.sort(te), folds[k].test)
        assert ranges[2][folds[k].train].max() < ranges[2][te].min()
    # probabilities are distributions and the prediction is their argmax
    proba = p.select(f"proba_{c}" for c in CLASSES).to_numpy()
    np.testing.assert_allclose(proba.sum(1), 1.0, atol=1e-5)
    assert np.array_equal(p["pred"].to_numpy(), proba.argmax(1))
    # model arms predict pointers inside the window; baselines have none
    ptr = p.filter(pl.col("arm").is_in(MODEL_ARMS)).select("pointer_start_pred", "pointer_end_pred")
    assert ptr.null_count().sum_horizontal()[0] == 0
    assert ptr.to_numpy().min() >= 0 and ptr.to_numpy().max() < WINDOW
    assert p.filter(pl.col("arm").is_in(BASELINES))["pointer_start_pred"].null_count() == \
        p.filter(pl.col("arm").is_in(BASELINES)).height


def test_scores_match_the_predictions_and_baselines_run_once_per_training_set(oof_run):
    out, _ = oof_run
    s = pl.read_parquet(out / "scores.parquet")
    p = pl.read_parquet(out / "oof_predictions.parquet")
    # model arms: 2 folds x (1 seed with all labels + 2 label subsets of 25); baselines are
    # deterministic given their training set: once per fold, and once per subset of 25
    assert s.height == 3 * 2 * (1 + 2) + 2 * 2 * (1 + 2)
    base = s.filter(pl.col("arm").is_in(BASELINES))
    assert set(base.filter(pl.col("labels") == "all")["seed"]) == {0}
    assert base.filter(pl.col("labels") == "all").height == len(BASELINES) * 2
    assert set(base.filter(pl.col("labels") == "25")["seed"]) == {0, 1}
    assert s.select("arm", "fold", "seed", "labels").is_duplicated().sum() == 0
    for c in ("recall_consolidation", "recall_retracement", "pointer_mae", "pointer_hit3",
              "accuracy", "balanced_accuracy", "macro_f1", "ece", "n_train", "n_test", "collapse"):
        assert c in s.columns, c
    assert (s.filter(pl.col("labels") == "25")["n_train"] <= 26).all()
    for row in s.iter_rows(named=True):
        g = p.filter((pl.col("arm") == row["arm"]) & (pl.col("fold") == row["fold"])
                     & (pl.col("seed") == row["seed"]) & (pl.col("labels") == row["labels"]))
        y, yhat = g["y_true"].to_numpy(), g["pred"].to_numpy()
        assert row["n_test"] == len(y)
        assert row["accuracy"] == pytest.approx(float((y == yhat).mean()))
        recalls = [float((yhat[y == k] == k).mean()) for k in range(2)]
        assert [row["recall_consolidation"], row["recall_retracement"]] == pytest.approx(recalls)
        assert row["balanced_accuracy"] == pytest.approx(float(np.mean(recalls)))
        if row["arm"] in MODEL_ARMS:
            assert 0 <= row["pointer_mae"] < WINDOW and 0 <= row["pointer_hit3"] <= 1
        else:
            assert row["pointer_mae"] is None and row["pointer_hit3"] is None
    # fold_scores: the seed averages the statistics use
    fs = pl.read_parquet(out / "fold_scores.parquet")
    assert fs.select("arm", "labels", "fold").is_duplicated().sum() == 0
    want = s.group_by("arm", "labels", "fold").agg(pl.col("balanced_accuracy").mean(),
                                                   pl.len().alias("seeds"))
    j = fs.join(want, on=["arm", "labels", "fold"], suffix="_want")
    assert j.height == fs.height == want.height
    np.testing.assert_allclose(j["balanced_accuracy"], j["balanced_accuracy_want"])
    assert j["seeds"].to_list() == j["seeds_want"].to_list()


def test_verdict_names_the_pretrained_arms_and_cannot_claim_with_two_folds(oof_run):
    out, _ = oof_run
    v = json.loads((out / "verdict.json").read_text())
    lines = v["verdict"].splitlines()
    assert lines[0].startswith("NO: no pretrained arm beats scratch and the best baseline (")
    assert "Holm-adjusted p < 0.05 over 2 walk_forward folds" in lines[0]
    for arm in ("pretrained frozen", "pretrained finetuned"):
        assert any(re.match(arm + r": vs scratch [+-]\d\.\d{3} \(95% ", x) for x in lines), lines
    assert "cannot show a difference at 0.05" in v["verdict"]  # 2 folds: smallest p is 0.5
    assert (v["n_labeled"], v["folds"], v["seeds"]) == (122, 2, 1)
    assert v["best_baseline"] in BASELINES and v["primary_metric"] == "balanced_accuracy"
    pairs = {(d["arm"], d["reference"], d["metric"]) for d in v["differences"]}
    # per metric: 2 pretrained arms vs scratch + 3 model arms vs the best baseline; and the
    # pointer error of the 2 pretrained arms vs scratch (the task has pointers)
    assert len(pairs) == len(v["differences"]) == (2 + 3) * 3 + 2
    assert {p for p in pairs if p[2] == "pointer_mae"} == {
        ("pretrained_frozen", "scratch", "pointer_mae"), ("pretrained_finetuned", "scratch", "pointer_mae")}
    for arm in ("pretrained frozen", "pretrained finetuned"):
        assert any(x.startswith(arm + ":") and "pointer error vs scratch" in x for x in lines), lines
    assert ("pretrained_finetuned", "scratch", "balanced_accuracy") in pairs
    for d in v["differences"]:
        assert d["folds"] == 2 and d["labels"] == "all"  # two paired fold means
        assert d["min_p"] == 0.5 and d["p_value"] >= 0.5 and d["p_holm"] >= d["p_value"]
        assert d["family"].startswith("verdict: ") and d["significant"] is False
    eff = v["efficiency"]
    assert {(d["arm"], d["reference"], d["labels"]) for d in eff} == {
        ("pretrained_frozen", "scratch", "25"), ("pretrained_finetuned", "scratch", "25"),
        ("scratch", v["best_baseline"], "25")}
    assert len({d["family"] for d in eff}) == 1
    html = (out / "report.html").read_text()
    assert "pretrained frozen" in html and "Holm" in html


def test_an_encoder_of_another_feature_schema_is_refused_before_any_cell(root, shipped):
    rel = run_pretrain(PretrainConfig.from_yaml(PRETRAIN_DEMO, [
        f"out_dir={root}", "name=enc_rel11", "data.max_pool=100", f"encoder.hidden={H}",
        "data.feature_set=relative11", "train.epochs=1", "train.device=cpu",
        "train.num_threads=1"]), show_progress=False)
    other = json.loads((rel / "encoder.json").read_text())["feature_schema_hash"]
    assert other != shipped.schema_hash
    cfg = _oof_config(root, rel, "oof_rel11")
    with pytest.raises(IncompatibleEncoderError) as e:
        run_oof(cfg, show_progress=False)
    assert other in str(e.value) and shipped.schema_hash in str(e.value)
    assert not (root / "oof_rel11" / "scores.parquet").exists()


# ------------------------------------------------------------------------ paired statistics


def _cells(a: np.ndarray, b: np.ndarray, seeds: int = 1, metric: str = "balanced_accuracy",
           noise: float = 0.0) -> pl.DataFrame:
    """Scores of arms A and B: fold f has mean a[f] / b[f]; each seed adds zero-mean noise."""
    rng = np.random.default_rng(7)
    rows = []
    for arm, v in (("A", a), ("B", b)):
        for f, x in enumerate(v):
            e = rng.normal(0, noise, seeds) if seeds > 1 else np.zeros(1)
            for s, es in enumerate(e - e.mean()):
                rows.append({"arm": arm, "labels": "all", "fold": f, "seed": s, metric: x + es})
    return pl.DataFrame(rows)


def _pd(arm: str, ref: str, d: PairedDifference) -> PairedDifference:
    return PairedDifference(arm, ref, d.metric, d.labels, d.folds, d.mean, d.ci_low, d.ci_high,
                            d.ci_method, d.p_value, d.wins, d.losses)


def test_seeds_are_averaged_within_a_fold_before_any_test():
    base = np.random.default_rng(0).uniform(0.5, 0.7, 5)
    cells = _cells(base + 0.05, base, seeds=5, noise=0.02)
    # 25 seed-level cells would look overwhelming; they are not 25 independent replicates
    with pytest.raises(ValueError, match="several rows per fold: average seeds within each fold"):
        paired_difference(cells, "A", "B", "balanced_accuracy")
    fm = fold_means(cells, ["balanced_accuracy"])
    assert fm.height == 10 and set(fm["seeds"]) == {5}
    np.testing.assert_allclose(fm.filter(pl.col("arm") == "A")["balanced_accuracy"], base + 0.05)
    d = paired_difference(fm, "A", "B", "balanced_accuracy")
    assert d.folds == 5 and (d.wins, d.losses) == (5, 0)
    assert d.mean == pytest.approx(0.05, abs=1e-12)
    # five folds all in favour: the exact sign-flip test's floor, 2 / 2^5, is not < 0.05
    assert d.p_value == pytest.approx(0.0625) and d.min_p == pytest.approx(0.0625)
    assert not d.significant
    assert d.ci_method == "none (all differences equal)" and d.ci_low == d.ci_high == pytest.approx(0.05)
    assert "+0.0500" in d.sentence() and "5 wins / 0 losses over 5 folds" in d.sentence()


def test_a_constant_lead_over_eight_folds_survives_holm_and_the_verdict_says_yes():
    base = np.random.default_rng(1).uniform(0.5, 0.7, 8)
    rng = np.random.default_rng(2)
    lead = 0.05 + rng.uniform(-0.01, 0.01, 8)  # varied, all positive: BCa is defined
    rows = []
    for arm, v in (("pretrained_frozen", base + lead), ("scratch", base),
                   ("minirocket", base - 0.1)):
        rows += [{"arm": arm, "labels": "all", "fold": f, "seeds": 1, "balanced_accuracy": x}
                 for f, x in enumerate(v)]
    fm = pl.DataFrame(rows)
    pairs = [("pretrained_frozen", "scratch"), ("pretrained_frozen", "minirocket"),
             ("scratch", "minirocket")]
    diffs = with_holm([paired_difference(fm, a, r, "balanced_accuracy") for a, r in pairs], "v")
    d = diffs[0]
    assert d.p_value == pytest.approx(2 / 2**8) and d.p_holm == pytest.approx(3 * 2 / 2**8)
    assert d.ci_method == "BCa" and 0.04 <= d.ci_low < d.mean < d.ci_high <= 0.06
    assert all(x.significant for x in diffs)
    v = pretraining_verdict(diffs, ["scratch", "pretrained_frozen"], "minirocket", n_folds=8)
    assert v.startswith("YES: pretrained frozen beats scratch and the best baseline (minirocket)")
    assert "cannot show" not in v
    # the other way round: significantly worse, and the first line says so
    worse = with_holm([_pd("pretrained_frozen", "scratch",
                           paired_difference(fm, "scratch", "pretrained_frozen", "balanced_accuracy")),
                       *diffs[1:]], "v")
    v = pretraining_verdict(worse, ["scratch", "pretrained_frozen"], "minirocket", n_folds=8)
    first = v.splitlines()[0]
    assert first.startswith("NO: ") and "pretrained frozen is significantly WORSE than scratch" in first


def test_equal_arms_and_noise_are_not_significant():
    base = np.random.default_rng(2).uniform(0.5, 0.7, 8)
    fm = fold_means(_cells(base, base.copy()), ["balanced_accuracy"])
    d = paired_difference(fm, "A", "B", "balanced_accuracy")
    assert d.mean == 0 and (d.wins, d.losses) == (0, 0) and d.p_value == 1.0
    assert d.ci_low == d.ci_high == 0 and not d.significant
    noise = np.array([0.02, -0.02, 0.01, -0.01, 0.03, -0.03, 0.015, -0.015])
    d = paired_difference(fold_means(_cells(base + noise, base), ["balanced_accuracy"]), "A", "B",
                          "balanced_accuracy")
    assert abs(d.mean) < 1e-9 and d.ci_low < 0 < d.ci_high and d.p_value > 0.5
    assert not d.significant
    v = pretraining_verdict(with_holm([_pd("pretrained_frozen", "scratch", d)], "v"),
                            ["scratch", "pretrained_frozen"], None, n_folds=8)
    assert v.startswith("NO: no pretrained arm beats scratch on balanced accuracy")
    empty = paired_difference(fm, "A", "C", "balanced_accuracy")  # no shared folds
    assert empty.folds == 0 and empty.p_value is None and not empty.significant


def test_sign_flip_p_is_the_exact_enumeration():
    rng = np.random.default_rng(3)
    for k in (3, 6, 9):
        d = rng.normal(0.02, 0.05, k)
        flips = np.array(list(itertools.product([-1, 1], repeat=k)))
        null = np.abs((flips * d).mean(axis=1))
        want = float(np.mean(null >= abs(d.mean()) - 1e-12))
        assert sign_flip_p(d) == pytest.approx(want)
    assert sign_flip_p(np.array([])) is None and sign_flip_p(np.array([0.3])) == 1.0


def test_holm_matches_hand_computation():
    # sorted 0.01, 0.03, 0.04 -> 3 x 0.01, max(., 2 x 0.03), max(., 1 x 0.04)
    assert holm([0.01, 0.04, None, 0.03]) == pytest.approx([0.03, 0.06, None, 0.06])
    assert holm([0.5, 0.9]) == pytest.approx([1.0, 1.0])
    assert holm([]) == []
    adj = holm(list(np.random.default_rng(4).uniform(0, 0.2, 10)))
    assert all(a is not None and 0 <= a <= 1 for a in adj)


def test_bootstrap_ci_is_bca_calibrated_and_falls_back_where_bca_is_undefined():
    rng = np.random.default_rng(3)
    sample = rng.normal(0.3, 0.1, 200)
    lo, hi, method = bootstrap_ci(sample)
    assert method == "BCa" and lo < 0.3 < hi and lo < sample.mean() < hi
    assert 0.02 < hi - lo < 0.04  # ~ 2 x 1.96 x 0.1 / sqrt(200) = 0.028
    assert bootstrap_ci(sample) == (lo, hi, method)  # seeded
    covered = 0
    for _ in range(100):
        lo, hi, _m = bootstrap_ci(rng.normal(0.3, 0.1, 40), n_boot=1999,
                                  seed=int(rng.integers(1 << 30)))
        covered += lo <= 0.3 <= hi
    assert 0.85 <= covered / 100 <= 1.0
    assert bootstrap_ci(np.array([0.1, 0.1, 0.1])) == (pytest.approx(0.1), pytest.approx(0.1),
                                                      "none (all differences equal)")
    lo, hi, method = bootstrap_ci(np.array([0.1, 0.3]))
    assert method == "percentile" and 0.1 <= lo <= hi <= 0.3
    assert all(np.isnan(bootstrap_ci(np.array([]))[:2]))


def test_summarize_arms_gives_mean_and_std_over_folds():
    base = np.random.default_rng(4).uniform(0.5, 0.7, 5)
    fm = fold_means(_cells(base + 0.05, base, seeds=3, noise=0.01), ["balanced_accuracy"])
    s = summarize_arms(fm, ["balanced_accuracy"]).sort("arm")
    assert s["arm"].to_list() == ["A", "B"] and s["folds"].to_list() == [5, 5]
    assert s["seeds"].to_list() == [3, 3]
    assert s["balanced_accuracy_mean"].to_list() == pytest.approx([base.mean() + 0.05, base.mean()])
    assert s["balanced_accuracy_std"].to_list() == pytest.approx([base.std(ddof=1)] * 2)


def test_a_win_on_accuracy_with_a_far_worse_pointer_has_not_helped():
    """Pretraining that classifies better but puts the pattern's start/end 40 bars further off is
    not help: the first line says NO and why; a pointer within the tolerance keeps the YES."""
    base = np.random.default_rng(1).uniform(0.5, 0.7, 8)
    lead = 0.05 + np.random.default_rng(2).uniform(-0.01, 0.01, 8)
    ptr = np.random.default_rng(3).uniform(4, 8, 8)

    def verdict(extra_bars: float) -> str:
        rows = []
        for arm, v, p in (("pretrained_frozen", base + lead, ptr + extra_bars + 0.1 * np.arange(8)),
                          ("scratch", base, ptr), ("minirocket", base - 0.1, None)):
            rows += [{"arm": arm, "labels": "all", "fold": f, "seeds": 1, "balanced_accuracy": x,
                      "pointer_mae": None if p is None else float(p[f])} for f, x in enumerate(v)]
        fm = pl.DataFrame(rows)
        pairs = [("pretrained_frozen", "scratch"), ("pretrained_frozen", "minirocket"),
                 ("scratch", "minirocket")]
        diffs = with_holm([paired_difference(fm, a, r, "balanced_accuracy") for a, r in pairs], "v")
        diffs += with_holm([paired_difference(fm, "pretrained_frozen", "scratch", "pointer_mae")], "p")
        return pretraining_verdict(diffs, ["scratch", "pretrained_frozen"], "minirocket", n_folds=8)

    v = verdict(40.0)
    first = v.splitlines()[0]
    assert first.startswith("NO: no pretrained arm beats"), first
    assert "pretrained frozen beats scratch and the best baseline (minirocket) on balanced accuracy but " \
           "locates the pattern worse than scratch" in first
    assert "pointer error vs scratch +40.4 bars" in v.splitlines()[1]
    assert verdict(0.5).startswith("YES: pretrained frozen beats scratch")  # within 2 bars
