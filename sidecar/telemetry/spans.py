"""The sidecar's spans, recorded into plain fields and handed to the SDK's processors ended.

Every request has a SERVER span and every Claude call a CLIENT span. The SDK's own `Span`
guards each with a lock, cleans every attribute through `BoundedAttributes` (another
lock, several isinstance checks per value) and keeps bounded event and link lists: a
few KB and a few hundred calls per call for two spans the sidecar fills from one
thread (the event loop's) with values it has already bounded. `SidecarSpan` records
into slots and a dict and, at `end`, builds the one `ReadableSpan` the SDK would have
built, for the span processors the sidecar added itself (`Providers.span_processors`).

What stays the SDK's, read from its public API: the sampler (`TracerProvider.sampler`,
`OTEL_TRACES_SAMPLER(_ARG)`), called once per span with the arguments the SDK passes,
its decision, added attributes and trace state honoured; ids from
`TracerProvider.id_generator` and the trace flags the SDK derives (sampled, random
trace id); `SpanLimits` from `OTEL_*_LIMIT` (a value that is not plain, or a limit
that could bite, goes through the SDK's `BoundedAttributes` as before); the resource,
the `claude-sidecar` scope and the processors' `on_end`. Their `on_start` is empty
(tests/test_spans.py holds them to it), so it is not called.

The SDK's own span counters (`OTEL_PYTHON_SDK_INTERNAL_METRICS_ENABLED`) go to the
process-global meter provider, which the sidecar never sets: they were never exported
and are not kept.

A span the sampler drops, or one no processor would ever see (no span exporter at
all, e.g. Prometheus only), records nothing but keeps its context: `traceparent`
still names it, with the sampled flag the sampler decided.
"""

from __future__ import annotations

import logging
import traceback
from collections.abc import Mapping, Sequence
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
from opentelemetry.sdk.trace import (
    Tracer as SdkTracer,
)
from opentelemetry.sdk.trace.sampling import Decision
from opentelemetry.sdk.util import BoundedList
from opentelemetry.sdk.util.instrumentation import InstrumentationScope
from opentelemetry.trace import Link, SpanContext, SpanKind, Status, StatusCode, TraceFlags
from opentelemetry.util import types

SCOPE: Final = "claude-sidecar"
# The SDK's warnings for misuse (e.g. ending twice), under its logger and in its words.
_log = logging.getLogger("opentelemetry.sdk.trace")
_UNSET: Final = Status(StatusCode.UNSET)
# Values the SDK's cleaning keeps as they are (no length limit in force).
_PLAIN: Final = frozenset({str, int, float, bool, bytes, type(None)})
# More attributes than the sidecar ever sets on one span: a count limit at least this
# high can never drop one, so no bounding is needed below it.
_ROOM: Final = 64
# Trace flags by (sampled | random trace id << 1), built once.
_FLAGS: Final = tuple(TraceFlags(bits) for bits in range(4))
_SAMPLED: Final = Decision.RECORD_AND_SAMPLE
_DROPPED: Final = Decision.DROP


def _plain_sequence(value: Sequence[object]) -> bool:
    return _PLAIN.issuperset(map(type, value))


