"""The app handler over real sockets: streaming both ways, SSE, headers (identity stripped in
every spelling, forwarding headers believed only from trusted proxies, the sidecar's CORS over
the app's), bodyless answers, 502/504. Its WebSockets: `test_app_websocket.py`."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import gzip
import json
import logging
import socket
import time
import zlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from multidict import CIMultiDict
from yarl import URL

from sidecar.policy.identity_headers import FORWARDING_HEADERS, is_forwarding_header
from tests.support.apps import AppState, echoed_headers, running_app, serving, with_app
from tests.support.metrics import counts
from tests.support.policy import API_KEY, API_KEY_SHA256, AUDIENCE, ISSUER, SECRET, mint
from tests.support.raw_http import Exchange, raw_server
from tests.support.sidecars import SidecarFactory, sidecar_process
from tests.support.sockets import free_port, shrink_send_buffers, small_buffered
from tests.support.waiting import eventually

BODY_CHUNK = b"x" * 65536
GZIPPED = gzip.compress(b"a body in a transfer coding")
DEFLATED = zlib.compress(b"a body in a transfer coding")


async def test_headers_forwarded_identity_stripped_hop_by_hop_dropped(
    sidecar_for: SidecarFactory, app_upstream: tuple[str, AppState]
) -> None:
    url, _ = app_upstream
    sent = {
        "X-Sidecar-User": "mallory", "x-sidecar-tenant": "evil", "Connection": "X-Drop-Me",
        "X-Drop-Me": "1", "X-Forwarded-For": "6.6.6.6", "traceparent": "00-" + "a" * 32 + "-"
        + "b" * 16 + "-01", "X-Custom": "kept",
    }  # fmt: skip
    async with sidecar_for(with_app(url)) as sidecar, aiohttp.ClientSession() as http:
        async with http.get(sidecar.url + "/echo/a%20b%3fc?q=1&q=2", headers=sent) as response:
            assert response.status == 200
            assert "X-Request-Id" in response.headers
            seen = await response.json()
    headers = echoed_headers(seen)
    assert seen["path_qs"] == "/echo/a%20b%3Fc?q=1&q=2"
    assert "x-sidecar-user" not in headers
    assert "x-sidecar-tenant" not in headers
    assert "x-drop-me" not in headers
    assert headers["x-custom"] == "kept"
    assert headers["x-forwarded-for"] == "127.0.0.1"  # the peer is not a trusted proxy
    assert headers["x-forwarded-proto"] == "http"
    assert headers["x-forwarded-host"].startswith("127.0.0.1:")
    trace_id = headers["traceparent"].split("-")[1]
    assert trace_id == "a" * 32  # the caller's trace continues
    assert headers["traceparent"].split("-")[2] != "b" * 16  # with the sidecar's span as parent


@pytest.mark.parametrize(
    ("sent", "kept"),
    [([("X-Request-Id", "trace-me-1")], True),
     ([], False),
     ([("X-Request-Id", "a" * 500)], False),
     ([("X-Request-Id", "has space")], False),
     ([("X-Request-Id", "one-1"), ("X-Request-Id", "two-2")], False),
     ([("X-Request-Id", "same-1"), ("X-Request-Id", "same-1")], True)],
    ids=["well_formed", "absent", "too_long", "malformed", "two_ids", "same_twice"],
)  # fmt: skip
async def test_the_app_gets_the_request_id_the_sidecar_logs_and_answers_and_only_that(
    sidecar_for: SidecarFactory,
    app_upstream: tuple[str, AppState],
    sent: list[tuple[str, str]],
    kept: bool,
) -> None:
    """One request id, computed once: the client's when well-formed and given once, else a
    new one, and the app's copy of the request carries exactly it (never the client's
    malformed value or other copies, so the app's logs and the sidecar's agree)."""
    url, _ = app_upstream
    async with sidecar_for(with_app(url)) as sidecar, aiohttp.ClientSession() as http:
        async with http.get(sidecar.url + "/echo", headers=CIMultiDict(sent)) as response:
            answered = response.headers["X-Request-Id"]
            seen = (await response.json())["headers"]
    assert [value for name, value in seen if name.lower() == "x-request-id"] == [answered]
    assert answered == (sent[0][1] if kept else answered)
    assert answered.startswith("req_") is not kept


async def test_trusted_proxy_forwarded_for_is_appended(
    sidecar_for: SidecarFactory, app_upstream: tuple[str, AppState]
) -> None:
    url, _ = app_upstream
    config = {**with_app(url), "server": {"trusted_proxies": ["127.0.0.0/8"]}}
    async with sidecar_for(config) as sidecar, aiohttp.ClientSession() as http:
        headers = {"X-Forwarded-For": "203.0.113.9"}
        async with http.get(sidecar.url + "/echo", headers=headers) as response:
            seen = echoed_headers(await response.json())
    assert seen["x-forwarded-for"] == "203.0.113.9, 127.0.0.1"


async def test_every_forwarded_line_of_a_trusted_proxy_reaches_the_app(
    sidecar_for: SidecarFactory, app_upstream: tuple[str, AppState]
) -> None:
    """A proxy's own X-Forwarded-For line after the client's is kept (one list, in order),
    so the app, walking from the right, finds the address the proxy saw."""
    url, _ = app_upstream
    config = {**with_app(url), "server": {"trusted_proxies": ["127.0.0.0/8"]}}
    async with sidecar_for(config) as sidecar, aiohttp.ClientSession() as http:
        headers = CIMultiDict(
            [("X-Forwarded-For", "198.51.100.1"), ("X-Forwarded-For", "203.0.113.9"),
             ("X-Forwarded-Proto", "https"), ("X-Forwarded-Proto", "https")]
        )  # fmt: skip
        async with http.get(sidecar.url + "/echo", headers=headers) as response:
            seen = echoed_headers(await response.json())
    assert seen["x-forwarded-for"] == "198.51.100.1, 203.0.113.9, 127.0.0.1"
    assert seen["x-forwarded-proto"] == "https, https"


async def test_response_hop_by_hop_headers_are_dropped(
    sidecar_for: SidecarFactory, app_upstream: tuple[str, AppState]
) -> None:
    url, _ = app_upstream
    async with sidecar_for(with_app(url)) as sidecar, aiohttp.ClientSession() as http:
        async with http.get(sidecar.url + "/hop") as response:
            assert await response.text() == "ok"
            assert "X-Private" not in response.headers
            assert "Keep-Alive" not in response.headers
            assert response.headers["X-Kept"] == "yes"


async def test_large_request_body_is_streamed_not_buffered(
    sidecar_for: SidecarFactory, app_upstream: tuple[str, AppState]
) -> None:
    url, state = app_upstream
    total_chunks = 256  # 16 MiB, far over max_body_bytes (which limits Claude routes only)

    async def body() -> AsyncIterator[bytes]:
        for i in range(total_chunks):
            if i == total_chunks // 2:
                # Half the body is out: the app must already have bytes, or the proxy buffers.
                await asyncio.wait_for(state.first_upload_bytes.wait(), 10)
            yield BODY_CHUNK

    async with sidecar_for(with_app(url)) as sidecar, aiohttp.ClientSession() as http:
        async with http.post(sidecar.url + "/upload", data=body()) as response:
            result = await response.json()
    assert result["bytes"] == total_chunks * len(BODY_CHUNK)
    assert result["chunks"] > 1


async def test_sse_from_the_app_arrives_event_by_event(
    sidecar_for: SidecarFactory, app_upstream: tuple[str, AppState]
) -> None:
    url, state = app_upstream
    arrivals: list[float] = []
    async with sidecar_for(with_app(url)) as sidecar, aiohttp.ClientSession() as http:
        async with http.get(sidecar.url + "/sse") as response:
            # A buffering proxy in front of the sidecar is told not to gather it either.
            assert response.headers["X-Accel-Buffering"] == "no"
            async for chunk in response.content.iter_any():
                arrivals += [time.monotonic()] * chunk.count(b"\n\n")
    assert len(arrivals) == 5
    for i in range(4):
        assert arrivals[i] < state.sse_sent[i + 1]


async def test_encoded_bodies_pass_untouched(
    sidecar_for: SidecarFactory, app_upstream: tuple[str, AppState]
) -> None:
    url, _ = app_upstream
    async with sidecar_for(with_app(url)) as sidecar:
        async with aiohttp.ClientSession(auto_decompress=False) as http:
            async with http.get(sidecar.url + "/gzip") as response:
                assert response.headers["Content-Encoding"] == "gzip"
                assert gzip.decompress(await response.read()) == b"hello " * 100


async def test_app_down_is_502_and_slow_is_504(
    sidecar_for: SidecarFactory, app_upstream: tuple[str, AppState]
) -> None:
    url, _ = app_upstream
    async with sidecar_for(with_app(f"http://127.0.0.1:{free_port()}")) as sidecar:
        async with aiohttp.ClientSession() as http, http.get(sidecar.url + "/anything") as r:
            assert r.status == 502
            error = (await r.json())["error"]
            assert error["type"] == "bad_gateway"
            assert "unreachable" in error["message"]
    async with sidecar_for(with_app(url)) as sidecar:
        async with aiohttp.ClientSession() as http, http.get(sidecar.url + "/slow") as r:
            assert r.status == 504
            assert (await r.json())["error"]["type"] == "timeout"


async def test_identity_header_spelled_with_underscores_is_stripped(
    sidecar_for: SidecarFactory,
) -> None:
    # WSGI/CGI servers map `X_Sidecar_User` and `X-Sidecar-User` to the same HTTP_X_SIDECAR_USER.
    async with running_app() as (url, _), sidecar_for({"app": {"url": url}}) as sidecar:
        async with aiohttp.ClientSession() as http:
            sent = {"X_Sidecar_User": "mallory", "x_sidecar-tenant": "evil", "X-Kept_1": "yes"}
            async with http.get(sidecar.url + "/echo", headers=sent) as response:
                assert response.status == 200
                seen = echoed_headers(await response.json())
    assert "x_sidecar_user" not in seen
    assert "x_sidecar-tenant" not in seen
    assert seen["x-kept_1"] == "yes"


async def test_bodyless_statuses_and_head(sidecar_for: SidecarFactory) -> None:
    async with running_app() as (url, _), sidecar_for({"app": {"url": url}}) as sidecar:
        async with aiohttp.ClientSession() as http:
            for status in (204, 304):
                async with http.get(sidecar.url + f"/empty?status={status}") as response:
                    assert response.status == status
                    assert await response.read() == b""
            async with http.head(sidecar.url + "/head") as response:
                assert response.status == 200
                assert response.headers["Content-Length"] == "100"
            async with http.get(sidecar.url + "/head") as response:
                assert await response.read() == b"x" * 100


async def test_trusted_proxy_scheme_and_host_reach_the_app(sidecar_for: SidecarFactory) -> None:
    # TLS ends at the ingress: the app must hear https (or it redirects to http forever).
    sent = {"X-Forwarded-Proto": "https", "X-Forwarded-Host": "app.example.com"}
    async with running_app() as (url, _):
        trusted = {"app": {"url": url}, "server": {"trusted_proxies": ["127.0.0.0/8"]}}
        async with sidecar_for(trusted) as sidecar, aiohttp.ClientSession() as http:
            async with http.get(sidecar.url + "/echo", headers=sent) as response:
                seen = echoed_headers(await response.json())
        assert seen["x-forwarded-proto"] == "https"
        assert seen["x-forwarded-host"] == "app.example.com"
        async with sidecar_for({"app": {"url": url}}) as sidecar, aiohttp.ClientSession() as http:
            async with http.get(sidecar.url + "/echo", headers=sent) as response:
                seen = echoed_headers(await response.json())
        assert seen["x-forwarded-proto"] == "http"  # anyone else's claim is replaced
        assert seen["x-forwarded-host"].startswith("127.0.0.1:")


async def test_an_absolute_form_request_line_names_the_one_host_the_app_gets(
    sidecar_for: SidecarFactory,
) -> None:
    """`GET http://other.example/echo` with `Host: <sidecar>`: the request line's host is
    the request's (RFC 9112 3.2.2); the app must not get it in `X-Forwarded-Host` and the
    other one in `Host`."""
    async with running_app() as (url, _), sidecar_for({"app": {"url": url}}) as sidecar:
        reader, writer = await asyncio.open_connection("127.0.0.1", sidecar.port)
        writer.write(
            b"GET http://other.example/echo HTTP/1.1\r\nHost: 127.0.0.1:%d\r\n"
            b"Connection: close\r\n\r\n" % sidecar.port
        )
        answer = await asyncio.wait_for(reader.read(), 10)
        writer.close()
    seen = echoed_headers(json.loads(answer.split(b"\r\n\r\n", 1)[1]))
    assert seen["x-forwarded-host"] == seen["host"] == "other.example"


@pytest.mark.parametrize(
    ("head", "host"),
    [(b"GET /echo HTTP/1.1\r\nHost: public.example\r\nConnection: close, Host\r\n", "public.example"),
     (b"GET /echo HTTP/1.1\r\nHost: public.example\r\nConnection: close\r\nConnection: host\r\n",
      "public.example"),
     (b"GET /echo HTTP/1.0\r\n", "127.0.0.1")],
    ids=["named_in_connection", "named_in_a_second_connection", "http10_without_host"],
)  # fmt: skip
async def test_the_app_gets_the_requests_host_never_its_own_address(
    sidecar_for: SidecarFactory, head: bytes, host: str
) -> None:
    """A `Host` the client names as a connection option, or none at all (HTTP/1.0), must
    not leave the app with its own address as `Host` (which an app trusting a local
    `Host` reads as a request from inside) and another host in `X-Forwarded-Host`: it
    gets the host the sidecar read (without one, the address the request came in on)."""
    async with running_app() as (url, _), sidecar_for({"app": {"url": url}}) as sidecar:
        reader, writer = await asyncio.open_connection("127.0.0.1", sidecar.port)
        writer.write(head + b"\r\n")
        answer = await asyncio.wait_for(reader.read(), 10)
        writer.close()
    seen = echoed_headers(json.loads(answer.split(b"\r\n\r\n", 1)[1]))
    assert seen["x-forwarded-host"] == seen["host"] == host


async def test_origin_policy_is_the_sidecars_even_when_the_app_reflects_origins(
    sidecar_for: SidecarFactory,
) -> None:
    allowed = "https://app.example.com"
    async with running_app() as (url, _):
        config = {"app": {"url": url}, "cors": {"allow_origins": [allowed]}}
        async with sidecar_for(config) as sidecar, aiohttp.ClientSession() as http:
            evil = {"Origin": "https://evil.example"}
            async with http.get(sidecar.url + "/cors", headers=evil) as response:
                assert response.status == 200  # the app route lets the request through
                assert "Access-Control-Allow-Origin" not in response.headers
                assert "Access-Control-Allow-Credentials" not in response.headers
            async with http.get(sidecar.url + "/cors", headers={"Origin": allowed}) as response:
                assert response.headers["Access-Control-Allow-Origin"] == allowed
                assert response.headers.getall("Access-Control-Allow-Origin") == [allowed]


async def test_other_forwarding_headers_are_only_believed_from_trusted_proxies(
    sidecar_for: SidecarFactory,
) -> None:
    sent = {
        "Forwarded": "for=203.0.113.66;proto=https",
        "X-Real-IP": "203.0.113.66",
        "X-Forwarded-Port": "8443",
        "X-Forwarded-Prefix": "/evil",
        "X-Kept": "yes",
    }
    async with running_app() as (url, _):
        async with sidecar_for({"app": {"url": url}}) as sidecar, aiohttp.ClientSession() as http:
            async with http.get(sidecar.url + "/echo", headers=sent) as response:
                seen = echoed_headers(await response.json())
        for name in ("forwarded", "x-real-ip", "x-forwarded-port", "x-forwarded-prefix"):
            assert name not in seen
        assert seen["x-kept"] == "yes"
        trusted = {"app": {"url": url}, "server": {"trusted_proxies": ["127.0.0.0/8"]}}
        async with sidecar_for(trusted) as sidecar, aiohttp.ClientSession() as http:
            async with http.get(sidecar.url + "/echo", headers=sent) as response:
                seen = echoed_headers(await response.json())
        assert seen["x-real-ip"] == "203.0.113.66"
        assert seen["x-forwarded-prefix"] == "/evil"  # the ingress said so


# --------------------------------------------------------------------------- request bodies


@contextlib.asynccontextmanager
async def recording_app() -> AsyncIterator[tuple[str, list[tuple[dict[str, str], bytes]]]]:
    """An app that records each request's headers and raw body bytes (no decoding)."""
    seen: list[tuple[dict[str, str], bytes]] = []

    async def record(request: web.Request) -> web.Response:
        body = await request.content.read()  # the raw bytes: this app's server does not decode
        seen.append(({k.lower(): v for k, v in request.headers.items()}, body))
        return web.json_response({"bytes": len(body)})

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", record)
    async with serving(app, auto_decompress=False) as url:
        yield url, seen


