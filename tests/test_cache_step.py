"""The response cache end to end: real sockets, the fake Claude, the official Python SDK.

Each test sends requests through a sidecar with the cache on and watches the fake's
request counter (a hit or a coalesced follower never reaches Claude), the `X-Cache`
header, what the client receives, and the `sidecar.cache.lookups` counter.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml

from sidecar import loader
from sidecar.cache.entry import decode, encode
from sidecar.cache.stores import MemoryCacheStore
from sidecar.fake_claude import FakeServer
from sidecar.server import SidecarServer
from tests.support.cache import BODY, MODEL, asking, cached, post
from tests.support.otel import make_otel, sse_data
from tests.support.policy import AUDIENCE, ISSUER, SECRET, mint
from tests.support.redis_server import RedisServer
from tests.support.scripted_claude import claude_config, scripted_claude
from tests.support.sdk import sdk, user
from tests.support.sidecars import BASE, SidecarFactory, running_sidecar
from tests.support.waiting import eventually, holds


async def test_a_repeated_stream_is_replayed_byte_for_byte_with_one_claude_call(
    fake: FakeServer, sidecar_for: SidecarFactory
) -> None:
    async with sidecar_for(cached()) as s:
        first = await post(s.url, BODY)
        async with aiohttp.ClientSession() as http:
            async with http.post(s.url + "/v1/messages", json=BODY) as response:
                second = (response.status, response.headers.get("X-Cache"), await response.read())
                age = response.headers.get("Age")
                content_type = response.headers.get("Content-Type", "")
    assert first[:2] == (200, "MISS")
    assert second[:2] == (200, "HIT")
    assert second[2] == first[2]  # the exact event bytes, usage events included
    assert b"event: message_stop" in second[2]
    assert b'"output_tokens"' in second[2]
    assert age is not None
    assert int(age) >= 0
    assert content_type.startswith("text/event-stream")
    assert fake.state.counters["requests"] == 1


async def test_spellings_of_one_request_share_its_entry(
    fake: FakeServer, sidecar_for: SidecarFactory
) -> None:
    """Key order, whitespace, `0` / `0.0` / `0e0` (JavaScript and the Python SDK write a
    zero temperature differently) and `anthropic-beta` spelled in another order are one
    request to Claude: one call, then hits."""
    spellings = [
        (json.dumps(BODY), "b1,b2"),
        (json.dumps({**BODY, "temperature": 0.0}, indent=2), "b2, b1"),
        (json.dumps(dict(reversed(BODY.items()))).replace('"temperature": 0', '"temperature": 0e0'),
         "b1, b2, b1"),
    ]  # fmt: skip
    async with sidecar_for(cached()) as s, aiohttp.ClientSession() as http:
        seen = []
        for raw, betas in spellings:
            headers = {"Content-Type": "application/json", "anthropic-beta": betas}
            async with http.post(s.url + "/v1/messages", data=raw, headers=headers) as response:
                seen.append((response.status, response.headers.get("X-Cache")))
                await response.read()
    assert seen == [(200, "MISS"), (200, "HIT"), (200, "HIT")]
    assert fake.state.counters["requests"] == 1


async def test_numbers_claude_reads_as_text_are_keyed_as_written(
    fake: FakeServer, sidecar_for: SidecarFactory
) -> None:
    """A tool schema's `0.0` is other text to Claude than `0`: two calls, each one's entry
    answering only its own spelling."""

    def with_minimum(minimum: float) -> dict[str, Any]:
        schema = {"type": "object", "properties": {"n": {"type": "number", "minimum": minimum}}}
        return {**BODY, "tools": [{"name": "t", "description": "d", "input_schema": schema}]}

    async with sidecar_for(cached()) as s:
        statuses = [(await post(s.url, with_minimum(m)))[1] for m in (0.0, 0, 0.0, 0)]
    assert statuses == ["MISS", "MISS", "HIT", "HIT"]
    assert fake.state.counters["requests"] == 2


async def test_a_default_written_out_and_a_reordered_query_share_the_entry(
    fake: FakeServer, sidecar_for: SidecarFactory
) -> None:
    """`"stream": false` and no `stream` (both non-streaming), `stop_sequences: []` and
    none, and query parameters in another order are one request: one call, then hits."""
    plain = {name: value for name, value in BODY.items() if name != "stream"}
    spellings = [
        ("?beta=true&x=1", plain),
        ("?x=1&beta=true", {**plain, "stream": False}),
        ("?x=1&%62eta=true", {**plain, "stream": False, "stop_sequences": []}),
    ]
    async with sidecar_for(cached()) as s, aiohttp.ClientSession() as http:
        seen = []
        for query, body in spellings:
            async with http.post(s.url + "/v1/messages" + query, json=body) as response:
                seen.append((response.status, response.headers.get("X-Cache")))
                await response.read()
        async with http.post(s.url + "/v1/messages?x=2&beta=true", json=plain) as response:
            seen.append((response.status, response.headers.get("X-Cache")))
    assert seen == [(200, "MISS"), (200, "HIT"), (200, "HIT"), (200, "MISS")]
    assert fake.state.counters["requests"] == 2


async def test_the_python_sdk_sees_a_replay_as_the_original_stream(
    fake: FakeServer, sidecar_for: SidecarFactory
) -> None:
    async with sidecar_for(cached()) as s:
        client = sdk(s.url)
        runs = []
        for _ in range(2):
            async with client.messages.stream(
                model=MODEL,
                max_tokens=64,
                messages=user("stream me"),
                extra_body={"temperature": 0},
            ) as stream:
                events = [event.model_dump() async for event in stream]
                final = await stream.get_final_message()
                runs.append((stream.response.headers.get("x-cache"), events, final))
        await client.close()
    (miss, events, final), (hit, replayed, replayed_final) = runs
    assert (miss, hit) == ("MISS", "HIT")
    assert replayed == events
    assert replayed_final == final
    assert final.usage.output_tokens == 12
    assert final.usage.input_tokens > 0
    assert fake.state.counters["requests"] == 1


async def test_a_non_streaming_answer_is_cached_as_its_json(
    fake: FakeServer, sidecar_for: SidecarFactory
) -> None:
    async with sidecar_for(cached()) as s:
        client = sdk(s.url)
        answers = []
        for _ in range(2):
            raw = await client.messages.with_raw_response.create(
                model=MODEL, max_tokens=64, messages=user("once"), extra_body={"temperature": 0}
            )
            answers.append((raw.headers.get("x-cache"), await raw.parse(), raw.request_id))
        await client.close()
    assert [status for status, _, _ in answers] == ["MISS", "HIT"]
    assert answers[0][1] == answers[1][1]
    # No Claude call, so no Claude request id: never the one of the call that made the entry.
    assert answers[0][2] is not None
    assert answers[1][2] is None
    assert answers[1][1].usage.output_tokens == 12
    assert fake.state.counters["requests"] == 1


def _key(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


async def test_two_tenants_never_share_an_entry(
    fake: FakeServer, sidecar_for: SidecarFactory
) -> None:
    keys = [
        {"name": "a1", "sha256": _key("key-a1-000000"), "tenant": "acme"},
        {"name": "a2", "sha256": _key("key-a2-000000"), "tenant": "acme"},
        {"name": "b1", "sha256": _key("key-b1-000000"), "tenant": "bolt"},
    ]
    auth = {"auth": {"mode": "required", "api_keys": keys}}
    async with sidecar_for({**cached(), **auth}) as s:
        results = [
            (await post(s.url, BODY, {"x-api-key": f"key-{name}-000000"}))[:2]
            for name in ("a1", "b1", "a2", "b1")
        ]
    assert results == [(200, "MISS"), (200, "MISS"), (200, "HIT"), (200, "HIT")]
    assert fake.state.counters["requests"] == 2


async def test_callers_without_a_tenant_never_share_an_entry_under_tenant_scope(
    fake: FakeServer, sidecar_for: SidecarFactory
) -> None:
    """Two API keys with no tenant are two callers, not one tenant: no shared answer."""
    keys = [
        {"name": "x1", "sha256": _key("key-x1-000000"), "user": "alice"},
        {"name": "x2", "sha256": _key("key-x2-000000"), "user": "bob"},
    ]
    auth = {"auth": {"mode": "required", "api_keys": keys}}
    async with sidecar_for({**cached(), **auth}) as s:
        statuses = [
            (await post(s.url, BODY, {"x-api-key": f"key-{name}-000000"}))[1]
            for name in ("x1", "x2", "x1")
        ]
    assert statuses == ["MISS", "MISS", "HIT"]
    assert fake.state.counters["requests"] == 2


async def test_an_empty_tenant_claim_is_no_tenant_under_tenant_scope(
    fake: FakeServer, sidecar_for: SidecarFactory
) -> None:
    """Tokens whose tenant claim is `""` name no tenant: their callers share nothing."""
    jwt = {"secret": SECRET, "algorithms": ["HS256"], "issuer": ISSUER, "audience": AUDIENCE,
           "tenant_claim": "org"}  # fmt: skip
    async with sidecar_for({**cached(), "auth": {"mode": "required", "jwt": jwt}}) as s:
        statuses = [
            (await post(s.url, BODY, {"Authorization": f"Bearer {mint(sub=who, org='')}"}))[1]
            for who in ("u4", "u5", "u4")
        ]
    assert statuses == ["MISS", "MISS", "HIT"]


async def test_user_scope_keeps_users_of_one_tenant_apart(
    fake: FakeServer, sidecar_for: SidecarFactory
) -> None:
    keys = [
        {"name": "a1", "sha256": _key("key-a1-000000"), "tenant": "acme"},
        {"name": "a2", "sha256": _key("key-a2-000000"), "tenant": "acme"},
    ]
    auth = {"auth": {"mode": "required", "api_keys": keys}}
    async with sidecar_for({**cached(scope="user"), **auth}) as s:
        statuses = [
            (await post(s.url, BODY, {"x-api-key": f"key-{name}-000000"}))[1]
            for name in ("a1", "a2", "a1")
        ]
    assert statuses == ["MISS", "MISS", "HIT"]
    assert fake.state.counters["requests"] == 2


@pytest.mark.parametrize(
    ("text", "status"),
    [
        ("[[fake fault=midstream_error after=3]] q", 200),  # Claude's `event: error`
        ("[[fake fault=drop after=3]] q", 200),  # the connection cut mid-stream
        ("[[fake fault=bad_request]] q", 400),  # an error answer
    ],
)
async def test_failed_answers_are_never_stored(
    fake: FakeServer, sidecar_for: SidecarFactory, text: str, status: int
) -> None:
    otel = make_otel()
    async with sidecar_for(cached(), telemetry=otel.telemetry) as s:
        first = await post(s.url, asking(text))
        await s.runtime.cache.settled()  # type: ignore[union-attr]
        second = await post(s.url, asking(text))
    assert first[:2] == second[:2] == (status, "MISS")
    assert fake.state.counters["requests"] == 2
    assert otel.count("sidecar.cache.lookups", **{"sidecar.cache.result": "skipped"}) == 2
    assert otel.count("sidecar.cache.lookups", **{"sidecar.cache.result": "stored"}) == 0


_NOT_A_MESSAGE = [
    b'{"id":"msg_1","type":"message","role":"assistant","content":[{"type":"te',  # cut off
    b"<html><body>upstream gateway page</body></html>",  # no JSON
    b'{"type":"error","error":{"type":"overloaded_error","message":"busy"}}',  # an error
    b'["message"]',  # JSON, but no message
]


@pytest.mark.parametrize("answer", _NOT_A_MESSAGE)
async def test_a_non_streaming_200_that_is_no_whole_message_is_never_stored(
    answer: bytes,
) -> None:
    # A 200 whose body ends with its connection (no length, not chunked) reads as whole
    # however much of it came; nor is every 200 a message (a gateway's page, an error).
    async def answering(writer: asyncio.StreamWriter) -> None:
        writer.write(
            b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nConnection: close\r\n\r\n"
            + answer
        )
        await writer.drain()
        writer.close()

    seen: list[bytes] = []
    otel = make_otel()
    async with (
        scripted_claude(answering, answering, seen=seen) as url,
        running_sidecar(
            loader.deep_merge(claude_config(url), cached()), telemetry=otel.telemetry
        ) as s,
    ):
        first = await post(s.url, asking("once", stream=False))
        await s.runtime.cache.settled()  # type: ignore[union-attr]
        second = await post(s.url, asking("once", stream=False))
    assert [first[1], second[1]] == ["MISS", "MISS"]
    assert second[2] == first[2] == answer  # relayed as Claude sent it, never from the cache
    assert len(seen) == 2
    assert otel.count("sidecar.cache.lookups", **{"sidecar.cache.result": "stored"}) == 0
    assert otel.count("sidecar.cache.lookups", **{"sidecar.cache.result": "skipped"}) == 2


async def test_a_stream_the_client_cancelled_is_not_stored(
    fake: FakeServer, sidecar_for: SidecarFactory
) -> None:
    slow = asking("[[fake tokens=200 tps=50]] long")
    async with sidecar_for(cached()) as s:
        async with (
            aiohttp.ClientSession() as http,
            http.post(s.url + "/v1/messages", json=slow) as response,
        ):
            await response.content.readuntil(b"content_block_delta")
        # The client left mid-stream: the call ends as cancelled, and nothing is kept.
        cache = s.runtime.cache
        assert cache is not None
        await eventually(lambda: holds(not cache.inflight))
        status = (await post(s.url, asking("[[fake tokens=3]] short")))[1]
        again = (await post(s.url, slow))[1]
    assert status == "MISS"
    assert again == "MISS"
    assert fake.state.counters["requests"] == 3


async def test_no_store_is_not_stored_and_no_cache_refreshes(
    fake: FakeServer, sidecar_for: SidecarFactory
) -> None:
    otel = make_otel()
    async with sidecar_for(cached(), telemetry=otel.telemetry) as s:
        cache = s.runtime.cache
        assert cache is not None
        statuses = [(await post(s.url, BODY, {"Cache-Control": "no-store"}))[1]]
        statuses.append((await post(s.url, BODY))[1])  # nothing was kept: a miss, stored
        await cache.settled()
        statuses.append((await post(s.url, BODY, {"Cache-Control": "no-cache"}))[1])
        await cache.settled()
        statuses.append((await post(s.url, BODY, {"Cache-Control": "max-age=0, bogus"}))[1])
    assert statuses == ["MISS", "MISS", "BYPASS", "HIT"]  # unknown directives are ignored
    assert fake.state.counters["requests"] == 3
    counts = {
        result: otel.count("sidecar.cache.lookups", **{"sidecar.cache.result": result})
        for result in ("hit", "miss", "bypass", "stored")
    }
    assert counts == {"hit": 1, "miss": 2, "bypass": 1, "stored": 2}  # no-cache refreshed it


async def test_a_directive_on_a_cache_control_line_of_its_own_is_honoured(
    fake: FakeServer, sidecar_for: SidecarFactory
) -> None:
    async def sent(lines: list[str]) -> str | None:
        headers = [("Cache-Control", line) for line in lines]
        async with (
            aiohttp.ClientSession() as http,
            http.post(s.url + "/v1/messages", json=BODY, headers=headers) as response,
        ):
            await response.read()
            return response.headers.get("X-Cache")

    async with sidecar_for(cached()) as s:
        cache = s.runtime.cache
        assert cache is not None
        statuses = [await sent(["max-age=0", "no-store"])]
        await cache.settled()
        statuses.append(await sent([]))  # the first answer was not kept
        await cache.settled()
        statuses.append(await sent(["max-age=0", "no-cache"]))
    assert statuses == ["MISS", "MISS", "BYPASS"]
    assert fake.state.counters["requests"] == 3


async def test_sampled_requests_are_cached_only_when_the_route_says_so(
    fake: FakeServer, sidecar_for: SidecarFactory
) -> None:
    sampled = {k: v for k, v in BODY.items() if k != "temperature"}
    async with sidecar_for(cached()) as s:
        statuses = [(await post(s.url, sampled))[1] for _ in range(2)]
    assert statuses == ["BYPASS", "BYPASS"]
    routes = [{"path": "/v1/", "handler": "anthropic", "cache": {"include_sampled": True}}]
    async with sidecar_for({**cached(), "routes": routes}) as s:
        statuses = [(await post(s.url, {**sampled, "temperature": 0.7}))[1] for _ in range(2)]
    assert statuses == ["MISS", "HIT"]
    assert fake.state.counters["requests"] == 3


async def test_a_route_may_switch_the_cache_on_alone(
    fake: FakeServer, sidecar_for: SidecarFactory
) -> None:
    routes = [
        {"path": "/v1/", "handler": "anthropic", "cache": {"enabled": True}},
        {"path": "/api/stream-response", "handler": "prompt"},
    ]
    async with sidecar_for({"routes": routes}) as s:
        statuses = [(await post(s.url, BODY))[1] for _ in range(2)]
    assert statuses == ["MISS", "HIT"]


async def test_an_entry_is_served_only_within_the_ttl_of_the_route_asking(
    fake: FakeServer, sidecar_for: SidecarFactory, tmp_path: Path
) -> None:
    """`ttl_seconds` is how long an entry is served on each route, as configured now: an
    entry stored by a route that keeps entries longer, or before a reload shortened the
    TTL, is not served once older than the TTL of the route asking."""
    routes = [
        {"path": "/fresh/", "handler": "anthropic", "cache": {"ttl_seconds": 60}},
        {"path": "/v1/", "handler": "anthropic"},
    ]
    async with sidecar_for({**cached(ttl_seconds=3600), "routes": routes}) as s:
        assert (await post(s.url, BODY))[1] == "MISS"
        cache = s.runtime.cache
        assert cache is not None
        await cache.settled()
        store = cache.store
        assert isinstance(store, MemoryCacheStore)
        [key] = store.keys()
        value = await store.get(key)
        assert value is not None
        entry = decode(value)
        entry.created -= 120  # stored two minutes ago
        await store.put(key, encode(entry), 3600)
        assert (await post(s.url, BODY))[1] == "HIT"  # within this route's hour
        assert (await post(s.url + "/fresh", BODY))[1] == "MISS"  # past this one's minute
        await cache.settled()
        assert (await post(s.url + "/fresh", BODY))[1] == "HIT"  # replaced by the fresh one
    assert fake.state.counters["requests"] == 2


async def test_a_page_on_another_origin_reads_x_cache_and_age(
    fake: FakeServer, sidecar_for: SidecarFactory
) -> None:
    """The default `cors.expose_headers` let browser code read a hit's `X-Cache` and `Age`."""
    origin = "https://app.example.com"
    async with sidecar_for({**cached(), "cors": {"allow_origins": [origin]}}) as s:
        async with aiohttp.ClientSession() as http:
            for expected in ("MISS", "HIT"):
                async with http.post(
                    s.url + "/v1/messages", json=BODY, headers={"Origin": origin}
                ) as response:
                    await response.read()
                    assert response.headers["X-Cache"] == expected
                    exposed = response.headers["Access-Control-Expose-Headers"].split(",")
                    readable = {name.strip().lower() for name in exposed}
    assert {"x-cache", "age"} <= readable
    assert "Age" in response.headers


