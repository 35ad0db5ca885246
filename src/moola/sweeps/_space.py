"""Search spaces for ``moola tune``: a typed YAML file of dotted config keys and how to draw them.

::

    params:
      train.optimizer.lr: {float: [1.0e-4, 1.0e-2], log: true}
      train.batch_size: {choice: [64, 128, 256]}
      model.encoder.d_model: {choice: [32, 64, 128]}
      model.encoder.heads: {choice: [1, 2, 4, 8], divides: model.encoder.d_model}
      model.direction.mlp: {layers: {int: [1, 3]}, size: {int: [16, 128], log: true}}
      model.encoder.dropout: {float: [0.0, 0.3], when: {model.encoder.kind: transformer}}

Entries are drawn in file order. ``when`` compares against values already drawn for the trial,
else the base config; ``divides`` keeps only the choices that divide the drawn (or base) value
and names the Optuna parameter after that value (``model.encoder.heads|d_model=64``), so one
name always has one fixed distribution. ``layers``/``size`` draw a depth
(``KEY.depth``) and then one size per layer (``KEY.0``, ``KEY.1`` ...).
"""

from __future__ import annotations

import copy
import hashlib
import json
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Self

from pydantic import Discriminator, Field, Tag, ValidationError, model_validator

from moola.config import Config, ConfigError, read_yaml_mapping, set_dotted

if TYPE_CHECKING:
    import optuna

    from moola.pipelines.rank import RankConfig
    from moola.pipelines.train import RunConfig

__all__ = [
    "ChoiceParam",
    "FloatParam",
    "IntParam",
    "ListParam",
    "SearchSpace",
    "apply_values",
    "check_space",
    "load_space",
    "trial_config",
]

KINDS = ("float", "int", "choice", "layers")
Scalar = bool | int | float | str | None
_MISSING = object()


def lookup(data: dict[str, Any], key: str) -> Any:
    """The value at dotted ``key`` in nested dicts, or ``_MISSING``."""
    node: Any = data
    for part in key.split("."):
        if not isinstance(node, dict) or part not in node:
            return _MISSING
        node = node[part]
    return node


# --- distributions ------------------------------------------------------------------------------


class FloatRange(Config):
    """A float drawn from ``[low, high]``, optionally on a log scale or a grid of ``step``."""

    bounds: tuple[float, float] = Field(alias="float")
    log: bool = False
    step: float | None = Field(None, gt=0)

    @model_validator(mode="after")
    def _check(self) -> Self:
        low, high = self.bounds
        if low > high:
            raise ValueError(f"low {low} is above high {high}")
        if self.log and low <= 0:
            raise ValueError(f"log scale needs low > 0 (got {low})")
        if self.log and self.step is not None:
            raise ValueError("log and step cannot be combined")
        return self

    def draw(self, trial: optuna.Trial, name: str) -> float:
        low, high = self.bounds
        return trial.suggest_float(name, low, high, log=self.log, step=self.step)


class IntRange(Config):
    """An integer drawn from ``[low, high]`` (both included), optionally log-scaled or stepped."""

    bounds: tuple[int, int] = Field(alias="int")
    log: bool = False
    step: int = Field(1, ge=1)

    @model_validator(mode="after")
    def _check(self) -> Self:
        low, high = self.bounds
        if low > high:
            raise ValueError(f"low {low} is above high {high}")
        if self.log and low < 1:
            raise ValueError(f"log scale needs low >= 1 (got {low})")
        if self.log and self.step != 1:
            raise ValueError("log and step cannot be combined")
        return self

    def draw(self, trial: optuna.Trial, name: str) -> int:
        low, high = self.bounds
        return trial.suggest_int(name, low, high, log=self.log, step=self.step)

    def values(self) -> list[int]:
        low, high = self.bounds
        return list(range(low, high + 1, self.step))


