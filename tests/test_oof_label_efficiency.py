"""The label-efficiency curve says only what it has: a configured label count the smallest fold
cannot subsample is dropped and named (console, report, verdict.json), and every point sits at
the mean number of windows its cells really trained on, checked on a tiny real run of the
shipped labeled set (2 walk-forward folds, scratch + majority + logistic)."""

from __future__ import annotations

import io
import json
import re
from html import unescape
from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt
import numpy as np
import polars as pl
import pytest
from matplotlib.container import ErrorbarContainer
from rich.console import Console

from _train_helpers import ROOT
from moola.models import lstm_classifier
from moola.pipelines._oof_report import efficiency_points, plot_label_efficiency, write_oof_report
from moola.pipelines.oof import OOFConfig, efficiency_counts, run_oof

OOF_DEMO = ROOT / "configs" / "oof_demo.yaml"
BASELINES = ("majority", "logistic")
pytestmark = [pytest.mark.filterwarnings("ignore::moola.training.guards.GuardWarning"),  # tiny sets
              pytest.mark.usefixtures("one_torch_thread_quiet")]


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> tuple[Path, str]:
    """2 folds (min_train 50: fold 0 trains on fewer than 50 windows, fold 1 on more than 60),
    label counts [25, 60]: 60 < 122 labeled windows, but fold 0 cannot draw 60."""
    root = tmp_path_factory.mktemp("oof_eff")
    base = OOFConfig.from_yaml(OOF_DEMO, [
        f"out_dir={root}", "name=eff", "folds=2", "seeds=1", "train.epochs=1", "arms=[scratch]",
        "label_fractions=[25,60]", "efficiency_seeds=2", f"baselines=[{','.join(BASELINES)}]",
        "train.device=cpu", "train.num_threads=1"])
    model = lstm_classifier(4, 2, hidden=8, layers=1, attn_hidden=8, attn_heads=1, name="tiny_lstm")
    cfg = OOFConfig.from_dict({**base.to_dict(), "model": model.to_dict()})
    buf = io.StringIO()
    out = run_oof(cfg, console=Console(file=buf, width=400, color_system=None), show_progress=False)
    return out, buf.getvalue()


def _bars(ax: Any) -> list[ErrorbarContainer]:
    """The axes' error-bar series (one per arm)."""
    return [c for c in ax.containers if isinstance(c, ErrorbarContainer)]


def _layout(out: Path) -> list[dict[str, Any]]:
    return [f["layout"] for f in json.loads((out / "folds.json").read_text())["folds"]]


def test_a_count_the_smallest_fold_cannot_draw_is_dropped_and_named(run):
    out, console = run
    n_train = [lay["n_train"] for lay in _layout(out)]
    k = int(np.argmin(n_train))
    assert n_train[k] <= 60 < max(n_train) < 122  # the old filter (count < 122) kept 60
    assert (f"label efficiency: dropped 60 labels: not fewer than the smallest fold's training "
            f"part ({n_train[k]} windows, fold {k})") in console
    scores = pl.read_parquet(out / "scores.parquet")
    assert set(scores["labels"]) == {"25", "all"}
    verdict = json.loads((out / "verdict.json").read_text())
    assert (verdict["label_counts"], verdict["label_counts_dropped"]) == ([25], [60])
    assert all(e["labels"] == "25" for e in verdict["efficiency"])
    html = unescape((out / "report.html").read_text())
    assert (f"The configured label count 60 was dropped: not fewer than the smallest fold's "
            f"training part ({n_train[k]} windows, fold {k})") in html


