"""Plots of a training run (matplotlib, Agg backend). Every function returns a ``Figure``."""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import polars as pl
from matplotlib.ticker import MaxNLocator

from moola.evaluation.calibration import reliability_curve

__all__ = [
    "plot_accuracy_by_hour",
    "plot_baselines",
    "plot_confusion_matrix",
    "plot_learning_curves",
    "plot_probability_histogram",
    "plot_reliability",
]

_SPLIT_PREFIXES = ("train_", "val_", "valid_", "test_")
_SKIP_KEYS = {"epoch", "step"}
_LAST_PANELS = ("lr", "seconds", "epoch_seconds", "samples_per_s", "samples_per_second")


def _split_key(key: str) -> tuple[str, str]:
    """``"val_accuracy"`` -> ("val", "accuracy"); unprefixed keys are their own metric."""
    for pre in _SPLIT_PREFIXES:
        if key.startswith(pre):
            return pre[:-1], key[len(pre):]
    return "", key


def _is_number(v: Any) -> bool:
    return isinstance(v, int | float | np.integer | np.floating) and not isinstance(v, bool)


def _panel_title(panel: str, classes: Sequence[str]) -> str:
    """``recall_1`` -> ``recall of up (recall_1)`` when class 1 has a name; other panels as named."""
    m = re.fullmatch(r"(\w+?)_(\d+)", panel)
    if m is None or int(m.group(2)) >= len(classes):
        return panel
    return f"{m.group(1)} of {classes[int(m.group(2))]} ({panel})"


def plot_learning_curves(history: Sequence[Mapping[str, Any]], title: str = "learning curves",
                         classes: Sequence[str] = ()) -> plt.Figure:
    """One panel for the losses (``*loss``), one per other numeric metric in the records.

    ``history`` holds per-epoch records such as ``{"epoch": 1, "train_loss": .., "val_loss": ..,
    "train_accuracy": .., "val_accuracy": ..}``; keys prefixed ``train_`` / ``val_`` / ``test_``
    share the panel of their metric. Records may omit keys (e.g. validation every k epochs).
    With ``classes``, a per-class panel (``recall_1``) is titled by its class ("recall of up").
    """
    records = list(history)
    if not records:
        fig, ax = plt.subplots(figsize=(6, 2))
        ax.text(0.5, 0.5, "no training history", ha="center", va="center", fontsize=12)
        ax.set_axis_off()
        fig.suptitle(title)
        return fig
    xs = [r.get("epoch", i + 1) for i, r in enumerate(records)]
    keys: list[str] = []
    for r in records:
        for k, v in r.items():
            if k not in _SKIP_KEYS and k not in keys and _is_number(v):
                keys.append(k)
    panels: dict[str, list[str]] = {}
    for k in keys:
        _, metric = _split_key(k)
        panel = "loss" if metric.endswith("loss") else metric
        panels.setdefault(panel, []).append(k)
    # what a reader judges the run by first: losses, then the scores, then lr and timings
    tail = {k: panels.pop(k) for k in [p for p in panels if p in _LAST_PANELS]}
    if "loss" in panels:
        panels = {"loss": panels.pop("loss"), **panels}
    panels.update(sorted(tail.items(), key=lambda kv: _LAST_PANELS.index(kv[0])))
    n = max(1, len(panels))
    cols = min(n, 3)
    rows = int(np.ceil(n / cols))
    fig, axes = plt.subplots(rows, cols, figsize=(4.6 * cols, 3.4 * rows), squeeze=False)
    for i, (panel, members) in enumerate(panels.items()):
        ax = axes[i // cols][i % cols]
        for k in members:
            pts = [(x, float(r[k])) for x, r in zip(xs, records, strict=True) if _is_number(r.get(k))]
            if not pts:
                continue
            px, py = zip(*pts, strict=True)
            split, _ = _split_key(k)
            style = "--" if split in ("val", "valid", "test") else "-"
            ax.plot(px, py, style, marker="o" if len(px) < 30 else None, ms=3, label=k)
        ax.set_title(_panel_title(panel, classes))
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # epochs are whole numbers
        ax.set_xlabel("epoch")
        ax.set_ylabel(panel)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    for j in range(len(panels), rows * cols):
        axes[j // cols][j % cols].set_axis_off()
    fig.suptitle(title)
    fig.tight_layout()
    return fig


def plot_confusion_matrix(
    cm: Sequence[Sequence[int]] | np.ndarray, classes: Sequence[object], title: str = "confusion matrix"
) -> plt.Figure:
    """Counts annotated in each cell; colour = row-normalised share (recall per true class)."""
    mat = np.asarray(cm, dtype=float)
    names = [str(c) for c in classes]
    if mat.ndim != 2 or mat.shape[0] != mat.shape[1] or mat.shape[0] != len(names):
        raise ValueError(f"cm must be ({len(names)}, {len(names)}) for classes {names}, got {mat.shape}")
    row_sum = mat.sum(axis=1, keepdims=True)
    share = np.divide(mat, row_sum, out=np.zeros_like(mat), where=row_sum > 0)
    k = len(names)
    fig, ax = plt.subplots(figsize=(1.2 * k + 3, 1.0 * k + 2.2))
    im = ax.imshow(share, cmap="Blues", vmin=0, vmax=1)
    for i in range(k):
        for j in range(k):
            ax.text(j, i, f"{int(mat[i, j])}\n({share[i, j]:.0%})", ha="center", va="center",
                    fontsize=9, color="white" if share[i, j] > 0.55 else "black")
    ax.set_xticks(range(k))
    ax.set_xticklabels(names)
    ax.set_yticks(range(k))
    ax.set_yticklabels(names)
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class")
    ax.set_title(f"{title} (n={int(mat.sum())})")
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04, label="share of true class (row)")
    fig.tight_layout()
    return fig


def plot_reliability(
    y_true: object, proba: object, n_bins: int = 15, title: str = "reliability diagram"
) -> plt.Figure:
    """Accuracy vs. mean confidence per bin (with the diagonal) above a histogram of bin counts."""
    curve = reliability_curve(y_true, proba, n_bins=n_bins)
    fig, (ax, axh) = plt.subplots(
        2, 1, figsize=(5.5, 6.2), sharex=True, gridspec_kw={"height_ratios": [3, 1]}
    )
    width = curve.bin_upper - curve.bin_lower
    centers = (curve.bin_lower + curve.bin_upper) / 2
    filled = curve.count > 0
    ax.plot([0, 1], [0, 1], ls=":", color="grey", label="perfect calibration")
    ax.bar(curve.bin_lower[filled], curve.accuracy[filled], width=width[filled], align="edge",
           color="#4c72b0", alpha=0.55, edgecolor="#2b4a7a", label="accuracy per bin")
    ax.plot(curve.confidence[filled], curve.accuracy[filled], "o-", color="#c44e52", ms=4,
            label="(mean confidence, accuracy)")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_ylabel("accuracy")
    ax.set_title(f"{title}: ECE = {curve.ece:.4f} ({n_bins} bins, n={curve.n_samples})")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="upper left")
    axh.bar(centers, curve.count, width=width, color="#55a868", edgecolor="#2d6b3c")
    axh.set_xlabel("confidence (max class probability)")
    axh.set_ylabel("count")
    axh.grid(alpha=0.3)
    fig.tight_layout()
    return fig


