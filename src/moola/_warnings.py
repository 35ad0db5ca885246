"""Warning classes that commands filter before anything heavy is imported (this module imports
nothing, so the CLI can silence them without loading torch)."""

from __future__ import annotations


class GuardWarning(UserWarning):
    """A training run looks wrong; the message says why and what to check."""