async def test_the_prompt_route_replays_its_own_events(
    fake: FakeServer, sidecar_for: SidecarFactory
) -> None:
    async with sidecar_for(cached(include_sampled=True)) as s, aiohttp.ClientSession() as http:
        runs = []
        for _ in range(2):
            async with http.post(s.url + "/api/stream-response", json={"prompt": "hi"}) as r:
                runs.append((r.headers.get("X-Cache"), sse_data(await r.read())))
    (miss, events), (hit, replayed) = runs
    assert (miss, hit) == ("MISS", "HIT")
    assert replayed == events
    assert sum("token" in event for event in replayed) == 12
    assert replayed[-1]["done"] is True
    assert replayed[-1]["usage"]["output_tokens"] == 12
    assert fake.state.counters["requests"] == 1


async def test_an_event_source_reconnecting_after_a_replay_is_told_to_stop(
    fake: FakeServer, sidecar_for: SidecarFactory
) -> None:
    """A replay on the (resumable) prompt route numbers its events `1…n`, no stream id:
    the `EventSource` reconnecting with `Last-Event-ID: n` gets a 204 (stop), not a 400."""
    config = {**cached(include_sampled=True), "resume": {"enabled": True}}
    async with sidecar_for(config) as s, aiohttp.ClientSession() as http:
        url = s.url + "/api/stream-response?prompt=hi"
        for _ in range(2):
            async with http.get(url) as response:
                raw = await response.read()
                cache = response.headers.get("X-Cache")
        assert cache == "HIT"
        last = [line for line in raw.decode().splitlines() if line.startswith("id: ")][-1]
        assert last.removeprefix("id: ").isdigit()
        async with http.get(url, headers={"Last-Event-ID": last.removeprefix("id: ")}) as again:
            assert again.status == 204
    assert fake.state.counters["requests"] == 1


