"""The traffic listener's HTTP connections: parser errors and slow request heads.

aiohttp answers a request its parser refuses (over-long request line or header,
malformed line, bad chunked framing) on its own, logging an ERROR traceback whose
message quotes the raw bytes, so a `?access_token=` in the request line would land
in the log. Here such a request is a clean JSON 400/431, counted as a rejection
under a reason from a closed set, and logged as one line without any request bytes.

A request head must also arrive within `server.header_read_timeout_seconds` of its
first byte (for a new connection: of the connection), else the client gets a 408
and the connection is closed: a client trickling its head cannot hold a socket.

What this borrows from aiohttp's internals (the protocol class a runner builds,
the protocol's request bookkeeping) lives in this module only;
`tests/test_listener.py` pins the contract.
"""

from __future__ import annotations

import asyncio
import json
import re
import socket
from collections.abc import Callable, Mapping
from typing import Any, Final

from aiohttp import HttpVersion10, HttpVersion11, web, web_protocol
from aiohttp.http_exceptions import (
    BadHttpMessage,
    BadStatusLine,
    ContentLengthError,
    HttpProcessingError,
    InvalidHeader,
    InvalidURLError,
    LineTooLong,
    TransferEncodingError,
)
from aiohttp.streams import EMPTY_PAYLOAD, StreamReader
from multidict import CIMultiDictProxy

from sidecar import expectation

# (reason, status) for what the parser refused: the reason is a metric label, so a closed set.
HEAD_TOO_LARGE: Final = ("head_too_large", 431)
BAD_REQUEST_LINE: Final = ("bad_request_line", 400)
BAD_HEADER: Final = ("bad_header", 400)
BAD_FRAMING: Final = ("bad_body_framing", 400)
MALFORMED: Final = ("malformed_request", 400)
HEADER_TIMEOUT: Final = ("header_timeout", 408)
# RFC 9112 6.1: a transfer coding the server does not understand is a 501.
UNSUPPORTED_CODING: Final = ("unsupported_transfer_coding", 501)
PARSER_REASONS: Final = frozenset(
    r
    for r, _ in (
        HEAD_TOO_LARGE, BAD_REQUEST_LINE, BAD_HEADER, BAD_FRAMING, MALFORMED, UNSUPPORTED_CODING
    )
)  # fmt: skip

_MESSAGES: Final = {
    "head_too_large": "request line or header fields too large",
    "bad_request_line": "malformed request line",
    "bad_header": "malformed header field",
    "bad_body_framing": "malformed body framing (Content-Length / chunked encoding)",
    "malformed_request": "malformed request",
    "header_timeout": "the request head did not arrive in time",
    "unsupported_transfer_coding": "Transfer-Encoding other than chunked is not supported",
}

_SERVED: Final = frozenset({HttpVersion10, HttpVersion11})  # HTTP versions of requests served
# A `Host` value as RFC 9110 7.2 / RFC 3986 3.2.2 write it: `uri-host [":" port]`, where
# the host is an IP literal in brackets or a reg-name (an IPv4 address is one too), and
# the value may be empty.
_HOST: Final = re.compile(
    r"(?:\[[0-9A-Za-z:._~!$&'()*+,;=%-]+\]|[0-9A-Za-z._~!$&'()*+,;=%-]*)(?::[0-9]*)?"
)
_LINGER_SECONDS: Final = 2.0  # after a 408, a slow head's late bytes are dropped this long
OnReject = Callable[[str, int], None]
HeaderTimeout = Callable[[], float]  # read per head: a reload changes it for new heads
# Headers every listener-level refusal carries (HSTS on a TLS listener), read per refusal.
RefusalHeaders = Callable[[], Mapping[str, str]]
StallTimeout = Callable[[], float]  # read per stall: a reload changes it for the next one


def default_stall_timeout() -> float:
    return 60.0  # `claude.client_stall_timeout_seconds`' default


# Linux's bound on how long sent bytes may go unaccepted (unacknowledged, or held back by a
# receive window the client keeps shut) before the kernel resets the connection.
_TCP_USER_TIMEOUT: Final[int | None] = getattr(socket, "TCP_USER_TIMEOUT", None)


