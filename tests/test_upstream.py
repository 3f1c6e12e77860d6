"""The Claude client over real sockets: the headers it sends (never the client's credential),
retries and `retry-after` in every form RFC 9110 allows (and garbage), unreachable and slow
to connect Claudes, and answers cut short or arriving in pieces (from a scripted Claude)."""

from __future__ import annotations

import asyncio
import json
import re
import socket
import time
from email.utils import formatdate

import aiohttp
import anthropic
import pytest

from sidecar.config import ClaudeConfig
from sidecar.fake_claude import FakeServer
from sidecar.upstream import ClaudeClient
from tests.support.scripted_claude import (
    MODEL,
    Script,
    chunk,
    claude_config,
    messages_body,
    scripted_claude,
)
from tests.support.sdk import sdk, user
from tests.support.sidecars import SidecarFactory, running_sidecar


def cut_after_headers(status: bytes, first: bytes) -> Script:
    """A JSON answer that promises more than it sends: the connection drops mid-body."""

    async def script(writer: asyncio.StreamWriter) -> None:
        writer.write(
            b"HTTP/1.1 %b\r\nContent-Type: application/json\r\nContent-Length: 4000\r\n\r\n%b"
            % (status, first)
        )
        await writer.drain()
        writer.transport.abort()

    return script


@pytest.mark.parametrize("path", ["/v1/messages", "/v1/messages/count_tokens"])
async def test_a_json_answer_cut_short_is_a_502_not_a_500(path: str) -> None:
    async with (
        scripted_claude(cut_after_headers(b"200 OK", b'{"id":"msg_1","con')) as url,
        running_sidecar(claude_config(url)) as sidecar,
        aiohttp.ClientSession() as http,
        http.post(sidecar.url + path, json=messages_body(stream=False)) as response,
    ):
        assert response.status == 502
        error = (await response.json())["error"]
        assert error["type"] == "api_error"
        assert "internal" not in error["message"]


async def test_an_error_answer_cut_short_is_a_502_on_the_prompt_route() -> None:
    async with (
        scripted_claude(cut_after_headers(b"429 Too Many Requests", b'{"type":"err')) as url,
        running_sidecar(claude_config(url)) as sidecar,
        aiohttp.ClientSession() as http,
        http.post(sidecar.url + "/api/stream-response", json={"prompt": "hi"}) as response,
    ):
        assert response.status == 502  # what Claude meant to say never arrived
        assert (await response.json())["error"]["type"] == "upstream_error"


async def test_an_error_body_that_arrives_in_pieces_is_relayed_whole() -> None:
    body = json.dumps({
        "type": "error", "request_id": "req_1",
        "error": {"type": "rate_limit_error", "message": "slow down " + "x" * 2000},
    }).encode()  # fmt: skip

    async def in_pieces(writer: asyncio.StreamWriter) -> None:
        writer.write(
            b"HTTP/1.1 429 Too Many Requests\r\nContent-Type: application/json\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n" + chunk(body[:40])
        )
        await writer.drain()
        await asyncio.sleep(0.05)  # the sidecar reads the first piece on its own
        writer.write(chunk(body[40:]) + b"0\r\n\r\n")
        await writer.drain()

    async with (
        scripted_claude(in_pieces, in_pieces) as url,
        running_sidecar(claude_config(url)) as sidecar,
        aiohttp.ClientSession() as http,
    ):
        async with http.post(sidecar.url + "/v1/messages", json=messages_body()) as response:
            assert response.status == 429
            assert await response.read() == body
        async with http.post(sidecar.url + "/api/stream-response", json={"prompt": "hi"}) as r:
            assert r.status == 429
            assert (await r.json())["error"]["type"] == "rate_limited"


async def test_retry_after_as_an_http_date_is_honoured() -> None:
    # RFC 9110 allows `retry-after: <HTTP-date>`; an hour from now is far past
    # `retry_max_seconds`, so the client gets the 429 at once and Claude is not called again.
    seen = 0

    async def limited(writer: asyncio.StreamWriter) -> None:
        nonlocal seen
        seen += 1
        when = formatdate(time.time() + 3600, usegmt=True).encode()
        body = b'{"type":"error","error":{"type":"rate_limit_error","message":"later"}}'
        writer.write(
            b"HTTP/1.1 429 Too Many Requests\r\nContent-Type: application/json\r\n"
            b"retry-after: %b\r\nContent-Length: %d\r\n\r\n%b" % (when, len(body), body)
        )
        await writer.drain()

    config = claude_config("", max_retries=2, retry_base_seconds=0.01, retry_max_seconds=5)
    async with scripted_claude(limited, limited, limited) as url:
        config["claude"]["base_url"] = url
        async with (
            running_sidecar(config) as sidecar,
            aiohttp.ClientSession() as http,
            http.post(sidecar.url + "/v1/messages", json=messages_body()) as response,
        ):
            assert response.status == 429
            assert "GMT" in response.headers["retry-after"]
    assert seen == 1