async def test_hits_are_marked_on_the_request_span(
    fake: FakeServer, sidecar_for: SidecarFactory
) -> None:
    otel = make_otel()
    async with sidecar_for(cached(), telemetry=otel.telemetry) as s:
        _, _, raw = await post(s.url, BODY)
        await post(s.url, BODY)
    events = sse_data(raw)
    usage = events[0]["message"]["usage"]["input_tokens"] + events[-2]["usage"]["output_tokens"]
    marks = [
        span.attributes.get("sidecar.cache.hit")
        for span in otel.spans()
        if span.attributes is not None and "sidecar.cache.hit" in span.attributes
    ]
    assert sorted(marks, key=str) == [False, True]
    assert otel.count("sidecar.cache.tokens_saved") == usage  # input and output tokens


async def _statuses_under_a_small_token_quota(
    sidecar_for: SidecarFactory, *, charge_hits: bool
) -> list[tuple[int, str | None]]:
    """A miss, then 20 hits, under 100 requests and 200 tokens a minute (one call
    reserves ~80 and spends ~17): uncharged hits never meet the token limit."""
    quotas = {"quotas": {"requests_per_minute": 100, "tokens_per_minute": 200},
              "claude": {"max_tokens": 64}}  # fmt: skip
    async with sidecar_for({**cached(charge_hits=charge_hits), **quotas}) as s:
        return [
            (status, cache) for status, cache, _ in [await post(s.url, BODY) for _ in range(21)]
        ]


