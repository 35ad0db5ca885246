"""Tables, verdicts and HTML reports of the ranking recipe (``moola rank train`` / ``compare``)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import polars as pl

from moola.evaluation.data_report import DataReport
from moola.evaluation.plots import plot_learning_curves
from moola.evaluation.ranking import (
    LongShortConfig,
    daily_ic,
    ic_summary,
    long_short_backtest,
    quantile_returns,
)
from moola.evaluation.ranking_plots import (
    plot_cumulative_ic,
    plot_ic_histogram,
    plot_long_short_equity,
    plot_quantile_returns,
    plot_sector_attention,
)

if TYPE_CHECKING:
    from moola.pipelines._rank_config import RankConfig

__all__ = ["ArmResult", "comparison_table", "paired_verdicts", "write_compare_report", "write_run_report"]

@dataclass
class ArmResult:
    """One arm of a comparison: its per-seed test metrics and scores."""

    name: str
    kind: str  # "neural" or "tabular"
    seeds: list[int]
    metrics: list[dict[str, dict[str, Any]]]  # per seed: horizon -> metrics
    scores: list[pl.DataFrame]  # per seed: score_panel layout
    seconds: list[float]
    params: dict[str, Any] = field(default_factory=dict)



TABLE_METRICS = (("ic_mean", "IC"), ("rank_ic_mean", "RankIC"), ("icir", "ICIR"),
                 ("rank_icir", "RankICIR"), ("ls_sharpe", "LS Sharpe (net)"),
                 ("ls_ann_return", "LS ann. return (net)"), ("ls_mdd", "LS max DD"),
                 ("hit_rate", "hit rate"), ("ls_turnover", "turnover"))


def _horizon_frame(scores: pl.DataFrame, h: int) -> pl.DataFrame:
    return scores.select("date", "symbol", pl.col(f"score_{h}").alias("score"),
                         pl.col(f"ret_{h}").alias("ret"))


def comparison_table(arms: Sequence[ArmResult], horizons: Sequence[int]) -> pl.DataFrame:
    """One row per (horizon, arm): mean and std over seeds of each headline metric."""
    rows: list[dict[str, Any]] = []
    for h in horizons:
        for arm in arms:
            row: dict[str, Any] = {"horizon": h, "arm": arm.name, "seeds": len(arm.seeds)}
            for key, _ in TABLE_METRICS:
                vals = np.array([float(m[str(h)].get(key, np.nan)) for m in arm.metrics], dtype=np.float64)
                row[key] = float(np.nanmean(vals)) if np.isfinite(vals).any() else float("nan")
                row[f"{key}_std"] = float(np.nanstd(vals, ddof=1)) if np.isfinite(vals).sum() > 1 else 0.0
            rows.append(row)
    return pl.DataFrame(rows)


def _seed_mean_daily(arm: ArmResult, h: int) -> pl.DataFrame:
    """The arm's daily IC and RankIC averaged over its seeds, by date."""
    frames = [daily_ic(_horizon_frame(s, h)).select("date", "ic", "rank_ic").with_columns(seed=pl.lit(k))
              for k, s in enumerate(arm.scores)]
    return pl.concat(frames).group_by("date").agg(pl.col("ic").mean(), pl.col("rank_ic").mean()).sort("date")


def _paired(a: pl.DataFrame, b: pl.DataFrame, h: int) -> dict[str, Any]:
    """Daily RankIC of a minus b on the dates both have: mean and overlap-aware 95% interval."""
    j = a.join(b, on="date", suffix="_ref").drop_nulls().filter(
        pl.col("rank_ic").is_finite() & pl.col("rank_ic_ref").is_finite())
    diff = j.select(pl.col("date"), (pl.col("ic") - pl.col("ic_ref")).alias("ic"),
                    (pl.col("rank_ic") - pl.col("rank_ic_ref")).alias("rank_ic"), n=pl.lit(1))
    s = ic_summary(diff, horizon=h)
    lo, hi = s["rank_ic_ci"]
    return {"diff": s["rank_ic_mean"], "lo": lo, "hi": hi, "days": int(diff.height)}


def _word(d: Mapping[str, Any]) -> str:
    if d["lo"] > 0:
        return "ahead"
    if d["hi"] < 0:
        return "behind"
    return "indistinguishable"


def paired_verdicts(arms: Sequence[ArmResult], horizons: Sequence[int], *, model: str) -> dict[str, Any]:
    """Per horizon: the model's seed-mean daily RankIC minus LightGBM's (and minus the no-graph
    encoder's), with a 95% interval; 'beats' only when the whole interval is above zero."""
    by = {a.name: a for a in arms}
    out: dict[str, Any] = {"lightgbm": {}, "temporal_only": {}, "lines": []}
    if model not in by:
        return out
    for h in horizons:
        mine = _seed_mean_daily(by[model], h)
        for ref in ("lightgbm", "temporal_only"):
            if ref in by:
                out[ref][str(h)] = _paired(mine, _seed_mean_daily(by[ref], h), h)
    refs = (("lightgbm", "LightGBM"), ("temporal_only", "the same encoder without graph attention"))
    for ref, what in refs:
        if not out[ref]:
            continue
        parts = [f"h={h}: {_word(d)} ({d['diff']:+.4f} [{d['lo']:+.4f}, {d['hi']:+.4f}])"
                 for h, d in out[ref].items()]
        wins = [h for h, d in out[ref].items() if d["lo"] > 0]
        head = (f"{model} beats {what} on daily RankIC at horizon(s) {', '.join(wins)}" if wins
                else f"{model} does not beat {what} on daily RankIC at any horizon")
        out["lines"].append(f"{head} (paired by date, seed mean, 95% interval): " + "; ".join(parts))
    return out


