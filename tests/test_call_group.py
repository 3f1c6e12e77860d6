"""A coalesced call belongs to its group: read from Claude at Claude's pace into its
recording, each caller (its first one too) a reader of it, and never stopped by one of
them leaving while another remains — whenever the first caller leaves."""

from __future__ import annotations

import asyncio
import json
import logging
import urllib.parse
from dataclasses import dataclass
from typing import Any

import aiohttp
import pytest

from sidecar.cache.service import ResponseCache
from sidecar.fake_claude import FakeServer
from sidecar.http_client import Response
from sidecar.relay import LiveStream, tick_interval
from sidecar.sse import PING
from sidecar.upstream import read_answer
from tests.support.cache import asking, cached
from tests.support.clients import release_stalls
from tests.support.resume import ROUTE
from tests.support.sidecars import SidecarFactory
from tests.support.sockets import dechunk, server_side, shrink_send_buffers, slow_client
from tests.support.timed_reads import gaps, joined, timed_response
from tests.support.waiting import eventually, holds


@dataclass(frozen=True)
class Kind:
    """A route kind whose identical requests coalesce, asked `text` in its own request."""

    method: str
    path: str
    end: bytes  # what a complete answer of this kind ends with (spaces removed)
    stream: bool = True
    resume: bool = False  # the Anthropic route's opt-in (`Sidecar-Resume: on`)

    def request(self, text: str, max_tokens: int = 64) -> tuple[str, dict[str, Any] | None]:
        """The path and JSON body asking `text`."""
        if self.path == ROUTE:
            return f"{ROUTE}?prompt={urllib.parse.quote(text)}", None
        if self.path == "/api/chat":
            message = {"id": "u1", "role": "user", "parts": [{"type": "text", "text": text}]}
            return self.path, {"id": "chat-1", "trigger": "submit-message", "messages": [message]}
        return self.path, asking(text, stream=self.stream, max_tokens=max_tokens)

    @property
    def headers(self) -> dict[str, str]:
        return {"Sidecar-Resume": "on"} if self.resume else {}


ANTHROPIC = Kind("POST", "/v1/messages", b"event:message_stop")
ANTHROPIC_RESUMABLE = Kind("POST", "/v1/messages", b"event:message_stop", resume=True)
MESSAGE = Kind("POST", "/v1/messages", b'"stop_reason":"end_turn"', stream=False)
PROMPT = Kind("GET", ROUTE, b'"done":true')  # resumable unless resume is off
UI = Kind("POST", "/api/chat", b"data:[DONE]")
NOT_RESUMABLE: dict[str, Any] = {"resume": {"enabled": False}}


async def _ask(
    url: str, kind: Kind, text: str, max_tokens: int = 64
) -> tuple[int, str | None, bytes]:
    """One identical request of `kind`: status, X-Cache and the answer (event ids dropped)."""
    path, body = kind.request(text, max_tokens)
    async with (
        aiohttp.ClientSession() as http,
        http.request(kind.method, url + path, json=body, headers=kind.headers) as response,
    ):
        raw = await response.read()
        kept = b"\n".join(line for line in raw.split(b"\n") if not line.startswith(b"id:"))
        return response.status, response.headers.get("X-Cache"), kept


async def _first_caller(
    port: int, kind: Kind, text: str, max_tokens: int = 64
) -> asyncio.StreamWriter:
    """The first caller, on a socket with tiny buffers that it never reads."""
    path, body = kind.request(text, max_tokens)
    extra = b"".join(b"%s: %s\r\n" % (k.encode(), v.encode()) for k, v in kind.headers.items())
    raw = b"" if body is None else json.dumps(body).encode()
    _, writer = await slow_client(port, raw, extra, method=kind.method, path=path)
    return writer


def _members(cache: ResponseCache | None) -> int:
    """Callers reading the one call in flight, its first caller included."""
    assert cache is not None
    return sum(recording.followers for recording in cache.inflight.values())


def _complete(kind: Kind, answer: bytes) -> bool:
    return kind.end in answer.replace(b" ", b"")


