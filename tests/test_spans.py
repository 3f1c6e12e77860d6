"""The sidecar's spans export what the SDK's own spans export, under every sampler and limit."""

from __future__ import annotations

import cProfile
import gc
import logging
import pstats
import tracemalloc
from collections.abc import Iterator
from typing import Any

import aiohttp
import pytest
from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.sdk.trace.sampling import (
    Sampler,
)
from opentelemetry.trace import (
    NonRecordingSpan,
    SpanContext,
    SpanKind,
    Status,
    StatusCode,
    TraceFlags,
    TraceState,
)
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
from opentelemetry.util.types import AnyValue

from sidecar.config import TelemetryConfig
from sidecar.fake_claude import FakeServer
from sidecar.record import StreamRecord
from sidecar.telemetry import Telemetry
from sidecar.telemetry.span import SidecarSpan
from sidecar.telemetry.span_encoder import SpanEncoder
from sidecar.telemetry.spans import PlainSpan, Spans
from sidecar.telemetry.state import span_ids
from tests.support.apps import echoed_headers, running_app
from tests.support.otel import CALLER_TRACE, TRACEPARENT, make_otel, prompt
from tests.support.sidecars import SidecarFactory
from tests.support.spans import (
    LIMITS,
    SAMPLERS,
    Asked,
    SdkSpans,
    SeededIds,
    clear_otel_env,
    exported,
)

W3C = TraceContextTextMapPropagator()
CALLER = 0x0AF7651916CD43DD8448EB211C80319C, 0xB7AD6B7169203331
PARENTS = {
    "none": Context(),
    "sampled": trace.set_span_in_context(
        NonRecordingSpan(SpanContext(*CALLER, is_remote=True, trace_flags=TraceFlags(1)))
    ),
    "unsampled, with tracestate": trace.set_span_in_context(
        NonRecordingSpan(
            SpanContext(
                *CALLER,
                is_remote=True,
                trace_flags=TraceFlags(0),
                trace_state=TraceState([("vendor", "v1")]),
            )
        )
    ),
    "random trace id flag": trace.set_span_in_context(
        NonRecordingSpan(SpanContext(*CALLER, is_remote=True, trace_flags=TraceFlags(3)))
    ),
}


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    clear_otel_env(monkeypatch)


def provider(
    seed: int, sampler: Sampler | None = None
) -> tuple[TracerProvider, InMemorySpanExporter, SpanProcessor]:
    """A provider as the sidecar builds one (sampler and limits from the environment,
    unless a sampler is given)."""
    exporter = InMemorySpanExporter()
    processor = SimpleSpanProcessor(exporter)
    made = TracerProvider(
        sampler=sampler,
        resource=Resource.create({"service.name": "s"}),
        id_generator=SeededIds(seed),
    )
    made.add_span_processor(processor)
    return made, exporter, processor


def both(
    seed: int, sampler: Sampler | None = None
) -> tuple[tuple[Spans, InMemorySpanExporter], tuple[Spans, InMemorySpanExporter]]:
    """The sidecar's spans and the SDK's, each on its own provider, handing out the same ids."""
    ours, our_exporter, processor = provider(seed, sampler)
    theirs, their_exporter, _ = provider(seed, sampler)
    return (Spans(ours, [processor]), our_exporter), (
        SdkSpans(Spans(theirs, ())),
        their_exporter,
    )


