"""What `Telemetry` counts outside a stream: rejections, resumes, cache results, Claude's
answers and retries, reloads, store errors, queue waits, and each request's access line."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from opentelemetry.trace import Span

from sidecar.telemetry.bounded import MAX_LOG_PATH, MAX_TEXT
from sidecar.telemetry.histograms import AttributeSet
from sidecar.telemetry.logs import log_event
from sidecar.telemetry.semconv import server_duration_attributes
from sidecar.telemetry.span import SidecarSpan
from sidecar.telemetry.state import ADMITTED, NOT_ADMITTED, TelemetryState, span_ids

access_log = logging.getLogger("sidecar.access")
reject_log = logging.getLogger("sidecar.reject")
app_log = logging.getLogger("sidecar.app")


class Counters(TelemetryState):
    """`Telemetry`'s counters and access line."""

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
        """A reconnect was answered (`result`: resumed | expired | forbidden | lost); a
        resumed read cut for falling behind the buffer is `expired` (its events are gone)."""
        self.instruments.resumes.add(1, {"sidecar.resume.result": result})
        if replayed:
            self.instruments.resume_events.add(replayed)

    def websocket_ended(self, outcome: str, route: str, request_id: str, span: Span | None) -> None:
        """An app route WebSocket ended (`outcome`: closed, client_stalled, app_stalled,
        client_unresponsive, app_unresponsive, client_lost, app_lost, client_error, app_error,
        shutting_down): counted and logged."""
        self.instruments.websockets.add(
            1, {"sidecar.websocket.outcome": outcome, "http.route": route}
        )
        level = logging.INFO if outcome == "closed" else logging.WARNING
        if app_log.isEnabledFor(level):
            fields: dict[str, Any] = {
                "event": "websocket_ended", "outcome": outcome, "route": route,
                "request_id": request_id, **span_ids(span),
            }  # fmt: skip
            log_event(app_log, level, "websocket_ended", fields)

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
        self.instruments.queue_wait.record(seconds, ADMITTED if admitted else NOT_ADMITTED)

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
        version: str = "",
        client_gone: bool = False,
        cut: str = "",
    ) -> None:
        """The per-request access log line and request duration histogram; `version` is
        `network.protocol.version`, `client_gone` the connection ending before the answer
        did, `cut` why the sidecar cut an answer mid-body for the upstream's fault (log
        fields only: the metric keeps the conventions' attributes)."""
        if self._on:
            key = (method, scheme, route, status, version)
            try:
                attributes = self._durations[key]
            except KeyError:
                attributes = self._remember(
                    self._durations,
                    key,
                    AttributeSet(
                        server_duration_attributes(method, scheme, route, status, version)
                    ),
                )
            self.instruments.request_duration.record(duration, attributes)
        if not self.config.access_log or not access_log.isEnabledFor(logging.INFO):
            return
        if len(path) > MAX_LOG_PATH:  # the client chose it: a line stays bounded
            path = path[:MAX_LOG_PATH]
        if len(method) > MAX_TEXT:
            method = method[:MAX_TEXT]
        fields: dict[str, Any] = {
            "event": "access", "method": method, "route": route, "path": path, "status": status,
            "duration_ms": round(duration * 1000, 2), "request_id": request_id,
        }  # fmt: skip
        if client_gone:
            fields["client_gone"] = True
        if cut:
            fields["cut"] = cut
        if type(span) is SidecarSpan:  # `span_ids`, inline
            fields["trace_id"], fields["span_id"] = span.ids()
        elif span is not None:
            fields.update(span_ids(span))
        log_event(access_log, logging.INFO, "request", fields)