def bound_unaccepted_bytes(transport: asyncio.BaseTransport, seconds: float) -> None:
    """Have the kernel reset the connection when the client accepts none of the bytes
    already handed to it for `seconds`.

    The process's own stall watches see only what it still holds: the kernel takes up
    to a few MB per socket first (Linux autotunes its send buffer to `tcp_wmem`'s
    maximum), so a whole answer that fits there leaves the process at once, and a client
    that never reads would pin those bytes, and its connection, for good. A no-op where
    the option does not exist (not Linux) or the socket is not TCP."""
    sock = transport.get_extra_info("socket")
    if _TCP_USER_TIMEOUT is None or sock is None:
        return
    if sock.family not in (socket.AF_INET, socket.AF_INET6):
        return
    try:
        sock.setsockopt(socket.IPPROTO_TCP, _TCP_USER_TIMEOUT, max(1, round(seconds * 1000)))
    except OSError:
        return  # a socket that refuses it keeps the process's own watches only


def no_headers() -> Mapping[str, str]:
    return {}


def close_after(request: web.BaseRequest) -> None:
    """Answer `request` with `Connection: close` and close its connection after it: a
    draining sidecar sends a kept-alive client's next request to another replica. (The
    parsed message is aiohttp's: every response reads `should_close` from it, through
    `keep_alive`, which caches it.)"""
    request._message = request._message._replace(should_close=True)
    request._cache.pop("keep_alive", None)


class UnsupportedTransferCoding(BadHttpMessage):
    """A request framed as chunked that names another transfer coding as well
    (`Transfer-Encoding: gzip, chunked`). The parser undoes the chunked framing only and
    would hand on the body still coded, with nothing left to say so: the app would read
    compressed bytes as the body itself, and a Claude route would screen what Claude would
    not read. Refused, as RFC 9112 6.1 says, before any route sees it."""

    def __init__(self) -> None:
        super().__init__("unsupported transfer coding")


def other_codings(headers: CIMultiDictProxy[str]) -> bool:
    """Whether `Transfer-Encoding` names any coding besides `chunked` (empty list items,
    which RFC 9110 5.6.1 says to accept, aside)."""
    return any(
        name != "chunked"
        for value in headers.getall("Transfer-Encoding", ())
        for part in value.split(",")
        if (name := part.strip().lower())
    )


def bad_host(headers: CIMultiDictProxy[str]) -> bool:
    """Whether `Host` is there and is no valid host: RFC 9112 3.2 has a server answer 400
    to that (as to a missing or repeated one, which the parser refuses), and none of it
    is forwarded as the app's `Host` or `X-Forwarded-Host`."""
    host = headers.get("Host")
    return host is not None and _HOST.fullmatch(host) is None


def classify(exc: BaseException) -> tuple[str, int]:
    """The (reason, status) for a parser error; never looks at the bytes it quotes."""
    if isinstance(exc, UnsupportedTransferCoding):
        return UNSUPPORTED_CODING
    if isinstance(exc, LineTooLong):
        return HEAD_TOO_LARGE
    if isinstance(exc, BadStatusLine | InvalidURLError):
        return BAD_REQUEST_LINE
    if isinstance(exc, InvalidHeader):
        return BAD_HEADER
    if isinstance(exc, TransferEncodingError | ContentLengthError):
        return BAD_FRAMING
    # The C and Python parsers raise plain BadHttpMessage for many cases; its message's
    # first words say which (read for the label only, never logged).
    words = str(getattr(exc, "message", "")).split(":", 1)[0].lower()
    if "too many headers" in words:
        return HEAD_TOO_LARGE
    if "chunk" in words or "content-length" in words or "transfer-encoding" in words:
        return BAD_FRAMING
    if "header" in words:
        return BAD_HEADER
    return MALFORMED


def error_body(reason: str) -> bytes:
    """The JSON body of a listener-level refusal (no route is known yet)."""
    error = {"type": "invalid_request", "message": _MESSAGES[reason]}
    if reason == "header_timeout":
        error["type"] = "timeout"
    return json.dumps({"error": error}).encode()


