"""The loop span processor: spans encoded the loop's turn after they end, posted by a thread.

Every test posts to a real OTLP/HTTP receiver on loopback through the sidecar's exporter
(the SDK's transport), and holds what arrived to the SDK's own encoding of the spans.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import queue
import threading
import time
import tracemalloc
import weakref
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from opentelemetry.exporter.http.transport._base import BaseHTTPResult, BaseHTTPTransport
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SpanExportResult
from opentelemetry.trace import SpanKind

from sidecar.config import TelemetryConfig
from sidecar.telemetry import Telemetry
from sidecar.telemetry.loop_spans import LoopSpanProcessor
from sidecar.telemetry.otlp_spans import HttpSpanExporter
from sidecar.telemetry.span_encoder import Run, SpanEncoder
from sidecar.telemetry.spans import PlainSpan
from tests.support.otel import prompt
from tests.support.otlp import RESOURCE, SCOPE, Receiver, context, receiving, sdk_bytes
from tests.support.scripted_claude import messages_body
from tests.support.sidecars import SidecarFactory
from tests.support.waiting import eventually, holds

QUIET = 60_000  # a schedule delay no test waits out: batches leave full or flushed


def span(n: int, *, sampled: bool = True) -> ReadableSpan:
    return ReadableSpan(
        f"span {n}", context(0xABC, n + 1, flags=1 if sampled else 0), None, RESOURCE,
        {"n": n, "sidecar.request_id": f"req_{n:08x}", "ttft": n / 7},
        kind=SpanKind.CLIENT, start_time=10 + n, end_time=20 + n, instrumentation_scope=SCOPE,
    )  # fmt: skip


def sidecar_span(n: int) -> PlainSpan:
    """A CLIENT span as the sidecar ends one for a stream: labels, ids, counts and timings."""
    attributes: dict[str, Any] = {
        "gen_ai.operation.name": "chat", "gen_ai.provider.name": "anthropic",
        "gen_ai.request.model": "claude-sonnet-5-5", "gen_ai.request.stream": True,
        "server.address": "api.anthropic.com", "server.port": 443, "sidecar.route": "/v1",
        "gen_ai.request.max_tokens": 1024, "sidecar.stream.outcome": "completed",
        "http.response.status_code": 200, "gen_ai.response.finish_reasons": ("end_turn",),
        "gen_ai.response.model": "claude-sonnet-5-5", "sidecar.request_id": f"req_{n:024x}",
        "gen_ai.response.id": f"msg_{n:024x}", "gen_ai.usage.input_tokens": 200 + n,
        "gen_ai.usage.output_tokens": 100 + n, "gen_ai.response.time_to_first_chunk": n / 7,
        "sidecar.stream.events": 40 + n, "sidecar.stream.queue_wait": n / 1000,
    }  # fmt: skip
    return PlainSpan(
        "chat claude-sonnet-5-5", context(0xABC + n, n + 1), context(0xABC + n, n + 7),
        RESOURCE, attributes, kind=SpanKind.CLIENT, start_time=10 + n, end_time=20 + n,
        instrumentation_scope=SCOPE,
    )  # fmt: skip


def processor(receiver: Receiver, **settings: float) -> LoopSpanProcessor:
    batch = int(settings.pop("batch", 4))
    return LoopSpanProcessor(
        HttpSpanExporter(endpoint=receiver.url),
        max_export_batch_size=batch,
        schedule_delay_millis=settings.pop("delay", QUIET),
        max_queue_size=int(settings.pop("queue", 2048)),
    )


def received(receiver: Receiver) -> list[list[int]]:
    """The span numbers of each request the receiver got, in order."""
    return [
        [
            int.from_bytes(span.span_id, "big") - 1
            for resource in ExportTraceServiceRequest.FromString(body).resource_spans
            for scope in resource.scope_spans
            for span in scope.spans
        ]
        for body in receiver.bodies
    ]


def assert_sdk_bytes(receiver: Receiver, spans: Sequence[ReadableSpan]) -> None:
    by_number = {span.context.span_id - 1: span for span in spans}
    for body, numbers in zip(receiver.bodies, received(receiver), strict=True):
        assert body == sdk_bytes([by_number[n] for n in numbers])


async def test_full_batches_leave_on_their_own_and_a_flush_sends_the_rest() -> None:
    spans = [span(n) for n in range(10)]
    async with receiving() as receiver:
        batches = processor(receiver)
        for one in spans:
            batches.on_end(one)
        await eventually(lambda: holds(len(receiver.bodies) == 2))
        await asyncio.sleep(0.05)
        assert received(receiver) == [[0, 1, 2, 3], [4, 5, 6, 7]]  # 8 and 9 wait
        await batches.flush()
        assert received(receiver) == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]
        assert_sdk_bytes(receiver, spans)
        await asyncio.to_thread(batches.shutdown)


async def test_a_partial_batch_leaves_after_the_schedule_delay() -> None:
    async with receiving() as receiver:
        batches = processor(receiver, batch=100, delay=50)
        for n in range(3):
            batches.on_end(span(n))
        await eventually(lambda: holds(len(receiver.bodies) == 1))
        assert received(receiver) == [[0, 1, 2]]
        batches.on_end(span(3))  # the next one waits its own delay
        await eventually(lambda: holds(len(receiver.bodies) == 2))
        assert received(receiver)[1] == [3]
        await asyncio.to_thread(batches.shutdown)


async def test_spans_are_encoded_once_at_the_loops_next_turn_and_a_batch_is_only_joined(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Spans ended in one turn (a handler's, before its writes) are encoded in the next, together."""
    events: list[tuple[str, int]] = []
    entry, request = SpanEncoder.entry, SpanEncoder.request

    def encoding(self: SpanEncoder, one: ReadableSpan) -> bytes:
        events.append(("encoded", one.context.span_id - 1))
        return entry(self, one)

    def joining(self: SpanEncoder, runs: Iterable[Run]) -> bytes:
        batch = list(runs)
        events.append(("joined", sum(len(entries) for _, _, entries in batch)))
        return request(self, batch)

    monkeypatch.setattr(SpanEncoder, "entry", encoding)
    monkeypatch.setattr(SpanEncoder, "request", joining)
    spans = [span(n) for n in range(4)]
    async with receiving() as receiver:
        batches = processor(receiver, batch=4)
        for one in spans[:3]:
            batches.on_end(one)
            events.append(("ended", one.context.span_id - 1))
        events.append(("written", 0))  # the rest of the handler's turn: nothing encoded yet
        await asyncio.sleep(0)
        assert events == [
            ("ended", 0), ("ended", 1), ("ended", 2), ("written", 0),
            ("encoded", 0), ("encoded", 1), ("encoded", 2),
        ]  # fmt: skip
        events.clear()
        batches.on_end(spans[3])
        await asyncio.sleep(0)  # full once encoded: joined and handed to the poster at once
        assert events == [("encoded", 3), ("joined", 4)]
        await eventually(lambda: holds(len(receiver.bodies) == 1))
        assert received(receiver) == [[0, 1, 2, 3]]
        assert_sdk_bytes(receiver, spans)
        await asyncio.to_thread(batches.shutdown)


