"""Waiting for state that another task or process changes, bounded so a hang fails the test."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable


async def eventually(predicate: Callable[[], Awaitable[bool]], timeout: float = 10) -> None:
    """Poll `predicate` until it holds (for state another process or task changes)."""
    async with asyncio.timeout(timeout):
        while True:
            if await predicate():
                return
            await asyncio.sleep(0.02)


async def holds(value: bool) -> bool:
    """`value` as a predicate result, for `eventually(lambda: holds(...))` on plain state."""
    return value