def _ended_with(caplog: pytest.LogCaptureFixture) -> list[str]:
    """The outcome of each Claude call the logs ended."""
    return [
        str(getattr(r, "outcome", None))
        for r in caplog.records
        if getattr(r, "event", None) in ("stream_complete", "stream_error")
    ]


# ----------------------------------------------- 1. the first caller leaves as Claude ends


@pytest.mark.parametrize(
    ("kind", "resume"),
    [
        (ANTHROPIC, {}),
        (ANTHROPIC_RESUMABLE, {}),
        (PROMPT, NOT_RESUMABLE),
        (PROMPT, {}),
        (UI, NOT_RESUMABLE),
    ],
    ids=["anthropic", "anthropic-resumable", "prompt", "prompt-resumable", "ui"],
)
async def test_an_answer_whose_first_caller_left_as_claude_ended_it_is_stored(
    fake: FakeServer,
    sidecar_for: SidecarFactory,
    monkeypatch: pytest.MonkeyPatch,
    kind: Kind,
    resume: dict[str, Any],
) -> None:
    text = "[[fake tokens=5 tps=50]] left at the end"
    async with sidecar_for({**cached(include_sampled=True), **resume}) as s:
        leader = await _first_caller(s.port, kind, text)
        await eventually(lambda: holds(len(s.runtime.streams) == 1))
        gone = server_side(s, leader)
        body_ended = LiveStream.on_end

        def ended_as_its_client_left(live: LiveStream, error: BaseException | None) -> None:
            # Claude's body ends in the same turn of the loop as the first caller's
            # connection is lost, the loss handled first: its request is cancelled before
            # the stream's task sees the end.
            if error is None and not gone.is_closing():
                gone.abort()
            body_ended(live, error)

        monkeypatch.setattr(LiveStream, "on_end", ended_as_its_client_left)
        cache = s.runtime.cache
        assert cache is not None
        await eventually(lambda: holds(gone.is_closing() and not cache.inflight))
        await cache.settled()
        status, x_cache, answer = await _ask(s.url, kind, text)
        leader.close()
    assert (status, x_cache) == (200, "HIT")  # stored: Claude had ended it
    assert _complete(kind, answer)
    assert fake.state.counters["requests"] == 1