def _table_for_report(table: pl.DataFrame) -> pl.DataFrame:
    cols = [pl.col("horizon"), pl.col("arm"), pl.col("seeds")]
    for key, label in TABLE_METRICS:
        # one format for every cell (4 decimals), so digits line up down a column
        mean = pl.col(key).map_elements(lambda v: f"{v:.4f}", return_dtype=pl.String)
        std = pl.col(f"{key}_std").map_elements(lambda v: f"{v:.4f}", return_dtype=pl.String)
        cols.append(pl.when(pl.col("seeds") > 1).then(pl.format("{} ± {}", mean, std))
                    .otherwise(mean).alias(label))
    return table.select(cols)


def write_compare_report(out_dir: Path, cfg: RankConfig, arms: Sequence[ArmResult], table: pl.DataFrame,
                         verdicts: Mapping[str, Any], summary: Mapping[str, Any],
                         attention: np.ndarray | None,
                         sectors: Sequence[str], symbols: Sequence[str]) -> Path:
    """``report.html``: verdict first, the table, then the plots a person looks at."""
    rep = DataReport(out_dir, title=f"moola rank compare: {cfg.name}")
    rep.verdict_box(list(verdicts["lines"]) or ["no verdict: the model or LightGBM is not among the arms"])
    rep.paragraph(str(summary["survivorship"]))
    rep.paragraph("Sectors are end-of-period GICS classifications (not point in time): sector edges "
                  "carry a little look-ahead for stocks that changed sector.")
    split = summary["split"]
    rep.paragraph(f"Test dates {split['test']} ({split['n_test']} days); train {split['train']}, val "
                  f"{split['val']}; purged {split['purged']}, embargoed {split['embargoed']} dates. "
                  f"Panel: {summary['panel']}. Long-short: {cfg.long_short.model_dump()}; deflated "
                  f"Sharpe over {summary['n_trials']} configurations.")
    rep.heading("Test metrics per horizon (mean ± std over seeds; a single value: one fit, "
                "deterministic arms)")
    rep.table(_table_for_report(table), max_rows=200)
    h0 = int(cfg.monitor_horizon or cfg.data.horizons[0])
    for h in cfg.data.horizons:
        daily = {a.name: _seed_mean_daily(a, h) for a in arms}
        rep.heading(f"Horizon {h}")
        rep.figure(plot_cumulative_ic(daily), f"cumulative_ic_h{h}",
                   f"cumulative daily IC and RankIC on the test dates, horizon {h} (seed mean)")
        if h == h0:
            rep.figure(plot_ic_histogram(daily), f"ic_hist_h{h}", f"daily RankIC histogram, horizon {h}")
        ls_cfg = cfg.long_short.model_copy(update={"horizon": h})
        results = {a.name: long_short_backtest(_horizon_frame(a.scores[0], h), ls_cfg) for a in arms}
        rep.figure(plot_long_short_equity(results), f"long_short_h{h}",
                   f"top-minus-bottom equity after {ls_cfg.cost_bps} bp costs (solid) and before (dashed), "
                   f"first seed of each arm, rebalanced every {h} days")
        model = arms[0]
        q = quantile_returns(_horizon_frame(model.scores[0], h), horizon=h)
        rep.figure(plot_quantile_returns(q), f"quantiles_h{h}",
                   f"{model.name}: cumulative return of each score quintile, horizon {h}")
    if attention is not None:
        rep.heading("Graph attention between sectors")
        rep.figure(plot_sector_attention(attention, list(sectors)), "sector_attention",
                   "mean last-layer attention from stocks of a sector (rows) to stocks of a sector "
                   "(columns), rows normalised, averaged over the test days (first seed); the graph "
                   "decides who may attend to whom, so same-sector edges put mass on the diagonal")
    return rep.write()


def write_run_report(run_dir: Path, cfg: RankConfig, scores: pl.DataFrame, metrics: Mapping[str, Any],
                     history: Sequence[Mapping[str, Any]]) -> Path:
    """``report.html`` of one ranking run: headline per horizon, learning curves, IC plots."""
    rep = DataReport(run_dir, title=f"moola rank train: {cfg.name}")
    rep.paragraph("One run, one seed, no baselines: use `moola rank compare` for the verdict against "
                  "LightGBM and the no-graph encoder on the same rows.")
    rep.paragraph(str(metrics["survivorship"]))
    rows = [{"horizon": int(h), **{label: m.get(key) for key, label in TABLE_METRICS}}
            for h, m in metrics["test"].items()]
    rep.table(pl.DataFrame(rows), caption="test metrics")
    rep.figure(plot_learning_curves(list(history)), "learning_curves", "training and validation curves")
    daily = {cfg.name: daily_ic(_horizon_frame(scores, cfg.data.horizons[0]))}
    rep.figure(plot_cumulative_ic(daily), "cumulative_ic",
               f"cumulative daily IC and RankIC, horizon {cfg.data.horizons[0]}")
    ls = LongShortConfig(**{**cfg.long_short.model_dump(), "horizon": cfg.data.horizons[0]})
    rep.figure(plot_long_short_equity({cfg.name: long_short_backtest(
        _horizon_frame(scores, cfg.data.horizons[0]), ls)}), "long_short", "long-short equity")
    return rep.write()
