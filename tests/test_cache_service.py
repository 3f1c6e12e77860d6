"""The response cache of one process: a miss's recording is followed by identical requests
until it ends; only a completed answer is stored (counted `stored`), anything else or a
failing store is counted `skipped`; closing waits for entries being written."""

from __future__ import annotations

import asyncio
import logging

import pytest

from sidecar.cache.entry import decode
from sidecar.cache.service import ResponseCache
from sidecar.cache.stores import CacheStoreError, MemoryCacheStore
from sidecar.record import Outcome, StreamRecord


def store() -> MemoryCacheStore:
    return MemoryCacheStore(max_entries=10, max_bytes=1 << 20)


def finished(outcome: Outcome) -> StreamRecord:
    record = StreamRecord(request_id="r", route="/v1/", started=0.0)
    record.outcome = outcome
    record.input_tokens, record.output_tokens = 4, 2
    return record


async def test_a_completed_recording_is_stored_and_no_longer_in_flight() -> None:
    counted: list[str] = []
    cache = ResponseCache(store(), count=counted.append)
    recording = cache.record("k", stream=True, ttl=60)
    assert cache.inflight == {"k": recording}
    recording.chunk(b"event: message_start\n\n")
    recording.finish(finished("completed"))
    await cache.settled()
    assert cache.inflight == {}
    assert counted == ["stored"]
    stored = await cache.store.get("k")
    assert stored is not None
    assert decode(stored).chunks == [b"event: message_start\n\n"]
    await cache.close()


async def test_a_completed_recording_is_followed_until_the_store_has_it() -> None:
    # An identical request arriving between the call's end and its entry landing in the
    # store (a Redis round trip) replays the answer instead of calling Claude again.
    class Slow(MemoryCacheStore):
        def __init__(self) -> None:
            super().__init__(max_entries=10, max_bytes=1 << 20)
            self.writing = asyncio.Event()
            self.go_on = asyncio.Event()

        async def put(self, key: str, value: bytes, ttl: float) -> bool:
            self.writing.set()
            await self.go_on.wait()
            return await super().put(key, value, ttl)

    slow = Slow()
    cache = ResponseCache(slow)
    recording = cache.record("k", stream=True, ttl=60)
    recording.chunk(b"event: message_start\n\n")
    recording.finish(finished("completed"))
    await slow.writing.wait()
    assert await slow.get("k") is None
    assert cache.inflight == {"k": recording}  # what a lookup finds meanwhile
    assert recording.ended
    assert recording.completed
    slow.go_on.set()
    await cache.settled()
    assert cache.inflight == {}
    assert await slow.get("k") is not None
    await cache.close()


async def test_a_newer_call_of_the_same_key_stays_in_flight_after_the_entry_lands() -> None:
    cache = ResponseCache(store())
    first = cache.record("k", stream=True, ttl=60)
    first.chunk(b"a")
    first.finish(finished("completed"))
    newer = cache.record("k", stream=True, ttl=60)  # a `no-cache` request refreshing it
    await cache.settled()
    assert cache.inflight == {"k": newer}
    await cache.close()


@pytest.mark.parametrize("outcome", ["upstream_error", "client_cancelled", "idle_timeout"])
async def test_an_answer_that_did_not_complete_is_skipped(outcome: Outcome) -> None:
    counted: list[str] = []
    cache = ResponseCache(store(), count=counted.append)
    recording = cache.record("k", stream=True, ttl=60)
    recording.chunk(b"partial")
    recording.finish(finished(outcome))
    await cache.settled()
    assert counted == ["skipped"]
    assert cache.inflight == {}
    assert await cache.store.get("k") is None


async def test_a_failing_store_is_counted_skipped_each_time_and_logged_once_per_outage(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="sidecar.cache")

    class Failing(MemoryCacheStore):
        down = True

        async def put(self, key: str, value: bytes, ttl: float) -> bool:
            if self.down:
                raise CacheStoreError("down")
            return await super().put(key, value, ttl)

    counted: list[str] = []
    failing = Failing(max_entries=4, max_bytes=1024)
    cache = ResponseCache(failing, count=counted.append)

    async def store_one(key: str) -> None:
        recording = cache.record(key, stream=False, ttl=60)
        recording.message(b'{"type":"message"}')
        recording.finish(finished("completed"))
        await cache.settled()

    for key in ("a", "b", "c"):
        await store_one(key)
    failing.down = False
    await store_one("d")
    assert counted == ["skipped", "skipped", "skipped", "stored"]
    lines = [r.getMessage() for r in caplog.records if r.name == "sidecar.cache"]
    assert lines == ["cache store failed", "cache store recovered"]


async def test_a_newer_recording_of_the_same_key_stays_in_flight() -> None:
    cache = ResponseCache(store())  # no counter: counting is optional
    first = cache.record("k", stream=True, ttl=60)
    second = cache.record("k", stream=True, ttl=60)
    first.finish(finished("client_cancelled"))
    assert cache.inflight == {"k": second}
    second.finish(finished("client_cancelled"))
    assert cache.inflight == {}
    await cache.close()
