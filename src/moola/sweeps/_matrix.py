"""Experiment matrices: a base config plus a grid and/or named variants, expanded into runs.

A run is identified by the hash of its resolved config (name and out_dir excluded), so
rerunning a sweep recognises finished work even if the matrix file was reordered.
"""

from __future__ import annotations

import copy
import itertools
import math
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, NonNegativeFloat, field_validator, model_validator

from moola.config import MAX_RUNS, Config, ConfigError, Workers, config_hash, read_yaml_mapping, set_dotted
from moola.refs import sweeps_root

__all__ = ["COMMANDS", "SELECTABLE", "MatrixConfig", "Resources", "RunSpec", "Selection", "Variant",
           "expand_matrix", "load_matrix", "recorded_metrics", "selection_problem", "unrecorded_selection"]

Command = Literal["train", "pretrain", "oof", "rank"]
COMMANDS: tuple[str, ...] = ("train", "pretrain", "oof", "rank")
# where each command's metrics.json keeps the validation loss of the kept model
DEFAULT_SELECT = {"train": "run.val_loss:min", "pretrain": "val_loss:min", "rank": "val_rank_ic:max"}
# The metrics.json keys a sweep may select on, per command: validation numbers only (``*`` is
# any one metric name). Choosing the best run by a test number (train's ``model.*`` and
# ``run.test_calibrated.*``) would make that run's test score an optimistic estimate. Every
# number an oof run records is out-of-fold *test* performance, so oof has none.
SELECTABLE: dict[str, tuple[str, ...]] = {
    "train": ("run.val_loss", "run.val.*"),
    "pretrain": ("val_loss", "val_masked_mse"),
    "oof": (),
    "rank": ("val_rank_ic", "val.*.*"),  # val.<horizon>.<metric>, e.g. val.5.rank_ic_mean
}


def selection_problem(command: str, metric: str | None) -> str | None:
    """Why ``metric`` may not select runs of ``command`` (naming the keys that may), or None."""
    allowed = SELECTABLE.get(command, ())
    if metric is not None and any(
        re.fullmatch(re.escape(p).replace(r"\*", r"[^.]+"), metric) for p in allowed
    ):
        return None
    head = f"select {metric!r}: " if metric is not None else ""
    if not allowed:
        return (f"{head}{command} runs record no validation metric (every number in their "
                f"metrics.json is out-of-fold test performance), so a {command} sweep has nothing "
                f"it may select on; selectable keys exist for train ({', '.join(SELECTABLE['train'])}) "
                f"and pretrain ({', '.join(SELECTABLE['pretrain'])})")
    star = " (* is one metric name, e.g. run.val.balanced_accuracy)" if any("*" in p for p in allowed) else ""
    return (f"{head}a sweep selects on validation metrics only (a test number would leak the test "
            f"split into the choice); for {command}: {', '.join(allowed)}{star}")


def recorded_metrics(command: str, config: dict[str, Any]) -> tuple[str, ...] | None:
    """The selectable metrics.json keys a run of ``config`` records, from the names its pipeline
    declares (``{i}``: any number); None where ``SELECTABLE`` already lists them exactly."""
    if command == "train":
        from moola.pipelines.train import RunConfig, val_metric_names

        return ("run.val_loss", *(f"run.val.{n}" for n in val_metric_names(RunConfig.from_dict(config))))
    if command == "rank":
        from moola.evaluation.ranking import RANKING_METRIC_NAMES
        from moola.pipelines.rank import RankConfig

        horizons = RankConfig.from_dict(config).data.horizons
        return ("val_rank_ic", *(f"val.{h}.{n}" for h in horizons for n in RANKING_METRIC_NAMES))
    return None


def unrecorded_selection(command: str, metric: str, specs: list[RunSpec]) -> str | None:
    """Why ``metric`` would find no value in some run of the sweep (naming the keys it does
    record), or None: checked before training, not after every run has finished."""
    from moola.training.objectives import metric_name_matches

    for spec in specs:
        names = recorded_metrics(command, spec.config)
        if names is not None and not metric_name_matches(metric, names):
            shown = ", ".join(n.replace("{i}", "<i>") for n in names)
            note = " (<i> is a number)" if "{i}" in "".join(names) else ""
            return (f"select {metric!r}: run {spec.label} would not record it{note}; its metrics.json "
                    f"records {shown}")
    return None


