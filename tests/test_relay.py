"""The push-mode relay over real sockets: a slow client pauses Claude and nothing is lost, a
finished stream hands its upstream connection back for reuse, and bodies that break mid-stream
(bad framing, a lost connection, a client that leaves while paused) end with one error event."""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import socket
import urllib.parse

import aiohttp
import pytest

from sidecar import relay
from sidecar.fake_claude import FakeServer
from sidecar.relay import LiveStream
from sidecar.stream.adapter import ClientChannel
from sidecar.stream.core import StreamCore
from tests.support.scripted_claude import (
    DELTA,
    MODEL,
    SSE_HEAD,
    START,
    STOP,
    chunk,
    claude_config,
    messages_body,
    relayed,
    scripted_claude,
)
from tests.support.sidecars import SidecarFactory, running_sidecar
from tests.support.sockets import (
    dechunk,
    relayed_payload,
    shrink_send_buffers,
    slow_client,
    small_buffered,
)
from tests.support.timed_reads import gaps, joined, timed_response
from tests.support.waiting import eventually, holds

TOKENS = 5000  # ~600 KB of events: more than the relay's high-water mark plus tiny socket buffers


async def test_slow_client_pauses_claude_and_loses_nothing(sidecar_for: SidecarFactory) -> None:
    body = json.dumps({
        "model": "claude-sonnet-5-5", "max_tokens": TOKENS + 10, "stream": True,
        "messages": [{"role": "user", "content": f"[[fake tokens={TOKENS}]] flood"}],
    }).encode()  # fmt: skip
    claude = {"idle_timeout_seconds": 0.3, "heartbeat_seconds": 0.1}
    async with sidecar_for({"claude": claude}) as sidecar:
        shrink_send_buffers(sidecar)
        reader, writer = await slow_client(sidecar.port, body)

        def live() -> LiveStream | None:
            streams = list(sidecar.runtime.streams)
            return streams[0] if streams else None

        async def paused() -> bool:
            stream = live()
            return stream is not None and stream.paused

        await eventually(paused)  # the client's buffers are full: Claude is paused, not buffered
        stream = live()
        assert stream is not None
        queued = stream.unsent_bytes
        assert queued < 2 * 1024 * 1024  # held back at the high-water mark, not the whole stream
        await asyncio.sleep(0.6)  # paused for longer than the idle timeout: still not idle
        assert live() is not None
        raw = await reader.read()  # now read everything
        writer.close()
    head, _, chunked = raw.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200")
    payload = dechunk(chunked)
    events = payload.split(b"\n\n")
    assert sum(1 for e in events if e.startswith(b"event: content_block_delta")) == TOKENS
    assert events[-2].startswith(b"event: message_stop")  # complete, no error event


async def test_finished_streams_reuse_the_upstream_connection(
    fake: FakeServer, sidecar_for: SidecarFactory
) -> None:
    body = {"model": "claude-sonnet-5-5", "max_tokens": 16, "stream": True,
            "messages": [{"role": "user", "content": "again"}]}  # fmt: skip
    async with sidecar_for() as sidecar, aiohttp.ClientSession() as http:
        for _ in range(5):
            async with http.post(sidecar.url + "/v1/messages", json=body) as response:
                assert b"message_stop" in await response.read()
    peers = {request.peer for request in fake.state.requests}
    assert len(peers) == 1  # one keep-alive connection served all five streams


