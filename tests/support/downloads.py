"""A Claude that serves one large file download in pieces, for the forwarded-body tests:
what it sent, when it finished, and whether the sidecar closed its connection are told."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field

from tests.support.sockets import peer_may_leave

PIECE = 64 * 1024
FILE_PATH = "/v1/files/file_011CNha8iCJcU1wXNR6q4V8w/content"


def file_bytes(size: int) -> bytes:
    """`size` bytes that no shift or repeat of a piece could pass for (not one byte over)."""
    block = bytes((i * 7 + i // 256) % 251 for i in range(PIECE + 13))
    return (block * (size // len(block) + 1))[:size]


@dataclass
class Download:
    """One served download's progress, as Claude's side sees it."""

    body: bytes
    # Run (awaited) after each piece is written and drained, with the bytes sent so far.
    between: Callable[[Download], Awaitable[None]] | None = None
    head: bytes = b""  # extra header lines, each ending in CRLF
    sent: int = 0
    finished: asyncio.Event = field(default_factory=asyncio.Event)  # the last byte went out
    closed: asyncio.Event = field(default_factory=asyncio.Event)  # the sidecar hung up


@contextlib.asynccontextmanager
async def serving(download: Download) -> AsyncIterator[str]:
    """A Claude answering one request with `download` (a 200 with its length); its URL."""

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(ConnectionError, asyncio.IncompleteReadError):
            await reader.readuntil(b"\r\n\r\n")
            watch = asyncio.ensure_future(_hang_up(reader, download))
            try:
                with peer_may_leave(writer):
                    writer.write(
                        b"HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\n"
                        + download.head
                        + b"Content-Length: %d\r\n\r\n" % len(download.body)
                    )
                    body = memoryview(download.body)
                    while download.sent < len(body) and not download.closed.is_set():
                        writer.write(body[download.sent : download.sent + PIECE])
                        await writer.drain()
                        download.sent = min(download.sent + PIECE, len(body))
                        if download.between is not None and download.sent < len(body):
                            await download.between(download)
                    if download.sent == len(body):
                        download.finished.set()
                    await download.closed.wait()
            finally:
                watch.cancel()
        writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    try:
        yield f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"
    finally:
        server.close()


async def _hang_up(reader: asyncio.StreamReader, download: Download) -> None:
    """Set `closed` once the sidecar ends the connection (it sends no other request)."""
    with contextlib.suppress(ConnectionError):
        await reader.read()
    download.closed.set()
