"""The comparison of a sweep's direction runs: one row per member, side by side with its
baselines, the confidence interval of the difference and the net Sharpe after costs.

A person reading a sweep of direction models wants one answer first: does any member beat all
of its baselines by more than noise (the lower bound of every paired-difference CI above 0),
and does any make money after fees? ``comparison.html`` says both in its first line, then
shows the table (``comparison.csv``, ``comparison.md``) and plots. Everything is read back
from each run's ``metrics.json`` (and ``config.yaml``), so the comparison can be rebuilt for a
finished sweep at any time; a number a run did not record (an old run without the audit)
shows as "not measured".
"""

from __future__ import annotations

import html
import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import polars as pl
import yaml

from moola._io import atomic_write, atomic_write_text
from moola.evaluation.data_report import DataReport
from moola.refs import RUNS_FILE

__all__ = [
    "NOT_MEASURED",
    "comparison_frame",
    "comparison_markdown",
    "comparison_rows",
    "comparison_verdict",
    "sweep_members",
    "write_direction_comparison",
]

NOT_MEASURED = "not measured"

# (column, markdown header, number format); None format: text
_COLUMNS: tuple[tuple[str, str, str | None], ...] = (
    ("member", "member", None),
    ("symbols", "symbols", None),
    ("model", "model", None),
    ("accuracy", "accuracy", ".4f"),
    ("balanced_accuracy", "bal. acc.", ".4f"),
    ("roc_auc", "AUC", ".4f"),
    ("ece", "ECE raw", ".4f"),
    ("ece_calibrated", "ECE temp.", ".4f"),
    ("best_baseline", "best baseline", None),
    ("baseline_accuracy", "its accuracy", ".4f"),
    ("diff", "diff.", "+.4f"),
    ("diff_low", "CI low", "+.4f"),
    ("diff_high", "CI high", "+.4f"),
    ("beats_all", "beats all baselines", None),
    ("net_sharpe", "net Sharpe", ".2f"),
    ("buy_and_hold_sharpe", "buy-and-hold Sharpe", ".2f"),
    ("always_in_sharpe", "always-in net Sharpe", ".2f"),
    ("always_in_gross_sharpe", "always-in gross Sharpe", ".2f"),
    ("audit", "audit", None),
)


def _get(d: Any, *path: str) -> Any:
    for p in path:
        if not isinstance(d, Mapping) or p not in d:
            return None
        d = d[p]
    return d


def _num(v: Any) -> float | None:
    if isinstance(v, bool) or not isinstance(v, int | float):
        return None
    return float(v) if math.isfinite(float(v)) else None


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        out = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None
    return out if isinstance(out, dict) else None


def sweep_members(sweep_dir: str | Path) -> list[tuple[str, Path]]:
    """(label, run directory) of every finished run of a sweep, in the sweep's order: from
    ``runs.yaml`` when it exists, else every ``runs/*/metrics.json``."""
    sweep_dir = Path(sweep_dir)
    runs_file = sweep_dir / RUNS_FILE
    out: list[tuple[str, Path]] = []
    if runs_file.is_file():
        doc = yaml.safe_load(runs_file.read_text()) or {}
        for label, entry in doc.items():
            if isinstance(entry, Mapping) and entry.get("artifact"):
                run_dir = sweep_dir / str(entry["artifact"])
                if (run_dir / "metrics.json").is_file():
                    out.append((str(label), run_dir))
        return out
    return [(p.parent.name, p.parent) for p in sorted((sweep_dir / "runs").glob("*/metrics.json"))]


def _symbols(metrics: Mapping[str, Any], config: Mapping[str, Any]) -> list[str] | None:
    per_symbol = _get(metrics, "economics", "symbols")
    if isinstance(per_symbol, Mapping) and per_symbol:
        return sorted(map(str, per_symbol))
    syms = _get(config, "data", "symbols")
    return [str(s) for s in syms] if isinstance(syms, list) else None


def _model_name(config: Mapping[str, Any]) -> str | None:
    name = _get(config, "model", "name") or config.get("preset")
    return str(name) if name else None


