"""The fake's streaming: stream faults spent as error statuses are, stalls held until a
release, a client that leaves a stall."""

from __future__ import annotations

import asyncio
from typing import Any

import aiohttp
import pytest

from sidecar.fake_claude import FakeServer, FakeSettings, running_fake_claude


@pytest.mark.parametrize(
    "fault", ["midstream_error", "drop", "stall", "stall_before_start", "stall_midstream"]
)
async def test_fail_times_limits_stream_faults_too(fault: str) -> None:
    """`fail_times`/`fail_key` spend a stream fault as they spend an error status: the
    first N requests with the key break, the next ones stream whole."""
    settings = FakeSettings(tokens=4)
    text = f"q [[fake fault={fault} after=2 fail_times=1 fail_key=k-{fault}]]"
    body = {"model": "claude-sonnet-5-5", "max_tokens": 16, "stream": True,
            "messages": [{"role": "user", "content": text}]}  # fmt: skip
    async with running_fake_claude(settings) as fake, aiohttp.ClientSession() as http:
        ended = []
        for _ in range(3):
            try:
                async with asyncio.timeout(0.5):
                    async with http.post(fake.url + "/v1/messages", json=body) as response:
                        ended.append(b"message_stop" in await response.read())
            except (TimeoutError, aiohttp.ClientPayloadError):
                ended.append(False)
    assert ended == [False, True, True]


async def test_a_release_ends_the_stalls_begun_before_it(fake: FakeServer) -> None:
    """`POST /_fake/release`: stalled replies (streaming or not) go on to their end."""
    stalled = {
        "model": "claude-sonnet-5-5", "max_tokens": 20, "stream": True,
        "messages": [{"role": "user", "content": "[[fake fault=stall tokens=3]] hi"}],
    }  # fmt: skip
    async with aiohttp.ClientSession() as session:
        response = await session.post(fake.url + "/v1/messages", json=stalled)
        assert b"message_start" in await response.content.readline()
        plain = asyncio.create_task(
            session.post(fake.url + "/v1/messages", json={**stalled, "stream": False})
        )
        await fake.state.wait_for(lambda state: state.counters["faults_stall"] == 2)
        async with session.post(fake.url + "/_fake/release") as released:
            assert (await released.json()) == {"releases": 1}
        rest = await asyncio.wait_for(response.read(), 10)
        assert b"event: message_stop" in rest
        answer = await asyncio.wait_for(plain, 10)
        assert answer.status == 200
        assert (await answer.json())["stop_reason"] == "end_turn"
        await fake.state.wait_for(lambda state: state.open_streams == 0)
    assert fake.state.stats()["streams_completed"] == 1


def stalled(after: int) -> dict[str, Any]:
    """A streamed request whose reply stalls after `after` deltas."""
    text = f"[[fake fault=stall_midstream after={after}]]"
    return {"model": "claude-sonnet-5-5", "max_tokens": 20, "stream": True,
            "messages": [{"role": "user", "content": text}]}  # fmt: skip


async def test_a_midstream_stall_holds_after_its_deltas_until_a_release(fake: FakeServer) -> None:
    """`stall_midstream`: `after` deltas reach the client, then nothing until a release;
    the reply then goes on to its end, every delta sent once."""
    async with aiohttp.ClientSession() as session:
        async with session.post(fake.url + "/v1/messages", json=stalled(2)) as response:
            seen = b""
            while seen.count(b"event: content_block_delta") < 2:
                seen += await asyncio.wait_for(response.content.readuntil(b"\n\n"), 10)
            (record,) = fake.state.streams.values()
            assert record.events.count("content_block_delta") == 2
            assert record.outcome == "open"
            async with session.post(fake.url + "/_fake/release") as released:
                assert released.status == 200
            seen += await asyncio.wait_for(response.content.read(), 10)
    assert seen.count(b"event: content_block_delta") == 12
    assert seen.endswith(b'event: message_stop\ndata: {"type":"message_stop"}\n\n')
    assert fake.state.stats()["streams_completed"] == 1


async def test_a_client_that_leaves_a_midstream_stall_cancels_the_stream(fake: FakeServer) -> None:
    async with aiohttp.ClientSession() as session:
        async with session.post(fake.url + "/v1/messages", json=stalled(1)) as response:
            async with asyncio.timeout(10):
                while b"content_block_delta" not in await response.content.readuntil(b"\n\n"):
                    pass
            response.close()
        await fake.state.wait_for(lambda state: state.counters["streams_cancelled"] == 1)
    (record,) = fake.state.streams.values()
    assert (record.outcome, record.events.count("content_block_delta")) == ("cancelled", 1)


@pytest.mark.parametrize("fault", ["stall", "stall_midstream"])
async def test_ping_ms_sends_claudes_pings_during_a_stall_until_a_release(
    fake: FakeServer, fault: str
) -> None:
    """`ping_ms`: a stall sends Claude's own `event: ping` that often (as the API does while
    a server tool runs), then a release lets the reply go on to its end."""
    text = f"[[fake fault={fault} after=2 ping_ms=20]] searching"
    body = {"model": "claude-sonnet-5-5", "max_tokens": 20, "stream": True,
            "messages": [{"role": "user", "content": text}]}  # fmt: skip
    ping = b'event: ping\ndata: {"type": "ping"}\n\n'
    async with aiohttp.ClientSession() as session:
        async with session.post(fake.url + "/v1/messages", json=body) as response:
            seen = b""
            async with asyncio.timeout(10):
                while seen.count(ping) < 3:
                    seen += await response.content.readuntil(b"\n\n")
            (record,) = fake.state.streams.values()
            assert record.outcome == "open"
            async with session.post(fake.url + "/_fake/release") as released:
                assert released.status == 200
            seen += await asyncio.wait_for(response.content.read(), 10)
    assert seen.endswith(b'event: message_stop\ndata: {"type":"message_stop"}\n\n')
    assert seen.count(b"event: content_block_delta") == 12  # every delta, once
    assert record.events.count("ping") >= 3
