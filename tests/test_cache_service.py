"""The response cache of one process: a miss's recording is followed by identical requests
until it ends; only a completed answer is stored (counted `stored`), anything else or a
failing store is counted `skipped`; closing waits for entries being written."""

from __future__ import annotations

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
    assert cache.inflight == {}
    await cache.settled()
    assert counted == ["stored"]
    stored = await cache.store.get("k")
    assert stored is not None
    assert decode(stored).chunks == [b"event: message_start\n\n"]
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
