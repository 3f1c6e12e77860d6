"""A cancel a library swallowed is honoured at the loop's next turn."""

from __future__ import annotations

import asyncio
import contextlib

from sidecar.cancelling import honour_cancel


async def _call_that_swallows_a_cancel() -> None:
    # As Python 3.11's `asyncio.wait_for` does when a cancel lands as its call completes.
    with contextlib.suppress(asyncio.CancelledError):
        await asyncio.sleep(0.05)


async def test_a_loop_told_to_stop_stops_though_its_call_swallowed_the_cancel() -> None:
    turns = 0

    async def loop() -> None:
        nonlocal turns
        while True:
            await _call_that_swallows_a_cancel()
            turns += 1
            honour_cancel()

    task = asyncio.create_task(loop())
    await asyncio.sleep(0.01)
    task.cancel()
    await asyncio.wait([task], timeout=2)
    assert task.cancelled()
    assert turns == 1


async def test_a_task_not_told_to_stop_goes_on() -> None:
    async def once() -> str:
        honour_cancel()
        return "went on"

    assert await once() == "went on"


async def test_a_cancel_the_task_took_back_is_not_honoured() -> None:
    """`uncancel` (a handler that caught the cancel on purpose) clears it."""
    done = asyncio.Event()

    async def caught() -> str:
        try:
            await done.wait()
        except asyncio.CancelledError:
            task = asyncio.current_task()
            assert task is not None
            task.uncancel()
        honour_cancel()
        return "finished its work"

    task = asyncio.create_task(caught())
    await asyncio.sleep(0)
    task.cancel()
    assert await task == "finished its work"
