"""A one-page HTML data report with PNG plots: what is in the store and what was wrong with it."""

from __future__ import annotations

import html
from dataclasses import dataclass, field
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import polars as pl

from moola.data import ValidationReport


@dataclass
class DataReport:
    """Collects sections (text, tables, plots) and renders them to ``report.html``."""

    out_dir: Path
    title: str = "moola data report"
    sections: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.out_dir.mkdir(parents=True, exist_ok=True)

    def heading(self, text: str) -> None:
        self.sections.append(f"<h2>{html.escape(text)}</h2>")

    def paragraph(self, text: str) -> None:
        self.sections.append(f"<p>{html.escape(text)}</p>")

    def verdict_box(self, lines: list[str], *, loud: bool = False) -> None:
        """The report's first words: a framed box of bold lines, red when something is wrong."""
        bg, edge = ("#fde2e2", "#c0392b") if loud else ("#eef5ff", "#4c72b0")
        body = "".join(f"<p style='margin:.3em 0'><b>{html.escape(t)}</b></p>" for t in lines)
        self.sections.append(f"<div class='verdict' style='border:2px solid {edge};background:{bg};"
                             f"padding:.4em 1em'>{body}</div>")

    def table(self, df: pl.DataFrame, caption: str | None = None, max_rows: int = 60) -> None:
        """A table in a box that scrolls sideways when wide; an empty one says "no findings"."""
        cap = f"<caption>{html.escape(caption)}</caption>" if caption else ""
        if df.height == 0:
            label = f"{html.escape(caption)}: " if caption else ""
            self.sections.append(f"<p class='empty'>{label}no findings</p>")
            return
        # a header may wrap after _ or . (a number or a word in a cell never does: the box scrolls)
        head = "".join(f"<th>{html.escape(c).replace('_', '_<wbr>').replace('.', '.<wbr>')}</th>"
                       for c in df.columns)
        shown = df.head(max_rows)
        formats = {c: _column_format(shown.get_column(c)) for c in shown.columns}
        body = []
        for row in shown.iter_rows(named=True):
            cells = "".join(f"<td>{html.escape(_fmt(v, formats[c]))}</td>" for c, v in row.items())
            body.append(f"<tr>{cells}</tr>")
        more = f"<p><i>{df.height - max_rows} more rows</i></p>" if df.height > max_rows else ""
        self.sections.append(
            f"<div class='tbl'><table>{cap}<thead><tr>{head}</tr></thead><tbody>{''.join(body)}"
            f"</tbody></table></div>{more}"
        )

    def figure(self, fig: plt.Figure, name: str, caption: str) -> Path:
        path = self.out_dir / f"{name}.png"
        fig.savefig(path, dpi=110, bbox_inches="tight")
        plt.close(fig)
        self.sections.append(
            f'<figure><img src="{path.name}" alt="{html.escape(caption)}">'
            f"<figcaption>{html.escape(caption)}</figcaption></figure>"
        )
        return path

    def write(self, name: str = "report.html") -> Path:
        css = (
            "body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;color:#222}"
            "table{border-collapse:collapse;margin:1em 0;font-size:13px}"
            "td,th{border:1px solid #ccc;padding:3px 8px;text-align:right}td{white-space:nowrap}"
            ".tbl{overflow-x:auto;max-width:100%}p.empty{color:#555;font-style:italic}"
            "th{background:#f3f3f3}caption{text-align:left;font-weight:bold;padding:4px 0}"
            "img{max-width:100%}figure{margin:1em 0}figcaption{color:#555;font-size:13px}"
        )
        doc = (
            f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(self.title)}"
            f"</title><style>{css}</style></head><body><h1>{html.escape(self.title)}</h1>"
            + "\n".join(self.sections)
            + "</body></html>"
        )
        path = self.out_dir / name
        path.write_text(doc)
        return path


def _column_format(col: pl.Series) -> str:
    """One number format per column, so digits line up: whole numbers with thousands separators,
    large values with one decimal, tiny ones in scientific notation, the rest with four decimals."""
    if not col.dtype.is_float():
        return "{:,}" if col.dtype.is_integer() else "{}"
    v = col.drop_nulls().to_numpy().astype(np.float64)
    v = np.abs(v[np.isfinite(v)])
    if v.size == 0:
        return "{:.4f}"
    big = float(v.max())
    tiny = float(v[v > 0].min()) if (v > 0).any() else 0.0
    if (v == np.round(v)).all() and big < 1e15:
        return "{:,.0f}"
    if big >= 1e4:
        return "{:,.1f}"
    if 0 < tiny < 1e-3 and big < 1e-2:
        return "{:.3e}"
    return "{:.4f}"


