"""Declarative promotion gates, checked against a run directory's ``metrics.json``.

A gate on a measurement the run does not have (an audit that never ran, an economic check not
computed, a baseline not trained) FAILS with "not measured": nothing passes by being absent.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, model_serializer, model_validator

from moola._io import read_json
from moola.config import Config, ConfigError
from moola.evaluation import LOWER_IS_BETTER
from moola.evaluation.economics import DeflatedSharpe, deflated_sharpe_ratio
from moola.training.manifest import ManifestError, read_manifest, runs_on_test_segment, segment_key

__all__ = ["GateResult", "Gates", "SegmentTrials", "Threshold", "evaluate_gates", "read_gates",
           "segment_trials"]

Op = Literal[">=", ">", "<=", "<"]
_THRESHOLD = re.compile(r"^\s*(>=|<=|>|<)\s*([-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?)\s*$")
NOT_MEASURED = "not measured"
# metrics where smaller is better: "beats" compares them the other way round


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
    # probability (0..1) that the true Sharpe beats the best of the test segment's trials by
    # luck: the deflated Sharpe ratio (docs/registry.md, "Multiple testing")
    deflated_sharpe: Threshold | None = None


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


@dataclass(frozen=True)
class SegmentTrials:
    """How often a run's test segment has been looked at, and the Sharpe deflated for it.

    ``runs``: the run directories (this one included) whose manifest has the same
    :func:`~moola.training.manifest.segment_key`; ``own_evaluations``: this run's recorded
    looks (``manifest.test_evaluations``: its training, each ``moola evaluate`` of test).
    ``n_trials`` = configurations + this run's looks beyond the first: every extra look could
    have been followed by a change, so it counts as one more trial."""

    key: str
    runs: list[Path]
    own_evaluations: int
    trial_sharpes: list[float] = field(default_factory=list)  # economics.net_sharpe of ``runs``
    deflated: DeflatedSharpe | None = None
    reason: str = ""  # why ``deflated`` is None, or what it assumed

    @property
    def n_configurations(self) -> int:
        return len(self.runs)

    @property
    def n_trials(self) -> int:
        return self.n_configurations + max(0, self.own_evaluations - 1)

    def summary(self) -> str:
        looks = f"this run looked at it {self.own_evaluations} time(s)"
        return (f"test segment {self.key} evaluated by {self.n_configurations} configuration(s) "
                f"({self.n_trials} trial(s); {looks})")


def _econ_moments(econ: dict[str, Any]) -> tuple[int | None, float, float, str]:
    """(n_obs, skew, kurtosis, note) of the per-symbol test backtests: the mean over symbols
    (the headline Sharpe is the mean over symbols too); normal moments when a run predates them."""
    models: list[dict[str, Any]] = []
    for v in (econ.get("symbols") or {}).values():
        m = v.get("model") if isinstance(v, dict) else None
        if isinstance(m, dict) and _number(m.get("n_periods")) is not None:
            models.append(m)
    if not models:
        return None, 0.0, 3.0, ""
    n_obs = int(sum(float(m["n_periods"]) for m in models) / len(models))
    skews = [_number(m.get("skew")) for m in models]
    kurts = [_number(m.get("kurtosis")) for m in models]
    if any(v is None for v in skews + kurts):
        return n_obs, 0.0, 3.0, "normal returns assumed (the run has no skew/kurtosis)"
    return (n_obs, sum(v for v in skews if v is not None) / len(models),
            sum(v for v in kurts if v is not None) / len(models), "")


def _net_sharpe(run_dir: Path) -> float | None:
    try:
        econ = read_json(run_dir / "metrics.json").get("economics")
    except (OSError, ValueError):
        return None
    return _number(econ.get("net_sharpe")) if isinstance(econ, dict) else None


def segment_trials(run_dir: str | Path, roots: Sequence[str | Path] | None = None) -> SegmentTrials:
    """The test segment's use (:class:`SegmentTrials`) and the deflated Sharpe of this run's
    economic check, from its metrics.json and the runs found beside it
    (:func:`~moola.training.manifest.runs_on_test_segment`, ``roots`` as there).

    The variance of the trials' Sharpes is the larger of the sample variance of the found runs'
    net Sharpes (two or more needed) and the null sampling variance ``1 / (n_obs - 1)``: a few
    similar variants cannot claim less noise than a single Sharpe estimate carries."""
    run_dir = Path(run_dir)
    manifest = read_manifest(run_dir)
    runs = runs_on_test_segment(run_dir, roots)
    sharpes = [v for v in (_net_sharpe(d) for d in runs) if v is not None]
    seg = SegmentTrials(segment_key(manifest), runs, len(manifest.test_evaluations), sharpes)
    path = run_dir / "metrics.json"
    metrics = read_json(path) if path.is_file() else {}
    econ = metrics.get("economics")
    sharpe = _number(econ.get("net_sharpe")) if isinstance(econ, dict) else None
    ppy = _number(econ.get("periods_per_year")) if isinstance(econ, dict) else None
    if not isinstance(econ, dict) or sharpe is None or ppy is None or ppy <= 0:
        return replace(seg, reason="the run has no economic check (economics.net_sharpe, periods_per_year)")
    n_obs, skew, kurt, note = _econ_moments(econ)
    if n_obs is None or n_obs < 2:
        return replace(seg, reason="the economic check has fewer than 2 test periods per symbol")
    var: float | None = None
    if len(sharpes) >= 2:
        mean = sum(sharpes) / len(sharpes)
        trial_var = sum((v - mean) ** 2 for v in sharpes) / (len(sharpes) - 1)
        var = trial_var if trial_var / ppy > 1.0 / (n_obs - 1) else None
    dsr = deflated_sharpe_ratio(sharpe, seg.n_trials, n_obs, skew, kurt,
                                sharpe_variance_across_trials=var, periods_per_year=ppy)
    return replace(seg, deflated=dsr, reason=note)


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


def _segment_or_none(run_dir: Path) -> SegmentTrials | None:
    try:
        return segment_trials(run_dir)
    except (ManifestError, OSError, ValueError):
        return None


def evaluate_gates(run_dir: str | Path, gates: Gates, *, gates_source: str | Path = "gates",
                   segment: SegmentTrials | None = None) -> list[GateResult]:
    """One result per gate, in the file's order; raises ConfigError for a metric the run lacks.
    ``segment`` (default: :func:`segment_trials` of the run, when an economic gate needs it)
    gives the deflated Sharpe."""
    run_dir = Path(run_dir)
    path = run_dir / "metrics.json"
    if not path.is_file():
        raise FileNotFoundError(f"{run_dir}: no metrics.json (is it a finished `moola train` run directory?)")
    metrics: dict[str, Any] = read_json(path)
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
        else:
            segment = segment or _segment_or_none(run_dir)
            if segment is not None and segment.deflated is not None:
                d = segment.deflated
                res = GateResult(res.gate, res.required, res.measured, res.passed, res.margin,
                                 f"measured Sharpe; deflated for {d.n_trials} trial(s): "
                                 f"P(true Sharpe > {d.expected_max_sharpe:.3g}) = {d.probability:.3f}")
        out.append(res)
    if gates.deflated_sharpe is not None:
        segment = segment or _segment_or_none(run_dir)
        if segment is None or segment.deflated is None:
            why = segment.reason if segment is not None else "the run has no readable manifest"
            out.append(GateResult("deflated_sharpe", str(gates.deflated_sharpe), NOT_MEASURED, False,
                                  None, why))
        else:
            d = segment.deflated
            res = _threshold_gate("deflated_sharpe", gates.deflated_sharpe, d.probability)
            note = (f"net Sharpe {d.sharpe:.3g} vs expected best of {d.n_trials} null trial(s) "
                    f"{d.expected_max_sharpe:.3g} ({d.n_obs} periods, V from {d.variance_from})")
            out.append(GateResult(res.gate, res.required, res.measured, res.passed, res.margin,
                                  note + (f"; {segment.reason}" if segment.reason else "")))
    return out