async def test_the_sidecars_spans_are_encoded_after_each_response_is_written(
    sidecar_for: SidecarFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Real traffic: a stream's spans end after its last bytes, a message's before aiohttp
    writes it (in the handler's own turn); either way they are encoded after the writes."""
    monkeypatch.setenv("OTEL_METRICS_EXPORTER", "none")
    events: list[str] = []
    write_eof, entry = web.StreamResponse.write_eof, SpanEncoder.entry

    async def writing(self: web.StreamResponse, data: bytes = b"") -> None:
        await write_eof(self, data)
        events.append("written")  # a response's last bytes, handed to the transport

    def encoding(self: SpanEncoder, one: ReadableSpan) -> bytes:
        events.append(one.name)
        return entry(self, one)

    monkeypatch.setattr(web.StreamResponse, "write_eof", writing)
    monkeypatch.setattr(SpanEncoder, "entry", encoding)
    async with receiving() as receiver:
        config = TelemetryConfig(
            otlp_endpoint=receiver.url.removesuffix("/v1/traces"), prometheus=False
        )
        telemetry = Telemetry.from_config(config)
        async with sidecar_for(telemetry=telemetry) as sidecar, aiohttp.ClientSession() as http:
            calls: list[list[str]] = []
            for stream in (True, False, True):
                events.clear()
                if stream:
                    await prompt(sidecar.url, "say things [[fake tokens=3]]")
                else:
                    async with http.post(
                        sidecar.url + "/v1/messages", json=messages_body(stream=False)
                    ) as response:
                        assert response.status == 200
                        await response.read()
                await eventually(lambda: holds(len(events) >= 4))
                calls.append(list(events))
        await telemetry.close()
    client = next(name for name in calls[0] if name.startswith("chat "))
    servers = ["POST /api/stream-response", "POST /v1/", "POST /api/stream-response"]
    for call, server in zip(calls, servers, strict=True):
        # The writes (the fake Claude's answer, then the sidecar's; a response already
        # ended is ended again by aiohttp, writing nothing), then the two spans.
        first = call.index(client)
        assert call[first:] == [client, server]
        assert call[:first] == ["written"] * first
        assert first >= 2
    assert len(receiver.bodies) == 1
    assert len(received(receiver)[0]) == 6


async def test_a_flush_before_the_next_turn_encodes_and_exports_the_spans_just_ended() -> None:
    spans = [span(n) for n in range(3)]
    async with receiving() as receiver:
        batches = processor(receiver, batch=100)
        for one in spans:
            batches.on_end(one)
        await batches.flush()  # its export runs first: nothing encoded until then
        assert received(receiver) == [[0, 1, 2]]
        assert_sdk_bytes(receiver, spans)
        await asyncio.to_thread(batches.shutdown)


def test_a_flush_on_the_loops_thread_encodes_and_exports_the_spans_just_ended() -> None:
    """Nothing can be awaited there: `force_flush` encodes and posts them itself."""
    spans = [span(n) for n in range(4)]
    with receiver_on_a_thread() as receiver:
        batches = processor(receiver, batch=100)

        async def flush_here() -> None:
            for one in spans[:3]:
                batches.on_end(one)
            assert batches.force_flush()
            assert received(receiver) == [[0, 1, 2]]
            await asyncio.sleep(0)  # the encoding turn: nothing left to encode
            batches.on_end(spans[3])
            await batches.flush()

        asyncio.run(flush_here())
        assert received(receiver) == [[0, 1, 2], [3]]
        assert_sdk_bytes(receiver, spans)
        batches.shutdown()


async def test_the_queue_holds_the_encoded_spans_not_the_spans() -> None:
    """A span leaves memory once encoded: the queue keeps its wire bytes (less than the span)."""
    count = 200
    async with receiving() as receiver:
        batches = processor(receiver, batch=4 * count)  # no batch fills: the queue holds them
        for n in range(count):  # the encoder's caches as in a sidecar that has been running
            batches.on_end(sidecar_span(count + n))
        await batches.flush()
        tracemalloc.start()
        try:
            start = tracemalloc.get_traced_memory()[0]
            spans = [sidecar_span(n) for n in range(count)]
            built = tracemalloc.get_traced_memory()[0]
            alive = [weakref.ref(one) for one in spans]
            watching = tracemalloc.get_traced_memory()[0] - built
            for one in spans:
                batches.on_end(one)
            del spans, one
            await asyncio.sleep(0)  # encoded: the queue holds their entries
            queued = tracemalloc.get_traced_memory()[0] - watching
        finally:
            tracemalloc.stop()
        assert not any(ref() for ref in alive)  # no span is held once encoded
        await batches.flush()
        body = receiver.bodies[-1]
        assert received(receiver)[-1] == list(range(count))
        per_span = (built - start) / count
        per_queued = (queued - start) / count
        wire = len(body) / count  # each span's entry, and its share of the wrappers
        # Each span: a bytes object (33 B more than its bytes) and its slot in the queue (8 B).
        assert per_queued < wire + 64
        assert per_queued < 0.8 * per_span
        await asyncio.to_thread(batches.shutdown)


async def test_a_full_queue_drops_its_oldest_spans_and_says_so(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, "sidecar.telemetry.loop_spans")
    async with receiving() as receiver:
        batches = processor(receiver, batch=4, queue=4)
        for n in range(7):  # the export of 0-3 has not started: 4, 5, 6 push 0, 1, 2 out
            batches.on_end(span(n))
        await eventually(lambda: holds(len(receiver.bodies) == 1))
        await asyncio.to_thread(batches.shutdown)
    assert received(receiver) == [[3, 4, 5, 6]]
    messages = [(record.getMessage(), record.__dict__.get("spans")) for record in caplog.records]
    assert messages == [
        ("span queue full: the oldest spans are dropped until an export makes room", None),
        ("spans dropped: the span queue was full", 3),
    ]


async def test_spans_ended_on_another_thread_reach_the_loop() -> None:
    spans = [span(n) for n in range(4)]
    async with receiving() as receiver:
        batches = processor(receiver, batch=100)
        batches.on_end(spans[0])  # on the loop: the processor knows its loop now

        def elsewhere() -> None:
            for one in spans[1:]:
                batches.on_end(one)

        await asyncio.to_thread(elsewhere)
        await batches.flush()
        assert received(receiver) == [[0, 1, 2, 3]]
        assert_sdk_bytes(receiver, spans)
        await asyncio.to_thread(batches.shutdown)


async def test_with_no_loop_running_the_thread_that_ends_spans_exports_them() -> None:
    """A command or a test ending spans with no event loop: the batches leave from there."""
    spans = [span(n) for n in range(6)]
    async with receiving() as receiver:
        batches = processor(receiver, batch=4)

        def no_loop() -> None:
            for one in spans:
                batches.on_end(one)
            assert received(receiver) == [[0, 1, 2, 3]]  # posted before `on_end` returned
            batches.shutdown()  # and the rest at shutdown

        await asyncio.to_thread(no_loop)
        assert received(receiver) == [[0, 1, 2, 3], [4, 5]]
        assert_sdk_bytes(receiver, spans)


async def test_shutdown_from_a_thread_exports_what_is_queued_then_takes_nothing() -> None:
    """As the sidecar stops: `Telemetry.close` shuts the provider down off the loop."""
    async with receiving() as receiver:
        batches = processor(receiver, batch=100)
        for n in range(3):
            batches.on_end(span(n))
        await asyncio.to_thread(batches.shutdown)
        assert received(receiver) == [[0, 1, 2]]
        batches.on_end(span(3))
        await asyncio.sleep(0.05)
        assert received(receiver) == [[0, 1, 2]]


async def test_spans_the_sampler_dropped_are_not_exported() -> None:
    async with receiving() as receiver:
        batches = processor(receiver, batch=2)
        for n in range(4):
            batches.on_end(span(n, sampled=n % 2 == 0))
        await eventually(lambda: holds(len(receiver.bodies) == 1))
        await asyncio.to_thread(batches.shutdown)
    assert received(receiver) == [[0, 2]]


async def test_a_span_that_cannot_be_encoded_is_logged_as_the_sdk_logs_it_and_dropped_alone(
    caplog: pytest.LogCaptureFixture,
) -> None:
    refused = ReadableSpan(
        "refused", context(0xABC, 2), None, RESOURCE, start_time=-1, instrumentation_scope=SCOPE
    )  # a negative time, which protobuf refuses
    with pytest.raises(ValueError, match="out of range") as sdk:
        sdk_bytes([refused])
    spans = [span(0), refused, span(2), span(3)]
    async with receiving() as receiver:
        batches = processor(receiver, batch=3)
        for one in spans:
            batches.on_end(one)
        await eventually(lambda: holds(len(receiver.bodies) == 1))
        await asyncio.to_thread(batches.shutdown)
    assert received(receiver) == [[0, 2, 3]]
    assert_sdk_bytes(receiver, spans)
    assert f"Failed to encode span batch: {sdk.value}" in caplog.messages


async def test_a_receiver_error_is_the_sdks_log_line_and_exports_go_on(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async with receiving() as receiver:
        receiver.status = 400  # not retried by the SDK's client
        batches = processor(receiver, batch=2)
        batches.on_end(span(0))
        batches.on_end(span(1))
        await eventually(lambda: holds(len(receiver.bodies) == 1))
        await eventually(lambda: holds(any("Failed to export" in m for m in caplog.messages)))
        receiver.status = 200
        batches.on_end(span(2))
        batches.on_end(span(3))
        await eventually(lambda: holds(len(receiver.bodies) == 2))
        await asyncio.to_thread(batches.shutdown)
    assert received(receiver) == [[0, 1], [2, 3]]


def test_otel_bsp_variables_are_read_and_checked_by_the_sdk(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("OTEL_BSP_MAX_EXPORT_BATCH_SIZE", "7")
    monkeypatch.setenv("OTEL_BSP_MAX_QUEUE_SIZE", "70")
    monkeypatch.setenv("OTEL_BSP_SCHEDULE_DELAY", "250")
    monkeypatch.setenv("OTEL_BSP_EXPORT_TIMEOUT", "3000")
    exporter = HttpSpanExporter(endpoint="http://127.0.0.1:9/v1/traces")
    batches = LoopSpanProcessor(exporter)
    assert (batches.max_export_batch_size, batches.max_queue_size) == (7, 70)
    assert (batches.schedule_delay, batches.export_timeout) == (0.25, 3.0)
    batches.shutdown()
    monkeypatch.setenv("OTEL_BSP_MAX_EXPORT_BATCH_SIZE", "700")  # more than the queue
    with pytest.raises(ValueError, match="max_export_batch_size"):
        LoopSpanProcessor(exporter)


def test_otel_bsp_values_that_are_not_numbers_are_logged_and_the_sdks_defaults_used(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv("OTEL_BSP_MAX_EXPORT_BATCH_SIZE", "many")
    monkeypatch.setenv("OTEL_BSP_MAX_QUEUE_SIZE", "lots")
    monkeypatch.setenv("OTEL_BSP_SCHEDULE_DELAY", "0.5")
    monkeypatch.setenv("OTEL_BSP_EXPORT_TIMEOUT", "soon")
    batches = LoopSpanProcessor(HttpSpanExporter(endpoint="http://127.0.0.1:9/v1/traces"))
    assert (batches.max_export_batch_size, batches.max_queue_size) == (512, 2048)
    assert (batches.schedule_delay, batches.export_timeout) == (5.0, 30.0)
    assert sum("OTEL_BSP_" in message for message in caplog.messages) == 4
    batches.shutdown()


@contextlib.contextmanager
def receiver_on_a_thread() -> Iterator[Receiver]:
    """A receiver served by its own event loop on another thread, for tests with no loop."""
    ready: queue.Queue[Receiver] = queue.Queue()
    stop = threading.Event()

    async def serve() -> None:
        async with receiving() as receiver:
            ready.put(receiver)
            await asyncio.to_thread(stop.wait)

    thread = threading.Thread(target=asyncio.run, args=(serve(),))
    thread.start()
    try:
        yield ready.get(timeout=10)
    finally:
        stop.set()
        thread.join(10)


def test_a_processor_follows_the_loop_that_replaced_its_own() -> None:
    """A loop that ended leaves its spans queued: the next loop on the thread takes them on."""
    with receiver_on_a_thread() as receiver:
        batches = processor(receiver, batch=100)

        async def first() -> None:  # queued; the delay's timer dies with this loop
            batches.on_end(span(0))
            batches.on_end(span(1))

        async def second() -> None:
            batches.on_end(span(2))
            await batches.flush()

        asyncio.run(first())
        asyncio.run(second())
        assert received(receiver) == [[0, 1, 2]]
        batches.shutdown()


async def test_shutdown_ends_within_the_export_timeout_cutting_the_exporters_retries(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A collector that keeps answering 503: the SDK's client would retry for its own timeout."""
    async with receiving() as receiver:
        receiver.status = 503  # retried by the SDK's client, with a backoff of ~1 s, 2 s, ...
        batches = LoopSpanProcessor(
            HttpSpanExporter(endpoint=receiver.url, timeout=30),
            max_export_batch_size=4,
            schedule_delay_millis=QUIET,
            export_timeout_millis=200,
        )
        for n in range(4):
            batches.on_end(span(n))
        await eventually(lambda: holds(len(receiver.bodies) == 1))
        await asyncio.to_thread(batches.shutdown)
        assert len(receiver.bodies) == 1  # back before the first retry
        await eventually(lambda: holds("Shutdown in progress, aborting retry." in caplog.messages))
    assert len(receiver.bodies) == 1


def test_an_export_cancelled_by_the_ending_loop_loses_nothing() -> None:
    """A loop that ends cancels its tasks: the export's batch is posted once (by the poster,
    or queued again), and shutdown posts the rest after it."""
    with receiver_on_a_thread() as receiver:
        batches = processor(receiver, batch=4)

        async def ending() -> None:
            for n in range(8):
                batches.on_end(span(n))
            await asyncio.sleep(0)  # encoded, and the export of 0-3 started

        asyncio.run(ending())
        batches.shutdown()
        assert received(receiver) == [[0, 1, 2, 3], [4, 5, 6, 7]]


def test_a_batch_whose_post_had_not_started_when_the_loop_ended_is_queued_again() -> None:
    """The export is cancelled while its post waits for the poster: the post is called off
    and the batch goes back to the queue, posted once by shutdown."""
    with receiver_on_a_thread() as receiver:
        batches = processor(receiver, batch=4)
        busy = threading.Event()
        batches._poster._pool.submit(busy.wait)  # the poster's one thread is busy meanwhile

        async def ending() -> None:
            for n in range(4):
                batches.on_end(span(n))
            await asyncio.sleep(0)  # encoded: the export starts
            await asyncio.sleep(0)  # it joins the batch and waits for its post

        asyncio.run(ending())
        busy.set()
        assert received(receiver) == []
        batches.shutdown()
        assert received(receiver) == [[0, 1, 2, 3]]


def test_shutdown_on_the_loops_thread_exports_what_is_queued_and_ended_meanwhile(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Nothing can be awaited there: shutdown encodes the spans just ended, posts the queue
    after the export under way, and that export posts nothing more."""
    with receiver_on_a_thread() as receiver:
        batches = processor(receiver, batch=4)

        async def shut_down_here() -> None:
            for n in range(6):
                batches.on_end(span(n))
            await asyncio.sleep(0)  # encoded: the export of 0-3 starts
            await asyncio.sleep(0)  # and posts it
            batches.on_end(span(6))  # not encoded yet
            batches.on_end(span(7))
            batches.shutdown()
            for _ in range(10):  # the export task goes on: it must not post again
                await asyncio.sleep(0)

        asyncio.run(shut_down_here())
        assert sorted(received(receiver)) == [[0, 1, 2, 3], [4, 5, 6, 7]]
    assert "Exporter already shutdown, ignoring batch" not in caplog.messages


def test_spans_ended_just_before_the_loop_closed_are_encoded_and_exported_by_shutdown() -> None:
    """The turn that would have encoded them never came: shutdown, with no loop, does it."""
    with receiver_on_a_thread() as receiver:
        batches = processor(receiver, batch=100)

        async def last_turn() -> None:
            for n in range(3):
                batches.on_end(span(n))

        loop = asyncio.new_event_loop()
        loop.run_until_complete(last_turn())
        loop.close()  # its next turn never runs
        batches.shutdown()
        assert received(receiver) == [[0, 1, 2]]


def test_a_flush_cancelled_by_the_ending_loop_is_started_again() -> None:
    """As the sidecar stops: it cancels the tasks left, the export's and shutdown's flush among them."""
    with receiver_on_a_thread() as receiver:
        batches = processor(receiver, batch=4)

        def flushing() -> bool:
            return any(
                getattr(task.get_coro(), "__name__", "") == "flush" for task in asyncio.all_tasks()
            )

        async def stopping() -> None:
            receiver.status = 503  # the post of 0-3 waits out a backoff: the flush waits for it
            for n in range(8):
                batches.on_end(span(n))
            shutting_down = asyncio.ensure_future(asyncio.to_thread(batches.shutdown))
            await eventually(lambda: holds(flushing() and len(receiver.bodies) == 1))
            for task in asyncio.all_tasks():
                if task not in (asyncio.current_task(), shutting_down):
                    task.cancel()
            receiver.status = 200
            await shutting_down

        asyncio.run(stopping())
        assert received(receiver)[1:] == [[0, 1, 2, 3], [4, 5, 6, 7]]  # 0-3 retried, then 4-7


def test_shutdown_with_no_loop_running_ends_within_the_export_timeout_too(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Spans left by a loop that ended, posted by shutdown itself: the same deadline."""
    with receiver_on_a_thread() as receiver:
        receiver.status = 503
        batches = LoopSpanProcessor(
            HttpSpanExporter(endpoint=receiver.url, timeout=5),
            max_export_batch_size=4,
            schedule_delay_millis=QUIET,
            export_timeout_millis=200,
        )

        async def ending() -> None:
            for n in range(3):  # no full batch: they wait for the delay, which never comes
                batches.on_end(span(n))

        asyncio.run(ending())
        batches.shutdown()
        assert len(receiver.bodies) == 1  # back before the first retry

        async def aborted() -> None:
            # Posted at shutdown, the post itself had only the time left: no retry fits.
            aborting = "Failed to export spans batch due to timeout, max retries or shutdown."
            await eventually(lambda: holds(aborting in caplog.messages))

        asyncio.run(aborted())
    assert len(receiver.bodies) == 1


async def test_shutdown_during_an_export_waits_for_it_and_exports_the_rest() -> None:
    """As a reload closes the old runtime's telemetry while its collector is retrying."""
    async with receiving() as receiver:
        receiver.status = 503  # the first post of 0-3 is retried after a backoff
        batches = processor(receiver, batch=4)
        for n in range(8):
            batches.on_end(span(n))
        await eventually(lambda: holds(len(receiver.bodies) == 1))
        receiver.status = 200
        await asyncio.to_thread(batches.shutdown)
        assert received(receiver) == [[0, 1, 2, 3], [0, 1, 2, 3], [4, 5, 6, 7]]


class _Answered(BaseHTTPResult):
    """A collector's 200, as a transport reports it."""

    def content(self) -> bytes:
        return b""

    def headers(self) -> dict[str, str]:
        return {}


class _TimingTransport(BaseHTTPTransport):
    """Answers every post 200 at once, keeping the time each was given."""

    def __init__(self) -> None:
        self.timeouts: list[float | None] = []

    def request(
        self,
        method: str,
        url: str,
        *,
        headers: dict[str, str] | None = None,
        timeout: float | None = None,
        data: bytes | None = None,
    ) -> BaseHTTPResult:
        self.timeouts.append(timeout)
        return _Answered(status_code=200, reason="OK")

    def is_connection_error(self, exception: Exception | None) -> bool:
        return False

    def close(self) -> None:
        pass


@pytest.mark.parametrize(
    ("left", "export_timeout", "post_timeout", "bound"),
    [
        (1.0, 60.0, 10.0, 1.0),  # the exit's deadline, sooner than either timeout
        (100.0, 0.5, 10.0, 0.5),  # OTEL_BSP_EXPORT_TIMEOUT, when sooner
        (100.0, 60.0, 0.25, 0.25),  # OTEL_EXPORTER_OTLP_TIMEOUT, when sooner
    ],
    ids=["deadline", "bsp_export_timeout", "otlp_timeout"],
)
def test_shutdown_gives_its_posts_no_more_than_the_sooner_deadline(
    left: float, export_timeout: float, post_timeout: float, bound: float
) -> None:
    """A post at shutdown is given the time left to the exit's deadline, the processor's
    export timeout or the exporter's own, whichever ends first: a collector that never
    answers cannot keep it past that (the SDK's client would wait its whole timeout)."""
    transport = _TimingTransport()
    exporter = HttpSpanExporter(
        endpoint="http://127.0.0.1:1/v1/traces", timeout=post_timeout, _transport=transport
    )
    batches = LoopSpanProcessor(
        exporter, schedule_delay_millis=QUIET, export_timeout_millis=export_timeout * 1e3
    )
    for n in range(3):
        batches.on_end(span(n))
    batches.shutdown(time.monotonic() + left)
    (timeout,) = transport.timeouts
    assert timeout is not None
    assert 0 < timeout <= bound


def test_a_post_past_the_deadline_is_not_sent(caplog: pytest.LogCaptureFixture) -> None:
    transport = _TimingTransport()
    exporter = HttpSpanExporter(endpoint="http://127.0.0.1:1/v1/traces", _transport=transport)
    exporter.finish_by(time.monotonic() - 1)
    assert exporter.export([span(0)]) is SpanExportResult.FAILURE
    assert transport.timeouts == []
    assert "Dropping span batch: the export deadline passed" in caplog.messages
