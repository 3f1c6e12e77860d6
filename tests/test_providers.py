"""The SDK providers: OTLP/HTTP export round trip (a local collector decodes what the sidecar
exported), exporter endpoints and environment, the exemplar filter, and the resource and
sampler the SDK reads from its own environment (the config fills in what it leaves)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import ssl
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import requests.utils
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import (
    ExportMetricsServiceRequest,
)
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from opentelemetry.proto.trace.v1.trace_pb2 import Span as ProtoSpan
from opentelemetry.sdk.metrics import AlwaysOffExemplarFilter
from opentelemetry.sdk.metrics.export import ConsoleMetricExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace.export import ConsoleSpanExporter
from opentelemetry.trace import SpanKind

from sidecar.config import TelemetryConfig
from sidecar.telemetry import Telemetry
from sidecar.telemetry.loop_spans import LoopSpanProcessor
from sidecar.telemetry.providers import (
    SPAN_BATCH_SIZE,
    OtlpSignal,
    SignalExport,
    StableResource,
    TelemetryEnvironmentError,
    build_providers,
    exemplar_filter_of,
    resource_of,
    signal_export,
    span_batch_size,
)
from tests.support.certs import write_self_signed
from tests.support.otel import make_otel
from tests.support.otlp import Receiver, receiving
from tests.support.sidecars import SidecarFactory, sidecar_process
from tests.support.sockets import free_port

MODEL = "claude-sonnet-5-5"
CALLER_TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
TRACEPARENT = f"00-{CALLER_TRACE}-00f067aa0ba902b7-01"


@dataclass
class Collector:
    """What a local OTLP/HTTP receiver was sent, decoded with the OTLP protobuf messages."""

    receiver: Receiver

    @property
    def url(self) -> str:
        return self.receiver.base_url

    @property
    def traces(self) -> list[ExportTraceServiceRequest]:
        return [ExportTraceServiceRequest.FromString(body) for body in self._bodies("/v1/traces")]

    @property
    def metrics(self) -> list[ExportMetricsServiceRequest]:
        return [
            ExportMetricsServiceRequest.FromString(body) for body in self._bodies("/v1/metrics")
        ]

    @property
    def content_types(self) -> set[str]:
        return {headers["Content-Type"].partition(";")[0] for headers in self.receiver.headers}

    def _bodies(self, path: str) -> list[bytes]:
        received = zip(self.receiver.paths, self.receiver.bodies, strict=True)
        return [body for sent_to, body in received if sent_to == path]

    def spans(self) -> list[tuple[dict[str, Any], ProtoSpan]]:
        """(resource attributes, span) for every exported span."""
        return [
            (attributes(resource.resource.attributes), span)
            for request in self.traces
            for resource in request.resource_spans
            for scope in resource.scope_spans
            for span in scope.spans
        ]

    def metric_names(self) -> set[str]:
        return {
            metric.name
            for request in self.metrics
            for resource in request.resource_metrics
            for scope in resource.scope_metrics
            for metric in scope.metrics
        }


def value_of(value: AnyValue) -> Any:
    kind = value.WhichOneof("value")
    if kind == "array_value":
        return tuple(value_of(item) for item in value.array_value.values)
    return getattr(value, kind) if kind else None


def attributes(pairs: Any) -> dict[str, Any]:
    return {pair.key: value_of(pair.value) for pair in pairs if isinstance(pair, KeyValue)}


@contextlib.asynccontextmanager
async def running_collector(tls: ssl.SSLContext | None = None) -> AsyncIterator[Collector]:
    """POST /v1/traces and /v1/metrics, decoded with the OTLP protobuf messages (over TLS
    with `tls`)."""
    async with receiving(tls) as receiver:
        yield Collector(receiver)


async def stream_once(url: str) -> None:
    async with (
        aiohttp.ClientSession() as http,
        http.post(
            url + "/api/stream-response",
            json={"prompt": "export me [[fake tokens=6]]"},
            headers={"traceparent": TRACEPARENT},
        ) as response,
    ):
        assert response.status == 200
        assert b'"done":true' in await response.read()


async def test_spans_and_metrics_round_trip_over_otlp_http(sidecar_for: SidecarFactory) -> None:
    async with running_collector() as collector:
        config = TelemetryConfig(
            otlp_endpoint=collector.url,
            prometheus=False,
            service_name="sidecar-under-test",
            resource_attributes={"deployment.environment": "test"},
        )
        telemetry = Telemetry.from_config(config)
        async with sidecar_for(telemetry=telemetry) as sidecar:
            await stream_once(sidecar.url)
        await telemetry.close()  # flushes the batch processor and the periodic metric reader

    assert collector.content_types == {"application/x-protobuf"}
    spans = collector.spans()
    by_kind = {span.kind: (resource, span) for resource, span in spans}
    resource, client = by_kind[ProtoSpan.SPAN_KIND_CLIENT]
    _, server = by_kind[ProtoSpan.SPAN_KIND_SERVER]
    assert resource["service.name"] == "sidecar-under-test"
    assert resource["deployment.environment"] == "test"
    assert resource["telemetry.sdk.language"] == "python"
    assert client.name == f"chat {MODEL}"
    assert client.trace_id.hex() == CALLER_TRACE
    assert client.parent_span_id == server.span_id
    assert server.parent_span_id.hex() == "00f067aa0ba902b7"
    exported = attributes(client.attributes)
    assert exported["gen_ai.provider.name"] == "anthropic"
    assert exported["gen_ai.operation.name"] == "chat"
    assert exported["gen_ai.request.model"] == MODEL
    assert exported["gen_ai.usage.output_tokens"] == 6
    assert exported["gen_ai.response.finish_reasons"] == ("end_turn",)
    assert exported["sidecar.stream.outcome"] == "completed"
    assert client.end_time_unix_nano > client.start_time_unix_nano
    assert {
        "gen_ai.client.token.usage",
        "gen_ai.client.operation.duration",
        "gen_ai.server.time_to_first_token",
        "sidecar.streams",
    } <= collector.metric_names()


async def test_env_wins_and_sidecar_shutdown_flushes(
    sidecar_for: SidecarFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The sidecar's own Telemetry (built from config + env) is flushed when it shuts down."""
    dead = f"http://127.0.0.1:{free_port()}"
    async with running_collector() as collector:
        monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", collector.url)
        monkeypatch.setenv("OTEL_SERVICE_NAME", "from-env")
        async with sidecar_for({"telemetry": {"otlp_endpoint": dead}}) as sidecar:
            await stream_once(sidecar.url)
    spans = collector.spans()
    assert {resource["service.name"] for resource, _ in spans} == {"from-env"}
    assert f"chat {MODEL}" in {span.name for _, span in spans}


