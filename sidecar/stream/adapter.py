"""What the push-mode relay borrows from aiohttp's internals, in one room.

aiohttp has no public API for what the hot path needs, so these few functions use its
private parts, and nothing else in the sidecar does:

- **push mode**: the upstream body reader's class is switched to `_PushReader`, whose
  `feed_data` hands each chunk to a sink inside the socket's read callback (no task
  wakes up per event);
- **a lean open stream**: once pushing, the response lets go of what only its head
  needed (parsed and raw headers, the request's headers) and the reader of its queues
  (chunk offsets; the body queue becomes one shared, always-empty queue), so a quiet
  open stream holds its connection and little else;
- **flow control**: pausing and resuming reads on the upstream connection's protocol;
- **the broken-framing probe**: aiohttp's client protocol remembers a payload error that
  its parser swallowed (the body reader never hears of it);
- **the client side**: bytes go to `request.transport` in one `write`, framed as HTTP/1.1
  chunks by hand when aiohttp chose chunked encoding in `prepare()`; `request.writer`
  drains it; aiohttp still writes the terminating chunk in `write_eof`. `prepare()`
  serialises the head at once, so the response's header map is emptied after it, and
  the request body's reader (read to its end) gets the shared empty queue.

`tests/test_stream_adapter.py` checks each of these against the installed aiohttp, and
pyproject pins aiohttp to the minor versions that test passed on.
"""

from __future__ import annotations

import asyncio
import collections
from collections.abc import Iterable
from typing import Final, Protocol

import aiohttp
from aiohttp import web
from aiohttp.client_reqrep import RequestInfo
from aiohttp.streams import StreamReader
from multidict import CIMultiDict, CIMultiDictProxy


class Sink(Protocol):
    """Receives an upstream body in push mode (called from the socket's read callback)."""

    def on_data(self, chunk: bytes) -> None: ...

    def on_end(self, error: BaseException | None) -> None: ...


HIGH_WATER: Final = 256 * 1024  # bytes queued for a slow client before Claude is paused

# The sink each push-mode reader feeds. Keyed by the reader, so nothing is attached to
# aiohttp's objects; an entry lives exactly as long as its relay.
_SINKS: dict[StreamReader, Sink] = {}
_NO_HEADERS: Final = CIMultiDictProxy(CIMultiDict[str]())


class _Unbuffered(collections.deque[bytes]):
    """The body queue of every reader in push mode: one, shared, and never holding a byte.

    A reader's own queue (~760 bytes) would stay empty for its stream's whole life;
    anything that tried to queue here would fail loudly rather than mix streams.
    """

    __slots__ = ()

    def append(self, data: bytes) -> None:
        raise RuntimeError("a reader in push mode queues nothing")

    def appendleft(self, data: bytes) -> None:
        raise RuntimeError("a reader in push mode queues nothing")

    def extend(self, data: Iterable[bytes]) -> None:
        raise RuntimeError("a reader in push mode queues nothing")


_UNBUFFERED: Final = _Unbuffered()


class _PushReader(StreamReader):
    """aiohttp's body reader, inside out: what the parser feeds goes to the sink at once.

    Same layout as `StreamReader` (no new slots), so a live reader can switch class.
    The parser calls these from the upstream protocol's `data_received`.
    """

    __slots__ = ()

    def feed_data(self, data: bytes, size: int = 0) -> bool:
        sink = _SINKS.get(self)
        if sink is None:  # the relay has let go (its stream is over): keep what comes, as usual
            _own_buffer(self)
            return super().feed_data(data, size)
        sink.on_data(data)
        return False  # nothing held back: the parser need not call again

    def begin_http_chunk_receiving(self) -> None:
        return None  # chunk offsets are kept for readers; nothing reads here

    def end_http_chunk_receiving(self) -> None:
        return None

    def feed_eof(self) -> None:
        sink = _SINKS.pop(self, None)
        super().feed_eof()  # runs aiohttp's end-of-body callbacks: the connection goes back
        if sink is not None:
            sink.on_end(None)

    def set_exception(self, exc: BaseException, *cause: BaseException) -> None:
        super().set_exception(exc, *cause)
        sink = _SINKS.pop(self, None)
        if sink is not None:
            sink.on_end(exc)


