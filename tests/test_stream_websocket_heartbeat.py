"""Contract test: the heartbeat internals `sidecar.stream.websocket_heartbeat` overrides are
still there on this aiohttp, and what it reads of a socket's send queue is right.

The relay's own behaviour (a slow reader kept, a dead peer cut) is in
`tests/test_app_websocket.py`."""

from __future__ import annotations

import asyncio
import socket
import sys

import aiohttp
import pytest
from aiohttp import web

from sidecar.stream.websocket_heartbeat import (
    PatientClientWebSocket,
    PatientServerWebSocket,
    bytes_queued_toward,
)
from tests.support.waiting import eventually, holds


@pytest.mark.parametrize("base", [web.WebSocketResponse, aiohttp.ClientWebSocketResponse])
def test_the_heartbeat_hooks_it_overrides_are_aiohttps(base: type) -> None:
    """aiohttp calls `_pong_not_received` when a Pong is late and `_reset_heartbeat` re-arms;
    the overrides lean on both (and on `_reader`, read by name)."""
    assert callable(getattr(base, "_pong_not_received", None))
    assert callable(getattr(base, "_reset_heartbeat", None))
    assert issubclass(PatientServerWebSocket, web.WebSocketResponse)
    assert issubclass(PatientClientWebSocket, aiohttp.ClientWebSocketResponse)


async def test_bytes_queued_in_the_transport_are_counted() -> None:
    """What the transport still holds counts, whatever the platform."""
    server = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)  # never reads
    port = server.sockets[0].getsockname()[1]
    _, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(b"x" * (32 * 1024 * 1024))
        assert bytes_queued_toward(writer.transport) > 0
        assert bytes_queued_toward(None) == 0
    finally:
        writer.transport.abort()
        server.close()
        await server.wait_closed()


@pytest.mark.skipif(sys.platform != "linux", reason="the kernel's send queue is read on Linux")
async def test_bytes_queued_in_the_kernel_are_counted() -> None:
    """Bytes the process handed to the kernel but the peer has not taken count too (SIOCOUTQ),
    and none once the peer read them all."""
    listener = socket.create_server(("127.0.0.1", 0))
    sender = socket.create_connection(listener.getsockname())
    peer, _ = listener.accept()
    sender.setblocking(False)
    handed = 0
    try:
        while True:
            handed += sender.send(b"x" * 65536)
    except BlockingIOError:
        pass
    _, writer = await asyncio.open_connection(sock=sender)
    try:
        assert writer.transport.get_write_buffer_size() == 0  # all of it is the kernel's
        assert bytes_queued_toward(writer.transport) > 0
        peer.settimeout(10)
        while handed:
            handed -= len(peer.recv(1 << 20))
        # The last acknowledgement is the kernel's, soon after.
        await eventually(lambda: holds(bytes_queued_toward(writer.transport) == 0))
    finally:
        writer.transport.abort()
        peer.close()
        listener.close()
