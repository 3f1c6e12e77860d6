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
    """Until a reader of the store gets event `last` (the Redis writer sends batches every
    few ms; until then the producing replica's own lookup knows more than Redis does)."""
    async with asyncio.timeout(10):
        async for batch in store.read(stream_id, last - 1):
            if batch:
                return
