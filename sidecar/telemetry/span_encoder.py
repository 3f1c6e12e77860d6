"""Ended spans to the bytes of the OTLP request the SDK's encoder builds, for a fraction of its CPU.

The SDK's encoder turns every attribute of every span into a new `KeyValue` through a
chain of `isinstance` checks and Python calls (~100 µs for a client span's ~23
attributes), then protobuf serializes the whole request, on the batch processor's
thread, holding the GIL the event loop needs. `SpanEncoder` writes the same
`ExportTraceServiceRequest`, byte for byte, as protobuf's wire format directly: the
fixed pieces (tags, kinds, flags, a status without a message, a span's name, the
resource and scope messages) are encoded by protobuf once, a span's attributes by an
`AttributeEncoder` (`span_attributes.py`: labels from a bounded cache, ids, counts
and timings written directly), its ids and times by `int.to_bytes` and `struct`, and
its fields are joined by one bytes format; only the lengths of the nested messages
are computed here. A `SpanContext` is read as the tuple its type declares (one
unpacking, not five property calls). Whatever it does not handle itself (events,
links, a status with a message, other sequences, bytes, mappings, odd types, values
protobuf refuses) goes through protobuf and the SDK's own functions, raising, logging
and dropping exactly as they do.

A span can be encoded alone, as soon as it ends (`entry`: its entry of
`ScopeSpans.spans`), and the request written later from the entries (`request`: the
resource and scope wrappers around the joined entries, no work per span), as the loop
span processor does (`loop_spans`); `serialize` does both for a batch of spans, as an
exporter does on its own thread. `tests/test_span_encoder.py` compares every shape of
span with the SDK's bytes, both ways.
"""

from __future__ import annotations

import struct
import threading
import time
from collections.abc import Generator, Iterable, Sequence
from typing import Any, Final, TypeAlias

from opentelemetry.exporter.otlp.proto.common._internal import (
    _encode_attributes,
    _encode_instrumentation_scope,
    _encode_resource,
)
from opentelemetry.exporter.otlp.proto.common._internal.trace_encoder import _SPAN_KIND_MAP
from opentelemetry.proto.trace.v1.trace_pb2 import ResourceSpans, ScopeSpans, Span, SpanFlags
from opentelemetry.proto.trace.v1.trace_pb2 import Status as PbStatus
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.util.instrumentation import InstrumentationScope as SdkScope
from opentelemetry.trace import Status, StatusCode
from opentelemetry.trace.span import DEFAULT_TRACE_STATE

from sidecar.telemetry.span_attributes import (
    TWO_BYTES,
    AttributeEncoder,
    bytes_format,
    varint,
)

# Spans encoded between two pauses that hand the GIL over (~0.2 ms of encoding), and the
# pause: long enough for a waiting thread to wake and take it, short for the exporter.
YIELD_EVERY: Final = 16
YIELD_FOR: Final = 0.0001
_SMALL_CACHE_SIZE: Final = 64  # resources and scopes: a handful in practice
_LOCAL: Final = SpanFlags.SPAN_FLAGS_CONTEXT_HAS_IS_REMOTE_MASK
_REMOTE: Final = _LOCAL | SpanFlags.SPAN_FLAGS_CONTEXT_IS_REMOTE_MASK
# Wire-format pieces: a length-delimited field's tag, and fixed fields as protobuf encodes
# them (enum members by identity: an enum's own hash and `.value` are Python calls).
_RESOURCE_SPANS: Final = b"\x0a"  # ExportTraceServiceRequest.resource_spans = 1
_SCOPE_SPANS: Final = b"\x12"  # ResourceSpans.scope_spans = 2
_SPANS: Final = b"\x12"  # ScopeSpans.spans = 2
_TRACE_ID: Final[bytes] = Span(trace_id=bytes(16)).SerializeToString()[:2]  # tag, length 16
_SPAN_ID: Final[bytes] = Span(span_id=bytes(8)).SerializeToString()[:2]
_PARENT_ID: Final[bytes] = Span(parent_span_id=bytes(8)).SerializeToString()[:2]
_START: Final[bytes] = Span(start_time_unix_nano=1).SerializeToString()[:1]  # tag, 8 bytes follow
_END: Final[bytes] = Span(end_time_unix_nano=1).SerializeToString()[:1]
_START_TAG: Final = _START[0]
_END_TAG: Final = _END[0]
_DROPPED_ATTRIBUTES: Final[bytes] = Span(dropped_attributes_count=1).SerializeToString()[:1]
_KIND_FIELDS: Final = {id(k): Span(kind=v).SerializeToString() for k, v in _SPAN_KIND_MAP.items()}
_STATUS_CODES: Final[dict[StatusCode, Any]] = {code: code.value for code in StatusCode}
_STATUS_FIELDS: Final = {  # a status without a message
    id(code): Span(status=PbStatus(code=value)).SerializeToString()
    for code, value in _STATUS_CODES.items()
}
_LOCAL_FLAGS: Final[bytes] = Span(flags=_LOCAL).SerializeToString()
_REMOTE_FLAGS: Final[bytes] = Span(flags=_REMOTE).SerializeToString()
_TIMES: Final = struct.Struct("<BQBQ").pack  # start and end: tag, fixed64 each
# A span's fields in field number order: trace and span id, then parent id, name, kind,
# times, attributes, dropped attributes, status and flags, each already a field or empty.
_BODY: Final = bytes_format(_TRACE_ID, _SPAN_ID, *[b""] * 9)
_SPAN_FIELD: Final = bytes_format(_SPANS, b"", b"")  # an entry of `ScopeSpans.spans`
_NO_GROUP: Final = object()
# Encoded spans in a row of one resource and scope (None for none): their `entry`s.
Run: TypeAlias = tuple[Resource, SdkScope | None, Sequence[bytes]]


