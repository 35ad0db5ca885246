"""The OOF comparison report: verdict first, folds, per-arm scores, paired differences over
folds, label efficiency with CIs."""

from __future__ import annotations

import html
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import polars as pl

from moola.evaluation.comparison import VERDICT_METRIC, PairedDifference, arm_cis
from moola.evaluation.data_report import DataReport
from moola.pipelines._oof_config import OOFConfig

ARM_COLORS = {
    "scratch": "#4c72b0", "pretrained_frozen": "#dd8452", "pretrained_finetuned": "#55a868",
    "majority": "#999999", "logistic": "#8172b3", "minirocket": "#937860",
}
ARM_MARKERS = {"scratch": "o", "pretrained_frozen": "s", "pretrained_finetuned": "^", "majority": "v",
               "logistic": "D", "minirocket": "P"}


def plot_arm_scores(per_fold: pl.DataFrame, metric: str = "balanced_accuracy") -> plt.Figure:
    """One dot per fold (its seed-averaged score), per arm, with the mean over folds as a bar."""
    arms = per_fold["arm"].unique(maintain_order=True).to_list()
    fig, ax = plt.subplots(figsize=(1.4 * len(arms) + 2, 4))
    for i, arm in enumerate(arms):
        g = per_fold.filter(pl.col("arm") == arm).sort("fold")
        v = g[metric].to_numpy()
        ax.bar(i, v.mean(), color=ARM_COLORS.get(arm, "#cccccc"), alpha=0.35, width=0.7)
        x = i + np.linspace(-0.25, 0.25, v.size) if v.size > 1 else np.array([i])
        ax.scatter(x, v, s=16, color=ARM_COLORS.get(arm, "#555"))
        for xi, f, vi in zip(x, g["fold"].to_list(), v, strict=True):
            ax.annotate(str(f), (xi, vi), fontsize=6, xytext=(2, 2), textcoords="offset points")
    ax.axhline(0.5, ls="--", lw=0.8, color="grey")
    ax.set_xticks(range(len(arms)))
    ax.set_xticklabels([a.replace("_", "\n") for a in arms], fontsize=8)
    ax.set_ylabel(metric)
    ax.set_title(f"{metric} per fold (seeds averaged; dots labelled by fold), bar = mean")
    ax.grid(axis="y", alpha=0.3)
    return fig


def plot_differences(diffs: list[PairedDifference], metric: str = "balanced_accuracy") -> plt.Figure:
    """Forest plot of paired fold differences with bootstrap 95% CIs and Holm-adjusted p."""
    rows = [d for d in diffs if d.metric == metric and d.folds > 0]
    fig, ax = plt.subplots(figsize=(8, 0.45 * len(rows) + 1.5))
    for i, d in enumerate(rows):
        color = "#2a9d8f" if d.significant and d.mean > 0 else (
            "#e76f51" if d.significant else "#555555")
        ax.errorbar(d.mean, i, xerr=[[d.mean - d.ci_low], [d.ci_high - d.mean]], fmt="o",
                    color=color, capsize=3)
        p = "n/a" if d.p_holm is None else f"{d.p_holm:.2g}"
        ax.text(max(d.ci_high, d.mean) + 0.005, i, f"Holm p={p}", va="center", fontsize=7)
    ax.axvline(0, color="k", lw=0.8)
    ax.set_yticks(range(len(rows)))
    ax.set_yticklabels([f"{d.arm} - {d.reference} ({d.labels})" for d in rows], fontsize=8)
    ax.set_xlabel(f"paired difference in {metric} over folds (95% bootstrap CI)")
    ax.set_title("is the arm better than the reference? (green: yes, red: worse, grey: unclear)")
    ax.grid(axis="x", alpha=0.3)
    return fig


def efficiency_points(per_fold: pl.DataFrame, metric: str = VERDICT_METRIC) -> pl.DataFrame:
    """Per arm and label count: the CI over folds and ``train_windows``, the mean number of windows
    its cells trained on, so each point sits where its models really were (not at the label count)."""
    cis = arm_cis(per_fold, metric)
    trained = per_fold.group_by("arm", "labels").agg(pl.col("n_train").mean().alias("train_windows"))
    out = cis.join(trained, on=["arm", "labels"], how="left")
    return out.select("arm", "labels", "train_windows", *[c for c in cis.columns
                                                         if c not in ("arm", "labels")])


def _tick_label(labels: str, xs: np.ndarray) -> str:
    """"25", "25 (≈20-25)" or "all (≈71)": the label count and, where it is not exactly so, what the
    arms' cells trained on."""
    lo, hi = round(float(xs.min())), round(float(xs.max()))
    span = f"≈{lo}" if lo == hi else f"≈{lo}-{hi}"
    if labels == "all":
        return f"all ({span})"
    return labels if lo == hi == int(labels) else f"{labels} ({span})"


