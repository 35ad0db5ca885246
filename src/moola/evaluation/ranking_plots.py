"""Plots of a ranking evaluation (matplotlib, Agg backend). Every function returns a ``Figure``."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import polars as pl

from moola.evaluation.ranking import LongShortResult

__all__ = [
    "plot_cumulative_ic",
    "plot_ic_histogram",
    "plot_long_short_equity",
    "plot_quantile_returns",
    "plot_sector_attention",
    "sector_attention_matrix",
]


def _need(frame: pl.DataFrame, cols: Sequence[str], what: str) -> None:
    missing = [c for c in cols if c not in frame.columns]
    if missing:
        raise ValueError(f"{what} lacks column(s) {missing}; expected {list(cols)}, got {frame.columns}")


def _empty(fig: plt.Figure, ax: plt.Axes, text: str) -> plt.Figure:
    ax.text(0.5, 0.5, text, ha="center", va="center", fontsize=11)
    ax.set_axis_off()
    return fig


def _finite(frame: pl.DataFrame, col: str) -> np.ndarray:
    return frame[col].cast(pl.Float64).fill_null(float("nan")).to_numpy()


def plot_cumulative_ic(daily_by_name: Mapping[str, pl.DataFrame],
                       title: str = "cumulative daily IC") -> plt.Figure:
    """Two panels (IC, RankIC): the running sum of each model's daily values over time (NaN days
    add 0); a steady upward slope is a persistent signal, a flat stretch a dead period."""
    fig, axes = plt.subplots(2, 1, figsize=(8, 5.6), sharex=True)
    for name, daily in daily_by_name.items():
        _need(daily, ("date", "ic", "rank_ic"), f"daily IC frame of {name!r}")
        d = daily.sort("date")
        dates = d["date"].to_list()
        for ax, col in zip(axes, ("ic", "rank_ic"), strict=True):
            x = _finite(d, col)
            ax.plot(dates, np.cumsum(np.nan_to_num(x, nan=0.0)),
                    label=f"{name} (mean {np.nanmean(x) if np.isfinite(x).any() else np.nan:.4f})")
    for ax, col in zip(axes, ("IC", "RankIC"), strict=True):
        ax.axhline(0.0, color="grey", lw=0.8, ls=":")
        ax.set_ylabel(f"cumulative {col}")
        ax.grid(alpha=0.3)
        if daily_by_name:
            ax.legend(fontsize=8, loc="upper left")
    axes[-1].set_xlabel("date")
    fig.suptitle(title)
    fig.autofmt_xdate()
    fig.tight_layout()
    return fig


def plot_ic_histogram(daily_by_name: Mapping[str, pl.DataFrame], column: str = "rank_ic",
                      title: str = "daily RankIC") -> plt.Figure:
    """Overlaid histograms of each model's daily ``column`` (shared bins) with its mean as a
    vertical line: the spread shows how noisy a single day's ranking is."""
    fig, ax = plt.subplots(figsize=(6.5, 3.8))
    vals: dict[str, np.ndarray] = {}
    for name, daily in daily_by_name.items():
        _need(daily, ("date", column), f"daily IC frame of {name!r}")
        x = _finite(daily, column)
        vals[name] = x[np.isfinite(x)]
    pooled = np.concatenate(list(vals.values())) if vals else np.array([])
    if pooled.size == 0:
        return _empty(fig, ax, f"no finite daily {column}")
    bins = np.linspace(float(pooled.min()) - 1e-9, float(pooled.max()) + 1e-9, 41).tolist()
    for i, (name, x) in enumerate(vals.items()):
        if x.size:
            ax.hist(x, bins=bins, alpha=0.45, color=f"C{i}", label=f"{name} (n={x.size})")
            ax.axvline(float(x.mean()), color=f"C{i}", lw=1.5)
    ax.axvline(0.0, color="black", lw=0.8, ls=":")
    ax.set_xlabel(f"daily {column}")
    ax.set_ylabel("days")
    ax.set_title(title)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig


def plot_quantile_returns(quantile_frame: pl.DataFrame, title: str = "cumulative return by score quantile"
                          ) -> plt.Figure:
    """One line per quantile (``quantile_returns``' q1..qN) of the compounded mean forward return,
    and the top-minus-bottom spread dashed: fanned-out, ordered lines mean a monotone signal."""
    _need(quantile_frame, ("date", "q1", "long_short"), "quantile frame")
    qs = sorted((c for c in quantile_frame.columns if c[:1] == "q" and c[1:].isdigit()),
                key=lambda c: int(c[1:]))
    q = quantile_frame.sort("date")
    dates = q["date"].to_list()
    fig, ax = plt.subplots(figsize=(8, 4.2))
    cmap = plt.get_cmap("coolwarm")
    for i, col in enumerate(qs):
        r = np.nan_to_num(_finite(q, col), nan=0.0)
        ax.plot(dates, np.cumprod(1.0 + r) - 1.0, color=cmap(i / max(len(qs) - 1, 1)), label=col)
    ls = np.nan_to_num(_finite(q, "long_short"), nan=0.0)
    ax.plot(dates, np.cumprod(1.0 + ls) - 1.0, "k--", lw=1.2, label=f"{qs[-1]} - q1")
    ax.axhline(0.0, color="grey", lw=0.8, ls=":")
    ax.set_xlabel("rebalance date")
    ax.set_ylabel("cumulative return")
    ax.set_title(f"{title} (q1 = lowest scores)")
    ax.legend(fontsize=8, loc="upper left", ncol=2)
    ax.grid(alpha=0.3)
    fig.autofmt_xdate()
    fig.tight_layout()
    return fig


