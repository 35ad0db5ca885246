"""The OOF verdict recipe: folds never split a window from one overlapping it (same symbol),
checked on the shipped labeled set and on a real set with deliberate overlaps, outer and inner
splits alike; a tiny end-to-end ``run_oof`` (scratch + pretrained arms + baselines, 2 folds, 1
seed) writes complete, consistent outputs; and the paired statistics behind the verdict give
the right answer on tables whose answer is known."""

from __future__ import annotations

import json
import re
import warnings
from collections.abc import Iterator
from functools import lru_cache
from pathlib import Path

import numpy as np
import polars as pl
import pytest
import torch

from _real_data import load_daily
from _train_helpers import ROOT
from moola.datasets import stratified_group_kfold
from moola.evaluation.comparison import (
    PairedDifference,
    bootstrap_ci,
    paired_difference,
    summarize_arms,
)
from moola.models import lstm_classifier
from moola.models.transfer import IncompatibleEncoderError
from moola.pipelines.oof import (
    LabeledSet,
    OOFConfig,
    OOFDataConfig,
    _inner_split,
    _subset,
    load_labeled,
    pretraining_verdict,
    run_oof,
)
from moola.pipelines.pretrain import PretrainConfig, run_pretrain
from moola.training import GuardWarning

OOF_DEMO = ROOT / "configs" / "oof_demo.yaml"
PRETRAIN_DEMO = ROOT / "configs" / "pretrain_demo.yaml"
LABELS = ROOT / "data" / "labels" / "sp500_patterns.csv"
WINDOW = 105
H = 16  # encoder width of both the tiny model and the tiny pretrained encoder
MODEL_ARMS = ("scratch", "pretrained_frozen", "pretrained_finetuned")
BASELINES = ("majority", "logistic")
CLASSES = ("consolidation", "retracement")
pytestmark = pytest.mark.filterwarnings("ignore::moola.training.guards.GuardWarning")  # tiny sets


@pytest.fixture(scope="module", autouse=True)
def _one_thread() -> Iterator[None]:
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", GuardWarning)
        yield
    torch.set_num_threads(before)


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


def _check_folds(data: LabeledSet, n_splits: int) -> None:
    """The outer folds exactly as run_oof makes them, and the inner splits of each fold's
    training part (all labels and a label-efficiency subset), never split overlapping windows."""
    n = len(data.y)
    ranges = _ranges(data.meta)
    folds = stratified_group_kfold(data.spans, data.y, n_splits=n_splits, seed=0)  # = run_oof
    assert len(folds) == n_splits
    tested = np.concatenate([f.test for f in folds])
    assert np.array_equal(np.sort(tested), np.arange(n))  # each window tested exactly once
    for f in folds:
        assert len(f.test) and np.array_equal(np.union1d(f.train, f.test), np.arange(n))
        assert np.intersect1d(f.train, f.test).size == 0
        assert _straddles(ranges, f.train, f.test) == []
        assert set(np.unique(data.y[f.test])) == {0, 1}  # stratified: both classes tested
        for frac in (None, 25):
            for seed in (0, 1):
                idx = _subset(f.train, data.y, frac, seed)
                assert np.isin(idx, f.train).all()
                if frac is not None:
                    assert abs(len(idx) - frac) <= 1 and set(np.unique(data.y[idx])) == {0, 1}
                tr, va = _inner_split(data.spans, idx, 0.2, seed)
                assert len(va) > 0 and np.intersect1d(tr, va).size == 0
                assert np.array_equal(np.sort(np.concatenate([tr, va])), np.sort(idx))
                assert 0.05 < len(va) / len(idx) < 0.4
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
def test_folds_of_the_shipped_labels_never_split_overlapping_windows(shipped, n_splits):
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
    _check_folds(overlapping, n_splits)


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
        "label_fractions=[25]", f"baselines=[{','.join(BASELINES)}]", f"pretrained_encoder={encoder}",
        "train.device=cpu", "train.num_threads=1", *extra])
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
    for f in ("oof_predictions.parquet", "scores.parquet", "verdict.json", "report.html",
              "config.yaml", "arm_scores.png", "differences.png", "label_efficiency.png"):
        assert (out / f).is_file() and (out / f).stat().st_size > 0, f
    html = (out / "report.html").read_text()
    srcs = re.findall(r'<img src="([^"]+)"', html)
    assert {"arm_scores.png", "differences.png", "label_efficiency.png"} <= set(srcs)
    for s in srcs:
        assert (out / s).is_file() and (out / s).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", s
    assert "16/16 encoder tensors transferred" in html  # the transfer note of the pretrained arms