def plot_label_efficiency(points: pl.DataFrame, metric: str = "balanced_accuracy") -> plt.Figure:
    """Mean of the fold means per arm and label count with bootstrap 95% CIs over folds, each point
    at its cells' mean training windows (:func:`efficiency_points`); an arm whose values repeat an
    earlier arm's is drawn hollow, larger and dashed and says so in the legend, so none hides another."""
    fig, ax = plt.subplots(figsize=(8.5, 4.2))
    drawn: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    repeats = 0
    for i, arm in enumerate(points["arm"].unique(maintain_order=True).to_list()):
        g = points.filter(pl.col("arm") == arm).sort("train_windows")
        x, m = g["train_windows"].to_numpy(), g["mean"].to_numpy()
        err = np.vstack([m - g["ci_low"].to_numpy(), g["ci_high"].to_numpy() - m])
        same = next((a for a, (xa, ma) in drawn.items()
                     if xa.shape == x.shape and np.allclose(xa, x) and np.allclose(ma, m)), None)
        repeats += bool(same)  # each repeat a size larger, so stacked repeats all show
        style: dict[str, Any] = (
            dict(markersize=6 + 4 * repeats, markerfacecolor="none", ls="--", markeredgewidth=1.5)
            if same else dict(markersize=6))
        ax.errorbar(x, m, yerr=np.maximum(err, 0), capsize=3, color=ARM_COLORS.get(arm, f"C{i}"),
                    marker=ARM_MARKERS.get(arm, "o"),
                    label=f"{arm} (same values as {same})" if same else arm,
                    zorder=2 if same else 3, **style)
        drawn[arm] = (x, m)
    ax.axhline(0.5, ls="--", lw=0.8, color="grey")
    ax.set_xscale("log")
    groups = points.group_by("labels").agg(pl.col("train_windows")).sort(
        pl.col("train_windows").list.max())
    ticks, names = [], []
    for labels, xs in groups.iter_rows():
        v = np.asarray(xs, dtype=float)
        ticks.append(float(np.sqrt(v.min() * v.max())))
        names.append(_tick_label(str(labels), v))
    ax.set_xticks(ticks)
    ax.set_xticklabels(names, fontsize=8)
    ax.minorticks_off()
    ax.set_xlabel("windows each arm's cells trained on (mean over folds and seeds; model arms hold "
                  "back their early-stopping block)", fontsize=8)
    ax.set_ylabel(metric)
    ax.set_title("label efficiency (95% bootstrap CI over folds)")
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0)  # off the data
    ax.grid(alpha=0.3)
    return fig


def _diff_table(diffs: list[PairedDifference]) -> pl.DataFrame:
    return pl.DataFrame([{
        "arm": d.arm, "reference": d.reference, "metric": d.metric, "labels": d.labels,
        "folds": d.folds, "mean diff": d.mean, "ci low": d.ci_low, "ci high": d.ci_high,
        "ci": d.ci_method, "sign-flip p": d.p_value, "Holm p": d.p_holm, "wins": d.wins,
        "losses": d.losses, "significant": d.significant, "family": d.family} for d in diffs])


def smallest_fold(layout: pl.DataFrame) -> tuple[int, int]:
    """(fold, training windows) of the fold with the fewest: the cap on a real label subset."""
    n = layout["n_train"].to_numpy()
    k = int(np.argmin(n)) if n.size else 0
    return k, int(n[k]) if n.size else 0


def _efficiency_text(points: pl.DataFrame, layout: pl.DataFrame, dropped: Sequence[int]) -> str:
    """What each point of the curve trained on, and which configured label counts were dropped."""
    parts = []
    for labels in points.sort("train_windows")["labels"].unique(maintain_order=True).to_list():
        g = points.filter(pl.col("labels") == labels)
        per_arm = ", ".join(f"{a} {w:.1f}" for a, w in g.select("arm", "train_windows").iter_rows())
        parts.append(f"{'all labels' if labels == 'all' else labels + ' labels'}: {per_arm}")
    text = ("Mean training windows per point (over folds and seeds): " + "; ".join(parts) + ". "
            "Model arms train on fewer than the labels drawn: the last time block of each subset "
            "(purged and embargoed) is held back for early stopping.")
    if dropped:
        k, smallest = smallest_fold(layout)
        many = len(dropped) > 1
        text += (f" The configured label count{'s' if many else ''} {', '.join(map(str, dropped))} "
                 f"{'were' if many else 'was'} dropped: not fewer than the smallest fold's training "
                 f"part ({smallest} windows, fold {k}).")
    return text


