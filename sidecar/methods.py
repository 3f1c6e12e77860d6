"""Which request methods read a resource: `HEAD` asks for what a `GET` would answer,
without its body (RFC 9110 9.3.2), so every check that reads a GET reads a HEAD too."""

from __future__ import annotations

from typing import Final

READS: Final = frozenset({"GET", "HEAD"})


def reads(method: str) -> bool:
    """True for `GET` and `HEAD`."""
    return method in READS