def plot_baselines(table: pl.DataFrame, title: str = "model vs. baselines") -> plt.Figure:
    """Accuracy and balanced accuracy per row of :func:`baseline_table`; the majority baseline's
    accuracy is drawn as a dashed line."""
    for col in ("model", "accuracy", "balanced_accuracy"):
        if col not in table.columns:
            raise ValueError(f"table lacks column {col!r}; got {table.columns}")
    names = table["model"].to_list()
    acc = np.array([np.nan if v is None else v for v in table["accuracy"].to_list()], dtype=float)
    bal = np.array([np.nan if v is None else v for v in table["balanced_accuracy"].to_list()],
                   dtype=float)
    x = np.arange(len(names))
    fig, ax = plt.subplots(figsize=(max(5.0, 1.3 * len(names) + 2.5), 3.8))
    b1 = ax.bar(x - 0.2, acc, width=0.4, label="accuracy", color="#4c72b0")
    b2 = ax.bar(x + 0.2, bal, width=0.4, label="balanced accuracy", color="#dd8452")
    for bars in (b1, b2):
        for rect in bars:
            h = rect.get_height()
            if np.isfinite(h):  # inside the bar's top, clear of the majority line above it
                inside = h > 0.1
                ax.text(rect.get_x() + rect.get_width() / 2, h - 0.015 if inside else h + 0.01, f"{h:.3f}",
                        ha="center", va="top" if inside else "bottom", fontsize=8,
                        color="white" if inside else "black")
    if "majority" in names:
        maj = acc[names.index("majority")]
        if np.isfinite(maj):
            ax.axhline(maj, ls="--", color="black", lw=1, label=f"majority accuracy ({maj:.3f})")
    ax.set_xticks(x)
    ax.set_xticklabels(names)
    top = np.nanmax(np.concatenate([acc, bal])) if len(names) and np.isfinite(acc).any() else 1.0
    ax.set_ylim(0, min(1.05, top + 0.12))
    ax.set_ylabel("score on the test split")
    ax.set_xlabel("model")
    ax.set_title(title)
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    fig.tight_layout()
    return fig


