"""Helpers of the log tests: the root logger routed to a buffer, streams on pipes that count
their writes, records and field sets of every kind of value."""

from __future__ import annotations

import io
import json
import logging
import math
import os
import sys
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from decimal import Decimal
from enum import IntEnum, StrEnum
from typing import Any

from opentelemetry.trace import SpanContext, TraceFlags

from sidecar.config import TelemetryConfig
from sidecar.telemetry import setup_logging

LogReader = Callable[[], list[str]]


def install_log_output() -> Iterator[Callable[..., LogReader]]:
    """The `log_output` fixture's body: yields `install(**telemetry config) -> read`, which
    routes the root logger to a buffer; the root logger is restored after the yield.

    `read` flushes the handler first (as exit does): lines waiting for their batch's
    write are read too.
    """
    root = logging.getLogger()
    saved_handlers, saved_level = list(root.handlers), root.level

    def install(**config: Any) -> LogReader:
        buffer = io.StringIO()
        setup_logging(TelemetryConfig(**config), stream=buffer)
        (handler,) = root.handlers

        def read() -> list[str]:
            handler.flush()
            return buffer.getvalue().splitlines()

        return read

    yield install
    for handler in list(root.handlers):
        root.removeHandler(handler)
    for handler in saved_handlers:
        root.addHandler(handler)
    root.setLevel(saved_level)


def events(lines: list[str]) -> list[dict[str, Any]]:
    return [json.loads(line) for line in lines]


def one(entries: list[dict[str, Any]], message: str) -> dict[str, Any]:
    (entry,) = [entry for entry in entries if entry["message"] == message]
    return entry


def records() -> list[logging.LogRecord]:
    """Records as the sidecar makes them: extras, %-args, an exception, odd values."""
    logger = logging.getLogger("sidecar.test")
    made = [
        logger.makeRecord(
            "sidecar.stream", logging.INFO, "(unknown file)", 0, "stream_complete", (), None,
            extra={"event": "stream_complete", "trace_id": "ab" * 16, "span_id": "cd" * 8,
                   "output_tokens": 7, "ttft_ms": 1.25, "user": None, "odd": object()},
        ),
        logger.makeRecord("sidecar.server", logging.WARNING, "x", 1, "drop %s/%d", ("a", 3), None),
    ]  # fmt: skip
    try:
        raise ValueError("boom")
    except ValueError:
        made.append(
            logger.makeRecord("sidecar.test", logging.ERROR, "x", 1, "failed", (), sys.exc_info())
        )
    return made


class CountingText(io.TextIOWrapper):
    """A text stream over a real descriptor that counts the calls made on it."""

    writes: int = 0
    flushes: int = 0

    def write(self, text: str) -> int:
        self.writes += 1
        return super().write(text)

    def flush(self) -> None:
        self.flushes += 1
        super().flush()


def pipe_streams() -> Iterator[tuple[str, Callable[[int], CountingText], bool]]:
    """(kind, make a stream on a descriptor, whether it reaches the descriptor by itself)."""
    yield (
        "line-buffered, as stderr",
        (lambda fd: CountingText(io.BufferedWriter(io.FileIO(fd, "w")), line_buffering=True)),
        True,
    )
    yield (
        "write-through, as stderr with PYTHONUNBUFFERED",
        (lambda fd: CountingText(io.FileIO(fd, "w"), write_through=True)),
        True,
    )
    yield (
        "write-through onto a buffer",
        (lambda fd: CountingText(io.BufferedWriter(io.FileIO(fd, "w")), write_through=True)),
        False,
    )
    yield (
        "block-buffered file",
        (lambda fd: CountingText(io.BufferedWriter(io.FileIO(fd, "w")))),
        False,
    )


def pipe() -> tuple[CountingText, Callable[[], list[str]], Callable[[], None]]:
    """A line-buffered stream on a pipe, what has reached the pipe so far, and a closer."""
    read_end, write_end = os.pipe()
    os.set_blocking(read_end, False)
    stream = CountingText(io.BufferedWriter(io.FileIO(write_end, "w")), line_buffering=True)

    def written() -> list[str]:
        try:
            return os.read(read_end, 1 << 20).decode().splitlines()
        except BlockingIOError:
            return []

    def close() -> None:
        stream.close()
        os.close(read_end)

    return stream, written, close


class _Level(IntEnum):
    HIGH = 3


class _Kind(StrEnum):
    A = "kind-a"


class _Ratio(float):
    def __repr__(self) -> str:
        return "a ratio"


class _Text(str):
    def __str__(self) -> str:
        return "other text"


FIELD_SETS: dict[str, dict[str, Any]] = {
    "stream line": {
        "event": "stream_complete", "request_id": "req_1", "route": "/api/x",
        "model": "claude-sonnet-5-5", "stream": True, "trace_id": "ab" * 16,
        "span_id": "cd" * 8, "outcome": "completed", "input_tokens": 12, "ttft_ms": 412.5,
        "tokens_per_second": None, "cost_usd": 0.003636, "error_type": None,
    },
    "numbers": {"zero": 0, "big": 2**70, "neg": -3, "tiny": 1e-7, "third": 1 / 3,
                "nan": float("nan"), "inf": float("-inf"), "flag": False},
    "strings": {"unicode": "héllo ✓ 🚀 中文", "quotes": 'say "hi" \\ there',
                "newlines": "one\ntwo\r\n\tthree", "control": "\x00\x1f\u2028", "empty": ""},
    "odd values": {"obj": object(), "decimal": Decimal("1.10"), "bytes": b"\xff",
                   "when": datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC), "set": {1},
                   "nested": {"list": [1, "two", None, {"deep": object()}]}},
    "subclasses": {"int enum": _Level.HIGH, "str enum": _Kind.A, "float": _Ratio(0.5),
                   "str": _Text("sub ✓"), "big float": 1e300, "negative zero": -0.0,
                   "nan": float("nan"), "inf": float("inf"), "true": True, "none": None},
    "odd names": {"ключ": "value", 'quote"d': 1, "tab\there": [], "emoji 🚀": {}},
    "no fields": {},
    "empty trace id": {"event": "x", "trace_id": "", "span_id": "keep-place"},
    "span id only": {"span_id": "ef" * 8, "n": 1},
}  # fmt: skip


CURRENT = SpanContext(0x0AF7651916CD43DD8448EB211C80319C, 0x00F067AA0BA902B7, False,
                      TraceFlags(TraceFlags.SAMPLED))  # fmt: skip


def plain(value: Any) -> Any:
    """What a line holds for `value`: JSON's own types as they are (NaN and the
    infinities, which JSON has no word for, as null), anything else as `str` gives it."""
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    return str(value)