async def test_a_message_whose_first_caller_left_as_claude_ended_it_is_stored(
    fake: FakeServer, sidecar_for: SidecarFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The non-streaming case: Claude's whole answer is read in the same turn of the loop
    as the first caller's connection is lost, the loss handled first (its request gone
    from the group before the call takes the answer)."""
    text = "[[fake tokens=5 ttft_ms=500]] left at the end"
    lost: list[asyncio.Transport] = []  # the first caller's connection, once found
    cut: list[bool] = []

    async def read_as_its_client_left(upstream: Response, limit: int | None = None) -> bytes:
        body = await read_answer(upstream, limit)
        (gone,) = lost
        cut.append(not gone.is_closing())
        gone.abort()
        # Its request is cancelled and leaves the group first.
        await eventually(lambda: holds(not _members(cache)))
        return body

    monkeypatch.setattr("sidecar.call.run.read_answer", read_as_its_client_left)
    async with sidecar_for(cached(include_sampled=True)) as s:
        cache = s.runtime.cache
        assert cache is not None
        leader = await _first_caller(s.port, MESSAGE, text)
        await eventually(lambda: holds(_members(cache) == 1))
        lost.append(server_side(s, leader))
        await eventually(lambda: holds(not cache.inflight))
        await cache.settled()
        status, x_cache, answer = await _ask(s.url, MESSAGE, text)
        leader.close()
    assert cut == [True]  # (its connection was open until Claude's answer was in)
    assert (status, x_cache) == (200, "HIT")  # stored: Claude had ended it
    assert _complete(MESSAGE, answer)
    assert fake.state.counters["requests"] == 1


# ------------------------------------------------------- 2. a slow first caller paces nobody


@pytest.mark.parametrize(
    "kind",
    [ANTHROPIC, ANTHROPIC_RESUMABLE, PROMPT, UI],
    ids=["anthropic", "anthropic-resumable", "prompt", "ui"],
)
async def test_a_first_caller_that_reads_nothing_holds_back_neither_claude_nor_its_followers(
    fake: FakeServer, sidecar_for: SidecarFactory, kind: Kind
) -> None:
    tokens = 5000  # more than the relay's high-water mark plus tiny socket buffers
    text = f"[[fake tokens={tokens} tps=0]] flood"
    claude = {"client_stall_timeout_seconds": 30, "max_tokens": tokens + 10}
    config = {**cached(include_sampled=True), "claude": claude}
    async with sidecar_for(config) as s:
        cache = s.runtime.cache
        shrink_send_buffers(s)
        leader = await _first_caller(s.port, kind, text, max_tokens=tokens + 10)
        await eventually(lambda: holds(_members(cache) == 1))
        follower = asyncio.create_task(_ask(s.url, kind, text, tokens + 10))
        # Claude is read to its end while the first caller has read nothing.
        await fake.state.wait_for(lambda state: state.counters["streams_completed"] == 1)
        status, x_cache, followed = await follower
        leader.close()
    assert (status, x_cache) == (200, "HIT")
    assert _complete(kind, followed)
    assert fake.state.counters["requests"] == 1


async def test_a_first_caller_that_reads_nothing_holds_a_spilled_recording_until_it_is_cut(
    fake: FakeServer, sidecar_for: SidecarFactory
) -> None:
    """Past `cache.max_bytes` the recording keeps what its slowest reader has not read: a
    first caller that reads nothing holds it until the stall rule cuts it, then it goes
    while the call goes on for the follower."""
    tokens = 5000  # more than the replay's high-water mark plus tiny socket buffers
    knobs = f"tokens={tokens} ttft_ms=1500 fault=stall_midstream after={tokens - 10}"
    text = f"[[fake {knobs}]] held"
    claude = {"client_stall_timeout_seconds": 1, "max_tokens": tokens + 10}
    config = {**cached(include_sampled=True, max_bytes=4096), "claude": claude}
    async with sidecar_for(config) as s:
        cache = s.runtime.cache
        shrink_send_buffers(s)
        leader = await _first_caller(s.port, ANTHROPIC, text, max_tokens=tokens + 10)
        await eventually(lambda: holds(_members(cache) == 1))
        assert cache is not None
        (recording,) = cache.inflight.values()
        follower = asyncio.create_task(_ask(s.url, ANTHROPIC, text, tokens + 10))
        await eventually(lambda: holds(recording.followers == 2))
        await eventually(lambda: holds(recording.spilled))
        # Cut for taking nothing, the first caller lets go of all it held; Claude is quiet.
        await eventually(lambda: holds(recording.followers == 1 and recording.held == 0))
        assert recording.size > 256 * 1024
        assert len(s.runtime.streams) == 1  # the call goes on for the follower
        await release_stalls(fake)
        status, x_cache, followed = await follower
        leader.close()
    assert (status, x_cache) == (200, "HIT")
    assert _complete(ANTHROPIC, followed)
    assert followed.count(b"event: content_block_delta") == tokens
    assert fake.state.counters["requests"] == 1


# ------------------------------------ 3. the first caller leaves before Claude's first byte


@pytest.mark.parametrize(
    "kind",
    [ANTHROPIC, ANTHROPIC_RESUMABLE, MESSAGE, PROMPT, UI],
    ids=["anthropic", "anthropic-resumable", "anthropic-message", "prompt", "ui"],
)
async def test_followers_of_a_first_caller_gone_before_claude_answered_share_its_call(
    fake: FakeServer, sidecar_for: SidecarFactory, caplog: pytest.LogCaptureFixture, kind: Kind
) -> None:
    caplog.set_level(logging.INFO)
    # Claude answers after a pause: the first caller leaves while its request is with Claude.
    text = "[[fake tokens=20 fault=slow_headers delay_ms=1500]] patience"
    async with sidecar_for(cached(include_sampled=True)) as s:
        cache = s.runtime.cache
        assert cache is not None
        leader = await _first_caller(s.port, kind, text)
        await fake.state.wait_for(lambda state: state.counters["requests"] == 1)
        followers = [asyncio.create_task(_ask(s.url, kind, text)) for _ in range(2)]
        await eventually(lambda: holds(_members(cache) == 3))
        leader.transport.abort()
        await eventually(lambda: holds(_members(cache) == 2))
        results = await asyncio.gather(*followers)
        await eventually(lambda: holds(not cache.inflight))
        await cache.settled()
        again = await _ask(s.url, kind, text)
    # One call, settled and recorded once: its first caller's, which left before it ended.
    assert _ended_with(caplog) == ["client_cancelled"]
    assert [(status, x_cache) for status, x_cache, _ in results] == [(200, "HIT")] * 2
    assert results[0][2] == results[1][2] == again[2]
    assert all(_complete(kind, answer) for _, _, answer in results)
    assert again[1] == "HIT"
    assert fake.state.counters["requests"] == 1  # one call, shared, and stored


@pytest.mark.parametrize(
    "kind", [ANTHROPIC, MESSAGE, PROMPT], ids=["anthropic", "anthropic-message", "prompt"]
)
async def test_a_call_every_caller_left_before_claude_answered_is_cancelled_and_not_stored(
    fake: FakeServer, sidecar_for: SidecarFactory, kind: Kind
) -> None:
    text = "[[fake tokens=20 fault=slow_headers delay_ms=1500]] nobody waits"
    async with sidecar_for(cached(include_sampled=True)) as s:
        cache = s.runtime.cache
        assert cache is not None
        leader = await _first_caller(s.port, kind, text)
        await fake.state.wait_for(lambda state: state.counters["requests"] == 1)
        leader.transport.abort()
        await eventually(lambda: holds(not cache.inflight))
        assert len(s.runtime.streams) == 0
        _, x_cache, _ = await _ask(s.url, kind, text)
    assert x_cache == "MISS"  # nothing was stored
    assert fake.state.counters["requests"] == 2


# --------------------------------------------------------------- heartbeats while quiet


@pytest.mark.parametrize("kind", [ANTHROPIC, PROMPT], ids=["anthropic", "prompt"])
async def test_every_reader_of_a_coalesced_stream_gets_its_heartbeats_while_claude_is_quiet(
    fake: FakeServer, sidecar_for: SidecarFactory, kind: Kind
) -> None:
    text = "[[fake tokens=3 ttft_ms=1500]] thinking"
    claude = {"heartbeat_seconds": 0.1, "idle_timeout_seconds": 30}
    config = {**cached(include_sampled=True), "claude": claude, **NOT_RESUMABLE}
    async with sidecar_for(config) as s:
        results = await asyncio.gather(*(_ask(s.url, kind, text) for _ in range(2)))
    assert sorted(str(x_cache) for _, x_cache, _ in results) == ["HIT", "MISS"]
    for _, _, answer in results:
        assert b"\n\n" + PING in b"\n\n" + answer  # the comment, not Claude's `event: ping`
        assert _complete(kind, answer)
    assert fake.state.counters["requests"] == 1


@pytest.mark.parametrize(
    "kind",
    [ANTHROPIC, ANTHROPIC_RESUMABLE, PROMPT, UI],
    ids=["anthropic", "anthropic-resumable", "prompt", "ui"],
)
async def test_every_caller_waiting_for_a_coalesced_calls_head_gets_pings(
    fake: FakeServer, sidecar_for: SidecarFactory, kind: Kind
) -> None:
    """Claude's head comes 1.2 s late: the first caller (waiting for the group's call) and
    a follower (waiting for its first chunk) each get the SSE head and `: ping` every
    heartbeat meanwhile, then the whole answer."""
    beat = 0.2
    bound = beat + tick_interval(beat, 30, 60) + 0.15  # (the loop's scheduling on a busy box)
    path, body = kind.request("[[fake fault=slow_headers delay_ms=1200]] together")
    claude = {"heartbeat_seconds": beat, "idle_timeout_seconds": 30}
    async with sidecar_for({**cached(include_sampled=True), "claude": claude}) as s:
        first = asyncio.create_task(timed_response(s.port, path, body, headers=kind.headers))
        await eventually(lambda: holds(_members(s.runtime.cache) == 1))
        second = await timed_response(s.port, path, body, headers=kind.headers)
        answers = [await first, second]
    assert fake.state.counters["requests"] == 1
    for reads in answers:
        raw = joined(reads)
        assert raw.startswith(b"HTTP/1.1 200 OK\r\n")
        assert raw.count(b"\n\n" + PING) + raw.count(b"\r\n" + PING) >= 3, raw[:400]
        assert max(gaps(reads)) <= bound, gaps(reads)
        assert _complete(kind, dechunk(raw.split(b"\r\n\r\n", 1)[1]))


async def test_a_coalesced_message_waited_for_past_the_heartbeat_is_still_plain_json(
    fake: FakeServer, sidecar_for: SidecarFactory
) -> None:
    """Only a stream starts early: a non-streaming call's callers get its JSON answer."""
    text = "[[fake fault=slow_headers delay_ms=600]] together"
    config = {**cached(include_sampled=True), "claude": {"heartbeat_seconds": 0.1}}
    async with sidecar_for(config) as s:
        results = await asyncio.gather(*(_ask(s.url, MESSAGE, text) for _ in range(2)))
    assert fake.state.counters["requests"] == 1
    for status, _, answer in results:
        assert status == 200
        assert json.loads(answer)["stop_reason"] == "end_turn"