def plot_long_short_equity(results_by_name: Mapping[str, LongShortResult],
                           title: str = "long-short equity") -> plt.Figure:
    """Compounded equity of each model's long-short book after costs (solid) and before (dashed,
    same colour), on the rebalance dates; the gap between the two is what trading costs took."""
    fig, ax = plt.subplots(figsize=(8, 4.2))
    drawn = False
    for name, res in results_by_name.items():
        p = res.periods
        if p.height == 0:
            continue
        drawn = True
        dates = p["date"].to_list()
        s = res.summary()
        (line,) = ax.plot(dates, p["equity"].to_numpy(),
                          label=f"{name} net (Sharpe {s['sharpe']:.2f}, MDD {s['mdd']:.1%})")
        ax.plot(dates, p["gross_equity"].to_numpy(), ls="--", color=line.get_color(), alpha=0.7,
                label=f"{name} gross (Sharpe {s['gross_sharpe']:.2f})")
    ax.axhline(1.0, color="grey", lw=0.8, ls=":")
    ax.set_xlabel("rebalance date")
    ax.set_ylabel("equity (start = 1)")
    ax.set_title(title)
    if drawn:
        ax.legend(fontsize=8, loc="upper left")
    ax.grid(alpha=0.3)
    fig.autofmt_xdate()
    fig.tight_layout()
    return fig


def sector_attention_matrix(attn: np.ndarray, sectors: Sequence[str]) -> tuple[list[str], np.ndarray]:
    """(labels, (G, G) matrix): mean attention from stocks of sector a (rows) to stocks of sector
    b (columns) of a day-averaged stock attention ``attn`` (S, S), rows normalised to sum 1.

    Entry (a, b) = sum of attn[i, j] over i in a, j in b, divided by |a| (mean over the source
    stocks of a), then each row divided by its sum; labels are the sorted distinct sectors.
    A sector whose stocks attend nowhere (all-zero rows) keeps a zero row.
    """
    a = np.asarray(attn, dtype=np.float64)  # (S, S)
    names = [str(s) for s in sectors]
    if a.ndim != 2 or a.shape[0] != a.shape[1]:
        raise ValueError(f"attn must be a square (S, S) matrix, got shape {a.shape}")
    if a.shape[0] != len(names):
        raise ValueError(f"attn is ({a.shape[0]}, {a.shape[1]}) but {len(names)} sectors were given")
    if not np.all(np.isfinite(a)):
        raise ValueError("attn contains NaN or inf: replace absent stocks' rows by 0 before averaging")
    labels, code = np.unique(np.asarray(names, dtype=object).astype(str), return_inverse=True)
    onehot = np.eye(len(labels))[code]  # (S, G)
    block = onehot.T @ a @ onehot  # (G, G) summed attention sector -> sector
    block /= onehot.sum(axis=0)[:, None]  # mean over source stocks of each sector
    rows = block.sum(axis=1, keepdims=True)
    mat = np.divide(block, rows, out=np.zeros_like(block), where=rows > 0)
    return [str(x) for x in labels], mat


def plot_sector_attention(attn: np.ndarray, sectors: Sequence[str],
                          title: str = "attention between sectors") -> plt.Figure:
    """Heatmap of ``sector_attention_matrix``: where a strong diagonal means stocks attend
    mostly within their sector, off-diagonal mass is cross-sector information flow."""
    labels, mat = sector_attention_matrix(attn, sectors)
    g = len(labels)
    fig, ax = plt.subplots(figsize=(0.55 * g + 3.5, 0.5 * g + 2.5))
    im = ax.imshow(mat, cmap="viridis", vmin=0.0, vmax=max(float(mat.max()), 1e-12))
    if g <= 15:
        for i in range(g):
            for j in range(g):
                ax.text(j, i, f"{mat[i, j]:.2f}", ha="center", va="center", fontsize=7,
                        color="black" if mat[i, j] > 0.6 * mat.max() else "white")
    ax.set_xticks(range(g))
    ax.set_xticklabels(labels, rotation=60, ha="right", fontsize=8)
    ax.set_yticks(range(g))
    ax.set_yticklabels(labels, fontsize=8)
    ax.set_xlabel("attended sector (to)")
    ax.set_ylabel("attending sector (from)")
    ax.set_title(title)
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04, label="share of the row's attention")
    fig.tight_layout()
    return fig
