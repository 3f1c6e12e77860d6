"""Readers parked on a future wake together at the next `wake`, once, and later readers
wait for the wake after that."""

from __future__ import annotations

import asyncio

from sidecar.stream.waiters import park, wake


async def test_wake_releases_every_parked_reader_and_empties_the_list() -> None:
    waiters: list[asyncio.Future[None]] = []
    readers = [asyncio.create_task(park(waiters)) for _ in range(3)]
    await asyncio.sleep(0)
    assert len(waiters) == 3
    assert not any(reader.done() for reader in readers)
    wake(waiters)
    assert waiters == []
    await asyncio.wait_for(asyncio.gather(*readers), 1)


async def test_a_reader_parked_after_a_wake_waits_for_the_next_one() -> None:
    waiters: list[asyncio.Future[None]] = []
    wake(waiters)  # nobody parked: nothing to release
    reader = asyncio.create_task(park(waiters))
    await asyncio.sleep(0)
    assert not reader.done()
    wake(waiters)
    await asyncio.wait_for(reader, 1)


async def test_wake_skips_a_reader_that_was_cancelled() -> None:
    waiters: list[asyncio.Future[None]] = []
    gone = asyncio.create_task(park(waiters))
    kept = asyncio.create_task(park(waiters))
    await asyncio.sleep(0)
    gone.cancel()
    await asyncio.gather(gone, return_exceptions=True)
    wake(waiters)  # its future is already done (cancelled): no InvalidStateError
    await asyncio.wait_for(kept, 1)
    assert gone.cancelled()
