"""Telemetry for one running config: spans, metrics and logs, recorded once per stream.

`Telemetry` is built from the config and the SDK's environment (`from_config`); it
starts and ends the request's SERVER span and writes `traceparent` here, records a
Claude call through `StreamTelemetry` (`stream_telemetry`) and counts the rest through
`Counters` (`counters`), on the state both share (`state`).
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import Any, Final

from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.sdk.metrics.export import MetricReader, PeriodicExportingMetricReader
from opentelemetry.sdk.trace.export import SpanExporter
from opentelemetry.trace import (
    INVALID_SPAN_CONTEXT,
    Span,
    SpanKind,
    Status,
    StatusCode,
    format_span_id,
    format_trace_id,
)
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from sidecar.config import TelemetryConfig
from sidecar.telemetry.bounded import MAX_TEXT, MAX_USER_AGENT, encodable, short_text
from sidecar.telemetry.closing import shutdown_providers
from sidecar.telemetry.counters import Counters
from sidecar.telemetry.providers import build_providers, sdk_disabled
from sidecar.telemetry.semconv import (
    KNOWN_METHODS,
    NO_ROUTE,
    OTHER_METHOD,
    gen_ai_names,
    server_address,
    server_span_name,
)
from sidecar.telemetry.span import SidecarSpan
from sidecar.telemetry.state import continued
from sidecar.telemetry.stream_telemetry import StreamTelemetry

_NO_PARENT: Final = Context()
_FLAGS_HEX: Final = tuple(f"{flags:02x}" for flags in range(256))  # trace flags are one byte


class Telemetry(StreamTelemetry, Counters):
    """Spans, metrics and logs of one sidecar; build with `from_config`."""

    @classmethod
    def from_config(
        cls,
        config: TelemetryConfig,
        *,
        span_exporter: SpanExporter | None = None,
        metric_reader: MetricReader | None = None,
    ) -> Telemetry:
        """Providers from config and the SDK's own `OTEL_*` environment (the environment wins).

        Exporters and readers may be injected (tests). `OTEL_SEMCONV_STABILITY_OPT_IN`
        picks the GenAI names (see `semconv`).
        """
        if sdk_disabled():
            return cls(config, None)
        providers = build_providers(config, span_exporter, metric_reader)
        return cls(config, providers, gen_ai_names())

    @property
    def enabled(self) -> bool:
        """False when nothing records (`OTEL_SDK_DISABLED=true`, or no exporter at all)."""
        return self._providers is not None

    def pushed_metrics_interval(self) -> float | None:
        """Seconds between the metric exports a reader pushes on its own (OTLP, every
        `OTEL_METRIC_EXPORT_INTERVAL`), the shortest if several; None when metrics are
        only pulled (a Prometheus scrape collects, and checks readiness, as it comes)."""
        if self._providers is None:
            return None
        intervals = [
            reader._export_interval_millis / 1000
            for reader in self._providers.readers
            if isinstance(reader, PeriodicExportingMetricReader)
        ]
        return min(intervals) if intervals else None

    # ------------------------------------------------------------------ traces

    def extract(self, headers: Mapping[str, str]) -> Context:
        """The caller's W3C trace context (empty context when there is none); with
        `OTEL_PROPAGATORS` other than W3C trace context, what those propagators extract."""
        custom = self._custom_propagator
        if custom is not None:
            return custom.extract(headers)
        if "traceparent" not in headers:
            # What the propagator returns without the header (`tracestate` alone means
            # nothing), without its getter calls per request; a Context is immutable.
            return _NO_PARENT
        return self._propagator.extract(headers)

    def start_server_span(
        self,
        parent: Context,
        *,
        method: str,
        route: str,
        path: str,
        scheme: str,
        version: str = "",
        host: str = "",
        user_agent: str | None = None,
        client_address: str = "",
    ) -> Span:
        """The SERVER span of one request, a child of the caller's span when there is one.

        Named and attributed per the HTTP server conventions; a method outside the known
        set is `_OTHER` (the client's spelling kept in `http.request.method_original`), and
        a request no route matched (`NO_ROUTE`) has no `http.route` and a name without one.
        The recommended ones too, when given: `network.protocol.version` (`version`),
        `server.address` / `server.port` (the request's `host`), `user_agent.original`
        (cut to `MAX_USER_AGENT` characters) and `client.address` (cut to `MAX_TEXT`).
        """
        spans = self.spans
        if spans is None:
            return continued(trace.get_current_span(parent))
        known = method if method in KNOWN_METHODS else OTHER_METHOD  # `http_method`, inline
        if len(path) > MAX_TEXT:  # `short_text`, inline: the client chose it, spans bound it
            path = path[:MAX_TEXT]
        attributes: dict[str, Any] = {
            "http.request.method": known, "url.path": path, "url.scheme": scheme,
        }  # fmt: skip
        if route != NO_ROUTE:  # `http.route` names a matched route only
            attributes["http.route"] = route
        if known != method:
            attributes["http.request.method_original"] = short_text(method)
        if version:
            attributes["network.protocol.version"] = version
        if host:
            attributes["server.address"], attributes["server.port"] = server_address(host, scheme)
        if user_agent:
            user_agent = user_agent[:MAX_USER_AGENT]
            if not user_agent.isascii():  # bytes past ASCII, as sent: `encodable`
                user_agent = encodable(user_agent)
            attributes["user_agent.original"] = user_agent
        if client_address:
            if len(client_address) > MAX_TEXT:  # a trusted proxy's non-address hop, as sent
                client_address = client_address[:MAX_TEXT]
            attributes["client.address"] = client_address
        return spans.start(server_span_name(method, route), SpanKind.SERVER, attributes, parent)

    def end_server_span(
        self, span: Span, status: int, *, client_gone: bool = False, cut: str = ""
    ) -> None:
        """End a request's span with its status (5xx is an error, 4xx is the client's);
        `client_gone`: the connection ended before the answer did (`sidecar.client_gone`);
        `cut`: the sidecar cut the answer mid-body for the upstream's fault (its reason is
        the span's `error.type`, the span an error, whatever status the head carried)."""
        span.set_attribute("http.response.status_code", status)
        if client_gone:
            span.set_attribute("sidecar.client_gone", True)
        if cut:
            span.set_attribute("error.type", cut)
            span.set_status(Status(StatusCode.ERROR))
        elif status >= 500:  # `server_error_type`, inline (per request)
            span.set_attribute("error.type", str(status))
            span.set_status(Status(StatusCode.ERROR))
        span.end()

    def inject(self, span: Span, headers: dict[str, str]) -> None:
        """Add `traceparent` (+ `tracestate`) naming `span` as the parent.

        Writes what `TraceContextTextMapPropagator.inject` writes for this span, without
        first wrapping the span in a new Context for the propagator to unwrap (once
        per Claude call). tests/test_telemetry_core.py holds the two to the same output.
        With `OTEL_PROPAGATORS` other than W3C trace context, those propagators write.
        """
        custom = self._custom_propagator
        if custom is not None:  # the caller's context too (its baggage), with `span` current
            caller = span._caller if type(span) is SidecarSpan else None
            custom.inject(headers, context=trace.set_span_in_context(span, caller))
            return
        context = span.get_span_context()
        if type(span) is SidecarSpan:  # always valid; its hex ids are formatted once
            trace_id, span_id = span.ids()
            headers["traceparent"] = f"00-{trace_id}-{span_id}-{_FLAGS_HEX[context.trace_flags]}"
            if context.trace_state:
                headers["tracestate"] = context.trace_state.to_header()
            return
        if context == INVALID_SPAN_CONTEXT:
            return
        headers["traceparent"] = (
            f"00-{format_trace_id(context.trace_id)}-{format_span_id(context.span_id)}"
            f"-{context.trace_flags:02x}"
        )
        if context.trace_state:
            headers["tracestate"] = context.trace_state.to_header()

    # ------------------------------------------------------------------ export

    def prometheus(self) -> tuple[bytes, str]:
        """Body and content type for `GET /metrics`."""
        if self._providers is None:
            return b"", CONTENT_TYPE_LATEST
        return generate_latest(self._providers.registry), CONTENT_TYPE_LATEST

    def close_by(self, deadline: float) -> None:
        """The last exports (`close`) end by `deadline` (`time.monotonic()`): the exit's."""
        self._close_deadline = deadline

    def shutdown(self, deadline: float | None = None) -> None:
        """Flush and stop exporters (spans in batches, periodic metrics); blocking.

        Done or given up by `deadline` (`time.monotonic()`), else by the one `close_by`
        gave, else `closing.DEFAULT_SECONDS` from now (see `closing`)."""
        if self._providers is None:
            return
        shutdown_providers(self._providers, deadline or self._close_deadline)

    async def close(self) -> None:
        """`shutdown` off the event loop: the last export is blocking network I/O."""
        await asyncio.to_thread(self.shutdown)
