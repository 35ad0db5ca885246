"""The demo: the whole main job on the bundled real data, ending in a printed summary and a report.

It composes pipelines and sweeps, so it sits above both: cli -> demo -> {sweeps, pipelines}."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
from rich.console import Console
from rich.table import Table

from moola._io import read_json
from moola.data import Store, Timeframe, mark_gaps
from moola.datasets import SampleSpans, Split, WindowSet, assert_no_overlap, chronological_split
from moola.datasets.tasks import bundled_dir, configs_dir
from moola.evaluation.data_report import (
    DataReport,
    plot_bars_per_symbol,
    plot_feature_distributions,
    plot_findings,
    plot_price,
)
from moola.features import FeatureMatrix, build_features
from moola.pipelines.data import StoreValidation, run_ingest, run_validate
from moola.pipelines.label import run_label
from moola.pipelines.oof import OOFConfig, run_oof
from moola.pipelines.train import RunConfig, run_train
from moola.refs import resolve_ref
from moola.sweeps import TuneOptions, load_space, run_sweep, run_tune
from moola.tracking import tracking_uri

WINDOW = 105


def run_demo(out: str | Path, *, data_dir: str | Path | None = None,
             console: Console | None = None) -> Path:
    """Ingest -> validate -> features -> windows -> leakage-safe split -> report."""
    console = console or Console()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    # the demo's runs go to a store inside its output unless the user named one
    os.environ.setdefault("MLFLOW_TRACKING_URI", f"sqlite:///{(out / 'mlflow.db').resolve()}")
    data = Path(data_dir) if data_dir else bundled_dir()
    store_dir = out / "store"
    report = DataReport(out / "report", title="moola demo: bundled real data")
    timings: dict[str, float] = {}
    t0 = time.perf_counter()

    console.rule("[bold]1. ingest + validate")
    res_d = run_ingest([data / "sp500_subset.parquet"], store_dir)
    res_c = run_ingest([data / "binanceus_BTCUSD_1m.csv"], store_dir)
    for res in (res_d, res_c):
        for tf, rep in res.reports.items():
            w = res.writes[tf]
            console.print(f"  {tf.value}: {rep.rows_in} rows read, {rep.rows_out} stored; "
                          f"findings {rep.totals() or 'none'}; "
                          f"{len(w.added)} added / {len(w.updated)} updated / "
                          f"{len(w.unchanged)} unchanged partitions")
    val = run_validate(store_dir)
    timings["ingest+validate"] = time.perf_counter() - t0
    store = Store(store_dir)
    daily = mark_gaps(store.read(Timeframe.D1), Timeframe.D1)
    minute = mark_gaps(store.read(Timeframe.M1), Timeframe.M1)

    console.rule("[bold]2. features")
    t1 = time.perf_counter()
    feats: dict[str, FeatureMatrix] = {
        "ohlc4 (daily)": build_features(daily, "ohlc4"),
        "relative11 (daily)": build_features(daily, "relative11"),
        "alpha158 (daily)": build_features(daily, "alpha158"),
        "crypto39 (1m)": build_features(minute, "crypto39"),
    }
    for fm in feats.values():
        fm.save(out / "features" / f"{fm.set_name}_{fm.keys['symbol'].n_unique()}sym.parquet")
    timings["features"] = time.perf_counter() - t1

    console.rule("[bold]3. windows + split")
    t2 = time.perf_counter()
    win_d = WindowSet.from_matrix(feats["ohlc4 (daily)"], WINDOW, horizon=1)
    win_c = WindowSet.from_matrix(feats["crypto39 (1m)"], WINDOW, horizon=1)
    splits = {}
    for name, ws in (("daily ohlc4", win_d), ("1m crypto39", win_c)):
        start, end = ws.to_spans()
        spans = SampleSpans(start, end, group=np.asarray(ws.symbol_codes()))
        embargo = 5 * (86_400 if name.startswith("daily") else 60) * 10**9  # 5 bars
        sp = chronological_split(spans, val=0.15, test=0.15, embargo=embargo)
        for a, b in ((sp.train, sp.val), (sp.train, sp.test), (sp.val, sp.test)):
            assert_no_overlap(spans, a, b, embargo=embargo)
        splits[name] = (ws, sp)
    timings["windows+split"] = time.perf_counter() - t2

    # the task (timeframe, features, horizon) is configs/direction_demo.yaml's (it says why it is
    # 1-minute BTC and not daily stocks); only the store is the demo's
    run_cfg = RunConfig.from_yaml(configs_dir() / "direction_demo.yaml",
                                  [f"out_dir={out / 'runs'}", f"data.store={store_dir}"])
    d = run_cfg.data
    console.rule(f"[bold]4. train {run_cfg.preset or run_cfg.name} on {d.horizon}-bar direction "
                 f"({d.feature_set}, {d.timeframe} bars)")
    t3 = time.perf_counter()
    outcome = run_train(run_cfg, console=console, overwrite=True)  # the demo owns its directory
    verdict = outcome.metrics["verdict"]
    for line in verdict["lines"]:  # the run's plain verdict, red when the model collapsed
        console.print(f"[bold {'red' if verdict['collapsed'] else 'cyan'}]{line}[/]", highlight=False)
    timings["train+evaluate"] = time.perf_counter() - t3

    console.rule("[bold]5. label patterns; sweep 3 pretraining variants (2 workers); tune; OOF verdict")
    t4 = time.perf_counter()
    lab = run_label(store_dir, out / "labels.csv")
    console.print(f"  labeler: {lab.n_labels} windows {lab.balance}; pool {lab.pool_size:,} windows")
    sweep = run_sweep(configs_dir() / "sweep_pretrain_demo.yaml", out_dir=out / "sweeps", parallel=2,
                      run_overrides=[f"data.store={store_dir.resolve()}",
                                     f"data.labels={(out / 'labels.csv').resolve()}"],
                      console=console)
    if sweep.best is None:
        raise RuntimeError(f"no pretraining variant finished; see {sweep.sweep_dir}/runs.yaml")
    enc_ref = f"sweep:{sweep.sweep_dir}:best"
    enc_dir = Path(resolve_ref(enc_ref))
    timings["pretraining sweep"] = time.perf_counter() - t4
    t5 = time.perf_counter()
    tuned = _tune_step(out, store_dir, console)
    timings["tuning"] = time.perf_counter() - t5
    t6 = time.perf_counter()
    oof_cfg = OOFConfig.from_yaml(configs_dir() / "oof_demo.yaml",
                                  [f"out_dir={out / 'runs'}", f"data.store={store_dir}",
                                   f"data.labels={out / 'labels.csv'}",
                                   f"pretrained_encoder={enc_ref}"])
    oof_dir = run_oof(oof_cfg, console=console, overwrite=True)
    oof_verdict = read_json(oof_dir / "verdict.json", keys=("verdict",))["verdict"]
    timings["oof"] = time.perf_counter() - t6

    console.rule("[bold]6. desk: two direction members, gates, registry, ensemble")
    t7 = time.perf_counter()
    desk = _desk_step(out, console)
    timings["desk"] = time.perf_counter() - t7

    console.rule("[bold]7. dry-run runtime: the last day of two symbols through the promoted ensemble")
    t8 = time.perf_counter()
    desk += _runtime_step(out, console)
    timings["runtime"] = time.perf_counter() - t8

    console.rule("[bold]8. cross-sectional ranking: a small graph model beside LightGBM on 30 stocks")
    t9 = time.perf_counter()
    desk += _rank_step(out, store_dir, console)
    timings["ranking"] = time.perf_counter() - t9

    summary = _summary_table(store, val, feats, splits)
    summary.add_row("train run", f"{outcome.run_dir} (report.html, metrics.json, weights.safetensors)")
    summary.add_row("test balanced accuracy", f"model {verdict['balanced_accuracy']:.4f} vs "
                    + ", ".join(f"{k} {v:.4f}" for k, v in verdict["baselines"].items()))
    summary.add_row("direction verdict", "\n".join(verdict["lines"]),
                    style="bold red" if verdict["collapsed"] else None)
    summary.add_row("pretraining sweep", f"best of {len(sweep.runs)}: {sweep.best.spec.label} "
                    f"(val masked loss {sweep.best.value:.4f}) -> {enc_dir}; report {sweep.report}")
    summary.add_row("tuning", tuned)
    summary.add_row("pretraining verdict", oof_verdict)
    summary.add_row("MLflow", f"every run above is in {tracking_uri()}: "
                    f"mlflow ui --backend-store-uri {tracking_uri()}")
    summary.add_row("oof report", str(oof_dir / "report.html"))
    for what, line in desk:
        summary.add_row(what, line)
    console.print(summary)

    # ---- report: the verdicts first, then what they rest on
    rejected = sum(store.read_rejects(tf).height for tf in store.timeframes())
    report.verdict_box(demo_verdict(val, daily, minute, verdict, oof_verdict, rejected=rejected),
                       loud=bool(verdict["collapsed"] or verdict["trained_nothing"]))
    report.heading("Store")
    report.paragraph(
        f"Store at {store_dir}: timeframes {[t.value for t in store.timeframes()]}, "
        f"{len(store.symbols(Timeframe.D1))} daily symbols, {daily.height} daily bars, "
        f"{minute.height} one-minute bars. Survivorship bias: the S&P universe is the index "
        "membership near the end of the period."
    )
    report.figure(plot_bars_per_symbol(daily, "daily bars per symbol (S&P 500 subset)"),
                  "bars_per_symbol", "Bars per symbol after validation; late starters are IPOs "
                  "and spin-offs.")
    for tf, rep in val.reports.items():
        report.heading(f"Validation findings ({tf.value})")
        if not rep.has_findings:  # nothing to plot: say so instead of an empty chart
            report.paragraph(f"no findings: every {tf.value} bar passed all checks")
            continue
        report.figure(plot_findings(rep, f"findings per reason ({tf.value})"),
                      f"findings_{tf.value}", "Rows per reason (gaps: missing bars), stacked by "
                      "symbol. all_null and duplicate rows were dropped at ingest and are kept "
                      "in the store's rejects.")
        report.table(rep.frame(), caption=f"findings per symbol ({tf.value})")
    report.heading("Features")
    report.table(
        pl.DataFrame({
            "set": [fm.set_name for fm in feats.values()],
            "rows": [fm.values.shape[0] for fm in feats.values()],
            "features": [fm.values.shape[1] for fm in feats.values()],
            "dtype": [str(fm.values.dtype) for fm in feats.values()],
            "warm-up rows (NaN)": [int(np.isnan(fm.values).any(axis=1).sum()) for fm in feats.values()],
            "schema hash": [fm.schema_hash for fm in feats.values()],
        }),
        caption="feature matrices",
    )
    fm = feats["crypto39 (1m)"]
    report.figure(plot_feature_distributions(fm.values, fm.names, "crypto39 on BTCUSD 1m"),
                  "dist_crypto39", "crypto39 feature distributions (clipped to 0.5-99.5 pct).")
    fm = feats["relative11 (daily)"]
    report.figure(plot_feature_distributions(fm.values, fm.names, "relative11 on the daily panel"),
                  "dist_relative11", "relative11 distributions over 30 stocks.")
    report.figure(plot_price(minute, "BTCUSD"), "btcusd", "BTCUSD 1-minute close, March 2023.")
    report.heading("Windows and split")
    rows = []
    for name, (ws, sp) in splits.items():
        rows.append({"dataset": name, "windows": len(ws), "window": ws.window,
                     "train": len(sp.train), "val": len(sp.val), "test": len(sp.test),
                     "purged": sp.purged, "embargoed": sp.embargoed,
                     "window bytes (view)": ws.index_nbytes,
                     "base bytes": ws.base.nbytes})
    report.table(pl.DataFrame(rows), caption="105-bar windows, chronological 70/15/15 split "
                 "with purge and a 5-bar embargo; overlap checked")
    report.heading("Training run and pretraining verdict")
    for title, target in (("direction model report", outcome.run_dir / "report.html"),
                          ("pretraining sweep (ablation) report", sweep.sweep_dir / "report.html"),
                          ("best encoder's pretraining report", enc_dir / "report.html"),
                          ("OOF comparison report", oof_dir / "report.html")):
        rel = os.path.relpath(target, report.out_dir)
        report.sections.append(f'<p>{title}: <a href="{rel}">{rel}</a></p>')
    for line in verdict["lines"]:
        report.paragraph(f"Direction model: {line}")
    report.paragraph(f"Pretraining verdict: {oof_verdict}")
    timings["total"] = time.perf_counter() - t0
    report.table(pl.DataFrame({"step": list(timings), "seconds": list(timings.values())}),
                 caption="timings")
    path = report.write("data_report.html")
    console.print(f"[bold green]report:[/] {path}")
    return path


def demo_verdict(val: StoreValidation, daily: pl.DataFrame, minute: pl.DataFrame, verdict: dict[str, Any],
                 oof_verdict: str, *, rejected: int) -> list[str]:
    """The data report's opening lines: is the data usable (what validation found and did), does
    the direction model beat its baselines, does pretraining help."""
    findings = {str(tf.value): rep.totals() for tf, rep in val.reports.items()}
    found = "; ".join(f"{tf}: " + (", ".join(f"{k} {v:,}" for k, v in t.items()) or "no findings")
                      for tf, t in findings.items())
    lines = [f"Data: {daily['symbol'].n_unique()} daily symbols ({daily.height:,} bars) and "
             f"{minute['symbol'].n_unique()} one-minute symbol(s) ({minute.height:,} bars) stored and "
             f"usable; validation found {found} ({rejected:,} rows set aside in the store's rejects: "
             "dropped, or the losing copy of a duplicate; the rest flagged and kept)."]
    lines += [f"Direction model: {line}" for line in verdict["lines"]]
    lines.append(f"Pretraining: {oof_verdict.splitlines()[0]}")
    return lines


DESK_MEMBERS = {"lstm": ("direction_lstm", 0.35), "transformer": ("direction_transformer", 0.65)}
DESK_STORE = "_bundled_btc2_1m"  # where configs/desk_demo.yaml's bundled data lands under out/runs


def _runtime_step(out: Path, console: Console) -> list[tuple[str, str]]:
    """Replay the last day of both symbols through the promoted ensemble into a SQLite ledger
    (configs/runtime_demo.yaml), print the ledger's status and write the runtime report."""
    from moola.pipelines.runtime import run_runtime, runtime_report
    from moola.runtime import Ledger, RuntimeConfig, status_table

    db = f"sqlite:///{(out / 'runtime.sqlite').resolve()}"
    cfg = RuntimeConfig.from_yaml(configs_dir() / "runtime_demo.yaml", [
        f"ensemble={out / 'ensemble.yaml'}", f"feed.source={out / 'runs' / DESK_STORE}", f"db={db}"])
    summary = run_runtime(cfg, console=console, view=False)
    with Ledger(db) as ledger:
        console.print(status_table(ledger))
    report = runtime_report(db, out / "runtime_report.html", bars=out / "runs" / DESK_STORE)
    no = ", ".join(f"{k} {v}" for k, v in summary.no_signals.items()) or "none"
    return [("runtime", f"{cfg.name}: {summary.ticks:,} ticks, {summary.signals:,} signal rows "
                        f"(no-signal: {no}) in {db}; report {report}")]


