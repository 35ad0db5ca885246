"""Promotion into MLflow's model registry, and reading it back.

A version's artifacts are the run directory itself (weights.safetensors, config.yaml,
manifest.json, metrics.json, report): logged under an MLflow run of experiment ``promote`` and
registered from that artifact location. No pickled model, no pyfunc flavour: a registered version
is loaded like any run directory, after :func:`resolve_model_ref` has put it on local disk.
"""

from __future__ import annotations

import getpass
import json
import os
import re
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote, urlparse

from moola.registry._gates import GateResult, Gates, SegmentTrials, evaluate_gates, segment_trials
from moola.tracking import Tracker, TrackingOptions
from moola.training.manifest import Manifest, read_manifest

if TYPE_CHECKING:
    from mlflow.entities.model_registry import ModelVersion
    from mlflow.tracking import MlflowClient

__all__ = [
    "CHAMPION",
    "PREVIOUS",
    "ModelRef",
    "Promotion",
    "RegisteredModelInfo",
    "VersionInfo",
    "default_model_name",
    "list_models",
    "parse_model_ref",
    "promote",
    "resolve_model_ref",
    "rollback",
    "show_model",
]

CHAMPION = "champion"
PREVIOUS = "previous"
ARTIFACT_PATH = "run"  # the run directory's folder inside the promotion run's artifacts
_REF = re.compile(r"^(?:models:/)?(?P<name>[^@/]+)(?:@(?P<alias>[^@/]+)|/(?P<version>\d+))?$")


def _client() -> MlflowClient:
    from mlflow.tracking import MlflowClient

    return MlflowClient()


def default_model_name(m: Manifest) -> str:
    """``TASK-SYMBOLS-TIMEFRAME-hHORIZON``, e.g. ``direction-BTCUSD-1m-h1`` (symbols joined by _)."""
    parts = [m.task or m.kind, "_".join(m.symbols) or "pooled", m.timeframe or "any"]
    if m.horizon is not None:
        parts.append(f"h{m.horizon}")
    return "-".join(parts)


@dataclass(frozen=True)
class ModelRef:
    name: str
    alias: str | None = None
    version: str | None = None

    def __str__(self) -> str:
        tail = f"@{self.alias}" if self.alias else f"/{self.version}" if self.version else ""
        return f"models:/{self.name}{tail}"


def parse_model_ref(ref: str) -> ModelRef:
    """``NAME``, ``NAME@ALIAS`` or ``NAME/VERSION``, with or without ``models:/``."""
    m = _REF.match(ref.strip())
    if m is None:
        raise ValueError(f"{ref!r} is not a model reference: write NAME, NAME@ALIAS or NAME/VERSION "
                         "(optionally prefixed models:/), e.g. models:/direction-BTCUSD-1m-h1@champion")
    return ModelRef(m["name"], m["alias"], m["version"])


@dataclass
class Promotion:
    """What ``promote`` did: the gate results, and the version when every gate passed."""

    name: str
    results: list[GateResult]
    version: str | None = None
    previous: str | None = None  # the former champion, now alias "previous"
    source: str | None = None
    segment: SegmentTrials | None = None  # how many configurations saw this test segment

    @property
    def multiple_testing(self) -> str | None:
        """A warning when more than one trial was evaluated on this run's test segment."""
        seg = self.segment
        if seg is None or seg.n_trials <= 1:
            return None
        d = seg.deflated
        dsr = (f"{d.probability:.3f} (expected best null Sharpe {d.expected_max_sharpe:.3g})"
               if d is not None else f"not measured ({seg.reason})")
        return (f"multiple testing: {seg.n_trials} configurations were evaluated on this test segment "
                f"({seg.n_configurations} run dir(s), {seg.own_evaluations} look(s) by this run); "
                f"the net_sharpe gate reads the measured Sharpe, the deflated Sharpe probability "
                f"is {dsr}: gate it with 'deflated_sharpe: \">= 0.95\"'")

    @property
    def passed(self) -> bool:
        return all(r.passed for r in self.results)

    @property
    def failed(self) -> list[GateResult]:
        return [r for r in self.results if not r.passed]


def _known_names(client: MlflowClient) -> list[str]:
    return sorted(rm.name for rm in client.search_registered_models())


def _model(client: MlflowClient, name: str) -> Any:
    from mlflow.exceptions import MlflowException

    try:
        return client.get_registered_model(name)
    except MlflowException:
        known = _known_names(client)
        raise ValueError(f"no registered model {name!r}; registered: {', '.join(known) or 'none'} "
                         "(promote a run with `moola promote`)") from None


