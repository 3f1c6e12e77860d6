"""A streaming call that waits for Claude's head (a slow head, retries with backoff) sends
its client the SSE head and `: ping` every `claude.heartbeat_seconds` from when it has
waited that long; a later failure is the route's error event in that stream. Measured on
a raw socket, each read with the time it arrived."""

from __future__ import annotations

import asyncio
import json
from typing import Any
from urllib.parse import quote

import anthropic
import pytest

from sidecar.fake_claude import FakeServer
from sidecar.relay import tick_interval
from tests.support.idle_proxy import idle_proxy
from tests.support.otel import make_otel
from tests.support.quotas import spy_on
from tests.support.sdk import sdk, user
from tests.support.sidecars import SidecarFactory
from tests.support.sockets import dechunk
from tests.support.timed_reads import gaps, joined, timed_response
from tests.support.waiting import eventually, holds

MODEL = "claude-sonnet-5-5"
BEAT = 0.2
CONFIG: dict[str, Any] = {
    "claude": {"heartbeat_seconds": BEAT, "idle_timeout_seconds": 30, "max_retries": 1}
}
# A ping is due `BEAT` after the last byte, at most one watchdog tick late; the slack is
# the loop's own scheduling on a busy machine, far under the seconds the faults wait.
BOUND = BEAT + tick_interval(BEAT, 30, 60) + 0.15


def _request(route: str, directive: str) -> tuple[str, dict[str, Any] | None]:
    if route == "prompt":
        return "/api/stream-response?prompt=" + quote(directive + " hi"), None
    if route == "ui":
        text = {"type": "text", "text": directive + " hi"}
        message = {"id": "u1", "role": "user", "parts": [text]}
        return "/api/chat", {"id": "chat-1", "trigger": "submit-message", "messages": [message]}
    body = {"model": MODEL, "max_tokens": 20, "stream": True, "messages": user(directive + " hi")}
    return "/v1/messages", body


@pytest.mark.parametrize("route", ["prompt", "ui", "anthropic"])
async def test_a_slow_head_is_waited_for_with_the_sse_head_and_pings(
    route: str, sidecar_for: SidecarFactory
) -> None:
    path, body = _request(route, "[[fake fault=slow_headers delay_ms=1200]]")
    async with sidecar_for(CONFIG) as sidecar:
        reads = await timed_response(sidecar.port, path, body)
    raw = joined(reads)
    assert raw.startswith(b"HTTP/1.1 200 OK\r\n")
    assert b"text/event-stream" in raw.split(b"\r\n\r\n")[0]
    assert raw.split(b"\r\n\r\n", 1)[1].lstrip(b"0123456789abcdef\r\n").startswith(b": ping\n\n")
    assert raw.count(b": ping\n\n") >= 4  # every BEAT through the 1.2 s wait
    assert max(gaps(reads)) <= BOUND, gaps(reads)
    if route == "prompt":
        assert b'"done": true' in raw or b'"done":true' in raw
    elif route == "ui":
        assert b'"type":"finish"' in raw
        assert b"data: [DONE]" in raw
    else:
        assert b"event: message_stop" in raw


@pytest.mark.parametrize(
    ("route", "last_event"),
    [
        ("prompt", b'data: {"error": {"type": "overloaded"'),
        ("ui", b'data: {"type":"error","errorText":"Overloaded"}\n\ndata: [DONE]'),
        ("anthropic", b'event: error\ndata: {"type":"error","error":{"type":"overloaded_error"'),
    ],
)
async def test_a_failure_after_the_early_head_is_the_routes_error_event(
    route: str, last_event: bytes, sidecar_for: SidecarFactory
) -> None:
    # Claude answers 529 twice, the retry after `retry_after`: the head went out meanwhile.
    path, body = _request(route, "[[fake fault=overloaded retry_after=1]]")
    async with sidecar_for(CONFIG) as sidecar:
        reads = await timed_response(sidecar.port, path, body)
    raw = joined(reads)
    assert raw.startswith(b"HTTP/1.1 200 OK\r\n")
    assert max(gaps(reads)) <= BOUND, gaps(reads)
    payload = dechunk(raw.split(b"\r\n\r\n", 1)[1]).rstrip()
    events = payload.split(b"\n\n")
    assert events[0] == b": ping"  # the early head went out with a ping
    tail = b"\n\n".join(events[-2:]) if route == "ui" else events[-1]
    fields = b"\n".join(line for line in tail.split(b"\n") if not line.startswith(b"id:"))
    assert last_event.replace(b" ", b"") in fields.replace(b" ", b""), tail


