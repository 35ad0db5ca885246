"""Typed configs that round-trip to YAML and report every problem at once, by key."""

from __future__ import annotations

import typing
from pathlib import Path
from typing import Annotated, Any, Self

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from moola._io import atomic_write_text, did_you_mean

# Ceilings on sizes that multiply into memory or time: far above any run that fits a machine,
# finite so a typo (batch_size: 1e8) is refused at validation, naming the key and the bound.
MAX_BATCH = 65_536  # samples (or dates) per batch
MAX_WIDTH = 16_384  # hidden sizes, d_model, feed-forward and head widths, filters, embeddings
MAX_LAYERS = 64  # stacked layers or modules of one encoder or head
MAX_HEADS = 256  # attention heads
MAX_BARS = 100_000  # bars: windows, sequence lengths, strides, horizons, kernels, lookbacks
MAX_FEATURES = 100_000  # input features per bar
MAX_EPOCHS = 100_000
MAX_STEPS = 100_000_000  # optimiser steps
MAX_WORKERS = 1_024  # threads, worker processes, parallel runs
MAX_REPEATS = 10_000  # seeds, folds, classes, views, retries: things done once each
MAX_RUNS = 10_000  # runs of one sweep (its grid times its variants)
MAX_SYMBOLS = 100_000  # symbols one model embeds, stocks per date
MAX_RESAMPLES = 1_000_000  # bootstrap resamples

Width = Annotated[int, Field(ge=1, le=MAX_WIDTH)]
Layers = Annotated[int, Field(ge=1, le=MAX_LAYERS)]
Heads = Annotated[int, Field(ge=1, le=MAX_HEADS)]
Bars = Annotated[int, Field(ge=1, le=MAX_BARS)]
Features = Annotated[int, Field(ge=1, le=MAX_FEATURES)]
Workers = Annotated[int, Field(ge=1, le=MAX_WORKERS)]


class ConfigError(ValueError):
    """A config file or override failed validation; the message lists every bad key."""

    def __init__(self, problems: list[str], source: str | None = None) -> None:
        self.problems = problems
        self.source = source
        head = f"{source}: " if source else ""
        super().__init__(
            f"{head}{len(problems)} problem(s) in config:\n" + "\n".join(f"  - {p}" for p in problems)
        )


def read_yaml_mapping(path: str | Path, expected: str = "a mapping") -> dict[str, Any]:
    """A YAML file whose top level is a mapping; a bad file is a ConfigError naming it."""
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise ConfigError([f"not valid YAML: {e}"], str(path)) from None
    if not isinstance(data, dict):
        raise ConfigError([f"top level must be {expected}"], str(path))
    return data


def _models_in(annotation: Any) -> list[type[BaseModel]]:
    """The config classes an annotation can hold (``X``, ``X | None``, ``A | B``, ``list[X]``)."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    return [m for arg in typing.get_args(annotation) for m in _models_in(arg)]


def _keys_at(model: type[BaseModel], loc: tuple[Any, ...]) -> list[str]:
    """The valid keys of the section at ``loc`` (dotted path below ``model``), [] if unknown."""
    models = [model]
    for part in loc:
        if isinstance(part, int):  # a list item: same classes
            continue
        nxt = [m for cls in models if (f := cls.model_fields.get(str(part))) is not None
               for m in _models_in(f.annotation)]
        if not nxt:
            return []
        models = nxt
    return sorted({k for cls in models for k in cls.model_fields})


def _problems(err: ValidationError, model: type[BaseModel] | None = None) -> list[str]:
    out = []
    for e in err.errors():
        key = ".".join(str(p) for p in e["loc"]) or "<root>"
        got = e.get("input")
        shown = "" if isinstance(got, dict) else f" (got {got!r})"
        hint = ""
        if e["type"] == "extra_forbidden" and model is not None and e["loc"]:
            valid = _keys_at(model, tuple(e["loc"][:-1]))
            parent = ".".join(str(p) for p in e["loc"][:-1])
            near = did_you_mean(str(e["loc"][-1]), valid)
            if near:
                near = near.replace("did you mean ", f"did you mean {parent + '.' if parent else ''}")
            if valid:
                hint = f"{near}; valid keys here: {', '.join(valid)}"
        out.append(f"{key}: {e['msg']}{shown}{hint}")
    return out


class Config(BaseModel):
    """Base for every moola config: unknown keys are errors, values validated on assignment."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, frozen=False)

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str | None = None) -> Self:
        try:
            return cls.model_validate(data)
        except ValidationError as e:
            raise ConfigError(_problems(e, cls), source) from None

    @classmethod
    def from_yaml(cls, path: str | Path, overrides: list[str] | None = None) -> Self:
        data = apply_overrides(read_yaml_mapping(path), overrides or [])
        return cls.from_dict(data, source=str(path))

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json")

    def to_yaml(self, path: str | Path | None = None) -> str:
        text = yaml.safe_dump(self.to_dict(), sort_keys=False)
        if path is not None:
            atomic_write_text(path, text)
        return text

    def flat(self) -> dict[str, Any]:
        """Dotted keys -> values (for tracking params)."""
        out: dict[str, Any] = {}

        def walk(prefix: str, v: Any) -> None:
            if isinstance(v, dict):
                for k, x in v.items():
                    walk(f"{prefix}.{k}" if prefix else str(k), x)
            else:
                out[prefix] = v

        walk("", self.to_dict())
        return out


