"""OpenTelemetry providers from the `telemetry` section and the SDK's own `OTEL_*` handling.

The SDK reads its environment itself: the resource (`OTEL_SERVICE_NAME`,
`OTEL_RESOURCE_ATTRIBUTES`, percent-decoded, and any `OTEL_EXPERIMENTAL_RESOURCE_DETECTORS`),
the sampler (`OTEL_TRACES_SAMPLER(_ARG)`), the exemplar filter when set, and the
OTLP exporters' endpoints, headers, timeouts and TLS (`OTEL_EXPORTER_OTLP_*`).
The sidecar only decides what the SDK cannot know: that the environment wins over
the config's `service_name`, `resource_attributes` and `otlp_endpoint`; which
exporters to build (`OTEL_TRACES_EXPORTER` / `OTEL_METRICS_EXPORTER` read as the SDK's
configuration reads them, its exporters by name; the protocol); and the exemplar
filter's default. A value the SDK refuses is a `TelemetryEnvironmentError`. Providers are private to one Telemetry
(never the global ones), so a process can build several (tests) and shut each down.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from typing import Any, Final

from opentelemetry.sdk.environment_variables import (
    OTEL_BSP_EXPORT_TIMEOUT,
    OTEL_BSP_MAX_EXPORT_BATCH_SIZE,
    OTEL_BSP_MAX_QUEUE_SIZE,
    OTEL_EXPORTER_OTLP_ENDPOINT,
    OTEL_EXPORTER_OTLP_METRICS_ENDPOINT,
    OTEL_EXPORTER_OTLP_METRICS_PROTOCOL,
    OTEL_EXPORTER_OTLP_PROTOCOL,
    OTEL_EXPORTER_OTLP_TRACES_ENDPOINT,
    OTEL_EXPORTER_OTLP_TRACES_PROTOCOL,
    OTEL_METRICS_EXEMPLAR_FILTER,
    OTEL_SDK_DISABLED,
)
from opentelemetry.sdk.metrics import AlwaysOffExemplarFilter, ExemplarFilter, MeterProvider
from opentelemetry.sdk.metrics.export import MetricReader, PeriodicExportingMetricReader
from opentelemetry.sdk.resources import SERVICE_NAME, OTELResourceDetector, Resource
from opentelemetry.sdk.trace import SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import (
    BatchSpanProcessor,
    SimpleSpanProcessor,
    SpanExporter,
)
from prometheus_client import CollectorRegistry

from sidecar.config import TelemetryConfig
from sidecar.telemetry.meters import SidecarMeterProvider

_SIGNAL_PATHS: Final = {"TRACES": "v1/traces", "METRICS": "v1/metrics"}
_EXEMPLAR_FILTERS: Final = frozenset({"trace_based", "always_on", "always_off"})
SPAN_BATCH_SIZE: Final = 128
# How long a stopping sidecar gives its last span exports, unless OTEL_BSP_EXPORT_TIMEOUT
# says: the SDK's 30 s would outlast a pod's default grace against a collector that is
# down. At exit they also end by the shutdown's deadline, when sooner (`closing`).
SPAN_EXPORT_TIMEOUT_MS: Final = 5000
log = logging.getLogger("sidecar.telemetry")


def sdk_disabled() -> bool:
    """`OTEL_SDK_DISABLED=true`: no providers at all (the SDK's own reading of the flag)."""
    return os.environ.get(OTEL_SDK_DISABLED, "").strip().lower() == "true"


class StableResource(Resource):
    """A `Resource` that computes its hash once.

    A resource is immutable, yet the SDK's hash serialises every attribute to JSON each
    time, and the OTLP span encoder hashes the resource of every span it encodes (it
    groups spans by resource): once per span, on the exporter thread, holding the GIL.
    Equality and everything else are the SDK's.
    """

    def __init__(self, resource: Resource) -> None:
        super().__init__(resource.attributes, resource.schema_url)
        self._hash = super().__hash__()

    def __hash__(self) -> int:
        return self._hash


def resource_of(config: TelemetryConfig) -> Resource:
    """The SDK's resource over the config's attributes: `OTEL_*` wins where set.

    `Resource.create` adds the SDK's own attributes, the configured detectors and the
    environment, with the config on top; the environment detector is merged once more
    so that it, not the config, has the last word (as documented).
    """
    configured = {SERVICE_NAME: config.service_name, **config.resource_attributes}
    return StableResource(Resource.create(configured).merge(OTELResourceDetector().detect()))


def exemplar_filter_of() -> ExemplarFilter | None:
    """None (the SDK reads `OTEL_METRICS_EXEMPLAR_FILTER`) when set, else `always_off`.

    The SDK's default, `trace_based`, samples only measurements made while a sampled
    span is current, and the sidecar never makes its spans current (it parents them
    explicitly): it would never keep an exemplar, yet costs a context lookup on every
    measurement. A value the SDK does not know would stop it with a traceback: that
    one is logged and ignored.
    """
    value = os.environ.get(OTEL_METRICS_EXEMPLAR_FILTER)
    if value in _EXEMPLAR_FILTERS:
        return None
    if value:
        log.warning("unknown OTEL_METRICS_EXEMPLAR_FILTER ignored", extra={"value": value[:64]})
    return AlwaysOffExemplarFilter()


def span_batch_size() -> int | None:
    """Spans per OTLP/gRPC export: None (the SDK reads `OTEL_BSP_*`) when either is set, else 128.

    Over gRPC the SDK's batch span processor encodes each batch in its own thread,
    holding the GIL the event loop needs, and the loop waits for it until the encoding
    ends or the switch interval (5 ms) passes: 128 spans take ~1.2 ms of encoding
    (`span_encoder`), the SDK's 512 ~5 ms, a stall of the switch interval for any call
    starting meanwhile. (Over OTLP/HTTP each span is encoded on the loop as it ends and
    a batch is only joined, `loop_spans`, with the SDK's default size.) A queue size
    set alone leaves the SDK's own default, which it checks against that queue.
    """
    env = os.environ
    if (
        env.get(OTEL_BSP_MAX_EXPORT_BATCH_SIZE, "").strip()
        or env.get(OTEL_BSP_MAX_QUEUE_SIZE, "").strip()
    ):
        return None
    return SPAN_BATCH_SIZE


class TelemetryEnvironmentError(ValueError):
    """An `OTEL_*` variable the SDK refuses (it would stop the program): a startup error."""


# The SDK's OTLP exporter names, and the protocol each one means (None: the protocol variables').
_OTLP_EXPORTERS: Final[dict[str, str | None]] = {
    "otlp": None,
    "otlp_proto_http": "http/protobuf",
    "otlp_proto_grpc": "grpc",
}
_PROTOCOLS: Final = frozenset({"http/protobuf", "grpc"})


@dataclass(frozen=True, slots=True)
class OtlpSignal:
    """OTLP export of one signal: `endpoint` None lets the exporter read `OTEL_EXPORTER_OTLP_*`."""

    protocol: str
    endpoint: str | None


@dataclass(frozen=True, slots=True)
class SignalExport:
    """How one signal is exported: over OTLP (the sidecar's exporters) and by the SDK's
    other exporters named in `OTEL_{signal}_EXPORTER` (`console`, a vendor's), by class."""

    otlp: OtlpSignal | None = None
    others: tuple[type[Any], ...] = ()


def exporter_names(signal: str) -> list[str] | None:
    """`OTEL_{signal}_EXPORTER` as the SDK splits it (`none`: []); None when unset."""
    names = os.environ.get(f"OTEL_{signal}_EXPORTER")
    if not names or not names.strip():
        return None
    if names.lower().strip() == "none":
        return []
    return [name.strip() for name in names.split(",")]


def _protocol(config: TelemetryConfig, signal: str, named: str | None) -> str:
    """The OTLP protocol of `signal`: the exporter's name, else the protocol variables (the
    signal's, then the generic one), else the config; refused as the SDK refuses it."""
    env = os.environ
    specific = (
        OTEL_EXPORTER_OTLP_TRACES_PROTOCOL if signal == "TRACES"
        else OTEL_EXPORTER_OTLP_METRICS_PROTOCOL
    )  # fmt: skip
    variable = (env.get(specific) or env.get(OTEL_EXPORTER_OTLP_PROTOCOL) or "").strip()
    if named is not None:
        if variable in _PROTOCOLS and variable != named:  # the SDK's warning, its choice
            log.warning(
                "Conflicting values for %s OTLP exporter protocol, using '%s'",
                signal.lower(), _SDK_NAMES[named],
            )  # fmt: skip
        return named
    protocol = variable or config.otlp_protocol
    if protocol not in _PROTOCOLS:
        raise TelemetryEnvironmentError(
            f"Unsupported OTLP protocol '{protocol[:64]}' is configured"
        )
    return protocol


# The exporter name of each protocol, as the SDK's warning names it.
_SDK_NAMES: Final = {protocol: name for name, protocol in _OTLP_EXPORTERS.items() if protocol}


def _environment_endpoint(signal: str) -> bool:
    """Whether `OTEL_EXPORTER_OTLP_ENDPOINT` or the signal's own endpoint variable is set."""
    env = os.environ
    specific_endpoint = (
        OTEL_EXPORTER_OTLP_TRACES_ENDPOINT if signal == "TRACES"
        else OTEL_EXPORTER_OTLP_METRICS_ENDPOINT
    )  # fmt: skip
    return bool(
        env.get(specific_endpoint, "").strip() or env.get(OTEL_EXPORTER_OTLP_ENDPOINT, "").strip()
    )


def _endpoint_set(config: TelemetryConfig, signal: str) -> bool:
    return config.otlp_endpoint is not None or _environment_endpoint(signal)


def _otlp_target(
    config: TelemetryConfig, signal: str, protocol: str, named: bool
) -> OtlpSignal | None:
    """Where `signal` goes over OTLP: the environment's endpoint (read by the exporter), else
    the config's; with neither, the SDK's default endpoint when an OTLP exporter is named,
    else nowhere."""
    if _environment_endpoint(signal):
        return OtlpSignal(protocol, None)  # the exporter joins the spec's paths itself
    if config.otlp_endpoint is None:
        return OtlpSignal(protocol, None) if named else None
    base = str(config.otlp_endpoint).rstrip("/")
    return OtlpSignal(protocol, base if protocol == "grpc" else f"{base}/{_SIGNAL_PATHS[signal]}")


def signal_export(config: TelemetryConfig, signal: str) -> SignalExport:
    """How `signal` (`TRACES` / `METRICS`) is exported, from `OTEL_{signal}_EXPORTER`.

    Unset: over OTLP where an endpoint is configured. Else the SDK's reading: `none`, or
    a list of exporter names; `otlp` (the protocol variables' protocol, else the config's),
    `otlp_proto_http` and `otlp_proto_grpc` are the sidecar's OTLP exporters, any other
    name the SDK's exporter of that name (its entry point). A name no package provides,
    or a protocol the SDK does not know, raises `TelemetryEnvironmentError`.
    """
    names = exporter_names(signal)
    if names is None:
        if not _endpoint_set(config, signal):
            return SignalExport()  # nothing exported: no protocol read (or refused)
        return SignalExport(_otlp_target(config, signal, _protocol(config, signal, None), False))
    otlp: OtlpSignal | None = None
    others: dict[str, type[Any]] = {}
    for name in names:
        if name in _OTLP_EXPORTERS:
            if otlp is None:  # one OTLP export per signal, as the SDK's exporters by name
                otlp = _otlp_target(
                    config, signal, _protocol(config, signal, _OTLP_EXPORTERS[name]), True
                )
        elif name not in others:
            group = f"opentelemetry_{signal.lower()}_exporter"
            # The SDK's own lookup (and its error for a name no package provides).
            from opentelemetry.sdk._configuration import _import_config_components

            try:
                others[name] = _import_config_components([name], group)[0][1]
            except RuntimeError as error:
                raise TelemetryEnvironmentError(str(error)) from None
    return SignalExport(otlp, tuple(others.values()))


@dataclass
class Providers:
    tracer_provider: TracerProvider
    meter_provider: MeterProvider
    registry: CollectorRegistry
    readers: list[MetricReader] = field(default_factory=list)
    # The span processors added to `tracer_provider`, in order: the sidecar's spans
    # (`telemetry.spans`) hand their ended spans to these directly.
    span_processors: list[SpanProcessor] = field(default_factory=list)


def _span_exporter(target: OtlpSignal) -> SpanExporter:
    # The SDK's exporters sending a cheaper encoding of the same request (`otlp_spans`).
    endpoint = target.endpoint
    if target.protocol == "grpc":
        from sidecar.telemetry.otlp_spans import grpc_span_exporter

        return grpc_span_exporter(endpoint)
    from sidecar.telemetry.otlp_spans import HttpSpanExporter

    return HttpSpanExporter(endpoint=endpoint)


def _span_processor(target: OtlpSignal) -> SpanProcessor:
    # OTLP/HTTP: batched and encoded on the event loop, posted by a thread (`loop_spans`);
    # gRPC: the SDK's batch processor, its own thread doing all of it.
    if target.protocol == "grpc":
        return BatchSpanProcessor(_span_exporter(target), max_export_batch_size=span_batch_size())
    from sidecar.telemetry.loop_spans import LoopSpanProcessor
    from sidecar.telemetry.otlp_spans import HttpSpanExporter

    timeout = (
        None if os.environ.get(OTEL_BSP_EXPORT_TIMEOUT, "").strip() else SPAN_EXPORT_TIMEOUT_MS
    )
    return LoopSpanProcessor(
        HttpSpanExporter(endpoint=target.endpoint), export_timeout_millis=timeout
    )


def _metric_reader(target: OtlpSignal) -> MetricReader:
    endpoint = target.endpoint
    if target.protocol == "grpc":
        from opentelemetry.exporter.otlp.proto.grpc.metric_exporter import (
            OTLPMetricExporter as GrpcMetricExporter,
        )

        return PeriodicExportingMetricReader(GrpcMetricExporter(endpoint=endpoint))
    from opentelemetry.exporter.otlp.proto.http.metric_exporter import (
        OTLPMetricExporter as HttpMetricExporter,
    )

    from sidecar.telemetry.otlp_session import export_session

    exporter = HttpMetricExporter(endpoint=endpoint, session=export_session("METRICS"))
    return PeriodicExportingMetricReader(exporter)


def build_providers(
    config: TelemetryConfig,
    span_exporter: SpanExporter | None,
    metric_reader: MetricReader | None,
) -> Providers | None:
    """Tracer and meter providers with the configured exporters; None when nothing exports.

    Raises `TelemetryEnvironmentError` for an `OTEL_*` value the SDK refuses (it would
    stop the program with a traceback: the sidecar says which and does not start).
    """
    try:
        return _build_providers(config, span_exporter, metric_reader)
    except (ValueError, RuntimeError) as error:  # the SDK's refusals of its environment
        if isinstance(error, TelemetryEnvironmentError):
            raise
        raise TelemetryEnvironmentError(str(error)) from None


def check_environment(config: TelemetryConfig) -> None:
    """Raise `TelemetryEnvironmentError` for an `OTEL_*` value `build_providers` or the
    propagators would refuse, building nothing that exports (`sidecar check`)."""
    from sidecar.telemetry.propagation import configured_propagator

    try:
        configured_propagator()
        if sdk_disabled():
            return  # nothing else is read
        traces, metrics = signal_export(config, "TRACES"), signal_export(config, "METRICS")
        if not (
            config.prometheus or traces.otlp or metrics.otlp or traces.others or metrics.others
        ):
            return  # `run` builds no providers either: nothing else is read
        if traces.otlp is not None or traces.others:
            from sidecar.telemetry.loop_spans import batch_settings

            batch_settings()  # what every batch span processor reads
        TracerProvider(resource=resource_of(config)).shutdown()  # the sampler's variables
    except (ValueError, RuntimeError) as error:
        if isinstance(error, TelemetryEnvironmentError):
            raise
        raise TelemetryEnvironmentError(str(error)) from None


def _build_providers(
    config: TelemetryConfig,
    span_exporter: SpanExporter | None,
    metric_reader: MetricReader | None,
) -> Providers | None:
    traces, metrics = signal_export(config, "TRACES"), signal_export(config, "METRICS")
    exporting = config.prometheus or traces.otlp or metrics.otlp or traces.others or metrics.others
    if not exporting and span_exporter is None and metric_reader is None:
        return None  # no-op providers: telemetry off costs nothing (logs still flow)
    resource = resource_of(config)
    # No sampler given: the SDK picks it from OTEL_TRACES_SAMPLER(_ARG) itself.
    tracer_provider = TracerProvider(resource=resource)
    readers: list[MetricReader] = []
    registry = CollectorRegistry(auto_describe=True)
    if config.prometheus:
        from opentelemetry.exporter.prometheus import PrometheusMetricReader

        readers.append(PrometheusMetricReader(registry=registry))
    span_processors: list[SpanProcessor] = []
    if span_exporter is not None:
        span_processors.append(SimpleSpanProcessor(span_exporter))
    if metric_reader is not None:
        readers.append(metric_reader)
    if traces.otlp is not None:
        span_processors.append(_span_processor(traces.otlp))
    # The SDK's other exporters, set up as its configuration sets them up.
    span_processors.extend(BatchSpanProcessor(exporter()) for exporter in traces.others)
    for processor in span_processors:
        tracer_provider.add_span_processor(processor)
    if metrics.otlp is not None:
        readers.append(_metric_reader(metrics.otlp))
    for exporter in metrics.others:
        readers.append(
            exporter()
            if issubclass(exporter, MetricReader)
            else PeriodicExportingMetricReader(exporter())
        )
    # The SDK's provider, with histograms the sidecar aggregates (see `meters`).
    meter_provider = SidecarMeterProvider(
        resource=resource,
        metric_readers=readers,
        exemplar_filter=exemplar_filter_of(),
    )
    return Providers(tracer_provider, meter_provider, registry, readers, span_processors)
