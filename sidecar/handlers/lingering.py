"""WebSockets that close with a bounded lingering close (nginx's `lingering_close`).

When a peer breaks the protocol mid-message (a message over `websocket_max_message_bytes`,
a bad frame, text that is not UTF-8), aiohttp sends the close frame (`1009`, `1002`,
`1007`) and closes the socket at once, while most of the peer's message is still on its
way. A socket closed with unread bytes makes the kernel answer them with a reset (RFC 1122
4.2.2.13), and a peer that gets one loses what it had not read yet: the close frame. It
never learns why.

Both sides of the app route's relay close such a socket lingering instead: the socket is
held open by a duplicate of its descriptor while aiohttp closes its own, its write side is
shut (FIN after the close frame, once that is written) and whatever still arrives is read
and dropped, until the peer closes its side, nothing came for `LINGER_IDLE_SECONDS`,
`LINGER_SECONDS` passed or `LINGER_BYTES` were dropped. Only these error closes linger (no
work on any other close, nothing per message).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
from typing import Final

import aiohttp

from sidecar.stream.websocket_heartbeat import PatientClientWebSocket, PatientServerWebSocket

LINGER_SECONDS: Final = 30.0  # nginx's `lingering_time`
LINGER_IDLE_SECONDS: Final = 5.0  # nginx's `lingering_timeout`
LINGER_BYTES: Final = 64 * 1024 * 1024
# The codes aiohttp closes with when the peer's frames broke off mid-message.
_PEER_MAY_BE_SENDING: Final = frozenset(
    {
        aiohttp.WSCloseCode.PROTOCOL_ERROR,
        aiohttp.WSCloseCode.INVALID_TEXT,
        aiohttp.WSCloseCode.MESSAGE_TOO_BIG,
    }
)
_LINGERING: set[asyncio.Task[None]] = set()  # they outlive their handler


class LingeringServerWebSocket(PatientServerWebSocket):
    """The client's side of the relay: an error close lingers (see the module), and a Pong
    late behind a backlog is not missed (`PatientServerWebSocket`)."""

    async def close(
        self, *, code: int = aiohttp.WSCloseCode.OK, message: bytes = b"", drain: bool = True
    ) -> bool:
        request = self._req
        transport = request.transport if request is not None else None
        held = _hold(transport) if code in _PEER_MAY_BE_SENDING and not self.closed else None
        try:
            return await super().close(code=code, message=message, drain=drain)
        finally:
            if held is not None:
                _linger(held, transport)


class LingeringClientWebSocket(PatientClientWebSocket):
    """The app's side of the relay: an error close lingers (see the module), and a Pong
    late behind a backlog is not missed (`PatientClientWebSocket`)."""

    async def close(self, *, code: int = aiohttp.WSCloseCode.OK, message: bytes = b"") -> bool:
        held = transport = None
        if code in _PEER_MAY_BE_SENDING and not self.closed:
            connection = self._response.connection
            transport = connection.transport if connection is not None else None
            held = _hold(transport)
        try:
            return await super().close(code=code, message=message)
        finally:
            if held is not None:
                _linger(held, transport)


def lingering_count() -> int:
    """How many closed sockets are still lingering."""
    return len(_LINGERING)


async def stop_lingering() -> None:
    """Close every lingering socket now (the sidecar is stopping)."""
    tasks = list(_LINGERING)
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


def _hold(transport: asyncio.BaseTransport | None) -> socket.socket | None:
    """A duplicate of `transport`'s socket: the connection stays open while it is held."""
    if transport is None or transport.is_closing():
        return None
    raw = transport.get_extra_info("socket")
    if raw is None:
        return None
    try:
        held = socket.socket(fileno=os.dup(raw.fileno()))
    except OSError:
        return None
    held.setblocking(False)
    return held


def _linger(held: socket.socket, transport: asyncio.BaseTransport | None) -> None:
    """Read and drop what still arrives on `held`, bounded, then close it."""
    # The write side is shut once aiohttp wrote all it had (the close frame): the peer
    # then reads the close frame and an end, and closes its side, which ends the linger.
    # (uvloop's transports, under `sidecar run`, are no asyncio classes: asked by name.)
    buffered = getattr(transport, "get_write_buffer_size", None)
    flushed = buffered is not None and not buffered()
    task = asyncio.get_running_loop().create_task(_drop_until_closed(held, shut=flushed))
    _LINGERING.add(task)
    task.add_done_callback(_LINGERING.discard)


async def _drop_until_closed(held: socket.socket, *, shut: bool) -> None:
    loop = asyncio.get_running_loop()
    dropped = 0
    try:
        if shut:
            held.shutdown(socket.SHUT_WR)
        async with asyncio.timeout(LINGER_SECONDS):
            while dropped < LINGER_BYTES:
                async with asyncio.timeout(LINGER_IDLE_SECONDS):
                    data = await loop.sock_recv(held, 65536)
                if not data:  # the peer closed its side: nothing is left unread
                    break
                dropped += len(data)
    except (TimeoutError, OSError):
        pass  # bounded: what is still unread now may be answered with a reset
    finally:
        with contextlib.suppress(OSError):
            held.close()