def _segment_tags(seg: SegmentTrials | None) -> dict[str, str]:
    if seg is None:
        return {}
    d = seg.deflated
    return {"moola.test_segment_key": seg.key, "moola.test_segment_configs": str(seg.n_configurations),
            "moola.test_segment_trials": str(seg.n_trials),
            "moola.test_evaluations": str(seg.own_evaluations),
            "moola.deflated_sharpe": "not measured" if d is None else f"{d.probability:.6g}",
            "moola.deflated_sharpe_detail": json.dumps(None if d is None else d.to_dict())}


def _version_tags(manifest: Manifest, results: list[GateResult], gates_file: str,
                  run_dir: Path) -> dict[str, str]:
    now = datetime.now(UTC).isoformat(timespec="seconds")
    tags = {
        "moola.promoted_by": getpass.getuser(), "moola.promoted_at": now,
        "moola.gates_file": str(gates_file), "moola.run_dir": str(run_dir.resolve()),
        "moola.gates": ", ".join(f"{r.gate}={'pass' if r.passed else 'FAIL'}" for r in results),
        "moola.feature_set": manifest.feature_set,
        "moola.feature_schema_hash": manifest.feature_schema_hash or "",
        "moola.n_features": str(len(manifest.feature_names)),
        "moola.window": str(manifest.window), "moola.horizon": str(manifest.horizon),
        "moola.timeframe": str(manifest.timeframe), "moola.symbols": ",".join(manifest.symbols),
        "moola.task": str(manifest.task), "moola.classes": ",".join(manifest.classes),
        "moola.data_fingerprint": str(manifest.data_fingerprint), "moola.git_sha": manifest.git_sha,
        "moola.manifest_format": str(manifest.format_version),
    }
    for r in results:
        tags[f"moola.gate.{r.gate}"] = json.dumps(r.to_dict())
    return tags


def promote(run_dir: str | Path, gates: Gates, *, gates_file: str | Path,
            name: str | None = None, search: list[str | Path] | None = None) -> Promotion:
    """Checks ``gates`` on ``run_dir``; when all pass, registers it as a new version of ``name``
    (default :func:`default_model_name`), moves ``champion`` to it and ``previous`` to the former
    champion. A refusal registers nothing. The runs sharing the test segment are looked for
    under ``search`` (default: the run's parent and grandparent; see ``segment_trials``)."""
    run_dir = Path(run_dir)
    manifest = read_manifest(run_dir)
    name = name or default_model_name(manifest)
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.+-]*", name):
        raise ValueError(f"model name {name!r}: use letters, digits and _ . + - only (a name with "
                         "'/', '@' or ':' cannot be referenced as models:/NAME@ALIAS)")
    segment = segment_trials(run_dir, search)
    results = evaluate_gates(run_dir, gates, gates_source=gates_file, segment=segment)
    promo = Promotion(name, results, segment=segment)
    if not promo.passed:
        return promo
    from mlflow.exceptions import MlflowException

    client = _client()
    try:
        client.get_registered_model(name)
    except MlflowException:
        client.create_registered_model(
            name, description=f"moola {manifest.task} model ({manifest.feature_set})")
    tags = _version_tags(manifest, results, str(gates_file), run_dir) | _segment_tags(segment)
    tags["moola.gates_yaml"] = gates.to_yaml()
    run_tags = {"moola.model_name": name, "moola.gates_file": str(gates_file)}
    with Tracker("promote", TrackingOptions(experiment="promote", enabled=True, tags=run_tags),
                 run_name=f"promote {name}") as tracker:
        tracker.log_artifacts(run_dir, ARTIFACT_PATH)
        assert tracker.run_id is not None
        source = f"{client.get_run(tracker.run_id).info.artifact_uri}/{ARTIFACT_PATH}"
        mv = client.create_model_version(name, source, run_id=tracker.run_id, tags=tags)
        tracker.set_tags({"moola.model_version": mv.version})
    champion = _alias_version(client, name, CHAMPION)
    if champion is not None:
        client.set_registered_model_alias(name, PREVIOUS, champion)
    client.set_registered_model_alias(name, CHAMPION, str(mv.version))
    promo.version, promo.previous, promo.source = str(mv.version), champion, source
    return promo


def _alias_version(client: MlflowClient, name: str, alias: str) -> str | None:
    aliases = _model(client, name).aliases or {}
    v = aliases.get(alias)
    return None if v is None else str(v)