async def test_a_hit_is_a_request_but_spends_no_tokens_unless_charged(
    fake: FakeServer, sidecar_for: SidecarFactory
) -> None:
    free = await _statuses_under_a_small_token_quota(sidecar_for, charge_hits=False)
    assert free == [(200, "MISS")] + [(200, "HIT")] * 20
    charged = await _statuses_under_a_small_token_quota(sidecar_for, charge_hits=True)
    assert charged[:2] == [(200, "MISS"), (200, "HIT")]
    assert 429 in [status for status, _ in charged]  # charged hits spend tokens: the limit bites
    assert fake.state.counters["requests"] == 2


async def test_request_limits_apply_to_hits(fake: FakeServer, sidecar_for: SidecarFactory) -> None:
    async with sidecar_for({**cached(), "quotas": {"requests_per_minute": 3}}) as s:
        results = [(await post(s.url, BODY))[:2] for _ in range(4)]
    assert results[:3] == [(200, "MISS"), (200, "HIT"), (200, "HIT")]
    assert results[3][0] == 429


async def test_global_scope_shares_entries_across_tenants(
    fake: FakeServer, sidecar_for: SidecarFactory
) -> None:
    keys = [
        {"name": "a1", "sha256": _key("key-a1-000000"), "tenant": "acme"},
        {"name": "b1", "sha256": _key("key-b1-000000"), "tenant": "bolt"},
    ]
    auth = {"auth": {"mode": "required", "api_keys": keys}}
    async with sidecar_for({**cached(scope="global"), **auth}) as s:
        statuses = [
            (await post(s.url, BODY, {"x-api-key": f"key-{name}-000000"}))[1]
            for name in ("a1", "b1")
        ]
    assert statuses == ["MISS", "HIT"]
    assert fake.state.counters["requests"] == 1


