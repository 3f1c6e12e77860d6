"""The last exports when telemetry closes: every exporter is done, or given up, by one
deadline, however long its own shutdown would wait for a collector that never answers."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator, Sequence
from typing import Any

import pytest
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import (
    MetricExporter,
    MetricExportResult,
    MetricsData,
    PeriodicExportingMetricReader,
)
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult
from prometheus_client import CollectorRegistry

from sidecar.telemetry.closing import shutdown_providers
from sidecar.telemetry.providers import Providers

# Without the deadline the SDK's shutdowns wait 30 s each: this fails them first.
pytestmark = pytest.mark.timeout(20)


class _Stuck:
    """Exports that never return until the test ends (a collector that never answers)."""

    def __init__(self) -> None:
        self.released = threading.Event()
        self.started = threading.Event()

    def wait(self) -> None:
        self.started.set()
        self.released.wait()


class _StuckSpans(SpanExporter):
    def __init__(self, stuck: _Stuck) -> None:
        self._stuck = stuck

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        self._stuck.wait()
        return SpanExportResult.FAILURE


class _StuckMetrics(MetricExporter):
    def __init__(self, stuck: _Stuck) -> None:
        super().__init__()
        self._stuck = stuck

    def export(
        self, metrics_data: MetricsData, timeout_millis: float = 10_000, **kwargs: Any
    ) -> MetricExportResult:
        self._stuck.wait()
        return MetricExportResult.FAILURE

    def force_flush(self, timeout_millis: float = 10_000) -> bool:
        return True

    def shutdown(self, timeout_millis: float = 30_000, **kwargs: Any) -> None:
        pass


@pytest.fixture
def stuck() -> Iterator[_Stuck]:
    stuck = _Stuck()
    yield stuck
    stuck.released.set()  # the SDK's threads end with the test


def test_the_sdks_batch_processor_and_metric_reader_end_by_the_deadline(stuck: _Stuck) -> None:
    """The gRPC path's batch span processor (it would join its thread for 30 s) and a
    periodic metric reader (up to 30 s for its last export) each stuck in an export:
    shutdown returns, with every exporter told to stop."""
    processor = BatchSpanProcessor(_StuckSpans(stuck), schedule_delay_millis=10)
    tracer_provider = TracerProvider()
    tracer_provider.add_span_processor(processor)
    tracer_provider.get_tracer("t").start_span("s").end()
    stuck.started.wait(10)  # the processor's thread is in its export
    reader = PeriodicExportingMetricReader(_StuckMetrics(stuck), export_interval_millis=60_000)
    meter_provider = MeterProvider(metric_readers=[reader])
    meter_provider.get_meter("m").create_counter("c").add(1)
    providers = Providers(
        tracer_provider, meter_provider, CollectorRegistry(), [reader], [processor]
    )
    shutdown_providers(providers, time.monotonic() + 0.5)
    assert processor._batch_processor._shutdown
    assert reader._shutdown
