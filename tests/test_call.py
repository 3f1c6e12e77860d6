"""The streaming core over real sockets: events reach the client unbuffered on both routes,
and a client's request id is echoed only when well formed.

The call's own steps are in test_call_run.py and test_call_stream.py; the Anthropic routes
in test_handlers_anthropic.py."""

from __future__ import annotations

import itertools
import re
import time

import aiohttp

from sidecar.fake_claude import FakeServer
from tests.support.sdk import user
from tests.support.sidecars import SidecarFactory

MODEL = "claude-sonnet-5-5"


async def read_events(response: aiohttp.ClientResponse) -> list[tuple[float, bytes]]:
    """(arrival time.monotonic(), raw event) for each SSE event as it arrives."""
    events: list[tuple[float, bytes]] = []
    carry = b""
    async for chunk in response.content.iter_any():
        now = time.monotonic()
        blocks = (carry + chunk).split(b"\n\n")
        carry = blocks.pop()
        events += [(now, block) for block in blocks]
    return events


async def test_events_arrive_before_the_fake_sends_the_next_one(
    fake: FakeServer, sidecar_for: SidecarFactory
) -> None:
    body = {"model": MODEL, "max_tokens": 64, "stream": True,
            "messages": user("[[fake tokens=8 tps=25]] pace")}  # fmt: skip
    async with sidecar_for() as sidecar, aiohttp.ClientSession() as http:
        async with http.post(sidecar.url + "/v1/messages", json=body) as response:
            events = await read_events(response)
    (sent,) = fake.state.sent_at.values()
    assert len(sent) == len(events)
    deltas = [i for i, (_, block) in enumerate(events) if b"content_block_delta" in block]
    assert len(deltas) == 8
    for i, j in itertools.pairwise(deltas):
        # Delta i reached the client before the fake even wrote the next delta: nothing buffered.
        assert events[i][0] < sent[j]


async def test_prompt_route_tokens_arrive_before_the_stream_ends(
    fake: FakeServer, sidecar_for: SidecarFactory
) -> None:
    async with sidecar_for() as sidecar, aiohttp.ClientSession() as http:
        url = sidecar.url + "/api/stream-response"
        async with http.get(url, params={"prompt": "[[fake tokens=6 tps=25]] go"}) as response:
            events = await read_events(response)
    (sent,) = fake.state.sent_at.values()
    tokens = [(t, b) for t, b in events if b'"token"' in b]
    assert len(tokens) == 6
    assert tokens[0][0] < sent[-1]  # the first token was out before Claude finished
    assert [int(b.split(b"\n")[0].rpartition(b":")[2]) for _, b in tokens] == [1, 2, 3, 4, 5, 6]
    assert b'"done":true' in events[-1][1]


async def test_request_id_is_echoed_when_well_formed(sidecar_for: SidecarFactory) -> None:
    async with sidecar_for() as sidecar, aiohttp.ClientSession() as http:
        url = sidecar.url + "/api/stream-response"
        async with http.get(url, params={"prompt": "x"}, headers={"X-Request-Id": "abc-123"}) as r:
            assert r.headers["X-Request-Id"] == "abc-123"
        async with http.get(url, params={"prompt": "x"}, headers={"X-Request-Id": "bad id!"}) as r:
            assert re.fullmatch(r"req_[0-9a-f]{24}", r.headers["X-Request-Id"])