def test_points_sit_at_the_cells_mean_training_windows(run):
    out, _ = run
    scores = pl.read_parquet(out / "scores.parquet")
    per_fold = pl.read_parquet(out / "fold_scores.parquet")
    want = scores.group_by("arm", "labels").agg(pl.col("n_train").mean().alias("want"))
    points = efficiency_points(per_fold)
    j = points.join(want, on=["arm", "labels"])
    assert j.height == points.height == 3 * 2
    np.testing.assert_allclose(j["train_windows"], j["want"])
    layout = _layout(out)
    # baselines train on the whole training part ("all" is the folds' mean, not the 122 labeled);
    # the model arm holds back its early-stopping block, so it trains on fewer than the labels drawn
    tw = {(a, lab): w for a, lab, w in points.select("arm", "labels", "train_windows").iter_rows()}
    assert tw[("logistic", "all")] == pytest.approx(np.mean([lay["n_train"] for lay in layout]))
    assert tw[("scratch", "all")] == pytest.approx(np.mean([lay["inner_train"] for lay in layout]))
    assert tw[("scratch", "25")] < tw[("logistic", "25")] <= 26
    fig = plot_label_efficiency(points)
    try:
        ax = fig.axes[0]
        plotted = {c.get_label(): np.asarray(c.lines[0].get_xdata(), dtype=float) for c in _bars(ax)}
        assert set(plotted) == {"scratch", *BASELINES}
        for arm, xs in plotted.items():
            np.testing.assert_allclose(xs, sorted(tw[(arm, lab)] for lab in ("25", "all")))
        labels = [t.get_text() for t in ax.get_xticklabels()]
        lo, hi = round(min(tw[(a, "all")] for a in plotted)), round(max(tw[(a, "all")] for a in plotted))
        assert labels[-1] == f"all (≈{lo}-{hi})" and labels[0].startswith("25")
    finally:
        plt.close(fig)
    html = unescape((out / "report.html").read_text())
    assert "train_windows" in html and re.search(r"all labels: scratch \d+\.\d, majority", html)


def test_a_report_whose_every_count_was_dropped_says_why(tmp_path: Path, run):
    out, _ = run
    per_fold = pl.read_parquet(out / "fold_scores.parquet").filter(pl.col("labels") == "all")
    layout = pl.DataFrame(_layout(out))
    cfg = OOFConfig.from_yaml(out / "config.yaml")
    write_oof_report(tmp_path, cfg=cfg, data_counts={"a": 61, "b": 61}, n_params=1,
                     summary=pl.DataFrame({"arm": ["scratch"]}), per_fold=per_fold, layout=layout,
                     diffs=[], efficiency=[], best_baseline=None, verdict="NO: test", collapse=pl.DataFrame(),
                     transfer_notes=[], seconds=1.0, dropped_counts=[60, 90])
    html = unescape((tmp_path / "report.html").read_text())
    sizes = layout["n_train"].to_numpy()
    k, n = int(sizes.argmin()), int(sizes.min())
    assert (f"No curve: every configured label count (60, 90) is not fewer than the smallest fold's "
            f"training part ({n} windows, fold {k})") in html


def test_efficiency_counts_keep_only_counts_below_the_smallest_fold():
    layout = pl.DataFrame({"fold": [0, 1, 2], "n_train": [86, 45, 120]})
    assert efficiency_counts([25, 45, 50, 100], layout) == ([25, None], [45, 50, 100])
    assert efficiency_counts([], layout) == ([None], [])


def test_equal_arms_are_both_visible_and_the_legend_says_so():
    rows = []
    for arm, m in (("scratch", (0.50, 0.55)), ("pretrained_frozen", (0.60, 0.62)),
                   ("pretrained_finetuned", (0.60, 0.62))):
        for lab, w, v in (("25", 20.0, m[0]), ("all", 57.5, m[1])):
            rows.append({"arm": arm, "labels": lab, "train_windows": w, "folds": 3, "seeds": 1,
                         "mean": v, "ci_low": v - 0.05, "ci_high": v + 0.05, "ci_method": "BCa"})
    fig = plot_label_efficiency(pl.DataFrame(rows))
    try:
        by_label = {c.get_label(): c.lines[0] for c in _bars(fig.axes[0])}
        assert set(by_label) == {"scratch", "pretrained_frozen",
                                 "pretrained_finetuned (same values as pretrained_frozen)"}
        under = by_label["pretrained_frozen"]
        over = by_label["pretrained_finetuned (same values as pretrained_frozen)"]
        # the repeat is hollow and larger, so the marker under it shows through
        assert over.get_markerfacecolor() == "none" and over.get_markersize() > under.get_markersize()
        assert over.get_linestyle() == "--" and under.get_linestyle() == "-"
        assert [t.get_text() for t in fig.axes[0].get_xticklabels()] == ["25 (≈20)", "all (≈58)"]
    finally:
        plt.close(fig)
