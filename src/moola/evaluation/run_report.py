"""The per-run HTML report (``report.html`` + PNG plots) and ``metrics.json`` of a training run."""

from __future__ import annotations

import html
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import polars as pl

from moola._io import atomic_write_json
from moola.evaluation.baselines import BaselineResult
from moola.evaluation.baselines import baseline_table as make_baseline_table
from moola.evaluation.data_report import DataReport
from moola.evaluation.plots import (
    accuracy_by_hour,
    plot_accuracy_by_hour,
    plot_baselines,
    plot_confusion_matrix,
    plot_learning_curves,
    plot_probability_histogram,
    plot_reliability,
)
from moola.training.guards import COLLAPSE, ONE_CLASS, TOO_GOOD, TRAINED_NOTHING, single_predicted_class

__all__ = ["plain_notes", "reliability_up", "run_verdict", "split_summary", "verdict_is_loud",
           "write_run_report"]

_HEADLINE = ("accuracy", "balanced_accuracy", "macro_f1", "roc_auc", "log_loss", "brier", "ece")


def write_run_report(
    run_dir: str | Path,
    *,
    history: Sequence[Mapping[str, Any]],
    metrics: Mapping[str, Any],
    classes: Sequence[object],
    y_true: object,
    proba: object,
    baseline_table: pl.DataFrame | Sequence[BaselineResult] | None,
    title: str = "moola run report",
    notes: Sequence[str] = (),
    extra: Mapping[str, Any] | None = None,
    test_ci: Mapping[str, Any] | None = None,
    economics: Mapping[str, Any] | None = None,
    equity_curves: Mapping[str, Mapping[str, Sequence[float]]] | None = None,
    test_ts: Sequence[Any] | pl.Series | None = None,
    split: Mapping[str, Any] | None = None,
) -> Path:
    """Write ``report.html`` (+ PNGs) and ``metrics.json`` into ``run_dir``; return the HTML path.

    ``metrics`` is the model's :func:`classification_metrics` dict on the test split (``y_true`` /
    ``proba`` are the same predictions, used for the reliability diagram). ``baseline_table`` is a
    :func:`baseline_table` frame or the list of :class:`BaselineResult` (then the full baseline
    metrics are written to ``metrics.json`` too and the table is built with the model on top).
    ``notes`` (e.g. leakage-guard warnings) are listed near the top of the report; ``extra``
    (run facts such as calibrated metrics or timings) is merged into ``metrics.json``.
    ``test_ci`` (block-bootstrap CIs, ``moola.pipelines.train.accuracy_intervals``) is shown
    beside the baseline table; ``economics`` (the costs-aware backtest summary) as a table per
    symbol, with ``equity_curves`` ({symbol: {"model", "buy_and_hold"}}) as ``equity.png``.
    ``test_ts`` (each test row's timestamp, e.g. ``data.meta["test"]["end_ts"]``) adds accuracy
    by hour of day (``accuracy_by_hour.png`` and ``accuracy_by_hour`` in metrics.json). For two
    classes the report adds a histogram of P(up) and metrics.json ``reliability_up`` (equal-count
    bins of raw P(up) vs the observed share up), which sweep comparisons overlay.

    ``metrics.json``: ``{"title", "classes", "model": metrics, "baselines": [table rows],
    "baseline_metrics": {name: metrics} (only when results were given), "notes"}``.
    """
    run_dir = Path(run_dir)
    by_hour = None if test_ts is None else accuracy_by_hour(y_true, proba, test_ts)  # checks test_ts first
    results: list[BaselineResult] | None = None
    table: pl.DataFrame | None
    if baseline_table is None or isinstance(baseline_table, pl.DataFrame):
        table = baseline_table
    else:
        results = list(baseline_table)
        table = make_baseline_table(results, model_metrics=metrics)

    rep = DataReport(run_dir, title=title)
    notes = plain_notes(notes)
    verdict = run_verdict(metrics, table, notes, test_ci=test_ci)
    verdict["lines"] += [f"SPLIT: {w}" for w in (split or {}).get("warnings", [])]
    rep.verdict_box(verdict["lines"], loud=verdict_is_loud(verdict))
    if split is not None:
        _split_section(rep, split)
    if notes:
        rep.heading("Notes")
        items = "".join(f"<li>{html.escape(str(n))}</li>" for n in notes)
        rep.sections.append(f"<ul>{items}</ul>")

    rep.heading("Test metrics")
    headline = pl.DataFrame(
        [{k: _num(metrics.get(k)) for k in _HEADLINE}],
        schema=dict.fromkeys(_HEADLINE, pl.Float64),
        orient="row",
    )
    rep.table(headline, caption=f"model on the test split (n={metrics.get('n_samples', '?')})")
    if metrics.get("roc_auc_reason"):
        rep.paragraph(str(metrics["roc_auc_reason"]))
    collapse = metrics.get("class_collapse") or []
    if collapse:
        rep.paragraph(f"Class collapse: recall below 0.3 for {', '.join(map(str, collapse))}.")
    per_class = metrics.get("per_class")
    if isinstance(per_class, Mapping) and per_class:
        pc = pl.DataFrame(
            [{"class": str(k), **{m: _num(v.get(m)) for m in ("precision", "recall", "f1")},
              "support": _num(v.get("support"))} for k, v in per_class.items()],
            schema={"class": pl.String, "precision": pl.Float64, "recall": pl.Float64,
                    "f1": pl.Float64, "support": pl.Float64},
            orient="row",
        )
        rep.table(pc, caption="per-class metrics")

    if table is not None and table.height:
        rep.heading("Baselines (same split)")
        rep.table(table, caption="model and baselines on the test split")
        rep.figure(plot_baselines(table), "baselines", "accuracy and balanced accuracy per model; "
                   "dashed line: majority-class accuracy")
    if test_ci:
        _ci_section(rep, test_ci)
    if economics:
        _economics_section(rep, economics, equity_curves or {})

    rep.heading("Plots")
    rep.figure(plot_learning_curves(list(history), classes=[str(c) for c in classes]), "learning_curves",
               "per-epoch training / validation curves")
    cm = metrics.get("confusion_matrix")
    if cm is not None:
        rep.figure(plot_confusion_matrix(cm, classes), "confusion_matrix",
                   "confusion matrix on the test split: counts, colour = share of the true class")
    rep.figure(plot_reliability(y_true, proba), "reliability",
               "reliability diagram (15 equal-width bins over (0, 1], right-closed)")
    if len(classes) == 2:
        rep.figure(plot_probability_histogram(y_true, proba, classes), "probability_histogram",
                   f"raw predicted P({classes[-1]}) on the test split, by true class")
    if test_ts is not None:
        rep.figure(plot_accuracy_by_hour(y_true, proba, test_ts), "accuracy_by_hour",
                   "test accuracy per UTC hour of the window's last bar, with row counts")
    html_path = rep.write("report.html")

    payload: dict[str, Any] = {
        "title": title,
        "classes": [str(c) for c in classes],
        "model": dict(metrics),
        "baselines": table.to_dicts() if table is not None else [],
        "notes": notes,
        "verdict": verdict,
    }
    if len(classes) == 2:
        payload["reliability_up"] = reliability_up(y_true, proba)
    if by_hour is not None:
        payload["accuracy_by_hour"] = by_hour
    if split is not None:
        payload["split"] = dict(split)
    payload.update(extra or {})
    payload["run"] = {**payload.get("run", {}), "collapsed": verdict["collapsed"]}
    if results is not None:
        payload["baseline_metrics"] = {
            r.name: {**r.metrics, "fit_seconds": r.fit_seconds, "params": r.params} for r in results
        }
    atomic_write_json(run_dir / "metrics.json", payload)
    return html_path


