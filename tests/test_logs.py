"""Structured logs: JSON lines with trace ids, stream and rejection events, never secrets or prompts."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import io
import json
import logging
import math
import os
import sys
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from decimal import Decimal
from enum import Enum, IntEnum, StrEnum
from typing import Any

import pytest
from opentelemetry import trace
from opentelemetry.trace import NonRecordingSpan, SpanContext, TraceFlags

from sidecar.config import TelemetryConfig
from sidecar.telemetry import JsonFormatter, log_format, log_handler, setup_logging
from sidecar.telemetry.log_format import TextFormatter
from sidecar.telemetry.log_handler import LineHandler
from sidecar.telemetry.logs import log_event
from tests.support.otel import TRACEPARENT, make_otel, prompt
from tests.support.sidecars import SidecarFactory

CLIENT_KEY = "sk-client-key-0123456789"
AUTH = {
    "mode": "required",
    "api_keys": [
        {"name": "ci", "sha256": hashlib.sha256(CLIENT_KEY.encode()).hexdigest(), "user": "ci-bot"}
    ],
}
SECRET_PROMPT = "my-very-private-prompt-text"

LogReader = Callable[[], list[str]]


@pytest.fixture
def log_output() -> Iterator[Callable[..., LogReader]]:
    """`read = log_output(**telemetry config)`: routes the root logger to a buffer, restores it.

    `read` flushes the handler first (as exit does): lines waiting for their batch's
    write are read too. When they are written is the subject of tests of its own.
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


async def test_stream_lines_carry_trace_ids_numbers_and_no_secrets(
    sidecar_for: SidecarFactory, log_output: Callable[..., LogReader]
) -> None:
    read = log_output(log_format="json")
    otel = make_otel()
    async with sidecar_for({"auth": AUTH}, telemetry=otel.telemetry) as sidecar:
        status, _ = await prompt(
            sidecar.url,
            f"{SECRET_PROMPT} [[fake tokens=7 tps=200]]",
            {"x-api-key": CLIENT_KEY, "traceparent": TRACEPARENT},
        )
    assert status == 200
    lines = read()
    entries = events(lines)  # every line is one JSON object
    client = otel.client_span()
    trace_id = f"{client.context.trace_id:032x}"
    assert trace_id == TRACEPARENT.split("-")[1]

    start = one(entries, "stream_start")
    complete = one(entries, "stream_complete")
    access = one(entries, "request")
    for entry in (start, complete):
        assert entry["logger"] == "sidecar.stream"
        assert entry["trace_id"] == trace_id
        assert entry["span_id"] == f"{client.context.span_id:016x}"
        assert entry["request_id"].startswith("req_")
        assert entry["route"] == "/api/stream-response"
        assert entry["model"] == "claude-sonnet-5-5"
        assert entry["user"] == hashlib.sha256(b"ci-bot").hexdigest()[:16]
    assert complete["level"] == "INFO"
    assert complete["event"] == "stream_complete"
    assert complete["outcome"] == "completed"
    assert complete["output_tokens"] == 7
    assert complete["input_tokens"] > 0
    assert complete["ttft_ms"] > 0
    assert complete["duration_ms"] >= complete["ttft_ms"]
    assert complete["tokens_per_second"] > 0
    assert complete["cost_usd"] > 0
    assert complete["stop_reason"] == "end_turn"
    assert access["logger"] == "sidecar.access"
    assert access["status"] == 200
    assert access["trace_id"] == trace_id
    assert access["request_id"] == complete["request_id"]
    assert access["path"] == "/api/stream-response"

    text = "\n".join(lines)
    assert SECRET_PROMPT not in text
    assert CLIENT_KEY not in text
    assert "sk-sidecar" not in text  # the sidecar's own Claude key
    assert "ci-bot" not in text  # hashed by default


