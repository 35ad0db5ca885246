"""The dry-run runtime: a feed (replay or live ccxt polling), streaming ensemble members and a
ledger (SQLite or PostgreSQL) that record one signal per symbol and bar. No code path places an
order. Call order: ``RuntimeConfig`` -> ``Runtime(config, ensemble, versions).run(feed, ledger)``."""

from moola.runtime._config import LiveFeedConfig, ReplayFeedConfig, RuntimeConfig, ThresholdConfig
from moola.runtime._feeds import (
    BAR_SCHEMA,
    EVENT_KINDS,
    Feed,
    FeedError,
    FeedEvent,
    LiveFeed,
    ReplayFeed,
    Tick,
)
from moola.runtime._ledger import (
    SCHEMA_VERSION,
    EventRow,
    FillRow,
    Ledger,
    LedgerError,
    LedgerSchemaError,
    LedgerUnavailable,
    PositionRow,
    SignalRow,
    ledger_url,
)
from moola.runtime._paper import PaperBook, PaperResult, paper_ledger
from moola.runtime._report import (
    HitRate,
    RuntimeSummary,
    SymbolSummary,
    runtime_outcomes,
    runtime_summary,
    status_rows,
    status_table,
    wilson_interval,
    write_runtime_report,
)
from moola.runtime._retry import RetryConfig, backoff_delays
from moola.runtime._runtime import MemberMismatchError, RunSummary, Runtime, ServedMember, decide
from moola.runtime._streaming import (
    BarOrderError,
    MemberStep,
    NotStreamableError,
    StreamingMember,
    ring_refusal,
)

__all__ = [
    "BAR_SCHEMA",
    "EVENT_KINDS",
    "SCHEMA_VERSION",
    "BarOrderError",
    "EventRow",
    "Feed",
    "FeedError",
    "FeedEvent",
    "FillRow",
    "HitRate",
    "Ledger",
    "LedgerError",
    "LedgerSchemaError",
    "LedgerUnavailable",
    "LiveFeed",
    "LiveFeedConfig",
    "MemberMismatchError",
    "MemberStep",
    "NotStreamableError",
    "PaperBook",
    "PaperResult",
    "PositionRow",
    "ReplayFeed",
    "ReplayFeedConfig",
    "RetryConfig",
    "RunSummary",
    "Runtime",
    "RuntimeConfig",
    "RuntimeSummary",
    "ServedMember",
    "SignalRow",
    "StreamingMember",
    "SymbolSummary",
    "ThresholdConfig",
    "Tick",
    "backoff_delays",
    "decide",
    "ledger_url",
    "paper_ledger",
    "ring_refusal",
    "runtime_outcomes",
    "runtime_summary",
    "status_rows",
    "status_table",
    "wilson_interval",
    "write_runtime_report",
]
