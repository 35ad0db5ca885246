"""Retry settings and exponential backoff shared by the live feed and the ledger."""

from __future__ import annotations

from collections.abc import Iterator

from pydantic import Field

from moola.config import MAX_REPEATS, Config


class RetryConfig(Config):
    """How long one call may take and how often it is retried.

    Delays double from `backoff_s` up to `backoff_max_s`; `max_retries` bounds the retries of one
    call (the first try is not a retry), so a call is tried at most `max_retries + 1` times.
    """

    timeout_s: float = Field(10.0, gt=0)
    max_retries: int = Field(5, ge=0, le=MAX_REPEATS)
    backoff_s: float = Field(0.5, ge=0)
    backoff_max_s: float = Field(30.0, ge=0)


def backoff_delays(cfg: RetryConfig) -> Iterator[float]:
    """The sleep before each retry: `max_retries` values, doubling from backoff_s, capped at backoff_max_s."""
    delay = cfg.backoff_s
    for _ in range(cfg.max_retries):
        yield min(delay, cfg.backoff_max_s)
        delay *= 2
