"""OpenTelemetry providers from the `telemetry` section and the standard `OTEL_*` environment.

The environment wins where set (`OTEL_SERVICE_NAME`, `OTEL_RESOURCE_ATTRIBUTES`,
`OTEL_EXPORTER_OTLP_ENDPOINT`, `OTEL_EXPORTER_OTLP_PROTOCOL`, `OTEL_TRACES_SAMPLER(_ARG)`,
`OTEL_SDK_DISABLED`). Providers are private to one Telemetry (never the global ones),
so a process can build several (tests) and shut each down.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import MetricReader, PeriodicExportingMetricReader
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import (
    BatchSpanProcessor,
    SimpleSpanProcessor,
    SpanExporter,
)
from opentelemetry.sdk.trace.sampling import (
    ALWAYS_OFF,
    ALWAYS_ON,
    ParentBased,
    Sampler,
    TraceIdRatioBased,
)
from prometheus_client import CollectorRegistry

from sidecar.config import TelemetryConfig


def env_flag(env: Mapping[str, str], name: str) -> bool:
    return env.get(name, "").strip().lower() == "true"


def resource_of(config: TelemetryConfig, env: Mapping[str, str]) -> Resource:
    """Config attributes, then `OTEL_RESOURCE_ATTRIBUTES`, then `OTEL_SERVICE_NAME` win."""
    attributes: dict[str, str] = {"service.name": config.service_name, **config.resource_attributes}
    for pair in env.get("OTEL_RESOURCE_ATTRIBUTES", "").split(","):
        key, sep, value = pair.partition("=")
        if sep and key.strip():
            attributes[key.strip()] = value.strip()
    if env.get("OTEL_SERVICE_NAME"):
        attributes["service.name"] = env["OTEL_SERVICE_NAME"]
    return Resource.create(attributes)


def sampler_of(env: Mapping[str, str]) -> Sampler:
    """The sampler `OTEL_TRACES_SAMPLER` names (default: parent-based always-on)."""
    name = env.get("OTEL_TRACES_SAMPLER", "parentbased_always_on").strip().lower()
    try:
        ratio = float(env.get("OTEL_TRACES_SAMPLER_ARG", "1.0"))
    except ValueError:
        ratio = 1.0
    samplers: dict[str, Sampler] = {
        "always_on": ALWAYS_ON,
        "always_off": ALWAYS_OFF,
        "traceidratio": TraceIdRatioBased(ratio),
        "parentbased_always_on": ParentBased(ALWAYS_ON),
        "parentbased_always_off": ParentBased(ALWAYS_OFF),
        "parentbased_traceidratio": ParentBased(TraceIdRatioBased(ratio)),
    }
    return samplers.get(name, ParentBased(ALWAYS_ON))


@dataclass
class Providers:
    tracer_provider: TracerProvider
    meter_provider: MeterProvider
    registry: CollectorRegistry
    readers: list[MetricReader] = field(default_factory=list)


def _otlp(config: TelemetryConfig, env: Mapping[str, str]) -> tuple[str | None, str]:
    endpoint = env.get("OTEL_EXPORTER_OTLP_ENDPOINT") or config.otlp_endpoint
    protocol = env.get("OTEL_EXPORTER_OTLP_PROTOCOL") or config.otlp_protocol
    return (endpoint.rstrip("/") if endpoint else None), protocol


def build_providers(
    config: TelemetryConfig,
    env: Mapping[str, str],
    span_exporter: SpanExporter | None,
    metric_reader: MetricReader | None,
) -> Providers:
    """Tracer and meter providers with the configured exporters and readers."""
    resource = resource_of(config, env)
    tracer_provider = TracerProvider(resource=resource, sampler=sampler_of(env))
    endpoint, protocol = _otlp(config, env)
    readers: list[MetricReader] = []
    registry = CollectorRegistry(auto_describe=True)
    if config.prometheus:
        from opentelemetry.exporter.prometheus import PrometheusMetricReader

        readers.append(PrometheusMetricReader(registry=registry))
    if span_exporter is not None:
        tracer_provider.add_span_processor(SimpleSpanProcessor(span_exporter))
    if metric_reader is not None:
        readers.append(metric_reader)
    if endpoint is not None:
        if protocol == "grpc":
            from opentelemetry.exporter.otlp.proto.grpc.metric_exporter import (
                OTLPMetricExporter as GrpcMetricExporter,
            )
            from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import (
                OTLPSpanExporter as GrpcSpanExporter,
            )

            tracer_provider.add_span_processor(
                BatchSpanProcessor(GrpcSpanExporter(endpoint=endpoint))
            )
            readers.append(PeriodicExportingMetricReader(GrpcMetricExporter(endpoint=endpoint)))
        else:
            from opentelemetry.exporter.otlp.proto.http.metric_exporter import (
                OTLPMetricExporter as HttpMetricExporter,
            )
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import (
                OTLPSpanExporter as HttpSpanExporter,
            )

            tracer_provider.add_span_processor(
                BatchSpanProcessor(HttpSpanExporter(endpoint=endpoint + "/v1/traces"))
            )
            readers.append(
                PeriodicExportingMetricReader(HttpMetricExporter(endpoint=endpoint + "/v1/metrics"))
            )
    meter_provider = MeterProvider(resource=resource, metric_readers=readers)
    return Providers(tracer_provider, meter_provider, registry, readers)