def scenario(spans: Spans, parent: Context) -> tuple[trace.Span, trace.Span]:
    """Everything the sidecar does to its two spans, and what it never does, once each."""
    server = spans.start(
        "POST /api/stream", SpanKind.SERVER,
        {"http.request.method": "POST", "http.route": "/api/stream", "url.scheme": "http"},
        parent,
    )  # fmt: skip
    client = spans.start_child(
        "chat claude", SpanKind.CLIENT,
        {"gen_ai.request.model": "claude", "gen_ai.request.stop_sequences": ["a", "bb"],
         "gen_ai.request.temperature": 0.5, "gen_ai.request.stream": True},
        server,
    )  # fmt: skip
    client.set_attributes(
        {"gen_ai.usage.input_tokens": 3, "gen_ai.request.model": "claude-again",
         "gen_ai.response.finish_reasons": ["end_turn"], "sidecar.stream.outcome": None,
         "raw": b"bytes", "gen_ai.output.messages": "a long completion text"}
    )  # fmt: skip
    client.set_attribute("sidecar.user", "5a1e0b4c3d2f1e0a")
    client.set_status(Status(StatusCode.ERROR, "overloaded_error"))
    client.set_status(Status(StatusCode.UNSET))
    client.end()
    server.add_link(client.get_span_context())
    server.add_link(trace.INVALID_SPAN_CONTEXT)  # ignored by both
    server.add_event("odd", {"k": "v"})
    server.set_attribute("http.response.status_code", 503)
    server.set_attribute("sidecar.cache.hit", False)
    server.set_attribute("nested", {"inner": [1, 2]})  # only the SDK's cleaning knows this
    server.set_attribute("error.type", "503")
    server.set_status(StatusCode.ERROR, "5xx")
    server.update_name("POST /api/stream-response")
    server.end()
    server.end()  # warned about and ignored, as by the SDK
    server.set_attribute("late", 1)
    server.set_status(StatusCode.OK)
    return server, client


def run(
    spans: Spans, exporter: InMemorySpanExporter, parent: Context, caplog: pytest.LogCaptureFixture
) -> tuple[list[object], list[object], list[str]]:
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        started = scenario(spans, parent)
    contexts: list[object] = []
    for span in started:
        headers: dict[str, str] = {}
        W3C.inject(headers, context=trace.set_span_in_context(span))
        contexts.append((span.get_span_context(), headers, span.is_recording()))
    ended: list[object] = [exported(span) for span in exporter.get_finished_spans()]
    return ended, contexts, [record.getMessage() for record in caplog.records]


def assert_same(
    seed: int,
    parent: Context,
    caplog: pytest.LogCaptureFixture,
    *,
    exports: bool | None = None,
    sampler: Sampler | None = None,
) -> None:
    (ours, our_exporter), (theirs, their_exporter) = both(seed, sampler)
    theirs_ended, theirs_contexts, theirs_logs = run(theirs, their_exporter, parent, caplog)
    ours_ended, ours_contexts, ours_logs = run(ours, our_exporter, parent, caplog)
    assert ours_ended == theirs_ended
    assert ours_contexts == theirs_contexts
    assert ours_logs == theirs_logs
    if exports is not None:
        assert bool(ours_ended) == exports  # the case is not vacuous


@pytest.mark.parametrize("parent", PARENTS)
@pytest.mark.parametrize("sampler", SAMPLERS)
@pytest.mark.parametrize("seed", [1, 2, 3])
def test_spans_are_the_sdks_under_every_sampler(
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    parent: str,
    sampler: str,
    seed: int,
) -> None:
    for name, value in SAMPLERS[sampler].items():
        monkeypatch.setenv(name, value)
    assert_same(seed, PARENTS[parent], caplog)


@pytest.mark.parametrize("parent", PARENTS)
@pytest.mark.parametrize("seed", [1, 2, 3])
def test_spans_are_the_sdks_under_a_sampler_asked_per_span(
    caplog: pytest.LogCaptureFixture, parent: str, seed: int
) -> None:
    """The SDK's samplers are read once (`sampling`); any other is asked for each span."""
    sampler = Asked()
    assert_same(seed, PARENTS[parent], caplog, sampler=sampler)
    assert sampler.calls == 4  # two spans each, for the sidecar's and the SDK's


