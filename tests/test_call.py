"""The streaming core over real sockets: SDK parity, errors, unbuffered, cancel-safe, idle
timeouts, the queue, shutdown, request ids, forwarded paths."""

from __future__ import annotations

import asyncio
import gc
import itertools
import json
import logging
import re
import time
from typing import Any

import aiohttp
import anthropic
import pytest
from aiohttp import web

from sidecar.call.run import ClaudeRequest
from sidecar.fake_claude import FakeServer
from sidecar.telemetry.span import SidecarSpan
from tests.support.apps import serving
from tests.support.otel import make_otel
from tests.support.sdk import sdk, user
from tests.support.sidecars import SidecarFactory, running_sidecar

MODEL = "claude-sonnet-5-5"
_IDS = re.compile(r'"(msg|toolu|req)_[0-9a-f]+"')


# A streaming call Claude accepts and then never finishes (the fake stalls after its start).
STALLED = {
    "model": MODEL,
    "max_tokens": 8,
    "stream": True,
    "messages": user("[[fake fault=stall]]"),
}


async def sdk_events(url: str, text: str, **extra: Any) -> tuple[list[Any], Any]:
    async with (
        sdk(url) as client,
        client.messages.stream(model=MODEL, max_tokens=64, messages=user(text), **extra) as stream,
    ):
        events = [_IDS.sub('"id"', event.model_dump_json()) async for event in stream]
        final = await stream.get_final_message()
    return events, final


def normalised(message: Any) -> str:
    return _IDS.sub('"id"', message.model_dump_json())


@pytest.mark.parametrize(
    ("text", "extra"),
    [
        ("plain text please", {}),
        (
            "weather? [[fake content=tool_use]]",
            {"tools": [{"name": "get_weather", "input_schema": {"type": "object"}}]},
        ),
        ("think first [[fake content=thinking]]", {}),
    ],
)
async def test_sdk_stream_is_identical_direct_and_through_the_sidecar(
    fake: FakeServer, sidecar_for: SidecarFactory, text: str, extra: dict[str, Any]
) -> None:
    direct_events, direct_final = await sdk_events(fake.url, text, **extra)
    async with sidecar_for() as sidecar:
        proxied_events, proxied_final = await sdk_events(sidecar.url, text, **extra)
    assert proxied_events == direct_events
    assert normalised(proxied_final) == normalised(direct_final)
    assert len(direct_events) > 5


async def test_raw_bytes_pass_through_unchanged(
    fake: FakeServer, sidecar_for: SidecarFactory
) -> None:
    body = {"model": MODEL, "max_tokens": 20, "stream": True, "messages": user("bytes")}
    async with aiohttp.ClientSession() as http, sidecar_for() as sidecar:
        async with http.post(fake.url + "/v1/messages", json=body) as response:
            direct = await response.read()
        async with http.post(sidecar.url + "/v1/messages", json=body) as response:
            assert response.headers["Content-Type"] == "text/event-stream; charset=utf-8"
            assert response.headers["Cache-Control"] == "no-cache"
            assert response.headers["X-Accel-Buffering"] == "no"
            assert "Content-Length" not in response.headers
            assert "Content-Encoding" not in response.headers
            proxied = await response.read()
    assert _IDS.sub("id", proxied.decode()) == _IDS.sub("id", direct.decode())


async def test_non_streaming_and_count_tokens(sidecar_for: SidecarFactory) -> None:
    async with sidecar_for() as sidecar, sdk(sidecar.url) as client:
        message = await client.messages.create(model=MODEL, max_tokens=64, messages=user("hi"))
        assert message.content[0].type == "text"
        assert message.usage.output_tokens == 12
        count = await client.messages.count_tokens(model=MODEL, messages=user("four"))
        assert count.input_tokens == 1
        # A forwarded call's answer carries Claude's own headers (picked from its head).
        raw = await client.messages.with_raw_response.count_tokens(
            model=MODEL, messages=user("four")
        )
        assert raw.headers["request-id"].startswith("req_")
        assert raw.request_id == raw.headers["request-id"]