def _beats_all(metrics: Mapping[str, Any]) -> bool | None:
    """Every baseline's paired accuracy-difference CI lies above 0 (None: not measured)."""
    vs = metrics.get("vs_baselines")
    if isinstance(vs, Mapping) and vs:
        lows = [_num(_get(v, "ci_low")) for v in vs.values()]
        if all(lo is not None for lo in lows):
            return all(lo > 0 for lo in lows if lo is not None)
        return None
    low = _num(_get(metrics, "test_ci", "difference", "low"))  # the best baseline only
    return None if low is None else low > 0


def _audit(metrics: Mapping[str, Any]) -> str | None:
    a = metrics.get("audit")
    if not isinstance(a, Mapping) or "passed" not in a:
        return None
    line = str(a.get("first_line") or ("audit: passed" if a["passed"] else "audit: FAILED"))
    return line.removeprefix("audit: ")


def _member_row(label: str, run_dir: Path) -> dict[str, Any] | None:
    """A member's numbers, or None when the run is no classification run with desk metrics
    (no ``test_ci`` in its metrics.json)."""
    metrics = _read_json(run_dir / "metrics.json")
    if metrics is None or not isinstance(metrics.get("test_ci"), Mapping):
        return None
    cfg_path = run_dir / "config.yaml"
    config = (yaml.safe_load(cfg_path.read_text()) or {}) if cfg_path.is_file() else {}
    ci = metrics["test_ci"]
    syms = _symbols(metrics, config)
    return {
        "member": label,
        "symbols": "+".join(syms) if syms else None,
        "n_symbols": len(syms) if syms else None,
        "model": _model_name(config),
        "accuracy": _num(_get(metrics, "model", "accuracy")),
        "accuracy_low": _num(_get(ci, "accuracy", "low")),
        "accuracy_high": _num(_get(ci, "accuracy", "high")),
        "balanced_accuracy": _num(_get(metrics, "model", "balanced_accuracy")),
        "roc_auc": _num(_get(metrics, "model", "roc_auc")),
        "ece": _num(_get(metrics, "model", "ece")),
        "ece_calibrated": _num(_get(metrics, "run", "test_calibrated", "ece")),
        "best_baseline": ci.get("best_baseline"),
        "baseline_accuracy": _num(_get(ci, "baseline_accuracy", "estimate")),
        "baseline_low": _num(_get(ci, "baseline_accuracy", "low")),
        "baseline_high": _num(_get(ci, "baseline_accuracy", "high")),
        "diff": _num(_get(ci, "difference", "estimate")),
        "diff_low": _num(_get(ci, "difference", "low")),
        "diff_high": _num(_get(ci, "difference", "high")),
        "beats_all": _beats_all(metrics),
        "net_sharpe": _num(_get(metrics, "economics", "net_sharpe")),
        "buy_and_hold_sharpe": _num(_get(metrics, "economics", "mean", "buy_and_hold", "sharpe")),
        "turnover": _num(_get(metrics, "economics", "turnover")),
        # band 0 (always in, on the model's side) after and before costs: what accuracy earns
        "always_in_sharpe": _num(_get(metrics, "economics", "mean", "always_in", "sharpe")),
        "always_in_gross_sharpe": _num(_get(metrics, "economics", "mean", "always_in_gross", "sharpe")),
        "audit": _audit(metrics),
        "n_test": _num(_get(metrics, "run", "n_test")),
        "run_dir": str(run_dir),
        "reliability_up": _get(metrics, "reliability_up"),
    }


def comparison_rows(members: Sequence[tuple[str, Path]]) -> list[dict[str, Any]]:
    """One row per member with desk metrics (others are left out), in the given order."""
    rows = [_member_row(label, Path(d)) for label, d in members]
    return [r for r in rows if r is not None]


