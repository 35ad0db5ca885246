"""Market data: read exports, validate them, keep them in a canonical Parquet store."""

from moola.data._align import Alignment, AlignmentError, SymbolAlignment, align_symbols
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
    FreqtradeName,
    RawBars,
    freqtrade_name,
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
    "Alignment",
    "AlignmentError",
    "FetchError",
    "FetchResult",
    "Format",
    "FreqtradeName",
    "IngestError",
    "IngestResult",
    "MoolaDataError",
    "Policy",
    "RawBars",
    "Reason",
    "Store",
    "StoreError",
    "SymbolAlignment",
    "Timeframe",
    "Validated",
    "ValidationFailed",
    "ValidationReport",
    "WriteSummary",
    "align_symbols",
    "default_store_symbol",
    "fetch_ohlcv",
    "fill_gaps",
    "freqtrade_name",
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