async def test_without_the_cache_nothing_changes(
    fake: FakeServer, sidecar_for: SidecarFactory
) -> None:
    async with sidecar_for() as s:
        assert s.runtime.cache is None
        statuses = [(await post(s.url, BODY))[:2] for _ in range(2)]
    assert statuses == [(200, None), (200, None)]
    assert fake.state.counters["requests"] == 2


async def test_a_reload_keeps_the_entries_until_the_store_settings_change(
    fake: FakeServer, tmp_path: Path
) -> None:
    path = tmp_path / "sidecar.yaml"
    data = loader.deep_merge(BASE, {"server": {"reload_poll_seconds": 0},
                             "claude": {"base_url": fake.url, "api_key": "k"}, **cached()})  # fmt: skip
    path.write_text(yaml.safe_dump(data))
    server = SidecarServer(loader.load(path, {}), config_path=path, env={})
    await server.start()
    try:
        await post(server.url, BODY)
        first = server.runtime.cache
        assert first is not None
        await first.settled()
        path.write_text(yaml.safe_dump(loader.deep_merge(data, {"cache": {"ttl_seconds": 60}})))
        assert await server.reload()
        assert server.runtime.cache is first  # same store settings: same entries
        assert (await post(server.url, BODY))[1] == "HIT"
        path.write_text(yaml.safe_dump(loader.deep_merge(data, {"cache": {"max_entries": 5}})))
        assert await server.reload()
        assert server.runtime.cache is not first
        assert (await post(server.url, BODY))[1] == "MISS"
        path.write_text(yaml.safe_dump(loader.deep_merge(data, {"cache": {"enabled": False}})))
        assert await server.reload()
        assert server.runtime.cache is None
        assert (await post(server.url, BODY))[1] is None
    finally:
        await server.shutdown(grace=1.0)
    assert fake.state.counters["requests"] == 3