def comparison_verdict(rows: Sequence[Mapping[str, Any]]) -> list[str]:
    """The plain-words lines on top of the comparison; the first one answers both questions."""
    if not rows:
        return ["No member recorded desk metrics (test CIs): nothing to compare."]
    n = len(rows)
    winners = [str(r["member"]) for r in rows if r.get("beats_all") is True]
    unknown_ci = sum(r.get("beats_all") is None for r in rows)
    positive = [str(r["member"]) for r in rows if (r.get("net_sharpe") or 0.0) > 0]
    unknown_sr = sum(r.get("net_sharpe") is None for r in rows)
    beat = (f"{len(winners)} of {n} members beat all their baselines (accuracy-difference CI "
            f"lower bound > 0): {', '.join(winners)}" if winners else
            f"No member of {n} beats all its baselines (no accuracy-difference CI lower bound > 0 "
            "against every baseline)")
    money = (f"{len(positive)} of {n} have positive net Sharpe after costs: {', '.join(positive)}"
             if positive else f"none of {n} has positive net Sharpe after costs")
    first = beat + "; " + money + "."
    lines = [first]
    if unknown_ci or unknown_sr:
        lines.append(f"Not measured: the baseline CIs for {unknown_ci} member(s), the net Sharpe for "
                     f"{unknown_sr} member(s).")
    audits = [r.get("audit") for r in rows]
    failed = [str(r["member"]) for r in rows if str(r.get("audit") or "").startswith("FAILED")]
    if failed:
        lines.append(f"Audit FAILED for {', '.join(failed)}: treat those numbers as suspect.")
    elif any(a is None for a in audits):
        lines.append(f"Audit not measured for {sum(a is None for a in audits)} of {n} member(s).")
    return lines


def _cell(v: Any, fmt: str | None) -> str:
    if v is None:
        return NOT_MEASURED
    if isinstance(v, bool):
        return "yes" if v else "no"
    if fmt is not None and isinstance(v, int | float):
        return format(v, fmt)
    return str(v)


def _row_cell(r: Mapping[str, Any], col: str, fmt: str | None) -> str:
    text = _cell(r.get(col), fmt)
    if col == "net_sharpe" and r.get(col) == 0.0 and r.get("turnover") == 0.0:
        text += " (no trades)"  # the band chosen on validation kept the strategy flat
    return text


def comparison_frame(rows: Sequence[Mapping[str, Any]]) -> pl.DataFrame:
    """The table's columns as text, missing numbers as "not measured" (for the HTML table)."""
    data = {col: [_row_cell(r, col, fmt) for r in rows] for col, _, fmt in _COLUMNS}
    return pl.DataFrame(data, schema=dict.fromkeys(data, pl.String))


_TEXT = ("member", "symbols", "model", "best_baseline", "audit", "run_dir")


def _numbers_frame(rows: Sequence[Mapping[str, Any]]) -> pl.DataFrame:
    """Every row's numbers as numbers (empty when not measured; the audit says "not measured"),
    CIs included: what comparison.csv holds for analysis."""
    cols = [k for k in rows[0] if k != "reliability_up"]
    schema = {k: pl.String if k in _TEXT else (pl.Boolean if k == "beats_all" else pl.Float64)
              for k in cols}
    data = [{k: (NOT_MEASURED if k == "audit" and r.get(k) is None else r.get(k)) for k in cols}
            for r in rows]
    return pl.DataFrame(data, schema=schema, orient="row")


def _markdown(rows: Sequence[Mapping[str, Any]], verdict: Sequence[str]) -> str:
    head = "| " + " | ".join(h for _, h, _ in _COLUMNS) + " |"
    rule = "|" + "|".join("---" if fmt is None else "---:" for _, _, fmt in _COLUMNS) + "|"
    body = ["| " + " | ".join(_row_cell(r, c, fmt).replace("|", "/") for c, _, fmt in _COLUMNS) + " |"
            for r in rows]
    notes = ("diff. = member accuracy - best baseline accuracy on the same test rows, CI = 95% paired "
             "moving-block bootstrap; beats all baselines = that CI's lower bound > 0 against every "
             "baseline; ECE temp. = after temperature scaling fitted on validation; net Sharpe = "
             "annualised, after fees and slippage, mean over the member's symbols (buy-and-hold on the "
             "same periods beside it); no trades = the band chosen on validation kept it flat.")
    return "\n".join([*(f"**{verdict[0]}**", *verdict[1:]), "", head, rule, *body, "", notes]) + "\n"


def comparison_markdown(sweep_dir: str | Path) -> str:
    """The comparison of a finished sweep as a markdown verdict and table (for BENCHMARKS.md)."""
    rows = comparison_rows(sweep_members(sweep_dir))
    return _markdown(rows, comparison_verdict(rows))


