"""The direction comparison of a sweep (comparison.html / .csv / .md, the BENCHMARKS.md table)
and the per-run report's accuracy by hour of day, P(up) histogram and P(up) reliability.

Member directories carry metrics.json in the shape ``moola train`` writes for a binary direction
run with desk evaluation (test_ci, vs_baselines, economics, audit); one test runs a real small
sweep on the bundled BTC/USD minutes end to end."""

from __future__ import annotations

import json
import re
import runpy
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import pytest
import yaml

from _train_helpers import ROOT
from moola.evaluation import (
    classification_metrics,
    comparison_markdown,
    comparison_rows,
    comparison_verdict,
    sweep_members,
    write_direction_comparison,
    write_run_report,
)
from moola.evaluation.direction_comparison import NOT_MEASURED

N_TEST = 2_105
BASELINE_ACC = {"majority": 0.4983, "persistence": 0.5031, "logistic": 0.5064, "lightgbm": 0.5120}


def _ci(est: float, half: float, block: int = 13) -> dict[str, Any]:
    return {"estimate": est, "low": est - half, "high": est + half, "level": 0.95, "n": N_TEST,
            "block_length": block, "n_boot": 2000, "method": "moving"}


def _metrics(acc: float, *, margin: float = 0.021, net_sharpe: float | None = -3.1,
             audit: bool | None = True, symbols: tuple[str, ...] = ("BTCUSDT",)) -> dict[str, Any]:
    """metrics.json of a binary direction run whose accuracy is ``acc`` and whose paired
    difference CIs are ``diff +- margin`` against each baseline (as ``moola train`` writes)."""
    best = max(BASELINE_ACC, key=lambda k: BASELINE_ACC[k])
    diffs = {k: _ci(acc - v, margin) for k, v in BASELINE_ACC.items()}
    m: dict[str, Any] = {
        "title": "direction_bybit: direction_lstm on crypto39 (direction)",
        "classes": ["down", "up"],
        "model": {"n_samples": N_TEST, "accuracy": acc, "balanced_accuracy": acc - 0.002,
                  "roc_auc": acc + 0.004, "ece": 0.031, "log_loss": 0.6931, "brier": 0.2499},
        "run": {"val_loss": 0.6929, "n_test": N_TEST, "test_calibrated": {"ece": 0.012, "accuracy": acc}},
        "test_ci": {"accuracy": _ci(acc, 0.021), "method": "moving-block bootstrap, percentile interval",
                    "horizon_rows": 2, "best_baseline": best,
                    "baseline_accuracy": _ci(BASELINE_ACC[best], 0.021),
                    "difference": diffs[best]},
        "vs_baselines": {k: {"metric": "accuracy", "diff": d["estimate"], "ci_low": d["low"],
                             "ci_high": d["high"], "ci_method": "moving block bootstrap"}
                         for k, d in diffs.items()},
        "reliability_up": {"mean_predicted": [0.47, 0.49, 0.5, 0.51, 0.53],
                           "observed": [0.48, 0.5, 0.49, 0.52, 0.52], "count": [421] * 5},
    }
    if net_sharpe is not None:
        sym = {s: {"band": 0.02, "model": {"sharpe": net_sharpe}, "buy_and_hold": {"sharpe": 1.7}}
               for s in symbols}
        m["economics"] = {"net_sharpe": net_sharpe, "net_return": -0.01, "symbols": sym,
                          "mean": {"model": {"sharpe": net_sharpe}, "buy_and_hold": {"sharpe": 1.7},
                                   "always_in": {"sharpe": -9.5}, "always_in_gross": {"sharpe": 2.1}}}
    if audit is not None:
        m["audit"] = {"passed": audit,
                      "first_line": "audit: passed (permuted, shifted)" if audit
                      else "audit: FAILED (permuted)", "checks": {}}
    return m


def _sweep(tmp: Path, members: dict[str, dict[str, Any]], preset: str = "direction_lstm") -> Path:
    """A sweep directory as ``moola sweep`` leaves it: runs.yaml + runs/NAME/{metrics,config}."""
    sweep = tmp / "sweeps" / "direction_test"
    runs: dict[str, Any] = {}
    for label, metrics in members.items():
        name = f"{label}-0123abcd"
        d = sweep / "runs" / name
        d.mkdir(parents=True)
        (d / "metrics.json").write_text(json.dumps(metrics))
        syms = sorted(metrics.get("economics", {}).get("symbols", {})) or ["BTCUSDT"]
        (d / "config.yaml").write_text(yaml.safe_dump({"preset": preset, "data": {"symbols": syms}}))
        runs[label] = {"run": name, "status": "done", "artifact": f"runs/{name}"}
    (sweep / "runs.yaml").write_text(yaml.safe_dump(runs, sort_keys=False))
    return sweep