def _deflate(data: bytes) -> bytes:
    return zlib.compress(data)


ENCODINGS = ["gzip", "deflate", "br", "gzip, deflate", "x-unknown"]


def _encoded(encoding: str) -> bytes:
    plain = json.dumps({"text": "hello " * 5000}).encode()
    return {
        "gzip": gzip.compress(plain),
        "deflate": _deflate(plain),
        "gzip, deflate": _deflate(gzip.compress(plain)),
    }.get(encoding, b"\x00opaque\xff" * 99)


async def test_encoded_request_bodies_reach_the_app_byte_identical(
    sidecar_for: SidecarFactory,
) -> None:
    # Every coding, valid or garbage (the sidecar does not look inside: the app decides),
    # sent with a Content-Length and chunked.
    cases = [
        (encoding, body, chunked)
        for encoding in ENCODINGS
        for body in (_encoded(encoding), b"not gzip at all")
        for chunked in (False, True)
    ]
    async with recording_app() as (url, seen), sidecar_for(with_app(url)) as sidecar:
        async with aiohttp.ClientSession(auto_decompress=False) as http:
            for encoding, body, chunked in cases:

                async def chunks(data: bytes = body) -> AsyncIterator[bytes]:
                    for i in range(0, len(data), 1000):
                        yield data[i : i + 1000]

                headers = {"Content-Encoding": encoding, "Content-Type": "application/json"}
                data: Any = chunks() if chunked else body
                async with http.post(sidecar.url + "/upload", data=data, headers=headers) as r:
                    assert r.status == 200
                    assert (await r.json())["bytes"] == len(body)
    assert [got for _, got in seen] == [body for _, body, _ in cases]
    for (headers, got), (encoding, _, chunked) in zip(seen, cases, strict=True):
        assert headers["content-encoding"] == encoding
        if chunked:
            assert headers["transfer-encoding"] == "chunked"
        else:
            assert headers["content-length"] == str(len(got))