def accuracy_by_hour(y_true: object, proba: object,
                     test_ts: Sequence[Any] | pl.Series) -> list[dict[str, float | int]]:
    """Test accuracy per UTC hour of day of each row's timestamp (the window's last bar):
    ``[{"hour", "n", "accuracy"}]`` for the hours that have rows. Intraday edges often live in
    a few hours (session opens, funding times); a flat profile says the model has none."""
    y = np.asarray(y_true).astype(np.int64)
    pred = np.asarray(proba).argmax(axis=1)
    ts = pl.Series("ts", test_ts)
    if ts.dtype == pl.String:
        ts = ts.str.to_datetime(time_zone="UTC")
    if not isinstance(ts.dtype, pl.Datetime):
        raise ValueError(f"test_ts: expected datetimes, got {ts.dtype}")
    if len(ts) != len(y):
        raise ValueError(f"test_ts has {len(ts)} timestamps for {len(y)} test rows")
    zone = ts.dtype.time_zone
    hours = (ts.dt.convert_time_zone("UTC") if zone else ts).dt.hour().to_numpy()
    out: list[dict[str, float | int]] = []
    for h in range(24):
        m = hours == h
        if m.any():
            out.append({"hour": h, "n": int(m.sum()), "accuracy": float((pred[m] == y[m]).mean())})
    return out


def plot_accuracy_by_hour(y_true: object, proba: object, test_ts: Sequence[Any] | pl.Series,
                          title: str = "test accuracy by hour of day (UTC)") -> plt.Figure:
    """Bars of accuracy per UTC hour with a +-2 standard-error whisker (binomial, at that hour's
    row count) and the overall accuracy as a dashed line; row counts underneath."""
    rows = accuracy_by_hour(y_true, proba, test_ts)
    hours = np.array([r["hour"] for r in rows])
    acc = np.array([r["accuracy"] for r in rows], dtype=float)
    n = np.array([r["n"] for r in rows], dtype=float)
    overall = float((acc * n).sum() / n.sum()) if n.size else float("nan")
    se = np.sqrt(np.clip(overall * (1 - overall), 0, None) / np.maximum(n, 1))
    fig, (ax, axn) = plt.subplots(2, 1, figsize=(8, 4.8), sharex=True,
                                  gridspec_kw={"height_ratios": [3, 1]})
    ax.bar(hours, acc, color="#4c72b0", alpha=0.75, yerr=2 * se, capsize=2, ecolor="#2b4a7a")
    ax.axhline(overall, ls="--", color="black", lw=1, label=f"all hours ({overall:.3f})")
    ax.axhline(0.5, ls=":", color="grey", lw=1)
    if acc.size:
        ax.set_ylim(max(0.0, min(acc.min(), overall) - 0.08), min(1.0, max(acc.max(), overall) + 0.08))
    ax.set_ylabel("accuracy")
    ax.set_title(title)
    ax.legend(fontsize=8, loc="upper right")
    ax.grid(axis="y", alpha=0.3)
    axn.bar(hours, n, color="#55a868")
    axn.set_ylabel("rows")
    axn.set_xlabel("hour of the window's last bar (UTC); whiskers: +-2 binomial SE at the overall accuracy")
    axn.set_xticks(range(0, 24, 2))
    fig.tight_layout()
    return fig


def plot_probability_histogram(y_true: object, proba: object, classes: Sequence[object],
                               title: str = "predicted probability by true class") -> plt.Figure:
    """Histogram of the predicted probability of the last class (``up`` for direction), split by
    the true class: two humps apart mean the model separates the classes, one hump at 0.5
    means it barely commits."""
    y = np.asarray(y_true).astype(np.int64)
    p = np.asarray(proba, dtype=float)[:, -1]
    last = str(classes[-1]) if classes else "class 1"
    fig, ax = plt.subplots(figsize=(6.5, 3.6))
    lo, hi = (float(np.quantile(p, 0.005)), float(np.quantile(p, 0.995))) if p.size else (0.0, 1.0)
    bins = np.linspace(min(lo, 0.5) - 1e-6, max(hi, 0.5) + 1e-6, 41).tolist()
    for k, name in enumerate(classes):
        sel = p[y == k]
        if sel.size:
            ax.hist(sel, bins=bins, alpha=0.5, label=f"true {name} (n={sel.size})")
    ax.axvline(0.5, color="black", lw=0.8, ls=":")
    ax.set_xlabel(f"predicted P({last}) on the test split (raw)")
    ax.set_ylabel("rows")
    ax.set_title(title)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig
