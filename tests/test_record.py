"""The per-stream record: input tokens totalled as the GenAI conventions count them, the
defaults a call starts from (no outcome yet, labels at their bounded fallbacks), and slotted
fields, so a misspelt write on the hot path fails instead of going unread."""

from __future__ import annotations

import pytest

from sidecar.record import StreamRecord
from sidecar.telemetry.bounded import OTHER_ERROR, OTHER_MODEL


def record() -> StreamRecord:
    return StreamRecord(request_id="req-1", route="/v1", started=1.5)


@pytest.mark.parametrize(
    ("uncached", "written", "read", "total"),
    [(0, 0, 0, 0), (25, 0, 0, 25), (0, 3, 0, 3), (0, 0, 2, 2), (25, 3, 2, 30)],
)
def test_total_input_tokens_adds_uncached_cache_writes_and_cache_reads(
    uncached: int, written: int, read: int, total: int
) -> None:
    call = StreamRecord(
        "req-1", "/v1", 1.5, input_tokens=uncached, cache_creation_input_tokens=written,
        cache_read_input_tokens=read,
    )  # fmt: skip
    assert call.total_input_tokens == total
    assert call.input_tokens == uncached  # the total is derived, never written back


def test_the_total_follows_usage_written_after_the_record_was_made() -> None:
    call = record()
    call.input_tokens = 10
    call.cache_read_input_tokens = 4
    assert call.total_input_tokens == 14


def test_a_new_record_has_no_outcome_and_its_labels_at_the_bounded_fallbacks() -> None:
    call = record()
    assert call.outcome is None  # decided at the call's end
    assert (call.ended, call.first_chunk_at, call.first_token_at, call.last_chunk_at) == (
        None, None, None, None,
    )  # fmt: skip
    assert (call.chunks, call.output_deltas, call.output_tokens, call.retries) == (0, 0, 0, 0)
    assert call.model_label == OTHER_MODEL
    assert call.error_label == OTHER_ERROR
    assert call.response_model_label is None
    assert not call.admitted


def test_each_record_keeps_its_own_completion_parts() -> None:
    first, second = record(), record()
    first.completion_parts.append("hello")
    assert second.completion_parts == []


def test_a_field_that_does_not_exist_cannot_be_written() -> None:
    call = record()
    with pytest.raises(AttributeError):
        call.output_token = 5  # type: ignore[attr-defined]