def reliability_up(y_true: object, proba: object, n_bins: int = 10) -> dict[str, Any]:
    """Two classes: equal-count bins of raw P(class 1) -> mean predicted vs observed share of
    class 1. Equal-count, not equal-width: direction models put nearly every row within a few
    points of 0.5, where equal-width bins would leave one bin holding everything."""
    import numpy as np

    y = np.asarray(y_true).astype(np.int64)
    p = np.asarray(proba, dtype=float)[:, 1]
    order = np.argsort(p, kind="stable")
    chunks = [c for c in np.array_split(order, min(n_bins, max(len(p), 1))) if c.size]
    return {"mean_predicted": [float(p[c].mean()) for c in chunks],
            "observed": [float((y[c] == 1).mean()) for c in chunks],
            "count": [int(c.size) for c in chunks], "bins": "equal-count, raw test probabilities"}


SHRUNK = 0.5  # a segment with less than this share of what was asked is a finding


def split_summary(meta: Mapping[str, pl.DataFrame], *, purged: int = 0, embargoed: int = 0,
                  asked: Mapping[str, float] | None = None) -> dict[str, Any]:
    """The split a run actually used, per segment: rows, share of all rows, first and last window
    end, symbols; what purge and embargo removed; and a warning for each segment that ended up
    with less than half the share asked (a 20% validation split shrunk to 2% is a finding).

    ``meta``: segment -> frame with ``symbol`` and ``end_ts`` per window (``PreparedData.meta``)."""
    total = sum(m.height for m in meta.values())
    rows: list[dict[str, Any]] = []
    warnings: list[str] = []
    for name, m in meta.items():
        share = m.height / total if total else 0.0
        want = None if asked is None else asked.get(name)
        ends = m.get_column("end_ts") if m.height else None
        syms = sorted(m.get_column("symbol").unique().to_list()) if m.height else []
        rows.append({"segment": name, "rows": m.height, "share": share, "asked": want,
                     "first": None if ends is None else str(ends.min()),
                     "last": None if ends is None else str(ends.max()),
                     "symbols": len(syms), "symbol_list": ", ".join(map(str, syms[:8]))
                     + (f" and {len(syms) - 8} more" if len(syms) > 8 else "")})
        if want and share < SHRUNK * want:
            warnings.append(f"the {name} segment holds {share:.1%} of the windows ({m.height:,}), "
                            f"much less than the {want:.0%} asked: purge, embargo or gaps took most "
                            "of it, so its metrics rest on few rows")
    return {"segments": rows, "purged": int(purged), "embargoed": int(embargoed), "total": total,
            "warnings": warnings}


