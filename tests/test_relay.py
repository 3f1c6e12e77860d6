"""The push-mode relay over real sockets: a slow client pauses Claude, nothing is lost,
and a finished stream hands its upstream connection back for reuse."""

from __future__ import annotations

import asyncio
import json
import logging

import aiohttp
import pytest

from sidecar.fake_claude import FakeServer
from sidecar.relay import LiveStream
from tests.conftest import SidecarFactory
from tests.support import dechunk, eventually, shrink_send_buffers, slow_client

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
        queued = stream.generation.subscribers[0].channel.buffered()
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
    sidecar_for: SidecarFactory,
) -> None:
    body = {"model": "claude-sonnet-5-5", "max_tokens": 16, "stream": True,
            "messages": [{"role": "user", "content": "again"}]}  # fmt: skip
    async with sidecar_for() as sidecar, aiohttp.ClientSession() as http:
        for _ in range(5):
            async with http.post(sidecar.url + "/v1/messages", json=body) as response:
                assert b"message_stop" in await response.read()
        connector = sidecar.runtime.claude._session.connector
        assert connector is not None
        idle = sum(len(conns) for conns in connector._conns.values())
        assert idle == 1  # one keep-alive connection served all five streams


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