def test_verdict_flips_when_a_ci_lower_bound_crosses_zero(tmp_path: Path) -> None:
    # 0.5340 - lightgbm 0.5120 = +0.022 with margin 0.021: every CI low > 0 (+0.001)
    below = {"BTC_lstm": _metrics(0.5100), "ETH_lstm": _metrics(0.5320)}  # 0.5320: low -0.001
    rows = comparison_rows(sweep_members(_sweep(tmp_path / "a", below)))
    assert [r["diff_low"] < 0 for r in rows] == [True, True]
    first = comparison_verdict(rows)[0]
    assert first.startswith("No member of 2 beats all its baselines")
    above = {"BTC_lstm": _metrics(0.5100), "ETH_lstm": _metrics(0.5340)}
    rows = comparison_rows(sweep_members(_sweep(tmp_path / "b", above)))
    assert rows[1]["diff_low"] > 0 and rows[1]["beats_all"] is True and rows[0]["beats_all"] is False
    first = comparison_verdict(rows)[0]
    assert first.startswith("1 of 2 members beat all their baselines") and "ETH_lstm" in first
    assert "BTC_lstm" not in first.split(";")[0]


def test_beating_the_best_baseline_is_not_enough_when_another_ci_reaches_zero(tmp_path: Path) -> None:
    m = _metrics(0.5400)
    m["vs_baselines"]["persistence"]["ci_low"] = -0.004  # a noisier comparison with a weaker baseline
    rows = comparison_rows(sweep_members(_sweep(tmp_path, {"SOL_lstm": m})))
    assert rows[0]["diff_low"] > 0 and rows[0]["beats_all"] is False
    assert comparison_verdict(rows)[0].startswith("No member")


def test_net_sharpe_part_of_the_first_line(tmp_path: Path) -> None:
    members = {"BTC_lstm": _metrics(0.51, net_sharpe=-4.2), "pooled": _metrics(0.51, net_sharpe=0.8)}
    first = comparison_verdict(comparison_rows(sweep_members(_sweep(tmp_path / "a", members))))[0]
    assert first.endswith("1 of 2 have positive net Sharpe after costs: pooled.")
    members["pooled"] = _metrics(0.51, net_sharpe=0.0)
    members["pooled"]["economics"]["turnover"] = 0.0  # the band chosen on validation never trades
    sweep = _sweep(tmp_path / "b", members)
    first = comparison_verdict(comparison_rows(sweep_members(sweep)))[0]
    assert first.endswith("none of 2 has positive net Sharpe after costs.")
    pooled = next(line for line in comparison_markdown(sweep).splitlines() if line.startswith("| pooled"))
    assert "| 0.00 (no trades) |" in pooled


def test_missing_audit_and_economics_render_as_not_measured(tmp_path: Path) -> None:
    old = _metrics(0.505, audit=None, net_sharpe=None)  # a run from before the audit and economics
    del old["run"]["test_calibrated"]
    members = {"old_run": old, "new_run": _metrics(0.505, audit=False)}
    sweep = _sweep(tmp_path, members)
    path = write_direction_comparison(sweep)
    assert path == sweep / "comparison.html"
    csv = pl.read_csv(sweep / "comparison.csv")
    old_row = csv.row(0, named=True)
    assert old_row["member"] == "old_run" and old_row["audit"] == NOT_MEASURED
    assert old_row["net_sharpe"] is None and old_row["ece_calibrated"] is None  # empty, not 0
    assert old_row["accuracy"] == 0.505
    assert csv.row(1, named=True)["audit"] == "FAILED (permuted)"
    cells = re.findall(r"<td>([^<]*)</td>", path.read_text())
    # ECE temp., net Sharpe, buy-and-hold Sharpe, always-in net and gross Sharpe, audit
    assert cells.count(NOT_MEASURED) == 6
    md = (sweep / "comparison.md").read_text()
    old_line = next(line for line in md.splitlines() if line.startswith("| old_run"))
    assert old_line.count(NOT_MEASURED) == 6
    assert "-9.50" in md and "2.10" in md  # the new run's always-in Sharpes
    assert "Audit FAILED for new_run" in md and "the net Sharpe for 1 member(s)" in md