def command_entry(command: str) -> tuple[type[Config], Callable[..., Any]]:
    """The typed config a command takes and the pipeline function that runs it (an explicit
    table, no dotted-path imports); every function takes ``console``, ``show_progress`` and
    ``tracking``, and all but ``run_oof`` take ``callbacks``."""
    if command == "train":
        from moola.pipelines.train import RunConfig, run_train

        return RunConfig, run_train
    if command == "pretrain":
        from moola.pipelines.pretrain import PretrainConfig, run_pretrain

        return PretrainConfig, run_pretrain
    if command == "oof":
        from moola.pipelines.oof import OOFConfig, run_oof

        return OOFConfig, run_oof
    if command == "rank":
        from moola.pipelines.rank import RankConfig, run_rank_train

        return RankConfig, run_rank_train
    raise ValueError(f"unknown sweep command {command!r}; one of {', '.join(COMMANDS)}")


@dataclass(frozen=True)
class Selection:
    """``metric:min|max``: a dotted path into each run's metrics.json and a direction."""

    metric: str
    mode: Literal["min", "max"]

    @classmethod
    def parse(cls, text: str) -> Selection:
        metric, _, mode = text.rpartition(":")
        if not metric or mode not in ("min", "max"):
            raise ValueError(f"selection {text!r} is not METRIC:min or METRIC:max (e.g. val_loss:min)")
        return cls(metric, mode)  # type: ignore[arg-type]

    def __str__(self) -> str:
        return f"{self.metric}:{self.mode}"

    def value(self, metrics: dict[str, Any]) -> float | None:
        """The metric from a metrics.json mapping; None if the run did not record it."""
        node: Any = metrics
        for part in self.metric.split("."):
            if not isinstance(node, dict) or part not in node:
                return None
            node = node[part]
        return float(node) if isinstance(node, int | float) and not isinstance(node, bool) else None

    def better(self, a: float, b: float) -> bool:
        return a < b if self.mode == "min" else a > b


class Resources(Config):
    """What one run needs: CPU threads (also its torch thread count) and a GPU fraction."""

    cpus: Workers = 1
    gpus: NonNegativeFloat = 0.0


class Variant(Config):
    """A named set of dotted-key overrides (``set: {mask.strategy: block, train.epochs: 4}``)."""

    name: str = Field(pattern=r"^[A-Za-z0-9_.=+-]+$")  # part of directory names
    set: dict[str, Any] = Field(default_factory=dict)
    resources: Resources | None = None  # this variant's needs; default: the matrix's


class MatrixConfig(Config):
    """A sweep: ``base`` (a config file of ``command``, path relative to the matrix file) plus
    ``grid`` (cartesian product) and/or ``variants`` (named); with both, every variant x grid."""

    name: str = Field(pattern=r"^[A-Za-z0-9_.-]+$")  # the sweep's directory name
    command: Command
    base: str | dict[str, Any]
    overrides: dict[str, Any] = Field(default_factory=dict)  # applied to every run
    grid: dict[str, list[Any]] = Field(default_factory=dict)
    variants: list[Variant] = Field(default_factory=list)
    select: str | None = None  # METRIC:min|max; default per command (validation loss)
    resources: Resources = Resources()
    parallel: Workers = 1
    out_dir: str | None = None  # default: MOOLA_SWEEPS_DIR or runs/sweeps

    @field_validator("grid")
    @classmethod
    def _nonempty(cls, v: dict[str, list[Any]]) -> dict[str, list[Any]]:
        empty = [k for k, vals in v.items() if not vals]
        if empty:
            raise ValueError(f"grid keys with no values: {', '.join(empty)}")
        return v

    @model_validator(mode="after")
    def _checks(self) -> MatrixConfig:
        names = [v.name for v in self.variants]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise ValueError(f"variant names must be unique: {', '.join(dup)}")
        n_runs = max(len(self.variants), 1) * math.prod(len(v) for v in self.grid.values())
        if n_runs > MAX_RUNS:
            raise ValueError(f"grid x variants make {n_runs:,} runs; a sweep may have at most {MAX_RUNS:,} "
                             "(split it into several sweeps)")
        if self.select is not None:
            problem = selection_problem(self.command, Selection.parse(self.select).metric)
            if problem:
                raise ValueError(problem)
        elif self.command not in DEFAULT_SELECT:
            raise ValueError(selection_problem(self.command, None))
        return self

    def selection(self, override: str | None = None) -> Selection:
        """The matrix's selection, or ``override`` (``--select``), checked the same way."""
        if override is None:
            return Selection.parse(self.select or DEFAULT_SELECT[self.command])
        try:
            sel = Selection.parse(override)
        except ValueError as e:
            raise ConfigError([str(e)], "--select") from None
        problem = selection_problem(self.command, sel.metric)
        if problem:
            raise ConfigError([problem], "--select")
        return sel

    def sweep_dir(self) -> Path:
        return Path(self.out_dir) / self.name if self.out_dir else sweeps_root() / self.name


