"""Recordings: only a completed answer becomes an entry; identical requests in flight follow
one (coalescing: one Claude call for all of them)."""

from __future__ import annotations

import asyncio
import logging
import re

import aiohttp
import pytest
from opentelemetry.trace import SpanKind

from sidecar.cache.recording import Cursor, Recording
from sidecar.cache.service import ResponseCache
from sidecar.cache.stores import MemoryCacheStore
from sidecar.fake_claude import FakeServer
from sidecar.record import Outcome, StreamRecord
from tests.support.cache import asking, cached, post, post_at_once
from tests.support.clients import release_stalls
from tests.support.otel import make_otel
from tests.support.resume import ROUTE, without_opening
from tests.support.sidecars import SidecarFactory
from tests.support.waiting import eventually, holds


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


async def test_readers_wake_on_the_calls_watchdog_ticks_until_it_ended() -> None:
    """Each tick wakes the readers (each times its own client's heartbeat by them), with
    the loop time of that look and of the one before."""
    recording = Recording(stream=True)
    waiting = asyncio.ensure_future(recording.wait(0))
    await asyncio.sleep(0)
    assert not waiting.done()
    recording.tick(10.0)
    await asyncio.wait_for(waiting, 5)
    recording.tick(10.5)
    assert (recording.ticks, recording.ticked_before, recording.ticked) == (2, 10.0, 10.5)
    assert recording.chunks == []
    recording.finish(_record("completed"))
    recording.tick(11.0)
    assert recording.ticks == 2


# ------------------------------------------------------- bounded by what can be stored


def _reader(recording: Recording) -> Cursor:
    cursor = recording.follow()
    assert cursor is not None
    return cursor


def test_a_recording_past_what_can_be_stored_keeps_only_what_its_slowest_reader_needs() -> None:
    spilled: list[Recording] = []
    recording = Recording(stream=True, limit=10, on_spill=spilled.append)
    fast, slow = _reader(recording), _reader(recording)
    recording.chunk(b"12345")
    recording.chunk(b"67890")  # as large as can be stored: kept whole
    assert recording.read(fast) == b"12345"
    assert (recording.spilled, recording.held, spilled) == (False, 10, [])
    recording.chunk(b"abc")  # past it: never an entry, and what all read is let go
    assert (recording.spilled, spilled) == (True, [recording])
    assert recording.held == 13  # the slow reader has read nothing
    assert recording.read(slow) == b"12345"
    assert recording.held == 8
    assert [recording.read(slow), recording.read(slow)] == [b"67890", b"abc"]
    assert recording.held == 8  # the fast reader, now the slowest, still needs them
    assert recording.read(fast) == b"67890"
    assert recording.held == 3
    assert recording.follow() is None  # its start is gone: nobody joins it now
    assert recording.followers == 2
    recording.unfollow(fast)  # leaving lets go of what only it needed
    assert recording.held == 0
    recording.chunk(b"de")
    assert recording.held == 2
    recording.unfollow(slow)
    assert recording.held == 0
    recording.chunk(b"fg")  # nobody reads it: not kept
    assert recording.held == 0
    recording.finish(_record("completed"))
    assert recording.completed
    assert recording.entry is None
    assert spilled == [recording]  # told once


def test_a_spilled_recording_reads_on_in_order_as_it_lets_its_head_go() -> None:
    recording = Recording(stream=True, limit=0)
    ahead, behind = _reader(recording), _reader(recording)
    got_ahead: list[bytes] = []
    got_behind: list[bytes] = []
    for n in range(1000):
        recording.chunk(b"%d" % n)
        got_ahead.append(recording.read(ahead))
        if n % 3 == 0:  # three chunks behind at most, then catches up
            got_behind.extend(recording.read(behind) for _ in range(behind.at, recording.count))
        assert recording.held == sum(len(b"%d" % i) for i in range(behind.at, recording.count))
        assert len(recording.chunks) <= 2 * (recording.count - behind.at) + 2  # compacted
    assert got_ahead == [b"%d" % n for n in range(1000)]
    assert got_behind == got_ahead[: len(got_behind)]


def test_a_message_larger_than_what_can_be_stored_is_still_read_whole() -> None:
    recording = Recording(stream=False, limit=4)
    reader = _reader(recording)
    recording.message(b"a whole answer")
    recording.finish(_record("completed"))
    assert (recording.spilled, recording.completed, recording.chunks) == (
        False, True, [b"a whole answer"],
    )  # fmt: skip
    recording.unfollow(reader)


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