@pytest.mark.parametrize("stream", [True, False])
async def test_a_charged_hit_spends_what_the_answer_cost_streamed_or_not(
    fake: FakeServer, sidecar_for: SidecarFactory, stream: bool
) -> None:
    """`charge_hits`: each hit spends the answer's input and output tokens, whether the
    answer is a stream or one JSON body (each hit's reservation is settled to that)."""
    quotas = {"quotas": {"requests_per_minute": 1000, "tokens_per_day": 100_000}}
    body = {**BODY, "stream": stream}
    async with sidecar_for({**cached(charge_hits=True), **quotas}) as s:
        left = []
        for _ in range(3):
            async with (
                aiohttp.ClientSession() as http,
                http.post(s.url + "/v1/messages", json=body) as response,
            ):
                raw = await response.read()
                left.append(int(response.headers["anthropic-ratelimit-tokens-remaining"]))
    if stream:
        events = sse_data(raw)
        cost = events[0]["message"]["usage"]["input_tokens"] + events[-2]["usage"]["output_tokens"]
    else:
        usage = json.loads(raw)["usage"]
        cost = usage["input_tokens"] + usage["output_tokens"]
    assert cost > 0
    assert abs((left[1] - left[2]) - cost) <= 1  # the first hit settled to the answer's cost


