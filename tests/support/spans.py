"""The SDK's own spans as a reference for the sidecar's, and ended spans as comparable data."""

from __future__ import annotations

import random
import warnings
from collections.abc import Sequence
from typing import Any

import pytest
from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.id_generator import IdGenerator
from opentelemetry.sdk.trace.sampling import ParentBased, SamplingResult, TraceIdRatioBased
from opentelemetry.trace import Link, SpanKind, TraceState
from opentelemetry.util import types

from sidecar.telemetry.spans import SCOPE, SCOPE_VERSION, Spans


class SeededIds(IdGenerator):
    """Random ids from a seed: two providers seeded alike hand out the same ids in order."""

    def __init__(self, seed: int) -> None:
        self._random = random.Random(seed)

    def generate_span_id(self) -> int:
        return self._random.getrandbits(64) or 1

    def generate_trace_id(self) -> int:
        return self._random.getrandbits(128) or 1

    def is_trace_id_random(self) -> bool:
        return True


class Asked(ParentBased):
    """The default sampler, but one of the operator's: asked per span, each call counted."""

    def __init__(self) -> None:
        super().__init__(TraceIdRatioBased(0.5))
        self.calls = 0

    def should_sample(
        self,
        parent_context: Context | None,
        trace_id: int,
        name: str,
        kind: SpanKind | None = None,
        attributes: types.Attributes = None,
        links: Sequence[Link] | None = None,
        trace_state: TraceState | None = None,
    ) -> SamplingResult:
        self.calls += 1
        return super().should_sample(parent_context, trace_id, name, kind, attributes, links)


class SdkSpans(Spans):
    """The same spans started by the SDK's tracer (its own `Span` objects), as before."""

    def __init__(self, spans: Spans) -> None:
        super().__init__(spans.provider, ())
        self.tracer = spans.provider.get_tracer(SCOPE, SCOPE_VERSION)

    def start(
        self, name: str, kind: SpanKind, attributes: dict[str, types.AnyValue], context: Context
    ) -> trace.Span:
        return self.tracer.start_span(name, context=context, kind=kind, attributes=attributes)

    def start_child(
        self, name: str, kind: SpanKind, attributes: dict[str, types.AnyValue], parent: trace.Span
    ) -> trace.Span:
        context = trace.set_span_in_context(parent)
        return self.tracer.start_span(name, context=context, kind=kind, attributes=attributes)


def exported(span: ReadableSpan) -> dict[str, Any]:
    """Everything an exporter reads from an ended span (times checked, then left out)."""
    assert span.start_time is not None
    assert span.end_time is not None
    assert span.start_time <= span.end_time
    attributes = span.attributes or {}
    scope = span.instrumentation_scope
    assert scope is not None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        info = span.instrumentation_info
    return {
        "name": span.name,
        "kind": span.kind,
        "context": span.context,
        "parent": span.parent,
        "parent_remote": span.parent.is_remote if span.parent else None,
        "status": (span.status.status_code, span.status.description),
        "attributes": list(attributes.items()),  # in order
        "attribute_types": [type(value).__name__ for value in attributes.values()],
        "events": [(event.name, dict(event.attributes or {})) for event in span.events],
        "links": [
            (link.context, dict(link.attributes or {}), link.dropped_attributes)
            for link in span.links
        ],
        "dropped": (span.dropped_attributes, span.dropped_events, span.dropped_links),
        "resource": (dict(span.resource.attributes), span.resource.schema_url),
        "scope": (scope.name, scope.version, scope.schema_url, scope.attributes),
        "instrumentation_info": info,
    }


# What the SDK reads from the environment: samplers and span limits, each case by name.
SAMPLERS = {
    "default": {},
    "always_on": {"OTEL_TRACES_SAMPLER": "always_on"},
    "always_off": {"OTEL_TRACES_SAMPLER": "always_off"},
    "traceidratio": {"OTEL_TRACES_SAMPLER": "traceidratio", "OTEL_TRACES_SAMPLER_ARG": "0.5"},
    "parentbased_always_off": {"OTEL_TRACES_SAMPLER": "parentbased_always_off"},
    "parentbased_traceidratio": {
        "OTEL_TRACES_SAMPLER": "parentbased_traceidratio",
        "OTEL_TRACES_SAMPLER_ARG": "0.5",
    },
}
LIMITS = {
    "span attribute count": {"OTEL_SPAN_ATTRIBUTE_COUNT_LIMIT": "3"},
    "attribute count": {"OTEL_ATTRIBUTE_COUNT_LIMIT": "5", "OTEL_LINK_ATTRIBUTE_COUNT_LIMIT": "0"},
    "value length": {"OTEL_ATTRIBUTE_VALUE_LENGTH_LIMIT": "4"},
    "span value length, no links or events": {
        "OTEL_SPAN_ATTRIBUTE_VALUE_LENGTH_LIMIT": "5",
        "OTEL_SPAN_LINK_COUNT_LIMIT": "0",
        "OTEL_SPAN_EVENT_COUNT_LIMIT": "0",
    },
    "high count": {"OTEL_SPAN_ATTRIBUTE_COUNT_LIMIT": "1000"},
    "zero count": {"OTEL_SPAN_ATTRIBUTE_COUNT_LIMIT": "0"},
}
OTEL_VARIABLES = {name for env in [*SAMPLERS.values(), *LIMITS.values()] for name in env}


def clear_otel_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """No sampler, limit or SDK switch from the environment the tests run in."""
    for name in OTEL_VARIABLES | {"OTEL_SDK_DISABLED"}:
        monkeypatch.delenv(name, raising=False)
