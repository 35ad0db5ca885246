"""The OOF comparison report: per-arm scores, paired differences, label efficiency, verdict."""

from __future__ import annotations

import html
from pathlib import Path
from typing import TYPE_CHECKING

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import polars as pl

from moola.evaluation.comparison import PairedDifference
from moola.evaluation.data_report import DataReport

if TYPE_CHECKING:
    from moola.pipelines.oof import OOFConfig

ARM_COLORS = {
    "scratch": "#4c72b0", "pretrained_frozen": "#dd8452", "pretrained_finetuned": "#55a868",
    "majority": "#999999", "logistic": "#8172b3", "minirocket": "#937860",
}


def plot_arm_scores(scores: pl.DataFrame, metric: str = "balanced_accuracy") -> plt.Figure:
    """One dot per fold x seed cell, per arm, with the mean as a bar."""
    arms = scores["arm"].unique(maintain_order=True).to_list()
    fig, ax = plt.subplots(figsize=(1.4 * len(arms) + 2, 4))
    rng = np.random.default_rng(0)
    for i, arm in enumerate(arms):
        v = scores.filter(pl.col("arm") == arm)[metric].to_numpy()
        ax.bar(i, v.mean(), color=ARM_COLORS.get(arm, "#cccccc"), alpha=0.35, width=0.7)
        ax.scatter(i + rng.uniform(-0.2, 0.2, v.size), v, s=14, color=ARM_COLORS.get(arm, "#555"))
        ax.errorbar(i, v.mean(), yerr=v.std(ddof=1) if v.size > 1 else 0, color="k", capsize=4)
    ax.axhline(0.5, ls="--", lw=0.8, color="grey")
    ax.set_xticks(range(len(arms)))
    ax.set_xticklabels([a.replace("_", "\n") for a in arms], fontsize=8)
    ax.set_ylabel(metric)
    ax.set_title(f"{metric} per fold x seed (all labels); bar = mean, whisker = std")
    ax.grid(axis="y", alpha=0.3)
    return fig


def plot_differences(diffs: list[PairedDifference], metric: str = "balanced_accuracy") -> plt.Figure:
    """Forest plot of paired differences with bootstrap 95% CIs."""
    rows = [d for d in diffs if d.metric == metric and d.n > 0]
    fig, ax = plt.subplots(figsize=(8, 0.45 * len(rows) + 1.5))
    for i, d in enumerate(rows):
        color = "#2a9d8f" if d.significant and d.mean > 0 else (
            "#e76f51" if d.significant else "#555555")
        ax.errorbar(d.mean, i, xerr=[[d.mean - d.ci_low], [d.ci_high - d.mean]], fmt="o",
                    color=color, capsize=3)
        p = "n/a" if d.p_value is None else f"{d.p_value:.2g}"
        ax.text(max(d.ci_high, d.mean) + 0.005, i, f"p={p}", va="center", fontsize=7)
    ax.axvline(0, color="k", lw=0.8)
    ax.set_yticks(range(len(rows)))
    ax.set_yticklabels([f"{d.arm} - {d.reference}" for d in rows], fontsize=8)
    ax.set_xlabel(f"paired difference in {metric} (95% bootstrap CI)")
    ax.set_title("is the arm better than the reference? (green: yes, red: worse, grey: unclear)")
    ax.grid(axis="x", alpha=0.3)
    return fig


def plot_label_efficiency(scores: pl.DataFrame, n_total: int,
                          metric: str = "balanced_accuracy") -> plt.Figure:
    fig, ax = plt.subplots(figsize=(7, 4))
    s = scores.with_columns(
        n_labels=pl.when(pl.col("labels") == "all").then(pl.lit(str(n_total)))
        .otherwise(pl.col("labels")).cast(pl.Int64))
    for arm in s["arm"].unique(maintain_order=True).to_list():
        g = (s.filter(pl.col("arm") == arm).group_by("n_labels")
             .agg(pl.col(metric).mean().alias("m"), pl.col(metric).std().alias("sd"))
             .sort("n_labels"))
        ax.errorbar(g["n_labels"].to_numpy(), g["m"].to_numpy(), yerr=g["sd"].fill_null(0).to_numpy(),
                    marker="o", capsize=3, label=arm, color=ARM_COLORS.get(arm))
    ax.axhline(0.5, ls="--", lw=0.8, color="grey")
    ax.set_xscale("log")
    ticks = sorted(set(s["n_labels"].to_list()))
    ax.set_xticks(ticks)
    ax.set_xticklabels([str(t) for t in ticks])
    ax.minorticks_off()
    ax.set_xlabel("labeled training windows available (before the fold split)")
    ax.set_ylabel(metric)
    ax.set_title("label efficiency")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    return fig


def write_oof_report(out: Path, *, cfg: OOFConfig, data_counts: dict[str, int], n_params: int,
                     summary: pl.DataFrame, scores: pl.DataFrame, diffs: list[PairedDifference],
                     verdict: str, collapse: pl.DataFrame, transfer_notes: list[str],
                     seconds: float) -> Path:
    n = sum(data_counts.values())
    rep = DataReport(out, title=f"Does pretraining help? {cfg.name}")
    rep.heading("Verdict")
    rep.sections.append(f"<p><b>{html.escape(verdict)}</b></p>")
    rep.paragraph(
        f"{n} labeled windows (" + ", ".join(f"{k}: {v}" for k, v in data_counts.items())
        + f"), {cfg.folds} time-grouped stratified folds x {cfg.seeds} seeds; model "
        f"{cfg.model.name if cfg.model else cfg.preset} with {n_params:,} parameters "
        f"({n_params / max(n, 1):,.0f} per labeled window). Early stopping used an inner "
        f"validation split of each fold's training windows; test folds were never used for "
        f"choices. Wall time {seconds:.0f} s."
    )
    if transfer_notes:
        rep.heading("Encoder transfer")
        for t in transfer_notes:
            rep.sections.append(f"<pre>{html.escape(t)}</pre>")
    rep.heading("Per arm (all labels)")
    rep.table(summary, caption="mean and std over fold x seed cells")
    full = scores.filter(pl.col("labels") == "all")
    rep.figure(plot_arm_scores(full), "arm_scores", "balanced accuracy per cell and arm")
    rep.heading("Paired differences")
    rep.table(pl.DataFrame([{
        "arm": d.arm, "reference": d.reference, "metric": d.metric, "cells": d.n,
        "mean diff": d.mean, "ci low": d.ci_low, "ci high": d.ci_high,
        "wilcoxon p": d.p_value, "wins": d.wins, "losses": d.losses,
        "significant": d.significant} for d in diffs]),
        caption="arm minus reference, paired by fold and seed")
    rep.figure(plot_differences(diffs), "differences", "paired differences with 95% CIs")
    if scores["labels"].n_unique() > 1:
        rep.heading("Label efficiency")
        rep.figure(plot_label_efficiency(scores, n), "label_efficiency",
                   "the same comparison with 25, 50, 100 and all labels")
    rep.heading("Class-collapse alarms")
    if collapse.height:
        rep.table(collapse, caption="cells where a class had recall < 0.3")
    else:
        rep.paragraph("none: every class kept recall >= 0.3 in every cell")
    if "pointer_mae" in full.columns:
        rep.heading("Pointer error")
        pt = full.filter(pl.col("pointer_mae").is_not_null()).group_by("arm", maintain_order=True).agg(
            pl.col("pointer_mae").mean(), pl.col("pointer_hit3").mean())
        rep.table(pt, caption="mean absolute error of start/end bar and share of windows with "
                              "both within 3 bars")
    return rep.write("report.html")
