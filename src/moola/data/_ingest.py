"""Ingest: read every file, validate the whole batch, and only then write it to the store."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import polars as pl

from moola.data._errors import IngestError
from moola.data._readers import Format, RawBars, list_input_files, parse_delimiter, read_file
from moola.data._schema import Timeframe
from moola.data._store import Store, WriteSummary
from moola.data._validate import Policy, ValidationReport, infer_timeframe, validate_raw


@dataclass(frozen=True)
class IngestResult:
    """Per timeframe: the validation report of the incoming rows and what the store did."""

    files: list[RawBars]
    reports: dict[Timeframe, ValidationReport]
    writes: dict[Timeframe, WriteSummary]


def ingest(
    paths: Sequence[str | Path],
    store: Store,
    *,
    fmt: Format = Format.AUTO,
    symbol: str | None = None,
    timeframe: Timeframe | None = None,
    columns: dict[str, str] | None = None,
    policy: Policy | None = None,
    on_file: Callable[[Path], None] | None = None,
    delimiter: str | None = None,
) -> IngestResult:
    """Read, validate and merge. Any error raises before the first byte is written.
    ``delimiter`` is the CSV field separator, as ``--delimiter`` takes it (None: detected per file)."""
    delimiter = parse_delimiter(delimiter)
    files = list_input_files(paths)
    raws: list[RawBars] = []
    for f in files:
        raws.append(read_file(f, fmt, symbol=symbol, columns=columns, delimiter=delimiter))
        if on_file is not None:
            on_file(f)
    _check_directory_formats(paths, raws)

    by_tf: dict[Timeframe, list[pl.DataFrame]] = {}
    for raw in raws:
        tf = timeframe or raw.timeframe or _infer(raw)
        by_tf.setdefault(tf, []).append(raw.frame)

    validated = {}
    for tf, frames in by_tf.items():
        df = pl.concat(frames, how="diagonal_relaxed")
        validated[tf] = validate_raw(df, tf, policy)
    # one commit for every timeframe: a failure in the last leaves the first unwritten too
    writes = store.write_many({tf: (v.bars, v.rejects) for tf, v in validated.items()})
    return IngestResult(files=raws, reports={tf: v.report for tf, v in validated.items()},
                        writes=writes)


def _infer(raw: RawBars) -> Timeframe:
    try:
        return infer_timeframe(raw.frame.drop_nulls(["ts"]))
    except ValueError as e:
        raise IngestError(str(e), path=raw.path) from e


def _check_directory_formats(paths: Sequence[str | Path], raws: list[RawBars]) -> None:
    """A directory is one export of one venue; mixed layouts usually mean a wrong folder."""
    for p in map(Path, paths):
        if not p.is_dir():
            continue
        inside = [r for r in raws if r.path.parent == p]
        kinds: dict[Format, str] = {}
        for r in inside:
            kinds.setdefault(r.format, r.path.name)
        if len(kinds) > 1:
            seen = ", ".join(f"{k} ({v})" for k, v in kinds.items())
            raise IngestError(
                f"directory mixes formats: {seen}",
                path=p, hint="ingest each format separately, or pass --format",
            )
