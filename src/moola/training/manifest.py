"""``manifest.json``: what a run or encoder directory is, typed and versioned.

One model (``Manifest``) is read and written here and nowhere else. It holds everything needed
to turn raw bars into the model's inputs (feature set, ordered names, schema hash, window,
horizon, timeframe, symbols, normaliser statistics, calibration temperature) and to prove what
the model saw (the exact time ranges of every split per symbol, the pool's time coverage for an
encoder, the data fingerprint, versions and the git SHA, ``+dirty`` when the tree had changes).

Directories written before the manifest existed carry ``meta.json`` instead; ``read_manifest``
migrates those on read (format_version 1 -> current) without touching the directory.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

import numpy as np
import polars as pl
from pydantic import Field, field_validator

import moola
from moola._io import atomic_write_json, git_sha, read_json
from moola.config import Config

__all__ = [
    "FORMAT_VERSION",
    "LEGACY_META",
    "MANIFEST",
    "Manifest",
    "ManifestError",
    "SegmentUse",
    "TimeRange",
    "intervals_overlap",
    "merge_intervals",
    "periods_by_symbol",
    "read_manifest",
    "record_test_use",
    "runs_on_test_segment",
    "segment_key",
    "write_manifest",
]

MANIFEST = "manifest.json"
LEGACY_META = "meta.json"
FORMAT_VERSION = 2
Kind = Literal["train_run", "encoder", "oof", "rank_run"]


class ManifestError(ValueError):
    """A directory without a readable manifest, or one this version cannot read."""


class TimeRange(Config):
    """A closed UTC interval ``[start, end]`` (timestamps of the first and last bar seen)."""

    start: datetime
    end: datetime

    @field_validator("start", "end")
    @classmethod
    def _utc(cls, v: datetime) -> datetime:
        return v.replace(tzinfo=UTC) if v.tzinfo is None else v.astimezone(UTC)

    def overlaps(self, other: TimeRange, embargo_s: float = 0.0) -> bool:
        """True when the two intervals are closer than ``embargo_s`` seconds (or intersect)."""
        gap_after = (other.start - self.end).total_seconds()
        gap_before = (self.start - other.end).total_seconds()
        return not (gap_after > embargo_s or gap_before > embargo_s)

    def __str__(self) -> str:
        return f"{self.start:%Y-%m-%d %H:%M} .. {self.end:%Y-%m-%d %H:%M}"


class SegmentUse(Config):
    """One look at a run's test segment: when, by what (``train``, ``evaluate``) and at which
    commit. The count of these is what ``moola promote`` weighs as multiple testing."""

    when: datetime
    what: str
    git_sha: str | None = None

    @field_validator("when")
    @classmethod
    def _utc(cls, v: datetime) -> datetime:
        return v.replace(tzinfo=UTC) if v.tzinfo is None else v.astimezone(UTC)


class Manifest(Config):
    """The typed content of ``manifest.json`` (documented key by key in docs/manifest.md)."""

    kind: Kind
    format_version: int = FORMAT_VERSION
    # --- inputs: raw bars -> features -> windows
    feature_set: str
    feature_names: list[str] = Field(default_factory=list)
    feature_schema_hash: str | None = None
    window: int | None = None
    horizon: int | None = None
    timeframe: str | None = None
    symbols: list[str] = Field(default_factory=list)
    # the bar columns the features read (adj_close present or not changes every price feature)
    bar_columns: list[str] = Field(default_factory=list)
    # data.align: the symbols' bars were cut to their common timestamps before features; the
    # Predictor cuts the bars it serves the same way
    aligned: bool = False
    task: str | None = None
    classes: list[str] = Field(default_factory=list)
    label: str | None = None  # how a label is defined, in words (e.g. "sign of the 1-bar log return")
    normalizer: dict[str, Any] | None = None  # the scaler's own dict (kind, center, scale)
    temperature: float | None = None  # calibration temperature fitted on validation
    # --- what the model saw: split -> symbol -> [first bar, last bar] of its windows
    periods: dict[str, dict[str, TimeRange]] = Field(default_factory=dict)
    # encoders: the pool's time coverage across all symbols (merged intervals) and the
    # normaliser's fit range; runs: the rules that separate their splits
    pool_intervals: list[TimeRange] = Field(default_factory=list)
    normalizer_fit: list[TimeRange] = Field(default_factory=list)
    embargo_bars: int | None = None
    allow_transductive: bool = False
    # encoders: the labels file whose windows (plus embargo) the pool left out, and how
    labels_excluded: str | None = None
    pool_exclusion: Literal["time", "symbol"] | None = None
    # --- provenance
    data_fingerprint: str | None = None
    store: str | None = None
    n_params: int | None = None
    n_train: int | None = None
    moola_version: str = moola.__version__
    torch_version: str | None = None
    git_sha: str = "unknown"
    created: datetime | None = None
    # every evaluation of the test segment (record_test_use); absent in older manifests = none
    test_evaluations: list[SegmentUse] = Field(default_factory=list)
    extra: dict[str, Any] = Field(default_factory=dict)

    def period_envelope(self, split: str) -> TimeRange | None:
        """The earliest start and latest end of one split over all symbols."""
        ranges = list(self.periods.get(split, {}).values())
        if not ranges:
            return None
        return TimeRange(start=min(r.start for r in ranges), end=max(r.end for r in ranges))


def write_manifest(run_dir: str | Path, manifest: Manifest) -> Path:
    """Write ``manifest.json`` atomically, stamping versions, git SHA and creation time."""
    import torch

    m = manifest.model_copy(update={
        "moola_version": moola.__version__, "torch_version": torch.__version__,
        "git_sha": manifest.git_sha if manifest.git_sha != "unknown" else git_sha(mark_dirty=True),
        "created": manifest.created or datetime.now(UTC),
    })
    return atomic_write_json(Path(run_dir) / MANIFEST, m.model_dump(mode="json"))


def read_manifest(run_dir: str | Path) -> Manifest:
    """The directory's manifest; a pre-manifest ``meta.json`` is migrated in memory."""
    run_dir = Path(run_dir)
    path = run_dir / MANIFEST
    if path.is_file():
        data = read_json(path, keys=("format_version",))
        data.pop("_nulls", None)
        version = data.get("format_version")
        if not isinstance(version, int) or version > FORMAT_VERSION:
            raise ManifestError(
                f"{path}: format_version {version!r} is not one this moola ({moola.__version__}) "
                f"reads (1..{FORMAT_VERSION}); upgrade moola")
        return Manifest.from_dict(data, source=str(path))
    legacy = run_dir / LEGACY_META
    if legacy.is_file():
        return _migrate_v1(read_json(legacy), run_dir, legacy)
    raise ManifestError(f"{run_dir}: neither {MANIFEST} nor {LEGACY_META}: not a moola run directory")


