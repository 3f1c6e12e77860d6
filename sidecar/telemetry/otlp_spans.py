"""The SDK's OTLP span exporters, sending the `SpanEncoder`'s bytes of the SDK's request.

The two exporters are the SDK's, constructed alike (so they read every
`OTEL_EXPORTER_OTLP_*` as before), with the encoder swapped in (`span_encoder`): the
HTTP exporter calls the module-level encoder inside `export`, which is mirrored here,
and posts through the SDK's transport with an `ExportSession` (`otlp_session`); the
gRPC exporter translates through an overridable method and sends through a stub set
up with its channel, here one that takes the request already serialized. Those SDK
internals are touched in this module only, and `tests/test_otlp_spans.py` fails when
they change.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable, Sequence
from typing import Any

import requests
from opentelemetry.exporter.otlp.proto.http import trace_exporter as _sdk_http
from opentelemetry.exporter.otlp.proto.http._common import (
    RequestPayloadTooLargeError,
    _is_request_too_large,
)
from opentelemetry.exporter.otlp.proto.http.trace_exporter import (
    OTLPSpanExporter as SdkHttpSpanExporter,
)
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult
from opentelemetry.semconv.attributes.http_attributes import HTTP_RESPONSE_STATUS_CODE

from sidecar.telemetry.otlp_session import export_session
from sidecar.telemetry.span_encoder import SpanEncoder


@functools.cache
def _grpc_exporter_class() -> Callable[..., SpanExporter]:
    # Imported on first use: gRPC is loaded only where spans are exported over it.
    from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
    from opentelemetry.proto.collector.trace.v1 import trace_service_pb2

    service = trace_service_pb2.DESCRIPTOR.services_by_name["TraceService"]
    method = f"/{service.full_name}/{service.methods_by_name['Export'].name}"

    class SerializedStub:
        """The trace service's stub, its `Export` taking the request already serialized."""

        def __init__(self, channel: Any) -> None:
            self.Export = channel.unary_unary(  # the SDK calls it by the service's name
                method,
                response_deserializer=trace_service_pb2.ExportTraceServiceResponse.FromString,
            )  # no request serializer: the bytes go out as they are

    class GrpcSpanExporter(OTLPSpanExporter):
        """The SDK's OTLP/gRPC span exporter, its requests written by a `SpanEncoder`.

        The SDK's exporter hands `_translate_data`'s request to its stub, which serializes
        it: here the request is the encoder's bytes, sent by a stub without a serializer
        (set up wherever the SDK sets up its channel and stub, reconnections included).
        """

        def __init__(self, *args: Any, **kwargs: Any) -> None:
            self._encoder = SpanEncoder()
            super().__init__(*args, **kwargs)

        def _initialize_channel_and_stub(self) -> None:
            super()._initialize_channel_and_stub()  # type: ignore[no-untyped-call]
            self._client = SerializedStub(self._channel)  # type: ignore[assignment]  # None first

        def _translate_data(self, data: Sequence[ReadableSpan]) -> bytes:  # type: ignore[override]
            return self._encoder.serialize(data)

    return GrpcSpanExporter


def grpc_span_exporter(endpoint: str | None) -> SpanExporter:
    """The SDK's OTLP/gRPC span exporter for `endpoint` (None: from `OTEL_*`), cheaper."""
    return _grpc_exporter_class()(endpoint=endpoint)


class HttpSpanExporter(SdkHttpSpanExporter):
    """The SDK's OTLP/HTTP span exporter, encoding spans with a `SpanEncoder`.

    `export` is the SDK's, statement for statement, but for the encoder: same shutdown
    check, exporter metrics, size limit, client call, results and log lines. It posts
    through the SDK's own transport and client with an `ExportSession`. Once given a
    deadline (`finish_by`, at exit) each post's time, retries included, is cut to it.
    """

    def __init__(self, *args: Any, session: requests.Session | None = None, **kwargs: Any) -> None:
        # The SDK's `requests` transport over a session that reads the environment once
        # (`otlp_session`), unless the caller gives one or a credential provider makes it.
        init: Any = super().__init__  # its overloads: one with `_transport`, one without
        init(*args, session=session or export_session(), **kwargs)
        self._encoder = SpanEncoder()
        # A post's own limit (`OTEL_EXPORTER_OTLP_TIMEOUT`, retries included: the SDK's
        # client's `_timeout`), and the time (`time.monotonic()`) no post may outlast
        # once set (`finish_by`: the exit's last exports).
        self._post_timeout: float = self._client._timeout
        self._deadline: float | None = None

    def finish_by(self, deadline: float) -> None:
        """From now on every post (retries included) ends by `deadline` (`time.monotonic()`),
        or within its own `OTEL_EXPORTER_OTLP_TIMEOUT` when that is sooner; a post past
        it is not sent."""
        self._deadline = deadline

    @property
    def encoder(self) -> SpanEncoder:
        """The exporter's encoder: a processor that encodes elsewhere (`loop_spans`) uses it."""
        return self._encoder

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        """Encode `spans` and POST them, as the SDK's exporter does."""
        return self.send(spans, len(spans))

    def send(self, spans: Sequence[ReadableSpan] | bytes, count: int) -> SpanExportResult:
        """POST `count` spans, given as spans or as the encoder's bytes of them.

        The SDK's `export`, statement for statement, but for the encoder: the same
        shutdown check, exporter metrics, size limit, client call, results and log lines.
        """
        logger = _sdk_http._logger
        if self._shutdown:
            logger.warning("Exporter already shutdown, ignoring batch")
            return SpanExportResult.FAILURE

        with self._metrics.export_operation(count) as result:
            if isinstance(spans, bytes):
                serialized_data = spans
            else:
                try:
                    serialized_data = self._encoder.serialize(spans)
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

            if self._deadline is not None:  # the exit's last exports: within its deadline
                left = self._deadline - time.monotonic()
                if left <= 0:
                    logger.warning("Dropping span batch: the export deadline passed")
                    result.error = TimeoutError("export deadline passed")
                    return SpanExportResult.FAILURE
                self._client._timeout = min(self._post_timeout, left)
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
