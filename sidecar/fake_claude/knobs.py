"""Knobs of the fake Claude: process defaults, and per-request overrides from headers or a directive."""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TypeVar

HEADER_PREFIX = "x-fake-"
CONTENT_KINDS = frozenset({"text", "tool_use", "thinking", "web_search", "web_search_error"})
# Faults answered with an error status before any stream starts: status, error.type, message.
ERROR_FAULTS: dict[str, tuple[int, str, str]] = {
    "rate_limit": (
        429,
        "rate_limit_error",
        "Number of request tokens has exceeded your rate limit.",
    ),
    "overloaded": (529, "overloaded_error", "Overloaded"),
    "server_error": (500, "api_error", "Internal server error"),
    "bad_request": (400, "invalid_request_error", "Injected bad request"),
    "auth": (401, "authentication_error", "invalid x-api-key"),
    "permission": (
        403,
        "permission_error",
        "Your API key does not have permission to use the specified resource.",
    ),
    "not_found": (404, "not_found_error", "model: {model}"),  # the API names the model
    "timeout": (504, "timeout_error", "Request timed out"),
}
STREAM_FAULTS = frozenset(
    {"midstream_error", "stall", "stall_before_start", "stall_midstream", "drop", "slow_headers"}
)
FAULTS = frozenset(ERROR_FAULTS) | STREAM_FAULTS
KNOB_NAMES = frozenset({
    "tokens", "tps", "ttft_ms", "content", "fault", "retry_after", "after", "delay_ms",
    "fail_times", "fail_key", "stamp", "ping_ms",
})  # fmt: skip

# `[[fake k=v k=v]]`; values cannot contain `]` (keeps the scan to one cheap regex).
_DIRECTIVE = re.compile(r"\[\[fake(?:\s+([^\]]*))?\]\]")


N = TypeVar("N", int, float)


class KnobError(ValueError):
    """A knob the caller set cannot be used; answered as 400 invalid_request_error."""


@dataclass
class FakeSettings:
    """Process-wide defaults of the fake; tokens/tps/ttft_ms are overridable per request."""

    tokens: int = 40  # text deltas (≈ output tokens) per reply
    tps: float = 0.0  # deltas per second per stream; 0 = as fast as possible
    ttft_ms: float = 0.0  # pause between message_start and the first content block
    model: str | None = None  # None: echo the request's model
    api_key: str | None = None  # when set, other x-api-key / bearer values get 401


@dataclass(frozen=True, slots=True)
class Knobs:
    """The effective knobs of one request (settings overlaid by directive, then headers)."""

    tokens: int
    tps: float
    ttft_ms: float
    content: str = "text"
    fault: str | None = None
    retry_after: str | None = None
    after: int = 3  # content deltas sent before a mid-stream error, stall or drop
    delay_ms: float = 1000.0  # slow_headers pause
    fail_times: int | None = None
    fail_key: str | None = None
    stamp: bool = False  # text deltas carry their send time (monotonic ns), for benchmarks
    # A stall (`stall`, `stall_midstream`) sends Claude's `event: ping` this often (0: none),
    # as the API does while a server tool runs: bytes from Claude, nothing for a client.
    ping_ms: float = 0.0


def parse_directive(text: str) -> dict[str, str]:
    """`... [[fake fault=overloaded retry_after=2]] ...` → {"fault": "overloaded", "retry_after": "2"}.

    The first directive in the text wins; no directive gives {}.
    """
    match = _DIRECTIVE.search(text)
    if match is None:
        return {}
    knobs: dict[str, str] = {}
    for pair in (match.group(1) or "").split():
        name, sep, value = pair.partition("=")
        if not sep or not name:
            raise KnobError(f"fake directive: expected key=value, got {pair!r}")
        knobs[name] = value
    return knobs


def header_knobs(headers: Mapping[str, str]) -> dict[str, str]:
    """`x-fake-retry-after: 2` → {"retry_after": "2"} (names are case-insensitive)."""
    knobs: dict[str, str] = {}
    for name, value in headers.items():
        lowered = name.lower()
        if lowered.startswith(HEADER_PREFIX):
            knobs[lowered[len(HEADER_PREFIX) :].replace("-", "_")] = value.strip()
    return knobs


def resolve_knobs(raw: Mapping[str, str], settings: FakeSettings) -> Knobs:
    """Validate raw knob strings over the process defaults; raise KnobError naming the bad one."""
    unknown = sorted(set(raw) - KNOB_NAMES)
    if unknown:
        raise KnobError(f"unknown fake knob(s): {', '.join(unknown)}")
    fault = raw.get("fault") or None
    if fault is not None and fault not in FAULTS:
        raise KnobError(f"fault: unknown fault {fault!r}; one of {', '.join(sorted(FAULTS))}")
    content = raw.get("content", "text")
    if content not in CONTENT_KINDS:
        raise KnobError(f"content: one of {', '.join(sorted(CONTENT_KINDS))}")
    fail_times = raw.get("fail_times")
    return Knobs(
        tokens=_number(raw, "tokens", settings.tokens, int),
        tps=_number(raw, "tps", settings.tps, float),
        ttft_ms=_number(raw, "ttft_ms", settings.ttft_ms, float),
        content=content,
        fault=fault,
        retry_after=raw["retry_after"] if _number(raw, "retry_after", -1.0, float) >= 0 else None,
        after=_number(raw, "after", 3, int),
        delay_ms=_number(raw, "delay_ms", 1000.0, float),
        fail_times=None if fail_times is None else _number(raw, "fail_times", 1, int),
        fail_key=raw.get("fail_key"),
        stamp=raw.get("stamp", "0") in ("1", "true"),
        ping_ms=_number(raw, "ping_ms", 0.0, float),
    )


def _number(raw: Mapping[str, str], name: str, default: N, kind: type[N]) -> N:
    if name not in raw:
        return default
    try:
        return check_number(raw[name], kind)
    except KnobError as exc:
        raise KnobError(f"{name}: {exc}") from None


def check_number(text: str, kind: type[N]) -> N:
    """A knob's number: finite and >= 0 (`nan` and `inf` parse as floats, and would reach
    the event loop's timers as a pause or a rate); KnobError says why not."""
    try:
        value = kind(text)
    except ValueError:
        raise KnobError(f"expected a number, got {text!r}") from None
    if not math.isfinite(value) or value < 0:
        raise KnobError(f"must be a finite number >= 0, got {text!r}")
    return value