async def test_a_collector_with_a_private_ca_gets_spans_and_metrics(
    sidecar_for: SidecarFactory, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """`OTEL_EXPORTER_OTLP_CERTIFICATE` is the CA both exporters trust, even where
    `REQUESTS_CA_BUNDLE` names the system's bundle (which `requests` alone would use)."""
    write_self_signed(tmp_path / "collector.pem", tmp_path / "collector.key")
    tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    tls.load_cert_chain(tmp_path / "collector.pem", tmp_path / "collector.key")
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", requests.utils.DEFAULT_CA_BUNDLE_PATH)
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_CERTIFICATE", str(tmp_path / "collector.pem"))
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_TIMEOUT", "2")
    async with running_collector(tls) as collector:
        monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", collector.url)
        async with sidecar_for({"telemetry": {"prometheus": False}}) as sidecar:
            await stream_once(sidecar.url)
    assert f"chat {MODEL}" in {span.name for _, span in collector.spans()}
    assert "gen_ai.client.operation.duration" in collector.metric_names()


def test_otlp_endpoints_follow_the_exporter_spec(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.startswith("OTEL_"):
            monkeypatch.delenv(name)
    config = TelemetryConfig(otlp_endpoint="http://collector:4318/")
    assert signal_export(config, "TRACES").otlp == OtlpSignal(
        "http/protobuf", "http://collector:4318/v1/traces"
    )
    assert signal_export(config, "METRICS").otlp == OtlpSignal(
        "http/protobuf", "http://collector:4318/v1/metrics"
    )
    assert signal_export(TelemetryConfig(), "TRACES").otlp is None
    # An endpoint in the environment wins: the exporter reads it (and joins the paths) itself.
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc")
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "http://other:4317")
    assert signal_export(config, "TRACES").otlp == OtlpSignal("grpc", None)
    assert signal_export(TelemetryConfig(), "METRICS").otlp == OtlpSignal("grpc", None)
    monkeypatch.setenv("OTEL_METRICS_EXPORTER", "none")
    assert signal_export(config, "METRICS").otlp is None
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "http/protobuf")
    assert signal_export(config, "TRACES").otlp == OtlpSignal("http/protobuf", None)


