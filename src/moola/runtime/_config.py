"""The runtime's typed config (``moola runtime run --config runtime.yaml``).

Dry-run is the only mode: there is no key that would place an order. A bad file lists every
problem at once, naming the keys, like every other moola config.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import Field, field_validator, model_validator

from moola.config import Config
from moola.data import Timeframe
from moola.evaluation.economics import CostConfig
from moola.inference import EnsembleConfig
from moola.runtime._retry import RetryConfig

__all__ = ["LiveFeedConfig", "ReplayFeedConfig", "RuntimeConfig", "ThresholdConfig"]


class ReplayFeedConfig(Config):
    """Bars from a moola store (or a bars file), deterministic; the default for tests and demos."""

    kind: Literal["replay"] = "replay"
    source: str = Field(description="a moola store directory or a bars file (Parquet/CSV)")
    start: datetime | None = Field(None, description="first bar to replay (UTC); default: the first")
    end: datetime | None = Field(None, description="last bar to replay (UTC); default: the last")
    last_fraction: float | None = Field(None, gt=0, le=1, description=(
        "replay only the last fraction of the bars' time span (0.15: a 70/15/15 split's test "
        "period); not with start"))
    pace_s: float | None = Field(None, ge=0, description=(
        "seconds to sleep per tick (a simulated clock); null: as fast as possible"))

    @model_validator(mode="after")
    def _start_or_fraction(self) -> ReplayFeedConfig:
        if self.start is not None and self.last_fraction is not None:
            raise ValueError("feed: set start or last_fraction, not both")
        return self


class LiveFeedConfig(Config):
    """Polls an exchange through ccxt ``fetch_ohlcv`` (public market data only)."""

    kind: Literal["live"] = "live"
    exchange: str = Field("binance", description="ccxt exchange id")
    options: dict[str, Any] = Field(default_factory=dict, description=(
        "extra ccxt exchange options (e.g. urls for a test server); never API keys: dry-run only"))
    poll_s: float = Field(5.0, gt=0, description="seconds between polls")
    stale_after_s: float = Field(180.0, gt=0, description=(
        "no new closed bar of a symbol for this long: a 'stale' event and no-signal rows"))

    @field_validator("options")
    @classmethod
    def _no_keys(cls, v: dict[str, Any]) -> dict[str, Any]:
        secret = sorted(k for k in v if k.lower() in {"apikey", "secret", "password", "uid", "privatekey"})
        if secret:
            raise ValueError(f"feed.options: {secret} are credentials; the runtime is dry-run only "
                             "and reads public candles, so it takes none")
        return v


FeedConfig = Annotated[ReplayFeedConfig | LiveFeedConfig, Field(discriminator="kind")]


class ThresholdConfig(Config):
    """How a calibrated P(up) becomes a decision: +1 above 0.5 + band, -1 below 0.5 - band
    (long_short), else 0."""

    mode: Literal["long_flat", "long_short"] = "long_short"
    band: float | Literal["validation"] = Field("validation", description=(
        "a number in [0, 0.5), or 'validation': per symbol, the mean of the members' bands "
        "chosen on their validation rows (metrics.json economics), 0.5 (flat) when none has one"))

    @field_validator("band")
    @classmethod
    def _band_range(cls, v: float | str) -> float | str:
        if isinstance(v, float) and not 0 <= v < 0.5:
            raise ValueError(f"thresholds.band must be in [0, 0.5) or 'validation', got {v}")
        return v


class RuntimeConfig(Config):
    """One dry-run runtime: an ensemble served on a feed for some symbols, into a ledger."""

    name: str = Field(pattern=r"^[A-Za-z0-9_.+-]+$", description="the runtime's name in the ledger")
    ensemble: str | EnsembleConfig = Field(description=(
        "an ensemble YAML file, or the ensemble inline (members as models:/NAME@ALIAS or run dirs)"))
    symbols: list[str] = Field(min_length=1)
    timeframe: str = "1m"
    feed: FeedConfig
    db: str = Field("sqlite:///runtime.sqlite", description=(
        "SQLAlchemy URL of the ledger: a SQLite file (default) or postgresql://..."))
    thresholds: ThresholdConfig = ThresholdConfig()
    costs: CostConfig = CostConfig()
    retry: RetryConfig = Field(default_factory=RetryConfig, description="the live feed's calls")
    db_retry: RetryConfig = Field(
        default_factory=lambda: RetryConfig(timeout_s=2.0, max_retries=5, backoff_s=0.5, backoff_max_s=30.0),
        description="the ledger: one try holds a tick up for at most timeout_s while the database is away")
    streaming: bool = Field(True, description=(
        "advance recurrent members one bar per tick (exact; unidirectional LSTM/GRU only)"))

    @field_validator("timeframe")
    @classmethod
    def _timeframe(cls, v: str) -> str:
        try:
            Timeframe(v)
        except ValueError:
            raise ValueError(f"timeframe {v!r}: choose from {[t.value for t in Timeframe]}") from None
        return v

    @field_validator("symbols")
    @classmethod
    def _unique(cls, v: list[str]) -> list[str]:
        dup = sorted({s for s in v if v.count(s) > 1})
        if dup:
            raise ValueError(f"symbols repeat: {dup}")
        return v