async def test_rejections_and_errors_are_logged(
    sidecar_for: SidecarFactory, log_output: Callable[..., LogReader]
) -> None:
    read = log_output()
    async with sidecar_for() as sidecar:
        status, _ = await prompt(sidecar.url, "x [[fake fault=midstream_error after=1]]")
        assert status == 200
        bad, _ = await prompt(sidecar.url, "", {"traceparent": TRACEPARENT})
        assert bad == 400
    entries = events(read())
    error = one(entries, "stream_error")
    assert error["level"] == "WARNING"
    assert error["outcome"] == "upstream_error"
    assert error["error_type"] == "overloaded_error"
    rejected = one(entries, "request_rejected")
    assert rejected["reason"] == "invalid_request"
    assert rejected["status"] == 400
    assert rejected["trace_id"] == TRACEPARENT.split("-")[1]
    assert rejected["route"] == "/api/stream-response"


async def test_no_log_line_per_event(
    sidecar_for: SidecarFactory, log_output: Callable[..., LogReader]
) -> None:
    read = log_output()
    async with sidecar_for() as sidecar:
        await prompt(sidecar.url, "short [[fake tokens=2]]")
        short = len(read())
        await prompt(sidecar.url, "long [[fake tokens=200]]")
    assert len(read()) == 2 * short  # start, complete, access: whatever the length


async def test_text_format_and_access_log_off(
    sidecar_for: SidecarFactory, log_output: Callable[..., LogReader]
) -> None:
    read = log_output(log_format="text")
    otel = make_otel(access_log=False)
    async with sidecar_for(telemetry=otel.telemetry) as sidecar:
        await prompt(sidecar.url, "hi", {"traceparent": TRACEPARENT})
    lines = read()
    (complete,) = [line for line in lines if " stream_complete " in line]
    assert f"trace_id={TRACEPARENT.split('-')[1]}" in complete
    assert "outcome=completed" in complete
    assert not [line for line in lines if "sidecar.access" in line]


def test_json_formatter_handles_exceptions_and_odd_values() -> None:
    logger = logging.getLogger("sidecar.test")
    try:
        raise ValueError("boom")
    except ValueError:
        record = logger.makeRecord(
            "sidecar.test", logging.ERROR, __file__, 1, "failed %s", ("x",),
            exc_info=sys.exc_info(), extra={"odd": object(), "n": 3},
        )  # fmt: skip
    entry = json.loads(JsonFormatter().format(record))
    assert entry["message"] == "failed x"
    assert entry["level"] == "ERROR"
    assert entry["n"] == 3
    assert entry["odd"].startswith("<object object")
    assert "ValueError: boom" in entry["exception"]
    assert entry["time"].endswith("Z")


async def test_stream_start_comes_first_even_for_a_call_ended_at_once(
    sidecar_for: SidecarFactory, log_output: Callable[..., LogReader]
) -> None:
    """A quota refusal ends the call before its request is written: its start completes
    at its end, still first."""
    read = log_output()
    otel = make_otel()
    quotas = {"quotas": {"store": "memory", "requests_per_minute": 1}}
    async with sidecar_for(quotas, telemetry=otel.telemetry) as sidecar:
        first, _ = await prompt(sidecar.url, "one [[fake tokens=2]]")
        second, _ = await prompt(sidecar.url, "two [[fake tokens=2]]")
    assert (first, second) == (200, 429)
    entries = events(read())
    stream = [e for e in entries if e["logger"] == "sidecar.stream"]
    assert [e["message"] for e in stream] == [
        "stream_start", "stream_complete", "stream_start", "stream_error"
    ]  # fmt: skip
    assert stream[2]["request_id"] == stream[3]["request_id"] != stream[0]["request_id"]
    assert stream[3]["outcome"] == "rejected"
    for start, end in ((stream[0], stream[1]), (stream[2], stream[3])):
        assert start["trace_id"] == end["trace_id"]
        assert start["span_id"] == end["span_id"]
    # One queue wait point per admitted call, however the deferred start and admission interleave.
    assert otel.count("sidecar.queue.wait", **{"sidecar.queue.admitted": True}) == 1
    assert otel.count("sidecar.streams", **{"sidecar.stream.outcome": "rejected"}) == 1


