"""The send watch over a real socket pair: a client that takes nothing while a write waits
is cut after the timeout; one that keeps taking, however slowly, is not."""

from __future__ import annotations

import asyncio
import contextlib
import socket

from sidecar.handlers.send_watch import SendWatch

_CHUNK = b"x" * (1024 * 1024)


async def _pair() -> tuple[asyncio.StreamWriter, socket.socket]:
    """A writer on one end of a socket pair, and the other end, which the test reads or not."""
    mine, peer = socket.socketpair()
    _, writer = await asyncio.open_connection(sock=mine)
    return writer, peer


async def _fill(writer: asyncio.StreamWriter, watch: SendWatch) -> None:
    """Write until the transport holds bytes back, the watch armed as a relay arms it."""
    while writer.transport.get_write_buffer_size() == 0:
        watch.arm()
        writer.write(_CHUNK)
        watch.disarm()
    watch.arm()


async def test_a_client_taking_nothing_is_cut_after_the_timeout() -> None:
    writer, peer = await _pair()
    watch = SendWatch(writer.transport, 0.1)  # type: ignore[arg-type]
    await _fill(writer, watch)
    for _ in range(100):
        if writer.transport.is_closing():
            break
        await asyncio.sleep(0.05)
    assert writer.transport.is_closing()  # aborted: the waiting write fails
    peer.close()


async def test_a_slow_client_that_keeps_taking_is_not_cut() -> None:
    writer, peer = await _pair()
    peer.setblocking(False)
    watch = SendWatch(writer.transport, 0.1)  # type: ignore[arg-type]
    await _fill(writer, watch)
    taken = 0
    checks = 0
    # The peer takes a little at every turn of the watch: the queue shrinks each period.
    while writer.transport.get_write_buffer_size() and checks < 200:
        await asyncio.sleep(0.03)
        with contextlib.suppress(BlockingIOError):
            taken += len(peer.recv(64 * 1024))
        checks += 1
        assert not writer.transport.is_closing()
    watch.disarm()
    assert taken > 0
    assert not writer.transport.is_closing()
    writer.close()
    peer.close()
