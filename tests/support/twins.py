"""Twin meter providers: the SDK's own and the sidecar's, each with the same set of readers,
so a test records the same measurements into both and compares what every reader exports.

Readers: Prometheus (text exposition), an in-memory cumulative reader, an in-memory reader
with the OTLP exporters' `delta` preference, and a periodic reader whose exporter keeps
what it is sent (collected on demand). Timestamps differ between any two runs; `timeless`
zeroes them so everything else compares byte for byte.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from opentelemetry.exporter.otlp.proto.common.metrics_encoder import encode_metrics
from opentelemetry.exporter.prometheus import PrometheusMetricReader
from opentelemetry.sdk.metrics import (
    AlwaysOffExemplarFilter,
    Counter,
    Histogram,
    MeterProvider,
    ObservableCounter,
)
from opentelemetry.sdk.metrics.export import (
    AggregationTemporality,
    InMemoryMetricReader,
    Metric,
    MetricExporter,
    MetricExportResult,
    MetricsData,
    PeriodicExportingMetricReader,
)
from opentelemetry.sdk.resources import Resource
from prometheus_client import CollectorRegistry, generate_latest

from sidecar.telemetry.meters import SidecarMeterProvider

# The OTLP exporters' `OTEL_EXPORTER_OTLP_METRICS_TEMPORALITY_PREFERENCE=delta`.
DELTA_PREFERENCE: dict[type, AggregationTemporality] = {
    Counter: AggregationTemporality.DELTA,
    Histogram: AggregationTemporality.DELTA,
    ObservableCounter: AggregationTemporality.DELTA,
}
RESOURCE = Resource.create({"service.name": "twins"})
# Histogram attribute sets per reader before the overflow point (the SDK's default is 2000).
LIMIT = 50


class KeepingExporter(MetricExporter):
    """Keeps every batch it is sent (a periodic reader's view of the metrics)."""

    def __init__(self, temporality: dict[type, AggregationTemporality] | None = None) -> None:
        super().__init__(preferred_temporality=temporality)
        self.batches: list[MetricsData] = []

    def export(
        self, metrics_data: MetricsData, timeout_millis: float = 10_000, **kwargs: Any
    ) -> MetricExportResult:
        """Keep the batch."""
        self.batches.append(metrics_data)
        return MetricExportResult.SUCCESS

    def force_flush(self, timeout_millis: float = 10_000) -> bool:
        """Nothing is buffered."""
        return True

    def shutdown(self, timeout_millis: float = 30_000, **kwargs: Any) -> None:
        """Nothing to release."""


@dataclass
class Twin:
    """One provider and its readers."""

    provider: MeterProvider
    registry: CollectorRegistry
    cumulative: InMemoryMetricReader
    delta: InMemoryMetricReader
    periodic: PeriodicExportingMetricReader
    exporter: KeepingExporter
    exports: list[dict[str, Any]] = field(default_factory=list)

    def collect(self) -> dict[str, Any]:
        """One collection by every reader, in a fixed order; kept in `exports` and returned."""
        self.periodic.force_flush()
        export = {
            "prometheus": generate_latest(self.registry),
            "cumulative": self.cumulative.get_metrics_data(),
            "delta": self.delta.get_metrics_data(),
            "periodic": self.exporter.batches[-1] if self.exporter.batches else None,
        }
        self.exports.append(export)
        return export


def make_twin(sidecar: bool, delta_periodic: bool = False) -> Twin:
    """A provider (the sidecar's or the SDK's) with the four readers, exemplars off, and
    `LIMIT` histogram attribute sets per reader."""
    registry = CollectorRegistry(auto_describe=True)
    limits: dict[type, int] = {Histogram: LIMIT}
    cumulative = InMemoryMetricReader(cardinality_limits=limits)
    delta = InMemoryMetricReader(preferred_temporality=DELTA_PREFERENCE, cardinality_limits=limits)
    exporter = KeepingExporter(DELTA_PREFERENCE if delta_periodic else None)
    periodic = PeriodicExportingMetricReader(
        exporter, export_interval_millis=math.inf, cardinality_limits=limits
    )
    prometheus = PrometheusMetricReader(registry=registry, cardinality_limits=limits)
    readers = [prometheus, cumulative, delta, periodic]
    kind = SidecarMeterProvider if sidecar else MeterProvider
    provider = kind(
        metric_readers=readers, resource=RESOURCE, exemplar_filter=AlwaysOffExemplarFilter()
    )
    return Twin(provider, registry, cumulative, delta, periodic, exporter)


def timeless(data: MetricsData | None) -> MetricsData | None:
    """`data` with every point's start and collection time zeroed."""
    if data is None:
        return None
    return replace(
        data,
        resource_metrics=[
            replace(rm, scope_metrics=[
                replace(sm, metrics=[_timeless_metric(m) for m in sm.metrics])
                for sm in rm.scope_metrics
            ])
            for rm in data.resource_metrics
        ],
    )  # fmt: skip


def _timeless_metric(metric: Metric) -> Metric:
    points = [replace(p, start_time_unix_nano=0, time_unix_nano=0) for p in metric.data.data_points]
    data: Any = metric.data  # Sum, Gauge or a histogram: each has its data points
    return replace(metric, data=replace(data, data_points=points))


def comparable(export: dict[str, Any]) -> dict[str, Any]:
    """An export as bytes: the Prometheus text, each reader's data as JSON and as the OTLP
    protobuf request (attribute and metric order included), timestamps zeroed."""
    result: dict[str, Any] = {"prometheus": export["prometheus"]}
    for name in ("cumulative", "delta", "periodic"):
        data = timeless(export[name])
        result[name] = (
            None if data is None
            else (data.to_json(), encode_metrics(data).SerializeToString(deterministic=True))
        )  # fmt: skip
    return result


def points_of(data: MetricsData | None, name: str) -> Sequence[Any]:
    """The data points of metric `name` in `data` (none if absent)."""
    if data is None:
        return []
    return [
        point
        for rm in data.resource_metrics
        for sm in rm.scope_metrics
        for metric in sm.metrics
        if metric.name == name
        for point in metric.data.data_points
    ]