def record_test_use(run_dir: str | Path, what: str) -> int:
    """Append one :class:`SegmentUse` to the directory's ``manifest.json`` (re-read, then written
    atomically) and return how many looks at the test segment the run has had. Not a lock: two
    processes recording into one run at the same instant can lose one entry. A pre-manifest
    directory (``meta.json`` only) is left untouched and 0 returned: nothing can be recorded
    there without rewriting it."""
    run_dir = Path(run_dir)
    path = run_dir / MANIFEST
    if not path.is_file():
        if (run_dir / LEGACY_META).is_file():
            return 0
        raise ManifestError(f"{run_dir}: no {MANIFEST} to record a test evaluation in "
                            "(write the manifest first)")
    m = read_manifest(run_dir)
    use = SegmentUse(when=datetime.now(UTC), what=what, git_sha=git_sha(mark_dirty=True))
    uses = [*m.test_evaluations, use]
    atomic_write_json(path, m.model_copy(update={"test_evaluations": uses}).model_dump(mode="json"))
    return len(uses)


def segment_key(manifest: Manifest) -> str:
    """A hash naming "the same test segment": the test split's symbols and their exact time
    ranges, the timeframe and the horizon (two runs with equal keys scored the same labels)."""
    test = manifest.periods.get("test", {})
    spec = {"test": {sym: [test[sym].start.isoformat(), test[sym].end.isoformat()] for sym in sorted(test)},
            "timeframe": manifest.timeframe, "horizon": manifest.horizon}
    return hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:16]


def runs_on_test_segment(run_dir: str | Path, roots: Sequence[str | Path] | None = None) -> list[Path]:
    """The run directories (this one included) whose manifest has this run's test segment key.

    Searched: every directory directly under each of ``roots`` (default: the run's parent and
    grandparent, which covers a sweep's ``runs/NAME-HASH/`` siblings and a plain ``runs/``
    folder). Unreadable or foreign directories are skipped; a manifest without test periods
    matches nothing."""
    run_dir = Path(run_dir).resolve()
    key = segment_key(read_manifest(run_dir))
    search = ([Path(r).resolve() for r in roots] if roots is not None
              else [run_dir.parent, run_dir.parent.parent])
    found = {run_dir}
    for root in dict.fromkeys(search):
        if not root.is_dir():
            continue
        for d in sorted(root.iterdir()):
            if d in found or not (d / MANIFEST).is_file():
                continue
            try:
                m = read_manifest(d)
            except (ManifestError, ValueError, OSError):
                continue
            if m.periods.get("test") and segment_key(m) == key:
                found.add(d)
    return sorted(found)