def config_hash(cfg: Config | dict[str, Any], exclude: tuple[str, ...] = ("name", "out_dir")) -> str:
    """12 hex digits naming what a config computes: where it is written and what it is called
    (``exclude``) do not change the hash, every other value does."""
    import hashlib
    import json

    data = cfg.to_dict() if isinstance(cfg, Config) else dict(cfg)
    data = {k: v for k, v in data.items() if k not in exclude}
    text = json.dumps(data, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def set_dotted(data: dict[str, Any], key: str, value: Any) -> str | None:
    """Set ``a.b.c`` in nested dicts, creating sections; returns a problem text instead of raising."""
    node = data
    parts = key.strip().split(".")
    for p in parts[:-1]:
        nxt = node.get(p)
        if nxt is None:
            nxt = node[p] = {}
        if not isinstance(nxt, dict):
            return f"override '{key}': '{p}' is not a section"
        node = nxt
    node[parts[-1]] = value
    return None


def parse_override(item: str) -> tuple[str, Any] | str:
    """``a.b=value`` -> (dotted key, YAML-parsed value), or a problem text if it is no key=value."""
    if "=" not in item:
        return f"override '{item}' is not key=value"
    key, raw = item.split("=", 1)
    try:
        value = yaml.safe_load(raw)
    except yaml.YAMLError:
        value = raw
    return key.strip(), value


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """``a.b.c=value`` overrides; values parsed as YAML scalars/lists (``lr=1e-3``, ``x=[1,2]``)."""
    problems = []
    for item in overrides:
        parsed = parse_override(item)
        problem = parsed if isinstance(parsed, str) else set_dotted(data, *parsed)
        if problem:
            problems.append(problem)
    if problems:
        raise ConfigError(problems, "overrides")
    return data


def _bounds(metadata: list[Any]) -> str:
    """A field's numeric limits for the docs (`` >= 1, <= 65536``), so the ceilings are listed."""
    signs = {"ge": ">=", "gt": ">", "le": "<=", "lt": "<"}
    parts = [f"{sign} {getattr(m, name)}" for m in metadata for name, sign in signs.items()
             if getattr(m, name, None) is not None]
    return f" ({', '.join(parts)})" if parts else ""


def schema_markdown(cls: type[BaseModel], prefix: str = "") -> str:
    """A key / type / default table of a config class and its nested sections (for docs)."""
    rows: list[str] = []

    def walk(c: type[BaseModel], pre: str) -> None:
        for name, f in c.model_fields.items():
            key = f"{pre}{name}"
            ann = f.annotation
            nested = ann if isinstance(ann, type) and issubclass(ann, BaseModel) else None
            if nested is not None:
                doc = (nested.__doc__ or "").strip().splitlines()
                rows.append(f"| `{key}` | section | | {doc[0] if doc else ''} |")
                walk(nested, key + ".")
                continue
            default = "required" if f.is_required() else (
                "(factory)" if f.default_factory is not None else repr(f.default))
            tname = str(ann).replace("typing.", "").replace("<class '", "").replace("'>", "")
            tname = tname.replace("moola.models.config.", "").replace("|", "\\|") + _bounds(f.metadata)
            rows.append(f"| `{key}` | {tname} | {default} | {f.description or ''} |")

    walk(cls, prefix)
    return "| key | type | default | note |\n|---|---|---|---|\n" + "\n".join(rows) + "\n"
