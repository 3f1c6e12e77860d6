"""aiohttp's WebSocket heartbeat, made patient with a peer that is slow, not dead.

aiohttp's `heartbeat` (3.14: `_send_heartbeat` / `_pong_not_received`, in `web_ws` and
`client_ws` alike) starts the pong's deadline (half the interval) when the Ping is queued,
and only bytes received from the peer stop it. A peer that is alive and reading, but has a
backlog queued toward it (in the transport's write buffer, or in the kernel's send queue:
a few MB a socket), gets the Ping only after that backlog, so its Pong is late, and aiohttp
would close a healthy slow reader as dead. The same holds when the sidecar is the slow
one: a peer whose messages wait unread here (the relay holding back for the other side)
has its Pong behind them, unseen.

So a missed Pong counts only when nothing is queued either way: no bytes queued toward the
peer (`get_write_buffer_size()`, and on Linux the socket's `SIOCOUTQ`, bytes unsent or
unacknowledged) and none of its messages unread. Otherwise the heartbeat is re-armed (the
next Ping after another interval), and a backlog that never drains is for the relay's
stall watch (`app.send_timeout_seconds`) and the kernel's `TCP_USER_TIMEOUT` to cut
(`sidecar.listener.bound_unaccepted_bytes`). A peer that went with nothing queued toward
it is still found dead by its first unanswered Ping.

This is the one place the sidecar touches aiohttp's heartbeat internals;
`tests/test_stream_websocket_heartbeat.py` checks them against the installed aiohttp.
"""

from __future__ import annotations

import array
import asyncio
import fcntl
import sys
import termios
from typing import Any, Final

import aiohttp
from aiohttp import web

# Linux's TIOCOUTQ on a TCP socket is SIOCOUTQ: bytes unsent plus sent but unacknowledged.
_OUTQ: Final[int | None] = getattr(termios, "TIOCOUTQ", None) if sys.platform == "linux" else None


def bytes_queued_toward(transport: asyncio.BaseTransport | None) -> int:
    """Bytes written to `transport` its peer has not acknowledged yet, as far as is known:
    the transport's own buffer, plus the kernel's send queue where it can be asked."""
    if transport is None:
        return 0
    buffered = getattr(transport, "get_write_buffer_size", None)  # uvloop's: asked by name
    queued = buffered() if buffered is not None else 0
    sock = transport.get_extra_info("socket")
    if _OUTQ is None or sock is None or queued:
        return int(queued)
    outq = array.array("i", [0])
    try:
        fcntl.ioctl(sock.fileno(), _OUTQ, outq, True)
    except (OSError, ValueError):
        return 0  # not a socket that can say (closed, or not TCP)
    return outq[0]


def _backlogged(reader: Any, transport: asyncio.BaseTransport | None) -> bool:
    unread = getattr(reader, "_buffer", None)
    return bool(unread) or bytes_queued_toward(transport) > 0


class PatientServerWebSocket(web.WebSocketResponse):
    """The client's side: a Pong late behind a backlog is not missed (see the module)."""

    def _pong_not_received(self) -> None:
        request = self._req
        transport = request.transport if request is not None else None
        if not self.closed and _backlogged(self._reader, transport):
            self._reset_heartbeat()
            return
        super()._pong_not_received()


class PatientClientWebSocket(aiohttp.ClientWebSocketResponse):
    """The app's side: a Pong late behind a backlog is not missed (see the module)."""

    def _pong_not_received(self) -> None:
        connection = self._conn
        transport = connection.transport if connection is not None else None
        if not self.closed and _backlogged(self._reader, transport):
            self._reset_heartbeat()
            return
        super()._pong_not_received()
