"""What the relay borrows from aiohttp's server internals, in one room.

aiohttp has no public API for what the hot path needs on the client's side, so these
few functions use its private parts, and nothing else in the sidecar does (Claude's side
is `sidecar.http_client`, which needs none):

- **the client side**: bytes go to `request.transport` in one `write`, framed as HTTP/1.1
  chunks by hand when aiohttp chose chunked encoding in `prepare()`; `request.writer`
  drains it; aiohttp still writes the terminating chunk in `write_eof`. `prepare()`
  serialises the head at once, so the response's header map is emptied after it, and
  the request body's reader (read to its end) gets the shared empty queue.
- **the head**: an `SSEResponse` keeps its serialised head in aiohttp's writer until the
  first write through the response (`write_with_headers`, or `end`), which sends both in
  one send. aiohttp's `StreamResponse` would send the head alone at `prepare()`: one
  more send, and one more packet, per stream.

`tests/test_stream_adapter.py` checks each of these against the installed aiohttp, and
pyproject pins aiohttp to the minor versions that test passed on.
"""

from __future__ import annotations

import asyncio
import collections
from collections.abc import Iterable
from typing import Any, Final

from aiohttp import web
from aiohttp.streams import StreamReader

HIGH_WATER: Final = 256 * 1024  # bytes queued for a slow client before Claude is paused


class _Unbuffered(collections.deque[bytes]):
    """The body queue of every finished request body: one, shared, and never holding a byte.

    A reader's own queue (~760 bytes) would stay empty for its stream's whole life;
    anything that tried to queue here would fail loudly rather than mix streams.
    """

    __slots__ = ()

    def append(self, data: bytes) -> None:
        raise RuntimeError("a finished body queues nothing")

    def appendleft(self, data: bytes) -> None:
        raise RuntimeError("a finished body queues nothing")

    def extend(self, data: Iterable[bytes]) -> None:
        raise RuntimeError("a finished body queues nothing")


_UNBUFFERED: Final = _Unbuffered()


# --------------------------------------------------------------------------- client side


class SSEResponse(web.StreamResponse):
    """A `StreamResponse` whose head leaves with its first bytes, not alone at `prepare()`.

    Nothing may reach the transport past the response before that first write
    (`ClientChannel.write_with_headers` or `end`): bytes written straight to the socket
    would overtake the head. The relay's subscribers collect until then.
    """

    _send_headers_immediately = False  # aiohttp's switch (its `web.Response` sets it too)


class ClientChannel:
    """The client's end of one prepared SSE response: one `write` per send, framed by hand."""

    __slots__ = ("_chunked", "_tail", "_transport", "_writer", "response")

    def __init__(self, request: web.Request, response: web.StreamResponse) -> None:
        transport = request.transport
        if transport is None:
            raise ConnectionResetError("client went away")
        self._transport = transport
        self._writer = request.writer
        self.response = response
        self._tail = b""  # bytes that leave with the end (`finish`)
        headers = response.headers
        # aiohttp picks chunked framing in prepare() for HTTP/1.1 without a length.
        self._chunked = headers.get("Transfer-Encoding", "").lower() == "chunked"
        # prepare() serialised the head (it leaves with the first write): the header map
        # is not read again, and an open stream need not hold it for its whole life.
        headers.clear()
        body = request.content  # read to its end before a stream starts
        if type(body) is StreamReader and body.is_eof() and not body._buffer:
            body._buffer = _UNBUFFERED  # nothing more comes: its own empty queue is let go

    def write(self, data: bytes) -> None:
        """Frame and write in one call (HTTP/1.1 chunked or raw); never waits."""
        if self._chunked:
            data = b"%x\r\n%b\r\n" % (len(data), data)
        self._transport.write(data)

    def send(self, data: bytes) -> bool:
        """The hot path's write: skipped for a client that is gone; True past the high-water
        mark (the caller pauses Claude). One call per event per client."""
        transport = self._transport
        if transport.is_closing():
            return False  # gone: its handler detaches it
        if self._chunked:
            data = b"%x\r\n%b\r\n" % (len(data), data)
        transport.write(data)
        return transport.get_write_buffer_size() > HIGH_WATER

    async def write_with_headers(self, data: bytes) -> None:
        """The first write: aiohttp sends the status line and headers with these bytes."""
        await self.response.write(data)

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        """The loop the response is written on (known here: looking the running loop up
        costs a `getpid()` system call on Python 3.11)."""
        writer: Any = self._writer  # aiohttp's `StreamWriter` keeps its loop
        loop: asyncio.AbstractEventLoop = writer.loop
        return loop

    def closing(self) -> bool:
        return self._transport.is_closing()

    def buffered(self) -> int:
        """Bytes queued for the client (not yet taken by its socket)."""
        return self._transport.get_write_buffer_size()

    async def drain(self) -> None:
        """Wait until the client has taken what is queued; raises if it went away."""
        await self._writer.drain()

    def abort(self) -> None:
        """Cut the connection now, dropping what is queued (a client that stopped reading)."""
        self._transport.abort()

    def finish(self, data: bytes) -> None:
        """Bytes that leave with the end: `end` writes them and the last chunk in one send."""
        self._tail += data

    async def end(self) -> None:
        """The last chunk (aiohttp writes it, with `finish`'s bytes, and the headers if not
        sent yet: one send), unless the client is gone."""
        if not self._transport.is_closing():
            tail, self._tail = self._tail, b""
            await self.response.write_eof(tail)


def retrieve(task: asyncio.Future[None]) -> None:
    """Done callback that marks a future's exception as seen (it is raised where awaited)."""
    if not task.cancelled():
        task.exception()