_SLOW = "[[fake tokens=30 tps=100]] together"
_UI_TURN = {"id": "chat-1", "trigger": "submit-message", "messages": [
    {"id": "u1", "role": "user", "parts": [{"type": "text", "text": _SLOW}]}]}  # fmt: skip


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/v1/messages", asking(_SLOW, stream=False)),
        ("/api/stream-response", {"prompt": _SLOW}),
        ("/api/chat", _UI_TURN),
    ],
    ids=["anthropic-message", "prompt", "ui"],
)
async def test_every_route_kind_coalesces_ten_identical_requests_into_one_call(
    fake: FakeServer, sidecar_for: SidecarFactory, path: str, body: dict[str, object]
) -> None:
    """Non-streaming answers and the prompt and ui routes' own streams coalesce as the
    Anthropic stream does: one Claude call, ten identical answers (the data; a resumable
    first caller's events also carry its stream id)."""

    async def ask(http: aiohttp.ClientSession) -> tuple[int, str | None, list[str]]:
        async with http.post(s.url + path, json=body) as response:
            # (a resumable first caller's opening id-only block aside, as its ids are)
            lines = without_opening(await response.read()).decode().splitlines()
            data = [line for line in lines if not line.startswith("id:")]
            return response.status, response.headers.get("X-Cache"), data

    async with sidecar_for(cached(include_sampled=True)) as s, aiohttp.ClientSession() as http:
        results = await asyncio.gather(*(ask(http) for _ in range(10)))
    assert fake.state.counters["requests"] == 1
    assert sorted((status, str(cache)) for status, cache, _ in results) == [(200, "HIT")] * 9 + [
        (200, "MISS")
    ]
    assert len({tuple(data) for _, _, data in results}) == 1


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


# ------------------------------------------------- the first caller leaves, followers read on

DELTA = b"event: content_block_delta"


def _following(cache: ResponseCache | None) -> int:
    """How many callers read the one call in flight (its first caller is one of them)."""
    assert cache is not None
    return sum(recording.followers for recording in cache.inflight.values())


def _ended_with(caplog: pytest.LogCaptureFixture) -> list[tuple[str, int]]:
    """(outcome, output tokens) of each Claude call the logs ended."""
    return [
        (str(getattr(r, "outcome", None)), int(getattr(r, "output_tokens", -1)))
        for r in caplog.records
        if getattr(r, "event", None) in ("stream_complete", "stream_error")
    ]


async def _read_deltas(response: aiohttp.ClientResponse, count: int) -> bytes:
    """Read until `count` more content deltas came (or the stream ended)."""
    read = b""
    while read.count(DELTA) < count and not response.content.at_eof():
        read += await response.content.readany()
    return read


