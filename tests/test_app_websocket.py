"""The app route's WebSockets over real sockets (`sidecar.handlers.app_websocket`): messages
both ways, subprotocols, close codes passed on, refusals and malformed handshakes, the message
size bound, stalled clients and apps cut, shutdown's `1001`, a client gone without a close."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import json
import logging
import socket
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from sidecar import loader
from sidecar.server import SidecarServer
from tests.support.apps import AppState, running_app, serving, with_app
from tests.support.metrics import counts
from tests.support.sidecars import BASE, SidecarFactory
from tests.support.sockets import shrink_send_buffers, small_buffered
from tests.support.waiting import eventually, holds

_WS_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"  # RFC 6455 1.3


async def test_websocket_is_proxied(
    sidecar_for: SidecarFactory, app_upstream: tuple[str, AppState]
) -> None:
    url, _ = app_upstream
    async with sidecar_for(with_app(url)) as sidecar, aiohttp.ClientSession() as http:
        async with http.ws_connect(sidecar.url + "/ws", protocols=["chat"]) as ws:
            assert ws.protocol == "chat"
            await ws.send_str("hi")
            assert (await ws.receive_str(timeout=5)) == "echo:hi"
            await ws.send_bytes(b"abc")
            assert (await ws.receive_bytes(timeout=5)) == b"cba"


async def test_a_websocket_closed_either_way_is_a_101_never_a_client_gone(
    sidecar_for: SidecarFactory,
    app_upstream: tuple[str, AppState],
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Its handshake was the answer: a closed connection after it is how a WebSocket ends
    (`sidecar.websocket.outcome`), not a client that left before its answer."""
    caplog.set_level(logging.INFO)
    url, _ = app_upstream
    async with sidecar_for(with_app(url)) as sidecar, aiohttp.ClientSession() as http:
        async with http.ws_connect(sidecar.url + "/ws") as ws:
            await ws.send_str("hi")
            assert (await ws.receive_str(timeout=5)) == "echo:hi"
        await eventually(lambda: holds(_access_lines(caplog) == 1))
    (line,) = [r.__dict__ for r in caplog.records if getattr(r, "event", None) == "access"]
    assert line["status"] == 101
    assert "client_gone" not in line


def _access_lines(caplog: pytest.LogCaptureFixture) -> int:
    return sum(getattr(r, "event", None) == "access" for r in caplog.records)


async def test_websocket_close_code_from_the_app_reaches_the_client(
    sidecar_for: SidecarFactory,
) -> None:
    async with running_app() as (url, state), sidecar_for({"app": {"url": url}}) as sidecar:
        async with aiohttp.ClientSession() as http:
            ws = await http.ws_connect(sidecar.url + "/ws-close")
            await ws.send_str("hello")
            message = await ws.receive(timeout=5)
            assert message.type == aiohttp.WSMsgType.CLOSE
            assert message.data == 4001
            assert message.extra == "not allowed"
            ws = await http.ws_connect(sidecar.url + "/ws-record")
            await ws.close(code=4002, message=b"bye")
            assert await state.ws_closed_by_client.get() == (4002, "bye")


async def test_websocket_the_app_refuses_keeps_the_apps_status(
    sidecar_for: SidecarFactory,
) -> None:
    async with running_app() as (url, _), sidecar_for({"app": {"url": url}}) as sidecar:
        async with aiohttp.ClientSession() as http:
            with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
                await http.ws_connect(sidecar.url + "/ws-forbidden")
            assert refused.value.status == 403
            with pytest.raises(aiohttp.WSServerHandshakeError) as missing:
                await http.ws_connect(sidecar.url + "/no-such-socket")
            assert missing.value.status == 404