@contextlib.asynccontextmanager
async def raw_request(
    port: int, request: bytes
) -> AsyncIterator[tuple[asyncio.StreamReader, asyncio.StreamWriter]]:
    """A connection to the sidecar with `request` (raw bytes) already sent; closed on exit."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(request)
    await writer.drain()
    try:
        yield reader, writer
    finally:
        writer.close()


async def send(writer: asyncio.StreamWriter, data: bytes) -> None:
    writer.write(data)
    await writer.drain()


async def test_expect_100_continue_is_answered_not_forwarded(sidecar_for: SidecarFactory) -> None:
    async with recording_app() as (url, seen), sidecar_for(with_app(url)) as sidecar:
        head = (
            b"POST /upload HTTP/1.1\r\nHost: sidecar\r\nContent-Length: 5\r\n"
            b"Expect: 100-continue\r\nConnection: close\r\n\r\n"
        )
        async with raw_request(sidecar.port, head) as (reader, writer):
            interim = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
            await send(writer, b"hello")
            final = await asyncio.wait_for(reader.read(), 10)
    assert interim.startswith(b"HTTP/1.1 100 Continue")
    assert final.startswith(b"HTTP/1.1 200 ")
    assert seen[0][1] == b"hello"
    assert "expect" not in seen[0][0]


async def test_other_expectations_are_ignored_not_forwarded(sidecar_for: SidecarFactory) -> None:
    async with recording_app() as (url, seen), sidecar_for(with_app(url)) as sidecar:
        async with aiohttp.ClientSession() as http:
            headers = {"Expect": "something-else"}
            async with http.post(sidecar.url + "/x", data=b"body", headers=headers) as r:
                assert r.status == 200
    assert seen[0][1] == b"body"
    assert "expect" not in seen[0][0]


async def test_a_body_that_stops_arriving_is_cut_with_408(sidecar_for: SidecarFactory) -> None:
    config = with_app("", read_timeout_seconds=30)
    config["server"] = {"body_idle_timeout_seconds": 0.5}
    async with recording_app() as (url, seen):
        config["app"]["url"] = url
        async with sidecar_for(config) as sidecar:
            request = b"POST /upload HTTP/1.1\r\nHost: sidecar\r\nContent-Length: 100\r\n\r\nabc"
            async with raw_request(sidecar.port, request) as (reader, _writer):
                head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
    assert head.startswith(b"HTTP/1.1 408 ")
    assert seen == []  # the app never got a whole request to answer


async def test_a_slow_but_steady_upload_is_not_cut(sidecar_for: SidecarFactory) -> None:
    # The app route bounds silence, not total time: 12 chunks, 0.2 s apart, idle limit 0.5 s.
    async def body() -> AsyncIterator[bytes]:
        for _ in range(12):
            await asyncio.sleep(0.2)
            yield b"x" * 100

    async with recording_app() as (url, seen):
        config = with_app(url, read_timeout_seconds=30)
        config["server"] = {"body_idle_timeout_seconds": 0.5}
        async with sidecar_for(config) as sidecar, aiohttp.ClientSession() as http:
            async with http.post(sidecar.url + "/upload", data=body()) as response:
                assert response.status == 200
    assert seen[0][1] == b"x" * 1200


async def test_bad_chunked_framing_mid_body_is_400_not_500(sidecar_for: SidecarFactory) -> None:
    async with recording_app() as (url, _seen), sidecar_for(with_app(url)) as sidecar:
        start = (
            b"POST /upload HTTP/1.1\r\nHost: sidecar\r\nTransfer-Encoding: chunked\r\n\r\n"
            b"3\r\nabc\r\n"
        )
        async with raw_request(sidecar.port, start) as (reader, writer):
            await asyncio.sleep(0.3)  # the body is being streamed to the app by now
            await send(writer, b"zz\r\nnot a chunk\r\n0\r\n\r\n")
            answer = await asyncio.wait_for(reader.read(), 10)
    assert answer.startswith(b"HTTP/1.1 400 ")
    assert answer.count(b"HTTP/1.1 ") == 1  # one answer, in the route's format
    assert json.loads(answer.split(b"\r\n\r\n", 1)[1])["error"]["type"] == "invalid_request"


async def test_a_client_gone_before_the_call_never_reaches_the_app(
    sidecar_for: SidecarFactory,
) -> None:
    async with recording_app() as (url, seen), sidecar_for(with_app(url)) as sidecar:
        _reader, writer = await asyncio.open_connection("127.0.0.1", sidecar.port)
        writer.write(b"GET /page HTTP/1.1\r\nHost: sidecar\r\n\r\n")
        writer.write_eof()  # half-closed right after the request
        await writer.drain()
        await asyncio.sleep(0.5)
        writer.close()
        async with aiohttp.ClientSession() as http, http.get(sidecar.url + "/after") as r:
            assert r.status == 200
    assert [headers.get("host") for headers, _ in seen] == [sidecar.url.split("//")[1]]


# --------------------------------------------------------------------------- forwarding headers


# Each forwarding header in the table, in the spellings a client might try.
def _spellings(name: str) -> list[str]:
    title = "-".join(part.capitalize() for part in name.split("-"))
    return [name, name.upper(), title, title.replace("-", "_"), name.replace("-", "_")]


async def test_every_forwarding_header_in_every_spelling_is_stripped(
    sidecar_for: SidecarFactory,
) -> None:
    sent = CIMultiDict[str]()
    for name in [*sorted(FORWARDING_HEADERS), "x-forwarded-anything-else"]:
        for spelling in _spellings(name):
            sent.add(spelling, "203.0.113.66")
    sent.add("X-Kept", "yes")
    sent.add("X_Kept_Too", "yes")
    async with recording_app() as (url, seen):
        for trusted in (False, True):
            config = with_app(url)
            if trusted:
                config["server"] = {"trusted_proxies": ["127.0.0.0/8"]}
            async with sidecar_for(config) as sidecar, aiohttp.ClientSession() as http:
                async with http.get(sidecar.url + "/echo", headers=sent) as response:
                    assert response.status == 200
    untrusted, trusted_seen = (headers for headers, _ in seen)
    ours = {"x-forwarded-for", "x-forwarded-proto", "x-forwarded-host"}  # set by the sidecar
    leaked = [n for n in untrusted if is_forwarding_header(n) and n not in ours]
    assert leaked == []
    assert untrusted["x-forwarded-for"] == "127.0.0.1"
    assert untrusted["x-kept"] == "yes"
    assert untrusted["x_kept_too"] == "yes"
    # A trusted proxy's `-` spellings pass; `_` spellings never do.
    assert not [n for n in trusted_seen if "_" in n and is_forwarding_header(n)]
    assert trusted_seen["true-client-ip"].startswith("203.0.113.66")
    assert trusted_seen["x-forwarded-for"].startswith("203.0.113.66")


async def test_credentials_in_the_app_url_replace_the_clients_authorization(
    sidecar_for: SidecarFactory,
) -> None:
    """`app.url` with userinfo: the app gets that Basic credential, whether or not the
    client sent an Authorization of its own (both cannot be sent: that was a 500)."""
    async with running_app() as (url, _):
        with_credentials = url.replace("://", "://svc:APP%40PASS@", 1)
        async with (
            sidecar_for({"app": {"url": with_credentials}}) as sidecar,
            aiohttp.ClientSession() as http,
        ):
            seen = []
            for sent in ({}, {"Authorization": "Bearer client-token"}):
                async with http.get(sidecar.url + "/echo", headers=sent) as response:
                    assert response.status == 200
                    seen.append(echoed_headers(await response.json())["authorization"])
    expected = "Basic " + base64.b64encode(b"svc:APP@PASS").decode()
    assert seen == [expected, expected]


async def test_a_trace_carries_no_credential_of_the_sidecars(sidecar_for: SidecarFactory) -> None:
    """A TRACE's answer echoes the request (RFC 9110 9.3.8): `app.url`'s credential, the
    sidecar's own, is not in it, so an app that answers TRACE cannot hand it to any client.
    The client's own headers go as on any other method."""
    async with running_app() as (url, _):
        with_credentials = url.replace("://", "://svc:APP%40PASS@", 1)
        async with (
            sidecar_for({"app": {"url": with_credentials}}) as sidecar,
            aiohttp.ClientSession() as http,
        ):
            seen = {}
            for method in ("TRACE", "GET"):
                async with http.request(method, sidecar.url + "/echo") as response:
                    assert response.status == 200
                    seen[method] = echoed_headers(await response.json())
    assert "authorization" not in seen["TRACE"]
    assert seen["GET"]["authorization"] == "Basic " + base64.b64encode(b"svc:APP@PASS").decode()