async def test_a_stream_paused_again_while_resuming_still_finishes(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # One upstream read may hold more than the high-water mark past the point where the
    # relay paused Claude: resuming relays that rest at once and can pause again. A tiny
    # mark makes that happen on every resume.
    monkeypatch.setattr(relay, "HIGH_WATER", 4096)
    events = 20000

    async def burst(writer: asyncio.StreamWriter) -> None:
        body = chunk(START) + b"".join(chunk(DELTA) for _ in range(events)) + chunk(STOP)
        writer.write(SSE_HEAD + body + b"0\r\n\r\n")
        await writer.drain()

    async with scripted_claude(burst) as url, running_sidecar(claude_config(url)) as sidecar:
        payload = json.dumps(messages_body()).encode()
        reader, writer = await slow_client(sidecar.port, payload)
        raw = bytearray()
        async with asyncio.timeout(10):  # a stuck relay never ends the response
            while data := await reader.read(4096):
                raw += data
        writer.close()
    head, _, body = bytes(raw).partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200")
    blocks = dechunk(body).split(b"\n\n")
    assert sum(1 for b in blocks if b.startswith(b"event: content_block_delta")) == events
    assert blocks[-2:] == [STOP[:-2], b""]  # complete, no error event


async def test_a_long_pause_does_not_count_as_idle_once_the_client_catches_up() -> None:
    # Claude sends until the slow client makes the relay pause, then thinks for a moment
    # (shorter than the idle timeout) once the client has caught up.
    small = b'event: content_block_delta\ndata: {"type":"content_block_delta","index":0,' + (
        b'"delta":{"type":"text_delta","text":"' + b"y" * 8000 + b'"}}\n\n'
    )
    sent = 0
    caught_up = asyncio.Event()
    streams: list[relay.LiveStream] = []

    async def until_paused(writer: asyncio.StreamWriter) -> None:
        nonlocal sent
        writer.write(SSE_HEAD + chunk(START))
        while not (streams and streams[0].paused):
            before = streams[0].record.chunks if streams else 0
            writer.write(chunk(small))
            await writer.drain()
            sent += 1
            await eventually(functools.partial(relayed_since, before))  # nothing held back
        await caught_up.wait()
        writer.write(chunk(STOP) + b"0\r\n\r\n")
        await writer.drain()

    async def relayed_since(before: int) -> bool:
        return bool(streams) and (streams[0].record.chunks > before or streams[0].paused)

    config = claude_config("", idle_timeout_seconds=0.4, heartbeat_seconds=0.4)
    async with scripted_claude(until_paused) as url:
        config["claude"]["base_url"] = url
        async with running_sidecar(config) as sidecar:
            shrink_send_buffers(sidecar)
            reader, writer = await slow_client(sidecar.port, json.dumps(messages_body()).encode())

            async def started() -> bool:
                streams[:] = list(sidecar.runtime.streams)
                return bool(streams)

            await eventually(started)
            await eventually(lambda: holds(streams[0].paused))
            await asyncio.sleep(0.6)  # paused for longer than the idle timeout
            raw = bytearray()
            while relayed_payload(raw).count(b'"text_delta"') < sent:  # the client catches up...
                raw += await reader.read(65536)
            await asyncio.sleep(0.25)  # ...and Claude thinks for a while (< idle timeout)
            caught_up.set()
            raw += await reader.read()
            writer.close()
    assert b"event: message_stop" in raw
    assert b"idle" not in raw.split(b"text_delta")[-1]


@pytest.mark.parametrize(
    ("route", "bad"),
    [
        ("/v1/messages", b"zz\r\nhello\r\n"),  # not a chunk size
        ("/v1/messages", b"5\r\nhelloXX"),  # no CRLF after the chunk
        ("/api/stream-response", b"zz\r\nhello\r\n"),
    ],
)
async def test_broken_chunked_framing_mid_stream_is_a_lost_connection(
    route: str, bad: bytes
) -> None:
    # aiohttp's parser drops the body reader on a framing error without telling it; the
    # stream must still end at once as "connection lost", not wait for the idle timeout.
    relayed = asyncio.Event()

    async def broken(writer: asyncio.StreamWriter) -> None:
        writer.write(SSE_HEAD + chunk(START) + chunk(DELTA))
        await writer.drain()
        await relayed.wait()
        writer.write(bad)
        await writer.drain()
        await relayed.wait()

    config = claude_config("", idle_timeout_seconds=20, heartbeat_seconds=0.2)
    body = messages_body() if route == "/v1/messages" else {"prompt": "hi"}
    async with scripted_claude(broken) as url:
        config["claude"]["base_url"] = url
        async with (
            running_sidecar(config) as sidecar,
            aiohttp.ClientSession() as http,
            http.post(sidecar.url + route, json=body) as response,
        ):
            raw = await response.content.readuntil(b"xxx")  # the delta has arrived
            relayed.set()
            raw += await response.read()
    last = raw.strip().split(b"\n\n")[-1]
    assert b"connection to Claude was lost" in last
    assert b"timeout" not in last


async def test_a_connection_lost_mid_event_still_ends_with_a_whole_error_event() -> None:
    async def cut(writer: asyncio.StreamWriter) -> None:
        writer.write(SSE_HEAD + chunk(START) + chunk(DELTA[:60]))
        await writer.drain()
        writer.transport.abort()

    raw = await relayed(cut)
    assert raw.startswith(START + DELTA[:60])
    last = raw.split(b"\n\n")[-2]  # a client's SSE parser sees this as the last event
    name, _, data = last.partition(b"\n")
    assert name == b"event: error"
    assert data.startswith(b"data: ")
    assert json.loads(data[6:])["error"]["type"] == "api_error"


async def test_shutdown_ends_a_stream_paused_for_a_client_that_stopped_reading(
    sidecar_for: SidecarFactory, caplog: pytest.LogCaptureFixture
) -> None:
    body = {"model": MODEL, "max_tokens": 6000, "stream": True,
            "messages": [{"role": "user", "content": "[[fake tokens=5000]] flood"}]}  # fmt: skip
    async with sidecar_for() as sidecar:
        shrink_send_buffers(sidecar)
        payload = json.dumps(body).encode()
        reader, writer = await slow_client(sidecar.port, payload)
        streams = sidecar.runtime.streams

        async def paused() -> bool:
            return any(stream.paused for stream in streams)

        await eventually(paused)
        stopping = asyncio.create_task(sidecar.shutdown(grace=0.1))

        async def gone() -> bool:
            return len(streams) == 0

        await eventually(gone)  # ended by shutdown, without the client reading a byte
        assert not stopping.done()  # (shutdown then gives final events time to leave)
        raw = await reader.read()
        writer.close()
        await stopping
    assert raw.endswith(b"\r\n0\r\n\r\n")  # the response was ended properly
    last = relayed_payload(raw).strip().split(b"\n\n")[-1]
    assert last.startswith(b"event: error")
    assert b"overloaded_error" in last
    ends = [r for r in caplog.records if getattr(r, "event", None) == "stream_error"]
    assert [getattr(r, "outcome", None) for r in ends] == ["shutting_down"]


@pytest.mark.parametrize("route", ["/v1/messages", "/api/stream-response"])
async def test_claudes_error_event_then_a_lost_connection_is_one_error(route: str) -> None:
    error = (
        b'event: error\ndata: {"type":"error","error":{"type":"overloaded_error",'
        b'"message":"Overloaded"}}\n\n'
    )

    async def error_then_drop(writer: asyncio.StreamWriter) -> None:
        writer.write(SSE_HEAD + chunk(START) + chunk(DELTA) + chunk(error))
        await writer.drain()
        writer.transport.abort()

    body = messages_body() if route == "/v1/messages" else {"prompt": "hi"}
    raw = await relayed(error_then_drop, route, body)
    blocks = raw.strip().split(b"\n\n")
    errors = [b for b in blocks if b.startswith(b"event: error") or b'data: {"error"' in b]
    assert len(errors) == 1  # Claude's own error is the last word
    assert errors[0] == blocks[-1]
    assert b"Overloaded" in errors[0]


async def test_a_client_that_leaves_while_paused_frees_everything(
    fake: FakeServer, sidecar_for: SidecarFactory, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    body = {"model": MODEL, "max_tokens": 6000, "stream": True,
            "messages": [{"role": "user", "content": "[[fake tokens=5000]] flood"}]}  # fmt: skip
    async with sidecar_for() as sidecar:
        shrink_send_buffers(sidecar)
        runtime = sidecar.runtime
        payload = json.dumps(body).encode()
        _, writer = await slow_client(sidecar.port, payload)

        async def paused() -> bool:
            return any(stream.paused for stream in runtime.streams)

        await eventually(paused)
        writer.transport.abort()  # the client leaves while Claude is held back for it

        async def released() -> bool:
            return (
                len(runtime.streams) == 0
                and runtime.admission.active == 0
                and fake.state.open_streams == 0
            )

        await eventually(released)
    ends = [r for r in caplog.records if getattr(r, "event", None) == "stream_complete"]
    assert [getattr(r, "outcome", None) for r in ends] == ["client_cancelled"]
    assert not [r for r in caplog.records if "never retrieved" in r.getMessage()]


async def test_a_client_that_stops_reading_is_cut_and_its_slot_freed(
    fake: FakeServer, sidecar_for: SidecarFactory, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    body = json.dumps({
        "model": "claude-sonnet-5-5", "max_tokens": TOKENS + 10, "stream": True,
        "messages": [{"role": "user", "content": f"[[fake tokens={TOKENS}]] flood"}],
    }).encode()  # fmt: skip
    config = {"claude": {"client_stall_timeout_seconds": 0.5, "max_concurrent_streams": 1}}
    async with sidecar_for(config) as sidecar, aiohttp.ClientSession() as http:
        shrink_send_buffers(sidecar)
        _, writer = await slow_client(sidecar.port, body)  # never reads

        async def paused() -> bool:
            return any(stream.paused for stream in sidecar.runtime.streams)

        await eventually(paused)

        async def cut() -> bool:
            return sidecar.runtime.admission.active == 0 and fake.state.open_streams == 0

        await eventually(cut, timeout=20)
        # The slot is free: the next client gets its stream.
        small = {"model": "claude-sonnet-5-5", "max_tokens": 16, "stream": True,
                 "messages": [{"role": "user", "content": "next"}]}  # fmt: skip
        async with http.post(sidecar.url + "/v1/messages", json=small) as response:
            assert b"message_stop" in await response.read()
        writer.close()
    ends = [r for r in caplog.records if getattr(r, "event", None) == "stream_error"]
    assert [getattr(r, "outcome", None) for r in ends] == ["client_stalled"]
    assert getattr(ends[0], "error_type", None) == "client_stalled"


async def test_quiet_streams_share_one_watchdog_and_each_gets_its_pings_and_timeout(
    sidecar_for: SidecarFactory,
) -> None:
    stalled = {
        "model": MODEL, "max_tokens": 8, "stream": True,
        "messages": [{"role": "user", "content": "[[fake fault=stall]] quiet"}],
    }  # fmt: skip
    claude = {"idle_timeout_seconds": 0.6, "heartbeat_seconds": 0.15}
    async with sidecar_for({"claude": claude}) as sidecar, aiohttp.ClientSession() as http:

        async def one() -> bytes:
            async with http.post(sidecar.url + "/v1/messages", json=stalled) as response:
                assert response.status == 200
                return await response.read()

        reads = [asyncio.ensure_future(one()) for _ in range(3)]
        await eventually(lambda: holds(len(sidecar.runtime.streams) == 3))
        streams = list(sidecar.runtime.streams)
        assert len({s.tick_every for s in streams}) == 1  # one interval: one timer ticks all
        bodies = await asyncio.wait_for(asyncio.gather(*reads), 10)
    for body in bodies:
        assert b": ping\n\n" in body  # each stream's heartbeat...
        assert b'"timeout_error"' in body  # ...and each its own idle timeout
    assert len(sidecar.runtime.streams) == 0


@pytest.fixture
def sends_and_scans(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The order of the client's sends (`start`, `end`) and the scans of Claude's bytes."""
    order: list[str] = []
    start, end_now, observe = ClientChannel.start, ClientChannel.end_now, StreamCore.observe

    def started(channel: ClientChannel, data: bytes) -> bool:
        order.append("start")
        return start(channel, data)

    def ended(channel: ClientChannel) -> None:
        if not channel.ended:
            order.append("end")
        end_now(channel)

    def observed(core: StreamCore, chunk: bytes) -> None:
        order.append("scan")
        observe(core, chunk)

    monkeypatch.setattr(ClientChannel, "start", started)
    monkeypatch.setattr(ClientChannel, "end_now", ended)
    monkeypatch.setattr(StreamCore, "observe", observed)
    return order


@pytest.mark.parametrize(
    ("body", "order", "error"),
    [
        (START + DELTA + STOP, ["end", "scan"], False),  # complete: out first, in one send
        (START + DELTA, ["scan", "end"], True),  # cut short: scanned first, its error added
    ],
    ids=["complete", "ended-early"],
)
async def test_a_whole_answer_read_with_claude_s_head_leaves_in_one_send(
    sends_and_scans: list[str], body: bytes, order: list[str], error: bool
) -> None:
    async def whole(writer: asyncio.StreamWriter) -> None:
        writer.write(SSE_HEAD + chunk(body) + b"0\r\n\r\n")  # head, body and end: one read
        await writer.drain()

    payload = await relayed(whole)
    assert sends_and_scans == order
    assert payload.startswith(body)
    assert (b"event: error" in payload[len(body) :]) is error


async def test_the_bytes_read_with_claude_s_head_are_sent_before_they_are_scanned(
    sends_and_scans: list[str],
) -> None:
    async def in_two(writer: asyncio.StreamWriter) -> None:
        writer.write(SSE_HEAD + chunk(START))  # Claude's head and its message_start
        await writer.drain()
        await asyncio.sleep(0.05)
        writer.write(chunk(DELTA + STOP) + b"0\r\n\r\n")
        await writer.drain()

    payload = await relayed(in_two)
    assert sends_and_scans[:2] == ["start", "scan"]  # the head and message_start, then the scan
    assert sends_and_scans[-1] == "end"
    assert payload == START + DELTA + STOP


async def test_a_reader_that_stops_reading_holds_back_no_other_reader_of_the_stream(
    fake: FakeServer, sidecar_for: SidecarFactory
) -> None:
    """A second reader of a resumable stream (another tab, a reconnect whose old
    connection is not dead yet) that takes nothing neither pauses the stream for the
    reader that keeps up nor gets it cut as a stalled client."""
    config = {
        "claude": {"client_stall_timeout_seconds": 1, "max_tokens": 100000},
        "resume": {"detach_grace_seconds": 10},
    }
    target = "/api/stream-response?prompt=%5B%5Bfake%20tokens%3D12000%20ttft_ms%3D300%5D%5D%20x"
    async with sidecar_for(config) as sidecar:
        shrink_send_buffers(sidecar)
        reader, writer = await small_buffered(sidecar.port)
        writer.write(f"GET {target} HTTP/1.1\r\nHost: s\r\nConnection: close\r\n\r\n".encode())
        head = await reader.readuntil(b"\r\n\r\n")
        stream_id = head.split(b"Sidecar-Stream-Id: ", 1)[1].split(b"\r\n", 1)[0].decode()
        stalled = socket.socket()
        stalled.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        stalled.setblocking(False)
        await asyncio.get_running_loop().sock_connect(stalled, ("127.0.0.1", sidecar.port))
        stalled.send(
            b"GET /api/stream-response HTTP/1.1\r\nHost: s\r\nLast-Event-ID: %b:0\r\n\r\n"
            % stream_id.encode()
        )
        # (The answer waits for both readers.) Both lag at first: the stream pauses until
        # the one that reads catches up.
        await eventually(lambda: holds(any(stream.paused for stream in sidecar.runtime.streams)))
        try:
            body = dechunk(await reader.read(-1))
        finally:
            writer.close()
            stalled.close()
    last = body.rstrip(b"\n").rsplit(b"\n\n", 1)[-1]
    assert b'"done":true' in last, last
    assert body.count(b'data: {"token"') == 12000


@pytest.mark.parametrize("resumable", [False, True])
async def test_a_client_that_stops_reading_the_end_of_a_stream_is_cut_and_its_slot_freed(
    fake: FakeServer, sidecar_for: SidecarFactory, caplog: pytest.LogCaptureFixture,
    resumable: bool,
) -> None:  # fmt: skip
    """Claude finishes with less than the high-water mark queued (so it is never paused):
    a client that takes none of the rest is cut after the stall timeout all the same, and
    its stream slot and quota lease (held by its handler, or by a resumable stream's
    producer) are let go."""
    caplog.set_level(logging.INFO)
    body = json.dumps({
        "model": "claude-sonnet-5-5", "max_tokens": 1510, "stream": True,
        "messages": [{"role": "user", "content": "[[fake tokens=1500]] tail"}],
    }).encode()  # fmt: skip
    config = {
        "claude": {"client_stall_timeout_seconds": 0.5, "max_concurrent_streams": 1},
        "resume": {"detach_grace_seconds": 0.5},
    }
    async with sidecar_for(config) as sidecar:
        shrink_send_buffers(sidecar)
        reader, writer = await slow_client(
            sidecar.port, body, headers=b"Sidecar-Resume: on\r\n" if resumable else b""
        )  # never reads

        async def finished() -> bool:
            return fake.state.counters["streams_completed"] == 1

        await eventually(finished)  # Claude is done: all of it is queued for the client

        async def answered() -> bool:  # the handler is done: it waits for the client no more
            return any(getattr(r, "event", None) == "access" for r in caplog.records)

        await eventually(answered, timeout=20)
        assert sidecar.runtime.admission.active == 0
        try:
            received = await reader.read()  # what its socket took, then the cut
        except ConnectionResetError:
            received = b""
        writer.close()
    assert b"message_stop" not in received  # it never had the end


@pytest.mark.parametrize(
    ("claude", "path"),
    [
        ({}, "/v1/messages"),  # the defaults: a 15 s heartbeat, at most 1 s late
        ({"heartbeat_seconds": 0.2, "idle_timeout_seconds": 30}, "/v1/messages"),
        ({"heartbeat_seconds": 0.2, "idle_timeout_seconds": 30}, "/api/stream-response"),
    ],
)
async def test_a_quiet_streams_heartbeat_is_at_most_a_small_tick_late(
    sidecar_for: SidecarFactory, claude: dict[str, float], path: str
) -> None:
    """Claude stalls after three deltas: the client's silences, on a raw socket, last at
    most the heartbeat plus one watchdog tick (an eighth of the heartbeat, at most 1 s:
    with the default 15 s that is 1 s, not the quarter-heartbeat ticks of 3.75 s)."""
    directive = "[[fake fault=stall_midstream after=3]] quiet"
    body = None
    if path == "/v1/messages":
        body = {"model": "claude-sonnet-5-5", "max_tokens": 20, "stream": True,
                "messages": [{"role": "user", "content": directive}]}  # fmt: skip
    else:
        path += "?prompt=" + urllib.parse.quote(directive)
    async with sidecar_for({"claude": claude}) as sidecar:
        reading = asyncio.create_task(timed_response(sidecar.port, path, body, only=1.5))
        await eventually(lambda: holds(len(sidecar.runtime.streams) == 1))
        (live,) = sidecar.runtime.streams
        beat = live.heartbeat
        assert live.tick_every <= min(max(beat / 8, 0.05), 1.0)  # (50 ms at least)
        reads = await reading
    if beat < 1:
        raw = joined(reads)
        assert raw.count(b": ping\n\n") >= 4
        assert max(gaps(reads)) <= beat + live.tick_every + 0.15, gaps(reads)


@pytest.mark.parametrize("path", ["/api/stream-response", "/api/chat"], ids=["prompt", "ui"])
async def test_a_translated_streams_client_gets_heartbeats_while_claude_sends_only_pings(
    sidecar_for: SidecarFactory, path: str
) -> None:
    """Claude stalls after three deltas but sends its own `event: ping` every 50 ms (as
    while a server tool runs): Claude is not idle, yet a translated route sends nothing
    for those pings, so its client gets the sidecar's `: ping` comments, its silences at
    most the heartbeat plus a tick."""
    directive = "[[fake fault=stall_midstream after=3 ping_ms=50]] searching"
    body = None
    if path == "/api/chat":
        body = {"id": "chat-1", "trigger": "submit-message", "messages": [
            {"id": "u1", "role": "user", "parts": [{"type": "text", "text": directive}]}]}  # fmt: skip
    else:
        path += "?prompt=" + urllib.parse.quote(directive)
    claude = {"heartbeat_seconds": 0.2, "idle_timeout_seconds": 30}
    async with sidecar_for({"claude": claude}) as sidecar:
        reading = asyncio.create_task(timed_response(sidecar.port, path, body, only=1.5))
        await eventually(lambda: holds(len(sidecar.runtime.streams) == 1))
        (live,) = sidecar.runtime.streams
        reads = await reading
    raw = joined(reads)
    assert b"ping" not in raw.replace(b": ping\n\n", b"")  # none of Claude's own pings
    assert raw.count(b": ping\n\n") >= 4, raw
    assert max(gaps(reads)) <= live.heartbeat + live.tick_every + 0.15, gaps(reads)


async def test_the_anthropic_route_passes_claudes_pings_on_with_no_heartbeat_of_its_own(
    sidecar_for: SidecarFactory,
) -> None:
    """Passthrough: Claude's `event: ping`s are the client's bytes, so its quiet time never
    reaches the heartbeat (no comment doubles them)."""
    body = {"model": "claude-sonnet-5-5", "max_tokens": 20, "stream": True, "messages": [
        {"role": "user", "content": "[[fake fault=stall_midstream after=3 ping_ms=50]] q"}]}  # fmt: skip
    claude = {"heartbeat_seconds": 0.5, "idle_timeout_seconds": 30}
    async with sidecar_for({"claude": claude}) as sidecar:
        reads = await timed_response(sidecar.port, "/v1/messages", body, only=1.5)
    raw = joined(reads)
    assert raw.count(b"event: ping\n") >= 5
    assert b": ping\n\n" not in raw
