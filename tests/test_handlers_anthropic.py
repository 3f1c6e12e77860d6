"""The Anthropic-compatible routes over real sockets: an SDK's stream is the same direct and
through the sidecar, bytes pass unchanged, errors reach the SDK, and only the configured
API paths are forwarded."""

from __future__ import annotations

import asyncio
import json
import re
from typing import Any

import aiohttp
import anthropic
import pytest

from sidecar.fake_claude import FakeServer
from tests.support.scripted_claude import (
    DELTA,
    SSE_HEAD,
    START,
    STOP,
    chunk,
    claude_config,
    messages_body,
    scripted_claude,
)
from tests.support.sdk import sdk, user
from tests.support.sidecars import SidecarFactory, running_sidecar

MODEL = "claude-sonnet-5-5"
_IDS = re.compile(r'"(msg|toolu|req)_[0-9a-f]+"')


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


async def test_midstream_error_reaches_the_sdk(sidecar_for: SidecarFactory) -> None:
    async with sidecar_for() as sidecar, sdk(sidecar.url) as client:
        with pytest.raises(anthropic.APIStatusError, match="overloaded_error"):
            async with client.messages.stream(
                model=MODEL, max_tokens=64, messages=user("[[fake fault=midstream_error]]")
            ) as stream:
                async for _ in stream:
                    pass


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
            assert r.status == 400  # forwarded now: Claude refuses an empty batch
    assert fake.state.requests[-1]["path"] == "/v1/messages/batches"


@pytest.mark.parametrize(
    ("prefix", "proxy_headers", "origin"),
    [("", {}, None),
     ("/claude", {}, None),
     ("", {"X-Forwarded-Proto": "https", "X-Forwarded-Host": "api.example"}, "https://api.example")],
)  # fmt: skip
async def test_a_batch_s_results_url_leads_back_through_the_sidecar(
    fake: FakeServer,
    sidecar_for: SidecarFactory,
    prefix: str,
    proxy_headers: dict[str, str],
    origin: str | None,
) -> None:
    """Claude names a batch's results by an absolute URL on its own host, which the SDKs
    fetch as given: unchanged, `batches.results()` would go to Claude past the sidecar,
    with the client's sidecar credential. Every answer naming it names the sidecar."""
    opened: dict[str, Any] = {
        "claude": {"forward_paths": ["/v1/messages/batches"]},
        "server": {"trusted_proxies": ["127.0.0.1/32"]},
        "routes": [{"path": prefix + "/v1/", "handler": "anthropic"}],
    }
    requests: Any = [
        {"custom_id": "a", "params": {"model": MODEL, "max_tokens": 8, "messages": user("x")}}
    ]
    async with sidecar_for(opened) as sidecar:
        base = sidecar.url + prefix
        async with sdk(base, default_headers=proxy_headers) as client:
            batch = await client.messages.batches.create(requests=requests)
            expected = f"{origin or base}/v1/messages/batches/{batch.id}/results"
            assert batch.results_url == expected
            listed = [b async for b in client.messages.batches.list()]
            assert [b.results_url for b in listed] == [expected]
            assert (await client.beta.messages.batches.retrieve(batch.id)).results_url == expected
            if origin is None:  # the SDK fetches the URL: through the sidecar, with its key
                results = [r async for r in await client.messages.batches.results(batch.id)]
                assert [(r.custom_id, r.result.type) for r in results] == [("a", "succeeded")]
                fetched = fake.state.requests[-1]
                assert fetched["path"] == f"/v1/messages/batches/{batch.id}/results"
                assert fetched["headers"]["x-api-key"] == "sk-sidecar"
    assert all(r["headers"].get("x-api-key") == "sk-sidecar" for r in fake.state.requests)


@pytest.mark.parametrize("path", ["/v1/messages", "/v1/messages/count_tokens"])
async def test_a_screened_body_goes_to_claude_as_plain_json(
    fake: FakeServer, sidecar_for: SidecarFactory, path: str
) -> None:
    """The body was read (and screened) as UTF-8 JSON: the client's charset is not passed
    on, or the same bytes could read as other text to Claude (`+AGk-` is `i` in UTF-7)."""
    body = b'{"model": "%b", "max_tokens": 8, "messages": [{"role": "user", "content": "+AGk-"}]}'
    async with sidecar_for() as sidecar, aiohttp.ClientSession() as http:
        for content_type in ("application/json; charset=utf-7", "Application/JSON;charset=x"):
            async with http.post(
                sidecar.url + path,
                data=body % MODEL.encode(),
                headers={"Content-Type": content_type},
            ) as response:
                assert response.status == 200
    assert [r["headers"]["content-type"] for r in fake.state.requests] == ["application/json"] * 2