def _fmt(v: object, form: str = "{}") -> str:
    if v is None:
        return ""
    if isinstance(v, float) and not np.isfinite(v):
        return str(v)
    try:
        return form.format(v)
    except (ValueError, TypeError):
        return str(v)


def plot_bars_per_symbol(bars: pl.DataFrame, title: str) -> plt.Figure:
    counts = bars.group_by("symbol").len().sort("len", descending=True)
    fig, ax = plt.subplots(figsize=(10, max(2.5, 0.22 * counts.height)))
    ax.barh(counts["symbol"].to_list()[::-1], counts["len"].to_list()[::-1], color="#4c72b0")
    ax.set_xlabel("bars")
    ax.set_title(title)
    ax.grid(axis="x", alpha=0.3)
    return fig


def plot_findings(report: ValidationReport, title: str, max_symbols: int = 25) -> plt.Figure:
    """Heatmap of counts per (symbol, reason), annotated: which warts, where, how many."""
    frame = report.frame()
    if frame.height == 0:
        fig, ax = plt.subplots(figsize=(8, 1.5))
        ax.text(0.5, 0.5, f"{title}: no findings", ha="center", va="center", fontsize=13)
        ax.set_axis_off()
        return fig
    pivot = frame.pivot(on="reason", index="symbol", values="count", aggregate_function="sum")
    pivot = pivot.fill_null(0)
    reasons = [c for c in pivot.columns if c != "symbol"]
    pivot = pivot.with_columns(_t=pl.sum_horizontal(reasons)).sort("_t", descending=True)
    shown = pivot.head(max_symbols)
    mat = shown.select(reasons).to_numpy().astype(float)
    totals = pivot.select(reasons).sum().to_numpy().ravel()
    fig, ax = plt.subplots(figsize=(1.3 * len(reasons) + 3, 0.35 * shown.height + 1.8))
    shade = np.log1p(mat)
    ax.imshow(shade, cmap="Reds", aspect="auto", vmin=0)
    dark = 0.6 * shade.max()
    for i in range(mat.shape[0]):
        for j in range(mat.shape[1]):
            if mat[i, j]:
                ax.text(j, i, f"{int(mat[i, j])}", ha="center", va="center", fontsize=8,
                        color="white" if shade[i, j] > dark else "black")
    ax.set_xticks(range(len(reasons)))
    ax.set_xticklabels([f"{r}\n(total {int(t)})" for r, t in zip(reasons, totals, strict=True)],
                       fontsize=8)
    ax.set_yticks(range(shown.height))
    ax.set_yticklabels(shown["symbol"].to_list(), fontsize=8)
    more = f" (top {max_symbols} of {pivot.height} symbols)" if pivot.height > max_symbols else ""
    ax.set_title(title + more)
    return fig


def plot_feature_distributions(
    values: np.ndarray, names: tuple[str, ...], title: str, max_features: int | None = None
) -> plt.Figure:
    """Histograms of every feature of a set (or the first ``max_features``), clipped to the
    0.5-99.5 percentiles so fat tails don't hide the body; few, compact ticks so none overlap."""
    from matplotlib.ticker import MaxNLocator

    k = len(names) if max_features is None else min(max_features, len(names))
    cols = 5
    rows = int(np.ceil(k / cols))
    fig, axes = plt.subplots(rows, cols, figsize=(14, 2.2 * rows), squeeze=False)
    for i in range(rows * cols):
        ax = axes[i // cols][i % cols]
        if i >= k:
            ax.set_axis_off()
            continue
        v = values[:, i]
        v = v[np.isfinite(v)]
        if v.size:
            lo, hi = np.percentile(v, [0.5, 99.5])
            ax.hist(np.clip(v, lo, hi), bins=60, color="#55a868")
        ax.set_title(names[i], fontsize=9)
        ax.xaxis.set_major_locator(MaxNLocator(nbins=3))
        ax.yaxis.set_major_locator(MaxNLocator(nbins=3))
        ax.ticklabel_format(axis="both", style="sci", scilimits=(-3, 4), useMathText=True)
        ax.tick_params(labelsize=7)
    fig.suptitle(title)
    fig.tight_layout(rect=(0, 0, 1, 1 - 0.4 / (2.2 * rows)))  # room for the title above row 1
    return fig


def plot_price(bars: pl.DataFrame, symbol: str, price: str = "close") -> plt.Figure:
    sub = bars.filter(pl.col("symbol") == symbol)
    fig, ax = plt.subplots(figsize=(10, 3))
    ax.plot(sub["ts"].to_list(), sub[price].to_numpy(), lw=0.7)
    ax.set_title(f"{symbol} {price}")
    ax.grid(alpha=0.3)
    return fig
