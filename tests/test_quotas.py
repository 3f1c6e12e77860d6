"""Quotas over real sockets: 429 shapes and headers, reservations, settlement on cancel,
Redis outages, two sidecar processes sharing one Redis, and the SDK backing off on its own."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import re
import time
from pathlib import Path
from typing import Any

import aiohttp
import anthropic
import jwt
import pytest
from aiohttp import web
from multidict import CIMultiDict

from sidecar.fake_claude import FakeServer
from sidecar.server import SidecarServer
from tests.support.images import png
from tests.support.metrics import counts
from tests.support.quotas import SettleSpy, spy_on
from tests.support.redis_server import RedisServer, running_redis
from tests.support.resume import Reply, cutting_proxy, sse_request
from tests.support.scripted_claude import Script, claude_config, messages_body, scripted_claude
from tests.support.sdk import sdk
from tests.support.sidecars import SidecarFactory, running_sidecar, sidecar_process
from tests.support.waiting import eventually, holds

MODEL = "claude-sonnet-5-5"
RFC3339 = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$")


def message(text: str = "hi", max_tokens: int = 32, stream: bool = False) -> dict[str, Any]:
    return {
        "model": MODEL,
        "max_tokens": max_tokens,
        "stream": stream,
        "messages": [{"role": "user", "content": text}],
    }


# --------------------------------------------------------------------------- shapes


async def test_prompt_route_429_has_its_error_shape_and_ratelimit_headers(
    sidecar_for: SidecarFactory,
) -> None:
    async with sidecar_for({"quotas": {"requests_per_minute": 2}}) as sidecar:
        url = sidecar.url + "/api/stream-response"
        async with aiohttp.ClientSession() as http:
            remaining = []
            for _ in range(2):
                async with http.post(url, json={"prompt": "hello"}) as response:
                    assert response.status == 200
                    await response.read()
                    assert response.headers["anthropic-ratelimit-requests-limit"] == "2"
                    assert RFC3339.match(response.headers["anthropic-ratelimit-requests-reset"])
                    remaining.append(response.headers["anthropic-ratelimit-requests-remaining"])
            async with http.post(url, json={"prompt": "hello"}) as response:
                assert response.status == 429
                body = await response.json()
                headers = response.headers
    assert remaining == ["1", "0"]
    assert body["error"]["type"] == "rate_limited"
    assert "2 requests per minute" in body["error"]["message"]
    assert 29 <= int(headers["retry-after"]) <= 30  # one request refills every 30 s
    assert 29_000 <= int(headers["retry-after-ms"]) <= 30_000
    assert headers["anthropic-ratelimit-requests-remaining"] == "0"
    assert "anthropic-ratelimit-tokens-limit" not in headers  # no token limit configured


async def test_a_refusal_names_the_client_ip_an_anonymous_caller_was_counted_by(
    sidecar_for: SidecarFactory,
) -> None:
    """`key: user` without a user counts the client IP: the 429 says so, not "per user"."""
    async with sidecar_for({"quotas": {"key": "user", "requests_per_minute": 1}}) as sidecar:
        url = sidecar.url + "/api/stream-response"
        async with aiohttp.ClientSession() as http:
            async with http.post(url, json={"prompt": "hello"}) as response:
                assert response.status == 200
                await response.read()
            async with http.post(url, json={"prompt": "hello"}) as response:
                assert response.status == 429
                message = (await response.json())["error"]["message"]
    assert "1 requests per minute per client IP" in message


async def test_anthropic_route_answers_rate_limit_error_and_the_sdk_raises_it(
    fake: FakeServer, sidecar_for: SidecarFactory
) -> None:
    async with sidecar_for({"quotas": {"requests_per_minute": 1}}) as sidecar:
        async with aiohttp.ClientSession() as http:
            async with http.post(sidecar.url + "/v1/messages", json=message()) as response:
                assert response.status == 200
            async with http.post(sidecar.url + "/v1/messages", json=message()) as response:
                assert response.status == 429
                body = await response.json()
        assert body["type"] == "error"
        assert body["error"]["type"] == "rate_limit_error"
        async with sdk(sidecar.url) as client:
            with pytest.raises(anthropic.RateLimitError) as caught:
                await client.messages.create(**message())
    assert caught.value.status_code == 429
    # As on Claude's own errors, the SDK finds the request id (in the `request-id` header).
    assert isinstance(caught.value.body, dict)
    request_id = caught.value.request_id
    assert request_id is not None
    assert request_id.startswith("req_")
    assert request_id == caught.value.body["request_id"]
    assert fake.state.stats()["requests"] == 1  # refusals never reach Claude


async def test_sdk_backs_off_on_retry_after_and_succeeds_after_the_refill(
    sidecar_for: SidecarFactory,
) -> None:
    # 60 requests per minute: one request refills every second, so the SDK's wait is short.
    async with sidecar_for({"quotas": {"requests_per_minute": 60}}) as sidecar:
        async with aiohttp.ClientSession() as http:

            async def call() -> int:
                async with http.post(sidecar.url + "/v1/messages", json=message()) as response:
                    return response.status

            statuses = await asyncio.gather(*(call() for _ in range(61)))
        assert statuses.count(429) >= 1
        async with sdk(sidecar.url) as client:
            with pytest.raises(anthropic.RateLimitError):
                await client.messages.create(**message())
        async with sdk(sidecar.url, max_retries=3) as client:
            raw = await client.messages.with_raw_response.create(**message())
    assert raw.http_response.status_code == 200
    assert raw.retries_taken >= 1
    assert raw.headers["anthropic-ratelimit-requests-limit"] == "60"


# --------------------------------------------------------------------------- tokens


async def test_tokens_are_reserved_before_the_call_and_settled_to_usage(
    fake: FakeServer, sidecar_for: SidecarFactory
) -> None:
    # (the prompt and ui routes' default max_tokens lowered: 1024 could never fit in 1000)
    data = {"quotas": {"tokens_per_minute": 1000}, "claude": {"max_tokens": 64}}
    async with sidecar_for(data) as sidecar:
        spy = spy_on(sidecar)
        async with aiohttp.ClientSession() as http:
            held = await http.post(
                sidecar.url + "/v1/messages",
                json=message("hold [[fake fault=stall]]", max_tokens=600, stream=True),
            )
            assert held.status == 200
            assert int(held.headers["anthropic-ratelimit-tokens-remaining"]) < 400
            before = fake.state.stats()["requests"]
            async with http.post(
                sidecar.url + "/v1/messages", json=message(max_tokens=600)
            ) as response:
                assert response.status == 429
                body = await response.json()
            assert fake.state.stats()["requests"] == before  # refused before calling Claude
            held.close()
            await spy.wait_settled(1)
            async with http.post(
                sidecar.url + "/v1/messages", json=message(max_tokens=600)
            ) as response:
                assert response.status == 200
                usage = (await response.json())["usage"]
                remaining = int(response.headers["anthropic-ratelimit-tokens-remaining"])
            await spy.wait_settled(2)
            async with http.post(
                sidecar.url + "/v1/messages", json=message(max_tokens=1001)
            ) as response:
                too_large = response.status, await response.json()
    assert "tokens_per_minute" not in body["error"]["message"]
    assert "token quota of 1000 per minute" in body["error"]["message"]
    assert remaining < 400  # the second call's reservation was taken
    reserved, used = spy.settled[-1]
    assert used == usage["input_tokens"] + usage["output_tokens"]
    assert used < reserved
    assert too_large[0] == 400
    assert too_large[1]["error"]["type"] == "invalid_request_error"


async def test_client_disconnect_mid_stream_charges_what_was_streamed_and_frees_the_slot(
    sidecar_for: SidecarFactory,
) -> None:
    quotas = {"tokens_per_minute": 100_000, "concurrent_streams": 1}
    async with sidecar_for({"quotas": quotas}) as sidecar:
        spy = spy_on(sidecar)
        body = message("long [[fake tokens=400 tps=200]]", max_tokens=500, stream=True)
        async with aiohttp.ClientSession() as http:
            response = await http.post(sidecar.url + "/v1/messages", json=body)
            assert response.status == 200
            deltas = 0
            async for line in response.content:
                deltas += line.startswith(b"event: content_block_delta")
                if deltas == 10:
                    break
            async with http.post(sidecar.url + "/v1/messages", json=body) as second:
                assert second.status == 429
                assert (await second.json())["error"]["type"] == "rate_limit_error"
                assert "concurrent streams" in (await second.json())["error"]["message"]
            response.close()  # the client goes away mid-stream
            await spy.wait_settled(1)
            async with http.post(sidecar.url + "/v1/messages", json=message()) as third:
                assert third.status == 200  # the slot came back
    reserved, used = spy.settled[0]
    assert used >= 10  # at least the deltas the client saw, plus input
    assert used < reserved  # not the whole max_tokens: the stream was cut short


@pytest.mark.parametrize(
    ("directive", "outcome_event"),
    [
        ("[[fake fault=midstream_error after=7]]", b"overloaded_error"),
        ("[[fake fault=stall]]", b"timeout_error"),  # ended by the idle timeout
    ],
)
async def test_streams_that_fail_midway_settle_what_they_used(
    sidecar_for: SidecarFactory, directive: str, outcome_event: bytes
) -> None:
    data = {"quotas": {"tokens_per_day": 100_000}, "claude": {"idle_timeout_seconds": 0.3}}
    async with sidecar_for(data) as sidecar:
        spy = spy_on(sidecar)
        body = message("text " * 40 + directive, max_tokens=900, stream=True)
        async with aiohttp.ClientSession() as http:
            async with http.post(sidecar.url + "/v1/messages", json=body) as response:
                assert response.status == 200
                raw = await response.read()
        await spy.wait_settled(1)
    assert outcome_event in raw
    start = raw.index(b"message_start")
    reported = re.search(rb'"input_tokens": ?(\d+)', raw[start:])
    assert reported is not None
    input_tokens = int(reported.group(1))
    deltas = raw.count(b"event: content_block_delta")
    reserved, used = spy.settled[0]
    assert input_tokens > 0
    assert used >= input_tokens + deltas  # what Claude reported, and every delta relayed
    assert used < reserved


@pytest.mark.parametrize("store", ["memory", "redis"])
@pytest.mark.parametrize("ending", ["shutdown", "cancel", "detached"])
async def test_a_stream_the_sidecar_ends_is_charged_once_what_it_relayed(
    fake: FakeServer, sidecar_for: SidecarFactory, store: str, ending: str
) -> None:
    """Shutdown past its grace, a `DELETE`, or a resumable stream left without a reader past
    its grace: the generation is settled once, at its input and each delta relayed."""
    async with contextlib.AsyncExitStack() as stack:
        quotas: dict[str, Any] = {"store": store, "tokens_per_day": 100_000}
        if store == "redis":
            quotas["redis_url"] = (await stack.enter_async_context(running_redis())).url
        grace = 0.3 if ending == "detached" else 30
        data = {"quotas": quotas, "resume": {"detach_grace_seconds": grace}}
        sidecar = await stack.enter_async_context(sidecar_for(data))
        spy = spy_on(sidecar)
        body = json.dumps(message("long [[fake tokens=400 tps=40]]", 500, stream=True)).encode()
        resumable = {"Sidecar-Resume": "on"}
        if ending == "detached":
            async with cutting_proxy(sidecar.port, after=6) as proxy:
                first = await sse_request(proxy.port, "POST", "/v1/messages", resumable, body)
            await spy.wait_settled(1)
            cursor = {"Last-Event-ID": f"{first.stream_id}:0"}  # every event it relayed
            reply = await sse_request(sidecar.port, "POST", "/v1/messages", cursor, body)
        else:
            reading = asyncio.create_task(
                sse_request(sidecar.port, "POST", "/v1/messages", resumable, body)
            )
            await eventually(lambda: holds(_deltas_sent(fake) >= 5))
            if ending == "cancel":
                (stream_id,) = sidecar.runtime.resume.hub.stream_ids()
                async with aiohttp.ClientSession() as http:
                    async with http.delete(f"{sidecar.url}/v1/messages/{stream_id}") as deleted:
                        assert deleted.status == 204
            else:
                await sidecar.shutdown(grace=0.1)
            reply = await reading
            await spy.wait_settled(1)
    input_tokens, deltas = _usage_relayed(reply)
    assert 5 <= deltas < 400  # ended mid-stream
    reserved = spy.settled[0][0]
    assert spy.settled == [(reserved, input_tokens + deltas)]


async def _read_then_leave(url: str, body: dict[str, Any], deltas: int) -> bytes:
    """POST a stream, read it up to its `deltas`-th content delta, then go away."""
    seen = b""
    async with aiohttp.ClientSession() as http:
        response = await http.post(url + "/v1/messages", json=body)
        assert response.status == 200
        assert response.headers["X-Cache"] == "HIT"
        async for line in response.content:
            seen += line
            if seen.count(b"event: content_block_delta") == deltas:
                break
        response.close()
    return seen


@pytest.mark.parametrize("store", ["memory", "redis"])
@pytest.mark.parametrize("hit", ["stored", "followed"])
async def test_a_charged_hit_the_client_leaves_is_charged_what_it_replayed(
    fake: FakeServer, sidecar_for: SidecarFactory, store: str, hit: str
) -> None:
    """`cache.charge_hits`: a replay (of a stored answer, or of a call in flight) that its
    client leaves mid-stream is charged as a live stream would be, its input and at least
    one output token per content delta replayed; a completed one, the recorded usage."""
    async with contextlib.AsyncExitStack() as stack:
        quotas: dict[str, Any] = {"store": store, "tokens_per_day": 100_000}
        if store == "redis":
            quotas["redis_url"] = (await stack.enter_async_context(running_redis())).url
        cache = {"enabled": True, "charge_hits": True, "replay": "paced"}
        sidecar = await stack.enter_async_context(sidecar_for({"quotas": quotas, "cache": cache}))
        body = {**message("long [[fake tokens=200 tps=100]]", 300, stream=True), "temperature": 0}
        async with aiohttp.ClientSession() as http:
            if hit == "stored":
                async with http.post(sidecar.url + "/v1/messages", json=body) as response:
                    assert response.headers["X-Cache"] == "MISS"
                    await response.read()
                assert sidecar.runtime.cache is not None
                await sidecar.runtime.cache.settled()
                spy = spy_on(sidecar)
                seen = await _read_then_leave(sidecar.url, body, 10)
                await spy.wait_settled(1)
                async with http.post(sidecar.url + "/v1/messages", json=body) as response:
                    assert response.headers["X-Cache"] == "HIT"
                    whole = await response.read()
                await spy.wait_settled(2)
                left, completed = spy.settled
            else:
                spy = spy_on(sidecar)
                leader = asyncio.create_task(
                    sse_request(sidecar.port, "POST", "/v1/messages", {}, json.dumps(body).encode())
                )
                recordings = sidecar.runtime.cache
                assert recordings is not None
                await eventually(lambda: holds(bool(recordings.inflight)))  # the leader's call
                seen = await _read_then_leave(sidecar.url, body, 10)
                whole = (await leader).payload
                await spy.wait_settled(2)
                left, completed = sorted(spy.settled, key=lambda settled: settled[1])
    reported = re.search(rb'"input_tokens": ?(\d+)', seen)
    assert reported is not None
    input_tokens = int(reported.group(1))
    output_tokens = int(re.findall(rb'"output_tokens": ?(\d+)', whole)[-1])
    assert output_tokens == 200
    assert input_tokens + 10 <= left[1] < input_tokens + output_tokens  # cut short, not `1`
    assert completed == (left[0], input_tokens + output_tokens)  # the recorded usage


def _deltas_sent(fake: FakeServer) -> int:
    return sum(r.events.count("content_block_delta") for r in fake.state.streams.values())


def _usage_relayed(reply: Reply) -> tuple[int, int]:
    """The input tokens `message_start` reported and the content deltas a reply holds."""
    start = reply.payload.index(b"message_start")
    reported = re.search(rb'"input_tokens": ?(\d+)', reply.payload[start:])
    assert reported is not None
    return int(reported.group(1)), reply.payload.count(b"event: content_block_delta")


# --------------------------------------------------------------------------- keys


async def test_client_ip_comes_from_x_forwarded_for_only_behind_a_trusted_proxy(
    sidecar_for: SidecarFactory,
) -> None:
    data = {"quotas": {"key": "client_ip", "requests_per_minute": 1}}

    async def statuses(sidecar: SidecarServer) -> list[int]:
        out = []
        async with aiohttp.ClientSession() as http:
            for ip in ("203.0.113.1", "203.0.113.2"):
                headers = {"X-Forwarded-For": ip}
                async with http.post(
                    sidecar.url + "/v1/messages", json=message(), headers=headers
                ) as response:
                    out.append(response.status)
        return out

    async with sidecar_for({**data, "server": {"trusted_proxies": ["127.0.0.0/8"]}}) as trusted:
        assert await statuses(trusted) == [200, 200]  # two clients behind the proxy
    async with sidecar_for(data) as untrusted:
        assert await statuses(untrusted) == [200, 429]  # one peer, whatever it claims


async def test_a_proxy_that_adds_its_own_forwarded_for_line_is_believed_not_the_client(
    sidecar_for: SidecarFactory,
) -> None:
    """Repeated X-Forwarded-For lines are one list (RFC 9110): a proxy that adds a line
    of its own (rather than extending the client's) names the client, whatever address
    the client's own line claims."""
    data = {
        "quotas": {"key": "client_ip", "requests_per_minute": 1},
        "server": {"trusted_proxies": ["127.0.0.0/8"]},
    }
    async with sidecar_for(data) as sidecar, aiohttp.ClientSession() as http:
        out = []
        for claimed in ("198.51.100.1", "198.51.100.2", "198.51.100.3"):
            headers = CIMultiDict(
                [("X-Forwarded-For", claimed), ("X-Forwarded-For", "203.0.113.9")]
            )
            async with http.post(
                sidecar.url + "/v1/messages", json=message(), headers=headers
            ) as response:
                out.append(response.status)
    assert out == [200, 429, 429]  # one client, 203.0.113.9, however its own line varies


async def test_a_forwarded_hop_of_bytes_that_are_no_utf8_is_a_client_of_its_own(
    sidecar_for: SidecarFactory,
) -> None:
    """A trusted proxy passes on a hop of raw bytes that are no UTF-8: it is one client,
    counted, and its resumable stream and cached answer are keyed by it (not a 500)."""
    data = {
        "quotas": {"key": "client_ip", "requests_per_minute": 2},
        "server": {"trusted_proxies": ["127.0.0.0/8"]},
        "cache": {"enabled": True, "scope": "user"},
    }
    async with sidecar_for(data) as sidecar:
        heads = []
        for _ in range(4):
            reader, writer = await asyncio.open_connection("127.0.0.1", sidecar.port)
            writer.write(
                b"GET /api/stream-response?prompt=hi HTTP/1.1\r\nHost: x\r\n"
                b"X-Forwarded-For: \xff\xfe\r\nConnection: close\r\n\r\n"
            )
            heads.append((await asyncio.wait_for(reader.read(), 10)).split(b"\r\n", 1)[0])
            writer.close()
    assert heads == [b"HTTP/1.1 200 OK"] * 2 + [b"HTTP/1.1 429 Too Many Requests"] * 2


async def test_a_forwarded_hop_with_a_port_or_another_spelling_is_one_client(
    sidecar_for: SidecarFactory,
) -> None:
    """A load balancer that writes the client's source port (`ip:port`, `[v6]:port`) names
    one client per address, not per connection: each spelling spends one quota."""
    data = {
        "quotas": {"key": "client_ip", "requests_per_minute": 1},
        "server": {"trusted_proxies": ["127.0.0.0/8"]},
    }
    spellings = {
        "v4": ("198.51.100.7:50001", "198.51.100.7:50002", "[::ffff:198.51.100.7]:50003"),
        "v6": ("[2001:db8::7]:50001", "[2001:db8:0::7]:50002", "2001:DB8::7"),
    }
    async with sidecar_for(data) as sidecar, aiohttp.ClientSession() as http:
        for hops in spellings.values():
            out = []
            for hop in hops:
                headers = {"X-Forwarded-For": hop}
                async with http.post(
                    sidecar.url + "/v1/messages", json=message(), headers=headers
                ) as response:
                    out.append(response.status)
            assert out == [200, 429, 429], hops


@pytest.mark.parametrize("store", ["memory", "redis"])
async def test_an_ipv6_client_rotating_addresses_in_its_64_is_one_client(
    sidecar_for: SidecarFactory, store: str
) -> None:
    """A client given a /64 (the usual IPv6 allocation) may send from any address in it:
    per-IP limits count the /64 (`quotas.ipv6_prefix_length`), on either store; a route
    counting exact addresses sets 128. IPv4 clients are counted by address."""
    async with contextlib.AsyncExitStack() as stack:
        quotas: dict[str, Any] = {"store": store, "key": "client_ip", "requests_per_minute": 2}
        if store == "redis":
            quotas["redis_url"] = (await stack.enter_async_context(running_redis())).url
        exact = {"path": "/exact/", "handler": "anthropic", "quotas": {"ipv6_prefix_length": 128}}
        data = {"quotas": quotas, "server": {"trusted_proxies": ["127.0.0.0/8"]},
                "routes": [exact, {"path": "/", "handler": "anthropic"}]}  # fmt: skip
        sidecar = await stack.enter_async_context(sidecar_for(data))
        http = await stack.enter_async_context(aiohttp.ClientSession())

        async def statuses(prefix: str, hops: tuple[str, ...]) -> list[int]:
            out = []
            for hop in hops:
                async with http.post(
                    f"{sidecar.url}{prefix}v1/messages",
                    json=message(),
                    headers={"X-Forwarded-For": hop},
                ) as response:
                    out.append(response.status)
            return out

        rotating = ("2001:db8:1:2::1", "2001:db8:1:2:aaaa::2", "2001:db8:1:2:ffff::3")
        assert await statuses("/", rotating) == [200, 200, 429]
        assert await statuses("/", ("2001:db8:1:3::1",)) == [200]  # the next /64
        assert await statuses("/exact/", rotating) == [200, 200, 200]
        v4 = ("198.51.100.1", "198.51.100.2", "198.51.100.3")
        assert await statuses("/", v4) == [200, 200, 200]


async def test_each_api_key_user_has_its_own_quota(sidecar_for: SidecarFactory) -> None:
    keys = {name: f"key-{name}-0123456789" for name in ("a", "b")}
    auth = {
        "mode": "required",
        "api_keys": [
            {"name": n, "sha256": hashlib.sha256(k.encode()).hexdigest(), "user": f"user-{n}"}
            for n, k in keys.items()
        ],
    }
    async with sidecar_for({"auth": auth, "quotas": {"requests_per_minute": 1}}) as sidecar:
        seen = []
        async with aiohttp.ClientSession() as http:
            for name in ("a", "b", "a"):
                async with http.post(
                    sidecar.url + "/v1/messages", json=message(), headers={"x-api-key": keys[name]}
                ) as response:
                    seen.append(response.status)
    assert seen == [200, 200, 429]


async def test_one_user_name_in_two_tenants_is_counted_twice(sidecar_for: SidecarFactory) -> None:
    """`quotas.key: user` counts a user within its tenant: `alice` of one tenant spending
    her quota leaves `alice` of another tenant (a token or an API key) and `alice` with no
    tenant theirs, while a key and a token of one tenant's `alice` share one."""
    secret = "s" * 32

    def token(tenant: str | None) -> dict[str, str]:
        claims: dict[str, Any] = {"sub": "alice", "exp": int(time.time()) + 600}
        if tenant is not None:
            claims["org"] = tenant
        return {"Authorization": "Bearer " + jwt.encode(claims, secret, algorithm="HS256")}

    keys = {"t1": "key-t1-0123456789", "t2": "key-t2-0123456789"}
    auth = {
        "mode": "required",
        "jwt": {"secret": secret, "tenant_claim": "org"},
        "api_keys": [
            {"name": f"k-{t}", "sha256": hashlib.sha256(k.encode()).hexdigest(),
             "user": "alice", "tenant": t}
            for t, k in keys.items()
        ],
    }  # fmt: skip
    callers = [
        token("t1"), token("t1"), token("t2"), {"x-api-key": keys["t2"]}, token(None),
        {"x-api-key": keys["t1"]},
    ]  # fmt: skip
    async with sidecar_for({"auth": auth, "quotas": {"requests_per_minute": 2}}) as sidecar:
        seen = []
        async with aiohttp.ClientSession() as http:
            for headers in callers:
                async with http.post(
                    sidecar.url + "/v1/messages", json=message(), headers=headers
                ) as response:
                    seen.append(response.status)
    assert seen == [200, 200, 200, 200, 200, 429]


async def test_app_routes_count_requests_per_minute(sidecar_for: SidecarFactory) -> None:
    async def hello(request: web.Request) -> web.Response:
        return web.Response(text="hello")

    app = web.Application()
    app.router.add_get("/{tail:.*}", hello)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        data = {
            "app": {"url": f"http://127.0.0.1:{port}"},
            "quotas": {"requests_per_minute": 2, "tokens_per_minute": 5},
            "routes": [{"path": "/", "handler": "app"}],  # no call could fit in 5 tokens
        }
        async with sidecar_for(data) as sidecar, aiohttp.ClientSession() as http:
            results = []
            for _ in range(3):
                async with http.get(sidecar.url + "/page") as response:
                    results.append((response.status, response.headers.copy()))
    finally:
        await runner.cleanup()
    assert [status for status, _ in results] == [200, 200, 429]
    assert results[0][1]["anthropic-ratelimit-requests-remaining"] == "1"
    assert "anthropic-ratelimit-tokens-limit" not in results[0][1]  # no tokens on app routes
    assert int(results[2][1]["retry-after"]) >= 29


async def test_count_tokens_counts_requests_per_minute_only(
    fake: FakeServer, sidecar_for: SidecarFactory
) -> None:
    body = {"model": MODEL, "messages": [{"role": "user", "content": "four"}]}
    quotas = {"requests_per_minute": 2, "tokens_per_minute": 5000}
    data = {"quotas": quotas, "claude": {"max_tokens": 64}}
    async with sidecar_for(data) as sidecar, aiohttp.ClientSession() as http:
        statuses, remaining = [], []
        for _ in range(3):
            async with http.post(sidecar.url + "/v1/messages/count_tokens", json=body) as r:
                statuses.append(r.status)
                remaining.append(r.headers.get("anthropic-ratelimit-requests-remaining"))
                if r.status == 429:
                    assert (await r.json())["error"]["type"] == "rate_limit_error"
    assert statuses == [200, 200, 429]
    assert remaining[:2] == ["1", "0"]
    assert sum(1 for request in fake.state.requests if "count_tokens" in request["path"]) == 2


@pytest.mark.parametrize("store", ["memory", "redis"])
async def test_a_max_tokens_no_int64_holds_is_a_400_on_every_claude_route(
    sidecar_for: SidecarFactory, redis_server: RedisServer, store: str
) -> None:
    """A `max_tokens` of thousands of digits (more than Python writes as text) is refused as
    a bad field, not a 500 where the reservation is named or sent to Redis; the largest one
    taken, 2**63 - 1, is the quota's 400 for a call larger than the limit."""
    quotas = {"store": store, "redis_url": redis_server.url, "tokens_per_minute": 5000}
    async with sidecar_for({"quotas": quotas}) as sidecar, aiohttp.ClientSession() as http:
        for max_tokens, error in ((int("9" * 4300), "positive integer"),
                                  (2**63, "positive integer"),
                                  (2**63 - 1, "lower max_tokens")):  # fmt: skip
            url = sidecar.url + "/v1/messages"
            async with http.post(url, json=message(max_tokens=max_tokens)) as response:
                assert response.status == 400
                body = await response.json()
                assert error in body["error"]["message"]
            url = sidecar.url + "/api/stream-response"
            async with http.post(url, json={"prompt": "x", "max_tokens": max_tokens}) as response:
                assert response.status == 400
                assert error in (await response.json())["error"]["message"]


# --------------------------------------------------------------------------- redis


@pytest.mark.parametrize("mode", ["fail_closed", "fail_open"])
async def test_redis_outage_follows_the_configured_mode_then_recovers(
    sidecar_for: SidecarFactory, redis_server: RedisServer, mode: str
) -> None:
    quotas = {
        "store": "redis", "redis_url": redis_server.url, "on_store_error": mode,
        "requests_per_minute": 100, "redis_timeout_seconds": 0.5,
    }  # fmt: skip
    async with sidecar_for({"quotas": quotas}) as sidecar, aiohttp.ClientSession() as http:

        async def call() -> tuple[int, dict[str, Any], Any]:
            async with http.post(sidecar.url + "/v1/messages", json=message()) as response:
                return response.status, dict(response.headers), await response.json()

        async def ready() -> int:
            async with http.get(sidecar.admin_url + "/readyz") as response:
                return response.status

        status, headers, _ = await call()
        assert (status, headers["anthropic-ratelimit-requests-remaining"]) == (200, "99")
        await redis_server.kill()
        status, headers, body = await call()
        if mode == "fail_closed":
            assert status == 503
            assert body["error"]["type"] == "api_error"
            assert "quota store" in body["error"]["message"]
            assert await ready() == 503  # readiness reports the store it needs
        else:
            assert status == 200  # served without quota headers
            assert "anthropic-ratelimit-requests-remaining" not in headers
            assert await ready() == 200
        async with http.get(sidecar.admin_url + "/metrics") as response:
            metrics = await response.text()
        assert re.search(
            rf'sidecar_quota_store_errors_total\{{[^}}]*on_store_error="{mode}"[^}}]*\}} [1-9]',
            metrics,
        ), metrics
        await redis_server.start()  # same port, empty: counters start afresh
        status, headers, _ = await call()
        assert (status, headers["anthropic-ratelimit-requests-remaining"]) == (200, "99")
        assert await ready() == 200


async def test_two_sidecar_processes_sharing_redis_enforce_one_combined_limit(
    fake: FakeServer, redis_server: RedisServer, tmp_path: Path
) -> None:
    limit = 40
    config = {
        "claude": {"base_url": fake.url, "api_key": "sk-sidecar", "max_retries": 0},
        "auth": {"mode": "none"},
        "telemetry": {"access_log": False},
        "quotas": {
            "store": "redis",
            "redis_url": redis_server.url,
            "requests_per_minute": limit,
            "tokens_per_day": 10_000_000,
        },
    }
    async with (
        sidecar_process(config, tmp_path) as first,
        sidecar_process(config, tmp_path) as second,
        aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as http,
    ):
        start = asyncio.Event()

        async def client(url: str) -> int:
            await start.wait()
            async with http.post(url + "/v1/messages", json=message()) as response:
                await response.read()
                return response.status

        urls = (first.url, second.url)
        tasks = [asyncio.create_task(client(urls[i % 2])) for i in range(120)]
        began = time.monotonic()
        start.set()
        statuses = await asyncio.gather(*tasks)
        elapsed = time.monotonic() - began
    admitted = statuses.count(200)
    refill = elapsed * limit / 60  # the bucket keeps refilling while the burst runs
    assert statuses.count(200) + statuses.count(429) == 120
    assert limit <= admitted <= limit + 1 + refill
    assert fake.state.stats()["requests"] == admitted


async def test_two_replicas_admit_exactly_the_concurrent_streams_limit_and_count_the_rest(
    fake: FakeServer, redis_server: RedisServer, tmp_path: Path
) -> None:
    """20 streams at once, split across two processes, against `concurrent_streams: 5`:
    slots do not refill with time, so exactly 5 are admitted (one limit, not one per
    replica), Claude is called 5 times, and each replica counts the refusals it sent."""
    config = {
        "claude": {"base_url": fake.url, "api_key": "sk-sidecar", "idle_timeout_seconds": 30},
        "auth": {"mode": "none"},
        "telemetry": {"access_log": False},
        "quotas": {"store": "redis", "redis_url": redis_server.url, "concurrent_streams": 5},
    }
    held: list[aiohttp.ClientResponse] = []
    async with (
        sidecar_process(config, tmp_path) as first,
        sidecar_process(config, tmp_path) as second,
        aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as http,
    ):
        start = asyncio.Event()

        async def client(url: str) -> int:
            await start.wait()
            stalled = message("hold [[fake fault=stall]]", stream=True)
            response = await http.post(url + "/v1/messages", json=stalled)
            held.append(response)  # an admitted stream stays open, holding its slot
            return response.status

        urls = (first.url, second.url)
        tasks = [asyncio.create_task(client(urls[i % 2])) for i in range(20)]
        start.set()
        statuses = await asyncio.gather(*tasks)
        refused = [response for response in held if response.status == 429]
        bodies = [await response.json() for response in refused]
        rejections = 0.0
        for replica in (first, second):
            async with http.get(replica.admin_url + "/metrics") as response:
                scrape = await response.text()
            rejections += counts(scrape, "sidecar_rejections", "sidecar_rejection_reason").get(
                "quota_concurrency", 0.0
            )
        for response in held:
            response.close()
    assert (statuses.count(200), statuses.count(429)) == (5, 15)
    assert fake.state.stats()["requests"] == 5
    assert {body["error"]["type"] for body in bodies} == {"rate_limit_error"}
    assert {response.headers["retry-after"] for response in refused} == {"1"}
    assert rejections == 15


async def test_a_live_stream_keeps_its_slot_and_a_killed_replica_loses_it(
    fake: FakeServer, redis_server: RedisServer, tmp_path: Path
) -> None:
    lease = 0.6  # renewed every 0.2 s while the stream lives
    config = {
        "claude": {"base_url": fake.url, "api_key": "sk-sidecar", "idle_timeout_seconds": 30},
        "auth": {"mode": "none"},
        "quotas": {
            "store": "redis", "redis_url": redis_server.url,
            "concurrent_streams": 1, "lease_seconds": lease,
        },
    }  # fmt: skip
    stalled = message("hold [[fake fault=stall]]", stream=True)
    async with (
        sidecar_process(config, tmp_path) as doomed,
        sidecar_process(config, tmp_path) as survivor,
        aiohttp.ClientSession() as http,
    ):
        held = await http.post(doomed.url + "/v1/messages", json=stalled)
        assert held.status == 200
        await asyncio.sleep(lease * 3)  # three lease lifetimes: only renewal keeps the slot
        async with http.post(survivor.url + "/v1/messages", json=message()) as response:
            assert response.status == 429
            assert "concurrent streams" in (await response.json())["error"]["message"]
        doomed.process.kill()  # no settlement, no renewal: only the lease's expiry frees the slot
        await asyncio.to_thread(doomed.process.wait)
        held.close()
        await asyncio.sleep(lease + 0.1)
        async with http.post(survivor.url + "/v1/messages", json=message()) as response:
            assert response.status == 200


LEASE = 0.2  # seconds: the stream below outlives several of these


async def test_a_long_stream_keeps_its_slot_on_the_memory_store(
    sidecar_for: SidecarFactory,
) -> None:
    quotas = {"quotas": {"store": "memory", "concurrent_streams": 1, "lease_seconds": LEASE}}
    async with sidecar_for(quotas) as sidecar, aiohttp.ClientSession() as http:
        held = await http.post(
            sidecar.url + "/v1/messages", json=message("hold [[fake fault=stall]]", stream=True)
        )
        assert held.status == 200
        # Lease expiry is a matter of time passing: nothing to await but the clock. Nothing
        # renews a memory-store lease, so only the call's end may free the slot.
        await asyncio.sleep(LEASE * 3)
        async with http.post(
            sidecar.url + "/v1/messages", json=message("second", stream=True)
        ) as refused:
            status = refused.status
            raw = await refused.read() if status != 200 else b"{}"
        held.close()
    assert status == 429
    body = json.loads(raw)
    assert body["error"]["type"] == "rate_limit_error"
    assert "concurrent streams" in body["error"]["message"]


# --------------------------------------------------------------------------- unanswered calls


@pytest.mark.parametrize("store", ["memory", "redis"])
@pytest.mark.parametrize("stream", [False, True])
async def test_a_client_that_leaves_before_claude_answers_is_charged_the_input(
    fake: FakeServer, sidecar_for: SidecarFactory, store: str, stream: bool
) -> None:
    # The request was written to Claude, which works on it (and bills its input) though
    # the client that asked is gone: the input estimate is charged, the rest given back.
    async with contextlib.AsyncExitStack() as stack:
        store_config: dict[str, Any] = {"store": store}
        if store == "redis":
            store_config["redis_url"] = (await stack.enter_async_context(running_redis())).url
        await _leave_before_the_answer(fake, sidecar_for, store_config, stream)


async def _leave_before_the_answer(
    fake: FakeServer, sidecar_for: SidecarFactory, store_config: dict[str, Any], stream: bool
) -> None:
    limit, max_tokens = 100_000, 500
    quotas = {**store_config, "tokens_per_day": limit, "concurrent_streams": 1}
    started = time.monotonic()
    async with sidecar_for({"quotas": quotas}) as sidecar, aiohttp.ClientSession() as http:
        spy = spy_on(sidecar)
        slow = message(
            "hello " * 30 + "[[fake fault=slow_headers delay_ms=30000]]", max_tokens, stream
        )
        leaving = asyncio.create_task(http.post(sidecar.url + "/v1/messages", json=slow))
        await fake.state.wait_for(lambda state: state.counters["requests"] == 1)
        leaving.cancel()  # the client goes away while Claude works on its request
        with pytest.raises(asyncio.CancelledError):
            await leaving
        await spy.wait_settled(1)
        async with http.post(
            sidecar.url + "/v1/messages", json=message(max_tokens=50, stream=stream)
        ) as after:
            assert after.status == 200  # its stream slot came back
            remaining = int(after.headers["anthropic-ratelimit-tokens-remaining"])
            await after.read()
        await spy.wait_settled(2)
    reserved, used = spy.settled[0]
    assert used == reserved - max_tokens > 0  # the input estimate, no output
    second_reserved = spy.settled[1][0]
    refilled = (time.monotonic() - started) * limit / 86_400 + 1
    # The bucket holds the charge of the first call and the reservation of the second.
    assert limit - used - second_reserved <= remaining <= limit - used - second_reserved + refilled


async def test_a_message_whose_answer_comes_too_late_is_charged_the_input(
    sidecar_for: SidecarFactory,
) -> None:
    data = {"quotas": {"tokens_per_day": 100_000}, "claude": {"request_timeout_seconds": 0.3}}
    async with sidecar_for(data) as sidecar, aiohttp.ClientSession() as http:
        spy = spy_on(sidecar)
        slow = message("late [[fake fault=slow_headers delay_ms=30000]]", max_tokens=300)
        async with http.post(sidecar.url + "/v1/messages", json=slow) as response:
            assert response.status == 504
        await spy.wait_settled(1)
    reserved, used = spy.settled[0]
    assert used == reserved - 300 > 0  # Claude got it and may be billing it


async def test_a_client_that_leaves_while_a_429_is_retried_is_charged_nothing(
    fake: FakeServer, sidecar_for: SidecarFactory
) -> None:
    # Claude answered the only attempt written with a 429: it billed nothing.
    async with sidecar_for({"quotas": {"tokens_per_day": 100_000}}) as sidecar:
        spy = spy_on(sidecar)
        retried = asyncio.Event()
        sidecar.runtime.claude._on_retry = lambda reason: retried.set()
        limited = message("busy [[fake fault=rate_limit retry_after=5]]", max_tokens=300)
        async with aiohttp.ClientSession() as http:
            leaving = asyncio.create_task(http.post(sidecar.url + "/v1/messages", json=limited))
            async with asyncio.timeout(10):
                await retried.wait()  # answered 429; now waiting to retry
            leaving.cancel()
            with pytest.raises(asyncio.CancelledError):
                await leaving
            await spy.wait_settled(1)
    assert fake.state.counters["requests"] == 1
    assert spy.settled[0][1] == 0


@pytest.mark.parametrize(
    ("path", "body", "status"),
    [("/v1/messages", message("late [[fake fault=slow_headers delay_ms=30000]]"), 504),
     ("/v1/messages", message("key [[fake fault=auth]]", stream=True), 502),
     ("/v1/messages", message("cut [[fake fault=drop]]"), 502),
     ("/api/stream-response", {"prompt": "key [[fake fault=auth]]"}, 502),
     ("/api/stream-response", {"prompt": "late [[fake fault=slow_headers delay_ms=30000]]"},
      504)],
)  # fmt: skip
async def test_errors_after_admission_carry_the_ratelimit_headers(
    sidecar_for: SidecarFactory, path: str, body: dict[str, Any], status: int
) -> None:
    # Admitted, then failed on the sidecar's side of Claude (timeout, refused key, lost
    # connection): the request was counted, and the answer says so like every other.
    quotas = {"requests_per_minute": 10, "tokens_per_day": 100_000}
    timeouts = {"request_timeout_seconds": 0.3, "idle_timeout_seconds": 0.3}
    async with sidecar_for({"quotas": quotas, "claude": timeouts}) as sidecar:
        async with aiohttp.ClientSession() as http:
            async with http.post(sidecar.url + path, json=body) as response:
                assert response.status == status
                headers = response.headers
                await response.read()
    assert headers["anthropic-ratelimit-requests-limit"] == "10"
    assert headers["anthropic-ratelimit-requests-remaining"] == "9"
    assert headers["anthropic-ratelimit-tokens-limit"] == "100000"
    assert int(headers["anthropic-ratelimit-tokens-remaining"]) < 100_000  # its reservation


async def test_every_answer_of_a_route_with_quotas_tells_the_requests_and_tokens_limits(
    fake: FakeServer, sidecar_for: SidecarFactory
) -> None:
    """Forwarded calls (Claude's answer or its error), cache hits, resumes (a replay, a 204
    with nothing left, the 404 of an unknown stream): each is a request that spends no
    tokens, and each tells the token buckets as they stand, what the calls before spent."""
    quotas = {"requests_per_minute": 1000, "tokens_per_day": 100_000}
    async with sidecar_for({"quotas": quotas, "cache": {"enabled": True}}) as sidecar:
        spy = spy_on(sidecar)
        port = sidecar.port
        body = json.dumps({**message("spend", stream=True), "temperature": 0}).encode()
        call = await sse_request(port, "POST", "/v1/messages", {}, body)
        prompt = await sse_request(port, "POST", "/api/stream-response", {}, b'{"prompt": "hi"}')
        await spy.wait_settled(2)
        spent = sum(used for _, used in spy.settled)
        last = prompt.last_id
        count = json.dumps({"model": MODEL, "messages": [{"role": "user", "content": "x"}]})
        answers = {
            "hit": await sse_request(port, "POST", "/v1/messages", {}, body),
            "count_tokens": await sse_request(
                port, "POST", "/v1/messages/count_tokens", {}, count.encode()
            ),
            "models": await sse_request(port, "GET", "/v1/models"),
            "claude's 404": await sse_request(port, "GET", "/v1/models/claude-unknown-0"),
            "resume": await sse_request(
                port, "GET", "/api/stream-response", {"Last-Event-ID": f"{prompt.stream_id}:1"}
            ),
            "resume 204": await sse_request(
                port, "GET", "/api/stream-response", {"Last-Event-ID": last}
            ),
            "resume 404": await sse_request(
                port, "POST", "/v1/messages", {"Last-Event-ID": "s" * 24 + ":3"}, body
            ),
        }
    assert call.status == prompt.status == 200
    assert spent > 0
    statuses = {name: reply.status for name, reply in answers.items()}
    assert statuses == {
        "hit": 200, "count_tokens": 200, "models": 200, "claude's 404": 404, "resume": 200,
        "resume 204": 204, "resume 404": 404,
    }  # fmt: skip
    assert answers["hit"].headers["x-cache"] == "HIT"
    for name, reply in answers.items():
        headers = reply.headers
        assert headers.get("anthropic-ratelimit-requests-limit") == "1000", name
        assert RFC3339.match(headers["anthropic-ratelimit-requests-reset"]), name
        assert headers.get("anthropic-ratelimit-tokens-limit") == "100000", name
        assert RFC3339.match(headers["anthropic-ratelimit-tokens-reset"]), name
        left = int(headers["anthropic-ratelimit-tokens-remaining"])
        assert 100_000 - spent <= left <= 100_000 - spent + 30, name  # a day refills ~1/s


async def _cut_message(writer: asyncio.StreamWriter) -> None:
    """Claude's head for a whole message, then half of its body, then the connection goes."""
    writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n"
                 b"content-length: 200\r\n\r\n" + b'{"id": "msg_1", "type": "mess')  # fmt: skip
    await writer.drain()
    writer.close()


