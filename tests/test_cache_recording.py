"""Recordings: only a completed answer becomes an entry; identical requests in flight follow
one (coalescing: one Claude call for all of them)."""

from __future__ import annotations

import asyncio

import pytest
from opentelemetry.trace import SpanKind

from sidecar.cache.recording import Recording
from sidecar.fake_claude import FakeServer
from sidecar.record import Outcome, StreamRecord
from tests.support.cache import asking, cached, post, post_at_once
from tests.support.otel import make_otel
from tests.support.sidecars import SidecarFactory


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


# --------------------------------------------------------------------------- coalescing


async def test_ten_identical_concurrent_requests_make_one_claude_call(
    fake: FakeServer, sidecar_for: SidecarFactory
) -> None:
    body = asking("[[fake tokens=30 tps=100]] together")
    otel = make_otel()
    async with sidecar_for(cached(), telemetry=otel.telemetry) as s:
        results = await post_at_once(s.url, body, 10)
    assert fake.state.counters["requests"] == 1
    assert sorted(str(status) for _, status, _ in results) == ["HIT"] * 9 + ["MISS"]
    assert len({raw for _, _, raw in results}) == 1  # ten identical streams
    assert results[0][2].count(b"event: content_block_delta") == 30
    assert otel.count("sidecar.cache.lookups", **{"sidecar.cache.result": "hit"}) == 9
    assert otel.count("sidecar.cache.tokens_saved") > 0
    # Each follower's request span links to the one Claude call it waited on.
    call = otel.client_span().context
    followers = [
        span for span in otel.spans(SpanKind.SERVER)
        if (span.attributes or {}).get("sidecar.cache.hit") is True
    ]  # fmt: skip
    assert len(followers) == 9
    assert all([link.context for link in span.links] == [call] for span in followers)


async def test_followers_of_a_call_refused_before_answering_call_claude_themselves(
    fake: FakeServer, sidecar_for: SidecarFactory
) -> None:
    body = asking("[[fake fault=bad_request]] refused")
    async with sidecar_for(cached()) as s:
        results = await post_at_once(s.url, body, 3)
    assert [status for status, _, _ in results] == [400, 400, 400]
    assert all(b"invalid_request_error" in raw for _, _, raw in results)
    assert fake.state.counters["requests"] == 3


async def test_followers_of_a_stream_that_fails_midway_get_its_error_and_nothing_is_stored(
    fake: FakeServer, sidecar_for: SidecarFactory
) -> None:
    body = asking("[[fake tokens=30 tps=20 fault=midstream_error after=20]] doomed")
    async with sidecar_for(cached()) as s:
        results = await post_at_once(s.url, body, 3)
        assert s.runtime.cache is not None
        await s.runtime.cache.settled()
        again = await post(s.url, body)
    assert fake.state.counters["requests"] == 2  # the three shared one call; nothing was kept
    assert sorted(str(status) for _, status, _ in results) == ["HIT", "HIT", "MISS"]
    assert len({raw for _, _, raw in results}) == 1
    assert b"event: error" in results[0][2]
    assert again[1] == "MISS"
