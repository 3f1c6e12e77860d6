"""Resume-store test helpers: numbered events of one size, filling a log, reading a stream
back, waiting until a store holds an event."""

from __future__ import annotations

import asyncio

from sidecar.stream.store import ResumeStore, StreamLog


def event(n: int) -> bytes:
    return b'id: s:%03d\ndata: {"token":"t%03d"}\n\n' % (n, n)  # one size for all


async def read_all(store: ResumeStore, stream_id: str, after: int) -> list[bytes]:
    out: list[bytes] = []
    async with asyncio.timeout(20):
        async for batch in store.read(stream_id, after):
            out.extend(batch)
    return out


def fill(log: StreamLog, count: int, start: int = 1) -> None:
    for n in range(start, start + count):
        log.append(event(n))


async def settled(store: ResumeStore, stream_id: str, last: int) -> None:
    """Until the store has event `last` (the Redis writer sends batches every few ms)."""
    async with asyncio.timeout(10):
        while True:
            info = await store.lookup(stream_id)
            if info is not None and info.last >= last:
                return
            await asyncio.sleep(0.01)
