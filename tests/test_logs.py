"""Structured logs: JSON lines with trace ids, stream and rejection events, never secrets or prompts."""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import sys
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from sidecar.config import TelemetryConfig
from sidecar.telemetry import JsonFormatter, setup_logging
from sidecar.telemetry.logs import LineHandler, TextFormatter
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
    """`read = log_output(**telemetry config)`: routes the root logger to a buffer, restores it."""
    root = logging.getLogger()
    saved_handlers, saved_level = list(root.handlers), root.level

    def install(**config: Any) -> LogReader:
        buffer = io.StringIO()
        setup_logging(TelemetryConfig(**config), stream=buffer)
        return lambda: buffer.getvalue().splitlines()

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
    """A quota refusal ends the call before the loop runs the deferred start: still in order."""
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


@pytest.mark.parametrize(("kind", "make", "by_itself"), list(_pipe_streams()))
def test_every_line_reaches_the_descriptor_when_logged(
    kind: str,
    make: Callable[[int], _CountingText],
    by_itself: bool,
    log_output: Callable[..., LogReader],
) -> None:
    """One write per line, flushed only where the stream would not pass the line on itself."""
    log_output()  # restores the root logger afterwards
    read_end, write_end = os.pipe()
    os.set_blocking(read_end, False)  # a line held back fails the read instead of hanging
    stream = make(write_end)
    try:
        setup_logging(TelemetryConfig(log_format="json"), stream=stream)
        log = logging.getLogger("sidecar.stream")
        for n in range(3):
            log.info("stream_start", extra={"request_id": f"req_{n}"})
            line = os.read(read_end, 65536).decode()  # there now, not at some later flush
            assert line.count("\n") == 1, kind
            assert line.endswith("\n"), kind
            assert json.loads(line)["request_id"] == f"req_{n}"
        assert stream.writes == 3
        assert stream.flushes == (0 if by_itself else 3)
    finally:
        logging.getLogger().handlers.clear()
        stream.close()
        os.close(read_end)


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