async def test_a_websocket_from_an_origin_the_cors_policy_refuses_never_reaches_the_app(
    sidecar_for: SidecarFactory,
) -> None:
    """No browser hides a WebSocket's messages from the page that opened it, so withholding
    CORS headers (the app route's answer to other cross-origin requests) protects nothing:
    a handshake from a refused origin is a 403 `cors_origin_denied` before the app is
    dialled. Listed origins, same-origin pages and clients sending no `Origin` get through;
    a plain request from a refused origin still reaches the app."""
    dialled: list[str | None] = []

    async def socket(request: web.Request) -> web.StreamResponse:
        dialled.append(request.headers.get("Origin"))
        if not request.headers.get("Upgrade"):
            return web.Response(text="plain")
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        await ws.close()
        return ws

    app = web.Application()
    app.router.add_get("/ws", socket)
    listed = "https://app.example.com"
    async with serving(app) as url:
        config = {"app": {"url": url}, "cors": {"allow_origins": [listed]}}
        async with sidecar_for(config) as sidecar, aiohttp.ClientSession() as http:
            statuses = {}
            for origin in ("https://evil.example", "null", listed, sidecar.url, None):
                try:
                    ws = await http.ws_connect(sidecar.url + "/ws", origin=origin)
                    await ws.close()
                    statuses[origin] = 101
                except aiohttp.WSServerHandshakeError as refused:
                    statuses[origin] = refused.status
            async with http.get(
                sidecar.url + "/ws", headers={"Origin": "https://evil.example"}
            ) as plain:
                assert await plain.text() == "plain"
            async with http.get(sidecar.admin_url + "/metrics") as r:
                metrics = await r.text()
    assert statuses == {
        "https://evil.example": 403, "null": 403, listed: 101, sidecar.url: 101, None: 101
    }  # fmt: skip
    assert dialled == [listed, sidecar.url, None, "https://evil.example"]
    rejected = counts(metrics, "sidecar_rejections", "sidecar_rejection_reason")
    assert rejected.get("cors_origin_denied") == 2


async def test_the_apps_handshake_headers_reach_the_client_as_on_any_answer(
    sidecar_for: SidecarFactory,
) -> None:
    """The app's `101` headers (a session cookie set on the handshake, its own fields) reach
    the client, with the sidecar's `X-Request-Id` and `Vary`, without `Access-Control-*`
    (the sidecar's CORS policy decides) or what the app's `Connection` names."""

    async def socket(request: web.Request) -> web.StreamResponse:
        ws = web.WebSocketResponse()
        ws.headers.add("Set-Cookie", "a=1; Path=/")
        ws.headers.add("Set-Cookie", "b=2; Path=/; HttpOnly")
        ws.headers["X-App"] = "yes"
        ws.headers["Access-Control-Allow-Origin"] = "*"
        ws.headers["Vary"] = "Cookie"
        await ws.prepare(request)
        await ws.close()
        return ws

    app = web.Application()
    app.router.add_get("/ws", socket)
    async with (
        serving(app) as url,
        sidecar_for({"app": {"url": url}}) as sidecar,
        aiohttp.ClientSession() as http,
        http.ws_connect(sidecar.url + "/ws") as ws,
    ):
        answer = ws._response.headers
        assert answer.getall("Set-Cookie") == ["a=1; Path=/", "b=2; Path=/; HttpOnly"]
        assert answer["X-App"] == "yes"
        assert answer["X-Request-Id"].startswith("req_")
        assert answer["Vary"] == "Cookie, Origin"
        assert "Access-Control-Allow-Origin" not in answer


async def test_the_apps_handshake_header_bytes_past_ascii_reach_the_client_unchanged(
    sidecar_for: SidecarFactory,
) -> None:
    """The app's `101` header values pass byte for byte, as on any answer: UTF-8 and a
    latin-1 byte that is no UTF-8 alike; the client's reach the app so too."""

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        seen.append(head)
        key = head.split(b"ec-WebSocket-Key: ")[1].split(b"\r\n")[0]
        accept = base64.b64encode(hashlib.sha1(key + _WS_GUID).digest())
        writer.write(
            b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            b"Sec-WebSocket-Accept: " + accept + b"\r\nX-Name: caf\xc3\xa9\r\n"
            b"Set-Cookie: n=r\xe9sum\xe9; Path=/\r\n\r\n"
        )
        await writer.drain()
        await reader.read()  # until the sidecar lets go
        writer.close()

    seen: list[bytes] = []
    app = await asyncio.start_server(serve, "127.0.0.1", 0)
    url = f"http://127.0.0.1:{app.sockets[0].getsockname()[1]}"
    async with app, sidecar_for({"app": {"url": url}}) as sidecar:
        reader, writer = await asyncio.open_connection("127.0.0.1", sidecar.port)
        key = base64.b64encode(b"0123456789abcdef")
        writer.write(
            b"GET /ws HTTP/1.1\r\nHost: sidecar\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            b"Sec-WebSocket-Key: " + key + b"\r\nSec-WebSocket-Version: 13\r\n"
            b"X-In: r\xe9sum\xe9 caf\xc3\xa9\r\n\r\n"
        )
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
        writer.close()
    assert head.startswith(b"HTTP/1.1 101 ")
    assert b"\r\nX-Name: caf\xc3\xa9\r\n" in head
    assert b"\r\nSet-Cookie: n=r\xe9sum\xe9; Path=/\r\n" in head
    assert b"\r\nX-In: r\xe9sum\xe9 caf\xc3\xa9\r\n" in seen[0]


