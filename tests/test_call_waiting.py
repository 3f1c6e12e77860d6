"""A streaming call that waits for Claude's head (a slow head, retries with backoff) sends
its client the SSE head and `: ping` every `claude.heartbeat_seconds` from when it has
waited that long; a later failure is the route's error event in that stream. Measured on
a raw socket, each read with the time it arrived."""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

import anthropic
import pytest

from sidecar.relay import tick_interval
from tests.support.idle_proxy import idle_proxy
from tests.support.sdk import sdk, user
from tests.support.sidecars import SidecarFactory
from tests.support.sockets import dechunk
from tests.support.timed_reads import gaps, joined, timed_response

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