def test_html_csv_md_and_pngs_written(tmp_path: Path) -> None:
    members = {f"{s}_{m}": _metrics(0.50 + 0.004 * i, symbols=(s,))
               for i, (s, m) in enumerate((s, m) for s in ("BTCUSDT", "ETHUSDT", "SOLUSDT")
                                           for m in ("lstm", "transformer"))}
    members["pooled_lstm"] = _metrics(0.515, symbols=("BTCUSDT", "ETHUSDT", "SOLUSDT"))
    sweep = _sweep(tmp_path, members)
    path = write_direction_comparison(sweep)
    assert path is not None
    doc = path.read_text()
    imgs = re.findall(r'<img src="([^"]+)"', doc)
    assert imgs == ["comparison_accuracy.png", "comparison_sharpe.png", "comparison_reliability.png"]
    for name in imgs:
        assert (sweep / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # the verdict is the first thing in the body, and every member links to its run report
    body = doc.split("</h1>", 1)[1]
    assert body.index("No member of 7 beats all its baselines") < body.index("<table>")
    assert doc.count("/report.html'>") == 7
    csv = pl.read_csv(sweep / "comparison.csv")
    assert csv.height == 7 and csv["member"].to_list() == list(members)
    pooled = csv.row(6, named=True)
    assert pooled["symbols"] == "BTCUSDT+ETHUSDT+SOLUSDT" and pooled["model"] == "direction_lstm"
    assert pooled["best_baseline"] == "lightgbm" and pooled["baseline_accuracy"] == 0.5120
    assert pooled["diff_low"] == pytest.approx(0.515 - 0.512 - 0.021)
    assert pooled["accuracy_low"] == pytest.approx(0.515 - 0.021) and pooled["beats_all"] is False
    assert comparison_markdown(sweep) == (sweep / "comparison.md").read_text()


def test_sweep_without_desk_metrics_writes_no_comparison(tmp_path: Path) -> None:
    reg = {"model": {"mse": 1.2}, "run": {"val_loss": 1.1}}  # a regression or pretrain run
    sweep = _sweep(tmp_path, {"reg": reg})
    assert write_direction_comparison(sweep) is None
    assert not (sweep / "comparison.html").exists() and not (sweep / "comparison.csv").exists()
    assert comparison_markdown(sweep).startswith("**No member recorded desk metrics")


def test_table_script_prints_the_markdown(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    sweep = _sweep(tmp_path, {"BTC_lstm": _metrics(0.51), "BTC_transformer": _metrics(0.52)})
    main = runpy.run_path(str(ROOT / "benchmarks" / "direction_sweep_table.py"))["main"]
    assert main([str(sweep)]) == 0
    out = capsys.readouterr().out
    assert out == comparison_markdown(sweep)
    header = next(line for line in out.splitlines() if line.startswith("| member"))
    for col in ("accuracy", "bal. acc.", "AUC", "ECE raw", "ECE temp.", "best baseline", "CI low",
                "CI high", "net Sharpe", "audit"):
        assert f"| {col} |" in header
    assert main([str(tmp_path / "nowhere")]) == 2
    assert "not a sweep directory" in capsys.readouterr().err


# ------------------------------------------------------------------ the per-run report


def _binary_case(n: int = 960, seed: int = 0) -> tuple[np.ndarray, np.ndarray, pl.Series]:
    """Predictions right 70% of the time in hours 0-5 UTC and at chance otherwise."""
    rng = np.random.default_rng(seed)
    start = datetime(2025, 6, 1, tzinfo=UTC)
    ts = pl.datetime_range(start, start + timedelta(minutes=3 * (n - 1)), "3m", eager=True,
                           time_zone="UTC")
    y = rng.integers(0, 2, n)
    hour = ts.dt.hour().to_numpy()
    right = rng.random(n) < np.where(hour < 6, 0.7, 0.5)
    pred = np.where(right, y, 1 - y)
    p_up = np.where(pred == 1, 0.5 + rng.uniform(0.005, 0.05, n), 0.5 - rng.uniform(0.005, 0.05, n))
    return y, np.column_stack([1 - p_up, p_up]), ts


def test_run_report_accuracy_by_hour_and_probability_plots(tmp_path: Path) -> None:
    y, proba, ts = _binary_case()
    metrics = classification_metrics(y, proba, ["down", "up"])
    path = write_run_report(tmp_path, history=[{"epoch": 1, "train_loss": 0.69, "val_loss": 0.69}],
                            metrics=metrics, classes=["down", "up"], y_true=y, proba=proba,
                            baseline_table=None, test_ts=ts)
    imgs = set(re.findall(r'<img src="([^"]+)"', path.read_text()))
    assert {"accuracy_by_hour.png", "probability_histogram.png", "reliability.png"} <= imgs
    saved = json.loads((tmp_path / "metrics.json").read_text())
    by_hour = {r["hour"]: r for r in saved["accuracy_by_hour"]}
    assert sorted(by_hour) == list(range(24)) and sum(r["n"] for r in by_hour.values()) == len(y)
    hour = ts.dt.hour().to_numpy()
    right = proba.argmax(axis=1) == y
    for h in (0, 13):
        assert by_hour[h]["accuracy"] == pytest.approx(right[hour == h].mean())
    early = np.mean([by_hour[h]["accuracy"] for h in range(6)])
    late = np.mean([by_hour[h]["accuracy"] for h in range(6, 24)])
    assert early > late + 0.1  # the planted hours show
    rel = saved["reliability_up"]
    assert sum(rel["count"]) == len(y) and rel["mean_predicted"] == sorted(rel["mean_predicted"])
    lowest = np.argsort(proba[:, 1], kind="stable")[: rel["count"][0]]
    assert rel["observed"][0] == pytest.approx((y[lowest] == 1).mean())


def test_run_report_hour_needs_one_timestamp_per_row(tmp_path: Path) -> None:
    y, proba, ts = _binary_case(n=200)
    metrics = classification_metrics(y, proba, ["down", "up"])
    with pytest.raises(ValueError, match="199 timestamps for 200 test rows"):
        write_run_report(tmp_path, history=[], metrics=metrics, classes=["down", "up"], y_true=y,
                         proba=proba, baseline_table=None, test_ts=ts.head(199))


# ------------------------------------------------------------------ a real sweep


@pytest.mark.slow
def test_real_sweep_writes_the_comparison(tmp_path: Path) -> None:
    """Two direction members on the bundled BTC/USD minutes, one epoch each, with the audit:
    the sweep itself writes comparison.html, and each member's numbers are its metrics.json's."""
    from moola.sweeps import run_sweep

    tiny = {"data.stride": 15, "data.window": 16, "train.epochs": 1, "train.device": "cpu",
            "train.early_stopping": None, "baselines": ["majority", "persistence"], "audit": {}}
    doc = {"name": "dir_cmp", "command": "train", "base": str(ROOT / "configs" / "direction_demo.yaml"),
           "overrides": tiny, "parallel": 2, "out_dir": str(tmp_path / "sweeps"),
           "select": "run.val.balanced_accuracy:max",
           "variants": [{"name": "lstm", "set": {"preset": "direction_lstm"}},
                        {"name": "simple", "set": {"preset": "simple_lstm"}}]}
    matrix = tmp_path / "m.yaml"
    matrix.write_text(yaml.safe_dump(doc, sort_keys=False))
    res = run_sweep(matrix)
    assert not res.failed
    html = (res.sweep_dir / "comparison.html").read_text()
    assert "lstm" in html and "simple" in html
    assert (res.sweep_dir / "comparison_accuracy.png").is_file()
    assert (res.sweep_dir / "comparison_reliability.png").is_file()  # the runs recorded reliability_up
    rows = {r["member"]: r for r in comparison_rows(sweep_members(res.sweep_dir))}
    for st in res.runs:
        m = json.loads((res.sweep_dir / "runs" / st.spec.run_name / "metrics.json").read_text())
        row = rows[st.spec.label]
        assert row["accuracy"] == m["model"]["accuracy"]
        assert row["diff_low"] == m["test_ci"]["difference"]["low"]
        assert row["net_sharpe"] == m["economics"]["net_sharpe"]
        assert row["audit"] in ("passed (permuted, shifted)", m["audit"]["first_line"][len("audit: "):])
    assert "Direction comparison" in (res.sweep_dir / "report.html").read_text()
    first = (res.sweep_dir / "comparison.md").read_text().splitlines()[0]
    assert ("beat all their baselines" in first) or first.startswith("**No member of 2 beats")


def test_bybit_sweep_config_expands_to_the_seven_members() -> None:
    from moola.sweeps import expand_matrix, load_matrix

    path = ROOT / "configs" / "sweep_direction_bybit.yaml"
    matrix = load_matrix(path)
    specs = {s.label: s.config for s in expand_matrix(matrix, path)}
    per_symbol = {f"{s}_{m}": ([s], f"direction_{m}") for s in ("BTCUSDT", "ETHUSDT", "SOLUSDT")
                  for m in ("lstm", "transformer")}
    want = {**per_symbol, "pooled_lstm": (["BTCUSDT", "ETHUSDT", "SOLUSDT"], "direction_lstm")}
    assert {k: (c["data"]["symbols"], c["preset"]) for k, c in specs.items()} == want
    for c in specs.values():
        data = c["data"]
        assert (data["feature_set"], data["horizon"], data["direction"]) == ("crypto39", 5, "binary")
        assert c["baselines"] == ["majority", "persistence", "logistic", "lightgbm"]
        assert c["audit"] is not None and c["economics"] is not None
    assert (matrix.parallel, matrix.resources.cpus) == (2, 1)