async def test_telemetry_off_still_logs_usage_and_cost(
    sidecar_for: SidecarFactory,
    log_output: Callable[..., LogReader],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """With the SDK off nothing is measured, but the stream lines keep every number."""
    read = log_output()
    monkeypatch.setenv("OTEL_SDK_DISABLED", "true")
    otel = make_otel()
    assert not otel.telemetry.enabled
    async with sidecar_for(telemetry=otel.telemetry) as sidecar:
        status, _ = await prompt(sidecar.url, "hello [[fake tokens=3]]")
    assert status == 200
    entries = events(read())
    (complete,) = [e for e in entries if e["message"] == "stream_complete"]
    assert complete["outcome"] == "completed"
    assert complete["output_tokens"] == 3
    assert complete["input_tokens"] > 0
    assert complete["cost_usd"] > 0
    assert complete["upstream_status"] == 200
    assert otel.exporter.get_finished_spans() == ()  # no provider ever held the exporter


def _records() -> list[logging.LogRecord]:
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


@pytest.mark.parametrize("formatter", [JsonFormatter(), TextFormatter()], ids=["json", "text"])
def test_line_handler_writes_what_stream_handler_writes(formatter: logging.Formatter) -> None:
    ours, theirs = io.StringIO(), io.StringIO()
    line_handler, stream_handler = LineHandler(ours), logging.StreamHandler(theirs)
    for handler in (line_handler, stream_handler):
        handler.setFormatter(formatter)
    for record in _records():
        assert line_handler.handle(record)
        stream_handler.handle(record)
    assert ours.getvalue() == theirs.getvalue()
    assert ours.getvalue().count("\n") >= 3


class _CountingText(io.TextIOWrapper):
    """A text stream over a real descriptor that counts the calls made on it."""

    writes: int = 0
    flushes: int = 0

    def write(self, text: str) -> int:
        self.writes += 1
        return super().write(text)

    def flush(self) -> None:
        self.flushes += 1
        super().flush()


def _pipe_streams() -> Iterator[tuple[str, Callable[[int], _CountingText], bool]]:
    """(kind, make a stream on a descriptor, whether it reaches the descriptor by itself)."""
    yield (
        "line-buffered, as stderr",
        (lambda fd: _CountingText(io.BufferedWriter(io.FileIO(fd, "w")), line_buffering=True)),
        True,
    )
    yield (
        "write-through, as stderr with PYTHONUNBUFFERED",
        (lambda fd: _CountingText(io.FileIO(fd, "w"), write_through=True)),
        True,
    )
    yield (
        "write-through onto a buffer",
        (lambda fd: _CountingText(io.BufferedWriter(io.FileIO(fd, "w")), write_through=True)),
        False,
    )
    yield (
        "block-buffered file",
        (lambda fd: _CountingText(io.BufferedWriter(io.FileIO(fd, "w")))),
        False,
    )


@pytest.mark.parametrize("direct", [False, True], ids=["logging", "log_event"])
@pytest.mark.parametrize(("kind", "make", "by_itself"), list(_pipe_streams()))
def test_every_line_reaches_the_descriptor_when_logged(
    kind: str,
    make: Callable[[int], _CountingText],
    by_itself: bool,
    direct: bool,
    log_output: Callable[..., LogReader],
    records_made: list[str],
) -> None:
    """One write per line, flushed only where the stream would not pass the line on itself,
    by `logging` or written directly by `log_event`."""
    log_output()  # restores the root logger afterwards
    read_end, write_end = os.pipe()
    os.set_blocking(read_end, False)  # a line held back fails the read instead of hanging
    stream = make(write_end)
    try:
        setup_logging(TelemetryConfig(log_format="json"), stream=stream)
        log = logging.getLogger("sidecar.stream")
        for n in range(3):
            if direct:
                log_event(log, logging.INFO, "stream_start", {"request_id": f"req_{n}"})
            else:
                log.info("stream_start", extra={"request_id": f"req_{n}"})
            line = os.read(read_end, 65536).decode()  # there now, not at some later flush
            assert line.count("\n") == 1, kind
            assert line.endswith("\n"), kind
            assert json.loads(line)["request_id"] == f"req_{n}"
        assert stream.writes == 3
        assert records_made == ([] if direct else ["sidecar.stream"] * 3)
        assert stream.flushes == (0 if by_itself else 3)
    finally:
        logging.getLogger().handlers.clear()
        stream.close()
        os.close(read_end)


@pytest.mark.parametrize(("kind", "make", "by_itself"), list(_pipe_streams()))
async def test_a_loop_turns_per_call_lines_reach_the_descriptor_in_one_write_at_its_end(
    kind: str,
    make: Callable[[int], _CountingText],
    by_itself: bool,
    log_output: Callable[..., LogReader],
) -> None:
    """With `log_flush_seconds: 0`, on a running loop, `log_event`'s lines wait for the end
    of the turn and leave together, in order, in one write; a line through `logging`
    leaves at once, after the lines waiting; `flush` writes them too."""
    log_output()
    read_end, write_end = os.pipe()
    os.set_blocking(read_end, False)
    stream = make(write_end)

    def written() -> list[str]:
        try:
            return os.read(read_end, 65536).decode().splitlines()
        except BlockingIOError:
            return []

    try:
        setup_logging(TelemetryConfig(log_format="json", log_flush_seconds=0), stream=stream)
        log = logging.getLogger("sidecar.stream")
        for n in range(3):
            log_event(log, logging.INFO, "stream_start", {"request_id": f"req_{n}"})
        assert written() == [], kind  # not before the turn ends
        assert stream.writes == 0
        await asyncio.sleep(0)
        lines = written()
        assert [json.loads(line)["request_id"] for line in lines] == ["req_0", "req_1", "req_2"]
        assert stream.writes == 1
        assert stream.flushes == (0 if by_itself else 1)

        log_event(log, logging.INFO, "stream_start", {"request_id": "req_3"})
        log.warning("at once", extra={"n": 1})  # leaves now, after the line waiting
        assert [json.loads(line)["message"] for line in written()] == ["stream_start", "at once"]
        assert stream.writes == 2

        log_event(log, logging.INFO, "stream_start", {"request_id": "req_4"})
        logging.getLogger().handlers[0].flush()
        assert [json.loads(line)["request_id"] for line in written()] == ["req_4"]
        await asyncio.sleep(0)  # the turn's end finds nothing left to write
        assert written() == []
        assert stream.writes == 3
    finally:
        logging.getLogger().handlers.clear()
        stream.close()
        os.close(read_end)


def test_lines_waiting_on_a_loop_that_never_ran_again_leave_with_the_next_line(
    log_output: Callable[..., LogReader],
) -> None:
    """A loop that stopped before its turn ended: its lines go with the next write,
    whichever loop (or none) makes it; `logging.shutdown` at exit flushes the rest."""
    log_output()  # restores the root logger afterwards
    buffer = io.StringIO()
    setup_logging(TelemetryConfig(log_flush_seconds=0), stream=buffer)
    log = logging.getLogger("sidecar.stream")

    def read() -> list[str]:  # what was written, nothing flushed first
        return buffer.getvalue().splitlines()

    async def log_and_stop() -> None:
        log_event(log, logging.INFO, "first", {"n": 1})
        asyncio.get_running_loop().stop()

    loop = asyncio.new_event_loop()
    try:
        with contextlib.suppress(RuntimeError):  # stopped before the task finished
            loop.run_until_complete(log_and_stop())
    finally:
        loop.close()
    assert read() == []  # its turn never ended

    async def log_second() -> None:
        log_event(log, logging.INFO, "second", {"n": 2})

    asyncio.run(log_second())
    log_event(log, logging.INFO, "third", {"n": 3})  # no loop: at once
    assert [json.loads(line)["message"] for line in read()] == ["first", "second", "third"]


def _pipe() -> tuple[_CountingText, Callable[[], list[str]], Callable[[], None]]:
    """A line-buffered stream on a pipe, what has reached the pipe so far, and a closer."""
    read_end, write_end = os.pipe()
    os.set_blocking(read_end, False)
    stream = _CountingText(io.BufferedWriter(io.FileIO(write_end, "w")), line_buffering=True)

    def written() -> list[str]:
        try:
            return os.read(read_end, 1 << 20).decode().splitlines()
        except BlockingIOError:
            return []

    def close() -> None:
        stream.close()
        os.close(read_end)

    return stream, written, close


async def test_per_call_lines_wait_out_the_flush_delay_then_leave_in_one_write(
    log_output: Callable[..., LogReader],
) -> None:
    """By default the per-call lines of many turns leave together, `log_flush_seconds`
    after the first of them was logged, in order and in one write."""
    log_output()
    stream, written, close = _pipe()
    try:
        setup_logging(TelemetryConfig(log_flush_seconds=0.2), stream=stream)
        log = logging.getLogger("sidecar.stream")
        logged_at = asyncio.get_running_loop().time()
        for n in range(5):  # five turns
            log_event(log, logging.INFO, "stream_start", {"request_id": f"req_{n}"})
            await asyncio.sleep(0)
        assert written() == []  # the turns ended, the delay has not passed
        assert stream.writes == 0
        lines: list[str] = []
        while not lines:
            await asyncio.sleep(0.01)
            lines = written()
        assert asyncio.get_running_loop().time() - logged_at >= 0.2
        assert [json.loads(line)["request_id"] for line in lines] == [f"req_{n}" for n in range(5)]
        assert stream.writes == 1
    finally:
        logging.getLogger().handlers.clear()
        close()


async def test_a_warning_line_takes_the_lines_waiting_out_at_the_end_of_its_turn(
    log_output: Callable[..., LogReader],
) -> None:
    """A per-call line at WARNING or above (`stream_error`, a malformed request's
    `request_rejected`) does not wait out the delay: it leaves, after the lines waiting,
    at the end of the turn that logged it; so does a line through `logging`, at once."""
    log_output()
    stream, written, close = _pipe()
    try:
        setup_logging(TelemetryConfig(log_flush_seconds=5), stream=stream)
        log = logging.getLogger("sidecar.stream")
        log_event(log, logging.INFO, "stream_start", {"request_id": "req_0"})
        await asyncio.sleep(0)
        log_event(log, logging.WARNING, "stream_error", {"request_id": "req_0"})
        assert written() == []
        await asyncio.sleep(0)
        assert [json.loads(line)["message"] for line in written()] == [
            "stream_start",
            "stream_error",
        ]
        assert stream.writes == 1

        log_event(log, logging.INFO, "stream_start", {"request_id": "req_1"})
        log.error("at once")
        assert [json.loads(line)["message"] for line in written()] == ["stream_start", "at once"]
        await asyncio.sleep(0.01)
        assert written() == []
        assert stream.writes == 2
    finally:
        logging.getLogger().handlers.clear()
        close()


async def test_lines_waiting_are_bounded_the_last_one_writes_them_all(
    log_output: Callable[..., LogReader],
) -> None:
    """However fast calls come, at most `MAX_WAITING` lines wait: the one that reaches it
    writes them, in one write; the timer then finds nothing left."""
    log_output()
    stream, written, close = _pipe()
    try:
        setup_logging(TelemetryConfig(log_flush_seconds=5), stream=stream)
        log = logging.getLogger("sidecar.stream")
        for n in range(log_handler.MAX_WAITING - 1):
            log_event(log, logging.INFO, "stream_start", {"n": n})
        assert written() == []
        log_event(log, logging.INFO, "stream_start", {"n": log_handler.MAX_WAITING - 1})
        lines = written()
        assert [json.loads(line)["n"] for line in lines] == list(range(log_handler.MAX_WAITING))
        assert stream.writes == 1
    finally:
        logging.getLogger().handlers.clear()
        close()


def test_the_flush_delay_is_a_checked_config_key() -> None:
    assert TelemetryConfig().log_flush_seconds == 0.02
    for bad in (-1, 11, "soon"):
        with pytest.raises(ValueError, match="log_flush_seconds"):
            TelemetryConfig(log_flush_seconds=bad)


def test_line_handler_with_filters_applies_them(log_output: Callable[..., LogReader]) -> None:
    read = log_output()
    (handler,) = logging.getLogger().handlers
    assert isinstance(handler, LineHandler)
    handler.addFilter(lambda record: record.getMessage() != "dropped")
    logging.getLogger("sidecar.test").warning("dropped")
    logging.getLogger("sidecar.test").warning("kept")
    assert [entry["message"] for entry in events(read())] == ["kept"]


def test_line_handler_set_stream_follows_the_new_stream() -> None:
    first, second = io.StringIO(), io.StringIO()
    handler = LineHandler(first)
    handler.setFormatter(JsonFormatter())
    assert handler.setStream(second) is first
    handler.handle(_records()[0])
    assert first.getvalue() == ""
    assert json.loads(second.getvalue())["output_tokens"] == 7


# ---------------------------------------------------------------- `log_event`


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


@pytest.fixture
def records_made(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The logger names of the `LogRecord`s `logging` builds from here on."""
    made: list[str] = []
    make = logging.Logger.makeRecord

    def counted(self: logging.Logger, name: str, *args: Any, **kwargs: Any) -> logging.LogRecord:
        made.append(name)
        return make(self, name, *args, **kwargs)

    monkeypatch.setattr(logging.Logger, "makeRecord", counted)
    return made


def _clock(now: float) -> Callable[[], float]:
    return lambda: now


@pytest.mark.parametrize("in_span", [False, True], ids=["no span", "in a span"])
@pytest.mark.parametrize("level", [logging.INFO, logging.WARNING, 25])
@pytest.mark.parametrize("fields", list(FIELD_SETS.values()), ids=list(FIELD_SETS))
def test_log_event_writes_the_bytes_logging_writes(
    fields: dict[str, Any],
    level: int,
    in_span: bool,
    log_output: Callable[..., LogReader],
    records_made: list[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Without a record, the same line as `logger.log(level, message, extra=fields)`:
    key order, `time` (across seconds), level names, trace ids, `default=str` values."""
    read = log_output(log_format="json")
    log = logging.getLogger("sidecar.stream")
    span = NonRecordingSpan(CURRENT if in_span else SpanContext(0, 0, False))
    with trace.use_span(span):
        for now in (1764645130.0, 1764645130.9996, 1764645131.5004, 1764645131.5004):
            monkeypatch.setattr(time, "time", _clock(now))
            log_event(log, level, "stream ✓", fields)
            assert records_made == []  # written directly
            log.log(level, "stream ✓", extra=fields)
            assert records_made == ["sidecar.stream"]
            records_made.clear()
    lines = read()
    assert len(lines) == 8
    for direct, logged in zip(lines[::2], lines[1::2], strict=True):
        assert direct == logged
    entry = json.loads(lines[0])
    assert entry["time"] == "2025-12-02T03:12:10.000Z"
    assert json.loads(lines[2])["time"] == "2025-12-02T03:12:10.999Z"
    assert entry["level"] == logging.getLevelName(level)
    if in_span and not fields.get("trace_id"):
        assert entry["trace_id"] == f"{CURRENT.trace_id:032x}"


def _plain(value: Any) -> Any:
    """What a line holds for `value`: JSON's own types as they are (NaN and the
    infinities, which JSON has no word for, as null), anything else as `str` gives it."""
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return str(value)


@pytest.mark.parametrize("fields", list(FIELD_SETS.values()), ids=list(FIELD_SETS))
def test_a_line_holds_each_field_in_order_as_json(fields: dict[str, Any]) -> None:
    """Every kind of value a line may carry comes back from the JSON as the value it
    was (a value of no JSON type as its `str`, a date as its ISO form), keys in order."""
    decoded = json.loads(log_format.encode_json(fields))
    assert list(decoded) == [str(k) for k in fields]
    for key, value in fields.items():
        if isinstance(value, datetime):
            assert datetime.fromisoformat(decoded[key]) == value
        elif isinstance(value, Enum):
            assert decoded[key] == value.value
        else:
            assert decoded[key] == _plain(value), key


def test_a_line_is_compact_and_what_orjson_refuses_is_still_written() -> None:
    """No spaces between tokens; an integer past 64 bits, a lone surrogate (a name
    decoded with `surrogateescape`) and keys that are not strings are still encoded."""
    assert (
        log_format.encode_json({"a": 1, "b": [1, "x y"], "c": {}}) == '{"a":1,"b":[1,"x y"],"c":{}}'
    )
    refused = {"big": 2**70, "lone": "bad \udcff byte", 3: "three"}
    line = log_format.encode_json(refused)
    assert line.isascii()
    assert json.loads(line) == {"big": 2**70, "lone": "bad \udcff byte", "3": "three"}


def test_a_circular_value_is_reported_as_logging_reports_it(
    log_output: Callable[..., LogReader], capsys: pytest.CaptureFixture[str]
) -> None:
    """The shared encoder keeps no markers: a circular value still ends in the error
    `logging` reports for it, and neither path writes a line."""
    read = log_output()
    looped: dict[str, Any] = {"name": "loop"}
    looped["self"] = looped
    log = logging.getLogger("sidecar.stream")
    log_event(log, logging.INFO, "direct", {"n": 1, "looped": looped})
    log.info("logged", extra={"n": 1, "looped": looped})
    reports = capsys.readouterr().err.split("--- Logging error ---")
    assert len(reports) == 3
    assert "Message: 'direct'" in reports[1]
    assert "Message: 'logged'" in reports[2]
    assert all("ValueError: Circular reference detected" in report for report in reports[1:])
    assert read() == []


def test_log_event_keeps_what_logging_refuses_hides_or_overrides(
    log_output: Callable[..., LogReader], records_made: list[str]
) -> None:
    """Through `logging`: a field `makeRecord` refuses raises as before, one `JsonFormatter`
    hides stays hidden, one named as the line's head takes the head's place."""
    read = log_output()
    log = logging.getLogger("sidecar.stream")
    with pytest.raises(KeyError, match="Attempt to overwrite 'msg'"):
        log_event(log, logging.INFO, "refused", {"msg": "clash"})
    log_event(log, logging.INFO, "hidden", {"_private": 1, "shown": 2})
    head = {"time": "mine", "level": "mine", "logger": "mine", "extra": 1}
    log_event(log, logging.INFO, "overridden", head)
    assert records_made == ["sidecar.stream"] * 3
    hidden, overridden = read()
    assert json.loads(hidden)["shown"] == 2
    assert "_private" not in json.loads(hidden)
    assert overridden.startswith(
        '{"time":"mine","level":"mine","logger":"mine","message":"overridden","extra":1'
    )


def _observed_by_caplog(caplog: pytest.LogCaptureFixture) -> None:
    logging.getLogger().addHandler(caplog.handler)


def _a_handler_filter(caplog: pytest.LogCaptureFixture) -> None:
    logging.getLogger().handlers[0].addFilter(lambda record: True)


def _a_root_filter(caplog: pytest.LogCaptureFixture) -> None:
    logging.getLogger().addFilter(lambda record: True)


def _a_logger_filter(caplog: pytest.LogCaptureFixture) -> None:
    logging.getLogger("sidecar.fast.child").addFilter(lambda record: True)


def _a_parent_handler(caplog: pytest.LogCaptureFixture) -> None:
    logging.getLogger("sidecar.fast").addHandler(caplog.handler)


def _a_parent_not_propagating(caplog: pytest.LogCaptureFixture) -> None:
    logging.getLogger("sidecar.fast").propagate = False
    logging.getLogger("sidecar.fast").addHandler(logging.getLogger().handlers[0])


def _a_record_factory(caplog: pytest.LogCaptureFixture) -> None:
    make = logging.getLogRecordFactory()

    def factory(*args: Any, **kwargs: Any) -> logging.LogRecord:
        record = make(*args, **kwargs)
        record.stamped = "by the factory"
        return record

    logging.setLogRecordFactory(factory)


@pytest.mark.parametrize(
    "change",
    [_observed_by_caplog, _a_handler_filter, _a_root_filter, _a_logger_filter,
     _a_parent_handler, _a_parent_not_propagating, _a_record_factory],
)  # fmt: skip
def test_log_event_goes_through_logging_when_anything_else_would_see_the_line(
    change: Callable[[pytest.LogCaptureFixture], None],
    log_output: Callable[..., LogReader],
    records_made: list[str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    """caplog, filters, another handler, a record factory: the record is made and seen."""
    read = log_output()
    log, parent = logging.getLogger("sidecar.fast.child"), logging.getLogger("sidecar.fast")
    factory = logging.getLogRecordFactory()
    change(caplog)
    try:
        log_event(log, logging.INFO, "stream_start", {"event": "stream_start", "n": 1})
    finally:
        logging.setLogRecordFactory(factory)
        for logger in (log, parent, logging.getLogger()):
            logger.filters.clear()
        parent.handlers.clear()
        parent.propagate = True
    assert records_made == ["sidecar.fast.child"]
    (entry,) = events(read())
    assert (entry["message"], entry["n"]) == ("stream_start", 1)
    if change is _a_record_factory:
        assert entry["stamped"] == "by the factory"
    if change in (_observed_by_caplog, _a_parent_handler):
        (record,) = caplog.records
        assert (record.getMessage(), vars(record)["n"]) == ("stream_start", 1)


def test_log_event_in_text_format_goes_through_logging(
    log_output: Callable[..., LogReader], records_made: list[str]
) -> None:
    read = log_output(log_format="text")
    log_event(logging.getLogger("sidecar.stream"), logging.INFO, "stream_start", {"n": 1})
    assert records_made == ["sidecar.stream"]
    (line,) = read()
    assert line.endswith(" INFO sidecar.stream stream_start n=1")


def test_log_event_writes_nothing_below_the_level(
    log_output: Callable[..., LogReader], records_made: list[str]
) -> None:
    """A level that drops the line (config, handler, `logging.disable`) still drops it."""
    read = log_output(log_level="WARNING")
    log = logging.getLogger("sidecar.stream")
    log_event(log, logging.INFO, "dropped by the root's level", {"n": 1})
    log_event(log, logging.WARNING, "kept", {"n": 2})
    (handler,) = logging.getLogger().handlers
    handler.setLevel(logging.ERROR)
    log_event(log, logging.WARNING, "dropped by the handler's level", {"n": 3})
    handler.setLevel(logging.NOTSET)
    logging.disable(logging.WARNING)
    try:
        log_event(log, logging.WARNING, "dropped by logging.disable", {"n": 4})
    finally:
        logging.disable(logging.NOTSET)
    assert [entry["message"] for entry in events(read())] == ["kept"]
    assert records_made == ["sidecar.stream"]  # the handler's level: `logging` decides


def test_log_event_reports_a_failed_write_as_logging_does(
    log_output: Callable[..., LogReader], capsys: pytest.CaptureFixture[str]
) -> None:
    log_output()
    (handler,) = logging.getLogger().handlers
    assert isinstance(handler, LineHandler)
    closed = io.StringIO()
    closed.close()
    handler.stream = closed
    log = logging.getLogger("sidecar.stream")
    log_event(log, logging.INFO, "direct", {"n": 1})
    log.info("logged", extra={"n": 1})
    reports = capsys.readouterr().err.split("--- Logging error ---")
    assert len(reports) == 3
    assert "Message: 'direct'" in reports[1]
    assert "Message: 'logged'" in reports[2]
    assert "ValueError: I/O operation on closed file" in reports[1]


async def test_sidecar_lines_are_the_same_written_directly_or_through_logging(
    sidecar_for: SidecarFactory,
    log_output: Callable[..., LogReader],
    records_made: list[str],
) -> None:
    """A real call's three lines, written directly, match those `logging` writes for the
    next call (a filter on the handler takes that path): same keys in the same order,
    same values but for times, durations and per-call ids."""
    read = log_output()
    ours = ("sidecar.stream", "sidecar.access")
    otel = make_otel()
    async with sidecar_for({"auth": AUTH}, telemetry=otel.telemetry) as sidecar:
        headers = {"x-api-key": CLIENT_KEY, "traceparent": TRACEPARENT}
        assert (await prompt(sidecar.url, "hi [[fake tokens=5]]", headers))[0] == 200
        direct = read()
        assert [name for name in records_made if name in ours] == []
        logging.getLogger().handlers[0].addFilter(lambda record: True)
        assert (await prompt(sidecar.url, "hi [[fake tokens=5]]", headers))[0] == 200
        logged = read()[len(direct) :]
        assert [name for name in records_made if name in ours] == [
            "sidecar.stream", "sidecar.stream", "sidecar.access"
        ]  # fmt: skip
    varying = {"time", "request_id", "span_id", "ttft_ms", "duration_ms", "tokens_per_second",
               "queue_wait_ms"}  # fmt: skip
    assert len(direct) == len(logged) == 3
    for one_line, other_line in zip(events(direct), events(logged), strict=True):
        assert list(one_line) == list(other_line)
        assert {k: v for k, v in one_line.items() if k not in varying} == {
            k: v for k, v in other_line.items() if k not in varying
        }
    assert [e["message"] for e in events(direct)] == ["stream_start", "stream_complete", "request"]