class Spans:
    """Starts spans for one `TracerProvider`; ended ones go to `processors`."""

    __slots__ = ("_ids", "_limits", "_processors", "_room", "_sampler", "_scope", "provider")

    def __init__(self, provider: TracerProvider, processors: Sequence[SpanProcessor]) -> None:
        self.provider = provider
        self._sampler = provider.sampler
        self._ids = provider.id_generator
        self._processors = tuple(processors)
        # The SDK's own reading of OTEL_SPAN_ATTRIBUTE_COUNT_LIMIT & co, as the provider's.
        limits = self._limits = SpanLimits()
        count = limits.max_span_attributes
        # Attributes fit a plain dict unless a limit could bite: then BoundedAttributes.
        self._room = (
            (count if count is not None else 1 << 30)
            if limits.max_span_attribute_length is None and (count is None or count >= _ROOM)
            else -1
        )
        tracer = provider.get_tracer(SCOPE)
        info = tracer.instrumentation_info if isinstance(tracer, SdkTracer) else None
        self._scope = (info, InstrumentationScope(SCOPE, "", None, None))

    def start(
        self, name: str, kind: SpanKind, attributes: dict[str, types.AnyValue], context: Context
    ) -> trace.Span:
        """A span whose parent is the span in `context` (a caller's, or none: a new trace)."""
        parent = trace.get_current_span(context).get_span_context()
        return self._start(name, kind, attributes, context, parent, context)

    def start_child(
        self, name: str, kind: SpanKind, attributes: dict[str, types.AnyValue], parent: trace.Span
    ) -> trace.Span:
        """A span whose parent is `parent` (the sampler sees it as the current span)."""
        caller = parent._caller if type(parent) is SidecarSpan else get_current()
        context = trace.set_span_in_context(parent, caller)
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
        result = self._sampler.should_sample(context, trace_id, name, kind, attributes, ())
        decision = result.decision
        span_context = SpanContext(
            trace_id,
            ids.generate_span_id(),
            is_remote=False,
            trace_flags=_FLAGS[(decision is _SAMPLED) | random << 1],
            trace_state=result.trace_state,
        )
        span = SidecarSpan(self, name, kind, span_context, parent, caller)
        if decision is not _DROPPED and self._processors:
            span._attributes = {}
            span.set_attributes(result.attributes)
            span._start = time_ns()
        return span

    def bounded(self, attributes: Mapping[str, types.AnyValue]) -> BoundedAttributes:
        """What the SDK's span keeps its attributes in, under the span limits."""
        limits = self._limits
        return BoundedAttributes(
            limits.max_span_attributes,
            attributes,
            immutable=False,
            max_value_len=limits.max_span_attribute_length,
        )

    def ended(self, span: SidecarSpan, attributes: Mapping[str, types.AnyValue]) -> None:
        """Hand an ended span to the processors, as the `ReadableSpan` the SDK builds."""
        info, scope = self._scope
        readable = ReadableSpan(
            name=span._name,
            context=span._context,
            parent=span._parent,
            resource=self.provider.resource,
            attributes=attributes,
            events=span._events if span._events is not None else (),
            links=span._links if span._links is not None else (),
            kind=span._kind,
            instrumentation_info=info,
            status=span._status,
            start_time=span._start,
            end_time=span._end,
            instrumentation_scope=scope,
        )
        for processor in self._processors:
            processor.on_end(readable)


