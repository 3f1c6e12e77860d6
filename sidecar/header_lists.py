"""List-valued request headers read whole: every line of a repeated header, as one value."""

from __future__ import annotations

from collections.abc import Mapping

from multidict import MultiMapping


def header_value(headers: Mapping[str, str], name: str) -> str | None:
    """A list-valued header as one value: its lines joined by ", " (RFC 9110 5.3), None if
    absent. A second line means what a comma does: reading only the first would drop the
    rest (an `anthropic-beta` feature) or believe a client over its proxy (`X-Forwarded-For`).
    """
    if not isinstance(headers, MultiMapping):
        return headers.get(name)
    lines = headers.getall(name, ())
    if not lines:
        return None
    return lines[0] if len(lines) == 1 else ", ".join(lines)
