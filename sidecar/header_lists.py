"""Repeated request fields read one way: a list-valued header's lines as one value, and a
field that may be given once (a credential, a resume cursor) refused when given twice."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Final

# WSGI/CGI servers name a header's variable with `_` for `-` (`HTTP_X_REAL_IP`); PHP and
# lighttpd's CGI/FastCGI make every other character `_` too, so `X.Real.IP` is that one
# variable as well. (Other characters that are no letter or digit aiohttp refuses in a name.)
_SEPARATORS: Final = str.maketrans("_.", "--")


def folded_name(name: str) -> str:
    """The one header an app behind WSGI, CGI or FastCGI reads `name` as: lower case, `_`
    and `.` read as `-`. Names compared for what the app sees are compared in this spelling."""
    return name.lower().translate(_SEPARATORS)


def header_value(headers: Mapping[str, str], name: str) -> str | None:
    """A list-valued header as one value: its lines joined by ", " (RFC 9110 5.3), None if
    absent. A second line means what a comma does: reading only the first would drop the
    rest (an `anthropic-beta` feature) or believe a client over its proxy (`X-Forwarded-For`).
    """
    # A multidict, asked by its method: cheaper than `isinstance` of its abstract class,
    # which every request pays once per header read.
    getall = getattr(headers, "getall", None)
    if getall is None:
        return headers.get(name)
    lines: list[str] = getall(name, ())
    if not lines:
        return None
    return lines[0] if len(lines) == 1 else ", ".join(lines)


class RepeatedField(ValueError):
    """A field that may be given once came more than once, with different values."""

    def __init__(self, name: str) -> None:
        super().__init__(name)
        self.name = name


def sole_value(fields: Mapping[str, str], name: str) -> str | None:
    """A field that may be given once (a header, or a query parameter): its value, None if
    absent. Given again with another value, it raises `RepeatedField`: which copy counts
    is then each reader's guess, and the sidecar and the app behind it could act on two
    different ones (check one credential, pass the other on). A copy repeated as is, is
    the same value."""
    getall = getattr(fields, "getall", None)  # a multidict (see `header_value`)
    if getall is None:
        return fields.get(name)
    values: list[str] = getall(name, ())
    if not values:
        return None
    first = values[0]
    if len(values) > 1 and any(value != first for value in values):
        raise RepeatedField(name)
    return first
