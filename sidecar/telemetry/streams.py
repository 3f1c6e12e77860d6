"""What a finished stream becomes: span attributes, metric points and the log line's fields.

Pure functions of a `StreamRecord`, called once per stream by `Telemetry.finish_stream`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Final

from sidecar.record import OPERATION, StreamRecord
from sidecar.telemetry.bounded import short_list, short_text
from sidecar.telemetry.histograms import AttributeSet
from sidecar.telemetry.instruments import Instruments
from sidecar.telemetry.semconv import DEFAULT, GenAiNames

PROVIDER: Final = "anthropic"
# Anthropic reports no split by modality: input may hold images (`unknown`), output is
# text; a call that got no usage back records 0 as `unknown`, as the spec asks.
_INPUT_MODALITY: Final = {"gen_ai.token.modality": "unknown"}
_OUTPUT_MODALITY: Final = {"gen_ai.token.modality": "text"}
NOT_FAILED: Final = frozenset({"completed", "client_cancelled", "client_detached"})


def failed(record: StreamRecord) -> bool:
    """Outcomes other than completed / client_cancelled / client_detached carry `error.type`."""
    return record.outcome not in NOT_FAILED


def start_attributes(record: StreamRecord) -> dict[str, Any]:
    """Attributes known when the CLIENT span starts (samplers see these)."""
    attributes: dict[str, Any] = {
        "gen_ai.operation.name": OPERATION,
        "gen_ai.provider.name": PROVIDER,
        "gen_ai.request.model": record.model_label,
        "gen_ai.request.stream": record.stream,
        "server.address": record.server_address,
        "sidecar.route": record.route,
        "sidecar.request_id": record.request_id,
    }
    if record.server_port is not None:
        attributes["server.port"] = record.server_port
    if record.max_tokens is not None:
        attributes["gen_ai.request.max_tokens"] = record.max_tokens
    if record.temperature is not None:
        attributes["gen_ai.request.temperature"] = record.temperature
    if record.top_p is not None:
        attributes["gen_ai.request.top_p"] = record.top_p
    if record.top_k is not None:
        attributes["gen_ai.request.top_k"] = record.top_k
    if record.stop_sequences is not None:
        attributes["gen_ai.request.stop_sequences"] = short_list(record.stop_sequences)
    return attributes


def reported_usage(record: StreamRecord) -> bool:
    """Claude's Message (`message_start`, or a whole answer) said how many tokens the call
    used. A call Claude refused or never saw, or a 200 whose body ended or went silent
    before its `message_start`, reported none: its usage is unknown, not 0 tokens."""
    return record.response_model is not None


def end_attributes(
    record: StreamRecord, is_failed: bool | None = None, names: GenAiNames = DEFAULT
) -> dict[str, Any]:
    """Attributes known when the stream ends: response, usage, outcome, timings."""
    attributes: dict[str, Any] = {
        "sidecar.stream.outcome": record.outcome,
        "sidecar.upstream.retries": record.retries,
        "sidecar.queue.wait": record.queue_wait,
    }
    if reported_usage(record):
        attributes["gen_ai.usage.input_tokens"] = record.total_input_tokens
        attributes["gen_ai.usage.output_tokens"] = record.output_tokens
        attributes[names.cache_write_attribute] = record.cache_creation_input_tokens
        attributes["gen_ai.usage.cache_read.input_tokens"] = record.cache_read_input_tokens
    if record.response_id is not None:
        attributes["gen_ai.response.id"] = short_text(record.response_id)
    if record.response_model_label is not None:
        attributes["gen_ai.response.model"] = record.response_model_label
    if failed(record) if is_failed is None else is_failed:
        attributes["error.type"] = record.error_label
    if record.upstream_status is not None:
        attributes["http.response.status_code"] = record.upstream_status
    if record.stop_reason is not None:
        attributes["gen_ai.response.finish_reasons"] = [short_text(record.stop_reason)]
    if record.stream and record.first_chunk_at is not None and record.upstream_started:
        attributes["gen_ai.response.time_to_first_chunk"] = (
            record.first_chunk_at - record.upstream_started
        )
    return attributes


def metric_attributes(record: StreamRecord, is_failed: bool | None = None) -> dict[str, Any]:
    """The spec's common metric attributes; all bounded (never ids, users or text)."""
    attributes: dict[str, Any] = {
        "gen_ai.operation.name": OPERATION,
        "gen_ai.provider.name": PROVIDER,
        "gen_ai.request.model": record.model_label,
        "server.address": record.server_address,
    }
    if record.server_port is not None:
        attributes["server.port"] = record.server_port
    if record.response_model_label:
        attributes["gen_ai.response.model"] = record.response_model_label
    if failed(record) if is_failed is None else is_failed:
        attributes["error.type"] = record.error_label
    return attributes