@pytest.mark.parametrize(
    "handshake",
    [
        "Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\n",  # no key
        "Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 99\r\n"
        "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n",
        "Upgrade: websocket\r\nConnection: close\r\nSec-WebSocket-Version: 13\r\n"
        "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n",
        "Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\n"
        "Sec-WebSocket-Key: short\r\n",
        "Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 8\r\n"
        "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n",
        "Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 7\r\n"
        "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n",
        "Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13, 8\r\n"
        "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n",
        # bytes past ASCII: aiohttp's own check raises ValueError on them, not its 400
        "Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\n"
        "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ=\u00e9\r\n",
        "Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\n"
        "Sec-WebSocket-Key: \u00e9\r\n",
    ],
    ids=[
        "no_key",
        "version",
        "connection",
        "bad_key",
        "draft_8",
        "draft_7",
        "two_versions",
        "key_past_ascii",
        "key_only_past_ascii",
    ],
)
async def test_a_malformed_websocket_handshake_is_the_clients_400_and_never_reaches_the_app(
    sidecar_for: SidecarFactory, handshake: str, caplog: pytest.LogCaptureFixture
) -> None:
    dialled: list[str] = []

    async def socket(request: web.Request) -> web.StreamResponse:
        dialled.append(request.path)
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        await ws.close()
        return ws

    app = web.Application()
    app.router.add_get("/ws", socket)
    async with serving(app) as url, sidecar_for({"app": {"url": url}}) as sidecar:
        host, port = sidecar.url.removeprefix("http://").split(":")
        reader, writer = await asyncio.open_connection(host, int(port))
        writer.write(f"GET /ws HTTP/1.1\r\nHost: x\r\n{handshake}\r\n".encode())
        await writer.drain()
        head = await reader.readuntil(b"\r\n\r\n")
        writer.close()
    assert head.startswith(b"HTTP/1.1 400 "), head
    # RFC 6455 4.4: the refusal names the one version the sidecar speaks (to the app too).
    assert b"\r\nsec-websocket-version: 13\r\n" in head.lower()
    assert dialled == []
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


_HANDSHAKE = (
    "Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\n"
    "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
)


async def _exchange(url: str, head: str) -> bytes:
    """Send one request head over a raw socket; the answer's head and body, as far as sent."""
    host, port = url.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    writer.write(head.encode())
    await writer.drain()
    answer = await reader.readuntil(b"\r\n\r\n")
    length = next(
        (int(line.split(b":")[1]) for line in answer.split(b"\r\n")
         if line.lower().startswith(b"content-length:")),
        0,
    )  # fmt: skip
    answer += await reader.readexactly(length)
    writer.close()
    return answer


@pytest.mark.parametrize("method", ["POST", "PUT", "DELETE", "PATCH"])
async def test_a_websocket_handshake_by_another_method_than_get_is_the_clients_400(
    sidecar_for: SidecarFactory, method: str, caplog: pytest.LogCaptureFixture
) -> None:
    """RFC 6455 4.1: the opening handshake is a GET. Another method is refused, not
    dialled to the app as the GET its route's policy never saw."""
    dialled: list[str] = []

    async def socket(request: web.Request) -> web.StreamResponse:
        dialled.append(request.method)
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        await ws.close()
        return ws

    app = web.Application()
    app.router.add_route("*", "/ws", socket)
    async with serving(app) as url, sidecar_for({"app": {"url": url}}) as sidecar:
        answer = await _exchange(
            sidecar.url,
            f"{method} /ws HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n{_HANDSHAKE}\r\n",
        )
        async with aiohttp.ClientSession() as http:
            async with http.get(sidecar.admin_url + "/metrics") as r:
                metrics = await r.text()
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 400 "), head
    assert json.loads(body)["error"] == {
        "type": "invalid_request",
        "message": "a WebSocket handshake must be a GET request",
    }
    assert dialled == []
    rejected = counts(metrics, "sidecar_rejections", "sidecar_rejection_reason")
    assert rejected.get("websocket_handshake_invalid") == 1
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


