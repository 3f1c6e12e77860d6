"""OpenTelemetry read back in memory: a Telemetry whose spans land in an exporter that wakes
waiters and whose metrics land in an in-memory reader; a prompt client that parses the events."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import aiohttp
from opentelemetry.sdk.metrics.export import InMemoryMetricReader, Metric
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SpanExportResult
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind

from sidecar.config import TelemetryConfig
from sidecar.telemetry import Telemetry

# A caller's W3C trace context, as a traced client would send it.
CALLER_TRACE = "0af7651916cd43dd8448eb211c80319c"
CALLER_SPAN = "b7ad6b7169203331"
TRACEPARENT = f"00-{CALLER_TRACE}-{CALLER_SPAN}-01"


@dataclass
class Otel:
    """A Telemetry whose spans and metrics land in memory."""

    telemetry: Telemetry
    exporter: NotifyingExporter
    reader: InMemoryMetricReader

    def spans(self, kind: SpanKind | None = None) -> list[ReadableSpan]:
        """Finished spans, of `kind` if given."""
        spans = self.exporter.get_finished_spans()
        return [span for span in spans if kind is None or span.kind == kind]

    def client_span(self) -> ReadableSpan:
        """The one CLIENT span (the Claude call)."""
        (span,) = self.spans(SpanKind.CLIENT)
        return span

    def metrics(self) -> dict[str, Metric]:
        """The metrics collected now, by name."""
        data = self.reader.get_metrics_data()
        assert data is not None
        return {
            metric.name: metric
            for resource in data.resource_metrics
            for scope in resource.scope_metrics
            for metric in scope.metrics
        }

    def points(self, name: str) -> list[Any]:
        """The data points of metric `name` (none if it was never recorded)."""
        metric = self.metrics().get(name)
        return list(metric.data.data_points) if metric is not None else []

    def count(self, name: str, **attributes: Any) -> float:
        """Sum of a counter's points (or histogram counts) whose attributes include these."""
        total = 0.0
        for point in self.points(name):
            if all(point.attributes.get(k) == v for k, v in attributes.items()):
                count = getattr(point, "count", None)  # histograms count, counters sum
                total += count if count else getattr(point, "value", 0)
        return total


def make_otel(**config: Any) -> Otel:
    """A Telemetry from `config` whose spans and metrics stay in memory.

    The SDK reads `OTEL_*` from the process environment (set them with monkeypatch).
    """
    exporter, reader = NotifyingExporter(), InMemoryMetricReader()
    telemetry = Telemetry.from_config(
        TelemetryConfig(**config), span_exporter=exporter, metric_reader=reader
    )
    return Otel(telemetry, exporter, reader)


class NotifyingExporter(InMemorySpanExporter):
    """Keeps spans in memory and wakes waiters whenever one ends."""

    def __init__(self) -> None:
        super().__init__()
        self.ended = asyncio.Event()

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        """Keep the spans and wake the waiters."""
        result = super().export(spans)
        self.ended.set()  # SimpleSpanProcessor exports on the sidecar's (= the test's) loop
        return result

    async def wait_for(self, condition: Callable[[], bool], timeout: float = 5.0) -> None:
        """Wait for spans that end after the client saw its answer (e.g. a cancelled stream)."""
        async with asyncio.timeout(timeout):
            while not condition():
                self.ended.clear()
                await self.ended.wait()


def sse_data(raw: bytes) -> list[dict[str, Any]]:
    """The JSON objects in the `data:` lines of an SSE body."""
    return [
        json.loads(line[6:])
        for line in raw.decode().splitlines()
        if line.startswith("data: ") and line[6:].startswith("{")
    ]


async def prompt(
    url: str, text: str, headers: dict[str, str] | None = None
) -> tuple[int, list[dict[str, Any]]]:
    """POST a prompt to the prompt route: the status and its events (or its JSON error)."""
    async with (
        aiohttp.ClientSession() as http,
        http.post(url + "/api/stream-response", json={"prompt": text}, headers=headers) as r,
    ):
        if r.content_type == "application/json":
            return r.status, [await r.json()]
        return r.status, sse_data(await r.read())