def _migrate_v1(meta: dict[str, Any], run_dir: Path, source: Path) -> Manifest:
    """format_version 1 (``meta.json``, before manifests) -> the current model."""
    import yaml

    known = {"feature_set", "feature_names", "feature_schema_hash", "data_fingerprint", "store",
             "classes", "n_params", "n_train", "moola_version", "torch_version", "git_sha"}
    cfg: dict[str, Any] = {}
    if (run_dir / "config.yaml").is_file():
        loaded = yaml.safe_load((run_dir / "config.yaml").read_text())
        cfg = loaded if isinstance(loaded, dict) else {}
    data = cfg.get("data") if isinstance(cfg.get("data"), dict) else {}
    assert isinstance(data, dict)
    kind: Kind = "encoder" if (run_dir / "encoder.json").is_file() else "train_run"
    normalizer = None
    if (run_dir / "normalizer.json").is_file():
        normalizer = read_json(run_dir / "normalizer.json")
    temperature = None
    if (run_dir / "metrics.json").is_file():
        run = read_json(run_dir / "metrics.json").get("run", {})
        temperature = run.get("temperature") if isinstance(run, dict) else None
    fields: dict[str, Any] = {k: v for k, v in meta.items() if k in known and v is not None}
    fields.setdefault("feature_set", data.get("feature_set", "unknown"))
    return Manifest(
        kind=kind, format_version=FORMAT_VERSION, window=data.get("window"),
        horizon=data.get("horizon"), timeframe=data.get("timeframe"),
        symbols=list(data.get("symbols") or []), task=data.get("task"),
        embargo_bars=(data.get("split") or {}).get("embargo_bars") if isinstance(data.get("split"), dict)
        else None, normalizer=normalizer, temperature=temperature,
        extra={"migrated_from": f"{source.name} (format_version 1)",
               **{k: v for k, v in meta.items() if k not in known}},
        **fields,
    )


def periods_by_symbol(meta: pl.DataFrame) -> dict[str, TimeRange]:
    """symbol -> [first window start, last window end] of a frame with symbol/start_ts/end_ts."""
    if meta.height == 0:
        return {}
    g = meta.group_by("symbol").agg(pl.col("start_ts").min().alias("s"), pl.col("end_ts").max().alias("e"))
    return {str(r["symbol"]): TimeRange(start=r["s"], end=r["e"])
            for r in g.sort("symbol").iter_rows(named=True)}


def merge_intervals(start: np.ndarray, end: np.ndarray, *, gap_s: float = 0.0) -> list[TimeRange]:
    """The union of ``[start_i, end_i]`` (datetime64 or epoch ns) as disjoint sorted intervals;
    intervals closer than ``gap_s`` seconds are joined."""
    s = np.asarray(start).astype("datetime64[ns]").astype(np.int64)
    e = np.asarray(end).astype("datetime64[ns]").astype(np.int64)
    if len(s) == 0:
        return []
    order = np.argsort(s, kind="stable")
    s, e = s[order], e[order]
    out: list[tuple[int, int]] = []
    cur_s, cur_e = int(s[0]), int(e[0])
    gap = int(gap_s * 1e9)
    for a, b in zip(s[1:].tolist(), e[1:].tolist(), strict=True):
        if a <= cur_e + gap:
            cur_e = max(cur_e, b)
        else:
            out.append((cur_s, cur_e))
            cur_s, cur_e = a, b
    out.append((cur_s, cur_e))

    def dt(ns: int) -> datetime:
        return datetime.fromtimestamp(ns / 1e9, tz=UTC)

    return [TimeRange(start=dt(a), end=dt(b)) for a, b in out]


def intervals_overlap(a: list[TimeRange], b: list[TimeRange], embargo_s: float = 0.0
                      ) -> list[tuple[TimeRange, TimeRange]]:
    """Every pair (x in a, y in b) closer than ``embargo_s`` seconds, for an error message."""
    return [(x, y) for x in a for y in b if x.overlaps(y, embargo_s)]
