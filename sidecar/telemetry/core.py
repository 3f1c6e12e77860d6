"""Telemetry for one running config: spans, metrics and logs, recorded once per stream.

The hot path only fills a `StreamRecord`; `finish_stream` turns it into the span's
attributes, every histogram and the log line in one call at the end. Nothing here
runs per event.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from collections.abc import Mapping
from typing import Any, Final, TypeVar

from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.metrics import NoOpMeterProvider
from opentelemetry.sdk.metrics.export import MetricReader
from opentelemetry.sdk.trace.export import SpanExporter
from opentelemetry.trace import (
    INVALID_SPAN_CONTEXT,
    NonRecordingSpan,
    Span,
    SpanKind,
    Status,
    StatusCode,
    format_span_id,
    format_trace_id,
)
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from sidecar.config import ModelPrice, TelemetryConfig
from sidecar.record import OPERATION, StreamRecord
from sidecar.telemetry import streams
from sidecar.telemetry.bounded import error_labels, model_labels
from sidecar.telemetry.content import output_messages, request_content
from sidecar.telemetry.cost import cost_usd, price_for
from sidecar.telemetry.health import Health
from sidecar.telemetry.histograms import AttributeSet
from sidecar.telemetry.instruments import Instruments
from sidecar.telemetry.logs import log_event
from sidecar.telemetry.providers import Providers, build_providers, sdk_disabled
from sidecar.telemetry.semconv import (
    DEFAULT,
    KNOWN_METHODS,
    OTHER_METHOD,
    GenAiNames,
    gen_ai_names,
    http_method,
)
from sidecar.telemetry.span import SidecarSpan
from sidecar.telemetry.spans import Spans

_CACHE_LIMIT: Final = 1024  # entries per memo below; cleared when full (keys may come from clients)
_ADMITTED: Final = AttributeSet({"sidecar.queue.admitted": True})
_NOT_ADMITTED: Final = AttributeSet({"sidecar.queue.admitted": False})
_NO_PARENT: Final = Context()

_K = TypeVar("_K")
_V = TypeVar("_V")

stream_log = logging.getLogger("sidecar.stream")
access_log = logging.getLogger("sidecar.access")
reject_log = logging.getLogger("sidecar.reject")


def _hashed(value: str) -> str:
    """The pseudonym of a user or tenant: the first 16 hex digits of its SHA-256.

    `Telemetry` keeps each value's pseudonym (bounded): hashed once per distinct value.
    """
    return hashlib.sha256(value.encode()).hexdigest()[:16]


def span_ids(span: Span | None) -> dict[str, str]:
    """`trace_id` / `span_id` of a span for log lines (nothing for an invalid span)."""
    if type(span) is SidecarSpan:  # always valid; its hex ids are formatted once
        trace_id, span_id = span.ids()
        return {"trace_id": trace_id, "span_id": span_id}
    context = span.get_span_context() if span is not None else None
    if context is None or not context.is_valid:
        return {}
    return {"trace_id": f"{context.trace_id:032x}", "span_id": f"{context.span_id:016x}"}


def _continued(span: Span) -> Span:
    """What the no-op tracer starts under `span`: `span` itself when it does not record."""
    return span if isinstance(span, NonRecordingSpan) else NonRecordingSpan(span.get_span_context())


class Telemetry:
    """Spans, metrics and logs of one sidecar; build with `from_config`."""

    def __init__(
        self, config: TelemetryConfig, providers: Providers | None, names: GenAiNames = DEFAULT
    ) -> None:
        self.config = config
        self.names = names
        self._providers = providers
        self._propagator = TraceContextTextMapPropagator()
        # The request and Claude call spans (tests swap in the SDK's tracer to compare).
        # Off (no providers) they are the no-op tracer's: the caller's context goes on,
        # so `traceparent` is forwarded unchanged to Claude and the app.
        self.spans: Spans | None = (
            Spans(providers.tracer_provider, providers.span_processors) if providers else None
        )
        meter_provider: Any = providers.meter_provider if providers else NoOpMeterProvider()
        meter = meter_provider.get_meter("claude-sidecar")
        self.instruments = Instruments(meter, names)
        self.health = Health(meter)
        # Off (no providers): spans do not record and no reader ever collects, so the
        # per-call attribute dicts and measurements below are skipped, not built for nothing.
        self._on = providers is not None
        # Memos of values derived per call from a few distinct inputs, each bounded
        # (`_remember`). A Telemetry is the process's (a reload keeps it: `telemetry`
        # changes need a restart), and what the memos derive from is fixed with it.
        self._routes: dict[str, AttributeSet] = {}
        self._prices: dict[str, ModelPrice | None] = {}
        self._identities: dict[str, str | None] = {}  # user / tenant -> as logged
        self._stream_sets: dict[tuple[Any, ...], streams.StreamSets] = {}
        self._durations: dict[tuple[str, str, str, int], AttributeSet] = {}
        self._statuses: dict[int, AttributeSet] = {}
        self._rejections: dict[tuple[str, str, int], AttributeSet] = {}
        # Client-chosen values reach metrics and spans only through these (bounded).
        self.models = model_labels(config.prices)
        self._errors = error_labels()

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

    # ------------------------------------------------------------------ traces

    def extract(self, headers: Mapping[str, str]) -> Context:
        """The caller's W3C trace context (empty context when there is none)."""
        if "traceparent" not in headers:
            # What the propagator returns without the header (`tracestate` alone means
            # nothing), without its getter calls per request; a Context is immutable.
            return _NO_PARENT
        return self._propagator.extract(headers)

    def start_server_span(
        self, parent: Context, *, method: str, route: str, path: str, scheme: str
    ) -> Span:
        """The SERVER span of one request, a child of the caller's span when there is one.

        Named and attributed per the HTTP server conventions; a method outside the known
        set is `_OTHER` (the client's spelling kept in `http.request.method_original`).
        """
        spans = self.spans
        if spans is None:
            return _continued(trace.get_current_span(parent))
        known = method if method in KNOWN_METHODS else OTHER_METHOD  # `http_method`, inline
        attributes: dict[str, Any] = {
            "http.request.method": known, "http.route": route, "url.path": path,
            "url.scheme": scheme,
        }  # fmt: skip
        if known != method:
            attributes["http.request.method_original"] = method
        name = f"{method if known == method else 'HTTP'} {route}"
        return spans.start(name, SpanKind.SERVER, attributes, parent)

    def end_server_span(self, span: Span, status: int) -> None:
        """End a request's span with its status (5xx is an error, 4xx is the client's)."""
        span.set_attribute("http.response.status_code", status)
        if status >= 500:
            span.set_attribute("error.type", str(status))
            span.set_status(Status(StatusCode.ERROR))
        span.end()

    def inject(self, span: Span, headers: dict[str, str]) -> None:
        """Add `traceparent` (+ `tracestate`) naming `span` as the parent.

        Writes what `TraceContextTextMapPropagator.inject` writes for this span, without
        first wrapping the span in a new Context for the propagator to unwrap (once
        per Claude call). tests/test_telemetry_core.py holds the two to the same output.
        """
        context = span.get_span_context()
        if type(span) is SidecarSpan:  # always valid; its hex ids are formatted once
            trace_id, span_id = span.ids()
            headers["traceparent"] = f"00-{trace_id}-{span_id}-{context.trace_flags:02x}"
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

    def start_stream(self, record: StreamRecord, parent: Span, body: bytes = b"") -> Span:
        """The CLIENT span `chat {model}` of one Claude call under `parent` (the request's
        span); ends in `finish_stream`.

        Only what the request to Claude needs happens here: the span starts (Claude is
        sent its id). The rest of the start (the `stream_start` line, the active-stream
        count and the queue wait point) is `stream_started`, which the caller runs once
        the request is written, while Claude works on it; `finish_stream` runs it first
        if the call ended before that.
        """
        if self.config.capture_content:
            record.capture = True
            record.system_text, record.prompt_text = request_content(body)
        model = record.request_model
        # `self.models(model)`, called only for a model not already known to pass.
        record.model_label = model if model in self.models.passing else self.models(model)
        record.pending_start = True
        spans = self.spans
        if spans is None:
            return _continued(parent)
        return spans.start_child(
            f"{OPERATION} {record.model_label}",
            SpanKind.CLIENT,
            streams.start_attributes(record),
            parent,
        )

    def stream_started(self, record: StreamRecord, span: Span, parent: Span | None = None) -> None:
        """The deferred half of `start_stream`: the `stream_start` line and, for an admitted
        call, its active-stream count and queue wait point; the start attributes of `span`
        and `parent` (the request's span) are stored (`SidecarSpan.store_pending`). Runs
        once per stream (again: no effect), at the latest when the stream finishes."""
        if not record.pending_start:
            return
        record.pending_start = False
        try:
            if type(span) is SidecarSpan:
                span.store_pending()
            if type(parent) is SidecarSpan:
                parent.store_pending()
            # Ids, identity hashes and trace ids are the same on both stream lines: once.
            record.log_base = self._log_base(record, span)
            if stream_log.isEnabledFor(logging.INFO):
                fields = {"event": "stream_start", **record.log_base}
                log_event(stream_log, logging.INFO, "stream_start", fields)
            if record.admitted:
                self._count_admitted(record)
        except Exception:  # telemetry must never break a response
            stream_log.exception("telemetry failed for a stream")

    def admitted(self, record: StreamRecord) -> None:
        """The call got a stream slot: active until `finish_stream`; its queue wait recorded
        (by `stream_started` when the start is still pending, as it is in a call)."""
        record.admitted = True
        if not record.pending_start:
            self._count_admitted(record)

    def _count_admitted(self, record: StreamRecord) -> None:
        if not self._on:
            return
        try:
            route = self._routes[record.route]
        except KeyError:
            route = self._route_attributes(record.route)
        instruments = self.instruments
        instruments.active_streams.add(1, route)
        instruments.queue_wait.record(record.queue_wait, _ADMITTED)

    def finish_stream(self, record: StreamRecord, span: Span) -> None:
        """Everything about a finished stream, once: span attributes, metrics, log line."""
        try:
            self._finish(record, span)
        except Exception:  # telemetry must never break a response
            stream_log.exception("telemetry failed for a stream")
            if span.is_recording():
                span.end()

    def _finish(self, record: StreamRecord, span: Span) -> None:
        if record.pending_start:  # ended before its request was written: start first
            self.stream_started(record, span)
        ended = record.ended or record.last_chunk_at or record.started
        failed = record.outcome not in streams.NOT_FAILED  # `streams.failed`, inline
        # The bounded labels, each asked only for a value not already known to pass.
        model = record.response_model
        if model is not None:
            record.response_model_label = (
                model if model in self.models.passing else self.models(model)
            )
        error = record.error_type
        if error is not None:  # else the label stays its default, `_OTHER`
            record.error_label = error if error in self._errors.passing else self._errors(error)
        base = record.log_base if record.log_base is not None else self._log_base(record, span)
        if span.is_recording():  # not when off or sampled out
            self._end_attributes(record, span, failed, base)
        span.end()

        model = record.request_model
        try:
            price = self._prices[model]
        except KeyError:
            price = self._price(model)
        cost = cost_usd(price, record) if price is not None else None
        if self._on:
            inst = self.instruments
            # What `StreamSets` depends on (the conventions are this Telemetry's own).
            key = (
                record.model_label, record.response_model_label, record.server_address,
                record.server_port, record.error_label if failed else None, record.outcome,
                record.route,
            )  # fmt: skip
            try:
                sets = self._stream_sets[key]
            except KeyError:
                sets = self._remember(
                    self._stream_sets, key, streams.StreamSets(record, failed, inst.names.latest)
                )
            if record.admitted:
                try:
                    route = self._routes[record.route]
                except KeyError:
                    route = self._route_attributes(record.route)
                inst.active_streams.add(-1, route)
            if cost:
                inst.cost.add(cost, sets.cost)
            streams.record_metrics(inst, record, ended, failed, sets)
        if failed:
            if stream_log.isEnabledFor(logging.WARNING):
                fields = streams.log_fields("stream_error", base, record, ended, cost)
                log_event(stream_log, logging.WARNING, "stream_error", fields)
        elif stream_log.isEnabledFor(logging.INFO):
            fields = streams.log_fields("stream_complete", base, record, ended, cost)
            log_event(stream_log, logging.INFO, "stream_complete", fields)

    def _end_attributes(
        self, record: StreamRecord, span: Span, failed: bool, base: dict[str, Any]
    ) -> None:
        # One `set_attributes`: the SDK cleans and locks once per call, not per group.
        attributes = streams.end_attributes(record, failed, self.names)
        if "user" in base:
            attributes["sidecar.user"] = base["user"]
        if "tenant" in base:
            attributes["sidecar.tenant"] = base["tenant"]
        if record.capture:
            if record.system_text is not None:
                attributes["gen_ai.system_instructions"] = record.system_text
            if record.prompt_text is not None:
                attributes["gen_ai.input.messages"] = record.prompt_text
            if record.completion_parts or record.stop_reason is not None:
                attributes["gen_ai.output.messages"] = output_messages(record)
        span.set_attributes(attributes)
        if failed:
            span.set_status(
                Status(
                    StatusCode.ERROR, record.error_label if record.error_type else record.outcome
                )
            )

    def _identity(self, value: str) -> str | None:
        """A user or tenant as logged and put on spans (None: not carried); memoized."""
        try:
            return self._identities[value]
        except KeyError:
            mode = self.config.user_attribute
            shown = None if mode == "none" else value if mode == "plain" else _hashed(value)
            return self._remember(self._identities, value, shown)

    def _log_base(self, record: StreamRecord, span: Span) -> dict[str, Any]:
        """The fields both stream lines share (`event` goes first, added by the caller)."""
        fields: dict[str, Any] = {
            "request_id": record.request_id,
            "route": record.route,
            "model": record.request_model,
            "stream": record.stream,
        }
        if type(span) is SidecarSpan:  # `span_ids`, inline
            fields["trace_id"], fields["span_id"] = span.ids()
        else:
            fields.update(span_ids(span))
        identities = self._identities
        if record.user is not None:
            try:
                user = identities[record.user]
            except KeyError:
                user = self._identity(record.user)
            if user is not None:
                fields["user"] = user
        if record.tenant is not None:
            try:
                tenant = identities[record.tenant]
            except KeyError:
                tenant = self._identity(record.tenant)
            if tenant is not None:
                fields["tenant"] = tenant
        return fields

    @staticmethod
    def _remember(memo: dict[_K, _V], key: _K, value: _V) -> _V:
        """Store `value` under `key` in `memo`, emptied first when full; returns `value`."""
        if len(memo) >= _CACHE_LIMIT:
            memo.clear()
        memo[key] = value
        return value

    def _route_attributes(self, route: str) -> AttributeSet:
        """`{"sidecar.route": route}`, one shared set per route (its key computed once)."""
        try:
            return self._routes[route]
        except KeyError:
            return self._remember(self._routes, route, AttributeSet({"sidecar.route": route}))

    def _price(self, model: str) -> ModelPrice | None:
        """`price_for` once per model name (a prefix match scans the whole table)."""
        try:
            return self._prices[model]
        except KeyError:
            return self._remember(self._prices, model, price_for(self.config.prices, model))

    # ------------------------------------------------------------------ counters

    def rejected(
        self,
        reason: str,
        route: str,
        status: int,
        request_id: str,
        span: Span | None = None,
        *,
        warn: bool = False,
    ) -> None:
        """An early answer: counted by reason and route, logged (a WARNING when `warn`: the
        listener's refusals of malformed requests), marked on the request span."""
        # Turned-away calls come in bursts (quotas, a full queue): one set per kind.
        key = (reason, route, status)
        try:
            attributes = self._rejections[key]
        except KeyError:
            attributes = self._remember(
                self._rejections,
                key,
                AttributeSet(
                    {"sidecar.rejection.reason": reason, "http.route": route,
                     "http.response.status_code": status}
                ),
            )  # fmt: skip
        self.instruments.rejections.add(1, attributes)
        if span is not None:
            span.set_attribute("sidecar.rejection.reason", reason)
        level = logging.WARNING if warn else logging.INFO
        if not reject_log.isEnabledFor(level):
            return
        fields: dict[str, Any] = {
            "event": "request_rejected", "reason": reason, "route": route, "status": status,
            "request_id": request_id, **span_ids(span),
        }  # fmt: skip
        log_event(reject_log, level, "request_rejected", fields)

    def resumed(self, result: str, replayed: int = 0) -> None:
        """A reconnect was answered (`result`: resumed | expired | forbidden | lost)."""
        self.instruments.resumes.add(1, {"sidecar.resume.result": result})
        if replayed:
            self.instruments.resume_events.add(replayed)

    def resume_store_error(self, mode: str) -> None:
        """The resume store failed; `mode` (fail_open | fail_closed) says what followed."""
        self.instruments.resume_store_errors.add(1, {"sidecar.resume.on_store_error": mode})

    def cache_lookup(self, result: str) -> None:
        """A response cache result (hit | miss | bypass | stored | skipped)."""
        self.instruments.cache_lookups.add(1, {"sidecar.cache.result": result})

    def cache_hit(self, tokens_saved: int) -> None:
        """A request answered from the cache (stored or coalesced) and the tokens it saved."""
        self.cache_lookup("hit")
        if tokens_saved:
            self.instruments.cache_tokens_saved.add(tokens_saved)

    def upstream_status(self, status: int) -> None:
        """One answer from Claude (every attempt, retried or not), by status code."""
        if self._on:
            try:
                attributes = self._statuses[status]
            except KeyError:
                attributes = self._remember(
                    self._statuses, status, AttributeSet({"http.response.status_code": status})
                )
            self.instruments.upstream_responses.add(1, attributes)

    def upstream_retry(self, reason: str) -> None:
        """One retry of a Claude call before its first byte (`connect_error` or the status)."""
        self.instruments.retries.add(1, {"sidecar.retry.reason": reason})

    def config_reload(self, result: str) -> None:
        """One config reload attempt, `success` or `failure` (the old config kept serving)."""
        self.instruments.config_reloads.add(1, {"result": result})
        self.health.reload(result)

    def jwks_refresh(self, result: str) -> None:
        """One JWKS fetch, `success` or `failure` (the last good keys kept serving)."""
        self.health.jwks_refreshes.add(1, {"result": result})

    def readiness(self, failing: Mapping[str, str]) -> None:
        """The outcome of a readiness check: the names of the checks that failed."""
        self.health.readiness(failing)

    def quota_store_error(self, mode: str, operation: str) -> None:
        """A quota store call failed (`operation`: admit / settle / renew); `mode` says what followed."""
        self.instruments.quota_store_errors.add(
            1, {"sidecar.quota.on_store_error": mode, "sidecar.quota.operation": operation}
        )

    def queue_wait(self, seconds: float, admitted: bool) -> None:
        """Time a call waited for a slot; `admitted=False` when it gave up or was turned away."""
        self.instruments.queue_wait.record(seconds, _ADMITTED if admitted else _NOT_ADMITTED)

    def access(
        self,
        *,
        method: str,
        scheme: str,
        route: str,
        path: str,
        status: int,
        duration: float,
        request_id: str,
        span: Span | None,
    ) -> None:
        """The per-request access log line and request duration histogram."""
        if self._on:
            key = (method, scheme, route, status)
            try:
                attributes = self._durations[key]
            except KeyError:
                attributes = self._remember(
                    self._durations,
                    key,
                    AttributeSet(
                        {"http.request.method": http_method(method), "url.scheme": scheme,
                         "http.route": route, "http.response.status_code": status}
                    ),
                )  # fmt: skip
            self.instruments.request_duration.record(duration, attributes)
        if not self.config.access_log or not access_log.isEnabledFor(logging.INFO):
            return
        fields: dict[str, Any] = {
            "event": "access", "method": method, "route": route, "path": path, "status": status,
            "duration_ms": round(duration * 1000, 2), "request_id": request_id,
        }  # fmt: skip
        if type(span) is SidecarSpan:  # `span_ids`, inline
            fields["trace_id"], fields["span_id"] = span.ids()
        elif span is not None:
            fields.update(span_ids(span))
        log_event(access_log, logging.INFO, "request", fields)

    # ------------------------------------------------------------------ export

    def prometheus(self) -> tuple[bytes, str]:
        """Body and content type for `GET /metrics`."""
        if self._providers is None:
            return b"", CONTENT_TYPE_LATEST
        return generate_latest(self._providers.registry), CONTENT_TYPE_LATEST

    def shutdown(self) -> None:
        """Flush and stop exporters (spans in batches, periodic metrics); blocking."""
        if self._providers is None:
            return
        self._providers.tracer_provider.shutdown()
        self._providers.meter_provider.shutdown()

    async def close(self) -> None:
        """`shutdown` off the event loop: the last export is blocking network I/O."""
        await asyncio.to_thread(self.shutdown)
