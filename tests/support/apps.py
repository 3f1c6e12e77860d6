"""Upstream apps for tests: serve any aiohttp app on a free port, and a stock app whose
handlers exercise the app proxy (echo, upload, SSE, WebSocket, hop-by-hop headers, slow)."""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import time
from collections.abc import AsyncIterator, Mapping
from typing import Any

import aiohttp
from aiohttp import web


@contextlib.asynccontextmanager
async def serving(
    app: web.Application, *, shutdown_timeout: float = 0.5, auto_decompress: bool = True
) -> AsyncIterator[str]:
    """Serve an aiohttp app on a free loopback port; yields its base URL.

    `auto_decompress=False` hands handlers the request bodies' raw bytes.
    """
    runner = web.AppRunner(
        app, shutdown_timeout=shutdown_timeout, auto_decompress=auto_decompress, access_log=None
    )
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    address: Any = runner.addresses[0]
    try:
        yield f"http://127.0.0.1:{address[1]}"
    finally:
        await runner.cleanup()


class AppState:
    """What the stock app saw: upload progress, SSE write times, WebSocket closes by the client."""

    def __init__(self) -> None:
        self.first_upload_bytes = asyncio.Event()
        self.sse_sent: list[float] = []
        self.ws_closed_by_client: asyncio.Queue[tuple[int, str]] = asyncio.Queue()


STATE = web.AppKey("state", AppState)


async def echo(request: web.Request) -> web.Response:
    """The request as the app saw it; headers as pairs, so two spellings of a name both show."""
    return web.json_response({"headers": list(request.headers.items()),
                              "path_qs": request.path_qs, "method": request.method})  # fmt: skip


def echoed_headers(answer: Mapping[str, Any]) -> dict[str, str]:
    """The headers in an `/echo` answer by lower-case name."""
    return {name.lower(): value for name, value in answer["headers"]}


async def upload(request: web.Request) -> web.Response:
    """Count the body's bytes and reads; the first bytes set `first_upload_bytes`."""
    state = request.app[STATE]
    total = 0
    chunks = 0
    async for chunk in request.content.iter_any():
        total += len(chunk)
        chunks += 1
        state.first_upload_bytes.set()
    return web.json_response({"bytes": total, "chunks": chunks})


async def sse(request: web.Request) -> web.StreamResponse:
    """Five SSE events 50 ms apart, each write time kept in `sse_sent`."""
    state = request.app[STATE]
    response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
    await response.prepare(request)
    for i in range(5):
        await response.write(f"data: {i}\n\n".encode())
        state.sse_sent.append(time.monotonic())
        await asyncio.sleep(0.05)
    await response.write_eof()
    return response


async def websocket(request: web.Request) -> web.WebSocketResponse:
    """Echo text with an `echo:` prefix and binary reversed (subprotocol `chat`)."""
    ws = web.WebSocketResponse(protocols=["chat"])
    await ws.prepare(request)
    async for message in ws:
        if message.type == aiohttp.WSMsgType.TEXT:
            await ws.send_str("echo:" + message.data)
        elif message.type == aiohttp.WSMsgType.BINARY:
            await ws.send_bytes(message.data[::-1])
    return ws


async def closing_ws(request: web.Request) -> web.WebSocketResponse:
    """Close with code 4001 after the first message."""
    ws = web.WebSocketResponse()
    await ws.prepare(request)
    await ws.receive()
    await ws.close(code=4001, message=b"not allowed")
    return ws


async def recording_ws(request: web.Request) -> web.WebSocketResponse:
    """Record the close code and reason the client sends."""
    ws = web.WebSocketResponse()
    await ws.prepare(request)
    message = await ws.receive()
    await request.app[STATE].ws_closed_by_client.put((int(message.data), str(message.extra)))
    return ws


async def forbidden_ws(request: web.Request) -> web.Response:
    """Refuse the WebSocket handshake with a 403."""
    return web.json_response({"error": "log in first"}, status=403)


async def hop_headers(request: web.Request) -> web.Response:
    """An answer carrying hop-by-hop headers (named in `Connection` too)."""
    return web.Response(
        text="ok",
        headers={"Connection": "close, X-Private", "X-Private": "secret", "Keep-Alive": "timeout=5",
                 "X-Kept": "yes"},
    )  # fmt: skip


async def no_content(request: web.Request) -> web.Response:
    """An empty answer with the status in `?status=` (204 by default)."""
    return web.Response(status=int(request.query.get("status", "204")))


async def head_me(request: web.Request) -> web.Response:
    """A 100-byte body, for HEAD against GET."""
    return web.Response(body=b"x" * 100, content_type="text/plain")


async def permissive_cors(request: web.Request) -> web.Response:
    """An app that reflects any origin with credentials (the sidecar must not)."""
    origin = request.headers.get("Origin", "*")
    headers = {"Access-Control-Allow-Origin": origin, "Access-Control-Allow-Credentials": "true"}
    return web.Response(text="private", headers=headers)


async def slow(request: web.Request) -> web.Response:
    """Answer after 5 s (past the proxy's read timeout in the tests)."""
    await asyncio.sleep(5)
    return web.Response(text="late")


async def gzipped(request: web.Request) -> web.Response:
    """A gzip-encoded body, to pass through untouched."""
    return web.Response(body=gzip.compress(b"hello " * 100), headers={"Content-Encoding": "gzip"},
                        content_type="text/plain")  # fmt: skip


async def in_flight(request: web.Request) -> web.Response:
    """Answer after 0.5 s (a request still in flight when draining starts)."""
    await asyncio.sleep(0.5)
    return web.Response(text="finished")


async def large(request: web.Request) -> web.Response:
    """8 MB of text: more than any socket and queue between the app and a client hold."""
    return web.Response(body=b"x" * (8 << 20), content_type="text/plain")


GET_ROUTES = {
    "/sse": sse, "/ws": websocket, "/ws-close": closing_ws, "/ws-record": recording_ws,
    "/ws-forbidden": forbidden_ws, "/hop": hop_headers, "/empty": no_content, "/head": head_me,
    "/cors": permissive_cors, "/slow": slow, "/gzip": gzipped, "/inflight": in_flight,
    "/large": large,
}  # fmt: skip


@contextlib.asynccontextmanager
async def running_app() -> AsyncIterator[tuple[str, AppState]]:
    """The stock upstream app on a free port: its base URL and what it saw."""
    app = web.Application()
    state = AppState()
    app[STATE] = state
    app.router.add_route("*", "/echo{tail:.*}", echo)
    app.router.add_post("/upload", upload)
    app.router.add_routes([web.get(path, handler) for path, handler in GET_ROUTES.items()])
    async with serving(app) as url:
        yield url, state


def with_app(url: str, **app: Any) -> dict[str, Any]:
    """Config overrides for an app route to `url`: a 1 s read timeout, 1 KiB request bodies,
    and any other `app` keys given."""
    return {"app": {"url": url, "read_timeout_seconds": 1, **app},
            "server": {"max_body_bytes": 1024}}  # fmt: skip