# Claude's events as a proxy in between might frame them: `id:` (and a bare `id`) and
# `retry:` fields of their own, one event that is only an id.
_FRAMED = (
    START.replace(b"event: ", b"id: 7\nretry: 1000\nevent: ", 1)
    + b"id: 8\n\n"
    + DELTA.replace(b"\ndata: ", b"\nid\ndata: ", 1)
    + DELTA.replace(b"event: ", b"id:9\nevent: ", 1)
    + STOP
)


def _dispatched(payload: bytes) -> list[tuple[str, str]]:
    """(last event id, event name) as an `EventSource` sees each event it dispatches: an
    `id` field sets the last event id (the last one in an event wins)."""
    seen, last_id = [], ""
    for block in payload.split(b"\n\n"):
        name, has_data = "message", False
        for line in block.decode().split("\n"):
            field, _, value = line.partition(":")
            value = value[1:] if value.startswith(" ") else value
            if field == "id":
                last_id = value
            elif field == "event":
                name = value
            elif field == "data":
                has_data = True
        if has_data:
            seen.append((last_id, name))
    return seen


async def test_a_resumable_stream_s_ids_are_its_own_whatever_ids_claude_s_events_carry() -> None:
    """Upstream `id` fields would become the client's last event id, which is no cursor:
    the client could not resume. They are dropped; a resume from any event gets the rest."""

    async def framed(writer: asyncio.StreamWriter) -> None:
        writer.write(SSE_HEAD + chunk(_FRAMED) + b"0\r\n\r\n")

    headers = {"Sidecar-Resume": "on"}
    async with (
        scripted_claude(framed) as url,
        running_sidecar(claude_config(url)) as sidecar,
        aiohttp.ClientSession() as http,
    ):
        url = sidecar.url + "/v1/messages"
        async with http.post(url, json=messages_body(), headers=headers) as r:
            stream_id = r.headers["Sidecar-Stream-Id"]
            first = _dispatched(await r.read())
        resumed = {"Last-Event-ID": f"{stream_id}:2"}
        async with http.post(url, json=messages_body(), headers=resumed) as r:
            rest = _dispatched(await r.read())
    names = ["message_start", "content_block_delta", "content_block_delta", "message_stop"]
    assert first == [(f"{stream_id}:{n}", name) for n, name in enumerate(names, 1)]
    assert rest == first[2:]


@pytest.mark.parametrize("stream", [True, False], ids=["stream", "whole"])
async def test_header_bytes_past_ascii_pass_unchanged_both_ways(stream: bool) -> None:
    """Claude's header values reach the client byte for byte, a byte that is no UTF-8
    included (aiohttp's writer dropped those), and the client's `anthropic-beta` reaches
    Claude so."""
    seen: list[bytes] = []
    message = (
        b'{"id":"msg_1","type":"message","role":"assistant","model":"m","content":[],'
        b'"stop_reason":"end_turn","usage":{"input_tokens":1,"output_tokens":1}}'
    )
    extra = b"request-id: req_r\xe9sum\xe9 caf\xc3\xa9\r\n"

    async def answer(writer: asyncio.StreamWriter) -> None:
        if stream:
            writer.write(SSE_HEAD[:-2] + extra + b"\r\n" + chunk(START + STOP) + b"0\r\n\r\n")
        else:
            writer.write(
                b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n" + extra
                + b"Content-Length: %d\r\n\r\n%b" % (len(message), message)
            )  # fmt: skip

    body = json.dumps(messages_body(stream)).encode()
    request = (
        b"POST /v1/messages HTTP/1.1\r\nHost: sidecar\r\nContent-Type: application/json\r\n"
        b"anthropic-beta: caf\xc3\xa9-r\xe9sum\xe9\r\nConnection: close\r\n"
        b"Content-Length: %d\r\n\r\n%b" % (len(body), body)
    )
    async with (
        scripted_claude(answer, seen=seen) as url,
        running_sidecar(claude_config(url)) as sidecar,
    ):
        reader, writer = await asyncio.open_connection("127.0.0.1", sidecar.port)
        writer.write(request)
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
        writer.close()
    assert head.startswith(b"HTTP/1.1 200 ")
    assert b"\r\nrequest-id: req_r\xe9sum\xe9 caf\xc3\xa9\r\n" in head
    assert b"\r\nanthropic-beta: caf\xc3\xa9-r\xe9sum\xe9\r\n" in seen[0]
