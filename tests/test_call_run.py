"""One Claude call over real sockets: a whole answer and a forwarded one, the queue's
refusals, the start's deferred half (once per call, however it ends), and what an open
stream lets go of."""

from __future__ import annotations

import asyncio
import gc
import json
import logging
from collections.abc import Callable
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from prometheus_client.parser import text_string_to_metric_families

from sidecar.call.run import ClaudeRequest
from sidecar.fake_claude import FakeServer
from sidecar.telemetry.span import SidecarSpan
from tests.support.apps import serving
from tests.support.logs import LogReader, events, one
from tests.support.otel import make_otel, prompt
from tests.support.scripted_claude import claude_config, messages_body, scripted_claude
from tests.support.sdk import STALLED, sdk, user
from tests.support.sidecars import SidecarFactory, running_sidecar
from tests.support.sockets import free_port

MODEL = "claude-sonnet-5-5"


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
        async with http.get(sidecar.admin_url + "/metrics") as response:
            scrape = await response.text()
        holder.close()
    # Each refusal is counted with the status its client got: the prompt route's 503.
    counted = {
        (sample.labels["http_route"], sample.labels["sidecar_rejection_reason"],
         sample.labels["http_response_status_code"]): sample.value
        for family in text_string_to_metric_families(scrape)
        if family.name == "sidecar_rejections"
        for sample in family.samples
        if sample.name == "sidecar_rejections_total"
    }  # fmt: skip
    assert counted == {
        ("/v1/", "queue_full", "529"): 1,
        ("/v1/", "queue_timeout", "529"): 1,
        ("/api/stream-response", "queue_full", "503"): 1,
    }


@pytest.mark.parametrize(
    ("claude", "prompt_text", "retries", "status", "error_type"),
    [
        # No answer at all: every attempt refused, the retries spent, then a 502; the
        # conventions' `error.type` is then the exception's class.
        ({"base_url": "http://127.0.0.1:{port}"}, "hi", 2, None, "ConnectError"),
        # An answer no client may see as Claude's (the sidecar's own key refused: 502; not
        # permitted what was asked: 403); `error.type` is what Claude answered the sidecar.
        ({}, "hi [[fake fault=auth]]", 0, 401, "authentication_error"),
        ({}, "hi [[fake fault=permission]]", 0, 403, "permission_error"),
    ],
    ids=["unreachable_after_retries", "sidecar_key_refused", "sidecar_key_not_permitted"],
)
async def test_a_call_that_fails_in_its_send_reports_its_retries_and_claudes_status(
    sidecar_for: SidecarFactory,
    log_output: Callable[..., LogReader],
    claude: dict[str, Any],
    prompt_text: str,
    retries: int,
    status: int | None,
    error_type: str,
) -> None:
    """The span and the stream's log line say how many retries a call made and what Claude
    answered, also when the call ends inside its send (no answer a client may get), and
    why it failed as the GenAI conventions name it, not the client's `api_error`."""
    read = log_output()
    otel = make_otel()
    claude = {key: value.format(port=free_port()) for key, value in claude.items()}
    async with sidecar_for({"claude": claude}, telemetry=otel.telemetry) as sidecar:
        answered, _ = await prompt(sidecar.url, prompt_text)
    assert answered == (403 if status == 403 else 502)
    attributes = otel.client_span().attributes or {}
    assert attributes["sidecar.stream.outcome"] == "upstream_error"
    assert attributes["sidecar.upstream.retries"] == retries
    assert attributes.get("http.response.status_code") == status
    assert otel.count("sidecar.upstream.retries") == retries  # as the counter always said
    error = one(events(read()), "stream_error")
    assert (error["retries"], error["upstream_status"]) == (retries, status)
    assert attributes["error.type"] == error["error_type"] == error_type
    assert otel.count("gen_ai.client.operation.duration", **{"error.type": error_type}) == 1


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

    config: dict[str, Any] = {"claude": {"max_retries": 0, "api_key": "k"},
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
        gc.collect()  # what earlier tests left in reference cycles is not this stream's
        calls = [o for o in gc.get_objects() if type(o) is ClaudeRequest]
        assert len(calls) == 1
        assert calls[0].body == b""
        assert calls[0].attempt.headers == {}
        spans = [o for o in gc.get_objects() if type(o) is SidecarSpan and o.is_recording()]
        assert len(spans) == 2  # the request's and the Claude call's
        assert not any(span.pending for span in spans)


@pytest.mark.parametrize(
    ("retry_after", "retry_after_ms", "relayed"),
    [("-5", "1e9", {}), ("nan", "-1", {}), ("7", "-1", {"retry-after": "7"}),
     ("1e9", "1500", {"retry-after-ms": "1500"}),
     ("Wed, 21 Oct 2015 07:28:00 GMT", "2.5",
      {"retry-after": "Wed, 21 Oct 2015 07:28:00 GMT", "retry-after-ms": "2.5"})],
    ids=["both-garbage", "nan", "seconds", "ms", "date"],
)  # fmt: skip
async def test_claudes_error_on_the_prompt_and_ui_routes_keeps_only_valid_waits(
    retry_after: str, retry_after_ms: str, relayed: dict[str, str]
) -> None:
    """The prompt and `ui` routes answer Claude's error in their own JSON: its
    `retry-after` / `retry-after-ms` go on only when they are waits (RFC 9110), never a
    `-5` or `1e9` for the client to read as "now" or "never". The Anthropic route passes
    Claude's answer on as sent."""
    body = b'{"type":"error","error":{"type":"rate_limit_error","message":"later"}}'

    async def limited(writer: asyncio.StreamWriter) -> None:
        writer.write(
            b"HTTP/1.1 429 Too Many Requests\r\nContent-Type: application/json\r\n"
            b"retry-after: %b\r\nretry-after-ms: %b\r\nContent-Length: %d\r\n\r\n%b"
            % (retry_after.encode(), retry_after_ms.encode(), len(body), body)
        )
        await writer.drain()

    ui = {
        "id": "c1",
        "messages": [{"id": "m", "role": "user", "parts": [{"type": "text", "text": "hi"}]}],
    }
    config = claude_config("")
    config["routes"] = [{"path": "/api/stream-response", "handler": "prompt"},
                        {"path": "/v1/", "handler": "anthropic"},
                        {"path": "/api/chat", "handler": "ui"}]  # fmt: skip
    async with scripted_claude(limited, limited, limited) as url:
        config["claude"]["base_url"] = url
        async with running_sidecar(config) as sidecar, aiohttp.ClientSession() as http:
            answers = []
            for path, sent in (("/api/stream-response", {"prompt": "hi"}), ("/api/chat", ui),
                               ("/v1/messages", messages_body())):  # fmt: skip
                async with http.post(sidecar.url + path, json=sent) as response:
                    assert response.status == 429
                    await response.read()
                    answers.append(response.headers)
    *own, anthropic = answers
    for headers in own:
        waits = {n: headers[n] for n in ("retry-after", "retry-after-ms") if n in headers}
        assert waits == relayed
    assert (anthropic["retry-after"], anthropic["retry-after-ms"]) == (retry_after, retry_after_ms)