@pytest.mark.parametrize("cache", [False, True])
async def test_an_early_head_carries_the_quota_headers_and_the_stream_id(
    cache: bool, sidecar_for: SidecarFactory
) -> None:
    # The same head whether the call is the request's own or a coalescing group's (the
    # cache records it): the client resumes and cancels by the id this head names.
    path, body = _request("prompt", "[[fake fault=slow_headers delay_ms=1200]]")
    config: dict[str, Any] = {**CONFIG, "quotas": {"tokens_per_minute": 100000}}
    if cache:
        config["cache"] = {"enabled": True, "include_sampled": True}
    async with sidecar_for(config) as sidecar:
        reads = await timed_response(sidecar.port, path, body)
    head, payload = joined(reads).split(b"\r\n\r\n", 1)
    assert payload.lstrip(b"0123456789abcdef\r\n").startswith(b": ping\n\n")  # early
    fields = {
        name.lower(): value
        for name, value in (line.decode().split(": ", 1) for line in head.split(b"\r\n")[1:])
    }
    assert fields.get("x-cache") == ("MISS" if cache else None)
    assert "anthropic-ratelimit-tokens-remaining" in fields
    stream_id = fields["sidecar-stream-id"]
    assert f"id: {stream_id}:".encode() in dechunk(payload)


async def test_an_answer_within_the_heartbeat_keeps_its_own_status(
    sidecar_for: SidecarFactory,
) -> None:
    path, body = _request("anthropic", "[[fake fault=overloaded]]")
    config = {"claude": {"heartbeat_seconds": 5, "max_retries": 0}}
    async with sidecar_for(config) as sidecar:
        reads = await timed_response(sidecar.port, path, body)
    raw = joined(reads)
    assert raw.startswith(b"HTTP/1.1 529 ")
    assert b": ping" not in raw


async def test_the_anthropic_sdk_reads_a_stream_that_began_with_pings(
    sidecar_for: SidecarFactory,
) -> None:
    """Through a proxy that cuts a connection silent for 0.4 s, Claude's head 0.9 s late."""
    async with sidecar_for(CONFIG) as sidecar, idle_proxy(sidecar.port, 2 * BEAT) as proxy:
        client = sdk(f"http://127.0.0.1:{proxy.port}")
        async with client.messages.stream(
            model=MODEL,
            max_tokens=20,
            messages=user("[[fake fault=slow_headers delay_ms=900]] hi"),
        ) as stream:
            message = await stream.get_final_message()
    assert proxy.cut == 0
    assert message.stop_reason == "end_turn"
    assert message.content


async def test_the_anthropic_sdk_raises_the_error_event_of_a_stream_that_began_with_pings(
    sidecar_for: SidecarFactory,
) -> None:
    async with sidecar_for(CONFIG) as sidecar, idle_proxy(sidecar.port, 2 * BEAT) as proxy:
        client = sdk(f"http://127.0.0.1:{proxy.port}")
        with pytest.raises(anthropic.APIStatusError) as raised:
            async with client.messages.stream(
                model=MODEL,
                max_tokens=20,
                messages=user("[[fake fault=overloaded retry_after=1]] hi"),
            ) as stream:
                await stream.get_final_message()
    assert proxy.cut == 0
    assert "overloaded_error" in str(raised.value)