class SidecarSpan(trace.Span):
    """One span of the sidecar: `opentelemetry.trace.Span` over plain fields (see module)."""

    __slots__ = (
        "_attributes", "_caller", "_context", "_end", "_events", "_hex", "_kind", "_links",
        "_name", "_parent", "_spans", "_start", "_status",
    )  # fmt: skip

    def __init__(
        self,
        spans: Spans,
        name: str,
        kind: SpanKind,
        context: SpanContext,
        parent: SpanContext | None,
        caller: Context,
    ) -> None:
        self._spans = spans
        self._name = name
        self._kind = kind
        self._context = context
        self._parent = parent
        self._caller = caller  # the Context a child's sampler sees this span in
        # None: not recording (dropped by the sampler, or no processor to see it).
        self._attributes: dict[str, types.AnyValue] | BoundedAttributes | None = None
        self._status = _UNSET
        self._start = 0
        self._end: int | None = None
        self._events: BoundedList[Event] | None = None
        self._links: BoundedList[Link] | None = None
        self._hex: tuple[str, str] | None = None

    def __repr__(self) -> str:
        return f'{type(self).__name__}(name="{self._name}", context={self._context})'

    def get_span_context(self) -> SpanContext:
        return self._context

    def ids(self) -> tuple[str, str]:
        """Trace and span id in hex, as logs and `traceparent` carry them; formatted once."""
        ids = self._hex
        if ids is None:
            context = self._context
            ids = self._hex = (f"{context.trace_id:032x}", f"{context.span_id:016x}")
        return ids

    def is_recording(self) -> bool:
        return self._end is None and self._attributes is not None

    def _writable(self, what: str) -> bool:
        if self._attributes is None:
            return False
        if self._end is not None:
            _log.warning("Tried calling %s on an ended span.", what)
            return False
        return True

    def set_attribute(self, key: str, value: types.AnyValue) -> None:
        store = self._attributes
        if (
            type(store) is dict
            and self._end is None
            and type(value) in _PLAIN
            and type(key) is str
            and key
            and len(store) < self._spans._room
        ):
            if key in store:
                del store[key]
            store[key] = value
        else:
            self.set_attributes({key: value})

    def set_attributes(self, attributes: Mapping[str, types.AnyValue]) -> None:
        """Kept as the SDK keeps them: re-set keys move to the end, sequences become tuples."""
        store = self._attributes
        if store is None:
            return
        if self._end is not None:
            _log.warning("Setting attribute on ended span.")
            return
        if type(store) is dict and len(store) + len(attributes) <= self._spans._room:
            for key, value in attributes.items():
                kind = type(value)
                if kind not in _PLAIN:
                    if (kind is list or kind is tuple) and _plain_sequence(value):  # type: ignore[arg-type]
                        value = tuple(value)  # type: ignore[arg-type]
                    else:
                        break  # something the SDK's cleaning must see
                if type(key) is not str or not key:
                    break
                if key in store:
                    del store[key]
                store[key] = value
            else:
                return
            store = self._attributes = self._spans.bounded(store)
        elif type(store) is dict:
            store = self._attributes = self._spans.bounded(store)
        store.update(attributes)

    def add_event(
        self, name: str, attributes: types.Attributes = None, timestamp: int | None = None
    ) -> None:
        if not self._writable("_add_event"):
            return
        limits = self._spans._limits
        if self._events is None:
            self._events = BoundedList(limits.max_events)
        bounded = BoundedAttributes(
            limits.max_event_attributes,
            attributes,
            max_value_len=limits.max_attribute_length,
            immutable=True,
        )
        self._events.append(Event(name=name, attributes=bounded, timestamp=timestamp))

    def add_link(self, context: SpanContext, attributes: types.Attributes = None) -> None:
        if not (context and (context.is_valid or (attributes or context.trace_state))):
            return  # what the SDK ignores
        if not self._writable("_add_link"):
            return
        limits = self._spans._limits
        if self._links is None:
            self._links = BoundedList(limits.max_links)
        bounded = BoundedAttributes(
            limits.max_link_attributes,
            attributes,
            max_value_len=limits.max_attribute_length,
            immutable=True,
        )
        self._links.append(Link(context, bounded))

    def update_name(self, name: str) -> None:
        if self._writable("update_name"):
            self._name = name

    def set_status(self, status: Status | StatusCode, description: str | None = None) -> None:
        if not self._writable("set_status"):
            return
        # As the SDK: OK is final, UNSET is never set.
        if self._status.status_code is StatusCode.OK:
            return
        if isinstance(status, Status):
            if status.status_code is StatusCode.UNSET:
                return
            if description is not None:
                _log.warning(
                    "Description %s ignored. Use either `Status` or `(StatusCode, Description)`",
                    description,
                )
            self._status = status
        elif status is not StatusCode.UNSET:
            self._status = Status(status, description)

    def record_exception(
        self,
        exception: BaseException,
        attributes: types.Attributes = None,
        timestamp: int | None = None,
        escaped: bool = False,
    ) -> None:
        module, name = type(exception).__module__, type(exception).__qualname__
        recorded: dict[str, types.AnyValue] = {
            "exception.type": f"{module}.{name}" if module and module != "builtins" else name,
            "exception.message": str(exception),
            "exception.stacktrace": "".join(traceback.format_exception(exception)),
            "exception.escaped": str(escaped),
        }
        if attributes:
            recorded.update(attributes)
        self.add_event("exception", recorded, timestamp)

    def end(self, end_time: int | None = None) -> None:
        attributes = self._attributes
        if attributes is None:
            return
        if self._end is not None:
            _log.warning("Calling end() on an ended span.")
            return
        self._end = end_time if end_time is not None else time_ns()
        self._spans.ended(self, attributes)