def _split_section(rep: DataReport, split: Mapping[str, Any]) -> None:
    rep.heading("Split used")
    frame = pl.DataFrame(split["segments"], schema={
        "segment": pl.String, "rows": pl.Int64, "share": pl.Float64, "asked": pl.Float64,
        "first": pl.String, "last": pl.String, "symbols": pl.Int64, "symbol_list": pl.String},
        orient="row")
    rep.table(frame, caption=(f"windows per segment (by the last bar of each window); purge removed "
                              f"{split['purged']:,} and the embargo {split['embargoed']:,} windows"))
    for w in split["warnings"]:
        rep.sections.append(f"<p style='color:#c0392b'><b>WARNING: {html.escape(w)}</b></p>")


def _ci_section(rep: DataReport, ci: Mapping[str, Any]) -> None:
    rows = [("model accuracy", ci["accuracy"])]
    if "difference" in ci:
        rows += [(f"{ci['best_baseline']} accuracy (best baseline)", ci["baseline_accuracy"]),
                 (f"model - {ci['best_baseline']}", ci["difference"])]
    frame = pl.DataFrame(
        [{"statistic": name, "estimate": c["estimate"], "low": c["low"], "high": c["high"],
          "block_length": float(c["block_length"])} for name, c in rows],
        schema={"statistic": pl.String, "estimate": pl.Float64, "low": pl.Float64,
                "high": pl.Float64, "block_length": pl.Float64}, orient="row")
    first = ci["accuracy"]
    rep.table(frame, caption=f"{first['level']:.0%} {ci['method']} over {first['n']} test rows, "
              f"{first['n_boot']} resamples, blocks of {first['block_length']} consecutive rows "
              f"(max(ceil(n^(1/3)), label horizon of {ci['horizon_rows']} row(s)))")
    if "difference" in ci:
        d = ci["difference"]
        rep.paragraph(f"The model {_ci_word(d)} the best baseline ({ci['best_baseline']}) on test accuracy: "
                      f"difference {d['estimate']:+.4f}, CI [{d['low']:+.4f}, {d['high']:+.4f}].")


