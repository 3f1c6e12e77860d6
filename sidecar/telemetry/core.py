"""Telemetry for one running config: spans, metrics and logs, recorded once per stream.

The hot path only fills a `StreamRecord`; `finish_stream` turns it into the span's
attributes, every histogram and the log line in one call at the end. Nothing here
runs per event.
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Mapping
from typing import Any

from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.metrics import NoOpMeterProvider
from opentelemetry.sdk.metrics.export import MetricReader
from opentelemetry.sdk.trace.export import SpanExporter
from opentelemetry.trace import NoOpTracerProvider, Span, SpanKind, Status, StatusCode
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from sidecar.config import TelemetryConfig
from sidecar.record import StreamRecord
from sidecar.telemetry.cost import cost_usd, price_for
from sidecar.telemetry.instruments import Instruments
from sidecar.telemetry.providers import Providers, build_providers, env_flag

PROVIDER = "anthropic"
stream_log = logging.getLogger("sidecar.stream")
access_log = logging.getLogger("sidecar.access")
reject_log = logging.getLogger("sidecar.reject")


class Telemetry:
    """Spans, metrics and logs of one sidecar; build with `from_config`."""

    def __init__(self, config: TelemetryConfig, providers: Providers | None) -> None:
        self.config = config
        self._providers = providers
        self._propagator = TraceContextTextMapPropagator()
        tracer_provider: Any = providers.tracer_provider if providers else NoOpTracerProvider()
        meter_provider: Any = providers.meter_provider if providers else NoOpMeterProvider()
        self._tracer: trace.Tracer = tracer_provider.get_tracer("claude-sidecar")
        self.instruments = Instruments(meter_provider.get_meter("claude-sidecar"))

    @classmethod
    def from_config(
        cls,
        config: TelemetryConfig,
        *,
        span_exporter: SpanExporter | None = None,
        metric_reader: MetricReader | None = None,
        env: Mapping[str, str] | None = None,
    ) -> Telemetry:
        """Providers from config + `OTEL_*` env (env wins); exporters/readers may be injected."""
        environ = os.environ if env is None else env
        if env_flag(environ, "OTEL_SDK_DISABLED"):
            return cls(config, None)
        return cls(config, build_providers(config, environ, span_exporter, metric_reader))

    @property
    def enabled(self) -> bool:
        """False when `OTEL_SDK_DISABLED=true`: every call is then a cheap no-op."""
        return self._providers is not None

    # ------------------------------------------------------------------ traces

    def extract(self, headers: Mapping[str, str]) -> Context:
        """The caller's W3C trace context (empty context when there is none)."""
        return self._propagator.extract(headers)

    def start_server_span(self, name: str, parent: Context, attributes: dict[str, Any]) -> Span:
        return self._tracer.start_span(
            name, context=parent, kind=SpanKind.SERVER, attributes=attributes
        )

    def child_context(self, span: Span, parent: Context) -> Context:
        """`parent` with `span` as the current span, to start children under it."""
        return trace.set_span_in_context(span, parent)

    def inject(self, span: Span, headers: dict[str, str]) -> None:
        """Add `traceparent` (+ `tracestate`) naming `span` as the parent."""
        self._propagator.inject(headers, context=trace.set_span_in_context(span))

    def start_stream(self, record: StreamRecord, parent: Context) -> Span:
        """The CLIENT span of one Claude call; counted as active until `finish_stream`."""
        attributes: dict[str, Any] = {
            "gen_ai.operation.name": record.operation,
            "gen_ai.provider.name": PROVIDER,
            "gen_ai.request.model": record.request_model,
            "gen_ai.request.stream": record.stream,
            "server.address": record.server_address,
            "sidecar.route": record.route,
            "sidecar.request_id": record.request_id,
        }
        if record.server_port is not None:
            attributes["server.port"] = record.server_port
        if record.max_tokens is not None:
            attributes["gen_ai.request.max_tokens"] = record.max_tokens
        span = self._tracer.start_span(
            f"{record.operation} {record.request_model}",
            context=parent,
            kind=SpanKind.CLIENT,
            attributes=attributes,
        )
        self.instruments.active_streams.add(1, {"sidecar.route": record.route})
        stream_log.info("stream_start", extra=self._log_base(record, span))
        return span

    def finish_stream(self, record: StreamRecord, span: Span) -> None:
        """Everything about a finished stream, once: span attributes, metrics, log line."""
        try:
            self._finish(record, span)
        except Exception:  # telemetry must never break a response
            stream_log.exception("telemetry failed for a stream")

    def _finish(self, record: StreamRecord, span: Span) -> None:
        ended = record.ended or record.last_chunk_at or record.started
        sent = record.upstream_started
        attributes = self._span_attributes(record)
        span.set_attributes(attributes)
        if record.outcome not in ("completed", "client_cancelled"):
            span.set_status(Status(StatusCode.ERROR, record.error_type or record.outcome))
        if self.config.capture_content:
            if record.prompt_text is not None:
                span.set_attribute("gen_ai.input.messages", record.prompt_text)
            if record.completion_parts:
                span.set_attribute("gen_ai.output.messages", "".join(record.completion_parts))
        span.end()

        metric = self._metric_attributes(record)
        inst = self.instruments
        inst.active_streams.add(-1, {"sidecar.route": record.route})
        inst.streams.add(1, {**metric, "sidecar.stream.outcome": record.outcome})
        price = price_for(self.config.prices, record.request_model)
        cost = cost_usd(price, record) if price is not None else None
        if cost:
            inst.cost.add(cost, {"gen_ai.request.model": record.request_model})
        if sent is not None:
            inst.operation_duration.record(ended - sent, metric)
            if record.upstream_status == 200:
                inst.token_usage.record(
                    record.total_input_tokens, {**metric, "gen_ai.token.type": "input"}
                )
                inst.token_usage.record(
                    record.output_tokens, {**metric, "gen_ai.token.type": "output"}
                )
        if record.stream and sent is not None and record.first_chunk_at is not None:
            inst.time_to_first_chunk.record(record.first_chunk_at - sent, metric)
            if record.chunks > 1 and record.last_chunk_at is not None:
                per_chunk = (record.last_chunk_at - record.first_chunk_at) / (record.chunks - 1)
                inst.time_per_output_chunk.record(per_chunk, metric)
        if record.first_token_at is not None:
            inst.server_ttft.record(record.first_token_at - record.started, metric)
            if record.output_tokens > 1 and record.last_chunk_at is not None:
                per_token = (record.last_chunk_at - record.first_token_at) / (
                    record.output_tokens - 1
                )
                inst.server_tpot.record(per_token, metric)
        self._log_end(record, span, ended, cost)

    def _span_attributes(self, record: StreamRecord) -> dict[str, Any]:
        attributes: dict[str, Any] = {
            "gen_ai.usage.input_tokens": record.total_input_tokens,
            "gen_ai.usage.output_tokens": record.output_tokens,
            "gen_ai.usage.cache_creation.input_tokens": record.cache_creation_input_tokens,
            "gen_ai.usage.cache_read.input_tokens": record.cache_read_input_tokens,
            "sidecar.stream.outcome": record.outcome,
            "sidecar.upstream.retries": record.retries,
            "sidecar.queue.wait": record.queue_wait,
        }
        optional: dict[str, Any] = {
            "gen_ai.response.id": record.response_id,
            "gen_ai.response.model": record.response_model,
            "gen_ai.request.temperature": record.temperature,
            "gen_ai.request.top_p": record.top_p,
            "gen_ai.request.top_k": record.top_k,
            "gen_ai.request.stop_sequences": record.stop_sequences,
            "error.type": record.error_type
            if record.outcome not in ("completed", "client_cancelled")
            else None,
            "http.response.status_code": record.upstream_status,
            "sidecar.user": self._identity(record.user),
            "sidecar.tenant": self._identity(record.tenant),
        }
        attributes.update({k: v for k, v in optional.items() if v is not None})
        if record.stop_reason is not None:
            attributes["gen_ai.response.finish_reasons"] = [record.stop_reason]
        if record.stream and record.first_chunk_at is not None and record.upstream_started:
            attributes["gen_ai.response.time_to_first_chunk"] = (
                record.first_chunk_at - record.upstream_started
            )
        return attributes

    def _metric_attributes(self, record: StreamRecord) -> dict[str, Any]:
        attributes: dict[str, Any] = {
            "gen_ai.operation.name": record.operation,
            "gen_ai.provider.name": PROVIDER,
            "gen_ai.request.model": record.request_model,
            "server.address": record.server_address,
        }
        if record.server_port is not None:
            attributes["server.port"] = record.server_port
        if record.response_model:
            attributes["gen_ai.response.model"] = record.response_model
        if record.outcome not in ("completed", "client_cancelled"):
            attributes["error.type"] = record.error_type or "_OTHER"
        return attributes

    def _identity(self, value: str | None) -> str | None:
        mode = self.config.user_attribute
        if value is None or mode == "none":
            return None
        if mode == "plain":
            return value
        return hashlib.sha256(value.encode()).hexdigest()[:16]

    # ------------------------------------------------------------------ logs

    def _log_base(self, record: StreamRecord, span: Span) -> dict[str, Any]:
        context = span.get_span_context()
        fields: dict[str, Any] = {
            "event": "stream",
            "request_id": record.request_id,
            "route": record.route,
            "model": record.request_model,
        }
        if context.is_valid:
            fields["trace_id"] = f"{context.trace_id:032x}"
            fields["span_id"] = f"{context.span_id:016x}"
        user = self._identity(record.user)
        if user is not None:
            fields["user"] = user
        return fields

    def _log_end(self, record: StreamRecord, span: Span, ended: float, cost: float | None) -> None:
        fields = self._log_base(record, span)
        duration = ended - record.started
        generating = (
            (record.last_chunk_at - record.first_token_at)
            if record.last_chunk_at is not None and record.first_token_at is not None
            else 0.0
        )
        fields.update(
            outcome=record.outcome,
            input_tokens=record.total_input_tokens,
            output_tokens=record.output_tokens,
            ttft_ms=round((record.first_token_at - record.started) * 1000, 2)
            if record.first_token_at is not None
            else None,
            duration_ms=round(duration * 1000, 2),
            tokens_per_second=round(record.output_tokens / generating, 2)
            if generating > 0
            else None,
            retries=record.retries,
            queue_wait_ms=round(record.queue_wait * 1000, 2),
            cost_usd=round(cost, 8) if cost is not None else None,
            stop_reason=record.stop_reason,
            error_type=record.error_type,
        )
        if record.outcome in ("completed", "client_cancelled"):
            stream_log.info("stream_complete", extra=fields)
        else:
            stream_log.warning("stream_error", extra=fields)

    # ------------------------------------------------------------------ counters

    def rejected(
        self, reason: str, route: str, status: int, request_id: str, span: Span | None = None
    ) -> None:
        """An early answer: counted by reason and route, logged, marked on the request span."""
        self.instruments.rejections.add(
            1, {"sidecar.rejection.reason": reason, "http.route": route}
        )
        fields: dict[str, Any] = {
            "reason": reason, "route": route, "status": status, "request_id": request_id
        }  # fmt: skip
        if span is not None:
            span.set_attribute("sidecar.rejection.reason", reason)
            context = span.get_span_context()
            if context.is_valid:
                fields["trace_id"] = f"{context.trace_id:032x}"
                fields["span_id"] = f"{context.span_id:016x}"
        reject_log.info("request_rejected", extra=fields)

    def upstream_status(self, status: int) -> None:
        self.instruments.upstream_responses.add(1, {"http.response.status_code": status})

    def upstream_retry(self, reason: str) -> None:
        self.instruments.retries.add(1, {"sidecar.retry.reason": reason})

    def quota_store_error(self, mode: str, operation: str) -> None:
        """A quota store call failed (`operation`: admit / settle / renew); `mode` says what followed."""
        self.instruments.quota_store_errors.add(
            1, {"sidecar.quota.on_store_error": mode, "sidecar.quota.operation": operation}
        )

    def queue_wait(self, seconds: float, admitted: bool) -> None:
        self.instruments.queue_wait.record(seconds, {"sidecar.queue.admitted": admitted})

    def access(
        self,
        *,
        method: str,
        route: str,
        path: str,
        status: int,
        duration: float,
        request_id: str,
        bytes_sent: int | None,
        span: Span | None,
    ) -> None:
        """The per-request access log line and request duration histogram."""
        self.instruments.request_duration.record(
            duration, {"http.route": route, "http.response.status_code": status}
        )
        if not self.config.access_log:
            return
        fields: dict[str, Any] = {
            "method": method, "route": route, "path": path, "status": status,
            "duration_ms": round(duration * 1000, 2), "request_id": request_id,
        }  # fmt: skip
        if bytes_sent is not None:
            fields["bytes_sent"] = bytes_sent
        if span is not None and span.get_span_context().is_valid:
            fields["trace_id"] = f"{span.get_span_context().trace_id:032x}"
        access_log.info("request", extra=fields)

    # ------------------------------------------------------------------ export

    def prometheus(self) -> tuple[bytes, str]:
        """Body and content type for `GET /metrics`."""
        if self._providers is None:
            return b"", CONTENT_TYPE_LATEST
        return generate_latest(self._providers.registry), CONTENT_TYPE_LATEST

    def shutdown(self) -> None:
        """Flush and stop exporters (spans in batches, periodic metrics)."""
        if self._providers is None:
            return
        self._providers.tracer_provider.shutdown()
        self._providers.meter_provider.shutdown()