def test_nothing_to_export_means_no_sdk_work(monkeypatch: pytest.MonkeyPatch) -> None:
    off = Telemetry.from_config(TelemetryConfig(prometheus=False))
    assert not off.enabled
    on = Telemetry.from_config(TelemetryConfig(prometheus=True))
    assert on.enabled
    monkeypatch.setenv("OTEL_SDK_DISABLED", "TRUE")
    disabled = Telemetry.from_config(TelemetryConfig())
    assert not disabled.enabled
    on.shutdown()


def test_exemplar_filter_defaults_to_off_and_follows_the_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("OTEL_METRICS_EXEMPLAR_FILTER", raising=False)
    assert isinstance(exemplar_filter_of(), AlwaysOffExemplarFilter)
    for name in ("trace_based", "always_on", "always_off"):
        monkeypatch.setenv("OTEL_METRICS_EXEMPLAR_FILTER", name)
        assert exemplar_filter_of() is None  # the SDK reads the variable itself
    # A value the SDK does not know would stop it with a traceback: ignored instead.
    monkeypatch.setenv("OTEL_METRICS_EXEMPLAR_FILTER", "bogus")
    assert isinstance(exemplar_filter_of(), AlwaysOffExemplarFilter)
    providers = build_providers(TelemetryConfig(), None, None)
    assert providers is not None
    providers.meter_provider.shutdown()


# --------------------------------------------------------------------------- the SDK's environment


@pytest.fixture
def clean_otel_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("OTEL_SERVICE_NAME", "OTEL_RESOURCE_ATTRIBUTES", "OTEL_TRACES_SAMPLER",
                 "OTEL_TRACES_SAMPLER_ARG", "OTEL_EXPERIMENTAL_RESOURCE_DETECTORS"):  # fmt: skip
        monkeypatch.delenv(name, raising=False)


def test_config_resource_when_the_environment_says_nothing(clean_otel_env: None) -> None:
    config = TelemetryConfig(service_name="shop", resource_attributes={"team": "payments"})
    attributes = resource_of(config).attributes
    assert attributes["service.name"] == "shop"
    assert attributes["team"] == "payments"
    assert attributes["telemetry.sdk.language"] == "python"  # the SDK's own attributes


