"""One answer from the upstream server, parsed as it arrives by llhttp (`httptools`).

The parser calls this object back from the connection's read callback: the head
(status, headers) resolves `head()`; each body chunk is either kept for `read()` or,
once `start_push` was called, handed straight to a `Sink` (the relay), with no task
woken and no buffer between the socket and the sink. Chunked framing, lengths and
keep-alive are llhttp's; a framing error ends the body with `MalformedResponse` at the
byte that broke it.

When the answer is complete, a connection the server keeps alive goes back to its
pool at once, whoever still holds the response; letting go of an answer before its
end closes the connection (its remaining bytes would confuse the next call).
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Final, Protocol

import httptools
from multidict import CIMultiDict, CIMultiDictProxy

from sidecar.http_client.errors import ClientError, Disconnected, MalformedResponse

if TYPE_CHECKING:
    from sidecar.http_client.connection import Connection

_EMPTY: Final = CIMultiDictProxy(CIMultiDict[str]())


class Sink(Protocol):
    """Receives a body in push mode (called from the connection's read callback)."""

    def on_data(self, chunk: bytes) -> None: ...

    def on_end(self, error: BaseException | None) -> None: ...


def _text(raw: bytes) -> str:
    # As aiohttp decodes header bytes: UTF-8, anything else kept byte for byte.
    return raw.decode("utf-8", "surrogateescape")


class Response:
    """Status, headers and body of one call; the body pulled (`read`) or pushed (`start_push`)."""

    __slots__ = (
        "_body",
        "_conn",
        "_done",
        "_error",
        "_head",
        "_method_head",
        "_parser",
        "_raw",
        "_sink",
        "_size",
        "_until_eof",
        "_waiter",
        "_want",
        "deadline",
        "headers",
        "spilled",
        "status",
    )  # fmt: skip

    def __init__(self, connection: Connection, loop: asyncio.AbstractEventLoop, head: bool) -> None:
        self._conn: Connection | None = connection
        self._parser = httptools.HttpResponseParser(self)
        self._raw: list[tuple[str, str]] | None = []
        self._head: asyncio.Future[None] = loop.create_future()
        self._body: list[bytes] = []
        self._size = 0
        self._want = 0  # bytes `read` waits for (0: the end)
        self._waiter: asyncio.Future[None] | None = None
        self._done = False
        self._error: BaseException | None = None
        self._sink: Sink | None = None
        self._until_eof = False
        self._method_head = head  # an answer to HEAD has no body, whatever it says
        self.status = 0
        self.headers: CIMultiDictProxy[str] = _EMPTY
        self.spilled = False  # bytes came after the end: the connection must not be reused
        self.deadline: float | None = None  # loop time the whole body is due by (the caller's)

    # ------------------------------------------------------------------ parser callbacks

    def on_message_begin(self) -> None:
        if self._raw is None:  # a second message on the same bytes: nobody asked for it
            self.spilled = True

    def on_header(self, name: bytes, value: bytes) -> None:
        if self._raw is not None:
            self._raw.append((_text(name), _text(value)))

    def on_headers_complete(self) -> None:
        raw, self._raw = self._raw, None
        if raw is None:  # a second message (`spilled`): not this call's
            return
        self.status = self._parser.get_status_code()
        headers = self.headers = CIMultiDictProxy(CIMultiDict(raw))
        self._until_eof = (
            "content-length" not in headers
            and "chunked" not in headers.get("transfer-encoding", "").lower()
        )
        if not self._head.done():
            self._head.set_result(None)
        if self._method_head:
            self._complete(keep_alive=False)

    def on_body(self, chunk: bytes) -> None:
        if self._done:
            return
        sink = self._sink
        if sink is not None:
            sink.on_data(chunk)
            return
        self._body.append(chunk)
        self._size += len(chunk)
        if self._want and self._size >= self._want:
            self._wake()

    def on_message_complete(self) -> None:
        if not self._done:
            self._complete(keep_alive=self._parser.should_keep_alive())

    # ------------------------------------------------------------------ from the connection

    def feed(self, data: bytes) -> None:
        """Bytes from the socket: parsed at once, callbacks run before this returns."""
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserCallbackError as exc:
            # A callback raised: a sink's own failure, or an answer nobody asked for.
            cause = exc.__context__
            self._fail(cause if cause is not None else MalformedResponse(str(exc)))
        except httptools.HttpParserError as exc:
            self._fail(MalformedResponse(f"Claude's response is malformed: {exc}"))

    def lost(self, exc: BaseException | None) -> None:
        """The connection closed: the end of a body sent until close, else a failure."""
        self._conn = None
        if self._done:
            return
        if self._head.done() and self._until_eof and self._error is None:
            self._complete(keep_alive=False)
        else:
            self._fail(Disconnected("the connection closed before the answer was complete"))

    # ------------------------------------------------------------------ the caller's side

    async def head(self) -> None:
        """Wait for the status line and headers; raises if the connection fails first."""
        await self._head

    @property
    def content_type(self) -> str:
        """The media type of `Content-Type`, lower-case (`application/octet-stream` if absent)."""
        value = self.headers.get("content-type")
        if not value:
            return "application/octet-stream"
        return value.split(";", 1)[0].strip().lower()

    async def read(self, limit: int | None = None) -> bytes:
        """The body (at most `limit` bytes; then the connection is closed). Raises on failure."""
        while not self._done and self._error is None:
            if limit is not None and self._size >= limit:
                break
            self._want = limit or 0
            waiter = self._waiter = asyncio.get_running_loop().create_future()
            try:
                await waiter
            finally:
                self._waiter = None
        if self._error is not None and not (limit is not None and self._size >= limit):
            raise self._error
        body = b"".join(self._body)
        self._body = []
        self.close()
        return body if limit is None else body[:limit]

    def take_buffered(self) -> bytes:
        """What arrived with the head or since, before push mode (b"" once failed)."""
        if self._error is not None:
            return b""
        body, self._body, self._size = self._body, [], 0
        return b"".join(body) if len(body) != 1 else body[0]

    def start_push(self, sink: Sink) -> None:
        """Hand the rest of the body to `sink` as it arrives; ends it at once if already over."""
        self.headers = _EMPTY  # read and copied before: an open stream need not hold them
        if self._error is not None:
            sink.on_end(self._error)
        elif self._done:
            sink.on_end(None)
        else:
            self._sink = sink

    def stop_push(self) -> None:
        """Let go of the sink: later bytes are dropped (the response is closing)."""
        self._sink = None

    @property
    def pushing(self) -> bool:
        """Whether the body goes to a sink (tests)."""
        return self._sink is not None

    def pause(self) -> None:
        """Stop reading the socket (a slow client); the kernel's window then pushes back."""
        conn = self._conn
        if conn is not None:
            conn.pause()

    def resume(self) -> None:
        """Read the socket again."""
        conn = self._conn
        if conn is not None:
            conn.resume()

    def release(self) -> None:
        """Done with this answer: its connection is kept if complete, else closed."""
        self.close()

    def close(self) -> None:
        """Drop the answer; a connection still carrying it is closed, not reused."""
        self._sink = None
        conn, self._conn = self._conn, None
        if conn is not None and not self._done:
            conn.drop()

    # ------------------------------------------------------------------ internals

    def _complete(self, *, keep_alive: bool) -> None:
        self._done = True
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.finished(keep_alive)
        sink, self._sink = self._sink, None
        if sink is not None:
            sink.on_end(None)
        self._wake()

    def _fail(self, error: BaseException) -> None:
        if self._done or self._error is not None:
            return
        self._error = error
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.drop()
        if not self._head.done():
            self._head.set_exception(error)
            self._head.exception()  # retrieved: whoever waits raises it
        sink, self._sink = self._sink, None
        if sink is not None:
            sink.on_end(error)
        self._wake()

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)


__all__ = ["ClientError", "Response", "Sink"]