async def test_a_coalesced_call_that_fails_after_the_heads_went_out_ends_each_stream_with_an_error(
    fake: FakeServer, sidecar_for: SidecarFactory
) -> None:
    """Claude answers 529 to every try, the retry after a second: both callers' heads and
    pings went out meanwhile, so each stream ends with Anthropic's `event: error` (the
    follower, left without an answer, called Claude itself and failed the same way)."""
    path, body = ANTHROPIC.request("[[fake fault=overloaded retry_after=1]] together")
    claude = {"heartbeat_seconds": 0.2, "max_retries": 1}
    async with sidecar_for({**cached(include_sampled=True), "claude": claude}) as s:
        first = asyncio.create_task(timed_response(s.port, path, body))
        await eventually(lambda: holds(_members(s.runtime.cache) == 1))
        second = await timed_response(s.port, path, body)
        answers = [await first, second]
    for reads in answers:
        raw = joined(reads)
        assert raw.startswith(b"HTTP/1.1 200 OK\r\n")
        last = dechunk(raw.split(b"\r\n\r\n", 1)[1]).rstrip().split(b"\n\n")[-1]
        assert last.startswith(b"event: error\ndata: "), last
        assert b'"overloaded_error"' in last


# ------------------------------------------------- the prompt route's opening id