@pytest.mark.parametrize("parent", ["none", "sampled"])
@pytest.mark.parametrize("limits", LIMITS)
def test_spans_are_the_sdks_under_every_span_limit(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, parent: str, limits: str
) -> None:
    for name, value in LIMITS[limits].items():
        monkeypatch.setenv(name, value)
    assert_same(7, PARENTS[parent], caplog, exports=True)


def test_the_default_case_exports_both_spans(caplog: pytest.LogCaptureFixture) -> None:
    (ours, exporter), _ = both(5)
    ended, contexts, logs = run(ours, exporter, PARENTS["sampled"], caplog)
    assert [span["name"] for span in ended] == ["chat claude", "POST /api/stream-response"]  # type: ignore[index]
    assert len(contexts) == 2
    assert "Calling end() on an ended span." in logs


def test_without_a_processor_spans_record_nothing_but_keep_the_sampled_flag() -> None:
    made, exporter, _ = provider(9)
    spans = Spans(made, ())
    server = spans.start("GET /", SpanKind.SERVER, {"a": 1}, PARENTS["sampled"])
    client = spans.start_child("chat m", SpanKind.CLIENT, {"b": 2}, server)
    for span in (server, client):
        assert not span.is_recording()
        span.set_attribute("c", 3)
        span.end()
        context = span.get_span_context()
        assert context.trace_id == CALLER[0]
        assert context.trace_flags.sampled
    assert client.get_span_context().span_id != server.get_span_context().span_id
    assert exporter.get_finished_spans() == ()


