"""A scripted HTTP/1.1 server on raw sockets: the tests decide every byte it answers."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field

from tests.support.sockets import peer_may_leave

SSE_HEAD = (
    b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n"
)


def chunk(data: bytes) -> bytes:
    """`data` as one HTTP/1.1 chunk."""
    return b"%x\r\n%b\r\n" % (len(data), data)


@dataclass
class Exchange:
    """One request the server read (head and body) and the connection it came on."""

    head: bytes
    body: bytes
    connection: int
    writer: asyncio.StreamWriter


Script = Callable[[Exchange], Awaitable[None]]


@dataclass
class RawServer:
    """What a scripted server saw: every request, in order, and how many connections."""

    url: str
    exchanges: list[Exchange] = field(default_factory=list)
    connections: int = 0


async def _read_request(reader: asyncio.StreamReader) -> tuple[bytes, bytes] | None:
    try:
        head = await reader.readuntil(b"\r\n\r\n")
    except (asyncio.IncompleteReadError, ConnectionError):
        return None
    length = 0
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
    body = await reader.readexactly(length) if length else b""
    return head, body


@contextlib.asynccontextmanager
async def raw_server(script: Script, *, keep_open: bool = True) -> AsyncIterator[RawServer]:
    """Serve on a free loopback port: each request read goes to `script`, which writes the
    answer on `exchange.writer`. The connection stays open for more requests unless
    `keep_open` is False or the script closed it."""
    seen = RawServer(url="")
    writers: list[asyncio.StreamWriter] = []

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writers.append(writer)
        seen.connections += 1
        number = seen.connections
        try:
            while True:
                request = await _read_request(reader)
                if request is None:
                    break
                exchange = Exchange(request[0], request[1], number, writer)
                seen.exchanges.append(exchange)
                with peer_may_leave(writer):
                    await script(exchange)
                if not keep_open or writer.is_closing():
                    break
        except (ConnectionError, asyncio.CancelledError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    seen.url = f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"
    try:
        yield seen
    finally:
        server.close()
        for writer in writers:  # connections left open by the client end with the server
            writer.close()
        await asyncio.sleep(0)
