"""Telemetry whose spans and metrics land in memory (the SDK's in-memory exporter and reader)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from opentelemetry.sdk.metrics.export import InMemoryMetricReader, Metric
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind

from sidecar.config import TelemetryConfig
from sidecar.telemetry import Telemetry


@dataclass
class MemoryOtel:
    """A Telemetry built as the sidecar builds it (`from_config`), exporting into memory."""

    telemetry: Telemetry
    exporter: InMemorySpanExporter
    reader: InMemoryMetricReader

    def spans(self, kind: SpanKind) -> list[ReadableSpan]:
        return [span for span in self.exporter.get_finished_spans() if span.kind == kind]

    def metrics(self) -> dict[str, Metric]:
        data = self.reader.get_metrics_data()
        assert data is not None
        return {
            metric.name: metric
            for resource in data.resource_metrics
            for scope in resource.scope_metrics
            for metric in scope.metrics
        }

    def points(self, name: str) -> list[Any]:
        metric = self.metrics().get(name)
        return list(metric.data.data_points) if metric is not None else []


def memory_otel(**config: Any) -> MemoryOtel:
    """In-memory telemetry; `OTEL_*` (opt-ins included) come from the process environment."""
    exporter, reader = InMemorySpanExporter(), InMemoryMetricReader()
    telemetry = Telemetry.from_config(
        TelemetryConfig(prometheus=False, **config), span_exporter=exporter, metric_reader=reader
    )
    return MemoryOtel(telemetry, exporter, reader)
