"""Replay pacing: `paced` keeps the recorded gaps between Claude's chunks (capped), `instant`
sends them back to back; both send the same bytes."""

from __future__ import annotations

import json
import logging
import time
from typing import Any

import aiohttp
import pytest

from sidecar.cache.entry import Entry, decode
from sidecar.cache.key import cache_key, scope_key
from sidecar.cache.replay import PACE_CAP, recording_of
from sidecar.fake_claude import FakeServer
from sidecar.scope import scope_of
from tests.support.sidecars import SidecarFactory
from tests.support.sockets import shrink_send_buffers, slow_client
from tests.support.waiting import eventually

SLOW: dict[str, Any] = {
    "model": "claude-sonnet-5-5", "max_tokens": 64, "temperature": 0, "stream": True,
    "messages": [{"role": "user", "content": "[[fake tokens=8 tps=40]] pace me"}],
}  # fmt: skip


def test_a_stored_entry_replays_as_an_ended_completed_recording() -> None:
    entry = Entry(stream=True, chunks=[b"a", b"b"], gaps=[0.0, 0.1], created=1.0)
    recording = recording_of(entry)
    assert recording.ended
    assert recording.completed
    assert recording.chunks == [b"a", b"b"]
    assert recording.entry is entry


async def _timed(url: str) -> tuple[str | None, bytes, float]:
    started = time.perf_counter()
    async with (
        aiohttp.ClientSession() as http,
        http.post(url + "/v1/messages", json=SLOW) as response,
    ):
        body = await response.read()
        return response.headers.get("X-Cache"), body, time.perf_counter() - started


async def _stored(runtime: Any) -> Entry:
    cache, claude = runtime.cache, runtime.claude
    await cache.settled()
    route = runtime.routes.match("/v1/messages")
    caller = await runtime.auth.authenticate(route.policy.auth, {}, {}, "POST")
    scope = scope_key("tenant", scope_of(caller, "127.0.0.1"))
    sent = claude.request_headers({})
    key = cache_key("anthropic", SLOW, sent, scope, "/v1/messages", claude.identity)
    value = await cache.store.get(key)
    assert value is not None
    return decode(value)


async def test_paced_replay_keeps_the_recorded_gaps_capped_and_instant_sends_the_same_events(
    fake: FakeServer, sidecar_for: SidecarFactory
) -> None:
    async with sidecar_for({"cache": {"enabled": True, "replay": "paced"}}) as s:
        miss, original, _ = await _timed(s.url)
        entry = await _stored(s.runtime)
        hit, paced, took = await _timed(s.url)
    assert (miss, hit) == ("MISS", "HIT")
    assert paced == original
    # Claude wrote ~25 ms apart: the recording kept those gaps, a paced replay caps them.
    assert len(entry.chunks) > 8
    assert sum(gap > PACE_CAP for gap in entry.gaps) >= 5
    waits = [min(max(gap, 0.0), PACE_CAP) for gap in entry.gaps]  # the recorded gaps, capped
    assert max(waits) == PACE_CAP
    assert took >= sum(waits[1:]) * 0.9  # it waited (at least about) each capped gap
    async with sidecar_for({"cache": {"enabled": True, "replay": "instant"}}) as s:
        await _timed(s.url)
        await _stored(s.runtime)
        hit, instant, _ = await _timed(s.url)
    assert hit == "HIT"
    assert instant.count(b"\n\n") == original.count(b"\n\n")
    assert fake.state.counters["requests"] == 2


async def test_a_client_that_stops_reading_a_replayed_answer_is_cut(
    fake: FakeServer, sidecar_for: SidecarFactory, caplog: pytest.LogCaptureFixture
) -> None:
    """A cache hit holds no Claude slot, but a client that takes nothing for
    `client_stall_timeout_seconds` is cut all the same, not waited for without end."""
    caplog.set_level(logging.INFO)
    flood = {
        "model": "claude-sonnet-5-5", "max_tokens": 5010, "temperature": 0, "stream": True,
        "messages": [{"role": "user", "content": "[[fake tokens=5000]] flood"}],
    }  # fmt: skip
    config = {"cache": {"enabled": True}, "claude": {"client_stall_timeout_seconds": 0.5}}
    async with sidecar_for(config) as sidecar, aiohttp.ClientSession() as http:
        async with http.post(sidecar.url + "/v1/messages", json=flood) as response:
            assert response.headers["X-Cache"] == "MISS"
            whole = await response.read()  # ~600 KB: beyond the high-water mark
        assert sidecar.runtime.cache is not None
        await sidecar.runtime.cache.settled()
        shrink_send_buffers(sidecar)
        reader, writer = await slow_client(sidecar.port, json.dumps(flood).encode())  # never reads

        def answered() -> list[int]:
            return [getattr(r, "status", 0) for r in caplog.records
                    if getattr(r, "event", None) == "access"]  # fmt: skip

        async def cut() -> bool:
            return len(answered()) == 2  # the hit's handler is done: it waits no more

        await eventually(cut, timeout=20)
        received = await reader.read()  # what the socket took before the cut, then its end
        writer.close()
    assert answered() == [200, 200]
    assert b"X-Cache: HIT" in received
    assert len(received) < len(whole)  # cut short: it never read the rest
    assert fake.state.counters["requests"] == 1