class Choices(Config):
    """One of a list of scalars (Optuna stores categorical choices as scalars only)."""

    choice: list[Scalar] = Field(min_length=1)

    @model_validator(mode="after")
    def _unique(self) -> Self:
        seen = [json.dumps(c) for c in self.choice]
        if len(set(seen)) != len(seen):
            raise ValueError(f"choices repeat: {self.choice}")
        return self

    def draw(self, trial: optuna.Trial, name: str) -> Any:
        return trial.suggest_categorical(name, self.choice)

    def values(self) -> list[Any]:
        return list(self.choice)


def _tag(kinds: tuple[str, ...]) -> Any:
    """A discriminator picking the class by which kind key (``float``, ``int``...) is present."""

    def pick(v: Any) -> str | None:
        if isinstance(v, dict):
            found = [k for k in kinds if k in v]
            return found[0] if len(found) == 1 else None
        for k, cls in _CLASSES.items():
            if isinstance(v, cls):
                return k
        return None

    return Discriminator(pick, custom_error_type="param_kind",
                         custom_error_message=f"needs exactly one of {', '.join(kinds)}")


Depth = Annotated[Annotated[IntRange, Tag("int")] | Annotated[Choices, Tag("choice")],
                  _tag(("int", "choice"))]
Size = Annotated[Annotated[FloatRange, Tag("float")] | Annotated[IntRange, Tag("int")]
                 | Annotated[Choices, Tag("choice")], _tag(("float", "int", "choice"))]


class _Conditional(Config):
    # key -> value, or a list of values (any of them); every key must hold
    when: dict[str, Any] | None = None


class FloatParam(FloatRange, _Conditional):
    """A float config value."""


class IntParam(IntRange, _Conditional):
    """An integer config value."""


class ChoiceParam(Choices, _Conditional):
    """A categorical config value; ``divides`` keeps only divisors of another key's value."""

    divides: str | None = None

    @model_validator(mode="after")
    def _integers(self) -> Self:
        if self.divides is not None:
            bad = [c for c in self.choice if isinstance(c, bool) or not isinstance(c, int) or c < 1]
            if bad:
                raise ValueError(f"with divides, every choice must be a positive integer (got {bad})")
        return self

    def draw_for(self, trial: optuna.Trial, key: str, current: dict[str, Any]) -> Any:
        if self.divides is None:
            return self.draw(trial, key)
        total = lookup(current, self.divides)
        if isinstance(total, bool) or not isinstance(total, int) or total < 1:
            raise ConfigError([f"{key}: divides {self.divides}, which is not a positive integer "
                               f"(got {None if total is _MISSING else total!r})"], "search space")
        allowed = [c for c in self.choice if isinstance(c, int) and total % c == 0]
        if not allowed:
            raise ConfigError([f"{key}: no choice of {self.choice} divides {self.divides}={total}"],
                              "search space")
        # one Optuna name per divisor value: a name's choices never change between trials
        return trial.suggest_categorical(divided_name(key, self.divides, total), allowed)


class ListParam(_Conditional):
    """A list of variable length: draw ``layers`` (the depth), then one ``size`` per layer."""

    layers: Depth
    size: Size

    @model_validator(mode="after")
    def _depth(self) -> Self:
        depths = self.layers.values()
        bad = [d for d in depths if isinstance(d, bool) or not isinstance(d, int) or d < 0]
        if bad:
            raise ValueError(f"layers must be non-negative integers (got {bad})")
        return self

    def draw_for(self, trial: optuna.Trial, key: str) -> list[Any]:
        depth = self.layers.draw(trial, f"{key}.depth")
        return [self.size.draw(trial, f"{key}.{i}") for i in range(depth)]


_CLASSES: dict[str, type[Config]] = {"float": FloatRange, "int": IntRange, "choice": Choices,
                                     "layers": ListParam}