async def test_followers_get_the_whole_stream_when_its_first_caller_leaves(
    fake: FakeServer, sidecar_for: SidecarFactory, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    body = asking("[[fake tokens=40 tps=40]] shared")
    async with sidecar_for(cached()) as s, aiohttp.ClientSession() as http:
        cache = s.runtime.cache
        async with http.post(s.url + "/v1/messages", json=body) as leader:
            await leader.content.readuntil(DELTA)
            followers = [asyncio.create_task(post(s.url, body)) for _ in range(2)]
            await eventually(lambda: holds(_following(cache) == 3))
        # The first caller left mid-stream: its call goes on for the two following it.
        results = await asyncio.gather(*followers)
        assert cache is not None
        await cache.settled()
        again = await post(s.url, body)
        await eventually(lambda: holds(len(_ended_with(caplog)) == 1))
    assert [(status, x_cache) for status, x_cache, _ in results] == [(200, "HIT")] * 2
    whole = results[0][2]
    assert whole == results[1][2] == again[2]  # byte for byte, and stored
    assert whole.count(DELTA) == 40
    assert b"event: message_stop" in whole
    assert b"event: error" not in whole
    assert again[1] == "HIT"
    assert fake.state.counters["requests"] == 1
    assert fake.state.counters["streams_completed"] == 1
    # The call is the first caller's (it left: `client_cancelled`), charged all it used.
    assert _ended_with(caplog) == [("client_cancelled", 40)]


async def test_the_call_stops_once_its_followers_leave_too(
    fake: FakeServer, sidecar_for: SidecarFactory, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    body = asking("[[fake tokens=400 tps=40]] left by all")
    async with sidecar_for(cached()) as s, aiohttp.ClientSession() as http:
        cache = s.runtime.cache
        async with http.post(s.url + "/v1/messages", json=body) as leader:
            await leader.content.readuntil(DELTA)
            follower = await http.post(s.url + "/v1/messages", json=body)
            await eventually(lambda: holds(_following(cache) == 2))
        first = await _read_deltas(follower, 20)  # made after the first caller left
        assert first.count(DELTA) >= 20
        assert b"event: error" not in first
        follower.close()
        await fake.state.wait_for(lambda state: state.counters["streams_cancelled"] == 1)
        await eventually(lambda: holds(len(_ended_with(caplog)) == 1))
        assert cache is not None
        assert not cache.inflight
        assert len(s.runtime.streams) == 0
        again = await post(s.url, asking("[[fake tokens=3]] short"))
    assert again[1] == "MISS"
    assert fake.state.counters["streams_completed"] == 1  # the short one only
    ((outcome, output),) = _ended_with(caplog)[:1]
    assert outcome == "client_cancelled"
    assert 20 <= output < 400


async def test_shutdown_ends_a_call_kept_for_its_followers(
    fake: FakeServer, sidecar_for: SidecarFactory, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    body = asking("[[fake tokens=400 tps=40]] until shutdown")
    async with aiohttp.ClientSession() as http:
        async with sidecar_for(cached()) as s:
            cache = s.runtime.cache
            async with http.post(s.url + "/v1/messages", json=body) as leader:
                await leader.content.readuntil(DELTA)
                follower = await http.post(s.url + "/v1/messages", json=body)
                await eventually(lambda: holds(_following(cache) == 2))
            assert (await _read_deltas(follower, 20)).count(DELTA) >= 20
            rest = asyncio.create_task(follower.read())
        # Shut down while the call goes on for its follower: it ends, with its stream,
        # told why as the call's own client would have been (it may retry elsewhere).
        tail = await rest
    assert tail.endswith(
        b'event: error\ndata: {"type": "error", "error": {"type": "overloaded_error", '
        b'"message": "the sidecar is shutting down"}}\n\n'
    )
    assert fake.state.counters["streams_cancelled"] == 1
    assert [outcome for outcome, _ in _ended_with(caplog)] == ["shutting_down"]


async def test_a_cancelled_resumable_stream_goes_on_for_its_followers(
    fake: FakeServer, sidecar_for: SidecarFactory, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    prompt = ROUTE + "?prompt=%5B%5Bfake%20tokens%3D40%20tps%3D40%5D%5D%20stop%20it"
    config = {**cached(include_sampled=True), "resume": {"detach_grace_seconds": 30}}
    async with sidecar_for(config) as s, aiohttp.ClientSession() as http:
        cache = s.runtime.cache
        async with http.get(s.url + prompt) as leader:
            assert leader.headers.get("X-Cache") == "MISS"
            await leader.content.readuntil(b"token")
            followers = [asyncio.create_task(http.get(s.url + prompt)) for _ in range(2)]
            await eventually(lambda: holds(_following(cache) == 3))
            (stream_id,) = s.runtime.resume.hub.stream_ids()
            async with http.delete(f"{s.url}{ROUTE}/{stream_id}") as cancelled:
                assert cancelled.status == 204
            await leader.read()  # the first caller's stream ends
        replies = [await (await task).read() for task in followers]
        await eventually(lambda: holds(len(_ended_with(caplog)) == 1))
    for reply in replies:
        assert b'"done":true' in reply.replace(b" ", b"")
        assert b"error" not in reply
    assert fake.state.counters["requests"] == 1
    assert fake.state.counters["streams_completed"] == 1
    assert _ended_with(caplog) == [("client_cancelled", 40)]


async def test_a_stream_its_owner_cancelled_is_over_for_the_owner_while_followers_read_on(
    fake: FakeServer, sidecar_for: SidecarFactory
) -> None:
    # The owner's Stop while others follow the call: its stream ends with `cancelled`, as
    # when nobody follows, and its reconnect (an EventSource does so by itself) finds the
    # stream over instead of attaching again and reading on.
    prompt = ROUTE + "?prompt=%5B%5Bfake%20tokens%3D40%20tps%3D40%5D%5D%20stop%20mine"
    config = {**cached(include_sampled=True), "resume": {"detach_grace_seconds": 30}}
    async with sidecar_for(config) as s, aiohttp.ClientSession() as http:
        cache = s.runtime.cache
        async with http.get(s.url + prompt) as leader:
            seen = await leader.content.readuntil(b"token")
            follower = asyncio.create_task(http.get(s.url + prompt))
            await eventually(lambda: holds(_following(cache) == 2))
            (stream_id,) = s.runtime.resume.hub.stream_ids()
            async with http.delete(f"{s.url}{ROUTE}/{stream_id}") as cancelled:
                assert cancelled.status == 204
            own = seen + await leader.read()
        last = own.rstrip().rsplit(b"\n\n", 1)[-1]
        assert b'"cancelled"' in last, own
        (last_id,) = re.findall(rb"^id: (\S+)$", last, re.M)
        async with http.get(s.url + ROUTE, headers={"Last-Event-ID": last_id.decode()}) as again:
            assert again.status == 204, await again.read()
        reply = await (await follower).read()
    assert b'"done":true' in reply.replace(b" ", b"")
    assert fake.state.counters["streams_completed"] == 1


async def test_followers_of_a_call_cut_by_the_sidecar_get_its_own_end(
    fake: FakeServer, sidecar_for: SidecarFactory
) -> None:
    # Claude goes silent: the idle timeout cuts the call, and each follower's stream
    # ends with the call's `timeout_error`, not as a stream that merely stopped early.
    body = asking("[[fake tokens=30 tps=100 fault=stall_midstream after=3]] silent")
    config = {**cached(), "claude": {"idle_timeout_seconds": 1}}
    async with sidecar_for(config) as s, aiohttp.ClientSession() as http:
        cache = s.runtime.cache
        async with http.post(s.url + "/v1/messages", json=body) as leader:
            first = await _read_deltas(leader, 3)
            follower = asyncio.create_task(post(s.url, body))
            await eventually(lambda: holds(_following(cache) == 2))
            own = first + await leader.read()
        status, x_cache, followed = await follower
    assert (status, x_cache) == (200, "HIT")
    end = b'event: error\ndata: {"type": "error", "error": {"type": "timeout_error", '
    assert own.count(end) == followed.count(end) == 1
    assert followed == own  # byte for byte, its end too


@pytest.mark.parametrize("resume", ["off", "on"], ids=["replayed", "resumable"])
async def test_a_coalesced_stream_past_max_bytes_keeps_only_what_its_readers_have_not_read(
    fake: FakeServer, sidecar_for: SidecarFactory, resume: str
) -> None:
    """Past `cache.max_bytes` the answer can never be stored: it leaves the answers in flight
    and lets go of every chunk all its readers read, while the call goes on for them; a
    request arriving then makes its own call. (A resumable stream's first caller reads its
    generation, not the recording: it holds nothing there.)"""
    # Only the first call stalls (`fail_key`): the late caller's own call does not.
    knobs = "tokens=200 ttft_ms=1500 fault=stall_midstream after=150 fail_key=long"
    text = f"[[fake {knobs}]] a long one"
    body = asking(text, max_tokens=400)
    async with sidecar_for(cached(max_bytes=4096)) as s:
        cache = s.runtime.cache
        assert cache is not None
        first = asyncio.create_task(post(s.url, body, {"Sidecar-Resume": resume}))
        await eventually(lambda: holds(_following(cache) == 1))
        (recording,) = cache.inflight.values()
        second = asyncio.create_task(post(s.url, body, {"Sidecar-Resume": resume}))
        await eventually(lambda: holds(recording.followers == 2))
        # Claude sends 150 deltas, then goes quiet: both callers read them all.
        await eventually(lambda: holds(recording.spilled and recording.held == 0))
        assert recording.size > 4096
        assert not cache.inflight  # no longer an answer to follow
        assert len(s.runtime.streams) == 1  # the call goes on
        late = asyncio.create_task(post(s.url, body, {"Sidecar-Resume": resume}))  # joins nothing
        await fake.state.wait_for(lambda state: state.counters["requests"] == 2)
        await release_stalls(fake)
        results = await asyncio.gather(first, second, late)
        await cache.settled()
        assert isinstance(cache.store, MemoryCacheStore)
        assert len(cache.store) == 0  # neither answer was stored
    assert sorted(str(x_cache) for _, x_cache, _ in results) == ["HIT", "MISS", "MISS"]
    answers = [re.sub(rb"(?m)^id:.*\n", b"", raw) for _, _, raw in results]
    assert answers[0] == answers[1]  # one call for the first two
    for answer in answers:  # whole answers
        assert answer.count(DELTA) == 200
        assert b"event: message_stop" in answer
        assert b"event: error" not in answer
    assert recording.entry is None
