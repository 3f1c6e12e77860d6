"""A sidecar span stores what the SDK's span stores, in its order: the sampler's attributes
first, under the span limits, however the span is first touched; it calls only the
processors' `on_end`, as the other hooks are empty in the SDK's processors."""

from __future__ import annotations

from collections.abc import Sequence

import pytest
from opentelemetry.context import Context
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.sdk.trace.sampling import Decision, Sampler, SamplingResult
from opentelemetry.trace import Link, SpanKind, TraceState
from opentelemetry.util.types import AnyValue, Attributes

from sidecar.telemetry.spans import Spans
from tests.support.spans import LIMITS, SdkSpans, SeededIds, clear_otel_env, exported


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    clear_otel_env(monkeypatch)


class Tagging(Sampler):
    """Samples everything and adds an attribute of its own to what it was given."""

    def should_sample(
        self,
        parent_context: Context | None,
        trace_id: int,
        name: str,
        kind: SpanKind | None = None,
        attributes: Attributes = None,
        links: Sequence[Link] | None = None,
        trace_state: TraceState | None = None,
    ) -> SamplingResult:
        return SamplingResult(Decision.RECORD_AND_SAMPLE, {**(attributes or {}), "tag": "t"})

    def get_description(self) -> str:
        return "Tagging"


@pytest.mark.parametrize("limits", [{}, *LIMITS.values()])
def test_the_samplers_attributes_come_first_however_the_span_is_first_touched(
    monkeypatch: pytest.MonkeyPatch, limits: dict[str, str]
) -> None:
    """A span stores the sampler's attributes at its first write or at its end: first,
    under the span limits, as the SDK stores them at its start."""
    for name, value in limits.items():
        monkeypatch.setenv(name, value)
    exporters = []
    for sidecars in (True, False):
        exporter = InMemorySpanExporter()
        processor = SimpleSpanProcessor(exporter)
        made = TracerProvider(sampler=Tagging(), id_generator=SeededIds(7))
        made.add_span_processor(processor)
        spans = Spans(made, [processor]) if sidecars else SdkSpans(Spans(made, ()))
        start: dict[str, AnyValue] = {"a": "first", "b": ["x", "y"], "c": 3, "d": "long value"}
        server = spans.start("s", SpanKind.SERVER, dict(start), Context())
        untouched = spans.start_child("u", SpanKind.CLIENT, dict(start), server)
        untouched.end()
        written = spans.start_child("w", SpanKind.CLIENT, dict(start), server)
        written.set_attribute("a", "again")  # a start key re-set moves to the end
        written.set_attribute("e", 5)
        written.end()
        server.set_attributes({"c": 4, "f": "x"})
        server.end()
        exporters.append([exported(span) for span in exporter.get_finished_spans()])
    ours, theirs = exporters
    assert ours == theirs
    assert len(ours) == 3


def test_the_processors_the_sidecar_adds_do_nothing_when_a_span_starts() -> None:
    # Why `SidecarSpan` calls only `on_end`: these hooks are empty in the SDK's processors.
    def nothing() -> None:
        pass

    empty = nothing.__code__.co_code
    for processor in (SimpleSpanProcessor, BatchSpanProcessor):
        assert processor.on_start.__code__.co_code == empty
        assert processor._on_ending.__code__.co_code == empty
