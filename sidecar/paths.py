"""Canonical request paths: the one path a request is routed by and forwarded as.

A proxy that matches routes on one spelling of a path and lets a URL library
re-resolve another spelling for the upstream opens every route to the weakest
policy (`/public/../admin`). So each request path is put in one normal form, once,
and that form is used for route matching, for the Anthropic route's own checks and
as the upstream target, which is built from it verbatim (never resolved again):

- percent-encoded characters that mean nothing more in a path than themselves are
  decoded: the unreserved ones (`A-Z a-z 0-9 - . _ ~`) and `! $ & ' ( ) * + : @`
  (so `/%40admin` is `/@admin`, as the app behind will read it); every other escape
  is kept, with upper-case hex digits: `%3B`, `%3D` and `%2C` among them, since `;`,
  `=` and `,` start or split path parameters on some servers (`/admin%3Bx` is a
  segment named `admin;x` to them, `/admin;x` is `/admin`); characters that may not
  appear in a path are percent-encoded;
- empty segments are dropped (`//a` is `/a`, as nginx's `merge_slashes` does);
- dot segments are removed as RFC 3986 §5.2.4 says, after decoding, so `%2e%2E` is
  `..`; a `..` that would climb above `/` is refused.

Refused outright (400), because servers behind a proxy disagree about them:
an encoded `/` (`%2F`) or `\\` (`%5C`), a literal `\\`, control characters
(literal or encoded, NUL included), a malformed `%` escape, and a dot segment
carrying parameters (`..;x`, which Java servers treat as `..`). So is a segment whose
bytes past ASCII, escaped or raw, are not well-formed UTF-8 (`path_not_utf8`): an
overlong form (`%C0%AE` is `.` to a lenient decoder, so `%C0%AE%C0%AE` is `..`), an
encoded surrogate (`%ED%A0%80`), a code point past U+10FFFF, a stray continuation byte
or a truncated sequence. Kept escaped, such bytes would reach the app as a path the
routes never saw. (Raw bytes reach here as the parser decoded them: `surrogateescape`
characters for bytes that are no UTF-8.) Double encoding is no exception to anything:
`%25C0%25AE` is the text `%C0%AE`, forwarded as `%25C0%25AE`.
"""

from __future__ import annotations

import re
import urllib.parse
from dataclasses import dataclass
from typing import Final

# Bytes whose escape is decoded: unreserved, and the pchars no server reads as syntax.
_DECODED: Final = frozenset(
    b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~!$&'()*+:@"
)
# pchar = unreserved / sub-delims / ":" / "@" (RFC 3986 §3.3); anything else is encoded.
_PCHAR: Final = frozenset(
    "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~!$&'()*+,;=:@"
)
# A path already in normal form: no escapes, no dot or empty segments, nothing to encode.
_PLAIN: Final = re.compile(r"(?:/[A-Za-z0-9\-_~!$&'()*+,;=:@][A-Za-z0-9\-._~!$&'()*+,;=:@]*)*/?")
_HEX: Final = frozenset("0123456789abcdefABCDEF")
_DOTS: Final = frozenset({".", ".."})


@dataclass(frozen=True, slots=True)
class PathRefused(Exception):
    """A path the sidecar will not route: `reason` is a fixed label, `message` names no bytes."""

    reason: str
    message: str


@dataclass(frozen=True, slots=True)
class CanonicalPath:
    """A request path in its two readings: as written (dot segments kept) and resolved."""

    written: str  # decoded and merged like `path`, dot segments still in place
    path: str  # the canonical path: what routes match and what the upstream receives


def canonical(raw_path: str) -> CanonicalPath:
    """The canonical form of `raw_path` (the path as sent, without query); raises PathRefused."""
    if not raw_path.startswith("/"):
        raise PathRefused("path_invalid", "the request path must start with '/'")
    if _PLAIN.fullmatch(raw_path):  # the common case: one regex, no allocation
        return CanonicalPath(raw_path, raw_path)
    written: list[str] = []
    resolved: list[str] = []
    trailing = False
    for raw_segment in raw_path[1:].split("/"):
        segment = _segment(raw_segment)
        if segment == "":
            trailing = True
            continue
        written.append(segment)
        if segment == ".":
            trailing = True
        elif segment == "..":
            if not resolved:
                raise PathRefused("path_climbs", "the request path climbs above '/'")
            resolved.pop()
            trailing = True
        else:
            if segment.partition(";")[0] in _DOTS:
                raise PathRefused("path_invalid", "a dot segment with parameters is not allowed")
            resolved.append(segment)
            trailing = False
    tail = "/" if raw_path.endswith("/") and written else ""
    path = "/" + "/".join(resolved) + ("/" if trailing and resolved else "")
    return CanonicalPath("/" + "/".join(written) + tail, path)


def _segment(raw: str) -> str:
    """One segment in normal form (see the module: some escapes decoded, the rest kept or
    encoded); raises PathRefused."""
    if "%" not in raw and all(c in _PCHAR for c in raw):
        return raw
    out: list[str] = []
    i, end = 0, len(raw)
    past_ascii = False
    while i < end:
        char = raw[i]
        if char == "%":
            digits = raw[i + 1 : i + 3]
            if len(digits) != 2 or not all(d in _HEX for d in digits):
                raise PathRefused("path_invalid", "the request path has a malformed % escape")
            byte = int(digits, 16)
            past_ascii = past_ascii or byte > 0x7F
            _append_byte(out, byte)
            i += 3
            continue
        if char in _PCHAR:
            out.append(char)
        else:
            try:  # a byte the parser could not decode is a `surrogateescape` character
                encoded = char.encode("utf-8", "surrogateescape")
            except UnicodeEncodeError:  # any other lone surrogate is no text at all
                raise _not_utf8() from None
            past_ascii = past_ascii or char > "\x7f"
            for byte in encoded:
                _append_byte(out, byte)
        i += 1
    segment = "".join(out)
    if past_ascii:
        try:  # strict: no overlong form, surrogate, stray or missing continuation byte
            urllib.parse.unquote_to_bytes(segment).decode("utf-8")
        except UnicodeDecodeError:
            raise _not_utf8() from None
    return segment


def _not_utf8() -> PathRefused:
    return PathRefused(
        "path_not_utf8", "the request path's bytes past ASCII are not well-formed UTF-8"
    )


def _append_byte(out: list[str], byte: int) -> None:
    if byte in _DECODED:
        out.append(chr(byte))
    elif byte in (0x2F, 0x5C):
        raise PathRefused(
            "path_encoded_separator", "an encoded '/' or '\\' is not allowed in a path"
        )
    elif byte < 0x20 or byte == 0x7F:
        raise PathRefused("path_invalid", "control characters are not allowed in a path")
    else:
        out.append(f"%{byte:02X}")