# ------------------------------------------------------------------------------ plots


def _plot_accuracy(rows: Sequence[Mapping[str, Any]]) -> Any:
    """Forest plot: member accuracy with CI beside its best baseline's; and the difference CI."""
    import matplotlib.pyplot as plt

    n = len(rows)
    fig, (ax, axd) = plt.subplots(1, 2, figsize=(11, 0.5 * n + 1.8), sharey=True,
                                  gridspec_kw={"width_ratios": [3, 2]})
    y = list(range(n))
    for i, r in enumerate(rows):
        if r.get("accuracy") is not None:
            lo, hi = r.get("accuracy_low"), r.get("accuracy_high")
            err = [[r["accuracy"] - lo], [hi - r["accuracy"]]] if lo is not None and hi is not None else None
            ax.errorbar(r["accuracy"], i - 0.12, xerr=err, fmt="o", color="tab:blue", capsize=3,
                        label="member" if i == 0 else None)
        if r.get("baseline_accuracy") is not None:
            lo, hi = r.get("baseline_low"), r.get("baseline_high")
            b = r["baseline_accuracy"]
            err = [[b - lo], [hi - b]] if lo is not None and hi is not None else None
            ax.errorbar(b, i + 0.12, xerr=err, fmt="s", color="tab:grey", capsize=3,
                        label="best baseline" if i == 0 else None)
            ax.annotate(str(r.get("best_baseline") or ""), (b, i + 0.12), xytext=(6, -2),
                        textcoords="offset points", fontsize=7, color="tab:grey")
        d, lo, hi = r.get("diff"), r.get("diff_low"), r.get("diff_high")
        if d is not None and lo is not None and hi is not None:
            colour = "tab:green" if lo > 0 else ("tab:red" if hi < 0 else "tab:orange")
            axd.errorbar(d, i, xerr=[[d - lo], [hi - d]], fmt="o", color=colour, capsize=3)
    ax.axvline(0.5, color="black", lw=0.8, ls=":")
    ax.set_yticks(y, [str(r["member"]) for r in rows], fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel("test accuracy, 95% block-bootstrap CI (dotted: 0.5)")
    ax.legend(fontsize=8, loc="lower right")
    ax.grid(axis="x", alpha=0.3)
    axd.axvline(0.0, color="black", lw=1)
    axd.set_xlabel("member - best baseline (green: CI above 0, red: below)")
    axd.grid(axis="x", alpha=0.3)
    fig.suptitle("accuracy per member beside its best baseline")
    fig.tight_layout()
    return fig


def _plot_sharpe(rows: Sequence[Mapping[str, Any]]) -> Any:
    import matplotlib.pyplot as plt
    import numpy as np

    n = len(rows)
    fig, ax = plt.subplots(figsize=(8, 0.45 * n + 1.6))
    y = np.arange(n)
    model = [r.get("net_sharpe") for r in rows]
    hold = [r.get("buy_and_hold_sharpe") for r in rows]
    ax.barh(y - 0.2, [v if v is not None else 0.0 for v in model], height=0.4, color="tab:blue",
            label="member, after costs")
    ax.barh(y + 0.2, [v if v is not None else 0.0 for v in hold], height=0.4, color="tab:grey",
            label="buy-and-hold, after costs")
    for i, (v, r) in enumerate(zip(model, rows, strict=True)):
        text = NOT_MEASURED if v is None else f"{v:.2f}"
        if v == 0.0 and r.get("turnover") == 0.0:
            text += " (no trades: band chosen on validation stays flat)"
        neg = v is not None and v < 0
        ax.annotate(text, (v or 0.0, i - 0.2), xytext=(-4 if neg else 4, 0), textcoords="offset points",
                    va="center", ha="right" if neg else "left", fontsize=7)
    ax.axvline(0.0, color="black", lw=0.8)
    ax.set_yticks(y, [str(r["member"]) for r in rows], fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel("annualised Sharpe on the test split, after fees and slippage")
    ax.legend(fontsize=8)
    ax.grid(axis="x", alpha=0.3)
    ax.set_title("net Sharpe per member vs buy-and-hold (mean over the member's symbols)")
    fig.tight_layout()
    return fig


def _plot_reliability(rows: Sequence[Mapping[str, Any]]) -> Any | None:
    """P(up) reliability of every member that recorded it (``reliability_up`` in metrics.json)."""
    curves = [(r["member"], r["reliability_up"]) for r in rows if isinstance(r.get("reliability_up"),
                                                                            Mapping)]
    curves = [(m, c) for m, c in curves if c.get("mean_predicted") and c.get("observed")]
    if not curves:
        return None
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 5))
    lo, hi = 1.0, 0.0
    for member, c in curves:
        xs, ys = list(map(float, c["mean_predicted"])), list(map(float, c["observed"]))
        ax.plot(xs, ys, "o-", ms=3, lw=1.2, label=str(member))
        lo, hi = min(lo, *xs, *ys), max(hi, *xs, *ys)
    pad = max(0.01, (hi - lo) * 0.1)
    ax.plot([lo - pad, hi + pad], [lo - pad, hi + pad], ls=":", color="grey", label="perfect calibration")
    ax.set_xlim(lo - pad, hi + pad)
    ax.set_ylim(lo - pad, hi + pad)
    ax.set_xlabel("mean predicted P(up) per equal-count bin (raw test probabilities)")
    ax.set_ylabel("observed share of up")
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    ax.set_title("reliability of P(up), members overlaid")
    fig.tight_layout()
    return fig


