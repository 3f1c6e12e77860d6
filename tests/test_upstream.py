"""The Claude client over real sockets: the headers it sends (never the client's credential),
retries as Claude directs them (`retry-after` in every form RFC 9110 allows, `retry-after-ms`,
`x-should-retry`), timeouts per call kind, unreachable and slow to connect Claudes, answers cut
short or arriving in pieces, and answers that must not reach a client as they are (a refused
sidecar key, odd statuses)."""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import json
import logging
import re
import socket
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable
from email.utils import formatdate
from typing import Any

import aiohttp
import anthropic
import pytest
from aiohttp import web
from multidict import CIMultiDict
from prometheus_client.parser import text_string_to_metric_families

from sidecar import upstream
from sidecar.config import ClaudeConfig
from sidecar.errors import Rejection
from sidecar.fake_claude import FakeServer, FakeSettings, running_fake_claude
from sidecar.http_client import Pool
from sidecar.upstream import Attempt, ClaudeClient
from tests.support.apps import serving
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
    client = ClaudeClient(config, "http://x", Pool("http://x", limit=1, connect_timeout=1))
    assert 0 <= client.backoff(0, value) <= 2


@pytest.mark.parametrize("value", ["-5", "-0.5", "1e9", "inf", "nan", "1_0", "\u0663", ".5"])
async def test_retry_after_that_is_no_delay_seconds_falls_back_to_backoff(
    value: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """RFC 9110: delay-seconds is a non-negative integer; anything else is no value, so
    the sidecar backs off itself (here: the jitter's top), never "retry now" (`-5`) nor
    a wait it would read as far too long to retry (`1e9`)."""
    monkeypatch.setattr("sidecar.upstream.random.uniform", lambda low, high: high)
    config = ClaudeConfig(retry_base_seconds=0.5, retry_max_seconds=2)
    client = ClaudeClient(config, "http://x", Pool("http://x", limit=1, connect_timeout=1))
    assert client.backoff(1, value) == 1.0
    assert client.backoff(1, None, value) == 1.0
    assert client.backoff(1, "3", value) == 3.0  # an invalid retry-after-ms: retry-after's
    assert client.backoff(1, "1.5") == 1.0  # a fraction is no delay-seconds (it is ms's)


async def test_a_huge_retry_after_is_clamped() -> None:
    client = ClaudeClient(ClaudeConfig(), "http://x", Pool("http://x", limit=1, connect_timeout=1))
    assert client.backoff(0, "9" * 400) == 86_400
    assert client.backoff(0, None, "9" * 400) == 86_400


async def test_a_garbage_retry_after_ms_does_not_hand_a_retryable_error_to_the_client() -> None:
    """`retry-after-ms: 1e9` is no wait (milliseconds are digits): the sidecar retries by
    `retry-after: 0` instead of reading a wait of 11 days and giving up; the client gets
    the retried call's answer."""
    seen = 0
    body = b'{"type":"error","error":{"type":"overloaded_error","message":"busy"}}'

    async def overloaded(writer: asyncio.StreamWriter) -> None:
        nonlocal seen
        seen += 1
        writer.write(
            b"HTTP/1.1 529 Overloaded\r\nContent-Type: application/json\r\nretry-after: 0\r\n"
            b"retry-after-ms: 1e9\r\nContent-Length: %d\r\n\r\n%b" % (len(body), body)
        )
        await writer.drain()

    config = claude_config("", max_retries=1, retry_base_seconds=0.01, retry_max_seconds=5)
    async with scripted_claude(overloaded, overloaded) as url:
        config["claude"]["base_url"] = url
        async with (
            running_sidecar(config) as sidecar,
            aiohttp.ClientSession() as http,
            http.post(sidecar.url + "/v1/messages", json=messages_body()) as response,
        ):
            assert response.status == 529
            assert response.headers["retry-after-ms"] == "1e9"  # relayed as Claude sent it
            assert await response.read() == body
    assert seen == 2


async def test_retry_after_in_the_past_is_no_wait() -> None:
    pool = Pool("http://x", limit=1, connect_timeout=1)
    client = ClaudeClient(ClaudeConfig(), "http://x", pool)
    assert client.backoff(3, formatdate(time.time() - 60, usegmt=True)) == 0


async def test_a_path_in_the_base_url_prefixes_every_call() -> None:
    # As the official SDKs read `base_url`: a gateway mounted below a path keeps it.
    pool = Pool("http://x", limit=1, connect_timeout=1)
    mounted = ClaudeClient(ClaudeConfig(), "https://gw.example/anthropic/", pool)
    assert mounted.target("/v1/messages?beta=true") == "/anthropic/v1/messages?beta=true"
    assert ClaudeClient(ClaudeConfig(), "https://api.example", pool).target("/v1/x") == "/v1/x"


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


async def test_every_anthropic_beta_line_reaches_claude(
    fake: FakeServer, sidecar_for: SidecarFactory
) -> None:
    """A list header split over lines is one list: each beta the client named is sent,
    and the cache keys the same list however it was split."""
    async with sidecar_for() as sidecar, aiohttp.ClientSession() as http:
        headers = CIMultiDict([("anthropic-beta", "a-1,b-2"), ("anthropic-beta", "c-3")])
        body = {"model": MODEL, "max_tokens": 8, "messages": user("x")}
        async with http.post(sidecar.url + "/v1/messages", json=body, headers=headers) as r:
            assert r.status == 200
    assert fake.state.requests[-1]["headers"]["anthropic-beta"] == "a-1,b-2, c-3"


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
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The refusal is logged at most every 10 s per process: not yet, whatever ran before.
    monkeypatch.setattr(upstream, "_LAST_KEY_ERROR", {})
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


# What Claude says refusing a key: the client must never read it (it would blame its own).
CLAUDES_WORDS = {
    401: ("authentication_error", "invalid x-api-key"),
    403: (
        "permission_error",
        "Your API key does not have permission to use the specified resource.",
    ),
}


@pytest.mark.parametrize("status", [401, 403])
async def test_claude_refusing_the_sidecar_key_is_a_misconfigured_gateway_on_every_route(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch, status: int
) -> None:
    """Claude's 401 or 403 is about the sidecar's own `claude.api_key` (a client's
    credential never reaches Claude), answered on each route in its own format and the
    sidecar's words, counted as a rejection and logged once for the operator: a 401 fails
    every call (502, a misconfigured gateway, ERROR), a 403 denies what this request asked
    for (a model, a beta: 403, which SDKs do not retry, WARNING)."""
    monkeypatch.setattr(upstream, "_LAST_KEY_ERROR", {})
    error_type, words = CLAUDES_WORDS[status]
    answered, reason, said, level = {
        401: (502, "upstream_credential_refused", "misconfigured", logging.ERROR),
        403: (403, "upstream_permission_denied", "not enabled for the gateway", logging.WARNING),
    }[status]
    short = {401: "upstream_error", 403: "forbidden"}[status]
    anthropic = {401: "api_error", 403: "permission_error"}[status]

    def refused() -> web.StreamResponse:
        return web.json_response(
            {"type": "error", "error": {"type": error_type, "message": words}}, status=status
        )

    chat = {"id": "c", "trigger": "submit-message", "messages": [
        {"id": "u1", "role": "user", "parts": [{"type": "text", "text": "hi"}]}]}  # fmt: skip
    calls: list[tuple[str, str, Any, str]] = [
        ("POST", "/v1/messages", messages_body(), anthropic),
        ("POST", "/v1/messages", messages_body(stream=False), anthropic),
        ("POST", "/v1/messages/count_tokens", messages_body(stream=False), anthropic),
        ("GET", "/v1/models", None, anthropic),
        ("POST", "/api/stream-response", {"prompt": "hi"}, short),
        ("POST", "/api/chat", chat, short),
    ]
    seen: list[tuple[str | None, str | None]] = []

    async def claude(request: web.Request) -> web.StreamResponse:
        await request.read()
        seen.append((request.headers.get("x-api-key"), request.headers.get("Authorization")))
        return refused()

    claude_app = web.Application()
    claude_app.router.add_route("*", "/{path:.*}", claude)
    caplog.set_level(logging.INFO)
    async with (
        serving(claude_app) as url,
        running_sidecar(claude_at(url)) as sidecar,
        aiohttp.ClientSession() as http,
    ):
        for method, path, sent, expected in calls:
            headers = {"x-api-key": "sk-client-credential", "Authorization": "Bearer client"}
            async with http.request(method, sidecar.url + path, json=sent, headers=headers) as r:
                assert r.status == answered, path
                answer = await r.json()
            assert answer["error"]["type"] == expected, path
            message = answer["error"]["message"]
            assert said in message, path
            assert "claude.api_key" in message, path
            assert words not in message, path
            assert error_type not in message, path
        async with http.get(sidecar.admin_url + "/metrics") as scraped:
            scrape = await scraped.text()
    rejected = Counter(
        (sample.labels["sidecar_rejection_reason"], sample.labels["http_response_status_code"])
        for family in text_string_to_metric_families(scrape)
        if family.name == "sidecar_rejections"
        for sample in family.samples
        if sample.name == "sidecar_rejections_total"
        for _ in range(int(sample.value))
    )
    # Claude only ever saw the sidecar's key, once per call (a refusal is not retried).
    assert seen == [("sk-sidecar", None)] * len(calls)
    assert rejected == {(reason, str(answered)): len(calls)}
    errors = [r for r in caplog.records if r.name == "sidecar.upstream"]
    assert [(r.name, r.levelno, getattr(r, "event", None), getattr(r, "upstream_status", None))
            for r in errors] == [("sidecar.upstream", level, "claude_api_key_refused", status)]  # fmt: skip
    logged = "\n".join(r.getMessage() for r in caplog.records)
    assert "sk-sidecar" not in logged
    assert "sk-client-credential" not in logged
    assert words not in logged


# --------------------------------------------------------------------------- a scripted Claude


@contextlib.asynccontextmanager
async def answering_claude(
    answers: list[Callable[[], web.StreamResponse]],
) -> AsyncIterator[tuple[str, list[float]]]:
    """A Claude that gives `answers` in order (the last one repeats), on every path;
    yields (url, arrivals)."""
    arrivals: list[float] = []

    async def messages(request: web.Request) -> web.StreamResponse:
        await request.read()
        arrivals.append(time.monotonic())
        return answers[min(len(arrivals), len(answers)) - 1]()

    app = web.Application()
    app.router.add_route("*", "/{path:.*}", messages)
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
    async with answering_claude([error(409, **{"x-should-retry": "true"}), ok]) as (url, seen):
        async with running_sidecar(claude_at(url)) as sidecar:
            status, _ = await post(sidecar.url, body())
    assert (status, len(seen)) == (200, 2)


async def test_a_success_is_never_retried_whatever_x_should_retry_says() -> None:
    def marked_ok() -> web.StreamResponse:
        return web.json_response(MESSAGE, headers={"x-should-retry": "true"})

    async with answering_claude([marked_ok]) as (url, seen):
        async with running_sidecar(claude_at(url)) as sidecar:
            status, _ = await post(sidecar.url, body())
    assert (status, len(seen)) == (200, 1)


async def test_x_should_retry_false_stops_retries_of_a_retryable_status() -> None:
    async with answering_claude([error(529, **{"x-should-retry": "false"}), ok]) as (url, seen):
        async with running_sidecar(claude_at(url)) as sidecar:
            status, _ = await post(sidecar.url, body())
    assert (status, len(seen)) == (529, 1)


async def test_retry_after_ms_wins_over_retry_after() -> None:
    # retry-after alone (100 s) is beyond retry_max_seconds: it would go back to the client.
    slow = error(429, **{"retry-after": "100", "retry-after-ms": "200"})
    async with answering_claude([slow, ok]) as (url, seen):
        async with running_sidecar(claude_at(url)) as sidecar:
            status, _ = await post(sidecar.url, body())
    assert (status, len(seen)) == (200, 2)
    assert seen[1] - seen[0] >= 0.2  # the ms wait was kept


@pytest.mark.parametrize("status", [201, 202, 204, 206])
async def test_odd_success_statuses_are_not_relayed(status: int) -> None:
    def odd() -> web.StreamResponse:
        return web.Response(status=status)

    async with answering_claude([odd]) as (url, _), running_sidecar(claude_at(url)) as sidecar:
        got, answer = await post(sidecar.url, body())
        streamed, _ = await post(sidecar.url, body(stream=True))
    assert (got, streamed) == (502, 502)
    assert answer["error"]["type"] == "api_error"


@pytest.mark.parametrize("status", [300, 301, 302, 303, 304, 307, 308])
async def test_redirects_and_other_3xx_statuses_are_not_relayed(status: int) -> None:
    """The sidecar sends Claude no conditional header and follows no redirect: a 3xx (a
    gateway redirecting, a misconfigured base_url) is no answer for any client. Relayed,
    a POST got a 304 or a 302 labelled as the client's `invalid_request_error`, and the
    prompt route answered its own error JSON under a 302 with an empty message."""

    def redirect() -> web.StreamResponse:
        body = None if status == 304 else b'{"moved": true}'
        return web.Response(status=status, body=body, headers={"Location": "https://x.example/"})

    async with answering_claude([redirect]) as (url, _), running_sidecar(claude_at(url)) as sidecar:
        got, answer = await post(sidecar.url, body())
        streamed, _ = await post(sidecar.url, body(stream=True))
        async with aiohttp.ClientSession() as http:
            async with http.post(
                sidecar.url + "/v1/messages/count_tokens", json={"model": MODEL, "messages": []}
            ) as counted:
                assert counted.status == 502
                assert "Location" not in counted.headers
            async with http.get(sidecar.url + "/v1/models") as models:
                assert models.status == 502
            async with http.get(
                sidecar.url + "/api/stream-response", params={"prompt": "hi"}
            ) as prompted:
                assert prompted.status == 502
                assert (await prompted.json())["error"]["type"] == "upstream_error"
    assert (got, streamed) == (502, 502)
    assert answer["error"]["type"] == "api_error"
    assert answer["error"]["message"] == f"Claude answered with an unexpected status ({status})"


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


async def test_written_runs_once_however_many_attempts_and_never_without_a_request() -> None:
    """The caller's deferred step runs after the first attempt written, not again on a
    retry; with Claude unreachable no request was written and it never runs."""
    config = ClaudeConfig(max_retries=2, retry_base_seconds=0.01, retry_max_seconds=2)
    steps: list[int] = []
    async with answering_claude([error(529, **{"retry-after": "0"}), ok]) as (url, seen):
        pool = Pool(url, limit=2, connect_timeout=5)
        client = ClaudeClient(config, url, pool)
        attempt = Attempt("POST", "/v1/messages", {"content-type": "application/json"})
        answer, retries = await client.send(
            attempt, json.dumps(body()).encode(), stream=False,
            written=lambda: steps.append(len(seen)),
        )  # fmt: skip
        assert (answer.status, retries, len(seen)) == (200, 1, 2)
        answer.close()
        await pool.close()
    assert steps == [0]  # once, as the first attempt left (before Claude had read it)
    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        nobody = f"http://127.0.0.1:{sock.getsockname()[1]}"
    pool = Pool(nobody, limit=1, connect_timeout=5)
    client = ClaudeClient(config, nobody, pool)
    with pytest.raises(Rejection, match="unreachable"):
        await client.send(attempt, b"{}", written=lambda: steps.append(-1))
    assert steps == [0]
    await pool.close()


# --------------------------------------------------------------------------- answers Claude never sends


def compressed(
    status: int, payload: bytes, content_type: str = "application/json", **headers: str
) -> Callable[[], web.StreamResponse]:
    """An answer gzip-compressed although the sidecar asked for `identity` (a gateway)."""

    def answer() -> web.StreamResponse:
        return web.Response(
            status=status, body=gzip.compress(payload), content_type=content_type,
            headers={"content-encoding": "gzip", **headers},
        )  # fmt: skip

    return answer


async def test_a_compressed_whole_answer_reaches_the_client_decoded() -> None:
    rate_limited = json.dumps(
        {"type": "error", "error": {"type": "rate_limit_error", "message": "slow down"}}
    ).encode()
    answers = [
        compressed(200, json.dumps(MESSAGE).encode()),
        compressed(429, rate_limited, **{"retry-after": "30", "x-should-retry": "false"}),
    ]
    async with (
        answering_claude(answers) as (url, _),
        running_sidecar(claude_at(url)) as sidecar,
        sdk(sidecar.url) as client,
    ):
        message = await client.messages.create(model=MODEL, max_tokens=8, messages=user("x"))
        assert (message.content[0].type, message.usage.output_tokens) == ("text", 1)
        assert message.model_dump()["content"][0]["text"] == "hi"
        status, answer = await post(sidecar.url, body(stream=True))
    assert status == 429
    assert answer == json.loads(rate_limited)


async def test_a_compressed_stream_is_refused_before_its_first_byte() -> None:
    events = b'event: message_start\ndata: {"type":"message_start"}\n\n'
    stream = compressed(200, events, "text/event-stream")
    async with answering_claude([stream]) as (url, _), running_sidecar(claude_at(url)) as sidecar:
        status, answer = await post(sidecar.url, body(stream=True))
    assert status == 502
    assert answer["error"]["type"] == "api_error"
    assert "Content-Encoding 'gzip'" in answer["error"]["message"]


def redirected() -> web.StreamResponse:
    return web.Response(status=302, headers={"Location": "https://elsewhere.example/"})


@pytest.mark.parametrize(
    ("answer", "stream"),
    [
        (error(401), False),  # Claude refuses the sidecar's own key
        (redirected, False),  # a gateway's redirect: no answer of the API
        (compressed(200, b"event: ping\ndata: {}\n\n", "text/event-stream"), True),
    ],
    ids=["key_refused", "redirect", "compressed_stream"],
)
async def test_a_502_no_retry_can_change_tells_the_sdks_not_to_retry_it(
    answer: Callable[[], web.StreamResponse], stream: bool
) -> None:
    """The SDKs retry every 5xx unless `x-should-retry: false` says otherwise: a 502 the
    sidecar itself does not retry (its key refused, a status the API never sends, a
    compressed stream) says so, so an SDK's retries do not call Claude again for it."""
    async with (
        answering_claude([answer]) as (url, arrivals),
        running_sidecar(claude_at(url)) as sidecar,
        sdk(sidecar.url, max_retries=2) as client,
    ):
        with pytest.raises(anthropic.InternalServerError) as raised:
            await client.messages.create(
                model=MODEL, max_tokens=8, messages=user("x"), stream=stream
            )
    assert raised.value.status_code == 502
    assert raised.value.response.headers["x-should-retry"] == "false"
    assert len(arrivals) == 1  # neither the sidecar nor the SDK called Claude again


@pytest.mark.parametrize("path", ["/v1/messages", "/v1/messages/count_tokens", "/v1/models"])
@pytest.mark.parametrize(
    ("status", "page", "raised"),
    [
        (502, b"<html><body>502 Bad Gateway</body></html>", anthropic.InternalServerError),
        (503, b"", anthropic.InternalServerError),
        (429, b"Too Many Requests", anthropic.RateLimitError),
        (404, b'{"message": "no such route"}', anthropic.NotFoundError),
    ],
)
async def test_an_error_answer_that_is_no_api_error_reaches_the_client_as_one(
    path: str, status: int, page: bytes, raised: type[anthropic.APIStatusError]
) -> None:
    """A page from something in front of Claude (a load balancer, a gateway) is answered as
    Anthropic's error JSON for its status, its retry headers kept."""

    def gateway() -> web.StreamResponse:
        return web.Response(
            status=status, body=page, content_type="text/html",
            headers={"retry-after": "30", "x-should-retry": "false"},
        )  # fmt: skip

    method = "GET" if path == "/v1/models" else "POST"
    async with (
        answering_claude([gateway]) as (url, _),
        running_sidecar(claude_at(url)) as sidecar,
        aiohttp.ClientSession() as http,
        http.request(method, sidecar.url + path, json=body()) as response,
    ):
        assert response.status == status
        assert response.content_type == "application/json"
        answer = await response.json()
        assert response.headers["retry-after"] == "30"
        async with sdk(sidecar.url) as client:
            with pytest.raises(raised) as caught:
                await client.messages.create(model=MODEL, max_tokens=8, messages=user("x"))
    assert answer["type"] == "error"
    assert answer["error"]["type"] == caught.value.body["error"]["type"]  # type: ignore[index]
    assert answer["request_id"].startswith("req_")
    assert f"status {status}" in answer["error"]["message"]


@pytest.mark.parametrize(
    ("status", "page", "answered", "short"),
    [
        (502, b"<html><body>502 Bad Gateway</body></html>", 502, "upstream_error"),
        (429, b"Too Many Requests", 429, "rate_limited"),
        (404, b'{"message": "no such route"}', 404, "not_found"),
        (400, b'{"type": "error", "error": "a string"}', 400, "invalid_request"),
        (529, b"", 503, "overloaded"),
    ],
)
async def test_an_error_answer_that_is_no_api_error_is_the_prompt_routes_error_for_its_status(
    status: int, page: bytes, answered: int, short: str
) -> None:
    """As on the Anthropic route: a gateway's page is read as the error its status means,
    in the route's own shape, with a message saying so (it was `upstream_error` for every
    status, with an empty message when the page was JSON)."""

    def gateway() -> web.StreamResponse:
        return web.Response(status=status, body=page, content_type="text/html")

    async with (
        answering_claude([gateway]) as (url, _),
        running_sidecar(claude_at(url, max_retries=0)) as sidecar,
        aiohttp.ClientSession() as http,
        http.get(sidecar.url + "/api/stream-response", params={"prompt": "hi"}) as response,
    ):
        assert response.status == answered
        answer = await response.json()
    assert answer == {"error": {
        "type": short, "message": f"Claude answered with status {status} and no API error in its body",
    }}  # fmt: skip
