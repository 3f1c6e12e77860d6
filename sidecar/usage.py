"""Reading Claude's stream for accounting: ids, model, usage, stop reason, errors.

Only `message_start`, `message_delta` and `error` are JSON-decoded (a handful per
stream); content deltas are recognised by their `event:` line and counted.
"""

from __future__ import annotations

import time
from typing import Any

from sidecar.record import StreamRecord
from sidecar.sse import event_name, json_object, parse_block

DELTA = b"content_block_delta"


def usage_so_far(record: StreamRecord, unreported_input: int) -> tuple[int, int]:
    """(input, output) tokens of a stream as far as it got: a stream cut short never sees
    the final `message_delta`, so each content delta is at least one output token, and
    `unreported_input` stands for the input while no usage reported it."""
    return record.total_input_tokens or unreported_input, max(
        record.output_tokens, record.output_deltas
    )


def apply_usage(record: StreamRecord, usage: Any) -> None:
    """Copy an Anthropic `usage` object onto the record (output is cumulative).

    A count is an exact JSON integer (`type(...) is int`: not a bool); anything else is 0.
    """
    if not isinstance(usage, dict):
        return
    get = usage.get
    if (value := get("input_tokens")) is not None:
        record.input_tokens = value if type(value) is int else 0
    if (value := get("cache_creation_input_tokens")) is not None:
        record.cache_creation_input_tokens = value if type(value) is int else 0
    if (value := get("cache_read_input_tokens")) is not None:
        record.cache_read_input_tokens = value if type(value) is int else 0
    if (value := get("output_tokens")) is not None:
        record.output_tokens = value if type(value) is int else 0


def apply_message(record: StreamRecord, message: Any) -> None:
    """Record id, model, stop reason and usage of a Message object."""
    if not isinstance(message, dict):
        return
    if isinstance(message.get("id"), str):
        record.response_id = message["id"]
    if isinstance(message.get("model"), str):
        record.response_model = message["model"]
    if isinstance(message.get("stop_reason"), str):
        record.stop_reason = message["stop_reason"]
    apply_usage(record, message.get("usage"))
    if record.capture and isinstance(message.get("content"), list):
        record.completion_parts.extend(
            block["text"]
            for block in message["content"]
            if isinstance(block, dict) and isinstance(block.get("text"), str)
        )


def observe(record: StreamRecord, block: bytes) -> bytes:
    """Account for one upstream event block; returns its event name."""
    name = event_name(block)
    if name == DELTA:
        record.output_deltas += 1
        if record.first_token_at is None:
            record.first_token_at = time.perf_counter()
        return name
    if name == b"message_start":
        apply_message(record, json_object(parse_block(block)[1]).get("message"))
    elif name == b"message_delta":
        payload = json_object(parse_block(block)[1])
        delta = payload.get("delta")
        if isinstance(delta, dict) and isinstance(delta.get("stop_reason"), str):
            record.stop_reason = delta["stop_reason"]
        apply_usage(record, payload.get("usage"))
    elif name == b"error":
        record.error_type = error_type_of(json_object(parse_block(block)[1]).get("error"))
    return name


def error_type_of(error: Any) -> str:
    """The type of an Anthropic `error` object: its `type` when that is a non-empty string,
    else `api_error` (an object, a number, nothing: no type a label or a line can carry)."""
    kind = error.get("type") if isinstance(error, dict) else None
    return kind if isinstance(kind, str) and kind else "api_error"