class StreamSets:
    """The attribute sets of one kind of stream's points (same labels, outcome and route).

    Streams alike share them (`Telemetry` keeps them per kind, bounded): each point
    then brings its precomputed key, and nothing is built per stream. They depend on
    the record's model labels, server address and port, error label (failed only),
    outcome and route, and on the conventions (`latest`): `Telemetry` keys them by these.
    """

    __slots__ = ("cost", "input", "metric", "output", "streams")

    def __init__(self, record: StreamRecord, is_failed: bool, latest: bool) -> None:
        metric = metric_attributes(record, is_failed)
        self.metric = AttributeSet(metric)
        self.streams = AttributeSet(
            {**metric, "sidecar.stream.outcome": record.outcome, "sidecar.route": record.route}
        )
        self.cost = AttributeSet({"gen_ai.request.model": record.model_label})
        if latest:
            # The latest conventions' usage counters carry no `error.type`.
            base = {key: value for key, value in metric.items() if key != "error.type"}
            self.input = AttributeSet({**base, **_INPUT_MODALITY})
            self.output = AttributeSet({**base, **_OUTPUT_MODALITY})
        else:
            self.input = AttributeSet({**metric, "gen_ai.token.type": "input"})
            self.output = AttributeSet({**metric, "gen_ai.token.type": "output"})


def record_metrics(
    inst: Instruments,
    record: StreamRecord,
    ended: float,
    is_failed: bool | None = None,
    sets: StreamSets | None = None,
) -> None:
    """Every histogram point of one stream, once, at its end (`sets`: its attribute sets,
    when the caller keeps them; built here otherwise)."""
    if sets is None:
        sets = StreamSets(record, failed(record) if is_failed is None else is_failed,
                          inst.names.latest)  # fmt: skip
    metric = sets.metric
    inst.streams.add(1, sets.streams)
    sent = record.upstream_started
    if sent is None:
        return  # rejected before Claude was called: no GenAI operation happened
    inst.operation_duration.record(ended - sent, metric)
    answered = reported_usage(record)
    if inst.names.latest:
        # Every call Claude was sent, failed ones too (0 when no usage came back, as the
        # spec asks); output with no answer counts as `unknown` modality.
        inputs = sets.input
        inst.usage_input.add(record.total_input_tokens, inputs)
        inst.usage_output.add(record.output_tokens, sets.output if answered else inputs)
        inst.usage_cache_read.add(record.cache_read_input_tokens, inputs)
        inst.usage_cache_write.add(record.cache_creation_input_tokens, inputs)
    elif answered:
        inst.token_usage.record(record.total_input_tokens, sets.input)
        inst.token_usage.record(record.output_tokens, sets.output)
    if not record.stream:
        return
    first_token, last = record.first_token_at, record.last_chunk_at
    if record.first_chunk_at is not None:
        inst.time_to_first_chunk.record(record.first_chunk_at - sent, metric)
    # Per-chunk and per-token timings are means over the stream, recorded once: the
    # relay keeps no per-event timestamps (no per-event work on the hot path).
    if first_token is not None and last is not None and record.output_deltas > 1:
        inst.time_per_output_chunk.record((last - first_token) / (record.output_deltas - 1), metric)
    if first_token is None:
        return  # no content token reached the client: no time to first token
    # Every stream that got its first token, however it ended (a failed one with its
    # `error.type`): a stream cut later still waited this long for it.
    inst.server_ttft.record(first_token - record.started, metric)
    if record.outcome != "completed":
        return  # the time per output token: successful responses only, as the spec asks
    if last is not None and record.output_tokens > 1:
        inst.server_tpot.record((last - first_token) / (record.output_tokens - 1), metric)


def log_fields(
    event: str, base: Mapping[str, Any], record: StreamRecord, ended: float, cost: float | None
) -> dict[str, Any]:
    """The fields of a `stream_complete` / `stream_error` line: `event`, the fields both
    stream lines share (`base`: ids), then the numbers; built as one dict, not merged.

    Usage, cost and rate are `None` for a call whose usage Claude never reported
    (`reported_usage`): unknown, not 0 tokens, as the metrics leave it out.
    `tokens_per_second` is the reciprocal of the time per output token
    (`gen_ai.server.time_per_output_token`): (output tokens − 1) over the time from the
    first token to the last event, the tokens after the first over the time they took.
    """
    first_token, last = record.first_token_at, record.last_chunk_at
    started = record.started
    answered = record.response_model is not None  # `reported_usage`, inline
    output = record.output_tokens
    rate = None
    if answered and output > 1 and first_token is not None and last is not None:
        generating = last - first_token
        if generating > 0:
            rate = round((output - 1) / generating, 2)
    # Milliseconds as `round(seconds * 1000, 2)`, written out (three per line).
    return {
        "event": event,
        **base,
        "outcome": record.outcome,
        "input_tokens": record.total_input_tokens if answered else None,
        "output_tokens": output if answered else None,
        "cache_creation_input_tokens": record.cache_creation_input_tokens if answered else None,
        "cache_read_input_tokens": record.cache_read_input_tokens if answered else None,
        "ttft_ms": round((first_token - started) * 1000, 2) if first_token is not None else None,
        "duration_ms": round((ended - started) * 1000, 2),
        "tokens_per_second": rate,
        "retries": record.retries,
        "queue_wait_ms": round(record.queue_wait * 1000, 2),
        "upstream_status": record.upstream_status,
        "cost_usd": round(cost, 8) if cost is not None and answered else None,
        # Chosen by Claude (or a proxy before it): cut as on the span.
        "stop_reason": short_text(record.stop_reason) if record.stop_reason else None,
        "error_type": short_text(record.error_type) if record.error_type else None,
    }  # fmt: skip
