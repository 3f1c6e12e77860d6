"""Finished calls for telemetry tests: a varied `StreamRecord` and the way every call ends."""

from __future__ import annotations

from typing import Any

from opentelemetry import trace

from sidecar.record import StreamRecord
from sidecar.telemetry import Telemetry


def finished_record(index: int, **fields: Any) -> StreamRecord:
    """A finished call; `index` varies its times and usage so every point differs."""
    record = StreamRecord(request_id=f"req-{index}", route="/v1", started=100.0 + index)
    record.request_model = "claude-sonnet-5-5"
    record.server_address = "api.anthropic.com"
    record.upstream_started = record.started + 0.002
    record.first_chunk_at = record.started + 0.01 * (index % 7 + 1)
    record.first_token_at = record.first_chunk_at + 0.001
    record.last_chunk_at = record.first_token_at + 0.05 * (index % 5 + 1)
    record.ended = record.last_chunk_at + 0.001
    record.upstream_status = 200
    record.input_tokens, record.output_tokens = 10 + index, 3 + index % 11
    record.cache_read_input_tokens = index % 3
    record.output_deltas = 2 + index % 4
    record.outcome = "completed"
    for name, value in fields.items():
        setattr(record, name, value)
    return record


# Calls that differ in every value the shared attribute sets depend on.
VARIED: list[dict[str, Any]] = [
    {},
    {"route": "/v2"},
    {"request_model": "claude-sonnet-5-5-20260101", "response_model": "claude-sonnet-5-5"},
    {"request_model": "made-up", "response_model": "made-up-too"},
    {"outcome": "upstream_error", "error_type": "overloaded_error", "upstream_status": 529},
    {"outcome": "upstream_error", "error_type": "SomeException"},
    {"outcome": "client_cancelled"},
    {"outcome": "idle_timeout", "error_type": "idle_timeout"},
    {"server_port": 8443},
    {"stream": False},
    {"upstream_started": None, "outcome": "rejected", "error_type": "rejected"},
]


def finish_all(telemetry: Telemetry, records: list[StreamRecord]) -> None:
    for record in records:  # never written: the stream start completes at its finish
        span = telemetry.start_stream(record, trace.INVALID_SPAN)
        telemetry.admitted(record)
        telemetry.finish_stream(record, span)
