"""Structured logs: JSON lines with trace ids, stream and rejection events, never secrets or prompts."""

from __future__ import annotations

import asyncio
import hashlib
import io
import json
import logging
import re
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from opentelemetry import trace
from opentelemetry.trace import NonRecordingSpan, SpanContext
from opentelemetry.util.re import parse_env_headers

from sidecar.config import TelemetryConfig
from sidecar.telemetry.log_handler import LineHandler
from sidecar.telemetry.logs import log_event, setup_logging
from tests.support.apps import serving
from tests.support.logs import (
    CURRENT,
    FIELD_SETS,
    LogReader,
    events,
    one,
)
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


UNREPORTED = ("input_tokens", "output_tokens", "cache_creation_input_tokens",
              "cache_read_input_tokens", "tokens_per_second", "cost_usd")  # fmt: skip


@pytest.mark.parametrize(
    ("directive", "outcome"),
    [
        ("fault=bad_request", "upstream_error"),  # refused before any byte
        ("fault=stall_before_start", "idle_timeout"),  # a 200 silent before `message_start`
    ],
)
async def test_a_call_claude_reported_no_usage_for_logs_its_usage_as_unknown(
    sidecar_for: SidecarFactory, log_output: Callable[..., LogReader], directive: str, outcome: str
) -> None:
    """Usage, rate and cost are `null` on the line of a call Claude never said the usage
    of, as the metrics leave it out: not 0 tokens, and not free."""
    read = log_output()
    otel = make_otel()
    claude = {"idle_timeout_seconds": 0.3, "max_retries": 0}
    async with sidecar_for({"claude": claude}, telemetry=otel.telemetry) as sidecar:
        await prompt(sidecar.url, f"hello [[fake {directive}]]")
    error = one(events(read()), "stream_error")
    assert error["outcome"] == outcome
    assert {name: error[name] for name in UNREPORTED} == dict.fromkeys(UNREPORTED)
    assert otel.count("gen_ai.client.token.usage") == 0  # the metrics agree
    assert "gen_ai.usage.input_tokens" not in (otel.client_span().attributes or {})


OBSERVABILITY = (Path(__file__).resolve().parent.parent / "docs" / "observability.md").read_text()
ALWAYS = {"time", "level", "logger", "message"}  # every line's, before the table's fields


def documented_fields(event: str) -> set[str]:
    """The fields docs/observability.md's log table gives a line (`the above +` included)."""
    fields: set[str] = set()
    for line in OBSERVABILITY.split("\n## Logs", 1)[1].splitlines():
        cells = line.split(" | ")
        if line.startswith("| `") and len(cells) > 3:
            named = re.findall(r"`([a-z_]+)`", cells[0])
            outside = re.sub(r"\([^()]*\)", "", cells[3])  # remarks name values, not fields
            row = set(re.findall(r"`([a-z_]+)`", outside))
            above = "the above" in cells[3]
            if event in named:
                return (fields if above else set()) | row | {"event"}
            fields = fields | row if above else row
    raise AssertionError(f"{event} is not in the log table")


async def test_the_stream_and_rejection_lines_carry_the_fields_the_docs_list(
    sidecar_for: SidecarFactory, log_output: Callable[..., LogReader]
) -> None:
    """Each line has every field the log table lists for it (`user`/`tenant` when there is
    one) and no other; the table's example line and its `null` usage list agree."""
    read = log_output(log_format="json")
    async with sidecar_for({"auth": AUTH, "claude": {"max_retries": 0}}) as sidecar:
        for text in ("hi [[fake tokens=3]]", "hi [[fake fault=overloaded]]", ""):
            await prompt(sidecar.url, text, {"x-api-key": CLIENT_KEY})
    entries = events(read())
    for event in ("stream_start", "stream_complete", "stream_error", "request_rejected"):
        documented = documented_fields(event)
        lines = [entry for entry in entries if entry["message"] == event]
        assert lines, event
        for line in lines:
            written = set(line) - ALWAYS
            assert written <= documented, (event, written - documented)
            assert documented - {"user", "tenant"} <= written, (event, documented - written)
    example = json.loads(re.findall(r'^(\{"time".*"stream_complete".*\})$', OBSERVABILITY, re.M)[0])
    assert set(example) - ALWAYS - {"tenant"} == documented_fields("stream_complete") - {"tenant"}
    nulls = OBSERVABILITY.split("Usage is `null` when", 1)[1].split("are all `null`", 1)[0]
    nulls = nulls.split("Then", 1)[1]  # (the when names `message_start`)
    assert set(re.findall(r"`([a-z_]+)`", nulls)) == set(UNREPORTED)
    error = one(entries, "stream_error")
    assert {name: error[name] for name in UNREPORTED} == dict.fromkeys(UNREPORTED)


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