@pytest.mark.parametrize("forward", [False, True])
async def test_the_sidecars_credential_is_kept_from_the_app_unless_forwarded(
    sidecar_for: SidecarFactory, forward: bool
) -> None:
    """A Bearer token, an `x-api-key` (any spelling) and the JWT query parameter are the
    sidecar's credential: the app does not get them unless `app.forward_credentials` says
    so, and then only the one the sidecar checked (an `x-api-key` beside a Bearer, or one
    spelled with `_`, was never checked). Another Authorization scheme (the app's own)
    always reaches it."""
    auth = {"mode": "required",
            "api_keys": [{"name": "web", "sha256": API_KEY_SHA256, "user": "web"}],
            "jwt": {"secret": SECRET, "algorithms": ["HS256"], "issuer": ISSUER,
                    "audience": AUDIENCE, "query_param": "access_token"}}  # fmt: skip
    async with running_app() as (url, _):
        config = {"app": {"url": url, "forward_credentials": forward}, "auth": auth}
        async with sidecar_for(config) as sidecar, aiohttp.ClientSession() as http:
            answers = []
            token = mint()
            for path, sent in (
                ("/echo?a=1", {"Authorization": f"Bearer {API_KEY}"}),
                ("/echo?a=1", {"x-api-key": API_KEY, "X_Api_Key": "copy"}),
                (f"/echo?access_token={token}&a=1", {}),
                ("/echo?a=1", {"x-api-key": API_KEY, "Authorization": "Basic YXBwOnB3"}),
                ("/echo?a=1", {"Authorization": f"Bearer {API_KEY}", "x-api-key": "unchecked"}),
            ):
                async with http.get(sidecar.url + path, headers=sent) as response:
                    assert response.status == 200
                    answers.append(await response.json())
    bearer, api_key, query, basic, both = answers
    assert ("authorization" in echoed_headers(bearer)) is forward
    assert ("x-api-key" in echoed_headers(api_key)) is forward
    assert "x_api_key" not in echoed_headers(api_key)  # never checked: never forwarded
    assert ("authorization" in echoed_headers(both)) is forward
    assert "x-api-key" not in echoed_headers(both)
    assert ("access_token" in query["path_qs"]) is forward
    assert query["path_qs"].endswith("a=1")
    assert echoed_headers(basic)["authorization"] == "Basic YXBwOnB3"