async def _cut_error(writer: asyncio.StreamWriter) -> None:
    """A 400 whose body breaks off."""
    writer.write(b"HTTP/1.1 400 Bad Request\r\ncontent-type: application/json\r\n"
                 b"content-length: 200\r\n\r\n" + b'{"type": "error", "er')  # fmt: skip
    await writer.drain()
    writer.close()


@pytest.mark.parametrize("script", [_cut_message, _cut_error])
async def test_an_answer_cut_after_its_head_carries_the_ratelimit_headers(
    script: Script,
) -> None:
    quotas = {"quotas": {"requests_per_minute": 10, "tokens_per_day": 100_000}}
    async with (
        scripted_claude(script) as url,
        running_sidecar({**claude_config(url), **quotas}) as sidecar,
        aiohttp.ClientSession() as http,
        http.post(sidecar.url + "/v1/messages", json=messages_body(stream=False)) as response,
    ):
        status, headers = response.status, response.headers
        await response.read()
    assert status == 502
    assert headers["anthropic-ratelimit-requests-remaining"] == "9"
    assert int(headers["anthropic-ratelimit-tokens-remaining"]) < 100_000


# --------------------------------------------------------------------------- input estimate

IMAGE_URL = {"type": "image", "source": {"type": "url", "url": "https://example.com/a.png"}}
PDF_URL = {"type": "document", "source": {"type": "url", "url": "https://example.com/a.pdf"}}
TOOLS = [{"name": "lookup", "description": "d", "input_schema": {"type": "object"}}]


