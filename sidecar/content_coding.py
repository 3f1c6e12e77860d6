"""Undoing HTTP content codings (gzip, x-gzip, deflate) within a size bound.

Shared by what reads a whole body: a client's request body on the Claude routes, and
Claude's whole answers (a gateway in front of Claude may compress one it was asked
not to). The bound holds for the decoded bytes, so a small body cannot inflate past it.
"""

from __future__ import annotations

import zlib
from collections.abc import Iterable
from typing import Final

_GZIP: Final = 16 + zlib.MAX_WBITS
_ZLIB: Final = zlib.MAX_WBITS
_RAW_DEFLATE: Final = -zlib.MAX_WBITS
_DECODERS: Final = {"gzip": _GZIP, "x-gzip": _GZIP, "deflate": _ZLIB}
SUPPORTED: Final = "gzip, deflate, identity"


class CodingError(ValueError):
    """A body that cannot be decoded; `kind` says why (for the caller's own error)."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind  # "unsupported" | "too_large" | "corrupt"


def coding_names(values: Iterable[str]) -> list[str]:
    """The codings of `Content-Encoding` header values, in the order applied, lower-case,
    without `identity` (no coding)."""
    return [
        name
        for value in values
        for part in value.split(",")
        if (name := part.strip().lower()) and name != "identity"
    ]


def decode(raw: bytes, names: list[str], limit: int) -> bytes:
    """`raw` with the codings `names` undone (last applied first), at most `limit` bytes."""
    body = raw
    for name in reversed(names):
        wbits = _DECODERS.get(name)
        if wbits is None:
            raise CodingError(
                "unsupported",
                f"Content-Encoding {name[:32]!r} is not supported ({SUPPORTED} are)",
            )
        body = _inflate(body, wbits, limit)
    return body


def _inflate(data: bytes, wbits: int, limit: int) -> bytes:
    out = bytearray()
    while True:  # gzip allows several members one after another
        decoder = zlib.decompressobj(wbits)
        try:
            # Bounded: a small body that inflates past the limit stops at limit + 1 bytes.
            out += decoder.decompress(data, limit + 1 - len(out))
        except zlib.error:
            if wbits == _ZLIB and not out:
                wbits = _RAW_DEFLATE  # "deflate" as many clients send it: without the zlib header
                continue
            raise CodingError("corrupt", "the body is not valid for its Content-Encoding") from None
        if len(out) > limit:
            raise CodingError("too_large", f"the decoded body exceeds {limit} bytes")
        if not decoder.eof:
            raise CodingError("corrupt", "the body is cut short for its Content-Encoding")
        data = decoder.unused_data
        if not data or wbits != _GZIP:
            if data:
                raise CodingError("corrupt", "the body has bytes after its compressed data")
            return bytes(out)
