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

from sidecar.http_client.errors import Disconnected, MalformedResponse

if TYPE_CHECKING:
    from sidecar.http_client.connection import Connection

_EMPTY: Final = CIMultiDictProxy(CIMultiDict[str]())


class Sink(Protocol):
    """Receives a body in push mode (called from the connection's read callback)."""

    def on_data(self, chunk: bytes) -> None: ...

    def on_last(self, chunk: bytes) -> None:
        """The body's last bytes, read together with its end: `on_end(None)` is implied."""

    def on_end(self, error: BaseException | None) -> None: ...


class Response:
    """Status, headers and body of one call; the body pulled (`read`) or pushed (`start_push`)."""

    __slots__ = (
        "_body", "_conn", "_done", "_error", "_fields", "_head", "_headers", "_interim",
        "_method_head", "_parser", "_raw", "_sink", "_size", "_until_eof", "_waiter", "_want",
        "deadline", "spilled", "status",
    )  # fmt: skip

    def __init__(self, connection: Connection, loop: asyncio.AbstractEventLoop, head: bool) -> None:
        self._conn: Connection | None = connection
        # Let go once settled (`_complete`, `_fail`, `close`): the parser holds this
        # response's bound callbacks, a cycle only the garbage collector would otherwise break.
        self._parser: httptools.HttpResponseParser | None = httptools.HttpResponseParser(self)
        self._raw: list[bytes] | None = []  # header names and values, alternating
        self._head: asyncio.Future[None] = loop.create_future()
        self._body: list[bytes] = []
        self._size = 0
        self._want = 0  # bytes `read` waits for (0: the end)
        self._waiter: asyncio.Future[None] | None = None
        self._done = False
        self._error: BaseException | None = None
        self._sink: Sink | None = None
        self._fields: list[bytes] | None = None  # the head's names and values, as read
        self._headers: CIMultiDictProxy[str] | None = None  # made from them when first asked
        self._until_eof: bool | None = None  # the body ends with the connection (when known)
        self._interim = False
        self._method_head = head  # an answer to HEAD has no body, whatever it says
        self.status = 0
        self.spilled = False  # bytes came after the end: the connection must not be reused
        self.deadline: float | None = None  # loop time the whole body is due by (the caller's)

    # ------------------------------------------------------------------ parser callbacks

    def on_message_begin(self) -> None:
        if self._raw is None:  # a second message on the same bytes: nobody asked for it
            self.spilled = True

    def on_header(self, name: bytes, value: bytes) -> None:
        raw = self._raw
        if raw is not None:
            raw += (name, value)

    def on_headers_complete(self) -> None:
        raw, self._raw = self._raw, None
        if raw is None:  # a second message (`spilled`): not this call's
            return
        parser = self._parser
        assert parser is not None  # the headers of this call's answer: still parsing
        status = parser.get_status_code()
        if 100 <= status < 200 and status != 101:
            # An interim answer (100 Continue, 103 Early Hints): the final one follows on
            # the same connection, as RFC 9110 has clients read it.
            self._raw = []
            self._interim = True
            return
        self.status = status
        # Only kept: the header map is made when asked for (`headers`), and a stream's start
        # needs a few values only (`pick`).
        self._fields = raw
        if not self._head.done():
            self._head.set_result(None)
        if self._method_head or status == 101:  # no body; after a 101, no more HTTP either
            self._complete(keep_alive=False)

    def on_body(self, chunk: bytes) -> None:
        if self._done:
            return
        self._body.append(chunk)  # pushed once the read is parsed (`feed`), else kept
        if self._sink is None:
            self._size += len(chunk)
            if self._want and self._size >= self._want:
                self._wake()

    def on_message_complete(self) -> None:
        if self._interim:  # the interim answer's end: the final answer is still to come
            self._interim = False
            return
        parser = self._parser
        if not self._done and parser is not None:
            self._complete(keep_alive=parser.should_keep_alive())

    # ------------------------------------------------------------------ from the connection

    def feed(self, data: bytes) -> None:
        """Bytes from the socket: parsed at once, callbacks run before this returns.

        In push mode, the body bytes of one read go to the sink in one `on_data` once
        the read is parsed: Claude's events that arrived together leave together (one
        write per client), and none waits for a later read.
        """
        parser = self._parser
        if parser is None:  # settled: nothing more is read for this answer
            return
        try:
            parser.feed_data(data)
        except httptools.HttpParserCallbackError as exc:
            # A callback raised: an answer nobody asked for, or a bug of this module.
            cause = exc.__context__
            self._fail(cause if cause is not None else MalformedResponse(str(exc)))
        except httptools.HttpParserError as exc:
            self._fail(MalformedResponse(f"Claude's response is malformed: {exc}"))
        except httptools.HttpParserUpgrade:  # after a 101 (complete, its connection dropped)
            self._fail(MalformedResponse("the server switched protocols"))
        if self._body and self._sink is not None:
            self._push()

    def _taken(self) -> bytes:
        """The body bytes kept so far, as one; none are kept after."""
        body = self._body
        data = body[0] if len(body) == 1 else b"".join(body)
        body.clear()
        self._size = 0
        return data

    def _push(self) -> None:
        """Hand what was parsed to the sink (its failure ends the body with its error)."""
        data = self._taken()
        sink = self._sink
        assert sink is not None
        try:
            sink.on_data(data)
        except Exception as exc:  # a bug of the sink's: its stream ends, saying so
            self._fail(exc)

    def lost(self, exc: BaseException | None) -> None:
        """The connection closed: the end of a body sent until close, else a failure.

        Only an orderly close (`exc` None: the server's FIN) ends such a body; a reset
        (`ConnectionResetError`) or any other socket error mid-body is a cut, never a
        clean end."""
        self._conn = None
        if self._done:
            return
        if exc is None and self._head.done() and self._framed_by_close() and self._error is None:
            self._complete(keep_alive=False)
        else:
            self._fail(Disconnected("the connection closed before the answer was complete"))

    # ------------------------------------------------------------------ the caller's side

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        """The loop this answer is read on (known here: looking the running loop up costs
        a `getpid()` system call on Python 3.11)."""
        return self._head.get_loop()

    async def head(self) -> None:
        """Wait for the status line and headers; raises if the connection fails first."""
        await self._head

    @property
    def headers(self) -> CIMultiDictProxy[str]:
        """The answer's headers (none before its head, nor once its body is pushed)."""
        headers = self._headers
        if headers is None:
            raw = self._fields
            if not raw:
                return _EMPTY
            # Decoded as aiohttp decodes header bytes: UTF-8, anything else kept byte for
            # byte; all at once, joined by NUL (which llhttp never lets into a name or a value).
            text = iter(b"\0".join(raw).decode("utf-8", "surrogateescape").split("\0"))
            headers = self._headers = CIMultiDictProxy(CIMultiDict(zip(text, text, strict=False)))
        return headers

    def pick(self, names: tuple[str, ...], prefix: str | None = None) -> dict[str, str]:
        """The first value of each of `names` (lower-case) that the answer has, then every
        header whose name starts with `prefix` (lower-case), under its own name: what
        `headers` would give, read without making the header map."""
        raw = self._fields
        if not raw:
            if raw is not None and self._until_eof is None:
                self._until_eof = True  # a head without headers: no length, not chunked
            return {}
        # Names are tokens (llhttp lets nothing else in): ASCII, lower-cased in one go.
        lower = b"\0".join(raw[::2]).decode("ascii").lower().split("\0")
        if self._until_eof is None:  # the framing, read in the same look
            self._until_eof = "content-length" not in lower and (
                "transfer-encoding" not in lower
                or b"chunked" not in raw[2 * lower.index("transfer-encoding") + 1].lower()
            )
        picked: dict[str, str] = {}
        for name in names:
            if name in lower:
                picked[name] = raw[2 * lower.index(name) + 1].decode("utf-8", "surrogateescape")
        if prefix is not None:
            for index, name in enumerate(lower):
                if name.startswith(prefix):
                    key = raw[2 * index].decode("ascii")
                    picked[key] = raw[2 * index + 1].decode("utf-8", "surrogateescape")
        return picked

    def _framed_by_close(self) -> bool:
        """The body ends with the connection (no length, not chunked): read from the head
        by `pick` (before the head is let go, `start_push`)."""
        if self._until_eof is None:
            self.pick(())
        return bool(self._until_eof)

    @property
    def content_coding(self) -> str | None:
        """The answer's `Content-Encoding` as sent (None without one), read from its head
        without making the header map; None once the head is let go (push mode)."""
        return self.pick(("content-encoding",)).get("content-encoding")

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
            waiter = self._waiter = self._head.get_loop().create_future()
            try:
                await waiter
            finally:
                self._waiter = None
        if self._error is not None and not (limit is not None and self._size >= limit):
            raise self._error
        body = self._taken() if self._body else b""
        self.close()
        return body if limit is None else body[:limit]

    def take_buffered(self) -> bytes:
        """What arrived with the head or since, before push mode (b"" once failed)."""
        if self._error is not None:
            return b""
        return self._taken() if self._body else b""

    def start_push(self, sink: Sink) -> None:
        """Hand the rest of the body to `sink` as it arrives; ends it at once if already over."""
        self._framed_by_close()  # known before the head is let go
        self._fields = None  # read and copied before: an open stream need not hold them
        self._headers = _EMPTY
        if self._error is not None:
            sink.on_end(self._error)
        elif self._done:
            rest = self.take_buffered()
            if rest:
                sink.on_last(rest)
            else:
                sink.on_end(None)
        else:
            self._sink = sink
            if self._body:  # not taken before: it goes first
                self._push()

    @property
    def complete(self) -> bool:
        """The whole answer is in (what is not taken yet is all there is)."""
        return self._done and self._error is None

    @property
    def parsing(self) -> bool:
        """Whether bytes from the connection are still read as this answer (not after its
        end, an error or `close`)."""
        return self._parser is not None

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

    def close(self) -> None:
        """Done with this answer: its connection is kept if complete (back in its pool
        already), else closed, never reused."""
        self._sink = None
        self._parser = None
        conn, self._conn = self._conn, None
        if conn is not None and not self._done:
            conn.drop()

    # ------------------------------------------------------------------ internals

    def _complete(self, *, keep_alive: bool) -> None:
        self._done = True
        self._parser = None
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.finished(keep_alive)
        sink, self._sink = self._sink, None
        if sink is not None:
            if not self._body:
                sink.on_end(None)
            else:  # the last bytes and the end came in one read: they go on together
                data = self._taken()
                try:
                    sink.on_last(data)
                except Exception as exc:  # a bug of the sink's: its stream ends, saying so
                    sink.on_end(exc)
        self._wake()

    def _fail(self, error: BaseException) -> None:
        if self._done or self._error is not None:
            return
        if self._body and self._sink is not None:
            self._push()  # what was whole before the failure still goes out
            if self._error is not None:
                return  # the sink failed on it: that failure stands
        self._error = error
        self._parser = None
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


__all__ = ["Response", "Sink"]
