"""What a symbol may be: it names a store partition directory and appears in every report,
so control characters, line separators and names the filesystem cannot hold are refused."""

from __future__ import annotations

import unicodedata
from urllib.parse import quote

MAX_SYMBOL_CHARS = 64
MAX_SYMBOL_BYTES = 240  # the percent-encoded partition name ``symbol=...`` below NAME_MAX (255)
# besides letters and digits (any script): what tickers of the common venues use
SYMBOL_PUNCTUATION = frozenset("._-:/^=&+@!#$%*~'() ")
ALPHABET_TEXT = (f"letters, digits, inner spaces and {''.join(sorted(SYMBOL_PUNCTUATION - {' '}))}; "
                 f"at most {MAX_SYMBOL_CHARS} characters")


def partition_name(symbol: str) -> str:
    """The store's directory name for a symbol, percent-encoded so any allowed symbol is one name."""
    return f"symbol={quote(symbol, safe='')}"


def _show(symbol: str) -> str:
    return repr(symbol if len(symbol) <= 40 else symbol[:37] + "...")


def symbol_problem(symbol: str) -> str | None:
    """Why ``symbol`` cannot be stored, or None when it can."""
    if symbol.strip() == "":
        return "symbol is empty"
    for ch in symbol:
        if ch.isalnum() or ch in SYMBOL_PUNCTUATION:
            continue
        name = unicodedata.name(ch, "")
        kind = {"Cc": "a control character", "Zl": "a line separator", "Zp": "a paragraph separator",
                "Cf": "an invisible format character", "Zs": "a non-ASCII space"}.get(
            unicodedata.category(ch), "a character outside the symbol alphabet")
        return f"symbol {_show(symbol)} holds {kind} U+{ord(ch):04X}{f' ({name})' if name else ''}"
    if symbol.strip() != symbol:
        return f"symbol {_show(symbol)} has leading or trailing spaces"
    if len(symbol) > MAX_SYMBOL_CHARS:
        return f"symbol of {len(symbol)} characters is too long (at most {MAX_SYMBOL_CHARS})"
    if len(partition_name(symbol).encode()) > MAX_SYMBOL_BYTES:
        return (f"symbol {_show(symbol)} is {len(partition_name(symbol).encode())} bytes percent-encoded, "
                f"too long for a file name (at most {MAX_SYMBOL_BYTES})")
    return None