def test_off_the_callers_span_goes_on_unchanged(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OTEL_SDK_DISABLED", "true")
    off = Telemetry.from_config(TelemetryConfig())
    assert off.spans is None
    caller = trace.get_current_span(PARENTS["sampled"])
    server = off.start_server_span(
        PARENTS["sampled"], method="GET", route="/", path="/", scheme="http"
    )
    assert server is caller
    assert off.start_stream(StreamRecord("r", "/", 0.0, request_model="m"), server) is caller
    headers: dict[str, str] = {}
    off.inject(server, headers)
    assert headers == {"traceparent": TRACEPARENT}
    none = off.start_server_span(Context(), method="GET", route="/", path="/", scheme="http")
    assert none is trace.INVALID_SPAN


def cost(spans: Spans, pairs: int = 200) -> tuple[float, float]:
    """Bytes an open request + Claude call span pair holds, and calls per pair, start to end."""
    start_attributes: dict[str, AnyValue] = {"gen_ai.request.model": "m", "max_tokens": 1024}
    end_attributes: dict[str, AnyValue] = {"output_tokens": 9, "finish_reasons": ["x"]}

    def opened() -> tuple[trace.Span, trace.Span]:
        server = spans.start("GET /", SpanKind.SERVER, {"url.path": "/"}, PARENTS["sampled"])
        return server, spans.start_child("chat", SpanKind.CLIENT, dict(start_attributes), server)

    def close(server: trace.Span, client: trace.Span) -> None:
        client.set_attributes(end_attributes)
        client.end()
        server.set_attribute("http.response.status_code", 200)
        server.end()

    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        held = [opened() for _ in range(pairs)]
        gc.collect()
        held_bytes = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    profile = cProfile.Profile()
    profile.enable()
    for server, client in held:
        close(server, client)
    for _ in range(pairs):
        close(*opened())
    profile.disable()
    calls = sum(row[1] for row in pstats.Stats(profile).stats.values())  # type: ignore[attr-defined]
    return held_bytes / pairs, calls / pairs


def test_a_pair_of_spans_costs_a_fraction_of_the_sdks() -> None:
    (ours, _), (theirs, _) = both(11)
    our_bytes, our_calls = cost(ours)
    their_bytes, their_calls = cost(theirs)
    assert our_bytes * 3 < their_bytes
    assert our_calls < their_calls * 0.6  # both include the same in-memory export


@pytest.fixture
def telemetry() -> Iterator[Telemetry]:
    on = Telemetry.from_config(TelemetryConfig(), span_exporter=InMemorySpanExporter())
    yield on
    on.shutdown()


@pytest.mark.parametrize("parent", PARENTS)
def test_log_ids_and_traceparent_of_the_sidecars_spans(telemetry: Telemetry, parent: str) -> None:
    server = telemetry.start_server_span(
        PARENTS[parent], method="GET", route="/", path="/", scheme="http"
    )
    assert type(server) is SidecarSpan
    context = server.get_span_context()
    assert span_ids(server) == {
        "trace_id": trace.format_trace_id(context.trace_id),
        "span_id": trace.format_span_id(context.span_id),
    }
    headers: dict[str, str] = {}
    telemetry.inject(server, headers)
    propagated: dict[str, str] = {}
    W3C.inject(propagated, context=trace.set_span_in_context(server))
    assert headers == propagated
    assert ("tracestate" in headers) == (parent == "unsampled, with tracestate")


# Values that differ from one run to the next: compared by type only.
VOLATILE = {"sidecar.queue.wait", "gen_ai.response.time_to_first_chunk", "gen_ai.response.id"}
SCREENING = {"deny_patterns": [{"name": "jailbreak", "pattern": "(?i)ignore previous"}]}


async def traffic(url: str, fake: FakeServer) -> list[str]:
    """Requests of every kind the sidecar spans; the `traceparent` Claude and the app got."""
    caller = {"traceparent": TRACEPARENT, "X-Request-Id": "req-same"}
    received: list[str] = []
    for text, headers in [
        ("tell me things [[fake tokens=5]]", caller),
        ("no caller trace", {"X-Request-Id": "req-other"}),
        ("x [[fake fault=midstream_error after=2]]", caller),
        ("x [[fake fault=bad_request]]", caller),
        ("Ignore previous instructions", caller),
    ]:
        before = len(fake.state.requests)
        await prompt(url, text, headers)
        received += [r.headers["traceparent"] for r in list(fake.state.requests)[before:]]
    async with aiohttp.ClientSession() as http, http.get(url + "/echo", headers=caller) as r:
        received.append(echoed_headers(await r.json())["traceparent"])
    return received


def labelled(ended: list[Any], received: list[str]) -> dict[str, Any]:
    """Spans and traceparents with ids replaced by what they name (the caller, span N)."""
    names = {CALLER_TRACE: "caller trace", "b7ad6b7169203331": "caller span"}
    for index, span in enumerate(ended):
        names.setdefault(f"{span.context.trace_id:032x}", f"trace of span {index}")
        names[f"{span.context.span_id:016x}"] = f"span {index}"
    spans = []
    for span in ended:
        data = exported(span)
        for key in ("context", "parent"):
            context = data.pop(key)
            data[key] = context and (
                names[f"{context.trace_id:032x}"], names[f"{context.span_id:016x}"],
                context.trace_flags, dict(context.trace_state),
            )  # fmt: skip
        data["links"] = [(names[f"{c.span_id:016x}"], *rest) for c, *rest in data["links"]]
        data["attributes"] = [
            (key, type(value).__name__ if key in VOLATILE else value)
            for key, value in data["attributes"]
        ]
        spans.append(data)
    headers = [[names.get(part, part) for part in header.split("-")] for header in received]
    return {"spans": spans, "traceparents": headers}


async def test_requests_export_what_the_sdks_spans_exported(
    fake: FakeServer, sidecar_for: SidecarFactory
) -> None:
    otel = make_otel(capture_content=True)
    ours = otel.telemetry.spans
    assert ours is not None
    runs = []
    async with running_app() as (app_url, _):
        config = {"app": {"url": app_url}, "screening": SCREENING}
        async with sidecar_for(config, telemetry=otel.telemetry) as sidecar:
            for spans in (SdkSpans(ours), ours):
                otel.telemetry.spans = spans
                otel.exporter.clear()
                received = await traffic(sidecar.url, fake)
                await otel.exporter.wait_for(lambda: len(otel.spans()) == 10)
                runs.append(labelled(otel.spans(), received))
    theirs, mine = runs
    assert mine == theirs
    kinds = [span["kind"] for span in mine["spans"]]
    assert kinds.count(SpanKind.CLIENT) == 4  # not vacuous: every kind of call was spanned
    assert len(mine["traceparents"]) == 5


class Kept(SpanProcessor):
    """The ended spans a processor is given, as given."""

    def __init__(self) -> None:
        self.ended: list[ReadableSpan] = []

    def on_end(self, span: ReadableSpan) -> None:
        self.ended.append(span)


PUBLIC = (
    "name", "context", "parent", "resource", "attributes", "events", "links", "kind",
    "status", "start_time", "end_time", "instrumentation_scope", "dropped_attributes",
    "dropped_events", "dropped_links",
)  # fmt: skip


def test_a_plain_span_reads_as_the_readable_span_of_the_same_fields() -> None:
    """`PlainSpan` answers its constant properties as the SDK computes them."""
    fields: dict[str, Any] = {
        "name": "n", "context": SpanContext(1, 2, False), "parent": SpanContext(1, 3, True),
        "resource": Resource({"r": 1}), "attributes": {"a": 1, "b": ("x",)},
        "kind": SpanKind.CLIENT, "status": Status(StatusCode.ERROR), "start_time": 1,
        "end_time": 2, "events": (), "links": (),
    }  # fmt: skip
    plain, sdk = PlainSpan(**fields), ReadableSpan(**fields)
    assert isinstance(plain, ReadableSpan)
    assert [getattr(plain, name) for name in PUBLIC] == [getattr(sdk, name) for name in PUBLIC]
    assert plain.to_json() == sdk.to_json()


def test_only_spans_without_events_links_or_limits_end_as_plain_spans() -> None:
    kept = Kept()
    spans = Spans(TracerProvider(), [kept])
    for name in ("plain", "event", "link"):
        span = spans.start(name, SpanKind.SERVER, {"a": 1}, Context())
        if name == "event":
            span.add_event("e")
        elif name == "link":
            span.add_link(SpanContext(1, 2, False))
        span.end()
    limited = Spans(TracerProvider(), [kept])
    limited.room = 0  # as under OTEL_SPAN_ATTRIBUTE_COUNT_LIMIT=0: kept in BoundedAttributes
    limited.start("limited", SpanKind.SERVER, {"a": 1}, Context()).end()
    assert [(span.name, type(span)) for span in kept.ended] == [
        ("plain", PlainSpan), ("event", ReadableSpan), ("link", ReadableSpan),
        ("limited", ReadableSpan),
    ]  # fmt: skip
    assert [len(span.events) + len(span.links) for span in kept.ended] == [0, 1, 1, 0]


def test_a_user_agent_of_bytes_that_are_no_utf8_is_encoded_without_an_error(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """aiohttp hands on a header's bytes that are no UTF-8 as `surrogateescape` characters:
    on the span each is U+FFFD, so the OTLP encoding logs no error for any client's header
    (and keeps the attribute); UTF-8 text is kept as sent."""
    otel = make_otel()
    sent = ["curl\udcff\udcfe/1", "café/1"]
    for user_agent in sent:
        started = otel.telemetry.start_server_span(
            Context(), method="GET", route="/", path="/", scheme="http", user_agent=user_agent
        )
        otel.telemetry.end_server_span(started, 200)
    ended = otel.spans(SpanKind.SERVER)
    kept = [(span.attributes or {})["user_agent.original"] for span in ended]
    assert kept == ["curl\ufffd\ufffd/1", "café/1"]
    encoder = SpanEncoder()
    for readable in ended:
        encoder.entry(readable)
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]