def _economics_section(rep: DataReport, econ: Mapping[str, Any],
                       curves: Mapping[str, Mapping[str, Sequence[float]]]) -> None:
    import matplotlib.pyplot as plt

    rep.heading("Economics after costs (test split)")
    keys = ("net_return", "sharpe", "turnover", "max_drawdown")
    rows = [{"symbol": sym, "strategy": who, "band": v["band"] if who == "model" else None,
             **{k: _num(v[who][k]) for k in keys}}
            for sym, v in econ["symbols"].items()
            for who in ("model", "buy_and_hold", "always_in", "always_in_gross") if who in v]
    rows += [{"symbol": "mean", "strategy": who, "band": None, **{k: _num(v[k]) for k in keys}}
             for who, v in econ["mean"].items()] if len(econ["symbols"]) > 1 else []
    frame = pl.DataFrame(rows, schema={"symbol": pl.String, "strategy": pl.String, "band": pl.Float64,
                                       **dict.fromkeys(keys, pl.Float64)}, orient="row")
    cfg = econ["config"]
    costs = cfg["costs"]
    rep.table(frame, caption=(
        f"{cfg['mode']} positions from calibrated P(up) outside 0.5 +- band, band chosen on "
        f"validation ({cfg['objective']}); fee {costs['fee_bps']:g} bp + slippage "
        f"{costs['slippage_bps']:g} bp per unit of turnover; one trade every {econ['hold_rows']} "
        f"row(s); Sharpe annualised at {econ['periods_per_year']:,.0f} periods a year. always_in: "
        "band 0 (always on the model's side) after costs; always_in_gross: the same before costs"))
    if curves:
        fig, ax = plt.subplots(figsize=(8, 3.5))
        for sym, c in curves.items():
            line, = ax.plot(c["model"], label=f"{sym} model (after costs)")
            ax.plot(c["buy_and_hold"], color=line.get_color(), linestyle="--",
                    label=f"{sym} buy-and-hold")
        ax.axhline(1.0, color="grey", linewidth=0.8)
        ax.set_xlabel("trading period on the test split")
        ax.set_ylabel("equity")
        ax.legend(fontsize=8)
        rep.figure(fig, "equity", "test equity after fees and slippage vs buy-and-hold (dashed)")


def plain_notes(notes: Sequence[object]) -> list[str]:
    """Notes as plain text, each once: console lines carry rich markup (``[bold red]WARNING[/] x``)
    and repeat the guard warnings the run also records bare."""
    from rich.text import Text

    out: list[str] = []
    for n in notes:
        try:
            text = Text.from_markup(str(n)).plain
        except Exception:  # not valid markup: show it as written
            text = str(n)
        bare = text.removeprefix("WARNING ").strip()
        if bare and bare not in out:
            out.append(bare)
    return out