def _desk_step(out: Path, console: Console) -> list[tuple[str, str]]:
    """Train an LSTM and a Transformer member (configs/desk_demo.yaml), show the strict gates
    refusing them, promote them with the demo's permissive gates into the demo's MLflow registry,
    write an ensemble of the two champions and check that ``moola predict`` with it reproduces
    ``moola evaluate``'s ensemble probabilities on the test segment."""
    from moola.inference import EnsembleConfig
    from moola.pipelines.predict import run_ensemble_evaluate, run_ensemble_predict
    from moola.registry import promote, read_gates

    rows: list[tuple[str, str]] = []
    refs: dict[str, str] = {}
    strict, permissive = configs_dir() / "gates_default.yaml", configs_dir() / "gates_demo.yaml"
    for key, (preset, _) in DESK_MEMBERS.items():
        cfg = RunConfig.from_yaml(configs_dir() / "desk_demo.yaml",  # the bundled two BTC markets
                                  [f"out_dir={out / 'runs'}", f"name=desk_{key}", f"preset={preset}"])
        run = run_train(cfg, console=console, overwrite=True)
        name = f"demo-direction-{key}"
        refused = promote(run.run_dir, read_gates(strict), gates_file=strict, name=name)
        failed = ", ".join(f"{r.gate} ({r.measured} vs {r.required})" for r in refused.failed)
        console.print(f"  {strict.name} on {key}: " + ("passed" if refused.passed else f"REFUSED: {failed}"),
                      highlight=False, markup=False)
        rows.append((f"strict gates, {key}", "passed" if refused.passed else f"refused: {failed}"))
        promo = promote(run.run_dir, read_gates(permissive), gates_file=permissive, name=name)
        if not promo.passed:
            failed = ", ".join(f"{r.gate} ({r.measured} vs {r.required})" for r in promo.failed)
            raise RuntimeError(f"{run.run_dir}: the demo's permissive gates refused the {key} member: "
                               f"{failed}")
        console.print(f"  {permissive.name} on {key}: passed -> {name} version {promo.version} "
                      "is the champion", highlight=False, markup=False)
        rows.append((f"registry, {key}", f"models:/{name}@champion = version {promo.version} "
                     f"(accuracy {run.metrics['model']['accuracy']:.4f}, "
                     f"{run.metrics['audit']['first_line']})"))
        refs[key] = f"models:/{name}@champion"
    ens_path = out / "ensemble.yaml"
    EnsembleConfig.from_dict({
        "weights": "fixed",
        "members": [{"ref": refs[k], "name": k, "weight": w} for k, (_, w) in DESK_MEMBERS.items()],
    }).to_yaml(ens_path)
    evaluated = run_ensemble_evaluate(ens_path, out=out / "ensemble_eval")
    predicted = run_ensemble_predict(ens_path, out / "runs" / DESK_STORE,
                                     out / "ensemble_predictions.parquet")
    test_rows = pl.read_parquet(out / "ensemble_eval" / "ensemble_evaluation_test_rows.parquet")
    cols = [c for c in test_rows.columns if c.startswith("proba_")]
    both = test_rows.join(predicted, on=["symbol", "ts"], how="inner", suffix="_predict")
    gap = max((float(np.abs(both[c].to_numpy() - both[f"{c}_predict"].to_numpy()).max(initial=0.0))
               for c in cols), default=0.0)
    if both.height != test_rows.height or gap != 0.0:
        raise RuntimeError(f"moola predict --ensemble differs from moola evaluate --ensemble on the test "
                           f"segment: {both.height} of {test_rows.height} rows matched, max gap {gap:g}")
    m = evaluated["test"]["metrics"]
    rows.append(("ensemble", f"{ens_path} (lstm 0.35 / transformer 0.65): test accuracy "
                 f"{m['accuracy']:.4f} on {test_rows.height:,} rows; moola predict reproduces "
                 f"moola evaluate's probabilities exactly ({predicted.height:,} predictions)"))
    return rows