async def test_an_http_1_0_request_asking_for_a_websocket_is_proxied_as_a_plain_request(
    sidecar_for: SidecarFactory,
) -> None:
    """RFC 9110 7.8: an HTTP/1.0 request's `Upgrade` is ignored (1.0 has no `101`), so it
    reaches the app as the plain GET it is, never answered `HTTP/1.0 101`."""
    seen: list[tuple[str, str | None]] = []

    async def page(request: web.Request) -> web.StreamResponse:
        seen.append((request.method, request.headers.get("Upgrade")))
        return web.Response(text="plain")

    app = web.Application()
    app.router.add_get("/ws", page)
    async with serving(app) as url, sidecar_for({"app": {"url": url}}) as sidecar:
        answer = await _exchange(sidecar.url, f"GET /ws HTTP/1.0\r\nHost: x\r\n{_HANDSHAKE}\r\n")
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.0 200 "), head
    assert body == b"plain"
    assert seen == [("GET", None)]


async def test_websocket_messages_are_bounded_by_the_configured_size_both_ways(
    sidecar_for: SidecarFactory,
) -> None:
    """Up to `websocket_max_message_bytes` passes; a larger message closes the WebSocket
    with 1009 (message too big), to its sender and to the other side alike."""
    async with (
        running_app() as (url, state),
        sidecar_for(with_app(url, websocket_max_message_bytes=1024)) as sidecar,
    ):
        async with aiohttp.ClientSession() as http:
            async with http.ws_connect(sidecar.url + "/ws", max_msg_size=0) as ws:
                await ws.send_str("a" * 1000)
                assert await ws.receive_str(timeout=5) == "echo:" + "a" * 1000
                await ws.send_str("b" * 1020)  # its echo, 1025 characters, is the app's too big
                closed = await ws.receive(timeout=5)
                assert (closed.type, closed.data) == (aiohttp.WSMsgType.CLOSE, 1009)
            async with http.ws_connect(sidecar.url + "/ws-record", max_msg_size=0) as ws:
                await ws.send_str("c" * 2000)
                closed = await ws.receive(timeout=5)
                assert (closed.type, closed.data) == (aiohttp.WSMsgType.CLOSE, 1009)
            assert (await state.ws_closed_by_client.get())[0] == 1009


_HUGE = 8 * 1024 * 1024  # far over the bound: most of it is still on its way at the close


async def test_a_client_message_far_over_the_bound_gets_a_clean_1009_not_a_reset(
    sidecar_for: SidecarFactory,
) -> None:
    """A client sending 8 MB through a 64 KiB bound gets the `1009` close frame: the sidecar
    keeps reading (and dropping) what is still on its way after the close, so the kernel
    never answers that data with a reset that would lose the close frame."""
    async with (
        running_app() as (url, state),
        sidecar_for(with_app(url, websocket_max_message_bytes=65536)) as sidecar,
        aiohttp.ClientSession() as http,
        http.ws_connect(sidecar.url + "/ws-record", max_msg_size=0) as ws,
    ):
        await ws.send_bytes(b"x" * _HUGE)  # as a client that writes before it reads
        closed = await ws.receive(timeout=30)
        assert (closed.type, closed.data) == (aiohttp.WSMsgType.CLOSE, 1009)
        assert (await state.ws_closed_by_client.get())[0] == 1009


