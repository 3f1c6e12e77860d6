"""Telemetry of one Claude call: its CLIENT span, metrics and the two stream lines.

The hot path only fills a `StreamRecord`; `finish_stream` turns it into the span's
attributes, every histogram and the log line in one call at the end. Nothing here
runs per event.
"""

from __future__ import annotations

import logging
from typing import Any

from opentelemetry.trace import Span, SpanKind, Status, StatusCode

from sidecar.record import OPERATION, StreamRecord
from sidecar.telemetry import streams
from sidecar.telemetry.content import output_messages, request_content
from sidecar.telemetry.cost import cost_usd
from sidecar.telemetry.logs import log_event
from sidecar.telemetry.span import SidecarSpan
from sidecar.telemetry.state import ADMITTED, TelemetryState, continued, span_ids

stream_log = logging.getLogger("sidecar.stream")


class StreamTelemetry(TelemetryState):
    """`Telemetry`'s per-stream part: a call's start, admission and end."""

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
            return continued(parent)
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
            record.log_base = self.log_base(record, span)
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
        instruments.queue_wait.record(record.queue_wait, ADMITTED)

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
            record.error_label = error if error in self.errors.passing else self.errors(error)
        base = record.log_base if record.log_base is not None else self.log_base(record, span)
        if span.is_recording():  # not when off or sampled out
            self._end_attributes(record, span, failed, base)
        span.end()

        model = record.request_model
        try:
            price = self._prices[model]
        except KeyError:
            price = self.price(model)
        # Only for usage Claude reported (`streams.reported_usage`): unknown is not free.
        cost = (
            cost_usd(price, record)
            if price is not None and record.response_model is not None
            else None
        )
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

    def log_base(self, record: StreamRecord, span: Span) -> dict[str, Any]:
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
        for name, value in (("user", record.user), ("tenant", record.tenant)):
            if value is not None:
                try:  # `_identity`'s memo, read without its call when it knows the value
                    shown = identities[value]
                except KeyError:
                    shown = self._identity(value)
                if shown is not None:
                    fields[name] = shown
        return fields
