"""Bounded excerpts of untrusted text, for gRPC statuses and log lines.

A peer can send IDs of any length and any number. Echoed whole, they cost time that grows
with their size on the event loop (a status message is HPACK-encoded there: one 256 KB ID
once blocked the loop for 7 s) and fill the logs. Every request value quoted back goes through
here: a few values, each cut short, with counts for the rest.
"""

from __future__ import annotations

from collections.abc import Sequence

# Longer than any real device ID ("MIG-<uuid>::<replica>" is about 50 characters).
EXCERPT_CHARS = 64
# Values quoted before "and N more".
QUOTED_VALUES = 3


def excerpt(text: str, limit: int = EXCERPT_CHARS) -> str:
    """repr(text), cut to about `limit` characters, with the full length when cut:
    'GPU-aaaa…' (262144 characters). Escapes count: 64 NULs are 256 characters of repr."""
    quoted = repr(text[:limit])
    if len(text) <= limit and len(quoted) <= limit + 2:
        return quoted
    return f"{quoted[: limit + 1]}…{quoted[0]} ({len(text)} characters)"


def clip(text: str, limit: int = 4 * EXCERPT_CHARS) -> str:
    """`text` itself, cut to `limit` characters with the full length when longer."""
    if len(text) <= limit:
        return text
    return f"{text[:limit]}… ({len(text)} characters)"


def quote_some(values: Sequence[str], limit: int = QUOTED_VALUES) -> str:
    """The first `limit` values as excerpts, then how many more there are."""
    return listed([excerpt(v) for v in values[:limit]], len(values))


def listed(shown: Sequence[str], total: int) -> str:
    """'a, b, c and 9997 more': the items shown, out of `total`."""
    rest = total - len(shown)
    return ", ".join(shown) if rest <= 0 else f"{', '.join(shown)} and {rest} more"


def counted(count: int, noun: str) -> str:
    """'1 unknown device ID', '3 unknown device IDs'."""
    return f"{count} {noun}" if count == 1 else f"{count} {noun}s"
