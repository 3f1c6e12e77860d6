"""Answering a Claude stream over real sockets: a client that leaves cancels Claude and
leaves nothing behind, an idle Claude ends the stream with an error event after
heartbeats, and shutdown ends live streams with a final event."""

from __future__ import annotations

import asyncio

import aiohttp

from sidecar.fake_claude import FakeServer
from tests.support.sdk import STALLED, user
from tests.support.sidecars import SidecarFactory

MODEL = "claude-sonnet-5-5"


async def test_client_disconnect_cancels_upstream_without_leaks(
    fake: FakeServer, sidecar_for: SidecarFactory
) -> None:
    body = {"model": MODEL, "max_tokens": 500, "stream": True,
            "messages": user("[[fake tokens=400 tps=20]] long")}  # fmt: skip
    async with sidecar_for() as sidecar:
        runtime = sidecar.runtime
        baseline_tasks = len(asyncio.all_tasks())
        async with aiohttp.ClientSession() as http:
            response = await http.post(sidecar.url + "/v1/messages", json=body)
            seen = 0
            async for chunk in response.content.iter_any():
                seen += chunk.count(b"content_block_delta")
                if seen >= 3:
                    break
            response.close()
        for _ in range(100):
            if fake.state.open_streams == 0 and len(runtime.streams) == 0:
                break
            await asyncio.sleep(0.02)
        (sent,) = fake.state.sent_at.values()
        assert fake.state.counters["streams_cancelled"] == 1
        assert len(sent) <= 3 + 3 + 2  # start, block start, ping + 3 deltas, then at most 2
        assert len(runtime.streams) == 0
        assert runtime.admission.active == 0
        await asyncio.sleep(0.05)
        assert len(asyncio.all_tasks()) <= baseline_tasks


async def test_idle_timeout_ends_the_stream_with_an_error_event(
    sidecar_for: SidecarFactory,
) -> None:
    config = {"claude": {"idle_timeout_seconds": 0.4, "heartbeat_seconds": 0.1}}
    async with sidecar_for(config) as sidecar, aiohttp.ClientSession() as http:
        async with http.post(sidecar.url + "/v1/messages", json=STALLED) as response:
            raw = await response.read()
        assert raw.count(b": ping\n\n") >= 1  # heartbeats while Claude was quiet
        assert raw.rstrip().endswith(b"}")
        last = raw.strip().split(b"\n\n")[-1]
        assert last.startswith(b"event: error\ndata: ")
        assert b'"timeout_error"' in last
        async with http.get(
            sidecar.url + "/api/stream-response", params={"prompt": "[[fake fault=stall]]"}
        ) as response:
            raw = await response.read()
        assert b'"type":"idle_timeout"' in raw.strip().split(b"\n\n")[-1]


async def test_shutdown_sends_a_final_event_to_live_streams(sidecar_for: SidecarFactory) -> None:
    async with sidecar_for() as sidecar, aiohttp.ClientSession() as http:
        anthropic_stream = await http.post(sidecar.url + "/v1/messages", json=STALLED)
        prompt_stream = await http.get(
            sidecar.url + "/api/stream-response", params={"prompt": "[[fake fault=stall]]"}
        )
        await sidecar.shutdown(grace=0.2)
        first = (await anthropic_stream.read()).strip().split(b"\n\n")[-1]
        second = (await prompt_stream.read()).strip().split(b"\n\n")[-1]
    assert first.startswith(b"event: error")
    assert b"overloaded_error" in first
    # Resumable, but kept only in this process's memory: the client is told it is lost.
    assert b'"type":"stream_lost"' in second
    assert b"shutting down" in second