def _field(tag: bytes, body: bytes) -> bytes:
    """A length-delimited field: its tag, the length of `body`, `body`."""
    return tag + varint(len(body)) + body


def _schema_url(url: str | None) -> bytes:
    # The `schema_url` of a ResourceSpans or a ScopeSpans: field 3 of both, absent if empty.
    encoded: bytes = ScopeSpans(schema_url=url or "").SerializeToString()
    return encoded


class SpanEncoder:
    """Ended spans to the bytes of the `ExportTraceServiceRequest` the SDK's `encode_spans` builds.

    The request is written as protobuf's wire format directly, field by field in field
    number order as protobuf serializes them, and only the length-delimited wrappers
    (a span in its scope, a scope in its resource, a resource in the request) are
    computed here: the fixed pieces come from protobuf itself, encoded once (tags,
    flags, kinds, a status without a message, a span's name, the resource and scope
    messages). A span's attributes are the encodings of one-attribute `Span`s
    (`AttributeEncoder`): concatenated encodings of a repeated field are the encoding
    of the list (the protobuf merge rule). Whatever is not plain (events, links, a
    status with a message, a span protobuf would refuse) is encoded by protobuf from
    the message the SDK builds, raising what it raises.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()  # the caches: one encoding at a time
        self._attributes = AttributeEncoder()
        self._status: Status | None = None  # the last status without a message, kept alive
        self._status_field = b""
        self._names: dict[str, bytes] = {}
        self._resources: dict[int, tuple[Resource, bytes]] = {}
        self._scopes: dict[int, tuple[SdkScope | None, bytes]] = {}

    @property
    def attributes(self) -> AttributeEncoder:
        """The encoder of span attributes, with its caches."""
        return self._attributes

    def serialize(self, spans: Sequence[ReadableSpan]) -> bytes:
        """The request for `spans`, serialized, handing the GIL over every `YIELD_EVERY` spans.

        For an exporter's own thread: between two slices it sleeps `YIELD_FOR`, letting
        the event loop take the GIL (it would wait up to the switch interval, 5 ms, for a
        thread that never lets go), so a batch stalls a request by one slice at most.
        """
        steps = self.steps(spans, YIELD_EVERY)
        while True:
            try:
                next(steps)
            except StopIteration as done:
                encoded: bytes = done.value
                return encoded
            time.sleep(YIELD_FOR)

    def steps(self, spans: Sequence[ReadableSpan], every: int) -> Generator[None, None, bytes]:
        """`serialize`'s request, encoded `every` spans at a time: a pause between two slices.

        The generator returns the bytes; whoever drives it decides what a pause is (a
        sleep on a thread). No lock is held across a pause.
        """
        runs: list[tuple[Resource, SdkScope | None, list[bytes]]] = []
        last: tuple[Any, Any] = (_NO_GROUP, _NO_GROUP)
        run: list[bytes] = []
        for start in range(0, len(spans), every):
            if start:
                yield
            with self._lock:  # the caches: one encoding at a time
                for span in spans[start : start + every]:
                    # As the SDK reads them: the span's group first, then the span.
                    resource = span.resource
                    scope = span.instrumentation_scope or None
                    if resource is not last[0] or scope is not last[1]:
                        last, run = (resource, scope), []
                        runs.append((resource, scope, run))
                    run.append(self._span(span))
        return self.request(runs)

    def entry(self, span: ReadableSpan) -> bytes:
        """`span` as an entry of its `ScopeSpans.spans`: tag, length, `Span`.

        Raises what the SDK's encoder raises for a span protobuf refuses. The entry goes
        in the group of the span's resource and scope (`request`).
        """
        with self._lock:  # the caches: one encoding at a time
            return self._span(span)

    def request(self, runs: Iterable[Run]) -> bytes:
        """The serialized request of encoded spans, given in runs of one resource and scope:
        `encode_spans(...).SerializeToString()` for the spans in that order.

        Runs group by resource then scope in order of first use, as in the SDK (equal
        resources, or scopes, share the first's group); the entries are joined as they
        are, inside their wrappers: one join, no work per span in Python.
        """
        groups: dict[Resource, dict[SdkScope | None, list[Sequence[bytes]]]] = {}
        for resource, scope, entries in runs:
            groups.setdefault(resource, {}).setdefault(scope, []).append(entries)
        pieces: list[bytes] = []
        with self._lock:
            # The first resource (scope) of each group is its key: the one the SDK encodes.
            for resource, scopes in groups.items():
                head, tail = self._resource(resource)
                at = len(pieces)
                pieces += (b"", head)  # b"": the tag and length, once the length is known
                size = len(head) + len(tail)
                for scope, parts in scopes.items():
                    scope_head, scope_tail = self._scope(scope)
                    body = len(scope_head) + len(scope_tail)
                    wrapper_at = len(pieces)
                    pieces += (b"", scope_head)
                    for entries in parts:
                        body += sum(map(len, entries))
                        pieces += entries
                    pieces.append(scope_tail)
                    pieces[wrapper_at] = wrapper = _SCOPE_SPANS + varint(body)
                    size += len(wrapper) + body
                pieces.append(tail)
                pieces[at] = _RESOURCE_SPANS + varint(size)
        return b"".join(pieces)

    def _span(self, span: ReadableSpan) -> bytes:
        """One span as an entry of its `ScopeSpans.spans`: tag, length, `Span`."""
        parent = span.parent
        start = span.start_time
        end = span.end_time
        try:
            # A `SpanContext` is the tuple its type declares: its fields at once, not
            # five property calls. What could be refused (ids, times out of range, an
            # unknown kind, a name that is not text) goes to protobuf, which raises as
            # the SDK does.
            trace_id, span_id, _, _, trace_state, _ = span.context
            if trace_state is not DEFAULT_TRACE_STATE and trace_state:
                return self._message(span)
            if parent:
                _, parent_id, remote, _, _, _ = parent
                parent_field = _PARENT_ID + parent_id.to_bytes(8, "big")
            else:
                parent_field = b""
                remote = False
            trace_bytes = trace_id.to_bytes(16, "big")
            span_bytes = span_id.to_bytes(8, "big")
            name = span.name
            name_field = self._names.get(name) or self._name(name)
            kind = _KIND_FIELDS[id(span.kind)]
            if start and end:
                times = _TIMES(_START_TAG, start, _END_TAG, end)
            else:
                times = (_START + start.to_bytes(8, "little") if start else b"") + (
                    _END + end.to_bytes(8, "little") if end else b""
                )
        except (AttributeError, KeyError, OverflowError, TypeError, ValueError, struct.error):
            return self._message(span)
        status = span.status
        if status is self._status:  # most spans share one (immutable) `Status`
            status_field = self._status_field
        elif status is None:
            status_field = b""
        else:
            if status.description is not None:
                return self._message(span)
            status_field = _STATUS_FIELDS.get(id(status.status_code)) or b""
            if not status_field:
                return self._message(span)
            self._status, self._status_field = status, status_field
        if span.events or span.links or span.dropped_events or span.dropped_links:
            return self._message(span)
        attributes = span.attributes
        dropped = span.dropped_attributes
        body = _BODY % (
            trace_bytes,
            span_bytes,
            parent_field,
            name_field,
            kind,
            times,
            self._attributes.encode(attributes) if attributes else b"",
            _DROPPED_ATTRIBUTES + varint(dropped) if dropped else b"",
            status_field,
            _REMOTE_FLAGS if remote else _LOCAL_FLAGS,
        )
        size = len(body)
        if 0x80 <= size < 0x4000:  # most spans: a two-byte length
            return _SPAN_FIELD % (TWO_BYTES(size & 0x7F | 0x80 | (size >> 7) << 8), body)
        return _SPAN_FIELD % (varint(size), body)

    def _name(self, name: str) -> bytes:
        if type(name) is not str:
            raise TypeError(name)
        encoded: bytes = Span(name=name).SerializeToString()
        if len(self._names) >= _SMALL_CACHE_SIZE:
            self._names.clear()
        self._names[name] = encoded
        return encoded

    def _message(self, span: ReadableSpan) -> bytes:
        """`span` encoded by protobuf from the message the SDK's encoder builds."""
        context = span.context
        parent = span.parent
        trace_state = context.trace_state
        events = span.events
        links = span.links
        status = span.status
        pb_status = None
        if status is not None:
            code: Any = status.status_code.value
            description: Any = status.description  # None leaves the message unset
            pb_status = PbStatus(code=code, message=description)
        build: Any = Span  # None leaves a field unset, as the SDK's encoder relies on
        message = build(
            trace_id=context.trace_id.to_bytes(16, "big"),
            span_id=context.span_id.to_bytes(8, "big"),
            trace_state=",".join([f"{k}={v}" for k, v in trace_state.items()])
            if trace_state
            else None,
            parent_span_id=parent.span_id.to_bytes(8, "big") if parent else None,
            name=span.name,
            kind=_SPAN_KIND_MAP[span.kind],
            start_time_unix_nano=span.start_time,
            end_time_unix_nano=span.end_time,
            events=[
                Span.Event(
                    name=event.name,
                    time_unix_nano=event.timestamp,
                    attributes=_encode_attributes(event.attributes),
                    dropped_attributes_count=event.dropped_attributes,
                )
                for event in events
            ]
            if events
            else None,
            links=[
                Span.Link(
                    trace_id=link.context.trace_id.to_bytes(16, "big"),
                    span_id=link.context.span_id.to_bytes(8, "big"),
                    attributes=_encode_attributes(link.attributes),
                    dropped_attributes_count=link.dropped_attributes,
                    flags=_REMOTE if link.context.is_remote else _LOCAL,
                )
                for link in links
            ]
            if links
            else None,
            status=pb_status,
            dropped_attributes_count=span.dropped_attributes,
            dropped_events_count=span.dropped_events,
            dropped_links_count=span.dropped_links,
            flags=_REMOTE if parent and parent.is_remote else _LOCAL,
        )
        attributes = span.attributes
        if attributes:
            message.MergeFromString(self._attributes.encode(attributes))
        return _field(_SPANS, message.SerializePartialToString())

    def _resource(self, resource: Resource) -> tuple[bytes, bytes]:
        """The `resource` field of the resource's `ResourceSpans` and its `schema_url` field."""
        # By identity (the entry keeps the object alive, so its id is not reused): equal
        # resources may list their attributes in another order.
        cached = self._resources.get(id(resource))
        if cached is None or cached[0] is not resource:
            if len(self._resources) >= _SMALL_CACHE_SIZE:
                self._resources.clear()
            head = ResourceSpans(resource=_encode_resource(resource)).SerializeToString()
            cached = self._resources[id(resource)] = resource, head
        return cached[1], _schema_url(resource.schema_url)

    def _scope(self, scope: SdkScope | None) -> tuple[bytes, bytes]:
        """The `scope` field of the scope's `ScopeSpans` and its `schema_url` field."""
        cached = self._scopes.get(id(scope))
        if cached is None or cached[0] is not scope:
            if len(self._scopes) >= _SMALL_CACHE_SIZE:
                self._scopes.clear()
            encoded = _encode_instrumentation_scope(scope)  # type: ignore[arg-type]  # None too
            head = ScopeSpans(scope=encoded).SerializeToString()
            cached = self._scopes[id(scope)] = scope, head
        return cached[1], _schema_url(scope.schema_url if scope else None)
