"""What the parts of `Telemetry` share: its config, providers, instruments and bounded memos.

`Telemetry` (`core`) is this state with its traces and exports, the per-stream part
(`stream_telemetry.StreamTelemetry`) and the counters (`counters.Counters`).
"""

from __future__ import annotations

import hashlib
import hmac
from typing import Any, Final, TypeVar

from opentelemetry.metrics import NoOpMeterProvider
from opentelemetry.trace import NonRecordingSpan, Span
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from sidecar.config import ModelPrice, TelemetryConfig
from sidecar.telemetry import streams
from sidecar.telemetry.bounded import error_labels, model_labels, short_text
from sidecar.telemetry.cost import price_for
from sidecar.telemetry.health import Health
from sidecar.telemetry.histograms import AttributeSet
from sidecar.telemetry.instruments import Instruments
from sidecar.telemetry.propagation import configured_propagator
from sidecar.telemetry.providers import Providers, TelemetryEnvironmentError
from sidecar.telemetry.semconv import DEFAULT, GenAiNames
from sidecar.telemetry.span import SidecarSpan
from sidecar.telemetry.spans import SCOPE, SCOPE_VERSION, Spans

CACHE_LIMIT: Final = 1024  # entries per memo below; cleared when full (keys may come from clients)
ADMITTED: Final = AttributeSet({"sidecar.queue.admitted": True})
NOT_ADMITTED: Final = AttributeSet({"sidecar.queue.admitted": False})

_K = TypeVar("_K")
_V = TypeVar("_V")


def _hashed(value: str, key: bytes | None = None) -> str:
    """The pseudonym of a user or tenant: the first 16 hex digits of its HMAC-SHA256 under
    `key` (`telemetry.user_hash_key`: the same on every replica sharing the key), or of
    its plain SHA-256 without one.

    `Telemetry` keeps each value's pseudonym (bounded): hashed once per distinct value.
    """
    if key is None:
        return hashlib.sha256(value.encode()).hexdigest()[:16]
    return hmac.new(key, value.encode(), hashlib.sha256).hexdigest()[:16]


def span_ids(span: Span | None) -> dict[str, str]:
    """`trace_id` / `span_id` of a span for log lines (nothing for an invalid span)."""
    if type(span) is SidecarSpan:  # always valid; its hex ids are formatted once
        trace_id, span_id = span.ids()
        return {"trace_id": trace_id, "span_id": span_id}
    context = span.get_span_context() if span is not None else None
    if context is None or not context.is_valid:
        return {}
    return {"trace_id": f"{context.trace_id:032x}", "span_id": f"{context.span_id:016x}"}


def continued(span: Span) -> Span:
    """What the no-op tracer starts under `span`: `span` itself when it does not record."""
    return span if isinstance(span, NonRecordingSpan) else NonRecordingSpan(span.get_span_context())


class TelemetryState:
    """The state of one sidecar's telemetry, set up from its providers (None: off)."""

    def __init__(
        self, config: TelemetryConfig, providers: Providers | None, names: GenAiNames = DEFAULT
    ) -> None:
        self.config = config
        self.names = names
        self._providers = providers
        self._close_deadline: float | None = None  # `time.monotonic()`: see `close_by`
        self._propagator = TraceContextTextMapPropagator()
        # OTEL_PROPAGATORS when it asks for more than W3C trace context (None: the above).
        try:
            self._custom_propagator = configured_propagator()
        except ValueError as error:  # the API's refusal: a propagator no package provides
            raise TelemetryEnvironmentError(str(error)) from None
        # The request headers that carry a caller's trace (the app proxy replaces them).
        self.trace_headers: frozenset[str] = (
            frozenset(("traceparent", "tracestate"))
            if self._custom_propagator is None
            else frozenset(self._custom_propagator.fields)
        )
        # The request and Claude call spans (tests swap in the SDK's tracer to compare).
        # Off (no providers) they are the no-op tracer's: the caller's context goes on,
        # so `traceparent` is forwarded unchanged to Claude and the app.
        self.spans: Spans | None = (
            Spans(providers.tracer_provider, providers.span_processors) if providers else None
        )
        meter_provider: Any = providers.meter_provider if providers else NoOpMeterProvider()
        meter = meter_provider.get_meter(SCOPE, SCOPE_VERSION)
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
        secret = config.user_hash_key
        self._hash_key = secret.get_secret_value().encode() if secret is not None else None
        self._stream_sets: dict[tuple[Any, ...], streams.StreamSets] = {}
        self._durations: dict[tuple[str, str, str, int, str], AttributeSet] = {}
        self._statuses: dict[int, AttributeSet] = {}
        self._rejections: dict[tuple[str, str, int], AttributeSet] = {}
        # Client-chosen values reach metrics and spans only through these (bounded).
        self.models = model_labels(config.prices)
        self.errors = error_labels()

    def _identity(self, value: str) -> str | None:
        """A user or tenant as logged and put on spans (None: not carried); memoized."""
        try:
            return self._identities[value]
        except KeyError:
            mode = self.config.user_attribute
            # `plain` carries the name as a token's claim spelled it: a span attribute or
            # log field of at most `MAX_TEXT` characters, as every free text a client
            # chooses (a pseudonym is of the whole name).
            shown = (
                None if mode == "none"
                else short_text(value) if mode == "plain"
                else _hashed(value, self._hash_key)
            )  # fmt: skip
            return self._remember(self._identities, value, shown)

    @staticmethod
    def _remember(memo: dict[_K, _V], key: _K, value: _V) -> _V:
        """Store `value` under `key` in `memo`, emptied first when full; returns `value`."""
        if len(memo) >= CACHE_LIMIT:
            memo.clear()
        memo[key] = value
        return value

    def memo_sizes(self) -> dict[str, int]:
        """How many entries each bounded memo holds (each at most `CACHE_LIMIT`)."""
        return {
            "routes": len(self._routes),
            "prices": len(self._prices),
            "identities": len(self._identities),
            "stream_sets": len(self._stream_sets),
            "durations": len(self._durations),
            "statuses": len(self._statuses),
            "rejections": len(self._rejections),
        }

    def _route_attributes(self, route: str) -> AttributeSet:
        """`{"sidecar.route": route}`, one shared set per route (its key computed once)."""
        try:
            return self._routes[route]
        except KeyError:
            return self._remember(self._routes, route, AttributeSet({"sidecar.route": route}))

    def price(self, model: str) -> ModelPrice | None:
        """`price_for` once per model name (a prefix match scans the whole table)."""
        try:
            return self._prices[model]
        except KeyError:
            return self._remember(self._prices, model, price_for(self.config.prices, model))
