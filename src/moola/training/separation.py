"""Time separation between a pretrained encoder and what a model using it is evaluated on.

An encoder pretrained on bars from the validation or test period has seen that period (on any
symbol: markets co-move), so scores measured there are transductive, not out-of-sample. Its
``manifest.json`` records the merged time coverage of its pool (``pool_intervals``) and of the
windows its normaliser was fitted on (``normalizer_fit``); ``check_encoder_separation`` compares
both with the evaluated periods and refuses an overlap (``LeakageError``) unless the caller
explicitly allows a transductive run, in which case the warning it returns must lead the report.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import polars as pl

from moola.data import Timeframe
from moola.training.manifest import TimeRange, intervals_overlap, merge_intervals, read_manifest

__all__ = ["LeakageError", "check_encoder_separation", "evaluated_intervals"]

SHOW = 3  # overlapping pairs named in a message (then a count)
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


class LeakageError(ValueError):
    """An encoder whose pretraining data overlaps (within embargo) an evaluated period."""


Evaluated = Sequence[TimeRange] | Mapping[str, Mapping[str, TimeRange]]


def evaluated_intervals(*metas: pl.DataFrame) -> list[TimeRange]:
    """Merged time coverage (across symbols) of windows given as frames with start_ts/end_ts."""
    frames = [m.select("start_ts", "end_ts") for m in metas if m.height]
    if not frames:
        return []
    both = pl.concat(frames)
    return merge_intervals(both.get_column("start_ts").dt.epoch("ns").to_numpy(),
                           both.get_column("end_ts").dt.epoch("ns").to_numpy())


def _as_intervals(evaluated: Evaluated) -> list[TimeRange]:
    """A list of ranges as given, or a manifest-style split -> symbol -> range mapping flattened
    (each symbol's envelope: conservative), merged either way."""
    ranges = (list(evaluated) if not isinstance(evaluated, Mapping)
              else [r for per_symbol in evaluated.values() for r in per_symbol.values()])
    def ns(t: datetime) -> int:
        return (t - _EPOCH) // timedelta(microseconds=1) * 1000

    return merge_intervals(np.array([ns(r.start) for r in ranges], dtype=np.int64),
                           np.array([ns(r.end) for r in ranges], dtype=np.int64))


def _pairs(hits: list[tuple[TimeRange, TimeRange]]) -> str:
    shown = "; ".join(f"{a} meets {b}" for a, b in hits[:SHOW])
    more = f" (and {len(hits) - SHOW} more)" if len(hits) > SHOW else ""
    return f"{len(hits)} overlapping pair(s): {shown}{more}"


def check_encoder_separation(encoder_dir: str | Path, evaluated: Evaluated,
                             embargo_s: float | None = None, *, allow_transductive: bool = False,
                             what: str = "validation/test", labels: str | None = None) -> str | None:
    """Refuse an encoder whose pool or normaliser coverage comes within the embargo of an
    ``evaluated`` period; return None when separated.

    ``embargo_s``: the gap in seconds that must separate them; at least the encoder's own
    ``embargo_bars`` bars of its timeframe (the rule its pool was built with). An encoder dir
    without recorded coverage (written before manifests, ``meta.json`` only) counts as
    overlapping: its coverage is unknown. ``allow_transductive=True`` returns the warning
    instead of raising: its first line ("TRANSDUCTIVE: the encoder's pool overlaps ...") is the
    headline the caller puts first in its report, the next line the details.
    ``labels`` (the labels file whose windows are evaluated) makes the rebuild advice exact.
    """
    encoder_dir = Path(encoder_dir)
    m = read_manifest(encoder_dir)
    own = 0.0
    if m.embargo_bars and m.timeframe:
        own = m.embargo_bars * Timeframe(m.timeframe).step.total_seconds()
    gap = max(own, embargo_s or 0.0)
    periods = _as_intervals(evaluated)
    if not periods:
        return None
    rebuild_cfg = encoder_dir / "config.yaml"
    if not m.pool_intervals:
        source = m.extra.get("migrated_from") or "its manifest"
        problem = (f"the time its pretraining pool covered is unknown ({source} records no "
                   f"pool_intervals: written before moola recorded them), so it may cover the "
                   f"{what} periods ({len(periods)} merged interval(s) from {periods[0].start:%Y-%m-%d})")
        start = periods[0].start
    else:
        pool_hits = intervals_overlap(m.pool_intervals, periods, gap)
        norm_hits = intervals_overlap(m.normalizer_fit, periods, gap)
        if not pool_hits and not norm_hits:
            return None
        parts = []
        if pool_hits:
            parts.append(f"its pretraining pool ({len(m.pool_intervals)} merged interval(s)) "
                         f"overlaps the {what} periods: {_pairs(pool_hits)}")
        if norm_hits:
            parts.append(f"its normaliser was fitted on windows overlapping them: {_pairs(norm_hits)}")
        exclusion = (f" (the pool was built with exclusion={m.pool_exclusion}"
                     f"{' against ' + m.labels_excluded if m.labels_excluded else ''})"
                     if m.pool_exclusion else "")
        problem = "; ".join(parts) + exclusion
        start = min(b.start for _, b in pool_hits + norm_hits)
    fix = f"rebuild it: moola pretrain --config {rebuild_cfg} name=<new name> data.exclusion=time"
    if labels is not None:
        fix += f" data.labels={labels}"
    before = start - timedelta(seconds=gap)
    fix += f" (or data.pool_end={before:%Y-%m-%d}, so the pool ends before {before:%Y-%m-%d})"
    msg = (f"encoder {encoder_dir}: {problem} (embargo {timedelta(seconds=gap)}). Scores on "
           f"those periods would be transductive, not out-of-sample; {fix}")
    if allow_transductive:
        verb = "overlaps" if m.pool_intervals else "may overlap"
        return (f"TRANSDUCTIVE: the encoder's pool {verb} the {what} periods "
                f"(allow_transductive=true)\n{msg}")
    raise LeakageError(f"{msg}; or set allow_transductive=true to run anyway (the report then "
                       f"says TRANSDUCTIVE in its first line)")
