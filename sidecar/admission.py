"""Process-wide admission: at most N live Claude streams, a bounded FIFO queue behind them.

A full queue rejects at once; a waiter that is not admitted within
`max_wait_seconds` is rejected with `retry-after`. Rejections are 529
`overloaded_error` (the prompt route renders them as 503). Once shutdown has ended the
live streams (`stop`), the waiters and every later call are turned away with a 503
`shutting_down` before Claude is called: a slot the stopped streams free is nobody's.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from collections import deque

from sidecar.config import ClaudeConfig
from sidecar.errors import Rejection, reject


class Admission:
    """A counting gate with a FIFO queue of bounded length and bounded wait."""

    @staticmethod
    def settings_key(config: ClaudeConfig) -> tuple[object, ...]:
        """The settings an admission gate is built from: a reload keeps it, with its
        admitted and queued streams, while they are unchanged."""
        return (config.max_concurrent_streams, config.queue.max_waiting,
                config.queue.max_wait_seconds)  # fmt: skip

    def __init__(self, config: ClaudeConfig) -> None:
        self.limit = config.max_concurrent_streams
        self.max_waiting = config.queue.max_waiting
        self.max_wait = config.queue.max_wait_seconds
        self.active = 0
        self._waiters: deque[asyncio.Future[None]] = deque()
        self.stopped = False

    @property
    def waiting(self) -> int:
        return len(self._waiters)

    def _overloaded(self, message: str, reason: str) -> Rejection:
        retry = max(1, math.ceil(self.max_wait or 1))
        return reject(reason, message, headers={"retry-after": str(retry)})

    def stop(self) -> None:
        """Shutdown: turn away the waiters and every call from now on (`shutting_down`)."""
        self.stopped = True
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_exception(_shutting_down())

    async def acquire(self) -> float:
        """Take a slot; returns seconds spent queued. Raises Rejection when overloaded."""
        if self.stopped:
            raise _shutting_down()
        if self.active < self.limit and not self._waiters:
            self.active += 1
            return 0.0
        if len(self._waiters) >= self.max_waiting:
            raise self._overloaded("too many concurrent streams, queue full", "queue_full")
        started = time.perf_counter()
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        try:
            async with asyncio.timeout(self.max_wait):
                await waiter
        except (TimeoutError, asyncio.CancelledError) as exc:
            if waiter.done() and not waiter.cancelled() and waiter.exception() is None:
                self.release()  # the slot was handed over just as we gave up: pass it on
            else:
                waiter.cancel()
            self._discard(waiter)
            if isinstance(exc, TimeoutError):
                raise self._overloaded(
                    "timed out waiting for a stream slot", "queue_timeout"
                ) from None
            raise
        return time.perf_counter() - started

    def _discard(self, waiter: asyncio.Future[None]) -> None:
        with contextlib.suppress(ValueError):
            self._waiters.remove(waiter)

    def release(self) -> None:
        """Free a slot, handing it straight to the oldest live waiter."""
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)  # the slot passes on; `active` is unchanged
                return
        self.active -= 1


def _shutting_down() -> Rejection:
    return reject(
        "shutting_down",
        "the sidecar is shutting down; send the request again (another replica answers)",
        headers={"retry-after": "1"},
    )
