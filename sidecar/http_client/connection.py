"""One keep-alive HTTP/1.1 connection to the upstream server: an asyncio protocol.

It carries one call at a time: `send` writes the whole request (head and body) in one
`write`, and what the socket reads goes to that call's `Response` parser inside the read
callback. Bytes that arrive while no call is waiting, or after an answer is complete,
mean the connection can no longer be trusted: it is closed.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, cast

from sidecar.http_client.response import Response

if TYPE_CHECKING:
    from sidecar.http_client.pool import Pool


class Connection(asyncio.Protocol):
    """The protocol of one upstream socket, owned by its `Pool`."""

    __slots__ = ("_pool", "closed", "idle_since", "response", "transport")

    def __init__(self, pool: Pool) -> None:
        self._pool = pool
        self.transport: asyncio.Transport | None = None
        self.response: Response | None = None
        self.closed = False
        self.idle_since = 0.0

    # ------------------------------------------------------------------ asyncio protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # A stream transport (uvloop's are not `asyncio.Transport` subclasses, but are one).
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        response = self.response
        if response is None:  # nobody asked: the server is out of step with this client
            self.drop()
            return
        response.feed(data)
        if response.spilled:  # bytes past the end of the answer
            self.drop()

    def eof_received(self) -> bool:
        return False  # the transport closes itself; `connection_lost` settles the call

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.transport = None
        response, self.response = self.response, None
        self._pool.forget(self)
        if response is not None:
            response.lost(exc)

    # ------------------------------------------------------------------ the pool's side

    def send(self, request: bytes, head_only: bool) -> Response:
        """Write a whole request; its answer is parsed as it comes."""
        transport = self.transport
        assert transport is not None
        assert self.response is None
        transport.write(request)
        # Its answer's parser is made once the request is on its way: no read (nor a lost
        # connection) reaches this protocol before the caller gives the loop back.
        response = self.response = Response(self, self._pool.loop, head_only)
        return response

    @property
    def usable(self) -> bool:
        transport = self.transport
        return not self.closed and transport is not None and not transport.is_closing()

    def finished(self, keep_alive: bool) -> None:
        """The answer is complete: back to the pool if the server keeps it open (and took
        the whole request: a server may answer before reading it all)."""
        self.response = None
        transport = self.transport
        if (
            keep_alive
            and self.usable
            and transport is not None
            and not transport.get_write_buffer_size()
        ):
            self._pool.put(self)
        else:
            self.drop()

    def drop(self) -> None:
        """Close now; a `Response` still on it has settled itself (it asked for this)."""
        self.closed = True
        self.response = None
        self._pool.forget(self)
        transport = self.transport
        if transport is not None:
            transport.close()

    def pause(self) -> None:
        if self.transport is not None:
            self.transport.pause_reading()

    def resume(self) -> None:
        if self.transport is not None:
            self.transport.resume_reading()