_NOT_CALLED: list[tuple[dict[str, Any], dict[str, Any], int]] = [
    # a quota exceeded (the second request of a minute), a call larger than a token limit
    ({"quotas": {"requests_per_minute": 1}}, asking("another question"), 429),
    ({"quotas": {"tokens_per_minute": 100}, "claude": {"max_tokens": 64}},
     asking("another", max_tokens=4096), 400),
    # refused before the lookup: no credential, screening, a bad request
    ({"auth": {"mode": "required", "api_keys": [{"name": "k", "sha256": "0" * 64}]}},
     BODY, 401),
    ({"screening": {"deny_patterns": ["forbidden"]}}, asking("forbidden"), 400),
    ({}, {**BODY, "max_tokens": "many"}, 400),
    # the call made, but no answer of Claude's to relay: the sidecar's own error
    ({}, asking("[[fake fault=auth]] q"), 502),
    ({"claude": {"base_url": "http://127.0.0.1:9"}}, BODY, 502),  # Claude unreachable
]  # fmt: skip
_NOT_CALLED_IDS = ["requests_quota", "over_a_token_limit", "no_credential", "screening",
                   "bad_request", "key_refused_by_claude", "claude_unreachable"]  # fmt: skip


@pytest.mark.parametrize(("config", "body", "status"), _NOT_CALLED, ids=_NOT_CALLED_IDS)
async def test_a_refusal_carries_no_x_cache(
    fake: FakeServer,
    sidecar_for: SidecarFactory,
    config: dict[str, Any],
    body: dict[str, Any],
    status: int,
) -> None:
    """`X-Cache` is the cache's word on an answer: HIT when it gave one, MISS or BYPASS on
    the answer of the call it let through. A refusal made before or instead of that call
    (auth, screening, a bad request, a quota, Claude unreachable) carries none."""
    async with sidecar_for({**cached(), **config}) as s:
        if status == 429:  # the quota's first request is answered, and a miss
            assert (await post(s.url, BODY))[:2] == (200, "MISS")
        refused = await post(s.url, body)
    assert refused[:2] == (status, None)


