"""Market data: read exports, validate them, keep them in a canonical Parquet store."""

from moola.data._errors import IngestError, MoolaDataError, StoreError, ValidationFailed
from moola.data._fetch import (
    FetchError,
    FetchResult,
    default_store_symbol,
    fetch_ohlcv,
    make_exchange,
)
from moola.data._gaps import mark_gaps, trading_calendar
from moola.data._ingest import IngestResult, ingest
from moola.data._readers import (
    Format,
    RawBars,
    list_input_files,
    parse_columns_mapping,
    read_file,
)
from moola.data._schema import CANONICAL_SCHEMA, PRICE_COLUMNS, REQUIRED_COLUMNS, TS_DTYPE, Timeframe
from moola.data._store import Store, WriteSummary
from moola.data._validate import (
    ALLOWED,
    DEFAULT_POLICY,
    EXPLAIN,
    Action,
    Policy,
    Reason,
    Validated,
    ValidationReport,
    fill_gaps,
    infer_timeframe,
    validate_bars,
    validate_raw,
)

__all__ = [
    "ALLOWED",
    "CANONICAL_SCHEMA",
    "DEFAULT_POLICY",
    "EXPLAIN",
    "PRICE_COLUMNS",
    "REQUIRED_COLUMNS",
    "TS_DTYPE",
    "Action",
    "FetchError",
    "FetchResult",
    "Format",
    "IngestError",
    "IngestResult",
    "MoolaDataError",
    "Policy",
    "RawBars",
    "Reason",
    "Store",
    "StoreError",
    "Timeframe",
    "Validated",
    "ValidationFailed",
    "ValidationReport",
    "WriteSummary",
    "default_store_symbol",
    "fetch_ohlcv",
    "fill_gaps",
    "infer_timeframe",
    "ingest",
    "list_input_files",
    "make_exchange",
    "mark_gaps",
    "parse_columns_mapping",
    "read_file",
    "trading_calendar",
    "validate_bars",
    "validate_raw",
]
