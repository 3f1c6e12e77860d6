"""The response cache of one process: its store, the answers in flight, and storing entries."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from sidecar.cache.entry import encode
from sidecar.cache.recording import Recording
from sidecar.cache.stores import CacheStore, CacheStoreError
from sidecar.outage import Outage

log = logging.getLogger("sidecar.cache")
# (result) → counted by telemetry: hit, miss, bypass, stored, skipped.
Counter = Callable[[str], None]


class ResponseCache:
    """The store plus the recordings in flight by key (what coalesced callers follow)."""

    def __init__(self, store: CacheStore, count: Counter | None = None) -> None:
        self.store = store
        self.inflight: dict[str, Recording] = {}
        self._count = count
        self._tasks: set[asyncio.Task[None]] = set()
        # Logged once per outage of the store (each failure is still counted `skipped`).
        self.outage = Outage(log, "cache store")

    def count(self, result: str) -> None:
        if self._count is not None:
            self._count(result)

    def record(self, key: str, stream: bool, ttl: float, *, keep: bool = True) -> Recording:
        """A recording for a miss on `key`, followed by identical requests until it ends.

        `keep=False` (the store failed on its lookup, counted `skipped` there): followed
        only, never written, so the outage costs no write per request and is counted once.
        A stream growing past what the store takes (`max_bytes`) stops being in flight
        then (`Recording.spilled`): it is never stored, and a request arriving after that
        calls Claude itself (counted `skipped` when it ends, as any answer not stored).
        """
        recording = Recording(
            stream,
            on_end=lambda done: self._ended(key, ttl, done, keep),
            limit=self.store.max_bytes,
            on_spill=lambda spilled: self._landed(key, spilled),
        )
        self.inflight[key] = recording
        return recording

    def _ended(self, key: str, ttl: float, recording: Recording, keep: bool) -> None:
        entry = recording.entry
        if not keep:
            self._landed(key, recording)
            return
        if entry is None:
            self._landed(key, recording)
            self.count("skipped")  # errors, cut-off, cancelled or abandoned: never stored
            return
        # Followed until the store has it: a request arriving while it is written replays
        # this answer (the store would not have it yet), not a Claude call of its own.
        task = asyncio.get_running_loop().create_task(self._put(key, encode(entry), ttl, recording))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _landed(self, key: str, recording: Recording) -> None:
        if self.inflight.get(key) is recording:  # (a newer call may have taken the key)
            del self.inflight[key]

    async def _put(self, key: str, value: bytes, ttl: float, recording: Recording) -> None:
        try:
            stored = await self.store.put(key, value, ttl)
        except CacheStoreError as exc:
            self.outage.failed(str(exc))
            stored = False
        else:
            self.outage.answered()
        finally:
            self._landed(key, recording)
        self.count("stored" if stored else "skipped")

    async def settled(self) -> None:
        """Wait for entries being written (tests, and close)."""
        if self._tasks:
            await asyncio.wait(list(self._tasks), timeout=5)

    async def close(self) -> None:
        await self.settled()
        await self.store.close()
