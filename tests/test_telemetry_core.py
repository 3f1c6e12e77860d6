"""Telemetry's per-call shortcuts give what the long way gives: trace context header for
header as the W3C propagator, and memoized labels, identities, prices and attribute sets
value for value as if computed per call, bounded."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from typing import Any

import pytest
from multidict import CIMultiDict, CIMultiDictProxy
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.trace import NonRecordingSpan, Span, SpanContext, TraceFlags, TraceState
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from sidecar.config import ModelPrice, TelemetryConfig
from sidecar.record import StreamRecord
from sidecar.telemetry import Telemetry, streams
from sidecar.telemetry.bounded import MAX_TEXT
from sidecar.telemetry.state import CACHE_LIMIT
from tests.support.otel import Otel, make_otel

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


# ------------------------------------------------- per-call memos: exact, per value, bounded


def _record(index: int, **fields: Any) -> StreamRecord:
    """A finished call; `index` varies its times and usage so every point differs."""
    record = StreamRecord(request_id=f"req-{index}", route="/v1", started=100.0 + index)
    record.request_model = "claude-sonnet-5-5"
    record.server_address = "api.anthropic.com"
    record.upstream_started = record.started + 0.002
    record.first_chunk_at = record.started + 0.01 * (index % 7 + 1)
    record.first_token_at = record.first_chunk_at + 0.001
    record.last_chunk_at = record.first_token_at + 0.05 * (index % 5 + 1)
    record.ended = record.last_chunk_at + 0.001
    record.upstream_status = 200
    record.input_tokens, record.output_tokens = 10 + index, 3 + index % 11
    record.cache_read_input_tokens = index % 3
    record.output_deltas = 2 + index % 4
    record.outcome = "completed"
    for name, value in fields.items():
        setattr(record, name, value)
    return record


# Calls that differ in every value the shared attribute sets depend on.
VARIED: list[dict[str, Any]] = [
    {},
    {"route": "/v2"},
    {"request_model": "claude-sonnet-5-5-20260101", "response_model": "claude-sonnet-5-5"},
    {"request_model": "made-up", "response_model": "made-up-too"},
    {"outcome": "upstream_error", "error_type": "overloaded_error", "upstream_status": 529},
    {"outcome": "upstream_error", "error_type": "SomeException"},
    {"outcome": "client_cancelled"},
    {"outcome": "idle_timeout", "error_type": "idle_timeout"},
    {"server_port": 8443},
    {"stream": False},
    {"upstream_started": None, "outcome": "rejected", "error_type": "rejected"},
]


def _finish_all(telemetry: Telemetry, records: list[StreamRecord]) -> None:
    for record in records:  # never written: the stream start completes at its finish
        span = telemetry.start_stream(record, trace.INVALID_SPAN)
        telemetry.admitted(record)
        telemetry.finish_stream(record, span)


def _exported(otel: Otel) -> dict[str, list[tuple[Any, ...]]]:
    """Every metric point: attributes and values (bucket counts, sums, min/max)."""
    exported: dict[str, list[tuple[Any, ...]]] = {}
    for name, metric in otel.metrics().items():
        exported[name] = sorted(
            (
                sorted((point.attributes or {}).items()),
                getattr(point, "value", None),
                getattr(point, "count", None),
                getattr(point, "sum", None),
                tuple(getattr(point, "bucket_counts", ())),
                getattr(point, "min", None),
                getattr(point, "max", None),
            )
            for point in metric.data.data_points
        )
    return exported


@pytest.mark.parametrize("latest", [False, True])
def test_shared_attribute_sets_export_what_sets_built_per_stream_do(
    monkeypatch: pytest.MonkeyPatch, latest: bool
) -> None:
    """Streams alike share their points' attribute sets; every point is as if each stream
    had built its own (the same calls, interleaved and repeated, recorded both ways)."""
    monkeypatch.delenv("OTEL_SDK_DISABLED", raising=False)
    if latest:
        monkeypatch.setenv("OTEL_SEMCONV_STABILITY_OPT_IN", "gen_ai_latest_experimental")
    calls = [(index, VARIED[index % len(VARIED)]) for index in range(3 * len(VARIED))]
    shared, fresh = make_otel(), make_otel()
    _finish_all(shared.telemetry, [_record(index, **fields) for index, fields in calls])
    for index, fields in calls:  # the path without memos: sets built for this stream alone
        record = _record(index, **fields)
        telemetry = fresh.telemetry
        record.model_label = telemetry.models(record.request_model)
        record.response_model_label = (
            telemetry.models(record.response_model) if record.response_model else None
        )
        record.error_label = telemetry._errors(record.error_type)
        streams.record_metrics(telemetry.instruments, record, record.ended or 0.0)
    exported, expected = _exported(shared), _exported(fresh)
    for name in ("sidecar.cost.usd", "sidecar.streams.active", "sidecar.queue.wait"):
        exported.pop(name, None)  # recorded only on the full path
    assert exported == expected
    assert len(exported) >= 6  # the comparison is not vacuous
    # One entry per kind of stream: a non-streaming call's points carry the same sets.
    assert len(shared.telemetry._stream_sets) == len(VARIED) - 1


@pytest.mark.parametrize("mode", ["hashed", "plain", "none"])
def test_identity_memo_gives_each_value_its_own_and_stays_bounded(mode: str) -> None:
    telemetry = make_otel(user_attribute=mode).telemetry

    def expected(value: str) -> str | None:
        if mode == "none":
            return None
        return value if mode == "plain" else hashlib.sha256(value.encode()).hexdigest()[:16]

    users = [f"user-{index}" for index in range(CACHE_LIMIT + 50)]
    for user in [*users, *users[:10], *users[::97]]:  # evicted and repeated values too
        record = StreamRecord(request_id="r", route="/", started=0.0, user=user, tenant="acme")
        fields = telemetry._log_base(record, trace.INVALID_SPAN)
        assert fields.get("user") == expected(user)
        assert fields.get("tenant") == expected("acme")
        assert len(telemetry._identities) <= CACHE_LIMIT
    anonymous = telemetry._log_base(StreamRecord("r", "/", 0.0), trace.INVALID_SPAN)
    assert "user" not in anonymous
    assert "tenant" not in anonymous


def test_price_memo_costs_each_model_at_its_own_price_and_stays_bounded() -> None:
    prices = {
        "claude-sonnet-5-5": ModelPrice(input=3, output=15),
        "claude-haiku-5": ModelPrice(input=1, output=5),
    }
    otel = make_otel(prices=prices)
    models = ["claude-sonnet-5-5", "claude-haiku-5", "claude-sonnet-5-5-20260101", "unpriced"] * 3
    records = [
        _record(index, request_model=model, input_tokens=1_000_000, output_tokens=1_000_000)
        for index, model in enumerate(models)
    ]
    _finish_all(otel.telemetry, records)
    costs = {point.attributes["gen_ai.request.model"]: point.value
             for point in otel.points("sidecar.cost.usd")}  # fmt: skip
    # The dated id is priced by its prefix and labelled as itself (it extends a known name).
    assert costs == {
        "claude-sonnet-5-5": pytest.approx(3 * 18),
        "claude-haiku-5": pytest.approx(3 * 6),
        "claude-sonnet-5-5-20260101": pytest.approx(3 * 18),
    }
    for index in range(CACHE_LIMIT + 10):  # model names come from clients
        _finish_all(otel.telemetry, [_record(index, request_model=f"client-{index}")])
        assert len(otel.telemetry._prices) <= CACHE_LIMIT
    assert otel.telemetry._price("claude-haiku-5") is prices["claude-haiku-5"]


def test_the_server_span_bounds_what_the_client_chose(monkeypatch: pytest.MonkeyPatch) -> None:
    """`url.path` and an unknown method's own spelling are cut to MAX_TEXT characters:
    a path or method as long as the request line allows never reaches a span whole."""
    monkeypatch.delenv("OTEL_SDK_DISABLED", raising=False)
    otel = make_otel()
    try:
        path, method = "/public/" + "P" * 6000, "X" * 500
        span = otel.telemetry.start_server_span(
            trace.set_span_in_context(trace.INVALID_SPAN), method=method, route="/public",
            path=path, scheme="http",
        )  # fmt: skip
        otel.telemetry.end_server_span(span, 200)
        (server,) = otel.spans()
        attributes = server.attributes or {}
        assert attributes["url.path"] == path[:MAX_TEXT]
        assert attributes["http.request.method_original"] == method[:MAX_TEXT]
        assert attributes["http.request.method"] == "_OTHER"
    finally:
        otel.telemetry.shutdown()
