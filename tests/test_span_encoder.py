"""The span encoder writes exactly the request the SDK's encoder builds, for fewer calls.

Spans of every shape, and at the edges of every field, encode to the SDK's bytes with
the SDK's log lines, from the caches as when first met; those
protobuf refuses fail as they fail in the SDK.
"""

from __future__ import annotations

import cProfile
import logging
import pstats
from collections.abc import Callable, Sequence
from typing import Any

import pytest
from opentelemetry.attributes import BoundedAttributes
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.sdk.trace import Event, ReadableSpan
from opentelemetry.sdk.util import BoundedList
from opentelemetry.trace import Link, SpanContext, SpanKind, Status, StatusCode, TraceState
from opentelemetry.trace.span import DEFAULT_TRACE_STATE

from sidecar.config import TelemetryConfig
from sidecar.telemetry.providers import resource_of
from sidecar.telemetry.span_encoder import Run, SpanEncoder
from tests.support.otlp import (
    BARE,
    OTHER,
    RESOURCE,
    SCOPE,
    context,
    logged,
    sdk_bytes,
    shapes,
)  # fmt: skip


def our_bytes(encoder: SpanEncoder, spans: Sequence[ReadableSpan]) -> bytes:
    return encoder.serialize(spans)


def runs_of(encoder: SpanEncoder, spans: Sequence[ReadableSpan], split: bool = False) -> list[Run]:
    """Each span's `entry`, in runs of one resource and scope (`split`: a run per span)."""
    runs: list[Run] = []
    for span in spans:
        resource, scope = span.resource, span.instrumentation_scope or None
        entry = encoder.entry(span)
        last = runs[-1] if runs else None
        if split or last is None or last[0] is not resource or last[1] is not scope:
            runs.append((resource, scope, [entry]))
        else:
            assert isinstance(last[2], list)
            last[2].append(entry)
    return runs


def test_every_shape_encodes_to_the_sdks_bytes(caplog: pytest.LogCaptureFixture) -> None:
    spans = shapes()
    caplog.clear()
    with caplog.at_level(logging.DEBUG):
        expected = sdk_bytes(spans)
        sdk_logs = logged(caplog)
        caplog.clear()
        encoder = SpanEncoder()
        first = our_bytes(encoder, spans)
        our_logs = logged(caplog)
    assert first == expected
    assert our_logs == sdk_logs  # the value out of range: logged and dropped alike
    assert any("overflow" in message for _, _, message in our_logs)
    assert our_bytes(encoder, spans) == expected  # from the caches
    assert our_bytes(encoder, spans[::-1]) == sdk_bytes(spans[::-1])
    assert ExportTraceServiceRequest.FromString(first).SerializeToString() == expected
    request = ExportTraceServiceRequest.FromString(expected)
    assert [len(r.scope_spans) for r in request.resource_spans] == [2, 2]  # not vacuous
    assert our_bytes(encoder, []) == sdk_bytes([]) == b""


def test_spans_encoded_one_at_a_time_join_into_the_sdks_request() -> None:
    """`entry` per span, `request` of the runs: the SDK's bytes for the spans in that order,
    however the runs of one group are cut (equal resources and scopes share a group)."""
    spans = shapes()
    encoder = SpanEncoder()
    for order in (spans, spans[::-1], spans[1:] + spans[:1]):
        expected = sdk_bytes(order)
        assert encoder.request(runs_of(encoder, order)) == expected
        assert encoder.request(runs_of(encoder, order, split=True)) == expected
        assert ExportTraceServiceRequest.FromString(expected).SerializeToString() == expected
    for span in edges():
        assert encoder.request(runs_of(encoder, [span])) == sdk_bytes([span]), span.name
    assert encoder.request([]) == sdk_bytes([]) == b""


def test_joining_a_request_costs_the_same_python_calls_for_any_number_of_spans() -> None:
    """The wrappers are written per group, the entries joined by C: nothing per span."""
    spans = [
        ReadableSpan(
            "chat", context(1, i + 1), None, RESOURCE, {"n": i}, start_time=1,
            instrumentation_scope=SCOPE,
        )
        for i in range(512)
    ]  # fmt: skip
    encoder = SpanEncoder()
    few, many = runs_of(encoder, spans[:8]), runs_of(encoder, spans)
    assert encoder.request(many) == sdk_bytes(spans)

    assert calls_of(lambda: encoder.request(many)) == calls_of(lambda: encoder.request(few))


def test_a_resource_of_the_sidecar_encodes_as_the_sdks() -> None:
    resource = resource_of(TelemetryConfig(resource_attributes={"team": "a"}))
    spans = [
        ReadableSpan(f"s{i}", context(1, i + 1), None, resource, start_time=i) for i in range(3)
    ]
    assert our_bytes(SpanEncoder(), spans) == sdk_bytes(spans)


def python_calls(encode: Any, spans: Sequence[ReadableSpan]) -> float:
    """Calls of functions written in Python (not built in) per span."""
    return calls_of(lambda: encode(spans)) / len(spans)


def calls_of(run: Callable[[], object]) -> int:
    """Calls of functions written in Python (not built in) that `run()` makes."""
    profile = cProfile.Profile()
    profile.enable()
    run()
    profile.disable()
    stats = pstats.Stats(profile).stats  # type: ignore[attr-defined]
    calls: int = sum(row[1] for (file, _, _), row in stats.items() if file != "~")
    return calls