async def test_a_quota_store_outage_carries_no_x_cache(
    fake: FakeServer, sidecar_for: SidecarFactory, redis_server: RedisServer
) -> None:
    """Under `on_store_error: fail_closed` the quota store down refuses the call (503):
    no Claude call was made, so no `X-Cache: MISS`."""
    quotas = {"store": "redis", "redis_url": redis_server.url, "requests_per_minute": 100,
              "redis_timeout_seconds": 0.5, "on_store_error": "fail_closed"}  # fmt: skip
    async with sidecar_for({**cached(), "quotas": quotas}) as s:
        assert (await post(s.url, BODY))[:2] == (200, "MISS")
        await redis_server.kill()
        refused = await post(s.url, asking("another question"))
    assert refused[:2] == (503, None)
    assert fake.state.counters["requests"] == 1


async def test_a_reload_to_another_issuer_key_never_answers_the_old_tenant(
    fake: FakeServer, tmp_path: Path
) -> None:
    """The same replica, reloaded with another JWT secret, keeps its cache and the calls in
    flight; its `acme` is another tenant than the one before: an identical request neither
    follows the old `acme`'s call in flight nor hits its entry. It hits its own."""
    other = "o" * 40
    jwt = {"secret": SECRET, "issuer": ISSUER, "audience": AUDIENCE, "tenant_claim": "org"}
    path = tmp_path / "sidecar.yaml"
    data = loader.deep_merge(BASE, {"server": {"reload_poll_seconds": 0},
                             "claude": {"base_url": fake.url, "api_key": "k"},
                             "auth": {"mode": "required", "jwt": jwt}, **cached()})  # fmt: skip
    path.write_text(yaml.safe_dump(data))
    slow = asking("[[fake tokens=40 tps=20]] our plans")
    server = SidecarServer(loader.load(path, {}), config_path=path, env={})
    await server.start()
    try:
        cache = server.runtime.cache
        assert cache is not None
        first = asyncio.create_task(post(server.url, slow, {"Authorization": f"Bearer {mint()}"}))
        await eventually(lambda: holds(bool(cache.inflight)))
        moved = loader.deep_merge(data, {"auth": {"jwt": {"secret": other}}})
        path.write_text(yaml.safe_dump(moved))
        assert await server.reload()
        assert server.runtime.cache is cache  # its entries and calls in flight are kept
        assert cache.inflight  # the old `acme`'s call is still in flight
        theirs = {"Authorization": f"Bearer {mint(key=other)}"}
        during = await post(server.url, slow, theirs)
        before = await first
        await cache.settled()
        after = await post(server.url, slow, theirs)
    finally:
        await server.shutdown(grace=1.0)
    assert (before[1], during[1], after[1]) == ("MISS", "MISS", "HIT")
    assert fake.state.counters["requests"] == 2
