"""A keep-alive pool of HTTP/1.1 connections to one origin (Claude, or the built-in fake).

Why not `aiohttp.ClientSession`: a call through it costs about 2.5 × the CPU of this
pool (request and response objects, timers, tracing hooks, a body reader per call),
and the sidecar makes one per Claude call. What the sidecar needs is narrow: one
origin, a request written whole, an answer parsed by llhttp (`httptools`, the parser
uvicorn uses) and its body pushed to the relay. Everything about HTTP framing stays
llhttp's; this module keeps sockets.

Connections are reused most-recent first (a warm one is least likely to have been
closed by the server), closed after `keepalive` seconds idle, and capped at `limit`
open at once (calls beyond it wait for one to be free). TLS uses the system's trust
store with the origin's host name checked, as `ssl.create_default_context` sets up.
"""

from __future__ import annotations

import asyncio
import collections
import ssl
from collections.abc import Callable, Mapping
from typing import Final

from yarl import URL

from sidecar.http_client.connection import Connection
from sidecar.http_client.errors import ConnectError
from sidecar.http_client.response import Response

_DEFAULT_PORTS: Final = {"http": 80, "https": 443}
_FORBIDDEN: Final = str.maketrans("", "", "\r\n\0")


class Pool:
    """Connections to one origin; `request` sends a call and returns once its head is in."""

    def __init__(
        self,
        origin: str,
        *,
        limit: int,
        connect_timeout: float | None,
        keepalive: float = 30.0,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        url = URL(origin)
        if url.scheme not in _DEFAULT_PORTS or not url.host:
            raise ValueError(f"not an http(s) origin: {origin!r}")
        self.loop = asyncio.get_running_loop()
        self._host = url.host
        self._port = url.port or _DEFAULT_PORTS[url.scheme]
        self._tls: ssl.SSLContext | None = None
        if url.scheme == "https":
            self._tls = ssl_context or ssl.create_default_context()
        authority = url.raw_host or self._host
        if ":" in authority:  # IPv6 literal
            authority = f"[{authority}]"
        if url.port is not None and url.port != _DEFAULT_PORTS[url.scheme]:
            authority += f":{url.port}"
        self._host_line = f"host: {authority}"
        self._limit = max(1, limit)
        self._connect_timeout = connect_timeout
        self._keepalive = keepalive
        self._idle: list[Connection] = []  # most recently used last
        self._open: set[Connection] = set()
        self._waiters: collections.deque[asyncio.Future[None]] = collections.deque()
        self._sweeping: asyncio.TimerHandle | None = None
        self._closed = False

    async def request(
        self,
        method: str,
        target: str,
        headers: Mapping[str, str],
        body: bytes | None,
        written: Callable[[], object] | None = None,
    ) -> Response:
        """Send `method target` with `headers` (names lower-case) and `body`; returns the
        answer with its status and headers read. `target` is the path and query, sent as is.

        `written` runs right after the request is written, before the head is awaited:
        the caller's bookkeeping runs while the server works on the answer, not before
        the request leaves. It runs only if the request was written; if it raises, the
        call ends with that error (its answer unread, the connection closed).

        Raises `ConnectError` when no connection opens, `Disconnected` or
        `MalformedResponse` when the answer's head does not come whole.
        """
        request = self._serialise(method, target, headers, body)
        connection = await self._acquire()
        response = connection.send(request, method == "HEAD")
        try:
            if written is not None:
                written()
            await response.head()
        except BaseException:
            response.close()
            raise
        return response

    def _serialise(
        self, method: str, target: str, headers: Mapping[str, str], body: bytes | None
    ) -> bytes:
        fields = [f"\r\n{name}: {value}" for name, value in headers.items()]
        if body is not None or method in ("POST", "PUT", "PATCH"):
            fields.append(f"\r\ncontent-length: {len(body) if body else 0}")
        head = f"{method} {target} HTTP/1.1\r\n{self._host_line}" + "".join(fields)
        # CR, LF and NUL never reach the wire from a name or value: none can add a header
        # or a request (the listener's parser refuses them already; this holds whatever
        # the source). Three scans in C; the rare offender is cleaned line by line.
        breaks = len(fields) + 1
        if head.count("\n") != breaks or head.count("\r") != breaks or "\0" in head:
            lines = [f"{method} {target} HTTP/1.1", self._host_line]
            lines += (field[2:] for field in fields)
            head = "\r\n".join(line.translate(_FORBIDDEN) for line in lines)
        return head.encode("utf-8", "surrogateescape") + b"\r\n\r\n" + (body or b"")

    # ------------------------------------------------------------------ connections

    async def _acquire(self) -> Connection:
        connection = self._idle_connection()
        if connection is not None:
            return connection
        while len(self._open) >= self._limit and not self._closed:
            waiter = self.loop.create_future()
            self._waiters.append(waiter)
            try:
                await waiter
            finally:
                if waiter in self._waiters:
                    self._waiters.remove(waiter)
            connection = self._idle_connection()
            if connection is not None:
                return connection
        if self._closed:  # also while a call waited for a connection
            raise ConnectError("the connection pool is closed")
        return await self._connect()

    def _idle_connection(self) -> Connection | None:
        """The most recently used idle connection still open (closed ones are passed over)."""
        idle = self._idle
        while idle:
            connection = idle.pop()
            if connection.usable:
                return connection
        return None

    async def _connect(self) -> Connection:
        connection = Connection(self)
        self._open.add(connection)
        try:
            async with asyncio.timeout(self._connect_timeout):
                await self.loop.create_connection(
                    lambda: connection,
                    self._host,
                    self._port,
                    ssl=self._tls,
                    server_hostname=self._host if self._tls is not None else None,
                )
        except (OSError, TimeoutError, ssl.SSLError) as exc:
            self.forget(connection)
            kind = "timed out" if isinstance(exc, TimeoutError) else type(exc).__name__
            raise ConnectError(f"cannot connect to {self._host}:{self._port} ({kind})") from exc
        except BaseException:
            self.forget(connection)
            if connection.transport is not None:
                connection.transport.close()
            raise
        return connection

    def connections(self) -> frozenset[Connection]:
        """The open connections, idle or carrying a call."""
        return frozenset(self._open)

    def put(self, connection: Connection) -> None:
        """A connection whose answer is complete: reusable by the next call."""
        if self._closed:
            connection.drop()
            return
        connection.idle_since = self.loop.time()
        self._idle.append(connection)
        if self._sweeping is None:
            self._sweeping = self.loop.call_later(self._keepalive, self._sweep)
        self._wake_one()

    def forget(self, connection: Connection) -> None:
        """A connection that closed (or is closing): it no longer counts."""
        if connection in self._open:
            self._open.discard(connection)
            if connection in self._idle:  # closed while idle (rare: a list scan is fine)
                self._idle.remove(connection)
            self._wake_one()

    def _wake_one(self) -> None:
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return

    def _sweep(self) -> None:
        """Close connections idle longer than `keepalive`; again later while any are idle."""
        self._sweeping = None
        horizon = self.loop.time() - self._keepalive
        stale = [c for c in self._idle if c.idle_since <= horizon or not c.usable]
        if stale:
            self._idle = [c for c in self._idle if c not in stale]
            for connection in stale:
                connection.drop()
        if self._idle:
            wait = self._idle[0].idle_since + self._keepalive - self.loop.time()
            self._sweeping = self.loop.call_later(max(wait, 0.05), self._sweep)

    @property
    def open_connections(self) -> int:
        """Connections open now, idle or carrying a call."""
        return len(self._open)

    @property
    def idle_connections(self) -> int:
        return len(self._idle)

    async def close(self) -> None:
        """Close every connection (calls in flight end with `Disconnected`)."""
        self._closed = True
        if self._sweeping is not None:
            self._sweeping.cancel()
            self._sweeping = None
        self._idle.clear()
        for connection in list(self._open):
            transport = connection.transport
            if transport is not None:
                transport.close()
        for waiter in self._waiters:
            if not waiter.done():
                waiter.set_result(None)
        await asyncio.sleep(0)  # let the transports' `connection_lost` run
