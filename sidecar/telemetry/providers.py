"""OpenTelemetry providers from the `telemetry` section and the standard `OTEL_*` environment.

The environment wins where set (`OTEL_SERVICE_NAME`, `OTEL_RESOURCE_ATTRIBUTES`,
`OTEL_EXPORTER_OTLP_ENDPOINT` and its `_TRACES_`/`_METRICS_` variants,
`OTEL_EXPORTER_OTLP_PROTOCOL`, `OTEL_TRACES_SAMPLER(_ARG)`, `OTEL_TRACES_EXPORTER` /
`OTEL_METRICS_EXPORTER` = `none`, `OTEL_SDK_DISABLED`). Providers are private to one
Telemetry (never the global ones), so a process can build several (tests) and shut
each down.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from opentelemetry.sdk.metrics import (
    AlwaysOffExemplarFilter,
    AlwaysOnExemplarFilter,
    ExemplarFilter,
    MeterProvider,
    TraceBasedExemplarFilter,
)
from opentelemetry.sdk.metrics.export import MetricReader, PeriodicExportingMetricReader
from opentelemetry.sdk.resources import (
    TELEMETRY_SDK_LANGUAGE,
    TELEMETRY_SDK_NAME,
    TELEMETRY_SDK_VERSION,
    Resource,
)
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
from opentelemetry.sdk.version import __version__ as sdk_version
from prometheus_client import CollectorRegistry

from sidecar.config import TelemetryConfig


def env_flag(env: Mapping[str, str], name: str) -> bool:
    return env.get(name, "").strip().lower() == "true"


def resource_of(config: TelemetryConfig, env: Mapping[str, str]) -> Resource:
    """Config attributes, then `OTEL_RESOURCE_ATTRIBUTES`, then `OTEL_SERVICE_NAME` win."""
    attributes: dict[str, str] = {
        TELEMETRY_SDK_LANGUAGE: "python",
        TELEMETRY_SDK_NAME: "opentelemetry",
        TELEMETRY_SDK_VERSION: sdk_version,
        "service.name": config.service_name,
        **config.resource_attributes,
    }
    for pair in env.get("OTEL_RESOURCE_ATTRIBUTES", "").split(","):
        key, sep, value = pair.partition("=")
        if sep and key.strip():
            attributes[key.strip()] = value.strip()
    if env.get("OTEL_SERVICE_NAME"):
        attributes["service.name"] = env["OTEL_SERVICE_NAME"]
    # Not Resource.create: it reads os.environ itself, and `env` is the one source here.
    return Resource(attributes)


def sampler_of(env: Mapping[str, str]) -> Sampler:
    """The sampler `OTEL_TRACES_SAMPLER` names (default: parent-based always-on)."""
    name = env.get("OTEL_TRACES_SAMPLER", "parentbased_always_on").strip().lower()
    try:
        ratio = min(max(float(env.get("OTEL_TRACES_SAMPLER_ARG", "1.0")), 0.0), 1.0)
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


def exemplar_filter_of(env: Mapping[str, str]) -> ExemplarFilter:
    """`OTEL_METRICS_EXEMPLAR_FILTER` when set, else `always_off`.

    The SDK's default, `trace_based`, samples only measurements made while a sampled
    span is current, and the sidecar never makes its spans current (it parents them
    explicitly): it would never keep an exemplar, yet costs a context lookup on every
    measurement.
    """
    name = env.get("OTEL_METRICS_EXEMPLAR_FILTER", "").strip().lower()
    if name == "trace_based":
        return TraceBasedExemplarFilter()
    if name == "always_on":
        return AlwaysOnExemplarFilter()
    return AlwaysOffExemplarFilter()


@dataclass(frozen=True, slots=True)
class OtlpTarget:
    """Where OTLP export goes: full per-signal URLs (HTTP) or endpoints (gRPC); None = off."""

    protocol: str
    traces: str | None
    metrics: str | None


def otlp_target(config: TelemetryConfig, env: Mapping[str, str]) -> OtlpTarget:
    """The OTLP endpoints from config and env (env wins), as the OTLP exporter spec joins them."""
    protocol = (env.get("OTEL_EXPORTER_OTLP_PROTOCOL") or config.otlp_protocol).strip()
    configured = str(config.otlp_endpoint) if config.otlp_endpoint is not None else None
    base = (env.get("OTEL_EXPORTER_OTLP_ENDPOINT") or configured or "").strip().rstrip("/")
    grpc = protocol == "grpc"

    def signal(name: str, path: str) -> str | None:
        if env.get(f"OTEL_{name}_EXPORTER", "").strip().lower() == "none":
            return None
        specific = env.get(f"OTEL_EXPORTER_OTLP_{name}_ENDPOINT", "").strip()
        if specific:
            return specific  # used as is, per the OTLP exporter spec
        if not base:
            return None
        return base if grpc else f"{base}/{path}"

    return OtlpTarget(protocol, signal("TRACES", "v1/traces"), signal("METRICS", "v1/metrics"))


@dataclass
class Providers:
    tracer_provider: TracerProvider
    meter_provider: MeterProvider
    registry: CollectorRegistry
    readers: list[MetricReader] = field(default_factory=list)


def _span_exporter(target: OtlpTarget, endpoint: str) -> SpanExporter:
    if target.protocol == "grpc":
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import (
            OTLPSpanExporter as GrpcSpanExporter,
        )

        return GrpcSpanExporter(endpoint=endpoint)
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import (
        OTLPSpanExporter as HttpSpanExporter,
    )

    return HttpSpanExporter(endpoint=endpoint)


def _metric_reader(target: OtlpTarget, endpoint: str) -> MetricReader:
    if target.protocol == "grpc":
        from opentelemetry.exporter.otlp.proto.grpc.metric_exporter import (
            OTLPMetricExporter as GrpcMetricExporter,
        )

        return PeriodicExportingMetricReader(GrpcMetricExporter(endpoint=endpoint))
    from opentelemetry.exporter.otlp.proto.http.metric_exporter import (
        OTLPMetricExporter as HttpMetricExporter,
    )

    return PeriodicExportingMetricReader(HttpMetricExporter(endpoint=endpoint))


def build_providers(
    config: TelemetryConfig,
    env: Mapping[str, str],
    span_exporter: SpanExporter | None,
    metric_reader: MetricReader | None,
) -> Providers | None:
    """Tracer and meter providers with the configured exporters; None when nothing exports."""
    target = otlp_target(config, env)
    exporting = config.prometheus or target.traces or target.metrics
    if not exporting and span_exporter is None and metric_reader is None:
        return None  # no-op providers: telemetry off costs nothing (logs still flow)
    resource = resource_of(config, env)
    tracer_provider = TracerProvider(resource=resource, sampler=sampler_of(env))
    readers: list[MetricReader] = []
    registry = CollectorRegistry(auto_describe=True)
    if config.prometheus:
        from opentelemetry.exporter.prometheus import PrometheusMetricReader

        readers.append(PrometheusMetricReader(registry=registry))
    if span_exporter is not None:
        tracer_provider.add_span_processor(SimpleSpanProcessor(span_exporter))
    if metric_reader is not None:
        readers.append(metric_reader)
    if target.traces is not None:
        tracer_provider.add_span_processor(
            BatchSpanProcessor(_span_exporter(target, target.traces))
        )
    if target.metrics is not None:
        readers.append(_metric_reader(target, target.metrics))
    meter_provider = MeterProvider(
        resource=resource, metric_readers=readers, exemplar_filter=exemplar_filter_of(env)
    )
    return Providers(tracer_provider, meter_provider, registry, readers)
