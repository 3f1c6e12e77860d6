"""Metric instruments: the GenAI histograms (spec units and bucket advice) and the sidecar's own.

Attributes on these are bounded: model names, route prefixes, outcomes, reasons and
status codes; never user ids, prompts or request ids.

Counters bumped on every call are kept as plain running totals (`Totals`) and
reported by observable instruments when a reader collects: the exported sums are the
same as a synchronous counter's, without the SDK's per-measurement attribute
cleaning, hashing and locking on the request path. Histograms get the same treatment
from the meter itself: the sidecar's provider (`meters.SidecarMeterProvider`) hands out
histograms it aggregates (`histograms.Histogram`), exported as the SDK's would be.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Final

from opentelemetry.metrics import CallbackOptions, Meter, Observation
from opentelemetry.util.types import AttributeValue

from sidecar.telemetry.histograms import AttributeSet
from sidecar.telemetry.semconv import DEFAULT, GenAiNames

TOKEN_BUCKETS: Final = [
    1, 4, 16, 64, 256, 1024, 4096, 16384, 65536, 262144, 1048576, 4194304, 16777216, 67108864
]  # fmt: skip
DURATION_BUCKETS: Final = [
    0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64, 1.28, 2.56, 5.12, 10.24, 20.48, 40.96, 81.92
]  # fmt: skip
PER_CHUNK_BUCKETS: Final = [
    0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5
]  # fmt: skip
SERVER_TTFT_BUCKETS: Final = [
    0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0
]  # fmt: skip
# The HTTP conventions' advice for `http.server.request.duration`.
HTTP_DURATION_BUCKETS: Final = [
    0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0
]  # fmt: skip
QUEUE_BUCKETS: Final = [0.001, 0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0]
# Distinct attribute sets per counter before the rest fold into one overflow point
# (the SDK's own default limit and overflow attribute for synchronous instruments).
CARDINALITY_LIMIT: Final = 2000
_OVERFLOW: Final = frozenset({("otel.metric.overflow", True)})

_Key = frozenset[tuple[str, AttributeValue]]


class Totals:
    """Running sums per attribute set, `add`-compatible with a counter, observed on collection."""

    __slots__ = ("_sums",)

    def __init__(self) -> None:
        self._sums: dict[_Key, float] = {}

    def add(self, amount: float, attributes: Mapping[str, AttributeValue]) -> None:
        """Add `amount` to the total of `attributes` (an `AttributeSet` brings its key)."""
        key = attributes.key if type(attributes) is AttributeSet else frozenset(attributes.items())
        try:
            self._sums[key] += amount
        except KeyError:  # a new attribute set (zero-cost when it is not)
            sums = self._sums
            if len(sums) >= CARDINALITY_LIMIT:
                key = _OVERFLOW
            sums[key] = sums.get(key, 0) + amount

    def observe(self, _options: CallbackOptions) -> Iterable[Observation]:
        # list() copies in one step: a collecting thread never sees the dict change size.
        return [Observation(value, dict(key)) for key, value in list(self._sums.items())]


class Instruments:
    """Every instrument the sidecar records, created once per Telemetry."""

    def __init__(self, meter: Meter, names: GenAiNames = DEFAULT) -> None:
        self.names = names
        if names.latest:
            # Token usage as one counter per kind (what was spent, for rates and cost).
            self.usage_input, self.usage_output = Totals(), Totals()
            self.usage_cache_read, self.usage_cache_write = Totals(), Totals()
            for name, totals, description in (
                ("input_tokens", self.usage_input, "Input tokens, cache reads and writes included"),
                ("output_tokens", self.usage_output, "Output tokens"),
                ("cache_read.input_tokens", self.usage_cache_read, "Input tokens read from the prompt cache"),
                ("cache_write.input_tokens", self.usage_cache_write, "Input tokens written to the prompt cache"),
            ):  # fmt: skip
                meter.create_observable_counter(
                    f"gen_ai.client.inference.usage.{name}", [totals.observe], unit="{token}",
                    description=description,
                )  # fmt: skip
        else:
            self.token_usage = meter.create_histogram(
                "gen_ai.client.token.usage", unit="{token}",
                description="Tokens used per Claude call, by gen_ai.token.type (input / output)",
                explicit_bucket_boundaries_advisory=TOKEN_BUCKETS,
            )  # fmt: skip
        self.operation_duration = meter.create_histogram(
            names.duration, unit="s",
            description="Duration of a Claude call, request sent to last event",
            explicit_bucket_boundaries_advisory=DURATION_BUCKETS,
        )  # fmt: skip
        self.time_to_first_chunk = meter.create_histogram(
            names.time_to_first_chunk, unit="s",
            description="Time from sending the request to Claude's first body chunk",
            explicit_bucket_boundaries_advisory=DURATION_BUCKETS,
        )  # fmt: skip
        self.time_per_output_chunk = meter.create_histogram(
            names.time_per_output_chunk, unit="s",
            description="Mean time between Claude's content chunks after the first, once per stream",
            explicit_bucket_boundaries_advisory=PER_CHUNK_BUCKETS,
        )  # fmt: skip
        self.server_ttft = meter.create_histogram(
            "gen_ai.server.time_to_first_token", unit="s",
            description="Time from the client's request to its first content token (completed)",
            explicit_bucket_boundaries_advisory=SERVER_TTFT_BUCKETS,
        )  # fmt: skip
        self.server_tpot = meter.create_histogram(
            "gen_ai.server.time_per_output_token", unit="s",
            description="Mean time per output token after the first, as served (completed)",
            explicit_bucket_boundaries_advisory=PER_CHUNK_BUCKETS,
        )  # fmt: skip
        self.active_streams = Totals()
        meter.create_observable_up_down_counter(
            "sidecar.streams.active", [self.active_streams.observe], unit="{stream}",
            description="Claude calls admitted and not yet finished (queued calls are not counted)",
        )  # fmt: skip
        self.streams = Totals()
        meter.create_observable_counter(
            "sidecar.streams", [self.streams.observe], unit="{stream}",
            description="Claude calls finished, by sidecar.stream.outcome",
        )  # fmt: skip
        self.rejections = Totals()
        meter.create_observable_counter(
            "sidecar.rejections", [self.rejections.observe], unit="{request}",
            description="Requests answered early, by sidecar.rejection.reason and http.route",
        )  # fmt: skip
        self.queue_wait = meter.create_histogram(
            "sidecar.queue.wait", unit="s",
            description="Time spent waiting for a stream slot, by sidecar.queue.admitted",
            explicit_bucket_boundaries_advisory=QUEUE_BUCKETS,
        )  # fmt: skip
        self.retries = meter.create_counter(
            "sidecar.upstream.retries", unit="{retry}",
            description="Retries of Claude calls before the first byte, by reason",
        )  # fmt: skip
        self.quota_store_errors = meter.create_counter(
            "sidecar.quota.store_errors", unit="{error}",
            description="Quota store calls that failed, by sidecar.quota.on_store_error and operation",
        )  # fmt: skip
        self.upstream_responses = Totals()
        meter.create_observable_counter(
            "sidecar.upstream.responses", [self.upstream_responses.observe], unit="{response}",
            description="Claude responses by http.response.status_code",
        )  # fmt: skip
        self.cost = Totals()
        meter.create_observable_counter(
            "sidecar.cost.usd", [self.cost.observe], unit="{USD}",
            description="Estimated cost of Claude calls from the configured price table",
        )  # fmt: skip
        self.resumes = meter.create_counter(
            "sidecar.stream.resumes", unit="{request}",
            description="Stream resumes, by sidecar.resume.result (resumed | expired | forbidden | lost)",
        )  # fmt: skip
        self.websockets = meter.create_counter(
            "sidecar.app.websockets", unit="{connection}",
            description="App route WebSockets ended, by sidecar.websocket.outcome",
        )  # fmt: skip
        self.resume_events = meter.create_counter(
            "sidecar.stream.resume.events", unit="{event}",
            description="Events replayed from resume buffers to reconnecting clients",
        )  # fmt: skip
        self.resume_store_errors = meter.create_counter(
            "sidecar.resume.store_errors", unit="{error}",
            description="Resume store failures, by sidecar.resume.on_store_error",
        )  # fmt: skip
        self.cache_lookups = meter.create_counter(
            "sidecar.cache.lookups", unit="{request}",
            description="Response cache results, by sidecar.cache.result (hit | miss | bypass | stored | skipped)",
        )  # fmt: skip
        self.cache_tokens_saved = meter.create_counter(
            "sidecar.cache.tokens_saved", unit="{token}",
            description="Tokens (input and output) answered from the response cache instead of Claude",
        )  # fmt: skip
        self.config_reloads = meter.create_counter(
            "sidecar.config.reloads", unit="{reload}",
            description="Config reloads (file change or SIGHUP), by result (success | failure)",
        )  # fmt: skip
        self.request_duration = meter.create_histogram(
            "http.server.request.duration", unit="s",
            description="Duration of requests on the traffic listener, by route and status",
            explicit_bucket_boundaries_advisory=HTTP_DURATION_BUCKETS,
        )  # fmt: skip
