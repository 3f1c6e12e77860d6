"""Readers parked on a future until the thing they read grows: no task and no polling per
reader, and one wake per write batch (a resume buffer, a cache recording)."""

from __future__ import annotations

import asyncio


async def park(waiters: list[asyncio.Future[None]]) -> None:
    """Wait until the next `wake(waiters)`."""
    waiter = asyncio.get_running_loop().create_future()
    waiters.append(waiter)
    await waiter


def wake(waiters: list[asyncio.Future[None]]) -> None:
    """Release every parked reader (the list is emptied in place)."""
    parked = waiters[:]
    waiters.clear()
    for waiter in parked:
        if not waiter.done():
            waiter.set_result(None)