# --------------------------------------------------------------------------- upstream side


def take_buffered(upstream: aiohttp.ClientResponse) -> bytes:
    """What aiohttp's body reader already holds (before push mode starts)."""
    reader = upstream.content
    return b"" if reader.exception() is not None else reader.read_nowait()


def start_push(upstream: aiohttp.ClientResponse, sink: Sink) -> None:
    """Hand the rest of the body to `sink` as it arrives; ends it at once if already over.

    The head was read and copied before: the response drops it (`upstream.headers` is
    empty from here on), so an open stream does not hold it for its whole life.
    """
    _drop_head(upstream)
    reader = upstream.content
    failed = reader.exception()
    if failed is not None:
        sink.on_end(failed)
    elif reader.is_eof():
        sink.on_end(None)
    else:
        _SINKS[reader] = sink
        reader.__class__ = _PushReader
        reader._http_chunk_splits = None  # chunk offsets serve `readchunk`; nothing reads here
        if not reader._buffer:  # emptied by `take_buffered`: nothing is queued from here on
            reader._buffer = _UNBUFFERED


def _own_buffer(reader: StreamReader) -> None:
    """Give a reader that leaves push mode a queue of its own again."""
    if reader._buffer is _UNBUFFERED:
        reader._buffer = collections.deque()


def _drop_head(upstream: aiohttp.ClientResponse) -> None:
    # aiohttp keeps the parsed headers, their raw bytes and the request's headers (in
    # `request_info`) as long as the response lives; `request_info` stays valid, headerless.
    upstream._headers = _NO_HEADERS
    upstream._raw_headers = ()
    upstream._cache.clear()  # the reified `headers`, `raw_headers`
    info = upstream._request_info
    upstream._request_info = RequestInfo(info.url, info.method, _NO_HEADERS, info.real_url)


def stop_push(upstream: aiohttp.ClientResponse) -> None:
    """Let go of the body: later bytes are buffered by aiohttp as usual."""
    _SINKS.pop(upstream.content, None)
    _own_buffer(upstream.content)


def pushing(upstream: aiohttp.ClientResponse) -> bool:
    """Whether the body is in push mode (tests)."""
    return upstream.content in _SINKS


def pause_upstream(upstream: aiohttp.ClientResponse) -> None:
    """Stop reading Claude's socket (a slow client); the kernel's window then pushes back."""
    connection = upstream.connection
    if connection is not None and connection.protocol is not None:
        connection.protocol.pause_reading()


def resume_upstream(upstream: aiohttp.ClientResponse) -> None:
    """Read Claude's socket again; the parser relays what it held back at once."""
    connection = upstream.connection
    if connection is not None and connection.protocol is not None:
        connection.protocol.resume_reading()


def upstream_broken(upstream: aiohttp.ClientResponse) -> BaseException | None:
    """A framing error aiohttp's parser met on Claude's body (it drops the reader silently)."""
    connection = upstream.connection
    protocol = connection.protocol if connection is not None else None  # falsy when empty
    return protocol.exception() if protocol is not None else None


# --------------------------------------------------------------------------- client side


class ClientChannel:
    """The client's end of one prepared SSE response: one `write` per send, framed by hand."""

    __slots__ = ("_chunked", "_transport", "_writer", "response")

    def __init__(self, request: web.Request, response: web.StreamResponse) -> None:
        transport = request.transport
        if transport is None:
            raise ConnectionResetError("client went away")
        self._transport = transport
        self._writer = request.writer
        self.response = response
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

    async def end(self) -> None:
        """The last chunk (aiohttp writes it), unless the client is gone."""
        if not self._transport.is_closing():
            await self.response.write_eof()


def retrieve(task: asyncio.Future[None]) -> None:
    """Done callback that marks a future's exception as seen (it is raised where awaited)."""
    if not task.cancelled():
        task.exception()
