"""The cache stores' contract, run against the memory store and a real redis-server."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest

from sidecar.cache.redis_store import RedisCacheStore
from sidecar.cache.stores import CacheStore, CacheStoreError, MemoryCacheStore, make_store
from sidecar.config import Config
from tests.support.redis_server import RedisServer, running_redis
from tests.support.waiting import eventually


@pytest.fixture(params=["memory", "redis"])
async def store(request: pytest.FixtureRequest) -> AsyncIterator[CacheStore]:
    """Each store under the same contract (Redis: a fresh server per test)."""
    if request.param == "memory":
        memory = MemoryCacheStore(max_entries=100, max_bytes=10_000)
        yield memory
        await memory.close()
        return
    async with running_redis() as server:
        redis = RedisCacheStore(server.url, max_bytes=10_000)
        await redis.start()
        yield redis
        await redis.close()


async def test_a_stored_value_is_a_hit_and_an_unknown_key_a_miss(store: CacheStore) -> None:
    assert await store.get("k1") is None
    assert await store.put("k1", b"\x00answer\xff", ttl=60)
    assert await store.get("k1") == b"\x00answer\xff"
    assert await store.get("k2") is None


async def test_putting_again_replaces_the_value(store: CacheStore) -> None:
    await store.put("k", b"old", ttl=60)
    await store.put("k", b"new", ttl=60)
    assert await store.get("k") == b"new"


async def test_an_entry_expires_after_its_ttl(store: CacheStore) -> None:
    await store.put("short", b"v", ttl=0.2)
    await store.put("long", b"v", ttl=60)
    assert await store.get("short") == b"v"

    async def gone() -> bool:
        return await store.get("short") is None

    await eventually(gone)
    assert await store.get("long") == b"v"


async def test_a_value_larger_than_max_bytes_is_refused(store: CacheStore) -> None:
    assert not await store.put("big", b"x" * 10_001, ttl=60)
    assert await store.get("big") is None


async def test_memory_store_evicts_the_least_recently_used_by_count() -> None:
    store = MemoryCacheStore(max_entries=3, max_bytes=10_000)
    for key in ("a", "b", "c"):
        await store.put(key, key.encode(), ttl=60)
    assert await store.get("a") == b"a"  # now the most recently used
    await store.put("d", b"d", ttl=60)
    assert await store.get("b") is None  # the least recently used went
    assert [await store.get(k) for k in ("a", "c", "d")] == [b"a", b"c", b"d"]
    assert len(store) == 3


async def test_memory_store_evicts_the_least_recently_used_by_bytes() -> None:
    store = MemoryCacheStore(max_entries=100, max_bytes=100)
    await store.put("a", b"a" * 40, ttl=60)
    await store.put("b", b"b" * 40, ttl=60)
    await store.get("a")
    await store.put("c", b"c" * 40, ttl=60)  # 120 bytes: one must go, the oldest read
    assert await store.get("b") is None
    assert await store.get("a") is not None
    assert await store.get("c") is not None
    assert store.total_bytes == 80


async def test_redis_down_is_a_store_error_and_it_recovers(redis_server: RedisServer) -> None:
    store = RedisCacheStore(redis_server.url, max_bytes=1000, timeout=0.5)
    try:
        await store.put("k", b"v", ttl=60)
        await redis_server.kill()
        with pytest.raises(CacheStoreError):
            await store.get("k")
        with pytest.raises(CacheStoreError):
            await store.put("k", b"v", ttl=60)
        await redis_server.start()

        async def back() -> bool:
            try:
                return await store.put("k", b"again", ttl=60)
            except CacheStoreError:
                return False

        await eventually(back)
        assert await store.get("k") == b"again"
    finally:
        await store.close()


async def test_two_replicas_share_entries_through_redis(redis_server: RedisServer) -> None:
    one = RedisCacheStore(redis_server.url, max_bytes=1000)
    two = RedisCacheStore(redis_server.url, max_bytes=1000)
    try:
        await one.put("shared", b"v", ttl=60)
        assert await two.get("shared") == b"v"
    finally:
        await one.close()
        await two.close()


def _config(**cache: Any) -> Config:
    return Config.model_validate(
        {"cache": {"enabled": True, **cache}, "quotas": {"redis_url": "redis://127.0.0.1:1/0"}}
    )


async def test_make_store_follows_the_config() -> None:
    for name in ("memory", "redis"):
        store = make_store(_config(store=name))
        assert store.name == name
        await store.close()