@contextlib.asynccontextmanager
async def method_recording_app() -> AsyncIterator[tuple[str, list[str]]]:
    """An app that records each request's method (what it would act on) and answers it."""
    seen: list[str] = []

    async def recording(request: web.Request) -> web.StreamResponse:
        seen.append(request.method)
        return web.json_response({"method": request.method})

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", recording)
    async with serving(app) as url:
        yield url, seen


async def test_a_method_override_header_is_refused_before_the_app(
    sidecar_for: SidecarFactory,
) -> None:
    """A query-string credential is read on a GET only, CORS grants `allow_methods` only:
    a GET (or POST) telling the app to act as a DELETE must not reach it. Each override
    header, in any case and with `_`, is a 400 in the app route's format, counted, and
    the app never called; without one the same request is served."""
    auth = {"mode": "required",
            "jwt": {"secret": SECRET, "algorithms": ["HS256"], "issuer": ISSUER,
                    "audience": AUDIENCE, "query_param": "access_token"}}  # fmt: skip
    names = ["X-HTTP-Method-Override", "X-HTTP-Method", "X-Method-Override",
             "x-http-method-override", "X_HTTP_Method_Override", "X_Method-Override"]  # fmt: skip
    async with method_recording_app() as (url, seen):
        config = {"app": {"url": url}, "auth": auth, "telemetry": {"prometheus": True}}
        async with sidecar_for(config) as sidecar, aiohttp.ClientSession() as http:
            token = mint()
            target = f"{sidecar.url}/echo?access_token={token}"
            for name in names:
                for method in ("GET", "POST"):  # a POST's credential is a header's only
                    sent = {name: "DELETE"}
                    if method == "POST":
                        sent["Authorization"] = f"Bearer {token}"
                    async with http.request(method, target, headers=sent) as answer:
                        assert answer.status == 400, (name, method)
                        body = await answer.json()
                    assert body["error"]["type"] == "invalid_request"
                    assert "send the method itself" in body["error"]["message"]
            async with http.get(target) as answer:
                assert answer.status == 200
                assert (await answer.json())["method"] == "GET"
            async with http.get(sidecar.admin_url + "/metrics") as response:
                metrics = await response.text()
    assert counts(metrics, "sidecar_rejections", "sidecar_rejection_reason")[
        "method_override"
    ] == 2 * len(names)
    assert seen == ["GET"]


async def test_a_method_query_parameter_is_refused_before_the_app(
    sidecar_for: SidecarFactory,
) -> None:
    """Laravel and Symfony (and Express's `method-override` reading the query) take a
    `_method` query parameter as the method: each spelling is a 400 `method_override` in
    the app route's format, counted, on any method, and the app never called."""
    queries = ["_method=DELETE", "%5Fmethod=DELETE", "_METHOD=PUT", "a=1&_method%5B%5D=DELETE",
               ".method=DELETE"]  # fmt: skip
    async with method_recording_app() as (url, seen):
        config = {"app": {"url": url}, "telemetry": {"prometheus": True}}
        async with sidecar_for(config) as sidecar, aiohttp.ClientSession() as http:
            for query in queries:
                for method in ("GET", "POST"):
                    target = URL(f"{sidecar.url}/echo?{query}", encoded=True)
                    async with http.request(method, target) as answer:
                        assert answer.status == 400, (query, method)
                        body = await answer.json()
                    assert body["error"]["type"] == "invalid_request"
                    assert "send the method itself" in body["error"]["message"]
            async with http.post(f"{sidecar.url}/echo?method=DELETE&x=_method") as answer:
                assert answer.status == 200
            async with http.get(sidecar.admin_url + "/metrics") as response:
                metrics = await response.text()
    assert counts(metrics, "sidecar_rejections", "sidecar_rejection_reason")[
        "method_override"
    ] == 2 * len(queries)
    assert seen == ["POST"]


@pytest.mark.parametrize("status", [401, 403])
async def test_the_apps_own_refusal_of_a_forwarded_credential_passes_unchanged(
    sidecar_for: SidecarFactory, status: int
) -> None:
    """With `app.forward_credentials`, the app judges the client's own credential: its
    401 or 403 is about that credential and reaches the client as the app wrote it (only
    a Claude refusal, about the sidecar's own key, becomes a 502)."""
    refusal = b'{"detail": "token revoked by the app"}'
    challenge = 'Bearer realm="app", error="invalid_token"'

    async def refuse(request: web.Request) -> web.Response:
        return web.Response(
            status=status, body=refusal, content_type="application/json",
            headers={"WWW-Authenticate": challenge},
        )  # fmt: skip

    app = web.Application()
    app.router.add_route("*", "/private", refuse)
    auth = {"mode": "required", "api_keys": [{"name": "web", "sha256": API_KEY_SHA256}]}
    async with serving(app) as url:
        config = {"app": {"url": url, "forward_credentials": True}, "auth": auth}
        async with sidecar_for(config) as sidecar, aiohttp.ClientSession() as http:
            headers = {"Authorization": f"Bearer {API_KEY}"}
            async with http.get(sidecar.url + "/private", headers=headers) as response:
                assert response.status == status
                assert response.headers["WWW-Authenticate"] == challenge
                assert await response.read() == refusal
            async with http.get(sidecar.admin_url + "/metrics") as scraped:
                rejected = counts(
                    await scraped.text(), "sidecar_rejections", "sidecar_rejection_reason"
                )
    assert rejected == {}