def test_predictions_one_row_per_cell_and_window_each_window_once_per_arm(oof_run, shipped):
    out, cfg = oof_run
    p = pl.read_parquet(out / "oof_predictions.parquet")
    arms = {*MODEL_ARMS, *BASELINES}
    assert set(p["arm"].unique()) == arms
    assert set(p["labels"].unique()) == {"25", "all"}
    assert set(p["seed"].unique()) == {0} and set(p["fold"].unique()) == {0, 1}
    key = ["arm", "fold", "seed", "labels", "symbol", "end_ts"]
    assert p.select(key).is_duplicated().sum() == 0  # one row per (cell, test window)
    # each cell predicts exactly its fold's test windows, folds as run_oof makes them
    folds = stratified_group_kfold(shipped.spans, shipped.y, n_splits=cfg.folds, seed=0)
    meta = shipped.meta.select("symbol", "end_ts").with_columns(y=pl.Series(shipped.y))
    for (arm, fold, _seed, labels), g in p.group_by("arm", "fold", "seed", "labels"):
        want = meta[folds[fold].test]
        assert g.height == want.height, (arm, fold, labels)
        got = g.select("symbol", "end_ts", pl.col("y_true").alias("y")).sort("symbol", "end_ts")
        assert got.equals(want.sort("symbol", "end_ts")), (arm, fold, labels)
    # with all labels, every labeled window appears exactly once per (arm, seed) across folds
    full = p.filter(pl.col("labels") == "all")
    for (arm, seed), g in full.group_by("arm", "seed"):
        assert g.height == 122 and g.select("symbol", "end_ts").n_unique() == 122, (arm, seed)
    # ... and a fold's test windows share no time with the other folds' (= its training) windows
    ranges = _ranges(meta)
    index = {k: i for i, k in enumerate(meta.select("symbol", "end_ts").rows())}
    scratch = full.filter(pl.col("arm") == "scratch")
    for k in (0, 1):
        rows = scratch.filter(pl.col("fold") == k).select("symbol", "end_ts").rows()
        te = np.array([index[r] for r in rows])
        assert _straddles(ranges, np.setdiff1d(np.arange(122), te), te) == []
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


def test_scores_match_the_predictions(oof_run):
    out, _ = oof_run
    s = pl.read_parquet(out / "scores.parquet")
    p = pl.read_parquet(out / "oof_predictions.parquet")
    assert s.height == 5 * 2 * 1 * 2  # arms x folds x seeds x label settings
    assert s.select("arm", "fold", "seed", "labels").is_duplicated().sum() == 0
    for c in ("recall_consolidation", "recall_retracement", "pointer_mae", "pointer_hit3",
              "accuracy", "balanced_accuracy", "macro_f1", "ece", "n_test", "collapse"):
        assert c in s.columns, c
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


def test_verdict_names_the_pretrained_arms(oof_run):
    out, _ = oof_run
    v = json.loads((out / "verdict.json").read_text())
    assert isinstance(v["verdict"], str) and "pretrained" in v["verdict"]
    for arm in ("pretrained frozen", "pretrained finetuned"):
        assert re.search(arm + r" (HELPS|HURTS|shows NO significant effect): ", v["verdict"]), v["verdict"]
    assert (v["n_labeled"], v["folds"], v["seeds"]) == (122, 2, 1)
    pairs = {(d["arm"], d["reference"], d["metric"]) for d in v["differences"]}
    assert len(pairs) == len(v["differences"]) == (2 + 3 + 3) * 3
    assert ("pretrained_finetuned", "scratch", "balanced_accuracy") in pairs
    for d in v["differences"]:
        assert d["n"] == 2  # two fold x seed cells, paired
        # two cells can never be significant (Wilcoxon p >= 0.5): the verdict must not claim it
        assert d["significant"] is False
    assert "NO significant effect" in v["verdict"]
    html = (out / "report.html").read_text()
    assert "pretrained frozen" in html


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


def _table(a: np.ndarray, b: np.ndarray, metric: str = "balanced_accuracy") -> pl.DataFrame:
    """Scores of arms A and B on 10 (fold, seed) cells: 5 folds x 2 seeds."""
    cells = [(f, s) for f in range(5) for s in range(2)]
    rows = [{"arm": arm, "fold": f, "seed": s, metric: float(v[i])}
            for arm, v in (("A", a), ("B", b)) for i, (f, s) in enumerate(cells)]
    return pl.DataFrame(rows)


