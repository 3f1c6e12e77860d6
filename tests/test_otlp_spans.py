"""The sidecar's OTLP span exporters send exactly what the SDK's would.

The sidecar's own spans, from real traffic, reach a real OTLP/HTTP receiver as the SDK's
bytes; the exporters deliver spans of every shape to that receiver and to a real gRPC
server, behave as the SDK's exporter on every outcome, and the SDK internals they rely on
are checked so that an SDK upgrade that changes them fails here first.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import inspect
import logging
import os
import threading
from collections.abc import Iterator, Sequence
from concurrent import futures
from typing import Any

import grpc  # type: ignore[import-untyped]
import pytest
from opentelemetry.exporter.http.transport._requests import RequestsHTTPTransport
from opentelemetry.exporter.otlp.common import http as sdk_http_client
from opentelemetry.exporter.otlp.proto.common import _internal as sdk_common
from opentelemetry.exporter.otlp.proto.common._internal import trace_encoder as sdk_trace_encoder
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.exporter.otlp.proto.grpc import exporter as sdk_grpc_exporter
from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import (
    OTLPSpanExporter as SdkGrpcSpanExporter,
)
from opentelemetry.exporter.otlp.proto.http import _common as sdk_http_common
from opentelemetry.exporter.otlp.proto.http import trace_exporter as sdk_http_module
from opentelemetry.exporter.otlp.proto.http.trace_exporter import (
    OTLPSpanExporter as SdkHttpSpanExporter,
)
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2_grpc
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult
from opentelemetry.trace import (
    SpanKind,
)

from sidecar.config import TelemetryConfig
from sidecar.fake_claude import FakeServer
from sidecar.telemetry import Telemetry
from sidecar.telemetry.otlp_spans import HttpSpanExporter, grpc_span_exporter
from sidecar.telemetry.providers import OtlpSignal, _span_exporter
from sidecar.telemetry.span_encoder import SpanEncoder
from tests.support.otel import TRACEPARENT, NotifyingExporter, prompt
from tests.support.otlp import RESOURCE, context, logged, receiving, sdk_bytes, shapes
from tests.support.sidecars import SidecarFactory
from tests.support.sockets import free_port


def stop(exporter: SpanExporter) -> None:
    exporter.shutdown()  # typed here: the SDK's exporters leave it untyped


def clean_exporter_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.startswith("OTEL_"):
            monkeypatch.delenv(name)


def test_the_sidecar_builds_these_exporters(monkeypatch: pytest.MonkeyPatch) -> None:
    clean_exporter_env(monkeypatch)
    http = _span_exporter(OtlpSignal("http/protobuf", "http://127.0.0.1:1/v1/traces"))
    assert isinstance(http, HttpSpanExporter)
    grpc_exporter = _span_exporter(OtlpSignal("grpc", "http://127.0.0.1:1"))
    assert isinstance(grpc_exporter, SdkGrpcSpanExporter)
    assert type(grpc_exporter)._translate_data is not SdkGrpcSpanExporter._translate_data
    stop(http)
    stop(grpc_exporter)


# What this module mirrors or overrides of the SDK: a change to any of it fails here, to be
# mirrored again (the encoder's other tests then say whether the bytes still agree).
SDK_SOURCES = {
    "http export": (SdkHttpSpanExporter.export, "0968825c"),
    # `finish_by`: each post's time, retries included, is the client's `_timeout`; and
    # `closing` shuts the SDK's batch span processor down through its `_batch_processor`.
    "http client export": (sdk_http_client._OTLPHTTPClient.export, "2641348a"),
    "batch span processor shutdown": (BatchSpanProcessor.shutdown, "0bef38a6"),
    "grpc _export": (sdk_grpc_exporter.OTLPExporterMixin._export, "22cf97e0"),
    "grpc stub": (sdk_grpc_exporter.OTLPExporterMixin._initialize_channel_and_stub, "98fa9b46"),
    "trace encoder": (sdk_trace_encoder, "286b1140"),
    "value encoder": (sdk_common._encode_value, "a662fc07"),
    # The session (`otlp_session`): posted through with no per-call settings; replaced by
    # the one a credential provider makes.
    "requests transport": (RequestsHTTPTransport.request, "7e35777e"),
    "credential provider": (sdk_http_common._load_session_from_envvar, "86cbd3c8"),
}


def digest(source: object) -> str:
    return hashlib.sha256(inspect.getsource(source).encode()).hexdigest()[:8]  # type: ignore[arg-type]


@pytest.mark.parametrize("name", SDK_SOURCES)
def test_the_sdk_internals_this_relies_on_are_unchanged(name: str) -> None:
    source, expected = SDK_SOURCES[name]
    assert digest(source) == expected, f"the SDK's {name} changed: mirror it in otlp_spans"


def test_the_sdk_exporters_have_the_shape_this_relies_on(monkeypatch: pytest.MonkeyPatch) -> None:
    clean_exporter_env(monkeypatch)
    exporter = HttpSpanExporter(endpoint="http://127.0.0.1:1/v1/traces")
    for attribute in ("_shutdown", "_metrics", "_max_request_size", "_client", "_encoder"):
        assert hasattr(exporter, attribute), attribute
    assert isinstance(exporter._client._timeout, float)
    assert vars(sdk_http_module)["encode_spans"] is encode_spans
    assert isinstance(sdk_http_module._logger, logging.Logger)
    assert "request=self._translate_data(data)" in inspect.getsource(
        sdk_grpc_exporter.OTLPExporterMixin._export
    )
    assert "self._client = self._stub(self._channel)" in inspect.getsource(
        sdk_grpc_exporter.OTLPExporterMixin._initialize_channel_and_stub
    )
    stop(exporter)


async def test_the_sidecars_spans_reach_a_receiver_as_the_sdks_bytes(
    fake: FakeServer, sidecar_for: SidecarFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Real traffic, exported over OTLP/HTTP as configured: each body is the SDK's encoding."""
    clean_exporter_env(monkeypatch)
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_TRACES_COMPRESSION", "gzip")
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_TRACES_HEADERS", "x-team=sidecar")
    monkeypatch.setenv("OTEL_METRICS_EXPORTER", "none")
    encoded: list[int] = []
    entry = SpanEncoder.entry

    def counted(self: SpanEncoder, span: ReadableSpan) -> bytes:
        encoded.append(1)
        return entry(self, span)

    monkeypatch.setattr(SpanEncoder, "entry", counted)
    memory = NotifyingExporter()
    async with receiving() as receiver:
        config = TelemetryConfig(
            otlp_endpoint=receiver.url.removesuffix("/v1/traces"), prometheus=False,
            capture_content=True, resource_attributes={"deployment.environment": "test"},
        )  # fmt: skip
        telemetry = Telemetry.from_config(config, span_exporter=memory)
        screening = {"deny_patterns": [{"name": "jb", "pattern": "(?i)ignore previous"}]}
        async with sidecar_for({"screening": screening}, telemetry=telemetry) as sidecar:
            for text, headers in [
                ("tell me things [[fake tokens=5]]", {"traceparent": TRACEPARENT}),
                ("no caller trace", {}),
                ("x [[fake fault=midstream_error after=2]]", {}),
                ("x [[fake fault=bad_request]]", {}),
                ("Ignore previous instructions", {}),
            ]:
                await prompt(sidecar.url, text, headers)
        await telemetry.close()
    spans = memory.get_finished_spans()
    assert len(spans) >= 8
    assert sum(encoded) == len(spans)  # every span went through the encoder
    assert {span.kind for span in spans} == {SpanKind.SERVER, SpanKind.CLIENT}
    by_id = {span.context.span_id: span for span in spans}
    sent = []
    for body in receiver.bodies:
        request = ExportTraceServiceRequest.FromString(body)
        ids = [
            int.from_bytes(span.span_id, "big")
            for resource in request.resource_spans
            for scope in resource.scope_spans
            for span in scope.spans
        ]
        assert body == sdk_bytes([by_id[span_id] for span_id in ids])
        sent += ids
    assert sent == [span.context.span_id for span in spans]
    assert {headers["x-team"] for headers in receiver.headers} == {"sidecar"}
    assert {headers["Content-Encoding"] for headers in receiver.headers} == {"gzip"}


