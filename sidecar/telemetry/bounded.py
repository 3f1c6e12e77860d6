"""Attribute values a client (or an upstream) chooses, bounded before telemetry carries them.

A metric label takes memory per distinct value for the life of the process and a line
of `/metrics` per series, so no client may choose label values freely: a model name is
kept when it is known (the price table, `claude.model`, `claude.allowed_models`) or,
for a bounded few, when it extends a known name (dated ids such as
`claude-sonnet-5-5-20260101`); anything else is `other`. Spans get the same labels.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from typing import Final

from sidecar.int64 import INT64  # an OTLP int attribute is a signed 64-bit integer

OTHER_MODEL: Final = "other"
OTHER_ERROR: Final = "_OTHER"  # the OpenTelemetry conventions' fallback for error.type
MAX_EXTRA_LABELS: Final = 32  # values beyond the known ones, per kind, for the process
MAX_TEXT: Final = 128  # characters of a free-text span attribute (ids, reasons)
MAX_LOG_PATH: Final = 1024  # characters of a request path in a log line
MAX_USER_AGENT: Final = 256  # characters of `user_agent.original` (a request span's)
MAX_LIST: Final = 8  # items of a list-valued span attribute (stop sequences)
_IDENTIFIER: Final = re.compile(r"[A-Za-z][A-Za-z0-9_.]{0,47}")
# Anthropic's error types, plus the sidecar's own (`timeout_error`, relay outcomes, the
# types of the streams it ends itself: a stalled client, a stream lost at shutdown),
# which always pass, however many extras other values took.
KNOWN_ERROR_TYPES: Final = frozenset(
    {
        "invalid_request_error", "authentication_error", "permission_error", "not_found_error",
        "request_too_large", "rate_limit_error", "api_error", "overloaded_error",
        "billing_error", "timeout_error", "idle_timeout", "client_cancelled", "shutting_down",
        "upstream_error", "rejected", "client_stalled", "stream_lost",
    }
)  # fmt: skip


class BoundedLabels:
    """Known values pass; up to MAX_EXTRA_LABELS others pass when `extra` accepts them."""

    def __init__(self, known: Iterable[str], fallback: str, extra: Callable[[str], bool]) -> None:
        self._known = set(known)
        self._extra: set[str] = set()
        # Every value that passes as itself (known or extra; a value never stops passing):
        # a caller on the per-call path tests membership here and calls only for the rest.
        self.passing: set[str] = set(self._known)
        self._fallback = fallback
        self._accepts = extra

    def allow(self, values: Iterable[str]) -> None:
        """Add known values (e.g. the models a newly loaded config names)."""
        values = list(values)
        self._known.update(values)
        self.passing.update(values)

    def __call__(self, value: str | None) -> str:
        if value is None:
            return self._fallback
        if value in self.passing:
            return value
        if len(self._extra) < MAX_EXTRA_LABELS and self._accepts(value):
            self._extra.add(value)
            self.passing.add(value)
            return value
        return self._fallback


def model_labels(known: Iterable[str]) -> BoundedLabels:
    """Model names: known ones, and a few that extend a known one (dated model ids)."""
    names = list(known)

    def extends_known(value: str) -> bool:
        return len(value) <= 64 and any(value.startswith(name) for name in labels._known)

    labels = BoundedLabels(names, OTHER_MODEL, extends_known)
    return labels


def error_labels() -> BoundedLabels:
    """`error.type` values: the known ones, and a few identifier-like others (exception names)."""
    return BoundedLabels(KNOWN_ERROR_TYPES, OTHER_ERROR, lambda v: bool(_IDENTIFIER.fullmatch(v)))


def encodable(value: str) -> str:
    """A header's value as text an exporter can encode: aiohttp hands on bytes past ASCII
    that are no UTF-8 as `surrogateescape` characters, which protobuf and JSON refuse (an
    OTLP exporter would log a traceback per span and drop the attribute); each is U+FFFD."""
    return value.encode("utf-8", "surrogateescape").decode("utf-8", "replace")


def short_text(value: str) -> str:
    """A free-text attribute value cut to MAX_TEXT characters."""
    return value if len(value) <= MAX_TEXT else value[:MAX_TEXT]


def short_list(values: list[str]) -> list[str]:
    """A list-valued attribute cut to MAX_LIST items of MAX_TEXT characters each."""
    return [short_text(v) for v in values[:MAX_LIST]]


def span_int(value: object) -> int | None:
    """A number a client chose (`top_k`) as a span's int attribute: None for a bool, for
    what is no int, and for an int outside int64, which protobuf refuses (an OTLP exporter
    would log a traceback per span and drop the attribute)."""
    return value if type(value) is int and -INT64 <= value < INT64 else None


def span_float(value: object) -> float | None:
    """A number a client chose (`temperature`, `top_p`) as a span's double: a float as it
    is; an int within int64 as a float (one past it is left off as `top_k`'s is: past a
    double's range, converting it would raise); None for anything else."""
    if type(value) is float:
        return value
    return float(value) if type(value) is int and -INT64 <= value < INT64 else None