def _rank_step(out: Path, store_dir: Path, console: Console) -> list[tuple[str, str]]:
    """configs/rank_demo.yaml on the demo's store: the graph model over two seeds beside
    LightGBM, ridge and the encoder without graph attention, on the same rows; report."""
    from moola.pipelines.rank import RankConfig, run_rank_compare

    cfg = RankConfig.from_yaml(configs_dir() / "rank_demo.yaml", [
        f"out_dir={out / 'runs'}", f"data.store={store_dir.resolve()}",
        f"data.sectors={bundled_dir() / 'sp500_sectors_subset.csv'}",
        f"data.cache_dir={out / 'cache' / 'panels'}"])
    res = run_rank_compare(cfg, console=console, overwrite=True)
    lines = res.metrics["verdicts"]["lines"] or ["no verdict"]
    return [("ranking verdict", "\n".join(lines)),
            ("ranking report", str(res.report))]


def _tune_step(out: Path, store_dir: Path, console: Console) -> str:
    """A 6-trial Optuna study (2 worker processes, median pruner) over the direction model's
    learning rate, width, heads (divisors only), depth and head MLP; best exported as YAML."""
    base = RunConfig.from_yaml(
        configs_dir() / "tune_demo.yaml",
        [f"out_dir={out / 'runs'}", f"data.store={store_dir.resolve()}", "data.timeframe=1d",
         "data.stride=6", "train.epochs=3", "baselines=[majority]"],
    )
    space = load_space(configs_dir() / "tune_space_demo.yaml")
    res = run_tune(base, space, TuneOptions(trials=6, out=out / "tune", jobs=2, pruner="median",
                                            sampler="tpe", seed=0), console=console)
    counts = ", ".join(f"{v} {k.lower()}" for k, v in res.counts.items() if v)
    best = f"best trial {res.best_number}: val_loss {res.best_value:.4f}" if res.best_value is not None \
        else "no finished trial"
    return f"study {res.study} ({counts}); {best}; config {res.best_yaml}; storage {res.storage}"


