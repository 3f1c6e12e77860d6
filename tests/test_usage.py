"""Usage from Claude's events: tokens, stop reason and errors gathered into the stream's record."""

from __future__ import annotations

import json

from sidecar.record import StreamRecord
from sidecar.sse import EventScanner
from sidecar.usage import observe
from tests.support.claude_streams import STREAM


def test_observe_collects_usage_and_stop_reason() -> None:
    record = StreamRecord(request_id="r", route="/v1/", started=0.0)
    for block in EventScanner().feed(STREAM):
        observe(record, block)
    assert record.response_id == "msg_1"
    assert record.response_model == "m"
    assert (record.input_tokens, record.cache_creation_input_tokens) == (25, 3)
    assert record.cache_read_input_tokens == 2
    assert record.total_input_tokens == 30
    assert record.output_tokens == 42
    assert record.stop_reason == "end_turn"
    assert record.output_deltas == 1
    assert record.first_token_at is not None


def test_observe_error_event_and_bad_json() -> None:
    record = StreamRecord(request_id="r", route="/v1/", started=0.0)
    error = {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}
    observe(record, b"event: error\ndata: " + json.dumps(error).encode())
    assert record.error_type == "overloaded_error"
    observe(record, b"event: message_delta\ndata: {not json")
    assert record.output_tokens == 0