async def test_a_head_reaches_the_app_as_a_head_without_the_query_token(
    sidecar_for: SidecarFactory,
) -> None:
    """The sidecar reads the JWT query parameter of a HEAD as of the GET it asks about, so
    it keeps it from the app the same way; the method reaches the app unchanged."""
    seen: list[tuple[str, str]] = []

    async def record(request: web.Request) -> web.Response:
        seen.append((request.method, request.path_qs))
        return web.Response(body=b"x" * 7)

    app = web.Application()
    app.router.add_route("*", "/seen", record)
    auth = {"mode": "required", "jwt": {"secret": SECRET, "algorithms": ["HS256"],
            "issuer": ISSUER, "audience": AUDIENCE, "query_param": "access_token"}}  # fmt: skip
    async with serving(app) as url, sidecar_for({"app": {"url": url}, "auth": auth}) as sidecar:
        async with aiohttp.ClientSession() as http:
            target = sidecar.url + f"/seen?access_token={mint()}&k=1"
            async with http.head(target) as response:
                assert response.status == 200
                assert response.headers["Content-Length"] == "7"
                assert await response.read() == b""
    assert seen == [("HEAD", "/seen?k=1")]


async def test_a_query_token_the_sidecar_did_not_read_reaches_the_app(
    sidecar_for: SidecarFactory,
) -> None:
    """The query parameter is the sidecar's credential only where auth read it (a GET with
    no header credential): beside a Bearer header, or on a POST, it is the app's own."""
    auth = {"mode": "required",
            "api_keys": [{"name": "web", "sha256": API_KEY_SHA256, "user": "web"}],
            "jwt": {"secret": SECRET, "algorithms": ["HS256"], "issuer": ISSUER,
                    "audience": AUDIENCE, "query_param": "access_token"}}  # fmt: skip
    bearer = {"Authorization": f"Bearer {API_KEY}"}
    async with running_app() as (url, _):
        async with (
            sidecar_for({"app": {"url": url}, "auth": auth}) as sidecar,
            aiohttp.ClientSession() as http,
        ):
            seen = []
            for method in ("GET", "POST"):
                async with http.request(
                    method, sidecar.url + "/echo?access_token=APPS_OWN&k=1", headers=bearer
                ) as response:
                    assert response.status == 200
                    seen.append((await response.json())["path_qs"])
    assert seen == ["/echo?access_token=APPS_OWN&k=1"] * 2


# --------------------------------------------------------------------------- the app's answers


def _rejections(metrics: str) -> dict[str, float]:
    return counts(metrics, "sidecar_rejections", "sidecar_rejection_reason")


async def test_an_app_silent_after_an_informational_answer_is_cut_at_the_read_timeout(
    sidecar_for: SidecarFactory,
) -> None:
    """A `103 Early Hints` (or an unasked `100 Continue`) then nothing: 504, not a request
    held forever (the client library's read timer stops at an informational answer)."""
    release = asyncio.Event()

    async def early_hints_then_silence(exchange: Exchange) -> None:
        exchange.writer.write(b"HTTP/1.1 103 Early Hints\r\nLink: </app.css>; rel=preload\r\n\r\n")
        await release.wait()

    try:
        async with raw_server(early_hints_then_silence) as app:
            config = with_app(app.url, read_timeout_seconds=0.5, connect_timeout_seconds=0.5)
            async with (
                sidecar_for(config) as sidecar,
                aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as http,
            ):
                async with http.get(sidecar.url + "/page") as response:
                    assert response.status == 504
                    assert (await response.json())["error"]["type"] == "timeout"
                async with http.post(sidecar.url + "/form", data=b"a=1") as response:
                    assert response.status == 504
                with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
                    await http.ws_connect(sidecar.url + "/ws")
                assert refused.value.status == 504
                async with http.get(sidecar.admin_url + "/metrics") as scrape:
                    assert _rejections(await scrape.text()) == {"app_timeout": 3}
    finally:
        release.set()