async def _reserved_and_used(
    sidecar: SidecarServer, spy: SettleSpy, path: str, body: dict[str, Any]
) -> tuple[int, int]:
    """(tokens reserved, tokens settled) of one call, the answer read to its end."""
    settled = len(spy.settled)
    async with aiohttp.ClientSession() as http, http.post(sidecar.url + path, json=body) as answer:
        assert answer.status == 200, await answer.text()
        await answer.read()
    await spy.wait_settled(settled + 1)
    return spy.settled[-1]


async def test_media_claude_fetches_and_the_tool_prompt_are_reserved_on_every_route(
    sidecar_for: SidecarFactory,
) -> None:
    """An image or document by URL has no bytes in the request, and tools bring Claude's
    tool-use system prompt: each is reserved by its figure (in a message or a tool result,
    on the anthropic, prompt and ui routes) and the call is still settled to its usage."""
    media = 4784 + 30000  # quotas.image_tokens + quotas.remote_document_tokens
    async with sidecar_for(
        {"ui": {"tools": TOOLS}, "quotas": {"tokens_per_day": 10**7}}
    ) as sidecar:
        spy = spy_on(sidecar)
        plain = {**message(max_tokens=64), "messages": [
            {"role": "assistant", "content": [{"type": "tool_use", "id": "t1", "name": "lookup", "input": {}}]},
            {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "t1", "content": "x"},
                                         {"type": "text", "text": "hi"}]}]}  # fmt: skip
        with_media = json.loads(json.dumps(plain))
        with_media["messages"][1]["content"][0]["content"] = [IMAGE_URL]  # in a tool result
        with_media["messages"][1]["content"].insert(1, PDF_URL)
        base = await _reserved_and_used(sidecar, spy, "/v1/messages", plain)
        fetched = await _reserved_and_used(sidecar, spy, "/v1/messages", with_media)
        tools = await _reserved_and_used(sidecar, spy, "/v1/messages", {**plain, "tools": TOOLS})

        history = [
            {"role": "user", "content": [IMAGE_URL, PDF_URL]},
            {"role": "assistant", "content": "ok"},
        ]
        prompt = {"prompt": "hi", "max_tokens": 64}
        prompt_base = await _reserved_and_used(sidecar, spy, "/api/stream-response", prompt)
        prompt_fetched = await _reserved_and_used(
            sidecar, spy, "/api/stream-response", {**prompt, "messages": history}
        )

        def turn(*parts: dict[str, Any]) -> dict[str, Any]:
            return {"id": "c1", "messages": [{"id": "u1", "role": "user", "parts": [
                {"type": "text", "text": "hi"}, *parts]}]}  # fmt: skip

        image_part = {"type": "file", "mediaType": "image/png", "url": "https://example.com/a.png"}
        pdf_part = {
            "type": "file",
            "mediaType": "application/pdf",
            "url": "https://example.com/a.pdf",
        }
        ui_base = await _reserved_and_used(sidecar, spy, "/api/chat", turn())
        ui_fetched = await _reserved_and_used(sidecar, spy, "/api/chat", turn(image_part, pdf_part))
    # The URLs' own text is read too: a few tokens more than the figures.
    assert media <= fetched[0] - base[0] <= media + 20
    assert 530 < tools[0] - base[0] <= 530 + 20  # the tool-use system prompt and the tools
    assert media <= prompt_fetched[0] - prompt_base[0] <= media + 20
    assert media <= ui_fetched[0] - ui_base[0] <= media + 20
    assert ui_base[0] > 64 + 530  # the ui route's tools bring the tool-use system prompt
    for reserved, used in (base, tools):
        assert used < reserved  # settled to Claude's usage, not held at the reservation
    for reserved, used in (fetched, prompt_fetched, ui_fetched):
        assert used < reserved - media