def test_a_constant_lead_of_five_points_is_significant():
    base = np.random.default_rng(0).uniform(0.5, 0.7, 10)
    t = _table(base + 0.05, base)
    d = paired_difference(t, "A", "B", "balanced_accuracy")
    assert d.n == 10 and (d.wins, d.losses) == (10, 0)
    assert d.mean == pytest.approx(0.05, abs=1e-12)
    assert d.ci_low == pytest.approx(0.05, abs=1e-9) and d.ci_high == pytest.approx(0.05, abs=1e-9)
    assert d.ci_low <= d.mean <= d.ci_high
    assert d.p_value is not None and d.p_value < 0.01
    assert d.significant
    assert "+0.0500" in d.sentence() and "10 wins / 0 losses over 10" in d.sentence()
    # the other way round: significantly worse
    r = paired_difference(t, "B", "A", "balanced_accuracy")
    assert r.mean == pytest.approx(-0.05, abs=1e-12) and r.significant and (r.wins, r.losses) == (0, 10)
    assert pretraining_verdict([PairedDifference("pretrained_frozen", "scratch", "balanced_accuracy",
                                                 d.n, d.mean, d.ci_low, d.ci_high, d.p_value, 10, 0)],
                               ["scratch", "pretrained_frozen"]).startswith("pretrained frozen HELPS")


def test_pairs_are_matched_by_fold_and_seed_not_by_row_order():
    base = np.random.default_rng(1).uniform(0.4, 0.8, 10)
    t = _table(base + 0.05, base)
    shuffled = pl.concat([t.filter(pl.col("arm") == "A").reverse(), t.filter(pl.col("arm") == "B")])
    d = paired_difference(shuffled, "A", "B", "balanced_accuracy")
    assert d.mean == pytest.approx(0.05, abs=1e-12) and (d.wins, d.losses) == (10, 0)
    # a cell only one arm has is left out, not paired with something else
    drop = (pl.col("arm") == "B") & (pl.col("fold") == 0) & (pl.col("seed") == 0)
    d9 = paired_difference(t.filter(~drop), "A", "B", "balanced_accuracy")
    assert d9.n == 9 and d9.mean == pytest.approx(0.05, abs=1e-12)


def test_equal_arms_are_not_significant():
    base = np.random.default_rng(2).uniform(0.5, 0.7, 10)
    d = paired_difference(_table(base, base.copy()), "A", "B", "balanced_accuracy")
    assert d.mean == 0 and (d.wins, d.losses) == (0, 0)
    assert d.ci_low <= 0 <= d.ci_high and d.p_value == 1.0
    assert not d.significant
    assert pretraining_verdict([PairedDifference("pretrained_frozen", "scratch", "balanced_accuracy",
                                                 d.n, d.mean, d.ci_low, d.ci_high, d.p_value, 0, 0)],
                               ["scratch", "pretrained_frozen"]).startswith(
        "pretrained frozen shows NO significant effect")
    # noise around zero: no claim either
    noise = np.array([0.02, -0.02, 0.01, -0.01, 0.03, -0.03, 0.015, -0.015, 0.005, -0.005])
    d = paired_difference(_table(base + noise, base), "A", "B", "balanced_accuracy")
    assert abs(d.mean) < 1e-9 and d.ci_low < 0 < d.ci_high and d.p_value > 0.5
    assert not d.significant
    # no shared cells: nothing to claim
    empty = paired_difference(_table(base, base), "A", "C", "balanced_accuracy")
    assert empty.n == 0 and not empty.significant


def test_bootstrap_ci_covers_the_true_mean():
    rng = np.random.default_rng(3)
    sample = rng.normal(0.3, 0.1, 200)
    lo, hi = bootstrap_ci(sample)
    assert lo < 0.3 < hi and lo < sample.mean() < hi
    assert 0.02 < hi - lo < 0.04  # ~ 2 x 1.96 x 0.1 / sqrt(200) = 0.028
    assert bootstrap_ci(sample) == (lo, hi)  # seeded
    # calibrated: a 95% interval covers the true mean in about 95% of repeated samples
    covered = 0
    for _ in range(200):
        lo, hi = bootstrap_ci(rng.normal(0.3, 0.1, 40), n_boot=2000, seed=int(rng.integers(1 << 30)))
        covered += lo <= 0.3 <= hi
    assert 0.88 <= covered / 200 <= 0.99
    assert all(np.isnan(bootstrap_ci(np.array([]))))


def test_summarize_arms_gives_mean_and_std_per_arm():
    base = np.random.default_rng(4).uniform(0.5, 0.7, 10)
    s = summarize_arms(_table(base + 0.05, base), ["balanced_accuracy"]).sort("arm")
    assert s["arm"].to_list() == ["A", "B"] and s["cells"].to_list() == [10, 10]
    assert s["balanced_accuracy_mean"].to_list() == pytest.approx([base.mean() + 0.05, base.mean()])
    assert s["balanced_accuracy_std"].to_list() == pytest.approx([base.std(ddof=1)] * 2)