def test_a_client_span_costs_a_fraction_of_the_python_calls_of_the_sdks() -> None:
    """A client span as the sidecar ends one: labels recur, ids and counts do not."""
    resource = resource_of(TelemetryConfig())
    labels: dict[str, Any] = {
        "gen_ai.operation.name": "chat", "gen_ai.provider.name": "anthropic",
        "gen_ai.request.model": "claude-sonnet-5-5", "gen_ai.request.stream": True,
        "server.address": "127.0.0.1", "server.port": 8080, "sidecar.route": "/v1",
        "gen_ai.request.max_tokens": 1024, "sidecar.stream.outcome": "completed",
        "http.response.status_code": 200, "gen_ai.response.finish_reasons": ("end_turn",),
    }  # fmt: skip
    spans = [
        ReadableSpan(
            "chat claude-sonnet-5-5", context(i + 1, i + 7), context(i + 1, i + 3), resource,
            {**labels, "sidecar.request_id": f"req_{i:024x}", "gen_ai.usage.output_tokens": i,
             "gen_ai.response.time_to_first_chunk": i / 1000},
            kind=SpanKind.CLIENT, start_time=1, end_time=2, instrumentation_scope=SCOPE,
        )
        for i in range(64)
    ]  # fmt: skip
    encoder = SpanEncoder()
    assert our_bytes(encoder, spans[:32]) == sdk_bytes(spans[:32])
    ours = python_calls(encoder.serialize, spans[32:])
    theirs = python_calls(encode_spans, spans[32:])
    assert ours * 2 < theirs
    assert our_bytes(encoder, spans) == sdk_bytes(spans)


def edges() -> list[ReadableSpan]:
    """Spans the encoder writes itself (no events, links, trace state or status message),
    at the edges of each field."""
    limited = BoundedAttributes(maxlen=1, attributes={"a": "x", "b": 2})
    none_kept = BoundedList.from_seq(0, [Event("e", {}, 1)])
    long = {f"key {i}": "v" * 100 for i in range(200)}  # > 16 KiB: a three-byte length
    return [
        ReadableSpan("", context(0, 0), None, RESOURCE, start_time=None, end_time=None),
        ReadableSpan(
            "é" * 100, context(1, 2), context(1, 3, remote=True), RESOURCE, limited,
            kind=SpanKind.SERVER, status=Status(StatusCode.ERROR), start_time=0,
            end_time=2**64 - 1, instrumentation_scope=SCOPE,
        ),
        ReadableSpan(
            "nothing kept", context(1, 4), None, RESOURCE, {"k": "v"}, events=none_kept,
            start_time=1, end_time=2, instrumentation_scope=BARE,
        ),
        ReadableSpan(
            "no link kept", context(1, 5), None, OTHER,
            links=BoundedList.from_seq(0, [Link(context(1, 1))]), start_time=1, end_time=2,
        ),
        ReadableSpan("long", context(5, 6), context(5, 7), RESOURCE, long, start_time=3),
        ReadableSpan(b"bytes", context(7, 8), resource=RESOURCE),  # type: ignore[arg-type]
    ]  # fmt: skip


def test_the_edges_of_every_field_encode_to_the_sdks_bytes() -> None:
    spans = edges()
    encoder = SpanEncoder()
    for _ in range(2):
        assert our_bytes(encoder, spans) == sdk_bytes(spans)
    for span in spans:
        assert our_bytes(encoder, [span]) == sdk_bytes([span]), span.name
    assert len(sdk_bytes(spans[-2:-1])) > 2**14


REFUSED = {
    "negative id": ReadableSpan("s", context(-1, 1), resource=RESOURCE, start_time=1),
    "id too large": ReadableSpan("s", context(1, 2**64), resource=RESOURCE, start_time=1),
    "negative time": ReadableSpan("s", context(1, 1), resource=RESOURCE, start_time=-1),
    "time too large": ReadableSpan("s", context(1, 1), resource=RESOURCE, end_time=2**64),
    "time not an int": ReadableSpan("s", context(1, 1), resource=RESOURCE, end_time=1.5),  # type: ignore[arg-type]
    "name not text": ReadableSpan("\ud800", context(1, 1), resource=RESOURCE),
    "unknown kind": ReadableSpan("s", context(1, 1), resource=RESOURCE, kind="odd"),  # type: ignore[arg-type]
}


REFUSALS = (OverflowError, ValueError, TypeError, KeyError)


@pytest.mark.parametrize("name", REFUSED)
def test_a_span_protobuf_refuses_fails_as_in_the_sdk(name: str) -> None:
    spans = [shapes()[2], REFUSED[name]]
    with pytest.raises(REFUSALS) as theirs:
        sdk_bytes(spans)
    with pytest.raises(REFUSALS) as ours:
        SpanEncoder().serialize(spans)
    assert (type(ours.value), str(ours.value)) == (type(theirs.value), str(theirs.value))


def test_a_span_context_is_the_tuple_its_type_declares() -> None:
    """The encoder unpacks a `SpanContext` (`tuple[int, int, bool, TraceFlags, TraceState,
    bool]`) instead of calling its properties; spans without a trace state share the default."""
    state = TraceState([("v", "1")])
    for span_context in (context(1, 2, remote=True), SpanContext(3, 4, False, None, state)):
        assert tuple(span_context) == (
            span_context.trace_id, span_context.span_id, span_context.is_remote,
            span_context.trace_flags, span_context.trace_state, span_context.is_valid,
        )  # fmt: skip
    assert context(1, 2).trace_state is DEFAULT_TRACE_STATE
    assert SpanContext(1, 2, False, trace_state=None).trace_state is DEFAULT_TRACE_STATE
