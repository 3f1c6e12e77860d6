"""The sidecar's spans started as the SDK starts its own, and handed to its processors ended.

Every request has a SERVER span and every Claude call a CLIENT span. The SDK's `Span`
costs a few KB and a few hundred calls per call for two spans the sidecar fills from
one thread with values it has already bounded; `SidecarSpan` (`span.py`) records them
lean, and at its end `Spans.ended` builds the one `ReadableSpan` the SDK would have
built, for the span processors the sidecar added itself (`Providers.span_processors`).
Their `on_start` is empty (tests/test_spans.py holds them to it), so it is not called.

What stays the SDK's, through its public API: the sampler (`TracerProvider.sampler`,
from `OTEL_TRACES_SAMPLER(_ARG)`), called once per span with the arguments the SDK
passes, its decision, attributes and trace state honoured (the SDK's own samplers,
whose answer their settings alone decide, are read once instead: `sampling`); ids from
`TracerProvider.id_generator` and the trace flags the SDK derives (sampled, random
trace id); `SpanLimits` from `OTEL_*_LIMIT`; the resource and the `claude-sidecar`
scope. The SDK's own span counters (`OTEL_PYTHON_SDK_INTERNAL_METRICS_ENABLED`) go to
the process-global meter provider, which the sidecar never sets: never exported, not kept.

The sampler's attributes (the start attributes it was given, or what it returned
instead) are what a recording span holds first, as with the SDK; they are set aside at
the start and stored when the request the span names has been written (a Claude call's
deferred step), at the span's first write or at its end, whichever comes first.

A span the sampler drops, or one no processor would see (no span exporter at all, e.g.
Prometheus only), records nothing but keeps its context: `traceparent` and the log
lines still name it, with the sampled flag the sampler decided.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping, Sequence
from importlib.metadata import PackageNotFoundError, version
from time import time_ns
from typing import Final

from opentelemetry import trace
from opentelemetry.attributes import BoundedAttributes
from opentelemetry.context import Context, get_current
from opentelemetry.sdk.trace import (
    Event,
    ReadableSpan,
    SpanLimits,
    SpanProcessor,
    TracerProvider,
)
from opentelemetry.sdk.trace import Tracer as SdkTracer
from opentelemetry.sdk.trace.sampling import Decision
from opentelemetry.sdk.util.instrumentation import InstrumentationScope
from opentelemetry.trace import Link, SpanContext, SpanKind, TraceFlags
from opentelemetry.util import types

from sidecar.telemetry.sampling import RATIO_MASK, Plan, plan_of
from sidecar.telemetry.span import UNSTORED, SidecarSpan

SCOPE: Final = "claude-sidecar"


def _own_version() -> str:
    """The sidecar's version, the instrumentation scope's (spans and metrics alike)."""
    try:
        return version(SCOPE)
    except PackageNotFoundError:  # run from a source tree that was never installed
        return ""


SCOPE_VERSION: Final = _own_version()
# Trace flags by (sampled | random trace id << 1), built once.
_FLAGS: Final = tuple(TraceFlags(bits) for bits in range(4))
_SAMPLED: Final = Decision.RECORD_AND_SAMPLE
_DROPPED: Final = Decision.DROP


class PlainSpan(ReadableSpan):
    """The `ReadableSpan` of a span without events or links whose attributes are a plain dict.

    What the SDK's properties compute from those (an empty tuple, no count dropped) is
    the same for every such span: here they are constants of the class, read by an
    exporter without a call or an ABC `isinstance` check per property (~0.6 µs a span).
    """

    events: Sequence[Event] = ()  # the property's value, for every such span
    links: Sequence[Link] = ()
    dropped_events: int = 0
    dropped_links: int = 0
    dropped_attributes: int = 0


class Spans:
    """Starts spans for one `TracerProvider`; ended ones go to `processors`."""

    __slots__ = (
        "_ids", "_plan", "_processors", "_sampler", "_scope", "limits", "provider", "room",
    )  # fmt: skip

    def __init__(self, provider: TracerProvider, processors: Sequence[SpanProcessor]) -> None:
        self.provider = provider
        self._sampler = provider.sampler
        self._plan: Plan | None = plan_of(provider.sampler)  # None: asked per span
        self._ids = provider.id_generator
        self._processors = tuple(processors)
        # The SDK's own reading of OTEL_SPAN_ATTRIBUTE_COUNT_LIMIT & co, as the provider's.
        limits = self.limits = SpanLimits()
        count = limits.max_span_attributes
        # How many attributes a plain dict may hold: up to the count limit none is dropped,
        # and with a length limit every value goes through `bounded` (-1: none).
        self.room = (
            -1
            if limits.max_span_attribute_length is not None
            else (count if count is not None else sys.maxsize)
        )
        tracer = provider.get_tracer(SCOPE, SCOPE_VERSION)
        info = tracer.instrumentation_info if isinstance(tracer, SdkTracer) else None
        self._scope = (info, InstrumentationScope(SCOPE, SCOPE_VERSION, None, None))

    def start(
        self, name: str, kind: SpanKind, attributes: dict[str, types.AnyValue], context: Context
    ) -> trace.Span:
        """A span whose parent is the span in `context` (a caller's, or none: a new trace)."""
        # An empty context (no caller's trace, the common case) holds no span to ask.
        parent = trace.get_current_span(context).get_span_context() if context else None
        return self._start(name, kind, attributes, context, parent, context)

    def start_child(
        self, name: str, kind: SpanKind, attributes: dict[str, types.AnyValue], parent: trace.Span
    ) -> trace.Span:
        """A span whose parent is `parent` (the sampler sees it as the current span)."""
        caller = parent._caller if type(parent) is SidecarSpan else get_current()
        # The context is the sampler's only (a planned one knows the parent already).
        context = trace.set_span_in_context(parent, caller) if self._plan is None else caller
        # The child keeps its parent's caller, not `context`: a grandchild's context is the
        # same either way (the current span is replaced), and nothing more is held per span.
        return self._start(name, kind, attributes, context, parent.get_span_context(), caller)

    def _start(
        self,
        name: str,
        kind: SpanKind,
        attributes: dict[str, types.AnyValue],
        context: Context,
        parent: SpanContext | None,
        caller: Context,
    ) -> SidecarSpan:
        # What `Tracer.start_span` does, in its order, for a tracer that is enabled.
        ids = self._ids
        if parent is None or not parent.is_valid:
            parent = None
            trace_id = ids.generate_trace_id()
            random = ids.is_trace_id_random()
        else:
            trace_id = parent.trace_id
            random = bool(parent.trace_flags & TraceFlags.RANDOM_TRACE_ID)
        plan = self._plan
        decision: Decision
        pending: Mapping[str, types.AnyValue]
        if plan is None:
            result = self._sampler.should_sample(context, trace_id, name, kind, attributes, ())
            decision, pending, trace_state = result.decision, result.attributes, result.trace_state
        else:  # what the SDK's sampler would answer, from its settings read once (`sampling`)
            if parent is None:
                rule, trace_state = plan[0], None
            else:
                sampled = parent.trace_flags.sampled
                rule = plan[(1 if parent.is_remote else 3) + (not sampled)]
                trace_state = parent.trace_state
            if isinstance(rule, Decision):
                decision = rule
            else:  # a trace id ratio's bound
                decision = _SAMPLED if trace_id & RATIO_MASK < rule else _DROPPED
            pending = attributes
        span_context = SpanContext(
            trace_id,
            ids.generate_span_id(),
            is_remote=False,
            trace_flags=_FLAGS[(decision is _SAMPLED) | random << 1],
            trace_state=trace_state,
        )
        span = SidecarSpan(self, name, kind, span_context, parent, caller)
        if decision is not _DROPPED and self._processors:
            # Recording, the sampler's attributes first: set aside until the request the
            # span names is written (`SidecarSpan.store_pending`), its first write or its end.
            span._attributes = UNSTORED
            span._pending = pending
            span._start = time_ns()
        return span

    def bounded(self, attributes: Mapping[str, types.AnyValue]) -> BoundedAttributes:
        """What the SDK's span keeps its attributes in, under the span limits."""
        limits = self.limits
        return BoundedAttributes(
            limits.max_span_attributes,
            attributes,
            immutable=False,
            max_value_len=limits.max_span_attribute_length,
        )

    def ended(self, span: SidecarSpan, attributes: Mapping[str, types.AnyValue]) -> None:
        """Hand an ended span to the processors, as the `ReadableSpan` the SDK builds."""
        info, scope = self._scope
        events, links = span._events, span._links
        plain = events is None and links is None and type(attributes) is dict
        readable = (PlainSpan if plain else ReadableSpan)(
            name=span._name,
            context=span._context,
            parent=span._parent,
            resource=self.provider.resource,
            attributes=attributes,
            events=events if events is not None else (),
            links=links if links is not None else (),
            kind=span._kind,
            instrumentation_info=info,
            status=span._status,
            start_time=span._start,
            end_time=span._end,
            instrumentation_scope=scope,
        )
        for processor in self._processors:
            processor.on_end(readable)
