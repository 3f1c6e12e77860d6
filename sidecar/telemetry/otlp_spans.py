"""OTLP span export that builds the SDK's exact request for a fraction of its CPU.

The SDK's encoder turns every attribute of every span into a new `KeyValue` through a
chain of `isinstance` checks and Python calls (~100 µs for a client span's ~23
attributes), on the batch processor's thread, holding the GIL the event loop needs.
`SpanEncoder` builds the same `ExportTraceServiceRequest` with the same protobuf
classes, byte for byte: a pair of attribute key and value (str, bool, int, a tuple of
strings) that was encoded before is taken from a bounded cache (most of the sidecar's
values are labels: route, model, provider, outcome, status code), the resource and
scope messages are encoded once, and enum lookups go by identity. Whatever it does not
handle itself (other sequences, bytes, mappings, odd types, values protobuf refuses)
goes through the SDK's own functions, logging and dropping exactly as they do.

The two exporters are the SDK's, constructed alike (so they read every
`OTEL_EXPORTER_OTLP_*` as before), with the encoder swapped in: the gRPC exporter
translates through an overridable method; the HTTP exporter calls the module-level
encoder inside `export`, which is mirrored here. Those SDK internals are touched in
this module only, and `tests/test_otlp_spans.py` fails when they change.
"""

from __future__ import annotations

import functools
import threading
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Final

from opentelemetry.exporter.otlp.proto.common._internal import (
    _encode_attributes,
    _encode_instrumentation_scope,
    _encode_resource,
)
from opentelemetry.exporter.otlp.proto.common._internal.trace_encoder import _SPAN_KIND_MAP
from opentelemetry.exporter.otlp.proto.http import trace_exporter as _sdk_http
from opentelemetry.exporter.otlp.proto.http._common import (
    RequestPayloadTooLargeError,
    _is_request_too_large,
)
from opentelemetry.exporter.otlp.proto.http.trace_exporter import (
    OTLPSpanExporter as SdkHttpSpanExporter,
)
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import InstrumentationScope
from opentelemetry.proto.resource.v1.resource_pb2 import Resource as PbResource
from opentelemetry.proto.trace.v1.trace_pb2 import ResourceSpans, Span, SpanFlags
from opentelemetry.proto.trace.v1.trace_pb2 import Status as PbStatus
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult
from opentelemetry.sdk.util.instrumentation import InstrumentationScope as SdkScope
from opentelemetry.semconv.attributes.http_attributes import HTTP_RESPONSE_STATUS_CODE
from opentelemetry.trace import StatusCode

# Encoded (key, value) pairs kept (~100-200 KiB when full): far more than the sidecar's
# labels; ids and counts pass through it too, so a full cache is emptied and refills
# with what recurs (float values, timings, are never kept).
PAIR_CACHE_SIZE: Final = 1024
_SMALL_CACHE_SIZE: Final = 64  # resources and scopes: a handful in practice
# Enum members by identity: an enum's own hash and `.value` are Python calls.
_KINDS: Final = {id(kind): int(value) for kind, value in _SPAN_KIND_MAP.items()}
_STATUS_CODES: Final = {id(code): code.value for code in StatusCode}
_LOCAL: Final = SpanFlags.SPAN_FLAGS_CONTEXT_HAS_IS_REMOTE_MASK
_REMOTE: Final = _LOCAL | SpanFlags.SPAN_FLAGS_CONTEXT_IS_REMOTE_MASK
_NO_GROUP: Final = object()
_STR: Final = frozenset({str})