async def test_an_app_answering_before_the_body_ends_gets_the_rest_of_it(
    sidecar_for: SidecarFactory,
) -> None:
    """Full duplex: the app's head comes first, the client's body goes on after it."""

    async def duplex(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse()
        await response.prepare(request)
        async for chunk in request.content.iter_any():
            await response.write(chunk)
        await response.write(b"|end")
        return response

    app = web.Application()
    app.router.add_post("/duplex", duplex)
    async with serving(app) as url, sidecar_for(with_app(url)) as sidecar:
        head = b"POST /duplex HTTP/1.1\r\nHost: sidecar\r\nTransfer-Encoding: chunked\r\n\r\n"
        async with raw_request(sidecar.port, head + b"5\r\nhello\r\n") as (reader, writer):
            assert (await reader.readuntil(b"\r\n\r\n")).startswith(b"HTTP/1.1 200 ")
            assert await reader.readuntil(b"hello\r\n") == b"5\r\nhello\r\n"  # before the end
            await send(writer, b"5\r\nworld\r\n0\r\n\r\n")
            rest = await asyncio.wait_for(reader.readuntil(b"0\r\n\r\n"), 10)
    assert _unchunked(rest) == b"world|end"


def _unchunked(framed: bytes) -> bytes:
    """The data of a run of HTTP/1.1 chunks ending with the last (empty) one."""
    data = b""
    while True:
        size, _, framed = framed.partition(b"\r\n")
        if int(size, 16) == 0:
            return data
        data += framed[: int(size, 16)]
        framed = framed[int(size, 16) + 2 :]


@pytest.mark.parametrize(
    "answer",
    [
        b"HTTP/1.1 200 OK\r\nX-Bad: a\x01b\r\nContent-Length: 2\r\n\r\nok",
        b"HTTP/1.1 200 OK\r\nSet-Cookie: a=\x1b[31m\r\nContent-Length: 2\r\n\r\nok",
        b"HTTP/1.1 200 OK\r\nX-Bad: r\xe9sum\xe9\x00\r\nContent-Length: 2\r\n\r\nok",
        b"HTTP/1.1 200 O\x7fK\r\nContent-Length: 2\r\n\r\nok",
        b"HTTP/1.1 600 Beyond\r\nContent-Length: 2\r\n\r\nok",
        b"HTTP/1.1 000 Zero\r\nContent-Length: 2\r\n\r\nok",
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: other\r\nConnection: Upgrade\r\n\r\n",
        b"NOT HTTP AT ALL\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n"
        + b"%x\r\n%s\r\n0\r\n\r\n" % (len(GZIPPED), GZIPPED),
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: GZIP\r\n\r\n" + GZIPPED,
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: deflate\r\nTransfer-Encoding: chunked\r\n\r\n"
        + b"%x\r\n%s\r\n0\r\n\r\n" % (len(DEFLATED), DEFLATED),
    ],
    ids=[
        "control_in_value",
        "escape_in_cookie",
        "nul_beside_obs_text",
        "control_in_reason",
        "status_600",
        "status_0",
        "unasked_101",
        "garbage",
        "transfer_coding_gzip_chunked",
        "transfer_coding_gzip_to_close",
        "transfer_coding_deflate_in_two_lines",
    ],
)
async def test_an_answer_that_cannot_be_passed_on_is_a_502(
    sidecar_for: SidecarFactory, answer: bytes, caplog: pytest.LogCaptureFixture
) -> None:
    async def script(exchange: Exchange) -> None:
        exchange.writer.write(answer)
        exchange.writer.close()

    async with raw_server(script) as app, sidecar_for(with_app(app.url)) as sidecar:
        async with raw_request(sidecar.port, b"GET /page HTTP/1.1\r\nHost: sidecar\r\n\r\n") as (
            reader,
            _writer,
        ):
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
            assert head.startswith(b"HTTP/1.1 502 ")
            length = int(head.lower().split(b"content-length: ")[1].split(b"\r\n")[0])
            error = json.loads(await reader.readexactly(length))["error"]
        async with aiohttp.ClientSession() as http:
            async with http.get(sidecar.admin_url + "/metrics") as scrape:
                rejections = _rejections(await scrape.text())
    assert error["type"] == "bad_gateway"
    assert rejections == {"app_bad_response": 1}
    assert not [r for r in caplog.records if r.exc_info]  # an answer, not a traceback


async def test_a_client_that_stops_reading_the_apps_answer_is_cut(
    sidecar_for: SidecarFactory, app_upstream: tuple[str, AppState],
    caplog: pytest.LogCaptureFixture,
) -> None:  # fmt: skip
    """`app.send_timeout_seconds`: a client that takes none of the answer this long is cut,
    so a socket that never reads holds no handler or app connection (nginx's
    `send_timeout`); one that reads gets all of it."""
    caplog.set_level(logging.INFO)
    url, _ = app_upstream
    async with sidecar_for(with_app(url, send_timeout_seconds=0.5)) as sidecar:
        shrink_send_buffers(sidecar)
        reader, writer = await asyncio.open_connection("127.0.0.1", sidecar.port, limit=4096)
        writer.write(b"GET /large HTTP/1.1\r\nHost: sidecar\r\nConnection: close\r\n\r\n")

        def answered() -> list[int]:
            return [getattr(r, "status", 0) for r in caplog.records
                    if getattr(r, "event", None) == "access"]  # fmt: skip

        async def done() -> bool:  # the handler is over: it waits for the client no more
            return len(answered()) == 1

        await eventually(done, timeout=20)
        try:
            received = len(await reader.read())
        except ConnectionResetError:
            received = 0
        writer.close()
        async with aiohttp.ClientSession() as http, http.get(sidecar.url + "/large") as reply:
            whole = await reply.read()
    assert received < 8 << 20  # cut short
    assert len(whole) == 8 << 20  # a client that reads is not cut


async def test_the_app_route_works_as_sidecar_run_serves_it_on_uvloop(tmp_path: Path) -> None:
    """`sidecar run` serves on uvloop, whose transports are no asyncio classes: an answer,
    an event stream and a WebSocket all go through (the in-process sidecars of the other
    tests run on asyncio's own loop)."""
    async with (
        running_app() as (url, _),
        sidecar_process({"app": {"url": url}, "auth": {"mode": "none"}}, tmp_path) as running,
        aiohttp.ClientSession() as http,
    ):
        async with http.get(running.url + "/echo") as answer:
            assert answer.status == 200
            assert (await answer.json())["path_qs"] == "/echo"
        async with http.get(running.url + "/sse") as events:
            assert events.status == 200
            assert (await events.read()).count(b"data: ") == 5
        async with http.ws_connect(running.url + "/ws", protocols=["chat"]) as ws:
            await ws.send_str("hi")
            assert await ws.receive_str(timeout=5) == "echo:hi"
        logs = running.logs()
    assert "Traceback" not in logs


async def test_an_event_stream_to_clients_that_read_nothing_pauses_the_app(
    sidecar_for: SidecarFactory,
) -> None:
    """Flow control, per stream: an endless event stream relayed to clients that take none of
    it stops being read from the app once what is queued for them reaches a bound, so the
    sidecar holds a bounded number of bytes per stream, not what the app could generate."""
    sent = [0] * 4

    async def endless(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        event = b"data: " + b"x" * 1000 + b"\n\n"
        index = int(request.query["i"])
        with contextlib.suppress(ConnectionError):
            while True:
                await response.write(event)
                sent[index] += len(event)
        return response

    app = web.Application()
    app.router.add_get("/endless", endless)
    async with serving(app) as url, sidecar_for(with_app(url, send_timeout_seconds=600)) as sidecar:
        shrink_send_buffers(sidecar)
        clients = [await small_buffered(sidecar.port) for _ in sent]
        for index, (_, writer) in enumerate(clients):
            writer.write(b"GET /endless?i=%d HTTP/1.1\r\nHost: sidecar\r\n\r\n" % index)
        seen = list(sent)

        async def paused() -> bool:  # no stream's app wrote anything since the last look
            nonlocal seen
            await asyncio.sleep(0.5)
            still, seen = sent == seen and all(sent), list(sent)
            return still

        await eventually(paused, timeout=60)
        for _, writer in clients:
            writer.close()
    # What the app wrote and nobody took: the sockets' buffers both ways and the sidecar's
    # own, per stream; an unbounded queue would have kept the app writing.
    assert max(sent) < 64 << 20


@pytest.mark.parametrize(
    ("request_head", "body", "expected"),
    [
        (b"GET /echo HTTP/1.1\r\n", b"", {}),
        (b"POST /echo HTTP/1.1\r\nContent-Length: 3\r\n", b"abc", {}),
        (b"POST /echo HTTP/1.1\r\nTransfer-Encoding: chunked\r\n", b"3\r\nabc\r\n0\r\n\r\n", {}),
        (
            b"POST /echo HTTP/1.1\r\nAccept: text/html\r\nContent-Type: text/plain\r\n"
            b"Content-Length: 3\r\n",
            b"abc",
            {"accept": "text/html", "content-type": "text/plain"},
        ),
    ],
    ids=["get", "length", "chunked", "given"],
)
async def test_the_app_gets_no_accept_or_content_type_the_client_did_not_send(
    sidecar_for: SidecarFactory,
    app_upstream: tuple[str, AppState],
    request_head: bytes,
    body: bytes,
    expected: dict[str, str],
) -> None:
    """The HTTP client the sidecar calls the app with adds `Accept: */*` and, to a body,
    `Content-Type: application/octet-stream`: an app that reads their absence (a webhook
    with no type, content negotiation) would see what the client never said."""
    url, _ = app_upstream
    async with sidecar_for(with_app(url)) as sidecar:
        reader, writer = await asyncio.open_connection("127.0.0.1", sidecar.port)
        writer.write(request_head + b"Host: x\r\nConnection: close\r\n\r\n" + body)
        answer = await reader.read()
        writer.close()
    head, _, payload = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 "), head
    headers = echoed_headers(json.loads(payload))
    seen = {name: headers[name] for name in ("accept", "content-type") if name in headers}
    assert seen == expected


@pytest.mark.parametrize(
    ("framing", "typed"),
    [
        (b"Content-Length: 5\r\n", b""),
        (b"Transfer-Encoding: chunked\r\n", b""),
        (b"Content-Length: 5\r\n", b"Content-Type: text/x-custom\r\n"),
    ],
    ids=["length", "chunked", "typed"],
)
async def test_the_client_gets_the_content_type_the_app_sent_and_no_other(
    sidecar_for: SidecarFactory, framing: bytes, typed: bytes
) -> None:
    """aiohttp's server gives an answer with a body `application/octet-stream` when it
    names no type; a proxy passes on what the app said, so a client may sniff or not."""

    async def untyped(exchange: Exchange) -> None:
        body = b"5\r\nhello\r\n0\r\n\r\n" if b"chunked" in framing else b"hello"
        exchange.writer.write(b"HTTP/1.1 200 OK\r\n" + framing + typed + b"\r\n" + body)
        await exchange.writer.drain()

    async with raw_server(untyped) as app, sidecar_for(with_app(app.url)) as sidecar:
        async with aiohttp.ClientSession() as http, http.get(sidecar.url + "/page") as response:
            assert await response.read() == b"hello"
            types = response.headers.getall("Content-Type", [])
    assert types == ([typed.split(b": ")[1].strip().decode()] if typed else [])


async def test_an_app_that_stops_reading_the_request_body_is_cut_with_a_504(
    sidecar_for: SidecarFactory,
) -> None:
    """`app.send_timeout_seconds` the other way (nginx's `proxy_send_timeout`): an app that
    reads a request's head and then none of its body, and never answers, holds neither the
    upload nor the client for good. The client gets a 504 saying so; the connection is
    closed (the rest of the body is never read)."""
    release = asyncio.Event()
    heads: list[bytes] = []

    async def deaf(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        heads.append(await reader.readuntil(b"\r\n\r\n"))
        await release.wait()  # reads nothing more, answers nothing
        writer.close()

    listener = socket.socket()
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    listener.bind(("127.0.0.1", 0))
    server = await asyncio.start_server(deaf, sock=listener)
    url = f"http://127.0.0.1:{listener.getsockname()[1]}"

    async def upload() -> AsyncIterator[bytes]:
        for _ in range(1024):  # 64 MiB: more than every buffer on the way holds
            yield BODY_CHUNK
            if release.is_set():
                return

    try:
        async with (
            sidecar_for(with_app(url, send_timeout_seconds=0.5)) as sidecar,
            aiohttp.ClientSession() as http,
        ):
            async with (
                asyncio.timeout(30),  # a guard: without the cut, this waits for good
                http.post(sidecar.url + "/upload", data=upload()) as response,
            ):
                status, headers = response.status, response.headers
                error = (await response.json())["error"]
            async with http.get(sidecar.admin_url + "/metrics") as scrape:
                rejections = _rejections(await scrape.text())
    finally:
        release.set()
        server.close()
    assert len(heads) == 1
    assert status == 504
    assert headers["Connection"] == "close"
    assert error == {"type": "timeout", "message": "the app did not take the request body in time"}
    assert rejections == {"app_timeout": 1}


async def test_header_values_past_ascii_pass_byte_for_byte_both_ways(
    sidecar_for: SidecarFactory,
) -> None:
    """A header value's bytes past ASCII (obs-text: UTF-8, or a latin-1 byte that is no
    UTF-8) reach the app as the client sent them, and the client as the app sent them:
    aiohttp reads such a byte as an escape its own writer dropped (`rsum.pdf`)."""
    answer = (
        b"HTTP/1.1 200 D\xe9j\xe0 vu\r\nX-Name: caf\xc3\xa9\r\n"
        b'Content-Disposition: attachment; filename="r\xe9sum\xe9.pdf"\r\n'
        b"Set-Cookie: n=caf\xc3\xa9\xff; Path=/\r\nContent-Length: 2\r\n\r\nok"
    )

    async def script(exchange: Exchange) -> None:
        exchange.writer.write(answer)

    request = (
        b"GET /page HTTP/1.1\r\nHost: sidecar\r\nX-In: caf\xc3\xa9 r\xe9sum\xe9\r\n"
        b"Connection: close\r\n\r\n"
    )
    async with raw_server(script) as app, sidecar_for(with_app(app.url)) as sidecar:
        async with raw_request(sidecar.port, request) as (reader, _writer):
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
    assert b"\r\nX-In: caf\xc3\xa9 r\xe9sum\xe9\r\n" in app.exchanges[0].head
    assert head.startswith(b"HTTP/1.1 200 D\xe9j\xe0 vu\r\n")
    assert b"\r\nX-Name: caf\xc3\xa9\r\n" in head
    assert b'\r\nContent-Disposition: attachment; filename="r\xe9sum\xe9.pdf"\r\n' in head
    assert b"\r\nSet-Cookie: n=caf\xc3\xa9\xff; Path=/\r\n" in head


async def test_an_answer_the_app_breaks_off_is_recorded_as_its_cut_not_a_client_gone(
    sidecar_for: SidecarFactory, caplog: pytest.LogCaptureFixture
) -> None:
    """The app hangs up with its length unmet: the client sees a short body, and the
    access line names the app's fault (`cut`), not a client that left."""
    caplog.set_level(logging.INFO)

    async def break_off(exchange: Exchange) -> None:
        exchange.writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nonly ten b")
        await exchange.writer.drain()
        exchange.writer.close()

    async with raw_server(break_off) as app, sidecar_for(with_app(app.url)) as sidecar:
        async with aiohttp.ClientSession() as http, http.get(sidecar.url + "/page") as reply:
            with pytest.raises(aiohttp.ClientPayloadError):
                await reply.read()

        def accessed() -> list[logging.LogRecord]:
            return [r for r in caplog.records if getattr(r, "event", None) == "access"]

        async def logged() -> bool:
            return len(accessed()) == 1

        await eventually(logged, timeout=10)
    (access,) = accessed()
    assert getattr(access, "cut", None) == "app_bad_response"
    assert not hasattr(access, "client_gone")