@dataclass
class VersionInfo:
    version: str
    aliases: list[str]
    source: str
    run_id: str | None
    created: datetime
    tags: dict[str, str] = field(default_factory=dict)


@dataclass
class RegisteredModelInfo:
    name: str
    aliases: dict[str, str]
    versions: list[VersionInfo]  # newest first

    @property
    def latest(self) -> str | None:
        return self.versions[0].version if self.versions else None


def _version_info(mv: ModelVersion, aliases: dict[str, str]) -> VersionInfo:
    return VersionInfo(str(mv.version), sorted(a for a, v in aliases.items() if str(v) == str(mv.version)),
                       str(mv.source), mv.run_id, datetime.fromtimestamp(mv.creation_timestamp / 1000, UTC),
                       dict(mv.tags or {}))


def _info(client: MlflowClient, name: str) -> RegisteredModelInfo:
    rm = _model(client, name)
    aliases = {a: str(v) for a, v in (rm.aliases or {}).items()}
    versions = client.search_model_versions(f"name = '{name}'")
    infos = sorted((_version_info(mv, aliases) for mv in versions), key=lambda v: -int(v.version))
    return RegisteredModelInfo(name, aliases, infos)


def list_models() -> list[RegisteredModelInfo]:
    """Every registered model with its versions and aliases, by name."""
    client = _client()
    return [_info(client, n) for n in _known_names(client)]


def show_model(ref: str) -> tuple[RegisteredModelInfo, VersionInfo | None]:
    """The model of ``ref`` and, for ``NAME@ALIAS`` / ``NAME/VERSION``, that version."""
    r = parse_model_ref(ref)
    info = _info(_client(), r.name)
    if r.alias is None and r.version is None:
        return info, None
    want = info.aliases.get(r.alias) if r.alias else r.version
    if r.alias and want is None:
        raise ValueError(f"{r.name} has no alias {r.alias!r}; aliases: "
                         f"{', '.join(f'{a} -> v{v}' for a, v in sorted(info.aliases.items())) or 'none'}")
    for v in info.versions:
        if v.version == want:
            return info, v
    have = ", ".join(v.version for v in info.versions)
    raise ValueError(f"{r.name} has no version {want}; versions: {have}")


def rollback(name: str) -> tuple[str, str]:
    """Moves ``champion`` back to the ``previous`` version; the rolled-back version keeps a tag
    ``moola.rolled_back`` saying when and to which version. Returns (from, to)."""
    client = _client()
    info = _info(client, name)
    champ, prev = info.aliases.get(CHAMPION), info.aliases.get(PREVIOUS)
    if champ is None or prev is None:
        raise ValueError(f"{name}: nothing to roll back to (aliases: "
                         f"{', '.join(f'{a} -> v{v}' for a, v in sorted(info.aliases.items())) or 'none'}); "
                         f"rollback needs both {CHAMPION!r} and {PREVIOUS!r}")
    now = datetime.now(UTC).isoformat(timespec="seconds")
    client.set_model_version_tag(name, champ, "moola.rolled_back",
                                 f"{now} by {getpass.getuser()}: champion returned to version {prev}")
    client.set_registered_model_alias(name, CHAMPION, prev)
    client.delete_registered_model_alias(name, PREVIOUS)
    return champ, prev


def _default_cache() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "moola" / "models"


def resolve_model_ref(ref: str | Path, *, cache_dir: str | Path | None = None) -> Path:
    """A local run directory for ``models:/NAME@ALIAS`` or ``models:/NAME/VERSION`` (a plain
    path is returned as it is): the version's artifact folder itself on a local store, else a
    download into ``cache_dir/NAME/VERSION`` (default ``$XDG_CACHE_HOME/moola/models``)."""
    if not str(ref).startswith("models:/"):
        return Path(ref)
    r = parse_model_ref(str(ref))
    if r.alias is None and r.version is None:
        raise ValueError(f"{ref}: name a version or an alias, e.g. {ref}@{CHAMPION}")
    _, v = show_model(str(ref))
    assert v is not None
    parsed = urlparse(v.source)
    if parsed.scheme == "file":
        local = Path(unquote(parsed.path))
        if (local / "manifest.json").is_file():
            return local
    dst = Path(cache_dir) if cache_dir is not None else _default_cache()
    dst = dst / r.name / v.version
    if not (dst / ARTIFACT_PATH / "manifest.json").is_file():
        import mlflow

        dst.mkdir(parents=True, exist_ok=True)
        mlflow.artifacts.download_artifacts(artifact_uri=v.source, dst_path=str(dst))
    return dst / ARTIFACT_PATH
