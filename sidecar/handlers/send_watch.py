"""The watch on a client that takes none of a relayed answer while a write waits on it."""

from __future__ import annotations

import asyncio


class SendWatch:
    """Cuts a client that takes none of an answer for `timeout` seconds while a write
    waits on it (nginx's `send_timeout`), so a socket that never reads holds no handler or
    upstream connection. A slow client is not cut while its queue shrinks: each
    check that finds it took something gives it another period."""

    __slots__ = ("_loop", "_queued", "_timeout", "_timer", "_transport")

    def __init__(self, transport: asyncio.Transport, timeout: float) -> None:
        # No isinstance check: uvloop's transports (`sidecar run`) are no asyncio classes.
        self._transport = transport
        self._timeout = timeout
        self._loop = asyncio.get_running_loop()
        self._timer: asyncio.TimerHandle | None = None
        self._queued = 0

    def arm(self) -> None:
        """Before a write: its bytes are queued (synchronously) before it first waits, so
        what is queued is taken as they leave the write, on the next loop turn."""
        self._queued = -1
        self._timer = self._loop.call_later(self._timeout, self._check)
        self._loop.call_soon(self._baseline)

    def _baseline(self) -> None:
        if self._queued < 0:
            self._queued = self._transport.get_write_buffer_size()

    def disarm(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _check(self) -> None:
        queued = self._transport.get_write_buffer_size()
        if queued and self._queued >= 0 and queued >= self._queued:
            self._timer = None
            self._transport.abort()  # the waiting write fails: the handler ends
            return
        self._queued = queued
        self._timer = self._loop.call_later(self._timeout, self._check)