def run_verdict(metrics: Mapping[str, Any], table: pl.DataFrame | None,
                notes: Sequence[str] = (), *, test_ci: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The report's first lines, in plain words: does the model predict a single class (on the
    test split, or on validation per the guards' ``notes``), and does it beat the majority and
    logistic baselines on test balanced accuracy, the score a constant prediction cannot lift
    above 1 / n_classes.

    "Beats" is a higher score; "within noise" when the margin is under two standard errors of a
    chance-level balanced accuracy on these test windows (overlapping windows make the true
    uncertainty larger still). A guard's trained-nothing note (``TRAINED_NOTHING``) opens the
    lines, since nothing after it means much; a too-good-to-be-true note (``TOO_GOOD``: validation
    above training) closes them, in red. With ``test_ci`` a line gives the model against the best
    baseline with its bootstrap CI. Returns ``{"lines", "collapsed", "collapsed_on",
    "trained_nothing", "too_good", "predicted_class", "balanced_accuracy", "noise_se", "baselines":
    {name: score}, "beats": {name: bool}, "beats_beyond_noise": {name: bool}}`` (``verdict`` in
    metrics.json).
    """
    per_class = metrics.get("per_class") or {}
    present = [(str(k), v) for k, v in per_class.items() if (_num(v.get("support")) or 0) > 0]
    one = single_predicted_class([float(v["recall"]) for _, v in present])
    predicted = present[one][0] if one is not None else None
    val_notes = [str(n) for n in notes if str(n).startswith(COLLAPSE) and ONE_CLASS in str(n)]
    nothing = [str(n) for n in notes if str(n).startswith(TRAINED_NOTHING)]
    too_good = [str(n) for n in notes if str(n).startswith(TOO_GOOD)]
    collapsed_on = (["test"] if predicted is not None else []) + (["validation"] if val_notes else [])
    ba = _num(metrics.get("balanced_accuracy"))
    # noise yardstick: the standard error of a chance-level balanced accuracy on these classes
    se = math.sqrt(sum(0.25 / float(v["support"]) for _, v in present)) / len(present) \
        if present else None
    scores: dict[str, float] = {}
    if table is not None and table.height:
        for r in table.filter(pl.col("kind") == "baseline").iter_rows(named=True):
            if r["model"] in ("majority", "logistic") and _num(r["balanced_accuracy"]) is not None:
                scores[r["model"]] = float(r["balanced_accuracy"])
    beats = {k: ba is not None and ba > v for k, v in scores.items()}
    clear = {k: beats[k] and se is not None and ba - v > 2 * se  # type: ignore[operator]
             for k, v in scores.items()}
    lines: list[str] = ["TRAINED NOTHING" + n[len(TRAINED_NOTHING):] for n in nothing]  # said loudly
    if predicted is not None:
        lines.append(f"COLLAPSED: the model predicts only '{predicted}' on the test split "
                     f"(n={metrics.get('n_samples', '?')}): a constant prediction, no information "
                     "beyond the majority class.")
    if ba is not None and scores:
        parts = []
        for k, v in scores.items():
            word = ("beats" if clear[k] else "is above, but within noise of,") if beats[k] \
                else "does NOT beat"
            parts.append(f"{word} the {k} baseline ({v:.4f}, {ba - v:+.4f})")
        noise = f"; one standard error ~{se:.4f}" if se is not None else ""
        lines.append(f"Test verdict: balanced accuracy {ba:.4f}; the model "
                     + " and ".join(parts) + noise + ".")
    best = _best_baseline_line(test_ci)
    if best is not None:
        lines.append(best)
    lines += [f"COLLAPSED on validation: {n}" for n in val_notes]
    lines += ["TOO GOOD TO BE TRUE" + n[len(TOO_GOOD):] for n in too_good]
    return {"lines": lines, "collapsed": bool(collapsed_on), "collapsed_on": collapsed_on,
            "trained_nothing": bool(nothing), "too_good": bool(too_good), "predicted_class": predicted,
            "balanced_accuracy": ba, "noise_se": se,
            "baselines": scores, "beats": beats, "beats_beyond_noise": clear}


def _ci_word(d: Mapping[str, Any]) -> str:
    """What an interval of model - baseline says: above zero, below zero, or across it."""
    return "beats" if d["low"] > 0 else "is beaten by" if d["high"] < 0 else "is not distinguishable from"


def verdict_is_loud(verdict: Mapping[str, Any]) -> bool:
    """A verdict to show in red: the model collapsed, trained nothing, or is too good to be true."""
    return bool(verdict.get("collapsed") or verdict.get("trained_nothing") or verdict.get("too_good"))


def _best_baseline_line(ci: Mapping[str, Any] | None) -> str | None:
    """The model against the best baseline on test accuracy, with the paired block-bootstrap CI."""
    if not ci or "difference" not in ci:
        return None
    d, level = ci["difference"], ci["accuracy"]["level"]
    return (f"Against the best baseline ({ci['best_baseline']}, test accuracy "
            f"{ci['baseline_accuracy']['estimate']:.4f}): the model {_ci_word(d)} it, accuracy difference "
            f"{d['estimate']:+.4f}, {level:.0%} block-bootstrap CI [{d['low']:+.4f}, {d['high']:+.4f}].")


def _num(v: Any) -> float | None:
    if v is None:
        return None
    try:
        f = float(v)
    except (TypeError, ValueError):
        return None
    return f if math.isfinite(f) else None