def write_oof_report(out: Path, *, cfg: OOFConfig, data_counts: dict[str, int], n_params: int,
                     summary: pl.DataFrame, per_fold: pl.DataFrame, layout: pl.DataFrame,
                     diffs: list[PairedDifference], efficiency: list[PairedDifference],
                     best_baseline: str | None, verdict: str, collapse: pl.DataFrame,
                     transfer_notes: list[str], seconds: float,
                     transductive: str | None = None, dropped_counts: Sequence[int] = ()) -> Path:
    """The page's first line is the verdict's first line (after a transductive warning, if any)."""
    n = sum(data_counts.values())
    title = verdict.splitlines()[0]
    rep = DataReport(out, title=f"{transductive.splitlines()[0]} | {title}" if transductive else title)
    # the encoder saw the labeled periods (transductive): the verdict is not out-of-sample
    rep.verdict_box(([transductive] if transductive else []) + verdict.splitlines(),
                    loud=bool(transductive) or "WORSE" in verdict)
    rep.heading(f"Verdict: does pretraining help? ({cfg.name})")
    scheme = ("walk-forward (each fold trains only on earlier time blocks; the first "
              f"{cfg.min_train or 'N/(folds+1)'} windows only train)" if cfg.fold_scheme == "walk_forward"
              else "blocked (each fold trains on the time blocks on both sides of its test block)")
    rep.paragraph(
        f"{n} labeled windows (" + ", ".join(f"{k}: {v}" for k, v in data_counts.items())
        + f"), {cfg.folds} {scheme} folds, purged per symbol and embargoed by {cfg.embargo_bars} "
        f"bars; {cfg.seeds} seeds per fold with all labels, {cfg.efficiency_seeds} label subsets "
        f"(and seeds) per fold on the label-efficiency curve. Model "
        f"{cfg.model.name if cfg.model else cfg.preset} with {n_params:,} parameters. Early "
        f"stopping used the last time block of each fold's training windows (purged and "
        f"embargoed too); test folds were never used for choices. Wall time {seconds:.0f} s."
    )
    rep.paragraph(
        "Statistics: the unit is the fold. Seeds are averaged within each fold first; baselines "
        "are deterministic given their training set and run once per fold (once per label "
        "subset on the curve). Each comparison has one paired difference per fold: mean with a "
        "bootstrap 95% CI (scipy.stats.bootstrap, BCa; percentile where BCa is undefined), "
        "p from the exact two-sided sign-flip permutation test, Holm-adjusted within its family "
        "(per metric: every pretrained arm vs scratch and every model arm vs the best baseline"
        + (f", here {best_baseline}" if best_baseline else "") + "; on the curve: the same "
        "comparisons vs scratch at every reduced label count). The best baseline is picked by "
        "its mean test score, which favours the baseline."
    )
    rep.heading("Folds")
    rep.table(layout, caption="per fold: test period, training windows kept / purged / embargoed, "
                              "inner train / validation split, class counts")
    if transfer_notes:
        rep.heading("Encoder transfer")
        for t in transfer_notes:
            rep.sections.append(f"<pre>{html.escape(t)}</pre>")
    rep.heading("Per arm (all labels)")
    rep.table(summary, caption="mean and std over folds of the seed-averaged fold scores")
    full = per_fold.filter(pl.col("labels") == "all")
    rep.figure(plot_arm_scores(full), "arm_scores", "balanced accuracy per fold and arm")
    rep.heading("Paired differences (all labels)")
    rep.table(_diff_table(diffs), caption="arm minus reference, paired by fold")
    rep.figure(plot_differences(diffs), "differences", "paired differences with 95% CIs")
    if per_fold["labels"].n_unique() > 1:
        rep.heading("Label efficiency")
        points = efficiency_points(per_fold, VERDICT_METRIC)
        rep.paragraph(_efficiency_text(points, layout, dropped_counts))
        rep.table(points.sort("arm", "train_windows"),
                  caption="balanced accuracy: mean of fold means, bootstrap 95% CI over folds; "
                          "train_windows: mean windows the arm's cells trained on (model arms: "
                          "after holding back their early-stopping block)")
        if efficiency:
            rep.table(_diff_table(efficiency), caption="arm minus reference at each label count, "
                                                       "one Holm family")
        rep.figure(plot_label_efficiency(points), "label_efficiency",
                   "the same comparison with fewer labels per fold, each point at its mean "
                   "training windows")
    elif dropped_counts:
        k, smallest = smallest_fold(layout)
        rep.heading("Label efficiency")
        rep.paragraph(f"No curve: every configured label count ({', '.join(map(str, dropped_counts))}) "
                      f"is not fewer than the smallest fold's training part ({smallest} windows, "
                      f"fold {k}).")
    rep.heading("Class-collapse alarms")
    if collapse.height:
        rep.table(collapse, caption="cells where a class had recall < 0.3")
    else:
        rep.paragraph("none: every class kept recall >= 0.3 in every cell")
    if "pointer_mae" in full.columns:
        rep.heading("Pointer error")
        pt = full.filter(pl.col("pointer_mae").is_not_null()).group_by("arm", maintain_order=True).agg(
            pl.col("pointer_mae").mean(), pl.col("pointer_hit3").mean())
        rep.table(pt, caption="mean over folds of the absolute error of start/end bar and of the "
                              "share of windows with both within 3 bars")
    return rep.write("report.html")