ParamSpec = Annotated[
    Annotated[FloatParam, Tag("float")] | Annotated[IntParam, Tag("int")]
    | Annotated[ChoiceParam, Tag("choice")] | Annotated[ListParam, Tag("layers")],
    _tag(KINDS),
]


def divided_name(key: str, divides: str, total: int) -> str:
    """The Optuna name of a ``divides`` parameter for one divisor value."""
    return f"{key}|{divides.rsplit('.', 1)[-1]}={total}"


# --- the space ----------------------------------------------------------------------------------


class SearchSpace(Config):
    """Dotted RunConfig keys -> how to draw them, in the order they are drawn."""

    params: dict[str, ParamSpec] = Field(min_length=1)

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str | None = None) -> Self:
        """Validate, listing every bad entry by key: field problems and cross-references alike."""
        problems: list[str] = []
        space = None
        try:
            space = cls.model_validate(data)
        except ValidationError as e:
            problems += _space_problems(e)
        problems += _reference_problems(data)
        if problems:
            raise ConfigError(problems, source)
        assert space is not None
        return space

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json", by_alias=True, exclude_defaults=True)

    def digest(self) -> str:
        """12 hex digits naming the space (stored on the study to notice a changed file)."""
        text = json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(text.encode()).hexdigest()[:12]

    def sample(self, trial: optuna.Trial, base: dict[str, Any]) -> dict[str, Any]:
        """Draw every active entry for ``trial``: dotted key -> config value (list for depth)."""
        current = copy.deepcopy(base)
        values: dict[str, Any] = {}
        for key, spec in self.params.items():
            if spec.when and not condition_holds(spec.when, current):
                continue
            if isinstance(spec, ListParam):
                value: Any = spec.draw_for(trial, key)
            elif isinstance(spec, ChoiceParam):
                value = spec.draw_for(trial, key, current)
            else:
                value = spec.draw(trial, key)
            values[key] = value
            problem = set_dotted(current, key, copy.deepcopy(value))
            if problem:
                raise ConfigError([problem], "search space")
        return values

    def decode(self, params: dict[str, Any]) -> dict[str, Any]:
        """Optuna parameter names -> config values (the inverse of ``sample``'s naming)."""
        values: dict[str, Any] = {}
        for key, spec in self.params.items():
            if isinstance(spec, ListParam):
                if f"{key}.depth" in params:
                    depth = params[f"{key}.depth"]
                    values[key] = [params[f"{key}.{i}"] for i in range(depth)]
            elif isinstance(spec, ChoiceParam) and spec.divides is not None:
                hit = [v for name, v in params.items() if name.startswith(key + "|")]
                if hit:
                    values[key] = hit[0]
            elif key in params:
                values[key] = params[key]
        return values


def condition_holds(when: dict[str, Any], current: dict[str, Any]) -> bool:
    """Every ``key: value`` holds (a list value means any of them); a missing key is None."""
    for key, want in when.items():
        got = lookup(current, key)
        got = None if got is _MISSING else got
        options = want if isinstance(want, list) else [want]
        if got not in options:
            return False
    return True


def _space_problems(err: ValidationError) -> list[str]:
    """Pydantic errors as ``params[KEY].field: message``, without the union tags in the path."""
    out = []
    for e in err.errors():
        loc = list(e["loc"])
        if len(loc) >= 2 and loc[0] == "params":
            key, rest = str(loc[1]), loc[2:]
            if rest and rest[0] in KINDS:
                rest = rest[1:]  # the tag that chose the class
            if len(rest) >= 2 and rest[0] in ("layers", "size") and rest[1] in KINDS:
                rest = [rest[0], *rest[2:]]
            where = f"params[{key}]" + "".join(f".{p}" for p in rest)
        else:
            where = ".".join(str(p) for p in loc) or "<root>"
        got = e.get("input")
        if isinstance(got, dict):
            shown = f" (got keys: {', '.join(map(str, got))})" if e["type"] == "param_kind" else ""
        else:
            shown = f" (got {got!r})"
        out.append(f"{where}: {e['msg'].removeprefix('Value error, ')}{shown}")
    return out