class TraceService(trace_service_pb2_grpc.TraceServiceServicer):
    """A gRPC OTLP receiver keeping the requests it decoded."""

    def __init__(self) -> None:
        self.requests: list[ExportTraceServiceRequest] = []

    def Export(  # the service's method name
        self, request: ExportTraceServiceRequest, context: Any
    ) -> ExportTraceServiceResponse:
        self.requests.append(request)
        return ExportTraceServiceResponse()


@contextlib.contextmanager
def grpc_receiver(port: int = 0) -> Iterator[tuple[str, TraceService]]:
    service = TraceService()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=1))
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(service, server)  # type: ignore[no-untyped-call]
    port = server.add_insecure_port(f"127.0.0.1:{port}")
    server.start()
    try:
        yield f"http://127.0.0.1:{port}", service
    finally:
        server.stop(None)


def test_the_grpc_exporter_sends_the_sdks_request(monkeypatch: pytest.MonkeyPatch) -> None:
    clean_exporter_env(monkeypatch)
    spans = [*shapes(), *shapes()]
    with grpc_receiver() as (endpoint, service):
        exporter = grpc_span_exporter(endpoint)
        assert exporter.export(spans) == exporter.export(spans[:2]) == SpanExportResult.SUCCESS
        stop(exporter)
    assert [request.SerializeToString() for request in service.requests] == [
        sdk_bytes(spans),
        sdk_bytes(spans[:2]),
    ]


