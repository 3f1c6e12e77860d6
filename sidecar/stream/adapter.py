"""What the relay borrows from aiohttp's server internals, in one room.

aiohttp has no public API for what the hot path needs on the client's side, so these
few functions use its private parts, and nothing else in the sidecar does (Claude's side
is `sidecar.http_client`, which needs none):

- **the head**: `ClientChannel.open` serialises an SSE response's status line and headers
  itself, exactly as aiohttp's `prepare()` would (the same header order, `Date`, `Server`,
  chunked framing, `serialize_head` below and its refusal of control characters), and
  they leave with the first bytes in one send (`start`), or with the whole body and the
  last chunk (`end_now`). aiohttp's `StreamResponse` would build a header map, run its
  prepare steps and send the head alone: one more send, and most of the Python calls
  between Claude's first bytes and the client's. The response object aiohttp gets back
  is made after the first send, in the state `prepare()` and a first write leave. A
  request aiohttp would answer differently (not HTTP/1.1, `HEAD`, response signals, a
  header `prepare()` would set or change) goes through `prepare()` itself, its head
  still held for the first bytes (`SSEResponse`).
- **the client side**: bytes go to `request.transport` in one `write`, framed as HTTP/1.1
  chunks by hand; `request.writer` drains it; the end (last chunk) is written here too,
  and the response marked ended as aiohttp's `write_eof` leaves it. The first send counts
  in the writer's `output_size`, which is how aiohttp knows a response went out (it never
  answers a failed handler again after that). The request body's reader (read to its
  end) gets the shared empty queue.
- **header bytes, as the peer sent them**: aiohttp's parsers read header values (and a
  reason phrase) as UTF-8 with `surrogateescape`, so a byte that is no UTF-8 (obs-text:
  a latin-1 `filename="r\xe9sum\xe9.pdf"`) is kept as a lone surrogate; its C serialiser
  writes each character as UTF-8 and drops those, so the byte vanished on the way out.
  `serialize_head` replaces it in `aiohttp.http_writer` (every head aiohttp writes: the
  server's answers, 101s and errors, the app client's requests and handshakes): the
  same bytes, with the escaped ones written back as they came; control characters are
  still refused. An all-ASCII head (nearly all) still goes to aiohttp's C serialiser.
- **the app's answer, as the app typed it**: `ForwardedResponse` takes back the
  `Content-Type: application/octet-stream` aiohttp's `prepare()` adds to a body that
  has none (RFC 9110 asks that of the sender; a proxy passes on what the sender said).
- **whether an answer ended**: `answer_ended` reads the flag aiohttp sets once a
  response's last chunk was written (on the response, or on the request's writer when
  the handler never returned one), for telemetry's `client_gone`.
- **the app's WebSocket**: `websocket_transport` finds the socket under a client
  WebSocket (aiohttp exposes the server side's as `request.transport`, not this one), so
  the app route's stall watch can see what is queued for the app and cut it.

(Its WebSocket heartbeat, made patient with slow peers, is borrowed next door, in
`sidecar.stream.websocket_heartbeat`.)

`tests/test_stream_adapter.py` checks each of these against the installed aiohttp, and
pyproject pins aiohttp to the minor versions that test passed on.
"""

from __future__ import annotations

import asyncio
import collections
import re
from collections.abc import Callable, Iterable, Mapping
from typing import Any, Final

import aiohttp.http_writer
from aiohttp import ClientConnectionResetError, ClientWebSocketResponse, web
from aiohttp.helpers import rfc822_formatted_time
from aiohttp.http import SERVER_SOFTWARE, HttpVersion11
from aiohttp.http_writer import _serialize_headers as _aiohttp_serialize
from aiohttp.streams import StreamReader
from multidict import CIMultiDictProxy

# aiohttp's head serialiser (C): any mapping's items, control characters refused.
_aiohttp_head: Callable[[str, Mapping[str, str]], bytes] = _aiohttp_serialize  # type: ignore[assignment]
# What no head may carry (RFC 9110 5.5, RFC 9112 4), as aiohttp refuses it: a control
# character but tab. CR and LF are counted apart (the head's own line ends have them).
_CONTROL: Final = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")