async def test_the_first_caller_of_a_coalesced_prompt_stream_gets_its_opening_id(
    fake: FakeServer, sidecar_for: SidecarFactory
) -> None:
    """The first caller reads the resumable generation as a resume does, but it is the
    stream's first client: its bytes open, as a new stream's do, with the id-only block
    `id: <stream id>:0` (an `EventSource` cut before the first token reconnects from it).
    A follower reads a replay, whose ids are plain numbers: it gets none."""
    path, _ = PROMPT.request("[[fake tokens=3 ttft_ms=800]] together")

    async def ask(http: aiohttp.ClientSession) -> tuple[str | None, str | None, bytes]:
        async with http.get(url + path) as response:
            stream_id = response.headers.get("Sidecar-Stream-Id")
            return response.headers.get("X-Cache"), stream_id, await response.read()

    config = {**cached(include_sampled=True), "resume": {"announce_stream_id": True}}
    async with sidecar_for(config) as s, aiohttp.ClientSession() as http:
        url = s.url
        results = sorted(await asyncio.gather(ask(http), ask(http)), key=lambda r: str(r[0]))
    (hit, no_id, replayed), (miss, stream_id, first) = results
    assert (hit, no_id, miss) == ("HIT", None, "MISS")
    assert first.startswith(b"id: %b:0\n\n" % str(stream_id).encode())
    assert first.count(b":0\n\n") == 1  # once, before the events (numbered from 1)
    # The replay's blocks with an id are all events (no id-only block).
    assert all(b"\ndata:" in block for block in replayed.split(b"\n\n") if block.startswith(b"id"))
    assert _complete(PROMPT, first)
    assert _complete(PROMPT, replayed)
    assert fake.state.counters["requests"] == 1


