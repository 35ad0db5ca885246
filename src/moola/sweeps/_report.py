"""What a sweep leaves for people and for the next command: a summary sorted by the selection
metric, ``best.yaml`` (the reference behind ``sweep:NAME:best``), an ablation report, and, when
the members are classification runs with desk metrics (test CIs), the direction comparison
(``comparison.html`` / ``.csv`` / ``.md``: members beside their baselines, CIs, net Sharpe)."""

from __future__ import annotations

import html
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import polars as pl
import yaml
from rich.console import Console
from rich.markup import escape

from moola._io import atomic_write, atomic_write_text
from moola.pipelines import frame_table
from moola.refs import BEST_FILE
from moola.training import read_history

if TYPE_CHECKING:
    from moola.sweeps._matrix import MatrixConfig, Selection
    from moola.sweeps._runner import RunState

__all__ = ["summary_frame", "write_sweep_outputs"]


def _fmt_value(v: Any) -> str:
    return json.dumps(v) if isinstance(v, list | dict) else str(v)


def summary_frame(states: list[RunState], sel: Selection) -> pl.DataFrame:
    """One row per run, best first (failed and unscored runs last)."""
    keys: list[str] = []
    for st in states:
        keys += [k for k in st.spec.overrides if k not in keys]
    # only what distinguishes runs: a key every run sets to the same value is the shared base
    keys = [k for k in keys if len({_fmt_value(st.spec.overrides.get(k, "")) for st in states}) > 1]
    rows = []
    for st in states:
        row: dict[str, Any] = {"run": st.spec.label, "status": st.status}
        row.update({k: _fmt_value(st.spec.overrides.get(k, "")) for k in keys})
        row[sel.metric] = st.value
        row["run_seconds"] = st.run_seconds
        row["wall_seconds"] = st.seconds
        row["error"] = st.error or ""
        row["dir"] = f"runs/{st.spec.run_name}"
        rows.append(row)
    df = pl.DataFrame(rows, infer_schema_length=None)
    return df.sort(sel.metric, descending=sel.mode == "max", nulls_last=True)


def _plots(sweep_dir: Path, states: list[RunState], sel: Selection, best: RunState | None) -> list[tuple]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    figs = []
    scored = [st for st in states if st.value is not None]
    sign = 1.0 if sel.mode == "min" else -1.0
    scored.sort(key=lambda s: sign * (s.value or 0.0))  # best first (every value is set here)
    failed = [st for st in states if st.status == "failed"]
    fig, ax = plt.subplots(figsize=(8, 0.45 * (len(scored) + len(failed)) + 1.5))
    labels = [st.spec.label for st in scored] + [f"{st.spec.label} (failed)" for st in failed]
    values = [float(st.value) for st in scored] + [0.0] * len(failed)  # type: ignore[arg-type]
    colours = ["tab:green" if st is best else "tab:blue" for st in scored] + ["tab:red"] * len(failed)
    # points, not bars: the differences are small next to the values, and a bar cut off at an
    # axis limit would exaggerate them
    ax.scatter(values[: len(scored)], range(len(scored)), c=colours[: len(scored)], s=60, zorder=3)
    ax.set_yticks(range(len(labels)), labels, fontsize=8)
    ax.invert_yaxis()
    ax.grid(axis="x", alpha=0.3)
    for i, v in enumerate(values[: len(scored)]):
        ax.annotate(f"{v:.4f}", (v, i), xytext=(6, 0), textcoords="offset points", va="center", fontsize=8)
    ax.set_xlabel(f"{sel.metric} ({'lower' if sel.mode == 'min' else 'higher'} is better; best in green)")
    if scored:
        lo, hi = min(values[: len(scored)]), max(values[: len(scored)])
        pad = (hi - lo) * 0.3 or abs(hi) * 0.02 or 1.0
        ax.set_xlim(lo - pad, hi + 2 * pad)
        for j in range(len(failed)):
            ax.annotate("failed", (lo - pad, len(scored) + j), xytext=(4, 0), textcoords="offset points",
                        va="center", color="tab:red", fontsize=8)
    ax.set_title("ablation: selection metric per run")
    fig.tight_layout()
    figs.append((fig, "ablation", f"{sel.metric} of each run (failed runs in red)"))

    curves = [(st, read_history(sweep_dir / "runs" / st.spec.run_name)) for st in states if st.finished]
    curves = [(st, h) for st, h in curves if any("val_loss" in e for e in h)]
    if curves:
        fig, ax = plt.subplots(figsize=(8, 4))
        for st, h in curves:
            ep = [int(e.get("epoch", i + 1)) for i, e in enumerate(h) if "val_loss" in e]  # 1-based
            ax.plot(ep, [e["val_loss"] for e in h if "val_loss" in e], marker="o", ms=3,
                    lw=2.5 if st is best else 1.2, label=st.spec.label)
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(nbins="auto", steps=[1, 2, 2.5, 5, 10], integer=True))
        ax.set_ylabel("validation loss")
        ax.legend(fontsize=7)
        ax.set_title("validation loss per epoch, per run (best run drawn thick)")
        fig.tight_layout()
        figs.append((fig, "learning_curves", "validation loss per epoch of every finished run"))
    return figs


