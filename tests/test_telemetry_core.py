"""Telemetry's per-call shortcuts give what the long way gives: trace context header for
header as the W3C propagator; the server span bounds what the client chose."""

from __future__ import annotations

from collections.abc import Iterator
from ipaddress import IPv4Network

import pytest
from multidict import CIMultiDict, CIMultiDictProxy
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.trace import NonRecordingSpan, Span, SpanContext, TraceFlags, TraceState
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from sidecar.client_address import client_ip
from sidecar.config import TelemetryConfig
from sidecar.telemetry import Telemetry
from sidecar.telemetry.bounded import MAX_TEXT
from tests.support.otel import make_otel

W3C = TraceContextTextMapPropagator()
PARENT = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"


@pytest.fixture
def telemetry(monkeypatch: pytest.MonkeyPatch) -> Iterator[Telemetry]:
    monkeypatch.delenv("OTEL_SDK_DISABLED", raising=False)  # the SDK reads its environment
    on = Telemetry.from_config(TelemetryConfig(prometheus=True))
    yield on
    on.shutdown()


def propagated(span: Span) -> dict[str, str]:
    headers: dict[str, str] = {}
    W3C.inject(headers, context=trace.set_span_in_context(span))
    return headers


def spans() -> list[Span]:
    recording = TracerProvider().get_tracer("t").start_span("s")
    return [
        recording,
        NonRecordingSpan(SpanContext(0x0AF7651916CD43DD8448EB211C80319C, 0xB7AD6B7169203331,
                                     is_remote=True, trace_flags=TraceFlags(1))),
        NonRecordingSpan(SpanContext(1, 2, is_remote=True, trace_flags=TraceFlags(0),
                                     trace_state=TraceState([("vendor", "v1"), ("other", "x")]))),
        trace.INVALID_SPAN,
    ]  # fmt: skip


@pytest.mark.parametrize("index", range(4))
def test_inject_writes_what_the_propagator_writes(telemetry: Telemetry, index: int) -> None:
    span = spans()[index]
    headers: dict[str, str] = {"x-api-key": "kept"}
    telemetry.inject(span, headers)
    assert headers == {"x-api-key": "kept", **propagated(span)}
    if index < 3:
        assert "traceparent" in headers  # the case is not vacuous


@pytest.mark.parametrize(
    "sent",
    [{}, {"tracestate": "vendor=v1"}, {"traceparent": ""}, {"traceparent": PARENT},
     {"Traceparent": PARENT, "tracestate": "vendor=v1"}, {"traceparent": "garbage"}],
)  # fmt: skip
def test_extract_reads_what_the_propagator_reads(
    telemetry: Telemetry, sent: dict[str, str]
) -> None:
    headers = CIMultiDictProxy(CIMultiDict(sent))
    ours, theirs = telemetry.extract(headers), W3C.extract(headers)
    assert trace.get_current_span(ours).get_span_context() == (
        trace.get_current_span(theirs).get_span_context()
    )
    assert ours.keys() == theirs.keys()  # spans compare by identity: their contexts above


def test_the_server_span_bounds_what_the_client_chose(monkeypatch: pytest.MonkeyPatch) -> None:
    """`url.path`, an unknown method's own spelling and the client address are cut to
    MAX_TEXT characters: a path or method as long as the request line allows, or an
    `X-Forwarded-For` hop as long as a header allows (a non-address hop from a trusted
    proxy is the client address as written), never reaches a span whole."""
    monkeypatch.delenv("OTEL_SDK_DISABLED", raising=False)
    otel = make_otel()
    try:
        path, method = "/public/" + "P" * 6000, "X" * 500
        forwarded = client_ip(
            "10.0.0.1", "not-an-address-" + "x" * 6000, [IPv4Network("10.0.0.0/8")]
        )
        span = otel.telemetry.start_server_span(
            trace.set_span_in_context(trace.INVALID_SPAN), method=method, route="/public",
            path=path, scheme="http", client_address=forwarded,
        )  # fmt: skip
        otel.telemetry.end_server_span(span, 200)
        (server,) = otel.spans()
        attributes = server.attributes or {}
        assert attributes["url.path"] == path[:MAX_TEXT]
        assert attributes["http.request.method_original"] == method[:MAX_TEXT]
        assert attributes["client.address"] == forwarded[:MAX_TEXT]
        assert attributes["http.request.method"] == "_OTHER"
    finally:
        otel.telemetry.shutdown()