def test_an_unparsable_otlp_header_is_logged_without_its_value() -> None:
    """The SDK quotes an `OTEL_EXPORTER_OTLP_HEADERS` entry it cannot parse; written with
    a colon, that entry is a credential: the line says so and shows no value."""
    stream = io.StringIO()
    root = logging.getLogger()
    saved = list(root.handlers), root.level
    try:
        setup_logging(TelemetryConfig(), stream=stream)
        parse_env_headers("Authorization: Bearer sk-OTLPTOKEN3,x-bad header=TOKEN4", liberal=True)
        logging.getLogger().handlers[0].flush()
    finally:
        root.handlers[:] = saved[0]
        root.setLevel(saved[1])
    text = stream.getvalue()
    assert "Header format invalid" in text
    assert "sk-OTLPTOKEN3" not in text
    assert "TOKEN4" not in text


async def test_a_websocket_clients_subprotocols_the_app_does_not_pick_are_never_logged(
    sidecar_for: SidecarFactory, log_output: Callable[..., LogReader]
) -> None:
    """aiohttp warns, quoting the client's `Sec-WebSocket-Protocol` list (raw bytes and
    all), whenever no subprotocol is agreed: normal by the spec, and a client's header in
    a log line. No line quotes it; the WebSocket opens without a subprotocol."""
    read = log_output()

    async def socket(request: web.Request) -> web.StreamResponse:
        ws = web.WebSocketResponse()  # knows no subprotocol
        await ws.prepare(request)
        await ws.close()
        return ws

    app = web.Application()
    app.router.add_get("/ws", socket)
    async with serving(app) as url, sidecar_for({"app": {"url": url}}) as sidecar:
        host, port = sidecar.url.removeprefix("http://").split(":")
        reader, writer = await asyncio.open_connection(host, int(port))
        writer.write(
            b"GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            b"Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
            b"Sec-WebSocket-Protocol: client-secret-proto, \xff\xfe\r\n\r\n"
        )
        head = await reader.readuntil(b"\r\n\r\n")
        writer.close()
    assert head.startswith(b"HTTP/1.1 101 ")
    assert b"sec-websocket-protocol" not in head.lower()
    text = "\n".join(read())
    assert "client-secret-proto" not in text
    assert "Client protocols" not in text


def test_a_text_line_stays_one_line_whatever_a_value_holds(
    log_output: Callable[..., LogReader],
) -> None:
    """A value with a newline, a space, a quote or `=` is one JSON-string token; a bare
    word stays as it is: no client value ends the line or forges a field."""
    read = log_output(log_format="text")
    forged = "claude\nINJECTED level=ERROR"
    fields = {"model": forged, "path": "/a b", "quote": 'say "x"', "plain": "claude-5", "n": 3}
    log_event(logging.getLogger("sidecar.stream"), logging.INFO, "stream_start", fields)
    logging.getLogger("sidecar.reload").warning("line\rbreak\u2028here")
    first, second = read()
    assert first.endswith(
        ' stream_start model="claude\\nINJECTED level=ERROR" path="/a b" quote="say \\"x\\""'
        " plain=claude-5 n=3"
    )
    assert second.endswith(" WARNING sidecar.reload line\\rbreak\\u2028here")


async def test_the_access_line_bounds_the_path_a_client_chose(
    sidecar_for: SidecarFactory, log_output: Callable[..., LogReader]
) -> None:
    """A path of thousands of characters is cut to `MAX_LOG_PATH` in the access line (it
    still reached routing whole: a 404 here)."""
    read = log_output()
    async with sidecar_for() as sidecar, aiohttp.ClientSession() as http:
        async with http.get(sidecar.url + "/nowhere/" + "a" * 5000) as response:
            assert response.status == 404
    access = one(events(read()), "request")
    assert access["path"] == ("/nowhere/" + "a" * 5000)[:1024]