def _reference_problems(data: Any) -> list[str]:
    """Keys must be plain dotted names, and ``when``/``divides`` may only look back."""
    params = data.get("params") if isinstance(data, dict) else None
    if not isinstance(params, dict):
        return []
    keys = [str(k) for k in params]
    problems = []
    for i, key in enumerate(keys):
        if not key or "|" in key or any(not p for p in key.split(".")):
            problems.append(f"params[{key}]: not a dotted config key")
        for other in keys:
            if other.startswith(key + "."):
                problems.append(f"params[{key}]: overlaps params[{other}] (set one or the other)")
        spec = params[key]
        if not isinstance(spec, dict):
            continue
        refs: list[tuple[str, str]] = []
        if isinstance(spec.get("when"), dict):
            refs += [("when", str(k)) for k in spec["when"]]
        if isinstance(spec.get("divides"), str):
            refs.append(("divides", spec["divides"]))
        for what, ref in refs:
            if ref == key:
                problems.append(f"params[{key}].{what}: refers to itself")
            elif ref in keys[i + 1:]:
                problems.append(f"params[{key}].{what}: {ref} is drawn later; list it before {key}")
            elif what == "divides" and ref in keys:
                target = params[ref]
                if not (isinstance(target, dict) and ("int" in target or "choice" in target)):
                    problems.append(f"params[{key}].divides: {ref} must be an int or choice entry")
    return problems


def load_space(path: str | Path) -> SearchSpace:
    """Read and validate a search-space YAML file; every problem is reported, by key."""
    data = read_yaml_mapping(path, "a mapping with 'params'")
    return SearchSpace.from_dict(data, source=str(path))


# --- configs of trials --------------------------------------------------------------------------


def apply_values(base: dict[str, Any], values: dict[str, Any]) -> dict[str, Any]:
    """A deep copy of ``base`` with each dotted key of ``values`` set."""
    data = copy.deepcopy(base)
    problems = [p for k, v in values.items() if (p := set_dotted(data, k, copy.deepcopy(v)))]
    if problems:
        raise ConfigError(problems, "search space")
    return data


def trial_config(base: dict[str, Any], values: dict[str, Any], *, cls: type[Config] | None = None,
                 **fields: Any) -> Any:
    """The config of one draw (base + values, then top-level ``fields`` such as name), typed as
    ``cls`` (default: the train command's RunConfig)."""
    if cls is None:
        from moola.pipelines.train import RunConfig

        cls = RunConfig
    data = apply_values(base, values)
    data.update(fields)
    return cls.from_dict(data, source=f"draw {values}")


def check_space(space: SearchSpace, base: RunConfig | RankConfig, *, draws: int = 32, seed: int = 0) -> None:
    """Refuse a space whose draws do not make valid RunConfigs, before any training starts.

    ``draws`` random draws (in a throwaway in-memory study) are validated; problems are listed
    once each, naming the keys.
    """
    import optuna

    problems: list[str] = []
    if base.model is None:
        model_keys = [k for k in space.params if k.startswith("model.")]
        if model_keys:
            problems.append(
                f"{', '.join(model_keys)}: the base config names preset '{base.preset}' and no "
                "'model:' section; tune model keys against an explicit model (copy the 'model:' "
                "of a run's config.yaml into the base config)"
            )
            raise ConfigError(problems, "search space")
    data = base.to_dict()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=seed))
    for _ in range(draws):
        trial = study.ask()
        try:
            values = space.sample(trial, data)
            trial_config(data, values, cls=type(base))
        except ConfigError as e:
            for p in e.problems:
                if p.split(" (got ")[0] not in {q.split(" (got ")[0] for q in problems}:
                    problems.append(p)
        study.tell(trial, 0.0)
    if problems:
        raise ConfigError(problems, "search space draws")