async def test_a_head_never_calls_claude_nor_spends_quota_on_any_claude_route(
    fake: FakeServer, sidecar_for: SidecarFactory
) -> None:
    """A HEAD of a new prompt is answered from the checks before the quota step (never a
    429, never a call); the ui and anthropic routes take no HEAD of a call (405)."""
    limits = {"requests_per_minute": 1, "tokens_per_minute": 2000}
    async with sidecar_for({"quotas": limits}) as sidecar, aiohttp.ClientSession() as http:
        prompt = sidecar.url + "/api/stream-response"
        statuses = []
        for _ in range(3):
            async with http.head(prompt, params={"prompt": "hi"}) as head:
                statuses.append(
                    (head.status, "anthropic-ratelimit-requests-remaining" in head.headers)
                )
        for path in ("/api/chat", "/v1/messages"):
            async with http.head(sidecar.url + path) as head:
                statuses.append((head.status, "Allow" in head.headers))
        assert fake.state.stats()["requests"] == 0
        async with http.get(prompt, params={"prompt": "hi"}) as answer:  # the one request
            assert answer.status == 200
            assert answer.headers["anthropic-ratelimit-requests-remaining"] == "0"
            await answer.read()
        async with http.head(prompt, params={"prompt": "hi"}) as head:
            after = head.status  # not the GET's 429: a HEAD is not admitted
    assert statuses == [(200, False)] * 3 + [(405, True)] * 2
    assert after == 200
    assert fake.state.stats()["requests"] == 1


