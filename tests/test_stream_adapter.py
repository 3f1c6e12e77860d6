"""Contract test: what the push-mode relay borrows from aiohttp still works on this aiohttp.

If one of these fails after an aiohttp upgrade, `sidecar/stream/adapter.py` needs
adapting (and the pin in pyproject.toml moving) before the relay can trust it.
"""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import AsyncIterator, Awaitable, Callable

import aiohttp
import pytest
from aiohttp import web
from aiohttp.streams import StreamReader
from yarl import URL

from sidecar.stream import adapter
from tests.support.sockets import dechunk, free_port

Script = Callable[[asyncio.StreamWriter], Awaitable[None]]
HEAD = b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n"


def chunk(data: bytes) -> bytes:
    return b"%x\r\n%b\r\n" % (len(data), data)


class Collect:
    """A sink recording what the parser pushes."""

    def __init__(self) -> None:
        self.data = bytearray()
        self.ends: list[BaseException | None] = []
        self.ended = asyncio.Event()

    def on_data(self, chunk: bytes) -> None:
        self.data += chunk

    def on_end(self, error: BaseException | None) -> None:
        self.ends.append(error)
        self.ended.set()


async def raw_server(script: Script) -> tuple[asyncio.Server, str]:
    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        await script(writer)

    server = await asyncio.start_server(serve, "127.0.0.1", free_port())
    port = server.sockets[0].getsockname()[1]
    return server, f"http://127.0.0.1:{port}/"


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(auto_decompress=False) as session:
        yield session


def test_stream_reader_can_switch_class_in_place() -> None:
    # `_PushReader` adds no slots, so a live reader can become one; the parser-facing
    # methods it overrides keep the signatures the parser calls them with.
    assert adapter._PushReader.__slots__ == ()
    assert "__slots__" in vars(StreamReader)  # same layout: the swap needs no new fields
    for name in ("feed_data", "feed_eof", "set_exception", "begin_http_chunk_receiving",
                 "end_http_chunk_receiving", "read_nowait", "exception", "is_eof"):  # fmt: skip
        assert callable(getattr(StreamReader, name)), name
    assert list(inspect.signature(StreamReader.feed_data).parameters)[:2] == ["self", "data"]
    assert list(inspect.signature(StreamReader.set_exception).parameters)[:2] == ["self", "exc"]


async def test_push_mode_hands_every_chunk_to_the_sink_and_releases_the_connection(
    http: aiohttp.ClientSession,
) -> None:
    go_on = asyncio.Event()

    async def script(writer: asyncio.StreamWriter) -> None:
        writer.write(HEAD + chunk(b"first\n\n"))
        await writer.drain()
        await go_on.wait()
        for i in range(20):
            writer.write(chunk(b"event %d\n\n" % i))
            await writer.drain()
        writer.write(b"0\r\n\r\n")
        await writer.drain()

    server, url = await raw_server(script)
    async with server:
        response = await http.get(url)
        sink = Collect()
        await asyncio.sleep(0.05)
        buffered = adapter.take_buffered(response)
        adapter.start_push(response, sink)
        assert adapter.pushing(response)
        assert type(response.content) is adapter._PushReader
        go_on.set()
        await asyncio.wait_for(sink.ended.wait(), 10)
        assert sink.ends == [None]
        assert buffered + bytes(sink.data) == b"first\n\n" + b"".join(
            b"event %d\n\n" % i for i in range(20)
        )
        assert not adapter.pushing(response)  # let go at the end
        response.close()


async def test_a_pushing_response_holds_no_head_and_no_queue_until_let_go(
    http: aiohttp.ClientSession,
) -> None:
    go_on = asyncio.Event()

    async def script(writer: asyncio.StreamWriter) -> None:
        writer.write(HEAD + chunk(b"first\n\n"))
        await writer.drain()
        await go_on.wait()
        writer.write(chunk(b"later\n\n") + b"0\r\n\r\n")
        await writer.drain()

    server, url = await raw_server(script)
    async with server:
        response = await http.get(url, headers={"X-Sent": "yes"})
        assert response.headers["Content-Type"] == "text/event-stream"
        await asyncio.sleep(0.05)
        assert adapter.take_buffered(response) == b"first\n\n"
        reader = response.content
        own_queue = reader._buffer
        adapter.start_push(response, Collect())
        # What aiohttp keeps for the response's life, dropped: the head, the request's
        # headers, the chunk offsets; the body queue is the shared empty one.
        assert len(response.headers) == 0
        assert response.raw_headers == ()
        assert len(response.request_info.headers) == 0
        assert response.request_info.url == URL(url)
        assert reader._http_chunk_splits is None
        assert reader._buffer is not own_queue
        assert not reader._buffer
        with pytest.raises(RuntimeError):
            reader._buffer.append(b"never")
        # Let go before the body ends: aiohttp buffers the rest in a queue of the reader's own.
        adapter.stop_push(response)
        go_on.set()
        assert await asyncio.wait_for(reader.read(), 10) == b"later\n\n"
        response.close()


async def test_pause_and_resume_reading_and_the_broken_framing_probe(
    http: aiohttp.ClientSession,
) -> None:
    async def script(writer: asyncio.StreamWriter) -> None:
        writer.write(HEAD + chunk(b"ok\n\n"))
        await writer.drain()
        await asyncio.sleep(0.1)
        writer.write(b"zz-not-hex\r\nbroken\r\n")  # broken chunked framing
        await writer.drain()
        await asyncio.sleep(5)

    server, url = await raw_server(script)
    async with server:
        response = await http.get(url)
        connection = response.connection
        assert connection is not None
        assert connection.protocol is not None
        adapter.pause_upstream(response)
        assert connection.protocol._reading_paused  # what pause_reading sets
        adapter.resume_upstream(response)
        assert not connection.protocol._reading_paused
        sink = Collect()
        adapter.take_buffered(response)
        adapter.start_push(response, sink)

        async def broken() -> bool:
            return adapter.upstream_broken(response) is not None or bool(sink.ends)

        for _ in range(200):
            if await broken():
                break
            await asyncio.sleep(0.025)
        # Either the reader is told, or the protocol remembers it: the relay checks both.
        assert await broken()
        response.close()


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
        await channel.end()
        return response

    app = web.Application()
    app.router.add_get("/", handler)
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    site = web.TCPSite(runner, "127.0.0.1", port)
    await site.start()
    try:
        async with http.get(f"http://127.0.0.1:{port}/") as response:
            body = await response.read()
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        raw = await reader.read()
        writer.close()
    finally:
        await runner.cleanup()
    assert body == b"data: 1\n\ndata: 2\n\ndata: 3\n\n"
    assert seen["chunked"] == "chunked"  # prepare() chose chunked framing, as relied on
    # prepare() serialised the head: the emptied header map still went out whole.
    assert seen["headers_held"] == 0
    assert isinstance(seen["buffered"], int)
    assert seen["closing"] is False
    head, _, payload = raw.partition(b"\r\n\r\n")
    assert b"transfer-encoding: chunked" in head.lower()
    assert b"\r\nx-probe: kept" in head.lower()
    assert payload.endswith(b"0\r\n\r\n")  # aiohttp's own terminating chunk
    assert dechunk(payload) == body