async def test_midstream_error_reaches_the_sdk(sidecar_for: SidecarFactory) -> None:
    async with sidecar_for() as sidecar, sdk(sidecar.url) as client:
        with pytest.raises(anthropic.APIStatusError, match="overloaded_error"):
            async with client.messages.stream(
                model=MODEL, max_tokens=64, messages=user("[[fake fault=midstream_error]]")
            ) as stream:
                async for _ in stream:
                    pass


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


async def test_queue_full_and_queue_timeout(sidecar_for: SidecarFactory) -> None:
    config = {"claude": {"max_concurrent_streams": 1,
                         "queue": {"max_waiting": 1, "max_wait_seconds": 0.2}}}  # fmt: skip
    async with sidecar_for(config) as sidecar, aiohttp.ClientSession() as http:
        holder = await http.post(sidecar.url + "/v1/messages", json=STALLED)
        assert holder.status == 200
        waiter = asyncio.create_task(http.post(sidecar.url + "/v1/messages", json=STALLED))
        await asyncio.sleep(0.05)
        async with http.post(sidecar.url + "/v1/messages", json=STALLED) as full:
            assert full.status == 529
            assert (await full.json())["error"]["type"] == "overloaded_error"
            assert int(full.headers["retry-after"]) >= 1
        async with http.get(sidecar.url + "/api/stream-response", params={"prompt": "x"}) as r:
            assert r.status == 503
            assert (await r.json())["error"]["type"] == "overloaded"
        timed_out = await waiter
        assert timed_out.status == 529
        timed_out.close()
        holder.close()


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


async def test_request_id_is_echoed_when_well_formed(sidecar_for: SidecarFactory) -> None:
    async with sidecar_for() as sidecar, aiohttp.ClientSession() as http:
        url = sidecar.url + "/api/stream-response"
        async with http.get(url, params={"prompt": "x"}, headers={"X-Request-Id": "abc-123"}) as r:
            assert r.headers["X-Request-Id"] == "abc-123"
        async with http.get(url, params={"prompt": "x"}, headers={"X-Request-Id": "bad id!"}) as r:
            assert re.fullmatch(r"req_[0-9a-f]{24}", r.headers["X-Request-Id"])


async def test_only_configured_api_paths_are_forwarded(
    fake: FakeServer, sidecar_for: SidecarFactory
) -> None:
    async with sidecar_for() as sidecar, sdk(sidecar.url) as client:
        with pytest.raises(anthropic.PermissionDeniedError):  # batches spend tokens unscreened
            await client.messages.batches.create(
                requests=[
                    {
                        "custom_id": "a",
                        "params": {"model": MODEL, "max_tokens": 8, "messages": user("x")},
                    }
                ]
            )
        async with aiohttp.ClientSession() as http:
            async with http.get(sidecar.url + "/v1/files") as response:
                assert response.status == 403
                assert (await response.json())["error"]["type"] == "permission_error"
            # A DELETE below /v1/messages is a stream cancel only for a stream id.
            for path in ("/v1/messages/batches", "/v1/messages/count_tokens"):
                async with http.delete(sidecar.url + path) as response:
                    assert response.status in (403, 405), path
                    assert (await response.json())["error"]["type"] != "not_found_error"
            async with http.get(sidecar.url + "/v1/models") as response:
                assert response.status == 200  # forwarded: the fake's models list
                assert (await response.json())["data"]
    assert [r["path"] for r in fake.state.requests] == ["/v1/models"]
    opened = {"claude": {"forward_paths": ["/v1/models", "/v1/messages/batches"]}}
    async with sidecar_for(opened) as sidecar, aiohttp.ClientSession() as http:
        async with http.post(sidecar.url + "/v1/messages/batches", json={"requests": []}) as r:
            assert r.status == 404  # forwarded now
    assert fake.state.requests[-1]["path"] == "/v1/messages/batches"


# --------------------------------------------------------------------------- the call's start