class SpanEncoder:
    """Ended spans to the `ExportTraceServiceRequest` the SDK's `encode_spans` builds.

    The request is built in place (a message added to another is deep-copied, ~0.5 µs
    per attribute). A span's attributes are merged into it from the protobuf encoding of
    one-attribute `Span`s, cached per (key, type, value) for plain values: parsing a
    concatenation of encoded messages appends their repeated fields in order (the
    protobuf merge rule), at a fifth of the cost of copying `KeyValue` messages.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()  # the scratch message: one encoding at a time
        self._scratch = Span()
        self._scratch_pair = self._scratch.attributes.add()
        self._scratch_value = self._scratch_pair.value
        self._pairs: dict[tuple[str, type, object], bytes] = {}
        self._resources: dict[int, tuple[Resource, PbResource]] = {}
        self._scopes: dict[int, tuple[SdkScope | None, InstrumentationScope]] = {}

    def encode(self, spans: Sequence[ReadableSpan]) -> ExportTraceServiceRequest:
        """The request for `spans`, grouped by resource then scope in order of first use."""
        request = ExportTraceServiceRequest()
        # Equal resources (scopes) share a group under the first one, as in the SDK.
        resources: dict[Resource, tuple[ResourceSpans, dict[SdkScope | None, Any]]] = {}
        last_resource: object = _NO_GROUP
        last_scope: object = _NO_GROUP
        added: Any = None
        with self._lock:
            for span in spans:
                resource = span.resource
                scope = span.instrumentation_scope or None
                if resource is not last_resource or scope is not last_scope:
                    added = self._group(request, resources, resource, scope)
                    last_resource, last_scope = resource, scope
                self._span(added, span)
        return request

    def _group(
        self,
        request: ExportTraceServiceRequest,
        resources: dict[Resource, tuple[ResourceSpans, dict[SdkScope | None, Any]]],
        resource: Resource,
        scope: SdkScope | None,
    ) -> Any:
        """The `add` of the spans of `resource` and `scope` in `request`, added if new."""
        entry = resources.get(resource)
        if entry is None:
            added = request.resource_spans.add(schema_url=resource.schema_url)
            added.resource.CopyFrom(self._resource(resource))
            entry = resources[resource] = added, {}
        resource_spans, scopes = entry
        spans_add = scopes.get(scope)
        if spans_add is None:
            scope_spans = resource_spans.scope_spans.add(
                schema_url=scope.schema_url if scope else None
            )
            scope_spans.scope.CopyFrom(self._scope(scope))
            spans_add = scopes[scope] = scope_spans.spans.add
        return spans_add

    def _span(self, add: Any, span: ReadableSpan) -> None:
        context = span.context
        parent = span.parent
        trace_state = context.trace_state
        events = span.events
        links = span.links
        status = span.status
        pb_status = None
        if status is not None:
            code: Any = _STATUS_CODES.get(id(status.status_code))
            if code is None:
                code = status.status_code.value
            description: Any = status.description  # None leaves the message unset
            pb_status = PbStatus(code=code, message=description)
        encoded = add(
            trace_id=context.trace_id.to_bytes(16, "big"),
            span_id=context.span_id.to_bytes(8, "big"),
            trace_state=",".join([f"{k}={v}" for k, v in trace_state.items()])
            if trace_state
            else None,
            parent_span_id=parent.span_id.to_bytes(8, "big") if parent else None,
            name=span.name,
            kind=_KINDS.get(id(span.kind)) or _SPAN_KIND_MAP[span.kind],
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
            encoded.MergeFromString(self.attributes(attributes))

    def attributes(self, attributes: Mapping[str, Any]) -> bytes:
        """A `Span` holding just `attributes`, encoded: the SDK's `_encode_attributes` alike."""
        pairs = self._pairs
        encoded = []
        for key, value in attributes.items():
            kind = type(value)
            pair: bytes | None = None
            if (
                kind is str
                or kind is int
                or kind is bool
                or (kind is tuple and _STR.issuperset(map(type, value)))
            ):
                # The type is part of the key: True == 1 == 1.0 as dict keys (hence
                # only tuples of strings: (1,) == (True,)).
                pair = pairs.get((key, kind, value))
                if pair is None:
                    pair = self._pair(key, kind, value)
                    if pair is not None:
                        if len(pairs) >= PAIR_CACHE_SIZE:
                            pairs.clear()
                        pairs[key, kind, value] = pair
            elif kind is float:
                pair = self._pair(key, kind, value)
            encoded.append(self._sdk_pair(key, value) if pair is None else pair)
        return b"".join(encoded)

    def _pair(self, key: str, kind: type, value: Any) -> bytes | None:
        """One plain attribute, encoded; None when it cannot be (the SDK then reports it)."""
        # The scratch span's one attribute is overwritten: setting a member of the value's
        # oneof clears the others, and a member set to its default is still encoded.
        if kind is tuple:  # of strings (finish reasons, stop sequences): rare enough
            return self._sdk_pair(key, value) or None
        pair, encoded_value = self._scratch_pair, self._scratch_value
        try:
            pair.key = key
            if kind is str:
                encoded_value.string_value = value
            elif kind is bool:
                encoded_value.bool_value = value
            elif kind is int:
                encoded_value.int_value = value
            else:
                encoded_value.double_value = value
        except (TypeError, ValueError):
            return None
        encoded: bytes = self._scratch.SerializeToString()
        return encoded

    @staticmethod
    def _sdk_pair(key: str, value: Any) -> bytes:
        encoded: bytes = Span(attributes=_encode_attributes({key: value})).SerializeToString()
        return encoded

    def _resource(self, resource: Resource) -> PbResource:
        # By identity (the entry keeps the object alive, so its id is not reused): equal
        # resources may list their attributes in another order.
        cached = self._resources.get(id(resource))
        if cached is None or cached[0] is not resource:
            if len(self._resources) >= _SMALL_CACHE_SIZE:
                self._resources.clear()
            cached = self._resources[id(resource)] = resource, _encode_resource(resource)
        return cached[1]

    def _scope(self, scope: SdkScope | None) -> InstrumentationScope:
        cached = self._scopes.get(id(scope))
        if cached is None or cached[0] is not scope:
            if len(self._scopes) >= _SMALL_CACHE_SIZE:
                self._scopes.clear()
            encoded = _encode_instrumentation_scope(scope)  # type: ignore[arg-type]  # None too
            cached = self._scopes[id(scope)] = scope, encoded
        return cached[1]