def write_direction_comparison(sweep_dir: str | Path, members: Sequence[tuple[str, Path]] | None = None,
                               *, title: str | None = None) -> Path | None:
    """``comparison.html`` (+ ``comparison.csv``, ``comparison.md`` and PNGs) in ``sweep_dir``
    when any member has desk metrics; returns its path, or None (nothing written) otherwise.
    ``members`` default: :func:`sweep_members`."""
    sweep_dir = Path(sweep_dir)
    rows = comparison_rows(sweep_members(sweep_dir) if members is None else members)
    if not rows:
        return None
    verdict = comparison_verdict(rows)
    frame = comparison_frame(rows)
    atomic_write(sweep_dir / "comparison.csv", _numbers_frame(rows).write_csv)
    atomic_write_text(sweep_dir / "comparison.md", _markdown(rows, verdict))
    rep = DataReport(sweep_dir, title=title or f"direction comparison: {sweep_dir.name}")
    good = any(r.get("beats_all") for r in rows) or any((r.get("net_sharpe") or 0) > 0 for r in rows)
    bg, edge = ("#eaf7ea", "#2d8a3c") if good else ("#fdf0e2", "#c07a2b")
    lines = "".join(f"<p style='margin:.3em 0'><b>{html.escape(t)}</b></p>" for t in verdict)
    rep.sections.append(f"<div style='border:2px solid {edge};background:{bg};padding:.4em 1em'>"
                        f"{lines}</div>")
    rep.table(frame, caption="one row per member: test metrics, best baseline, 95% CI of the accuracy "
              "difference, net Sharpe after costs, audit", max_rows=500)
    rep.figure(_plot_accuracy(rows), "comparison_accuracy",
               "test accuracy with 95% CI per member beside its best baseline (left); the paired "
               "difference with its CI (right)")
    rep.figure(_plot_sharpe(rows), "comparison_sharpe",
               "net Sharpe after fees and slippage per member vs buy-and-hold on the same periods")
    fig = _plot_reliability(rows)
    if fig is not None:
        rep.figure(fig, "comparison_reliability",
                   "P(up) reliability per member (10 equal-count bins of the raw test probabilities; "
                   "at 200 rows a bin an observed share has a standard error of ~0.035)")
    links = "".join(f"<li><a href='{html.escape(_relative(r['run_dir'], sweep_dir))}/report.html'>"
                    f"{html.escape(str(r['member']))}</a></li>" for r in rows)
    rep.heading("Per-run reports")
    rep.sections.append(f"<ul>{links}</ul>")
    return rep.write("comparison.html")


def _relative(run_dir: str, base: Path) -> str:
    try:
        return str(Path(run_dir).resolve().relative_to(base.resolve()))
    except ValueError:
        return str(Path(run_dir).resolve())