@pytest.mark.parametrize("value", ["-3", "nan", "soon", "", "Wed, 99 Foo 2015 07:28:00 GMT"])
async def test_retry_after_that_is_negative_or_garbage_never_waits_wrongly(value: str) -> None:
    config = ClaudeConfig(retry_base_seconds=0.5, retry_max_seconds=2)
    async with aiohttp.ClientSession() as session:
        client = ClaudeClient(config, "http://x", session)
        assert 0 <= client.backoff(0, value) <= 2


async def test_retry_after_in_the_past_is_no_wait() -> None:
    async with aiohttp.ClientSession() as session:
        client = ClaudeClient(ClaudeConfig(), "http://x", session)
        assert client.backoff(3, formatdate(time.time() - 60, usegmt=True)) == 0


async def test_a_connect_timeout_is_a_connect_error_and_is_retried() -> None:
    # A listener whose backlog is full: the next connection attempts time out.
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(0)
    filler = socket.socket()
    filler.connect(listener.getsockname())
    port = listener.getsockname()[1]
    config = claude_config(
        f"http://127.0.0.1:{port}",
        connect_timeout_seconds=0.2, max_retries=1, retry_base_seconds=0.01,
    )  # fmt: skip
    try:
        async with (
            running_sidecar(config) as sidecar,
            aiohttp.ClientSession() as http,
            http.post(sidecar.url + "/v1/messages", json=messages_body()) as response,
        ):
            assert response.status == 502
            assert "unreachable" in (await response.json())["error"]["message"]
            async with http.get(sidecar.admin_url + "/metrics") as metrics:
                text = await metrics.text()
    finally:
        filler.close()
        listener.close()
    retried = [line for line in text.splitlines() if line.startswith("sidecar_upstream_retries")]
    assert any('reason="connect_error"' in line and line.endswith(" 1.0") for line in retried)


# ------------------------------------------------------------------ against the fake Claude


async def test_the_client_credential_is_never_forwarded(
    fake: FakeServer, sidecar_for: SidecarFactory
) -> None:
    async with sidecar_for() as sidecar:
        async with aiohttp.ClientSession() as http:
            headers = {"x-api-key": "client-key", "Authorization": "Bearer client-token",
                       "anthropic-version": "2026-10-21", "anthropic-beta": "feature-x"}  # fmt: skip
            body = {"model": MODEL, "max_tokens": 8, "messages": user("x")}
            async with http.post(sidecar.url + "/v1/messages", json=body, headers=headers) as r:
                assert r.status == 200
                assert r.headers["request-id"].startswith("req_")
    seen = fake.state.requests[-1]["headers"]
    assert seen["x-api-key"] == "sk-sidecar"
    assert "authorization" not in seen
    assert seen["anthropic-version"] == "2026-10-21"
    assert seen["anthropic-beta"] == "feature-x"
    assert re.fullmatch(r"00-[0-9a-f]{32}-[0-9a-f]{16}-[0-9a-f]{2}", seen["traceparent"])


@pytest.mark.parametrize(
    ("fault", "error"),
    [("rate_limit", anthropic.RateLimitError), ("overloaded", anthropic.APIStatusError)],
)
async def test_upstream_429_and_529_reach_the_sdk_after_retries(
    fake: FakeServer, sidecar_for: SidecarFactory, fault: str, error: type[Exception]
) -> None:
    async with sidecar_for() as sidecar, sdk(sidecar.url) as client:
        with pytest.raises(error) as caught:
            await client.messages.create(
                model=MODEL, max_tokens=8, messages=user(f"[[fake fault={fault} retry_after=0]]")
            )
    status = 429 if fault == "rate_limit" else 529
    assert getattr(caught.value, "status_code", None) == status
    assert fake.state.counters[f"faults_{fault}"] == 3  # first try + max_retries (2)


async def test_long_retry_after_goes_back_to_the_client_without_waiting(
    fake: FakeServer, sidecar_for: SidecarFactory
) -> None:
    async with sidecar_for() as sidecar, aiohttp.ClientSession() as http:
        body = {
            "model": MODEL,
            "max_tokens": 8,
            "messages": user("[[fake fault=rate_limit retry_after=60]]"),
        }
        async with http.post(sidecar.url + "/v1/messages", json=body) as response:
            assert response.status == 429
            assert response.headers["retry-after"] == "60"
            assert (await response.json())["error"]["type"] == "rate_limit_error"
    assert fake.state.counters["faults_rate_limit"] == 1


async def test_retries_then_succeeds(fake: FakeServer, sidecar_for: SidecarFactory) -> None:
    text = "[[fake fault=overloaded retry_after=0 fail_times=2 fail_key=k1]] retry me"
    async with sidecar_for() as sidecar, sdk(sidecar.url) as client:
        message = await client.messages.create(model=MODEL, max_tokens=64, messages=user(text))
    assert message.stop_reason == "end_turn"
    assert fake.state.counters["faults_overloaded"] == 2


async def test_unreachable_claude_is_a_clean_502(sidecar_for: SidecarFactory) -> None:
    config = {"claude": {"base_url": "http://127.0.0.1:9", "max_retries": 1}}
    async with sidecar_for(config) as sidecar, sdk(sidecar.url) as client:
        with pytest.raises(anthropic.InternalServerError) as caught:
            await client.messages.create(model=MODEL, max_tokens=8, messages=user("x"))
    assert caught.value.status_code == 502