class TrafficProtocol(web_protocol.RequestHandler):
    """aiohttp's request handler, with parser errors answered cleanly and a head deadline."""

    def __init__(
        self,
        manager: web.Server,
        *,
        on_reject: OnReject,
        header_timeout: HeaderTimeout,
        refusal_headers: RefusalHeaders = no_headers,
        stall_timeout: StallTimeout = default_stall_timeout,
        longest_stall: StallTimeout | None = None,
        idle_timeout: StallTimeout | None = None,
        **kwargs: Any,
    ) -> None:
        if idle_timeout is not None:  # read per connection: a reload changes it for new ones
            kwargs["keepalive_timeout"] = idle_timeout()
        super().__init__(manager, **kwargs)
        self._on_reject = on_reject
        self._header_timeout = header_timeout
        self._refusal_headers = refusal_headers
        self._stall_timeout = stall_timeout
        # The kernel's bound on bytes handed to it (`bound_unaccepted_bytes`): twice the
        # longest stall any route allows (`longest_stall`, by default the stall timeout), so
        # the process's own watches, which start only once the kernel's buffer is full,
        # decide a stall first wherever they can.
        self._longest_stall = longest_stall or stall_timeout
        self._head_timer: asyncio.TimerHandle | None = None
        # The body of the last request parsed: bytes that arrive while it is still open are
        # that body's (aiohttp reads and drops a body its handler left), not a new head.
        self._body: StreamReader | None = None
        self._lingering = False
        # A whole answer being written after its handler returned (`finish_response`): a
        # client that takes none of it for the stall timeout is cut (`_stall_check`).
        self._finishing = False
        self._stall_timer: asyncio.TimerHandle | None = None
        self._stall_size = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        bound_unaccepted_bytes(transport, 2 * self._longest_stall())
        self._start_head_timer()  # a connection that never sends a head is a slow head too

    def connection_lost(self, exc: BaseException | None) -> None:
        self._stop_head_timer()
        self._stop_stall_watch()
        super().connection_lost(exc)

    def pause_writing(self) -> None:
        super().pause_writing()
        if self._finishing and self._stall_timer is None:
            self._watch_stall()

    def resume_writing(self) -> None:
        super().resume_writing()
        self._stop_stall_watch()

    def _watch_stall(self) -> None:
        transport = self.transport
        self._stall_size = transport.get_write_buffer_size() if transport is not None else 0
        self._stall_timer = self._loop.call_later(self._stall_timeout(), self._stall_check)

    def _stop_stall_watch(self) -> None:
        if self._stall_timer is not None:
            self._stall_timer.cancel()
            self._stall_timer = None

    def _stall_check(self) -> None:
        self._stall_timer = None
        transport = self.transport
        if transport is None or transport.is_closing() or not self.writing_paused:
            return
        if transport.get_write_buffer_size() < self._stall_size:
            self._watch_stall()  # it took some: a slow client, not a stalled one
            return
        # Nothing taken for the whole timeout: the answer and the connection are let go
        # (the write waiting on the client fails, and aiohttp ends the request quietly).
        transport.abort()

    def data_received(self, data: bytes) -> None:
        if self._lingering:
            return  # the 408 is out: late bytes of the refused head are read and dropped
        parsed = self._request_count
        in_body = self._body is not None and not self._body.is_eof()
        super().data_received(data)
        if self._request_count != parsed:
            self._refuse_unserved(self._request_count - parsed)
            self._stop_head_timer()  # a head is complete (or refused)
            self._body = self._messages[-1][1] if self._messages else None
            self._fail_body_in_flight()
        elif data and not in_body and self._head_timer is None and self._between_requests():
            self._start_head_timer()  # the first byte of the next head on a kept-alive connection

    def _refuse_unserved(self, count: int) -> None:
        # The parser takes a request line without a version as HTTP/0.9 and any `HTTP/d.d`
        # (`HTTP/2.0` in plain text) as what it says, and aiohttp would answer in that
        # version's name (`HTTP/0.9 200 OK` with a head 0.9 never had). Only 1.0 and 1.1
        # are served here: the others are refused as a malformed request line. An HTTP/1.0
        # request with `Transfer-Encoding` has faulty framing (RFC 9112 6.1: HTTP/1.0 has
        # no transfer codings; the parser would read a chunked body, and a proxy in front
        # that reads none would take its bytes for the next request), a chunked
        # body with another transfer coding on it (which the parser leaves in place,
        # unlabelled) is refused too (`UnsupportedTransferCoding`), and so is a `Host`
        # that is no host (`bad_host`: a bad header).
        messages = self._messages
        for index in range(max(0, len(messages) - count), len(messages)):
            message, _ = messages[index]
            if isinstance(message, web_protocol._ErrInfo):
                continue
            refused: BadHttpMessage | None = None
            if message.version not in _SERVED:
                refused = BadStatusLine(error="unsupported HTTP version")
            elif message.version == HttpVersion10 and "Transfer-Encoding" in message.headers:
                refused = TransferEncodingError("Transfer-Encoding in HTTP/1.0")
            elif message.chunked and other_codings(message.headers):
                refused = UnsupportedTransferCoding()
            elif bad_host(message.headers):
                refused = InvalidHeader("Host")
            if refused is not None:
                messages[index] = (
                    web_protocol._ErrInfo(
                        status=classify(refused)[1], exc=refused, message=refused.message
                    ),
                    EMPTY_PAYLOAD,
                )

    def _fail_body_in_flight(self) -> None:
        # The parser refused bytes in the middle of a body a handler is reading (bad chunk
        # framing): that read fails now, so the route answers 400 in its own format, instead
        # of waiting for bytes that will never parse while aiohttp queues a second answer.
        request = self._current_request
        if request is None or not self._messages:
            return
        info = self._messages[-1][0]
        if isinstance(info, web_protocol._ErrInfo) and not request.content.is_eof():
            self._messages.pop()
            request.content.set_exception(info.exc)
            self.close()  # the message boundary is lost: no further request on this connection

    def _between_requests(self) -> bool:
        return not (
            self._request_in_progress
            or self._messages
            or self._upgraded
            or self._close
            or self._force_close
        )

    def _start_head_timer(self) -> None:
        self._head_timer = self._loop.call_later(self._header_timeout(), self._head_timed_out)

    def _stop_head_timer(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _head_timed_out(self) -> None:
        self._head_timer = None
        transport = self.transport
        if transport is None or transport.is_closing() or not self._between_requests():
            return
        reason, status = HEADER_TIMEOUT
        self._on_reject(reason, status)
        body = error_body(reason)
        extra = "".join(f"{name}: {value}\r\n" for name, value in self._refusal_headers().items())
        transport.write(
            b"HTTP/1.1 408 Request Timeout\r\nContent-Type: application/json\r\n"
            b"Content-Length: %d\r\nConnection: close\r\n%b\r\n%b"
            % (len(body), extra.encode("latin-1"), body)
        )
        # Closing with the client's bytes still arriving would reset the connection, and a
        # reset can destroy the 408 on its way: end our side, drop what comes, close soon.
        self._lingering = True
        if transport.can_write_eof():
            transport.write_eof()
        self._loop.call_later(_LINGER_SECONDS, self.force_close)

    async def finish_response(
        self, request: web.BaseRequest, resp: web.StreamResponse, start_time: float | None
    ) -> tuple[web.StreamResponse, bool]:
        """aiohttp's, and a body an HTTP/1.0 client can only see end when the connection
        closes (a stream: no length, no chunked framing in 1.0) closes it, whatever
        `Connection: keep-alive` the client asked for. (aiohttp leaves such a response's
        `keep_alive` as asked, after sending no `Connection: keep-alive` for it: the
        client then waits forever for an end that never comes.)

        aiohttp writes a whole answer (a non-streaming Claude answer, an error, `/metrics`)
        here, after the handler returned and let go of its slot, and waits for the client
        to take it with no deadline: a client that never reads would hold the connection
        and the answer's bytes for good. One that takes none of it for the stall timeout
        (`claude.client_stall_timeout_seconds`) is cut; a slow one that keeps taking
        bytes is not. The watch starts only when the socket's buffer is full."""
        if expectation.unanswered(request):
            # Answered without the body it never invited (`Expect: 100-continue`): the
            # client may send it or not, so no next request can be told from it.
            close_after(request)
        self._finishing = True
        if self.writing_paused and self._stall_timer is None:
            self._watch_stall()  # paused already (by the handler's own writes)
        try:
            finished = await super().finish_response(request, resp, start_time)
        finally:
            self._finishing = False
            self._stop_stall_watch()
        if request.version != HttpVersion11 and resp.keep_alive and request.writer.length is None:
            resp.force_close()  # (1.0 has no chunked framing: no length is an open end)
        return finished

    def handle_error(
        self,
        request: web.BaseRequest,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        if not isinstance(exc, HttpProcessingError | BadHttpMessage):
            return super().handle_error(request, status, exc, message)
        reason, status = classify(exc)
        self._on_reject(reason, status)
        response = web.Response(
            status=status,
            body=error_body(reason),
            content_type="application/json",
            headers=self._refusal_headers(),
        )
        response.force_close()  # the parser lost the message boundary: the connection is done
        return response


class _TrafficServer(web.Server):
    def __init__(
        self,
        *args: Any,
        on_reject: OnReject,
        header_timeout: HeaderTimeout,
        refusal_headers: RefusalHeaders = no_headers,
        stall_timeout: StallTimeout = default_stall_timeout,
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        self._extra: dict[str, Any] = {
            "on_reject": on_reject,
            "header_timeout": header_timeout,
            "refusal_headers": refusal_headers,
            "stall_timeout": stall_timeout,
        }

    def __call__(self) -> web_protocol.RequestHandler:
        return TrafficProtocol(self, loop=self._loop, **self._extra, **self._kwargs)


class TrafficRunner(web.AppRunner):
    """An `AppRunner` whose connections are `TrafficProtocol`s.

    `on_reject(reason, status)` counts and logs a refusal made before any route is known;
    `header_timeout()` is the current head deadline in seconds.
    """

    def __init__(
        self,
        app: web.Application,
        *,
        on_reject: OnReject,
        header_timeout: HeaderTimeout,
        stall_timeout: StallTimeout = default_stall_timeout,
        **kwargs: Any,
    ) -> None:
        super().__init__(app, **kwargs)
        self._on_reject = on_reject
        self._header_timeout = header_timeout
        self._stall_timeout = stall_timeout

    async def _make_server(self) -> web.Server:
        made = await super()._make_server()  # starts the app (startup signals, freeze)
        return _TrafficServer(
            made.request_handler,
            request_factory=made.request_factory,
            handler_cancellation=made.handler_cancellation,
            on_reject=self._on_reject,
            header_timeout=self._header_timeout,
            stall_timeout=self._stall_timeout,
            **made._kwargs,
        )


RequestFactory = Callable[
    ..., web.BaseRequest
]  # aiohttp's (message, payload, protocol, writer, task)


class TrafficServerRunner(web.BaseRunner):
    """A runner for one bare handler, whose connections are `TrafficProtocol`s.

    No `web.Application` stands between a request and `handler`: no router, middleware
    chain or response signals run per request, and a stream's task holds no frame of
    theirs. `on_startup()` runs before the server is made, `on_cleanup()` once it has
    shut down (also after a failed setup); other keyword arguments go to each connection.
    """

    def __init__(
        self,
        handler: Callable[[Any], Any],
        *,
        request_factory: RequestFactory,
        on_reject: OnReject,
        header_timeout: HeaderTimeout,
        on_startup: Callable[[], Any],
        on_cleanup: Callable[[], Any],
        refusal_headers: RefusalHeaders = no_headers,
        stall_timeout: StallTimeout = default_stall_timeout,
        handler_cancellation: bool = False,
        shutdown_timeout: float = 60.0,
        **kwargs: Any,
    ) -> None:
        super().__init__(shutdown_timeout=shutdown_timeout, **kwargs)
        self._handler = handler
        self._request_factory = request_factory
        self._on_reject = on_reject
        self._header_timeout = header_timeout
        self._refusal_headers = refusal_headers
        self._stall_timeout = stall_timeout
        self._on_startup = on_startup
        self._on_cleanup = on_cleanup
        self._handler_cancellation = handler_cancellation

    async def shutdown(self) -> None:
        return None

    async def _make_server(self) -> web.Server:
        await self._on_startup()
        return _TrafficServer(
            self._handler,
            request_factory=self._request_factory,
            handler_cancellation=self._handler_cancellation,
            on_reject=self._on_reject,
            header_timeout=self._header_timeout,
            refusal_headers=self._refusal_headers,
            stall_timeout=self._stall_timeout,
            **self._kwargs,
        )

    async def _cleanup_server(self) -> None:
        await self._on_cleanup()
