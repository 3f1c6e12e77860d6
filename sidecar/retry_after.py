"""Waits read from an answer's `retry-after` and `retry-after-ms`, bounded and sane.

RFC 9110 §10.2.3: `Retry-After` is an HTTP-date or delay-seconds, a non-negative
integer (digits only). Anything else is no value at all: a sign (`-5`), a fraction or an
exponent (`1.5`, `1e9`), `nan`, `inf`, Python's `1_0`, a non-ASCII digit. Such a value
is ignored (the reader falls back to its own backoff), never read as "retry now" or as
a wait without end. `retry-after-ms` (Anthropic's, read by the official SDKs) is the
same in milliseconds, which may have a fraction. A valid wait longer than MAX_SECONDS
is MAX_SECONDS: far past any retry budget, it still means "not now", and no arithmetic
on it overflows. An HTTP-date in the past is a wait of 0 (the time it names has come).
"""

from __future__ import annotations

import re
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Final

MAX_SECONDS: Final = 86_400.0  # a day: any longer wait is read as this
_OWS: Final = " \t"
_DELAY_SECONDS: Final = re.compile(r"[0-9]+")  # ASCII digits ([0-9], not \d)
_DELAY_MS: Final = re.compile(r"[0-9]+(?:\.[0-9]+)?")  # float() of any length: inf at most
_DATE: Final = re.compile(r"[A-Za-z]{3},? [ -~]{1,60}")  # IMF-fixdate, RFC 850, asctime


def retry_after_seconds(value: str | None) -> float | None:
    """`retry-after` as seconds from now, from 0 to MAX_SECONDS; None when not a valid value."""
    if value is None:
        return None
    value = value.strip(_OWS)
    if _DELAY_SECONDS.fullmatch(value):
        return min(float(value), MAX_SECONDS)
    if not _DATE.fullmatch(value):
        return None
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
    if when.tzinfo is None:  # RFC 9110: HTTP-dates are GMT
        when = when.replace(tzinfo=UTC)
    seconds = (when - datetime.now(UTC)).total_seconds()
    return min(max(0.0, seconds), MAX_SECONDS)


def retry_after_ms_seconds(value: str | None) -> float | None:
    """`retry-after-ms` as seconds from now, from 0 to MAX_SECONDS; None when not a valid value."""
    if value is None:
        return None
    value = value.strip(_OWS)
    if not _DELAY_MS.fullmatch(value):
        return None
    return min(float(value) / 1000, MAX_SECONDS)


def retry_wait(retry_after: str | None, retry_after_ms: str | None) -> float | None:
    """The wait an answer asks for: `retry-after-ms` wins over `retry-after` (as the
    official SDKs read them); None when neither holds a valid value."""
    wait = retry_after_ms_seconds(retry_after_ms)
    return wait if wait is not None else retry_after_seconds(retry_after)


def keep_valid_waits(headers: dict[str, str]) -> None:
    """Drop `retry-after` / `retry-after-ms` values that are no valid wait from an answer
    of the sidecar's own shape (the prompt and `ui` routes' error JSON) that relays
    Claude's: its client is told no wait rather than `-5` or `1e9`. (The Anthropic route
    passes Claude's answer on as sent.) A valid value is passed on as Claude wrote it."""
    if "retry-after" in headers and retry_after_seconds(headers["retry-after"]) is None:
        del headers["retry-after"]
    if "retry-after-ms" in headers and retry_after_ms_seconds(headers["retry-after-ms"]) is None:
        del headers["retry-after-ms"]