def serialize_head(status_line: str, headers: Mapping[str, str]) -> bytes:
    """A response's (or request's) head as aiohttp writes it, every header value byte for
    byte as it was read: a byte aiohttp's parser kept as a `surrogateescape` character
    is written back as that byte (aiohttp's own serialiser drops it). A control
    character but tab in the line or a value raises `ValueError`, as aiohttp's does.

    Names are tokens (both of aiohttp's parsers refuse any other): ASCII, not looked at.
    """
    if status_line.isascii() and "".join(headers.values()).isascii():
        return _aiohttp_head(status_line, headers)  # nothing to escape: aiohttp's, in C
    fields = [f"{name}: {value}" for name, value in headers.items()]
    text = "\r\n".join((status_line, *fields, "\r\n"))
    breaks = len(fields) + 2
    if text.count("\n") != breaks or text.count("\r") != breaks or _CONTROL.search(text):
        raise ValueError(
            "Forbidden control character detected in headers. Potential header injection attack."
        )
    try:
        return text.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:  # a surrogate no byte was read as: no text, dropped as aiohttp does
        return _aiohttp_head(status_line, headers)


# Every head aiohttp writes goes through it (its `StreamWriter.write_headers` looks the
# name up in its module on each call): set once, when the sidecar is imported.
aiohttp.http_writer._serialize_headers = serialize_head

