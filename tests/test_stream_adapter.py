"""Contract test: what the relay borrows from aiohttp's server still works on this aiohttp.

If one of these fails after an aiohttp upgrade, `sidecar/stream/adapter.py` needs
adapting (and the pin in pyproject.toml moving) before the relay can trust it.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from sidecar.stream import adapter
from tests.support.sockets import dechunk, free_port

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(auto_decompress=False) as session:
        yield session


@contextlib.asynccontextmanager
async def serving(handler: Handler) -> AsyncIterator[int]:
    """`handler` on `GET /` of a loopback aiohttp server; yields its port."""
    app = web.Application()
    app.router.add_get("/", handler)
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        yield port
    finally:
        await runner.cleanup()


async def test_client_channel_frames_chunks_by_hand_and_aiohttp_ends_them(
    http: aiohttp.ClientSession,
) -> None:
    seen: dict[str, object] = {}

    async def handler(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(
            headers={"Content-Type": "text/event-stream", "X-Probe": "kept"}
        )
        await response.prepare(request)
        seen["chunked"] = response.headers.get("Transfer-Encoding")
        channel = adapter.ClientChannel(request, response)
        seen["headers_held"] = len(response.headers)
        await channel.write_with_headers(b"data: 1\n\n")
        channel.write(b"data: 2\n\n")
        channel.write(b"data: 3\n\n")
        seen["buffered"] = channel.buffered()
        await channel.drain()
        seen["closing"] = channel.closing()
        seen["loop"] = channel.loop is asyncio.get_running_loop()  # read from aiohttp's writer
        await channel.end()
        return response

    async with serving(handler) as port:
        async with http.get(f"http://127.0.0.1:{port}/") as response:
            body = await response.read()
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        raw = await reader.read()
        writer.close()
    assert body == b"data: 1\n\ndata: 2\n\ndata: 3\n\n"
    assert seen["chunked"] == "chunked"  # prepare() chose chunked framing, as relied on
    # prepare() serialised the head: the emptied header map still went out whole.
    assert seen["headers_held"] == 0
    assert isinstance(seen["buffered"], int)
    assert seen["closing"] is False
    assert seen["loop"] is True
    head, _, payload = raw.partition(b"\r\n\r\n")
    assert b"transfer-encoding: chunked" in head.lower()
    assert b"\r\nx-probe: kept" in head.lower()
    assert payload.endswith(b"0\r\n\r\n")  # aiohttp's own terminating chunk
    assert dechunk(payload) == body


@pytest.mark.parametrize("started", [True, False], ids=["after-data", "nothing-sent-yet"])
async def test_the_end_leaves_in_one_send_with_the_last_bytes(
    http: aiohttp.ClientSession, started: bool
) -> None:
    sends: list[int] = []

    async def handler(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        channel = adapter.ClientChannel(request, response)
        if started:
            await channel.write_with_headers(b"data: 1\n\n")
        transport = request.transport
        assert transport is not None
        write, writelines = transport.write, transport.writelines

        def counted_write(data: bytes | bytearray | memoryview) -> None:
            sends.append(1)
            write(data)

        def counted_writelines(data: Iterable[bytes | bytearray | memoryview[Any]]) -> None:
            sends.append(1)
            writelines(data)

        transport.write = counted_write  # type: ignore[method-assign]
        transport.writelines = counted_writelines  # type: ignore[method-assign,assignment]
        channel.finish(b"data: last\n\n")
        channel.finish(b"data: final\n\n")
        await channel.end()
        return response

    async with serving(handler) as port, http.get(f"http://127.0.0.1:{port}/") as response:
        body = await response.read()
    assert body == (b"data: 1\n\n" if started else b"") + b"data: last\n\ndata: final\n\n"
    assert sends == [1]  # the last bytes, the last chunk (and the headers): one send


@pytest.mark.parametrize("first", [b"data: 1\n\n", b""], ids=["with-data", "head-only"])
async def test_an_sse_response_sends_its_head_with_the_first_write(
    http: aiohttp.ClientSession, first: bytes
) -> None:
    sends: list[bytes] = []

    async def handler(request: web.Request) -> web.StreamResponse:
        transport = request.transport
        assert transport is not None
        write, writelines = transport.write, transport.writelines

        def counted_write(data: bytes | bytearray | memoryview) -> None:
            sends.append(bytes(data))
            write(data)

        def counted_writelines(data: Iterable[bytes | bytearray | memoryview[Any]]) -> None:
            sends.append(b"".join(data))
            writelines(data)

        transport.write = counted_write  # type: ignore[method-assign]
        transport.writelines = counted_writelines  # type: ignore[method-assign,assignment]
        response = adapter.SSEResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        assert sends == []  # the head waits for the first bytes
        channel = adapter.ClientChannel(request, response)
        await channel.write_with_headers(first)
        assert len(sends) == 1
        channel.write(b"data: 2\n\n")
        await channel.end()
        return response

    async with serving(handler) as port, http.get(f"http://127.0.0.1:{port}/") as response:
        assert response.headers["Transfer-Encoding"] == "chunked"
        body = await response.read()
    assert body == first + b"data: 2\n\n"
    head, _, payload = sends[0].partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 OK\r\n")
    assert dechunk(payload) == first  # the head and the first bytes: one send
    assert len(sends) == 3  # then the second write, then the last chunk