async def test_a_message_waited_for_past_the_heartbeat_is_still_plain_json(
    sidecar_for: SidecarFactory,
) -> None:
    body = {"model": MODEL, "max_tokens": 20, "messages": user("[[fake fault=slow_headers]] hi")}
    async with sidecar_for(CONFIG) as sidecar:
        reads = await timed_response(sidecar.port, "/v1/messages", body)
    head, _, answer = joined(reads).partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 OK\r\n")
    assert b"application/json" in head
    assert b": ping" not in answer


@pytest.mark.parametrize("cache", [False, True])
@pytest.mark.parametrize("route", ["prompt", "ui", "anthropic"])
async def test_a_client_that_leaves_during_the_pings_frees_claude_and_its_quota_at_once(
    route: str, cache: bool, sidecar_for: SidecarFactory, fake: FakeServer
) -> None:
    """The client reads the early head and a ping, then leaves while Claude's head is
    still 60 s away: the call to Claude is dropped and the reservation settled (to the
    input estimate) as soon as
    the sidecar sees the connection go (not when Claude would have answered), the slot is
    free for the next call, and the request is recorded with the 200 its head carried."""
    otel = make_otel()
    path, body = _request(route, "[[fake fault=slow_headers delay_ms=60000]]")
    quotas = {"tokens_per_minute": 100_000, "concurrent_streams": 1}
    config: dict[str, Any] = {**CONFIG, "quotas": quotas}
    if cache:  # the call is then its coalescing group's, this client its only member
        config["cache"] = {"enabled": True, "include_sampled": True}
    async with sidecar_for(config, telemetry=otel.telemetry) as sidecar:
        spy = spy_on(sidecar)
        reader, writer = await asyncio.open_connection("127.0.0.1", sidecar.port)
        data = json.dumps(body).encode() if body is not None else b""
        method = "GET" if body is None else "POST"
        writer.write(
            f"{method} {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(data)}\r\n\r\n".encode()
            + data
        )
        seen = b""
        async with asyncio.timeout(10):
            while b": ping" not in seen:
                seen += await reader.read(65536)
        assert seen.startswith(b"HTTP/1.1 200 OK\r\n")
        writer.close()
        await spy.wait_settled(1)
        claude = sidecar.runtime.claude
        await eventually(lambda: holds(claude.open_connections == 0))
        next_path, next_body = _request(route, "")
        reads = await timed_response(sidecar.port, next_path, next_body)
        assert joined(reads).startswith(b"HTTP/1.1 200 OK\r\n")  # the slot came back
    reserved, used = spy.settled[0]
    assert used < reserved  # the input estimate (quotas.md), not the output never seen
    requests = otel.count("http.server.request.duration")
    assert otel.count("http.server.request.duration", **{"http.response.status_code": 200}) == 2
    assert requests == 2
    assert otel.count("sidecar.streams", **{"sidecar.stream.outcome": "client_cancelled"}) == 1
    assert otel.count("sidecar.streams", **{"sidecar.stream.outcome": "completed"}) == 1


async def test_a_call_that_fails_after_its_early_head_is_counted_with_the_200_it_sent(
    sidecar_for: SidecarFactory,
) -> None:
    """The head went out, then Claude's last 529: the request is recorded with the status
    its head carried (observability.md), the stream's outcome and error type say it failed."""
    otel = make_otel()
    path, body = _request("anthropic", "[[fake fault=overloaded retry_after=1]]")
    async with sidecar_for(CONFIG, telemetry=otel.telemetry) as sidecar:
        reads = await timed_response(sidecar.port, path, body)
    assert joined(reads).startswith(b"HTTP/1.1 200 OK\r\n")
    assert otel.count("http.server.request.duration", **{"http.response.status_code": 200}) == 1
    assert otel.count("http.server.request.duration") == 1
    failed = {"sidecar.stream.outcome": "upstream_error", "error.type": "overloaded_error"}
    assert otel.count("sidecar.streams", **failed) == 1
    assert otel.count("sidecar.upstream.responses", **{"http.response.status_code": 529}) == 2