HIGH_WATER: Final = 256 * 1024  # bytes queued for a slow client before Claude is paused
_STATUS_LINE: Final = "HTTP/1.1 200 OK"
_LAST_CHUNK: Final = b"0\r\n\r\n"
# Headers aiohttp's `prepare()` sets or reads itself: a response that names one gets its head
# from `prepare()`, whatever it makes of it.
_PREPARED: Final = frozenset(
    {"connection", "content-length", "date", "server", "transfer-encoding"}
)


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
    (`ClientChannel.start` or `end_now`): bytes written straight to the socket would
    overtake the head. The relay's subscribers collect until then.
    """

    _send_headers_immediately = False  # aiohttp's switch (its `web.Response` sets it too)


class ForwardedResponse(web.StreamResponse):
    """A `StreamResponse` whose head carries a `Content-Type` only if `headers` had one.

    aiohttp's `prepare()` gives every answer with a body a type; an app's answer that
    named none reaches the client without one, as the app sent it.
    """

    def __init__(self, *, status: int, reason: str | None, headers: Mapping[str, str]) -> None:
        super().__init__(status=status, reason=reason, headers=headers)
        self._untyped = "Content-Type" not in self.headers

    async def _prepare_headers(self) -> None:
        await super()._prepare_headers()
        if self._untyped:
            self.headers.popall("Content-Type", None)


class ClientChannel:
    """The client's end of one SSE response: one `write` per send, framed by hand."""

    __slots__ = (
        "_chunked", "_ended", "_head", "_keep_alive", "_request", "_response", "_tail",
        "_transport", "_writer",
    )  # fmt: skip

    def __init__(
        self,
        request: web.BaseRequest,
        response: web.StreamResponse | None = None,
        head: bytes = b"",
        keep_alive: bool = True,
        transport: asyncio.Transport | None = None,
    ) -> None:
        """The channel of `response`, which aiohttp prepared (its head, if aiohttp still
        holds it, leaves with the first bytes); without one, of a response whose `head`
        was serialised here (`open`), made once that head is sent."""
        if transport is None:
            transport = request.transport
            if transport is None:
                raise ConnectionResetError("client went away")
        self._transport = transport
        writer: Any = request.writer
        self._writer = writer
        self._request: web.BaseRequest | None = request  # until the response is made
        self._response = response
        self._tail = b""  # bytes that leave with the end (`finish`)
        self._ended = False
        self._keep_alive = keep_alive
        if response is None:
            self._head = head
            self._chunked = True
            return
        # aiohttp picked chunked framing in prepare() for HTTP/1.1 without a length.
        self._chunked = bool(writer.chunked)
        self._head = writer._headers_buf or b""  # held by an `SSEResponse` until its first bytes
        writer._headers_buf = None
        writer._headers_written = True
        # prepare() serialised the head: the header map is not read again, and an open
        # stream need not hold it for its whole life.
        response.headers.clear()

    @classmethod
    async def open(cls, request: web.BaseRequest, headers: dict[str, str]) -> ClientChannel:
        """A 200 SSE response with `headers` (the caller's own dict, completed here), its
        head sent with the first bytes (`start`).

        Raises `ClientConnectionResetError` when the client is gone already (where aiohttp's
        own head would have failed).
        """
        channel = cls.opened(request, headers)
        if channel is not None:
            return channel
        response = SSEResponse(status=200, headers=headers)
        await response.prepare(request)
        transport = request.transport
        assert transport is not None  # (`opened` raised otherwise)
        return cls(request, response, transport=transport)

    @classmethod
    def opened(cls, request: web.BaseRequest, headers: dict[str, str]) -> ClientChannel | None:
        """`open`, done now when the head is serialised here; None when aiohttp's
        `prepare()` must make it (`open` then awaits that)."""
        transport = request.transport
        if transport is None or transport.is_closing():
            raise ClientConnectionResetError("Cannot write to closing transport")
        message = request._message  # the parsed request line: what prepare() reads of it
        # Response signals are an application's (the sidecar's requests have no router).
        match_info: Any = getattr(request, "_match_info", None)
        if (
            message.version == HttpVersion11
            and message.method != "HEAD"
            and _PREPARED.isdisjoint(map(str.lower, headers))
            and (match_info is None or not any(a.on_response_prepare for a in match_info.apps))
        ):
            headers["Transfer-Encoding"] = "chunked"  # after the caller's, as prepare() adds it
            headers["Date"] = rfc822_formatted_time()
            headers["Server"] = SERVER_SOFTWARE
            if message.should_close:
                headers["Connection"] = "close"
            head = serialize_head(_STATUS_LINE, headers)
            return cls(request, None, head, not message.should_close, transport)
        return None

    def _sent(self, size: int) -> None:
        """The head went out (with `size` bytes in all): aiohttp's response, as a
        `prepare()` and a first write would have left it; the request body's queue let go."""
        writer = self._writer
        writer.output_size += size  # a response went out: aiohttp never answers this request again
        request = self._request
        if request is None:
            return
        self._request = None
        if self._response is None:
            response = self._response = SSEResponse(status=200)
            response._req = request
            response._payload_writer = writer
            response._keep_alive = self._keep_alive
            response._must_be_empty_body = False
            writer.enable_chunking()
            writer._headers_written = True
        body = request.content  # read to its end before a stream starts
        if type(body) is StreamReader and body.is_eof() and not body._buffer:
            body._buffer = _UNBUFFERED  # nothing more comes: its own empty queue is let go

    @property
    def response(self) -> web.StreamResponse:
        """aiohttp's response (what the handler returns, once `end` ran)."""
        if self._response is None:
            # Never sent (the client left first): aiohttp finds it prepared, and its own
            # attempt to end it finds the connection gone, as it always did.
            self._sent(0)
        response = self._response
        assert response is not None
        return response

    def start(self, data: bytes) -> bool:
        """The first write: the status line and headers with `data`, in one send (the rest
        of `data` after a head already sent); True past the high-water mark."""
        transport = self._transport
        if transport.is_closing():
            raise ClientConnectionResetError("Cannot write to closing transport")
        if data and self._chunked:
            data = b"%x\r\n%b\r\n" % (len(data), data)
        self._send_with_head(data)
        return transport.get_write_buffer_size() > HIGH_WATER

    def _send_with_head(self, data: bytes) -> None:
        """Write framed `data`, after the head if it has not left yet; the response sent."""
        head = self._head
        if head:
            self._head = b""
            data = head + data
        self._transport.write(data)
        self._sent(len(data))

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

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        """The loop the response is written on (known here: looking the running loop up
        costs a `getpid()` system call on Python 3.11)."""
        loop: asyncio.AbstractEventLoop = self._writer.loop  # aiohttp's `StreamWriter` keeps it
        return loop

    def closing(self) -> bool:
        return self._transport.is_closing()

    def buffered(self) -> int:
        """Bytes queued for the client (not yet taken by its socket)."""
        return self._transport.get_write_buffer_size()

    async def drain(self) -> None:
        """Wait until the client has taken what is queued; raises if it went away."""
        await self._writer.drain()

    async def drain_within(self, stall: float) -> bool:
        """`drain`, but a client that takes nothing for `stall` seconds (the stall timeout)
        is cut: False. A slow client that keeps taking bytes is waited for.

        No wait (and no task) when aiohttp would not wait either. The drain is waited on,
        never cancelled while the connection lives: aiohttp's drains await one shared
        waiter, and a cancelled one would fail every later drain of the connection.
        """
        writer = self._writer
        protocol = writer.protocol
        if protocol.transport is None or not protocol._paused:
            await writer.drain()  # raises if the client went away, as `drain` does
            return True
        drain = asyncio.ensure_future(writer.drain())
        try:
            while True:
                queued = self._transport.get_write_buffer_size()
                done, _ = await asyncio.wait((drain,), timeout=stall)
                if done:
                    drain.result()  # raises if the client went away
                    return True
                if self._transport.get_write_buffer_size() >= queued:
                    self._transport.abort()
                    return False
        finally:
            if not drain.done():
                drain.cancel()

    def abort(self) -> None:
        """Cut the connection now, dropping what is queued (a client that stopped reading)."""
        self._transport.abort()

    def finish(self, data: bytes) -> None:
        """Bytes that leave with the end: `end` writes them and the last chunk in one send."""
        self._tail += data

    @property
    def ended(self) -> bool:
        """The response's end was sent (`end_now`)."""
        return self._ended

    def end_now(self) -> None:
        """The end, now: `finish`'s bytes and the last chunk (and the head, if not sent yet)
        in one send, unless the client is gone (aiohttp then finds the response unended,
        as it always did)."""
        if self._ended or self._transport.is_closing():
            return
        self._ended = True
        data, self._tail = self._tail, b""
        if self._chunked:
            data = (b"%x\r\n%b\r\n0\r\n\r\n" % (len(data), data)) if data else _LAST_CHUNK
        self._send_with_head(data)
        # Ended as aiohttp's `write_eof` leaves a response: it writes nothing more.
        writer = self._writer
        writer._eof = True
        response: Any = self._response
        response._eof_sent = True
        response._body_length = writer.output_size
        response._req = None
        response._payload_writer = None

    async def end(self, stall: float) -> None:
        """`end_now`, then wait until the client has taken what is queued (as aiohttp's
        `write_eof` does: a request is not over, nor a shutdown's grace, while its last
        bytes wait), unless the client is gone; a client that takes nothing of them for
        `stall` seconds is cut (`drain_within`), so its stream lets go of its slot."""
        if not self._transport.is_closing():
            if not self._ended:
                self.end_now()
            await self.drain_within(stall)


def retrieve(task: asyncio.Future[None]) -> None:
    """Done callback that marks a future's exception as seen (it is raised where awaited)."""
    if not task.cancelled():
        task.exception()


def answer_ended(request: web.BaseRequest, response: web.StreamResponse | None) -> bool:
    """Whether the answer's end (its last chunk) was written: `response`'s, or, with no
    response back from the handler (cancelled after its stream ended), the request's writer's."""
    if response is not None:
        return bool(response._eof_sent)
    return bool(request.writer._eof)  # type: ignore[attr-defined]


def websocket_handshake_headers(ws: ClientWebSocketResponse) -> CIMultiDictProxy[str]:
    """The headers of the `101` a client WebSocket's server answered its handshake with."""
    return ws._response.headers


def websocket_transport(ws: ClientWebSocketResponse) -> asyncio.Transport | None:
    """The transport a client WebSocket writes to (None once its connection is gone)."""
    connection = ws._response.connection  # the upgraded response keeps its connection
    return None if connection is None else connection.transport
