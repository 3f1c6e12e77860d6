"""Recordings: only a completed answer becomes an entry; readers follow one as it grows."""

from __future__ import annotations

import asyncio

import pytest

from sidecar.cache.recording import Recording
from sidecar.record import Outcome, StreamRecord


def _record(outcome: Outcome | None, error_type: str | None = None) -> StreamRecord:
    record = StreamRecord(request_id="r", route="/v1/", started=0.0)
    record.outcome = outcome
    record.error_type = error_type
    record.input_tokens, record.output_tokens = 7, 12
    return record


def test_a_completed_stream_becomes_an_entry_with_its_usage_and_gaps() -> None:
    ended: list[Recording] = []
    recording = Recording(stream=True, on_end=ended.append)
    recording.chunk(b"one")
    recording.chunk(b"two")
    recording.finish(_record("completed"))
    assert ended == [recording]
    entry = recording.entry
    assert entry is not None
    assert entry.chunks == [b"one", b"two"]
    assert entry.gaps[0] == 0.0
    assert entry.gaps[1] >= 0.0
    assert (entry.input_tokens, entry.output_tokens) == (7, 12)
    recording.chunk(b"late")  # after the end: ignored
    assert entry.chunks == [b"one", b"two"]


@pytest.mark.parametrize(
    ("outcome", "error_type"),
    [
        ("completed", "overloaded_error"),  # Claude's `event: error` was relayed
        ("upstream_error", "api_error"),
        ("client_cancelled", None),
        ("client_detached", None),
        ("client_stalled", None),
        ("idle_timeout", "timeout_error"),
        ("shutting_down", "overloaded_error"),
        ("rejected", "rate_limit_error"),
        (None, None),
    ],
)
def test_anything_but_a_clean_completion_is_never_an_entry(
    outcome: Outcome | None, error_type: str | None
) -> None:
    recording = Recording(stream=True)
    recording.chunk(b"event: message_start\n\n")
    recording.finish(_record(outcome, error_type))
    assert recording.ended
    assert recording.entry is None


def test_a_completed_call_with_no_answer_is_not_an_entry() -> None:
    recording = Recording(stream=False)
    recording.finish(_record("completed"))
    assert recording.entry is None


def test_an_abandoned_recording_ends_once() -> None:
    ended: list[Recording] = []
    recording = Recording(stream=True, on_end=ended.append)
    recording.abandon()
    recording.finish(_record("completed"))
    assert ended == [recording]
    assert recording.entry is None


async def test_readers_wake_on_each_chunk_and_on_the_end() -> None:
    recording = Recording(stream=True)
    waiting = asyncio.ensure_future(recording.wait(0))
    await asyncio.sleep(0)
    assert not waiting.done()
    recording.chunk(b"first")
    await asyncio.wait_for(waiting, 5)
    waiting = asyncio.ensure_future(recording.wait(1))
    await asyncio.sleep(0)
    assert not waiting.done()
    recording.finish(_record("upstream_error", "api_error"))
    await asyncio.wait_for(waiting, 5)