async def test_the_starts_deferred_half_runs_once_per_call_however_it_ends(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """What waits until the request to Claude is written (the `stream_start` line, the
    active-stream count, the queue wait point, the rate-limit headers) is done by the time
    Claude is working on the call, once, and before its answer is used; a call Claude
    fails and a client that leaves while Claude holds its answer are counted alike."""
    held = asyncio.Event()
    release = asyncio.Event()
    message = {"id": "msg_1", "type": "message", "role": "assistant", "model": MODEL,
               "content": [], "stop_reason": "end_turn",
               "usage": {"input_tokens": 3, "output_tokens": 1}}  # fmt: skip

    async def messages(request: web.Request) -> web.StreamResponse:
        body = await request.json()
        if body["messages"][0]["content"] == "fail":
            error = {"type": "error", "error": {"type": "api_error", "message": "no"}}
            return web.json_response(error, status=500)
        if body["messages"][0]["content"] == "hold":
            held.set()
            await release.wait()
        return web.json_response(message)

    app = web.Application()
    app.router.add_post("/v1/messages", messages)
    otel = make_otel()
    caplog.set_level(logging.INFO, logger="sidecar.stream")

    def lines(kind: str) -> int:
        return sum(1 for r in caplog.records if r.getMessage() == kind)

    def active() -> float:
        return otel.count("sidecar.streams.active")

    config: dict[str, Any] = {"claude": {"max_retries": 0},
              "quotas": {"store": "memory", "requests_per_minute": 100}}  # fmt: skip
    async with serving(app) as url:
        config["claude"]["base_url"] = url
        async with (
            running_sidecar(config, telemetry=otel.telemetry) as sidecar,
            aiohttp.ClientSession() as http,
        ):
            call = {"model": MODEL, "max_tokens": 8, "messages": user("hi")}
            async with http.post(sidecar.url + "/v1/messages", json=call) as response:
                assert response.status == 200
                assert response.headers["anthropic-ratelimit-requests-remaining"] == "99"
            assert (lines("stream_start"), lines("stream_complete"), active()) == (1, 1, 0)

            call["messages"] = user("fail")
            async with http.post(sidecar.url + "/v1/messages", json=call) as response:
                assert response.status == 500
                assert response.headers["anthropic-ratelimit-requests-remaining"] == "98"
            assert (lines("stream_start"), lines("stream_error"), active()) == (2, 1, 0)

            payload = json.dumps({**call, "messages": user("hold")}).encode()
            host, port = sidecar.url.removeprefix("http://").split(":")
            _, writer = await asyncio.open_connection(host, int(port))
            writer.write(
                b"POST /v1/messages HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                b"Content-Length: %d\r\n\r\n%b" % (len(payload), payload)
            )
            await held.wait()  # Claude has the request: the start is complete
            assert (lines("stream_start"), active()) == (3, 1)
            writer.transport.abort()  # the client leaves while Claude works on its call
            release.set()
            for _ in range(200):
                if lines("stream_complete") + lines("stream_error") == 3:
                    break
                await asyncio.sleep(0.01)
            assert (lines("stream_start"), active()) == (3, 0)
            assert lines("stream_complete") + lines("stream_error") == 3
    assert otel.count("sidecar.queue.wait", **{"sidecar.queue.admitted": True}) == 3


@pytest.mark.parametrize("route", ["/v1/messages", "/api/stream-response"])
async def test_an_open_stream_holds_neither_its_request_nor_set_aside_attributes(
    fake: FakeServer, sidecar_for: SidecarFactory, route: str
) -> None:
    """Once its request is written, a stream lets the request go (the body may be large)
    and its spans have stored their start attributes (nothing kept aside to the end)."""
    text = "[[fake tokens=50 tps=10]] " + "p" * 50_000
    body = {**STALLED, "messages": user(text)} if route == "/v1/messages" else {"prompt": text}
    otel = make_otel()
    async with (
        sidecar_for(
            {"screening": {"max_prompt_chars": 600_000}}, telemetry=otel.telemetry
        ) as sidecar,
        aiohttp.ClientSession() as http,
        http.post(sidecar.url + route, json=body) as response,
    ):
        assert response.status == 200
        await response.content.readline()  # Claude has answered: the stream is open
        calls = [o for o in gc.get_objects() if type(o) is ClaudeRequest]
        assert len(calls) == 1
        assert calls[0].body == b""
        assert calls[0].attempt.headers == {}
        spans = [o for o in gc.get_objects() if type(o) is SidecarSpan and o.is_recording()]
        assert len(spans) == 2  # the request's and the Claude call's
        assert all(span._pending is None for span in spans)
