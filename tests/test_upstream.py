"""The Claude client over real sockets: timeouts per call kind, retries as Claude directs them,
and answers that must not reach a client as they are (a refused sidecar key, odd statuses)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from sidecar.fake_claude import FakeSettings, running_fake_claude
from tests.conftest import SidecarFactory
from tests.support import running_sidecar, serving

MODEL = "claude-sonnet-5-5"
MESSAGE = {
    "id": "msg_1", "type": "message", "role": "assistant", "model": MODEL,
    "content": [{"type": "text", "text": "hi"}], "stop_reason": "end_turn",
    "usage": {"input_tokens": 3, "output_tokens": 1},
}  # fmt: skip


def body(text: str = "hi", *, stream: bool = False) -> dict[str, Any]:
    return {"model": MODEL, "max_tokens": 16, "stream": stream,
            "messages": [{"role": "user", "content": text}]}  # fmt: skip


async def post(url: str, data: dict[str, Any]) -> tuple[int, Any]:
    async with aiohttp.ClientSession() as http, http.post(url + "/v1/messages", json=data) as r:
        return r.status, await r.json() if r.content_type == "application/json" else await r.read()


# --------------------------------------------------------------------------- timeouts


async def test_a_non_streaming_call_may_take_longer_than_the_idle_timeout(
    sidecar_for: SidecarFactory,
) -> None:
    # Claude sends a non-streaming answer's headers only when it is complete: the wait
    # for them is the whole call, bounded by request_timeout_seconds, not the idle timeout.
    idle = 0.3
    config = {"claude": {"idle_timeout_seconds": idle, "request_timeout_seconds": 30}}
    async with sidecar_for(config) as sidecar:
        started = time.monotonic()
        status, answer = await post(sidecar.url, body("[[fake fault=slow_headers delay_ms=1500]]"))
        waited = time.monotonic() - started
        assert status == 200, answer
        assert answer["type"] == "message"
        assert waited > 4 * idle  # the answer came well after the idle timeout had passed
        # A stream keeps the idle timeout for its headers.
        status, answer = await post(
            sidecar.url, body("[[fake fault=slow_headers delay_ms=1500]]", stream=True)
        )
        assert status == 504, answer
        assert answer["error"]["type"] == "timeout_error"


async def test_request_timeout_bounds_a_non_streaming_call(sidecar_for: SidecarFactory) -> None:
    config = {"claude": {"request_timeout_seconds": 0.3, "max_retries": 0}}
    async with sidecar_for(config) as sidecar:
        status, answer = await post(sidecar.url, body("[[fake fault=slow_headers delay_ms=5000]]"))
    assert status == 504
    assert answer["error"]["type"] == "timeout_error"


def test_request_timeout_defaults_to_what_the_sdks_use() -> None:
    from sidecar.config import ClaudeConfig

    assert ClaudeConfig().request_timeout_seconds == 600


# --------------------------------------------------------------------------- the sidecar's key


async def test_a_refused_sidecar_key_is_a_502_naming_the_sidecar_credential(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async with (
        running_fake_claude(FakeSettings(tokens=3, api_key="sk-the-right-one")) as fake,
        running_sidecar({"claude": {"base_url": fake.url, "api_key": "sk-revoked"}}) as sidecar,
        aiohttp.ClientSession() as http,
    ):
        caplog.set_level(logging.ERROR, logger="sidecar.upstream")
        status, answer = await post(sidecar.url, body())
        assert status == 502
        assert answer["error"]["type"] == "api_error"
        assert "claude.api_key" in answer["error"]["message"]
        counting = {"model": MODEL, "messages": body()["messages"]}
        async with http.post(sidecar.url + "/v1/messages/count_tokens", json=counting) as r:
            assert r.status == 502  # forwarded calls too
        async with http.post(sidecar.url + "/api/stream-response", json={"prompt": "x"}) as r:
            assert r.status == 502
    refused = [r for r in caplog.records if r.name == "sidecar.upstream"]
    assert refused, "a refused sidecar key must be logged"
    assert all("sk-revoked" not in r.getMessage() for r in refused)


# --------------------------------------------------------------------------- a scripted Claude


@contextlib.asynccontextmanager
async def scripted_claude(
    answers: list[Callable[[], web.StreamResponse]],
) -> AsyncIterator[tuple[str, list[float]]]:
    """A Claude that gives `answers` in order (the last one repeats); yields (url, arrivals)."""
    arrivals: list[float] = []

    async def messages(request: web.Request) -> web.StreamResponse:
        await request.read()
        arrivals.append(time.monotonic())
        return answers[min(len(arrivals), len(answers)) - 1]()

    app = web.Application()
    app.router.add_post("/v1/messages", messages)
    async with serving(app) as url:
        yield url, arrivals


def error(status: int, **headers: str) -> Callable[[], web.StreamResponse]:
    def answer() -> web.StreamResponse:
        return web.json_response(
            {"type": "error", "error": {"type": "api_error", "message": "scripted"}},
            status=status, headers=headers,
        )  # fmt: skip

    return answer


def ok() -> web.StreamResponse:
    return web.json_response(MESSAGE)


def claude_at(url: str, **claude: Any) -> dict[str, Any]:
    return {"claude": {"base_url": url, "api_key": "sk-sidecar", "max_retries": 2,
                       "retry_base_seconds": 0.01, "retry_max_seconds": 2, **claude}}  # fmt: skip


async def test_x_should_retry_true_retries_a_status_that_is_not_retried_by_default() -> None:
    async with scripted_claude([error(409, **{"x-should-retry": "true"}), ok]) as (url, seen):
        async with running_sidecar(claude_at(url)) as sidecar:
            status, _ = await post(sidecar.url, body())
    assert (status, len(seen)) == (200, 2)


async def test_a_success_is_never_retried_whatever_x_should_retry_says() -> None:
    def marked_ok() -> web.StreamResponse:
        return web.json_response(MESSAGE, headers={"x-should-retry": "true"})

    async with scripted_claude([marked_ok]) as (url, seen):
        async with running_sidecar(claude_at(url)) as sidecar:
            status, _ = await post(sidecar.url, body())
    assert (status, len(seen)) == (200, 1)


async def test_x_should_retry_false_stops_retries_of_a_retryable_status() -> None:
    async with scripted_claude([error(529, **{"x-should-retry": "false"}), ok]) as (url, seen):
        async with running_sidecar(claude_at(url)) as sidecar:
            status, _ = await post(sidecar.url, body())
    assert (status, len(seen)) == (529, 1)


async def test_retry_after_ms_wins_over_retry_after() -> None:
    # retry-after alone (100 s) is beyond retry_max_seconds: it would go back to the client.
    slow = error(429, **{"retry-after": "100", "retry-after-ms": "200"})
    async with scripted_claude([slow, ok]) as (url, seen):
        async with running_sidecar(claude_at(url)) as sidecar:
            status, _ = await post(sidecar.url, body())
    assert (status, len(seen)) == (200, 2)
    assert seen[1] - seen[0] >= 0.2  # the ms wait was kept


@pytest.mark.parametrize("status", [201, 202, 204, 206])
async def test_odd_success_statuses_are_not_relayed(status: int) -> None:
    def odd() -> web.StreamResponse:
        return web.Response(status=status)

    async with scripted_claude([odd]) as (url, _), running_sidecar(claude_at(url)) as sidecar:
        got, answer = await post(sidecar.url, body())
        streamed, _ = await post(sidecar.url, body(stream=True))
    assert (got, streamed) == (502, 502)
    assert answer["error"]["type"] == "api_error"


async def test_an_upstream_101_is_not_relayed() -> None:
    async def switching(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(
            b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: x\r\nConnection: Upgrade\r\n\r\n"
        )
        await writer.drain()
        await asyncio.sleep(1)
        writer.close()

    server = await asyncio.start_server(switching, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    async with server, running_sidecar(claude_at(f"http://127.0.0.1:{port}")) as sidecar:
        status, answer = await post(sidecar.url, body())
    assert status == 502
    assert answer["error"]["type"] == "api_error"