def test_the_grpc_exporter_reconnects_with_its_stub(monkeypatch: pytest.MonkeyPatch) -> None:
    """Nothing listens at first: the SDK sets up a new channel and stub, retries, delivers."""
    clean_exporter_env(monkeypatch)
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_TRACES_COMPRESSION", "gzip")
    port = free_port()
    spans = shapes()
    exporter = grpc_span_exporter(f"http://127.0.0.1:{port}")
    set_up = exporter._initialize_channel_and_stub  # type: ignore[attr-defined]
    reconnected = threading.Event()

    def reconnecting() -> None:
        set_up()
        reconnected.set()

    exporter._initialize_channel_and_stub = reconnecting  # type: ignore[attr-defined]
    with futures.ThreadPoolExecutor(max_workers=1) as pool:
        result = pool.submit(exporter.export, spans)  # refused, then retried after ~1 s
        assert reconnected.wait(10)
        with grpc_receiver(port) as (_, service):
            assert result.result(timeout=10) == SpanExportResult.SUCCESS
            stop(exporter)
    assert [request.SerializeToString() for request in service.requests] == [sdk_bytes(spans)]


def outcomes(
    exporter: SpanExporter, spans: Sequence[ReadableSpan], caplog: pytest.LogCaptureFixture
) -> tuple[SpanExportResult, list[tuple[str, int, str]]]:
    caplog.clear()
    with caplog.at_level(logging.DEBUG, logger="opentelemetry.exporter.otlp"):
        result = exporter.export(spans)
    return result, logged(caplog)


async def test_the_http_exporter_behaves_as_the_sdks(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Success, a refusal, a batch over the size limit, spans it cannot encode, a shutdown."""
    clean_exporter_env(monkeypatch)
    spans = shapes()
    unencodable = [ReadableSpan("bad id", context(-1, 1), resource=RESOURCE, start_time=1)]
    async with receiving() as receiver:

        def run(kind: type[SdkHttpSpanExporter]) -> list[Any]:
            exporter = kind(endpoint=receiver.url)
            small = kind(endpoint=receiver.url, max_request_size=64)
            receiver.status = 200
            seen = [outcomes(exporter, spans, caplog)]
            receiver.status = 400
            seen.append(outcomes(exporter, spans, caplog))
            seen.append(outcomes(small, spans, caplog))
            seen.append(outcomes(exporter, unencodable, caplog))
            stop(exporter)
            stop(small)
            seen.append(outcomes(exporter, spans, caplog))
            return seen

        theirs = await asyncio.to_thread(run, SdkHttpSpanExporter)
        sent_by_sdk = list(receiver.bodies)
        receiver.bodies.clear()
        ours = await asyncio.to_thread(run, HttpSpanExporter)
    assert ours == theirs
    assert [result for result, _ in ours] == [SpanExportResult.SUCCESS] + [
        SpanExportResult.FAILURE
    ] * 4
    assert all(logs for _, logs in ours[1:])  # each failure was reported
    assert receiver.bodies == sent_by_sdk == [sdk_bytes(spans)] * 2