async def test_a_1_mb_photo_is_admitted_under_100k_tokens_a_minute_and_settled_to_usage(
    sidecar_for: SidecarFactory,
) -> None:
    """An inline image reserves what Claude charges for its size (read from its header),
    not its bytes: a 1 MB photo fits a 100k tokens-per-minute limit on the anthropic and
    ui routes, and each call is settled to the usage Claude reported."""
    photo = png(4000, 3000, size=1_000_000)
    image = {"type": "image", "source": {"type": "base64", "media_type": "image/png",
                                         "data": photo}}  # fmt: skip
    config = {"server": {"max_body_bytes": 4 << 20}, "quotas": {"tokens_per_minute": 100_000}}
    async with sidecar_for(config) as sidecar:
        spy = spy_on(sidecar)
        body = {**message(max_tokens=64), "messages": [
            {"role": "user", "content": [image, {"type": "text", "text": "hi"}]}]}  # fmt: skip
        settled = len(spy.settled)
        async with (
            aiohttp.ClientSession() as http,
            http.post(sidecar.url + "/v1/messages", json=body) as answer,
        ):
            assert answer.status == 200, await answer.text()
            usage = (await answer.json())["usage"]
        await spy.wait_settled(settled + 1)
        reserved, used = spy.settled[-1]
        assert 4784 < reserved < 4784 + 64 + 50  # the photo's charge, max_tokens, the text
        assert used == usage["input_tokens"] + usage["output_tokens"]

        data_url = "data:image/png;base64," + photo
        turn = {"id": "c1", "messages": [{"id": "u1", "role": "user", "parts": [
            {"type": "file", "mediaType": "image/png", "url": data_url},
            {"type": "text", "text": "hi"}]}]}  # fmt: skip
        reserved, used = await _reserved_and_used(sidecar, spy, "/api/chat", turn)
    assert 4784 < reserved < 100_000
    assert used < reserved