async def test_an_app_message_far_over_the_bound_gets_a_clean_1009_not_a_reset(
    sidecar_for: SidecarFactory,
) -> None:
    """The other way: an app sending 8 MB gets its `1009` close frame too, and the client
    is told `1009`."""
    seen: asyncio.Queue[int | None] = asyncio.Queue()

    async def huge(request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        try:
            await ws.send_bytes(b"z" * _HUGE)  # as an app that writes before it reads
            message = await ws.receive()
        except ConnectionError:
            await seen.put(None)  # reset: the close frame lost
        else:
            await seen.put(message.data if message.type is aiohttp.WSMsgType.CLOSE else None)
        return ws

    app = web.Application()
    app.router.add_get("/huge", huge)
    async with (
        serving(app) as url,
        sidecar_for(with_app(url, websocket_max_message_bytes=65536)) as sidecar,
        aiohttp.ClientSession() as http,
        http.ws_connect(sidecar.url + "/huge") as ws,
    ):
        closed = await ws.receive(timeout=30)
        assert (closed.type, closed.data) == (aiohttp.WSMsgType.CLOSE, 1009)
        assert await asyncio.wait_for(seen.get(), 30) == 1009


def _websocket_outcomes(metrics: str) -> dict[str, float]:
    return counts(metrics, "sidecar_app_websockets", "sidecar_websocket_outcome")


async def _outcomes(sidecar: Any) -> dict[str, float]:
    async with aiohttp.ClientSession() as http, http.get(sidecar.admin_url + "/metrics") as scrape:
        return _websocket_outcomes(await scrape.text())


class _WebSocketApp:
    """An app whose WebSockets flood the client (`/flood`), read slowly (`/slow`) or never
    (`/deaf`); the close each saw. Its sockets take 4 KiB at a time."""

    def __init__(self) -> None:
        self.closes: asyncio.Queue[tuple[int | None, str]] = asyncio.Queue()
        self.release = asyncio.Event()

    async def flood(self, request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        count = int(request.query.get("count", "0")) or None

        async def send() -> None:
            sent = 0
            with contextlib.suppress(ConnectionError):
                while not ws.closed and (count is None or sent < count):
                    await ws.send_bytes(b"x" * 16384)
                    sent += 1
            if count is not None and not ws.closed:
                await ws.send_str("done")

        sending = asyncio.create_task(send())
        message = await ws.receive()
        await self.closes.put((message.data, str(message.extra)))
        sending.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await sending
        return ws

    async def slow_reader(self, request: web.Request) -> web.WebSocketResponse:
        """Reads nothing for a while, then everything up to a `done`; closes with how many
        bytes it got (as the close reason)."""
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        await asyncio.sleep(1.5)
        received = 0
        async for message in ws:
            if message.type is aiohttp.WSMsgType.TEXT:
                break
            received += len(message.data)
        await ws.close(message=str(received).encode())
        return ws

    async def deaf_socket(self, request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        await self.release.wait()
        return ws

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[str]:
        app = web.Application()
        app.router.add_get("/flood", self.flood)
        app.router.add_get("/deaf", self.deaf_socket)
        app.router.add_get("/slow", self.slow_reader)
        runner = web.AppRunner(app, shutdown_timeout=0.5, access_log=None)
        await runner.setup()
        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
        listener.bind(("127.0.0.1", 0))
        await web.SockSite(runner, listener).start()
        try:
            yield f"http://127.0.0.1:{listener.getsockname()[1]}"
        finally:
            self.release.set()
            await runner.cleanup()


async def _raw_websocket(port: int, path: str) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """A WebSocket handshake from a client with tiny receive buffers that reads only when told."""
    reader, writer = await small_buffered(port)
    key = base64.b64encode(b"0123456789abcdef").decode()
    writer.write(
        f"GET {path} HTTP/1.1\r\nHost: sidecar\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n".encode()
    )
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
    assert head.startswith(b"HTTP/1.1 101 ")
    return reader, writer


async def test_a_websocket_client_that_stops_reading_is_cut_and_the_app_told_1001(
    sidecar_for: SidecarFactory, caplog: pytest.LogCaptureFixture
) -> None:
    """`app.send_timeout_seconds` bounds WebSocket sends as it does HTTP answers: a client
    that takes nothing while the app keeps sending is cut, and the app gets `1001` (going
    away), counted and logged as `client_stalled`."""
    caplog.set_level(logging.INFO)
    app = _WebSocketApp()
    async with (
        app.running() as url,
        sidecar_for(with_app(url, send_timeout_seconds=0.5)) as sidecar,
    ):
        shrink_send_buffers(sidecar)
        reader, writer = await _raw_websocket(sidecar.port, "/flood")
        code, reason = await asyncio.wait_for(app.closes.get(), 20)
        with contextlib.suppress(ConnectionResetError):
            await asyncio.wait_for(reader.read(), 10)  # what was in flight, then the cut
        writer.close()
        outcomes = await _outcomes(sidecar)
    assert (code, reason) == (1001, "the client stopped reading")
    assert outcomes == {"client_stalled": 1}
    logged = [r for r in caplog.records if getattr(r, "event", None) == "websocket_ended"]
    assert [(r.levelno, getattr(r, "outcome", None)) for r in logged] == [
        (logging.WARNING, "client_stalled")
    ]


async def test_shutdown_closes_open_websockets_with_1001_on_both_sides(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A WebSocket still open when the shutdown grace ends is closed properly, as a stream
    gets its final event: client and app each get `1001` (going away) with the reason,
    not a connection cut without a close frame (`1006`, read as the client lost)."""
    caplog.set_level(logging.INFO)
    async with running_app() as (url, state), aiohttp.ClientSession() as http:
        data = {"app": {"url": url}, "server": {"shutdown_grace_seconds": 0.2}}
        server = SidecarServer(loader.validate(loader.deep_merge(BASE, data), {}), env={})
        await server.start()
        try:
            ws = await http.ws_connect(server.url + "/ws-record")
        except BaseException:
            await server.shutdown(grace=0)
            raise
        await server.shutdown()  # the WebSocket outlives the grace
        message = await ws.receive(timeout=10)
        app_saw = await asyncio.wait_for(state.ws_closed_by_client.get(), 10)
    assert (message.type, message.data, message.extra) == (
        aiohttp.WSMsgType.CLOSE,
        1001,
        "the sidecar is shutting down",
    )
    assert app_saw == (1001, "the sidecar is shutting down")
    logged = [r for r in caplog.records if getattr(r, "event", None) == "websocket_ended"]
    assert [getattr(r, "outcome", None) for r in logged] == ["shutting_down"]


async def test_a_slow_websocket_client_that_keeps_reading_is_not_cut(
    sidecar_for: SidecarFactory,
) -> None:
    """A client taking the app's messages more slowly than they come, but taking them, is
    waited for however long the whole takes."""
    app = _WebSocketApp()
    async with (
        app.running() as url,
        sidecar_for(with_app(url, send_timeout_seconds=0.5)) as sidecar,
    ):
        shrink_send_buffers(sidecar)
        reader, writer = await _raw_websocket(sidecar.port, "/flood?count=64")  # 1 MiB
        received = b""
        while not received.endswith(b"done"):
            chunk = await asyncio.wait_for(reader.read(4096), 10)
            assert chunk, "cut"
            received += chunk
            await asyncio.sleep(0.01)  # about 400 KB/s: the 1 MiB takes longer than the timeout
        writer.write(
            b"\x88\x82abcd" + bytes(a ^ b for a, b in zip(b"\x03\xe8", b"ab", strict=True))
        )
        code, _ = await asyncio.wait_for(app.closes.get(), 10)
        writer.close()
        outcomes = await _outcomes(sidecar)
    assert code == 1000
    assert outcomes == {"closed": 1}


async def test_an_app_that_stops_reading_its_websocket_is_cut_and_the_client_told_1011(
    sidecar_for: SidecarFactory,
) -> None:
    """The other way: an app that takes nothing of what the client sends is cut after the
    send timeout, and the client gets `1011` rather than waiting on it for good."""
    app = _WebSocketApp()
    async with (
        app.running() as url,
        sidecar_for(with_app(url, send_timeout_seconds=0.5)) as sidecar,
    ):
        async with aiohttp.ClientSession() as http:
            async with http.ws_connect(sidecar.url + "/deaf") as ws:

                async def flood() -> None:
                    with contextlib.suppress(ConnectionError):
                        while True:
                            await ws.send_bytes(b"y" * 65536)

                sending = asyncio.create_task(flood())
                closed = await ws.receive(timeout=30)
                sending.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await sending

        async def counted() -> bool:  # once the handler has passed the close on
            return await _outcomes(sidecar) == {"app_stalled": 1}

        await eventually(counted)
    assert (closed.type, closed.data, closed.extra) == (
        aiohttp.WSMsgType.CLOSE, 1011, "the app stopped reading"
    )  # fmt: skip


async def test_a_websocket_client_gone_without_a_close_is_passed_on_as_going_away(
    sidecar_for: SidecarFactory,
) -> None:
    """A client whose connection ends without a close frame went away: the app gets `1001`,
    not a `1000` that would say the client closed normally; counted as `client_lost`."""
    async with running_app() as (url, state), sidecar_for(with_app(url)) as sidecar:
        _, writer = await _raw_websocket(sidecar.port, "/ws-record")
        writer.transport.abort()
        seen = await asyncio.wait_for(state.ws_closed_by_client.get(), 10)

        async def counted() -> bool:
            return await _outcomes(sidecar) == {"client_lost": 1}

        await eventually(counted)
    assert seen == (1001, "")


async def test_a_silent_websocket_client_that_answers_no_ping_is_closed_and_the_app_told_1001(
    sidecar_for: SidecarFactory, caplog: pytest.LogCaptureFixture
) -> None:
    """A client gone without a FIN or RST (a network cut, a laptop closed) looks like one that
    is only quiet: nothing is written either way, so without pings both sockets are held for
    good. It is pinged after `app.websocket_ping_seconds` of silence and, answering nothing,
    closed; the app gets `1001` with the reason, counted and logged `client_unresponsive`."""
    caplog.set_level(logging.INFO)
    async with (
        running_app() as (url, state),
        sidecar_for(with_app(url, websocket_ping_seconds=0.2)) as sidecar,
    ):
        reader, writer = await _raw_websocket(sidecar.port, "/ws-record")  # never answers
        seen = await asyncio.wait_for(state.ws_closed_by_client.get(), 10)
        received = await asyncio.wait_for(reader.read(), 10)  # to the sidecar's close
        writer.close()

        async def counted() -> bool:
            return await _outcomes(sidecar) == {"client_unresponsive": 1}

        await eventually(counted)
    assert seen == (1001, "the client stopped answering pings")
    assert received.startswith(b"\x89\x00")  # a Ping, then the connection closed
    logged = [r for r in caplog.records if getattr(r, "event", None) == "websocket_ended"]
    assert [(r.levelno, getattr(r, "outcome", None)) for r in logged] == [
        (logging.WARNING, "client_unresponsive")
    ]


async def test_an_app_that_answers_no_ping_is_closed_and_the_client_told_1011(
    sidecar_for: SidecarFactory,
) -> None:
    """The other way: an app side that answers no ping (its host gone without a RST) is
    closed, and the client gets `1011` with the reason instead of an idle socket for good."""
    app = _WebSocketApp()
    async with (
        app.running() as url,
        sidecar_for(with_app(url, websocket_ping_seconds=0.2)) as sidecar,
    ):
        async with aiohttp.ClientSession() as http, http.ws_connect(sidecar.url + "/deaf") as ws:
            closed = await ws.receive(timeout=30)  # answering the sidecar's pings meanwhile

        async def counted() -> bool:
            return await _outcomes(sidecar) == {"app_unresponsive": 1}

        await eventually(counted)
    assert (closed.type, closed.data, closed.extra) == (
        aiohttp.WSMsgType.CLOSE, 1011, "the app stopped answering pings"
    )  # fmt: skip


async def test_a_quiet_websocket_client_that_answers_pings_is_kept(
    sidecar_for: SidecarFactory,
) -> None:
    """Quiet is not dead: a client that sends no message but answers each ping stays
    connected through many of them, and its close still reaches the app as its own."""
    async with (
        running_app() as (url, state),
        sidecar_for(with_app(url, websocket_ping_seconds=0.2)) as sidecar,
    ):
        reader, writer = await _raw_websocket(sidecar.port, "/ws-record")
        for _ in range(5):
            ping = await asyncio.wait_for(reader.readexactly(2), 10)
            assert ping == b"\x89\x00"
            writer.write(b"\x8a\x80abcd")  # a masked, empty Pong
        writer.write(
            b"\x88\x82abcd" + bytes(a ^ b for a, b in zip(b"\x03\xe8", b"ab", strict=True))
        )
        seen = await asyncio.wait_for(state.ws_closed_by_client.get(), 10)
        writer.close()

        async def counted() -> bool:
            return await _outcomes(sidecar) == {"closed": 1}

        await eventually(counted)
    assert seen == (1000, "")


async def test_a_slow_websocket_client_behind_a_backlog_is_not_taken_for_a_dead_one(
    sidecar_for: SidecarFactory,
) -> None:
    """A client that reads slowly is alive: the sidecar's Ping waits behind the MBs queued
    toward it, so its Pong comes late. While bytes are still queued toward it the Ping is
    not counted as missed: it gets every byte and its own close, outcome `closed`."""
    app = _WebSocketApp()
    count = 256  # 16 KiB each: 4 MiB, more than the client's and the sidecar's buffers
    async with (
        app.running() as url,
        sidecar_for(with_app(url, websocket_ping_seconds=0.2)) as sidecar,
    ):
        reader, writer = await _raw_websocket(sidecar.port, f"/flood?count={count}")
        await asyncio.sleep(1.5)  # several pings' worth of not reading
        received, pings, last = 0, 0, b""
        while last != b"done":
            opcode, last = await asyncio.wait_for(_read_frame(reader), 10)
            assert opcode in (0x1, 0x2, 0x9), (opcode, last)  # no close: the sidecar kept it
            if opcode == 0x9:
                pings += 1
                writer.write(b"\x8a\x80abcd")  # a masked, empty Pong
            elif opcode == 0x2:
                received += len(last)
        writer.write(
            b"\x88\x82abcd" + bytes(a ^ b for a, b in zip(b"\x03\xe8", b"ab", strict=True))
        )
        seen = await asyncio.wait_for(app.closes.get(), 10)
        writer.close()

        async def counted() -> bool:
            return await _outcomes(sidecar) == {"closed": 1}

        await eventually(counted)
    assert received == count * 16384
    assert pings >= 1
    assert seen == (1000, "")


async def _read_frame(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    """One unmasked, unfragmented frame from the sidecar: its opcode and payload."""
    first, second = await reader.readexactly(2)
    length = second & 0x7F
    if length == 126:
        length = int.from_bytes(await reader.readexactly(2))
    elif length == 127:
        length = int.from_bytes(await reader.readexactly(8))
    return first & 0x0F, await reader.readexactly(length)


async def test_a_slow_app_behind_a_backlog_is_not_taken_for_a_dead_one(
    sidecar_for: SidecarFactory,
) -> None:
    """The other way: an app that reads slowly while the client sends MBs gets the sidecar's
    Ping behind them; it is not cut, gets every byte, and its close reaches the client."""
    app = _WebSocketApp()
    count = 256  # 16 KiB each: 4 MiB
    async with (
        app.running() as url,
        sidecar_for(with_app(url, websocket_ping_seconds=0.2)) as sidecar,
        aiohttp.ClientSession() as http,
        http.ws_connect(sidecar.url + "/slow") as ws,
    ):
        closing = asyncio.create_task(ws.receive(timeout=30))  # answering pings meanwhile
        for _ in range(count):
            await ws.send_bytes(b"x" * 16384)
        await ws.send_str("done")
        closed = await closing

        async def counted() -> bool:
            return await _outcomes(sidecar) == {"closed": 1}

        await eventually(counted)
    assert (closed.type, closed.data, closed.extra) == (
        aiohttp.WSMsgType.CLOSE, 1000, str(count * 16384)
    )  # fmt: skip


async def test_an_app_that_takes_none_of_a_backlog_held_by_the_kernel_is_cut(
    sidecar_for: SidecarFactory,
) -> None:
    """Bytes toward the app that left the process for the kernel's send queue are out of the
    stall watch's sight, and keep the app's late Pongs from counting as missed: the kernel's
    `TCP_USER_TIMEOUT` on the app's connection (twice `app.send_timeout_seconds`, as on the
    client's) cuts an app that takes none of them, and the client gets `1011`."""
    app = _WebSocketApp()
    async with (
        app.running() as url,
        sidecar_for(with_app(url, websocket_ping_seconds=0.2, send_timeout_seconds=0.5)) as sidecar,
        aiohttp.ClientSession() as http,
        http.ws_connect(sidecar.url + "/deaf") as ws,
    ):
        for _ in range(16):  # past what the app takes in, within the kernel's send queue
            await ws.send_bytes(b"x" * 65536)
        closed = await ws.receive(timeout=10)  # answering the sidecar's pings meanwhile

        async def counted() -> bool:
            return await _outcomes(sidecar) == {"app_lost": 1}

        await eventually(counted)
    assert (closed.type, closed.data) == (aiohttp.WSMsgType.CLOSE, 1011)