def sweep_verdict(sweep_dir: Path, states: list[RunState], sel: Selection, best: RunState | None
                  ) -> list[str]:
    """The report's first lines: which run won and by how much over the runner-up (does the choice
    matter?), and what the winner's own report says about its baselines on test."""
    n_fail = sum(st.status == "failed" for st in states)
    done = f"{sum(st.finished for st in states)} of {len(states)} runs finished" + (
        f", {n_fail} FAILED (state/NAME.error.json)" if n_fail else "")
    if best is None:
        return [f"NO BEST: no run finished with {sel.metric}; {done}."]
    assert best.value is not None
    pairs = [(st.spec.label, float(st.value)) for st in states if st.finished and st.value is not None]
    scored = sorted(pairs, key=lambda lv: lv[1] if sel.mode == "min" else -lv[1])
    lines = [f"Best by {sel}: {best.spec.label} with {sel.metric} = {best.value:.4f}; {done}."]
    if len(scored) > 1:
        label2, value2 = scored[1]
        values = [v for _, v in scored]
        lines.append(f"Runner-up {label2} at {value2:.4f} (the best is {abs(best.value - value2):.4f} "
                     f"better); all finished runs span {min(values):.4f} .. {max(values):.4f}.")
    metrics = sweep_dir / "runs" / best.spec.run_name / "metrics.json"
    if metrics.is_file():
        from moola._io import read_json

        v = read_json(metrics).get("verdict") or {}
        lines += [f"Best run on its test split: {line}" for line in v.get("lines", [])]
    return lines


def write_sweep_outputs(sweep_dir: Path, matrix: MatrixConfig, sel: Selection, states: list[RunState],
                        console: Console) -> tuple[RunState | None, Path]:
    """summary.csv, best.yaml, report.html (+ PNGs), comparison.html for direction members;
    prints the summary table. Returns the best."""
    from moola.evaluation import write_direction_comparison
    from moola.evaluation.data_report import DataReport

    scored = [st for st in states if st.finished and st.value is not None]
    best = None
    for st in scored:
        if best is None or sel.better(st.value, best.value):  # type: ignore[arg-type]
            best = st
    df = summary_frame(states, sel)
    atomic_write(sweep_dir / "summary.csv", df.write_csv)
    console.print(frame_table(df.drop("dir", "error"), title=f"sweep {matrix.name}: best first by {sel}"))
    best_file = sweep_dir / BEST_FILE
    if best is not None:
        best_doc = {
            "sweep": matrix.name, "command": matrix.command, "select": str(sel),
            "run": best.spec.label, "value": best.value, "config_hash": best.spec.key,
            "artifact": f"runs/{best.spec.run_name}",  # relative to this file's directory
            "run_dir": str((sweep_dir / "runs" / best.spec.run_name).resolve()),
            "overrides": best.spec.overrides,
        }
        atomic_write_text(best_file, yaml.safe_dump(best_doc, sort_keys=False))
        console.print(f"[bold]best[/]: {best.spec.label} ({sel.metric} = {best.value:.4f}) -> "
                      f"{best_doc['run_dir']}  (reference: sweep:{matrix.name}:best)")
    else:
        best_file.unlink(missing_ok=True)
        console.print(f"[red]no run finished with {sel.metric}; no best.yaml[/]")
    rep = DataReport(sweep_dir, title=f"sweep {matrix.name}: moola {matrix.command}, selected by {sel}")
    n_fail = sum(st.status == "failed" for st in states)
    rep.verdict_box(sweep_verdict(sweep_dir, states, sel, best), loud=best is None or n_fail > 0)
    for fig, name, caption in _plots(sweep_dir, states, sel, best):
        rep.figure(fig, name, caption)
    finished = [(st.spec.label, sweep_dir / "runs" / st.spec.run_name) for st in states if st.finished]
    comparison = write_direction_comparison(
        sweep_dir, finished, title=f"sweep {matrix.name}: direction members beside their baselines")
    if comparison is not None:
        first = (sweep_dir / "comparison.md").read_text().splitlines()[0].strip("*")
        console.print(f"[bold]comparison[/]: {escape(first)} -> {comparison}", highlight=False)
        rep.sections.append(f"<p><b><a href='{comparison.name}'>Direction comparison</a></b>: "
                            f"{html.escape(first)}</p>")
    rep.table(df.drop("error"), caption="runs, best first (overridden keys as columns)")
    if n_fail:
        rep.table(df.filter(pl.col("status") == "failed").select("run", "error", "dir"),
                  caption="failed runs (tracebacks in state/NAME.error.json)")
    return best, rep.write("report.html")
