"""Declarative promotion gates, checked against a run directory's ``metrics.json``.

A gate on a measurement the run does not have (an audit that never ran, an economic check not
computed, a baseline not trained) FAILS with "not measured": nothing passes by being absent.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, model_serializer, model_validator

from moola.config import Config, ConfigError

__all__ = ["GateResult", "Gates", "Threshold", "evaluate_gates", "read_gates"]

Op = Literal[">=", ">", "<=", "<"]
_THRESHOLD = re.compile(r"^\s*(>=|<=|>|<)\s*([-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?)\s*$")
NOT_MEASURED = "not measured"
# metrics where smaller is better: "beats" compares them the other way round
LOWER_IS_BETTER = frozenset({"log_loss", "brier", "ece", "test_loss"})


class Threshold(Config):
    """``">= 0.68"`` in YAML (or ``{op: ">=", value: 0.68}``); written back as the string."""

    op: Op
    value: float = Field(allow_inf_nan=False)

    @model_validator(mode="before")
    @classmethod
    def _parse(cls, v: Any) -> Any:
        if isinstance(v, str):
            m = _THRESHOLD.match(v)
            if m is None:
                raise ValueError(f"{v!r} is not a threshold: write 'OP NUMBER' such as '>= 0.68' "
                                 "with OP one of >=, >, <=, <")
            return {"op": m.group(1), "value": float(m.group(2))}
        return v

    @model_serializer
    def _dump(self) -> str:
        short = f"{self.value:g}"  # "0.68", "1000"; the exact repr when :g would round
        return f"{self.op} {short if float(short) == self.value else repr(self.value)}"

    def holds(self, measured: float) -> bool:
        return {">=": measured >= self.value, ">": measured > self.value,
                "<=": measured <= self.value, "<": measured < self.value}[self.op]

    def margin(self, measured: float) -> float:
        """How far inside (> 0) or outside (< 0) the threshold ``measured`` is."""
        return measured - self.value if self.op in (">=", ">") else self.value - measured

    def __str__(self) -> str:
        return self._dump()


class Gates(Config):
    """A gate file (docs/registry.md): every key is one or more gates, all must pass."""

    # thresholds on test metrics of metrics.json's "model" section (a dotted key such as
    # "run.test_calibrated.ece" reads from the top of metrics.json instead)
    metrics: dict[str, Threshold] = Field(default_factory=dict)
    min_test_rows: int | None = Field(default=None, ge=1)
    # the model's `beats_metric` must exceed each baseline's on the same test rows
    beats: list[str] = Field(default_factory=list)
    beats_metric: str = "accuracy"
    reject_collapsed: bool = False  # fail a model that predicts one class on the test split
    audit: Literal["passed"] | None = None  # the plausibility audit (permuted/shifted labels)
    net_sharpe: Threshold | None = None  # annualised Sharpe after costs (economic check)


def read_gates(path: str | Path) -> Gates:
    """A gates YAML file; a bad key or threshold is a ConfigError naming the file and key."""
    return Gates.from_yaml(path)


@dataclass(frozen=True)
class GateResult:
    gate: str
    required: str
    measured: str
    passed: bool
    margin: float | None  # > 0 inside the threshold; None when not measured or not numeric
    note: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {"gate": self.gate, "required": self.required, "measured": self.measured,
                "passed": self.passed, "margin": self.margin, "note": self.note}


def _number(v: Any) -> float | None:
    if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(float(v)):
        return None
    return float(v)


def _numeric_keys(section: dict[str, Any]) -> list[str]:
    return sorted(k for k, v in section.items()
                  if (v is None and not k.endswith("_reason")) or _number(v) is not None)


def _lookup(metrics: dict[str, Any], key: str, source: Path) -> Any:
    """A test metric: ``model.KEY``, or a dotted path from the top of metrics.json. An unknown
    key is an error listing what the run has; a key present with no value is "not measured"."""
    model = metrics.get("model") or {}
    if "." not in key:
        if key not in model:
            raise ConfigError([f"metrics.{key}: the run has no test metric {key!r}; it has "
                               f"{', '.join(_numeric_keys(model)) or 'none'}"], str(source))
        return model[key]
    node: Any = metrics
    for i, part in enumerate(key.split(".")):
        if not isinstance(node, dict) or part not in node:
            here = ".".join(key.split(".")[:i]) or "metrics.json"
            have = sorted(node) if isinstance(node, dict) else []
            raise ConfigError([f"metrics.{key}: {here} has no key {part!r}; it has "
                               f"{', '.join(map(str, have)) or 'nothing'}"], str(source))
        node = node[part]
    return node


def _threshold_gate(gate: str, th: Threshold, value: Any) -> GateResult:
    v = _number(value)
    if v is None:
        return GateResult(gate, str(th), NOT_MEASURED, False, None)
    return GateResult(gate, str(th), f"{v:.4g}", th.holds(v), th.margin(v))


def _baseline_value(metrics: dict[str, Any], name: str, metric: str) -> Any:
    section = (metrics.get("baseline_metrics") or {}).get(name)
    if isinstance(section, dict) and metric in section:
        return section[metric]
    for row in metrics.get("baselines") or []:
        if row.get("model") == name and row.get("kind") == "baseline":
            return row.get(metric)
    return None


def _baseline_ci(metrics: dict[str, Any], name: str, metric: str) -> tuple[float, str] | None:
    """(lower bound, method) of the CI of model minus baseline, when the run measured one:
    ``metrics.json["vs_baselines"][NAME]`` with ``metric``, ``ci_low`` and ``ci_method``."""
    entry = (metrics.get("vs_baselines") or {}).get(name)
    if not isinstance(entry, dict) or entry.get("metric", "accuracy") != metric:
        return None
    lo = _number(entry.get("ci_low"))
    return None if lo is None else (lo, str(entry.get("ci_method", "bootstrap")))


def _beats_gate(metrics: dict[str, Any], name: str, metric: str, source: Path) -> GateResult:
    gate = f"beats {name}"
    mine = _number(_lookup(metrics, metric, source))
    theirs = _number(_baseline_value(metrics, name, metric))
    if mine is None or theirs is None:
        what = "the model's" if mine is None else f"baseline {name!r}"
        trained = sorted((metrics.get("baseline_metrics") or {}).keys())
        return GateResult(gate, f"{metric} > {name}'s", NOT_MEASURED, False, None,
                          f"{what} {metric} is missing "
                          f"(baselines in the run: {', '.join(trained) or 'none'})")
    sign = -1.0 if metric.split(".")[-1] in LOWER_IS_BETTER else 1.0
    ci = _baseline_ci(metrics, name, metric)
    if ci is not None:
        lo, method = ci
        return GateResult(gate, f"{metric}: CI low of (model - {name}) > 0", f"CI low {lo:+.4f}",
                          lo > 0, lo, f"lower bound of the {method} CI of the difference")
    diff = sign * (mine - theirs)
    return GateResult(gate, f"{metric} > {name}'s ({theirs:.4g})", f"{mine:.4g}", diff > 0, diff,
                      "plain difference (the run has no CI of it)")


def evaluate_gates(run_dir: str | Path, gates: Gates, *,
                   gates_source: str | Path = "gates") -> list[GateResult]:
    """One result per gate, in the file's order; raises ConfigError for a metric the run lacks."""
    run_dir = Path(run_dir)
    path = run_dir / "metrics.json"
    if not path.is_file():
        raise FileNotFoundError(f"{run_dir}: no metrics.json (is it a finished `moola train` run directory?)")
    metrics: dict[str, Any] = json.loads(path.read_text())
    source = Path(gates_source)
    out = [_threshold_gate(key, th, _lookup(metrics, key, source)) for key, th in gates.metrics.items()]
    if gates.min_test_rows is not None:
        rows = _number((metrics.get("model") or {}).get("n_samples"))
        out.append(_threshold_gate("min_test_rows", Threshold(op=">=", value=gates.min_test_rows), rows))
    if gates.beats:
        _lookup(metrics, gates.beats_metric, source)  # an unknown metric is an error, not a fail
        out += [_beats_gate(metrics, b, gates.beats_metric, source) for b in gates.beats]
    if gates.reject_collapsed:
        collapsed = (metrics.get("verdict") or {}).get("collapsed")
        if not isinstance(collapsed, bool):
            out.append(GateResult("not collapsed", "collapsed: false", NOT_MEASURED, False, None))
        else:
            out.append(GateResult("not collapsed", "collapsed: false", f"collapsed: {str(collapsed).lower()}",
                                  not collapsed, None))
    if gates.audit is not None:
        audit = metrics.get("audit")
        passed = audit.get("passed") if isinstance(audit, dict) else None
        if not isinstance(passed, bool):
            out.append(GateResult("audit", "passed", NOT_MEASURED, False, None,
                                  "the run has no plausibility audit (metrics.json 'audit.passed')"))
        else:
            summary = audit.get("first_line", "") if isinstance(audit, dict) else ""
            out.append(GateResult("audit", "passed", "passed" if passed else "FAILED", passed, None,
                                  str(summary)))
    if gates.net_sharpe is not None:
        econ = metrics.get("economics")
        value = econ.get("net_sharpe") if isinstance(econ, dict) else None
        res = _threshold_gate("net_sharpe", gates.net_sharpe, value)
        if not res.passed and res.measured == NOT_MEASURED:
            res = GateResult(res.gate, res.required, res.measured, False, None,
                             "the run has no economic check (metrics.json 'economics.net_sharpe')")
        out.append(res)
    return out