@pytest.mark.parametrize(
    ("kind", "extra"),
    [(PROMPT, NOT_RESUMABLE), (PROMPT, {}), (UI, NOT_RESUMABLE), (UI, {})],
    ids=["prompt", "prompt-resumable", "ui", "ui-resumable"],
)
async def test_every_reader_of_a_coalesced_translated_stream_gets_heartbeats_while_claude_pings(
    fake: FakeServer, sidecar_for: SidecarFactory, kind: Kind, extra: dict[str, Any]
) -> None:
    """Claude stalls after three deltas, sending only its own `event: ping`s (nothing for a
    translated route's client): the first caller (a reader of the recording, or of the
    resumable generation) and a follower each get `: ping` every heartbeat meanwhile."""
    beat = 0.2
    bound = beat + tick_interval(beat, 30, 60) + 0.15  # (the loop's scheduling on a busy box)
    path, body = kind.request("[[fake fault=stall_midstream after=3 ping_ms=50]] searching")
    claude = {"heartbeat_seconds": beat, "idle_timeout_seconds": 30}
    async with sidecar_for({**cached(include_sampled=True), "claude": claude, **extra}) as s:
        first = asyncio.create_task(timed_response(s.port, path, body, only=2.0))
        await eventually(lambda: holds(len(s.runtime.streams) == 1))
        second = await timed_response(s.port, path, body, only=1.5)
        answers = [await first, second]
    assert fake.state.counters["requests"] == 1
    for reads in answers:
        raw = joined(reads)
        assert raw.startswith(b"HTTP/1.1 200 OK\r\n")
        assert raw.count(b"\r\n" + PING) >= 4, raw
        assert max(gaps(reads)[1:]) <= bound, gaps(reads)


@pytest.mark.parametrize(
    ("kind", "extra"),
    [(ANTHROPIC, NOT_RESUMABLE), (PROMPT, NOT_RESUMABLE), (PROMPT, {}), (UI, NOT_RESUMABLE)],
    ids=["anthropic", "prompt", "prompt-resumable", "ui"],
)
async def test_readers_of_a_coalesced_stream_get_no_heartbeat_while_their_client_gets_content(
    fake: FakeServer, sidecar_for: SidecarFactory, kind: Kind, extra: dict[str, Any]
) -> None:
    """Claude streams a delta every 50 ms for 1.5 s, a tenth of the heartbeat: each
    reader's client hears from the stream all along, so none gets a `: ping`. (The call's
    own generation sends to nobody when its callers read its recording: its quiet time is
    not theirs.)"""
    text = "[[fake tokens=30 tps=20]] steady"
    claude = {"heartbeat_seconds": 0.5, "idle_timeout_seconds": 30}
    async with sidecar_for({**cached(include_sampled=True), "claude": claude, **extra}) as s:
        results = await asyncio.gather(*(_ask(s.url, kind, text) for _ in range(2)))
    assert sorted(str(x_cache) for _, x_cache, _ in results) == ["HIT", "MISS"]
    for _, _, answer in results:
        assert _complete(kind, answer)
        assert b"\n\n" + PING not in b"\n\n" + answer, answer
    assert fake.state.counters["requests"] == 1