@functools.cache
def _grpc_exporter_class() -> Callable[..., SpanExporter]:
    # Imported on first use: gRPC is loaded only where spans are exported over it.
    from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter

    class GrpcSpanExporter(OTLPSpanExporter):
        """The SDK's OTLP/gRPC span exporter, translating spans with a `SpanEncoder`."""

        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self._encoder = SpanEncoder()

        def _translate_data(self, data: Sequence[ReadableSpan]) -> ExportTraceServiceRequest:
            return self._encoder.encode(data)

    return GrpcSpanExporter


def grpc_span_exporter(endpoint: str | None) -> SpanExporter:
    """The SDK's OTLP/gRPC span exporter for `endpoint` (None: from `OTEL_*`), cheaper."""
    return _grpc_exporter_class()(endpoint=endpoint)


class HttpSpanExporter(SdkHttpSpanExporter):
    """The SDK's OTLP/HTTP span exporter, encoding spans with a `SpanEncoder`.

    `export` is the SDK's, statement for statement, but for the encoder: same shutdown
    check, exporter metrics, size limit, client call, results and log lines.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._encoder = SpanEncoder()

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        """Encode `spans` and POST them, as the SDK's exporter does."""
        logger = _sdk_http._logger
        if self._shutdown:
            logger.warning("Exporter already shutdown, ignoring batch")
            return SpanExportResult.FAILURE

        with self._metrics.export_operation(len(spans)) as result:
            try:
                serialized_data = self._encoder.encode(spans).SerializePartialToString()
            except Exception as error:  # reported as the SDK reports it
                logger.error("Failed to encode span batch: %s", error)
                result.error = error
                return SpanExportResult.FAILURE

            if _is_request_too_large(serialized_data, self._max_request_size):
                logger.warning(
                    "Dropping span batch: serialized size %d bytes exceeds max_request_size"
                    " %d bytes.",
                    len(serialized_data),
                    self._max_request_size,
                )
                result.error = RequestPayloadTooLargeError(
                    f"Serialized span request size {len(serialized_data)} "
                    f"bytes exceeds max_request_size "
                    f"{self._max_request_size} bytes."
                )
                return SpanExportResult.FAILURE

            export_result = self._client.export(serialized_data)
            if not export_result.success:
                result.error = export_result.error
                result.error_attrs = (
                    {HTTP_RESPONSE_STATUS_CODE: export_result.status_code}
                    if export_result.status_code is not None
                    else None
                )
                return SpanExportResult.FAILURE
        return SpanExportResult.SUCCESS