def _summary_table(store: Store, val: object, feats: dict[str, FeatureMatrix],
                   splits: dict[str, tuple[WindowSet, Split]]) -> Table:
    t = Table(title="moola demo summary", title_justify="left")
    t.add_column("what")
    t.add_column("value", justify="left")
    for tf in store.timeframes():
        parts = store.partitions(tf)
        t.add_row(f"store {tf.value}", f"{len(parts)} symbols, {sum(p['rows'] for p in parts)} bars, "
                  f"{sum(p['rejected_rows'] for p in parts)} rejected rows kept")
    for tf, rep in val.reports.items():  # type: ignore[attr-defined]
        t.add_row(f"findings {tf.value}", ", ".join(f"{k}={v}" for k, v in rep.totals().items())
                  or "none")
    for name, fm in feats.items():
        t.add_row(f"features {name}", f"{fm.values.shape[0]} x {fm.values.shape[1]} float32, "
                  f"hash {fm.schema_hash}")
    for name, (ws, sp) in splits.items():
        t.add_row(f"windows {name}", f"{len(ws)} x {ws.window} x {ws.n_features}; train/val/test "
                  f"{len(sp.train)}/{len(sp.val)}/{len(sp.test)} "
                  f"(purged {sp.purged}, embargoed {sp.embargoed})")
    return t