def test_resource_attributes_are_percent_decoded_as_the_sdk_does(
    clean_otel_env: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    encoded = "deployment.environment=prod%20eu,team=a%2Cb,url=https%3A%2F%2Fshop.example"
    monkeypatch.setenv("OTEL_RESOURCE_ATTRIBUTES", encoded)
    attributes = resource_of(TelemetryConfig(resource_attributes={"team": "config"})).attributes
    assert attributes["deployment.environment"] == "prod eu"
    assert attributes["team"] == "a,b"  # the environment wins over the config
    assert attributes["url"] == "https://shop.example"
    sdk = Resource.create().attributes  # what the SDK itself makes of the same variable
    for key in ("deployment.environment", "team", "url"):
        assert attributes[key] == sdk[key]


def test_service_name_from_the_environment_wins(
    clean_otel_env: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OTEL_SERVICE_NAME", "from-env")
    monkeypatch.setenv("OTEL_RESOURCE_ATTRIBUTES", "service.name=from-attributes")
    assert resource_of(TelemetryConfig(service_name="config")).attributes["service.name"] == (
        "from-env"
    )


def test_sampler_is_the_sdks_reading_of_the_environment(
    clean_otel_env: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OTEL_TRACES_SAMPLER", "traceidratio")
    monkeypatch.setenv("OTEL_TRACES_SAMPLER_ARG", "0.25")
    providers = build_providers(TelemetryConfig(), None, None)
    assert providers is not None
    assert providers.tracer_provider.sampler.get_description() == "TraceIdRatioBased{0.25}"


def test_spans_carry_the_environments_resource(
    clean_otel_env: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OTEL_RESOURCE_ATTRIBUTES", "k8s.pod.name=shop-0,note=a%3Db")
    otel = make_otel(service_name="shop")
    parent = otel.telemetry.extract({})
    server = otel.telemetry.start_server_span(
        parent, method="GET", route="/", path="/", scheme="http"
    )
    otel.telemetry.end_server_span(server, 200)
    (ended,) = otel.spans(SpanKind.SERVER)
    assert ended.resource.attributes["k8s.pod.name"] == "shop-0"
    assert ended.resource.attributes["note"] == "a=b"
    assert ended.resource.attributes["service.name"] == "shop"


async def test_latest_genai_names_go_over_otlp_too(
    sidecar_for: SidecarFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OTEL_SEMCONV_STABILITY_OPT_IN", "gen_ai_latest_experimental")
    async with running_collector() as collector:
        config = TelemetryConfig(otlp_endpoint=collector.url, prometheus=False)
        telemetry = Telemetry.from_config(config)
        async with sidecar_for(telemetry=telemetry) as sidecar:
            await stream_once(sidecar.url)
        await telemetry.close()
    names = collector.metric_names()
    assert {
        "gen_ai.client.inference.duration",
        "gen_ai.client.inference.time_to_first_chunk",
        "gen_ai.client.inference.usage.output_tokens",
        "gen_ai.server.time_to_first_token",
    } <= names
    assert not {n for n in names if n.startswith("gen_ai.client.operation.")}
    assert "gen_ai.client.token.usage" not in names
    (client,) = [span for _, span in collector.spans() if span.kind == ProtoSpan.SPAN_KIND_CLIENT]
    assert "gen_ai.usage.cache_write.input_tokens" in attributes(client.attributes)


async def _spans_per_export(collector: Collector, spans: int) -> list[int]:
    """End `spans` spans on the providers the config builds; the spans in each OTLP request."""
    providers = build_providers(
        TelemetryConfig(otlp_endpoint=collector.url, prometheus=False), None, None
    )
    assert providers is not None
    tracer = providers.tracer_provider.get_tracer("batching")
    for n in range(spans):
        tracer.start_span(f"span {n}").end()
    # The collector answers on this loop: the last export is waited for off the loop.
    await asyncio.to_thread(providers.tracer_provider.shutdown)
    await asyncio.to_thread(providers.meter_provider.shutdown)
    return [
        sum(
            len(scope.spans)
            for resource in request.resource_spans
            for scope in resource.scope_spans
        )
        for request in collector.traces
    ]


@pytest.mark.parametrize(
    ("env", "largest"),
    [
        ({}, 512),  # the SDK's default: OTLP/HTTP spans are encoded on the loop as they end
        ({"OTEL_BSP_MAX_EXPORT_BATCH_SIZE": "50"}, 50),  # the SDK reads the user's value
        ({"OTEL_BSP_MAX_QUEUE_SIZE": "1000"}, 512),  # and its own default with their queue
    ],
)
async def test_span_batches_are_the_sdks_and_otel_bsp_is_read(
    monkeypatch: pytest.MonkeyPatch, env: dict[str, str], largest: int
) -> None:
    for name in list(os.environ):
        if name.startswith("OTEL_"):
            monkeypatch.delenv(name)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    # gRPC's batches, encoded on the SDK processor's thread, are smaller by default.
    assert span_batch_size() == (None if env else SPAN_BATCH_SIZE)
    async with running_collector() as collector:
        sizes = await _spans_per_export(collector, 600)
    assert sum(sizes) == 600
    assert max(sizes) == largest


def test_the_resource_hashes_as_the_sdks_and_equals_it() -> None:
    """The resource keeps the SDK's hash and equality, computed once (spans are grouped by it)."""
    config = TelemetryConfig(service_name="svc", resource_attributes={"team": "a", "n": "1"})
    resource = resource_of(config)
    plain = Resource(resource.attributes, resource.schema_url)
    assert isinstance(resource, StableResource)
    assert hash(resource) == hash(plain)
    assert resource == plain
    assert {plain: 1}[resource] == 1
    assert resource.merge(Resource({"extra": "x"})).attributes["extra"] == "x"


@pytest.mark.parametrize(("env", "seconds"), [(None, 5.0), ("3000", 3.0), ("60000", 60.0)])
def test_last_span_exports_fit_in_a_runtimes_close_unless_otel_bsp_says(
    monkeypatch: pytest.MonkeyPatch, env: str | None, seconds: float
) -> None:
    """A stopping sidecar gives its last exports 5 s (a runtime has 8 s to close)."""
    for name in list(os.environ):
        if name.startswith("OTEL_"):
            monkeypatch.delenv(name)
    if env is not None:
        monkeypatch.setenv("OTEL_BSP_EXPORT_TIMEOUT", env)
    providers = build_providers(
        TelemetryConfig(otlp_endpoint="http://127.0.0.1:9", prometheus=False), None, None
    )
    assert providers is not None
    (processor,) = providers.span_processors
    assert isinstance(processor, LoopSpanProcessor)
    assert processor.export_timeout == seconds
    providers.tracer_provider.shutdown()
    providers.meter_provider.shutdown()


# --------------------------------------------------------------------------- OTEL_*_EXPORTER


@pytest.fixture
def no_otel_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.startswith("OTEL_"):
            monkeypatch.delenv(name)


def test_exporter_lists_are_read_as_the_sdk_reads_them(
    no_otel_env: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = TelemetryConfig(otlp_endpoint="http://collector:4318")
    http = OtlpSignal("http/protobuf", "http://collector:4318/v1/traces")
    # Unset: OTLP where an endpoint is configured; `none` in any case: nothing.
    assert signal_export(config, "TRACES") == SignalExport(http)
    monkeypatch.setenv("OTEL_TRACES_EXPORTER", " None ")
    assert signal_export(config, "TRACES") == SignalExport()
    # `console` alone: the SDK's console exporter, and no OTLP although an endpoint is set.
    monkeypatch.setenv("OTEL_TRACES_EXPORTER", "console")
    assert signal_export(config, "TRACES") == SignalExport(None, (ConsoleSpanExporter,))
    monkeypatch.setenv("OTEL_TRACES_EXPORTER", "otlp, console,console")
    assert signal_export(config, "TRACES") == SignalExport(http, (ConsoleSpanExporter,))
    monkeypatch.setenv("OTEL_METRICS_EXPORTER", "console")
    assert signal_export(config, "METRICS") == SignalExport(None, (ConsoleMetricExporter,))
    # A protocol by name wins over the protocol variables (with the SDK's warning).
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf")
    monkeypatch.setenv("OTEL_TRACES_EXPORTER", "otlp_proto_grpc")
    assert signal_export(config, "TRACES").otlp == OtlpSignal("grpc", "http://collector:4318")
    # `otlp` named with no endpoint anywhere: the exporter's own default, as in the SDK.
    monkeypatch.setenv("OTEL_TRACES_EXPORTER", "otlp")
    assert signal_export(TelemetryConfig(), "TRACES").otlp == OtlpSignal("http/protobuf", None)
    monkeypatch.delenv("OTEL_TRACES_EXPORTER")
    assert signal_export(TelemetryConfig(), "TRACES").otlp is None
    # A protocol the SDK does not know is refused where OTLP would export, not elsewhere.
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_PROTOCOL", "http/json")
    assert signal_export(TelemetryConfig(), "TRACES") == SignalExport()
    with pytest.raises(TelemetryEnvironmentError, match="http/json"):
        signal_export(config, "TRACES")


@pytest.mark.parametrize(
    ("variable", "value", "problem"),
    [
        ("OTEL_TRACES_EXPORTER", "zipkin", "'zipkin' not found"),
        ("OTEL_METRICS_EXPORTER", "otlp,statsd", "'statsd' not found"),
        ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/json", "Unsupported OTLP protocol 'http/json'"),
        ("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "GRPC", "Unsupported OTLP protocol 'GRPC'"),
        ("OTEL_BSP_SCHEDULE_DELAY", "0", "schedule_delay_millis must be positive"),
        ("OTEL_BSP_MAX_QUEUE_SIZE", "100", "less than or equal to max_queue_size"),
    ],
)
def test_a_value_the_sdk_refuses_is_a_telemetry_environment_error(
    no_otel_env: None, monkeypatch: pytest.MonkeyPatch, variable: str, value: str, problem: str
) -> None:
    monkeypatch.setenv(variable, value)
    with pytest.raises(TelemetryEnvironmentError, match=problem):
        build_providers(TelemetryConfig(otlp_endpoint="http://127.0.0.1:9"), None, None)


async def test_console_exporters_write_spans_and_metrics_to_stdout(
    no_otel_env: None, tmp_path: Path
) -> None:
    """A real `sidecar run` with `OTEL_*_EXPORTER=console`: the SDK's console exporters'
    JSON on stdout, and nothing over OTLP although an endpoint is configured."""
    async with running_collector() as collector:
        data = {
            "claude": {"base_url": "builtin:fake"},
            "telemetry": {"otlp_endpoint": collector.url},
        }
        env = {"OTEL_TRACES_EXPORTER": "console", "OTEL_METRICS_EXPORTER": "console"}
        async with sidecar_process(data, tmp_path, env, stdout=True) as sidecar:
            await stream_once(sidecar.url)
            sidecar.process.send_signal(signal.SIGTERM)
            assert await asyncio.to_thread(sidecar.process.wait, 30) == 0
        out = sidecar.stdout()
    assert f'"name": "chat {MODEL}"' in out  # the SDK's console span exporter's JSON
    assert '"name": "gen_ai.client.operation.duration"' in out  # and its metric exporter's
    assert not collector.traces
    assert not collector.metrics