@dataclass
class RunSpec:
    """One run of a sweep: its label, what it overrides and its fully validated config."""

    label: str  # variant name and/or grid values; unique within the sweep
    overrides: dict[str, Any]  # what distinguishes this run from the base
    config: dict[str, Any]  # the validated config (name/out_dir set by the runner)
    key: str  # config hash: the identity used to skip finished runs
    resources: Resources = field(default_factory=lambda: Resources())  # not part of the identity

    @property
    def run_name(self) -> str:
        return f"{self.label}-{self.key[:8]}"


def load_matrix(path: str | Path) -> MatrixConfig:
    return MatrixConfig.from_yaml(path)


def _label_for(values: dict[str, Any]) -> str:
    parts = []
    for k, v in values.items():
        short = k.split(".")[-1]
        parts.append(f"{short}={v}")
    label = ",".join(parts)
    return re.sub(r"[^A-Za-z0-9_.=,+-]", "_", label)[:80] or "base"


def base_dict(matrix: MatrixConfig, matrix_path: Path) -> dict[str, Any]:
    """The base config as a mapping (inline, or read from a path relative to the matrix file)."""
    if isinstance(matrix.base, dict):
        return dict(matrix.base)
    base_path = Path(matrix.base)
    if not base_path.is_absolute():
        base_path = matrix_path.parent / base_path
    if not base_path.is_file():
        raise ConfigError([f"base: {base_path} does not exist"], str(matrix_path))
    return read_yaml_mapping(base_path)


def expand_matrix(matrix: MatrixConfig, matrix_path: str | Path) -> list[RunSpec]:
    """Every run of the matrix, validated; all invalid combinations are reported at once."""
    matrix_path = Path(matrix_path)
    cls, _ = command_entry(matrix.command)
    base = base_dict(matrix, matrix_path)
    keys = list(matrix.grid)
    combos = [dict(zip(keys, vals, strict=True)) for vals in itertools.product(*matrix.grid.values())]
    variants: list[Variant | None] = list(matrix.variants) or [None]
    problems: list[str] = []
    specs: list[RunSpec] = []
    for variant in variants:
        for combo in combos:
            over = {**matrix.overrides, **(variant.set if variant else {}), **combo}
            label = "+".join(p for p in ((variant.name if variant else ""),
                                         (_label_for(combo) if combo else "")) if p) or "base"
            data = copy.deepcopy(base)
            bad = [p for k, v in over.items() if (p := set_dotted(data, k, v))]
            if bad:
                problems += [f"run {label}: {p}" for p in bad]
                continue
            try:
                cfg = cls.from_dict(data, source=f"{matrix_path} run {label}")
            except ConfigError as e:
                problems += [f"run {label}: {p}" for p in e.problems]
                continue
            res = variant.resources if variant and variant.resources else matrix.resources
            specs.append(RunSpec(label=label, overrides=over, config=cfg.to_dict(), key=config_hash(cfg),
                                 resources=res))
    if problems:
        raise ConfigError(problems, str(matrix_path))
    labels = [s.label for s in specs]
    if len(set(labels)) != len(labels):
        raise ConfigError(["two runs got the same label; give variants distinct names"], str(matrix_path))
    keys_seen: dict[str, str] = {}
    for s in specs:
        if s.key in keys_seen:
            raise ConfigError([f"runs {keys_seen[s.key]} and {s.label} have identical configs"],
                              str(matrix_path))
        keys_seen[s.key] = s.label
    return specs
