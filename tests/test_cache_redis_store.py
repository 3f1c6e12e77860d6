"""The Redis cache store under running sidecars: shared by replicas, a damaged entry replaced,
Redis down skipped and counted while Claude serves the request."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from redis.asyncio import Redis

from sidecar.cache.redis_store import PREFIX, RedisCacheStore
from sidecar.cache.stores import CacheStoreError
from sidecar.fake_claude import FakeServer
from tests.support.cache import BODY, asking, on_redis, post, post_at_once
from tests.support.otel import make_otel
from tests.support.redis_server import RedisServer
from tests.support.sidecars import SidecarFactory


async def test_replicas_share_entries_through_redis(
    fake: FakeServer, sidecar_for: SidecarFactory, redis_server: RedisServer
) -> None:
    async with (
        sidecar_for(on_redis(redis_server)) as one,
        sidecar_for(on_redis(redis_server)) as two,
    ):
        first = await post(one.url, BODY)
        assert one.runtime.cache is not None
        await one.runtime.cache.settled()
        second = await post(two.url, BODY)
    assert (first[1], second[1]) == ("MISS", "HIT")
    assert second[2] == first[2]
    assert fake.state.counters["requests"] == 1


async def test_replicas_on_the_built_in_fake_share_entries_and_its_settings_part_them(
    sidecar_for: SidecarFactory, redis_server: RedisServer
) -> None:
    # Each replica's built-in fake listens on a port of its own: that is no other Claude.
    def on_fake(tokens: int) -> dict[str, Any]:
        fake = {"tokens": tokens, "tokens_per_second": 0, "time_to_first_token_ms": 0}
        return {**on_redis(redis_server), "claude": {"base_url": "builtin:fake", "fake": fake}}

    async with (
        sidecar_for(on_fake(5)) as one,
        sidecar_for(on_fake(5)) as two,
        sidecar_for(on_fake(6)) as other,
    ):
        first = await post(one.url, BODY)
        assert one.runtime.cache is not None
        await one.runtime.cache.settled()
        second = await post(two.url, BODY)
        third = await post(other.url, BODY)  # another fake answers otherwise
    assert (first[1], second[1], third[1]) == ("MISS", "HIT", "MISS")
    assert second[2] == first[2]
    assert third[2] != first[2]


async def _damage_as_string(redis: Redis, key: bytes | str) -> None:
    await redis.set(key, b"SCC\x09 from another version")


async def _damage_as_hash(redis: Redis, key: bytes | str) -> None:
    # A value of another Redis type (another version's layout, another program's key):
    # Redis refuses the GET with WRONGTYPE; that is the entry not decoding, not an outage.
    await redis.delete(key)
    await redis.hset(key, "entry", "from another version")


async def _damage_as_list(redis: Redis, key: bytes | str) -> None:
    await redis.delete(key)
    await redis.rpush(key, b"from another version")


@pytest.mark.parametrize("damage", [_damage_as_string, _damage_as_hash, _damage_as_list])
async def test_a_damaged_entry_is_a_miss_and_is_replaced(
    fake: FakeServer,
    sidecar_for: SidecarFactory,
    redis_server: RedisServer,
    damage: Callable[[Redis, bytes | str], Awaitable[None]],
) -> None:
    otel = make_otel()
    async with sidecar_for(on_redis(redis_server), telemetry=otel.telemetry) as s:
        cache = s.runtime.cache
        assert cache is not None
        first = await post(s.url, BODY)
        await cache.settled()
        redis = Redis.from_url(redis_server.url)
        keys = await redis.keys(PREFIX + "*")
        assert len(keys) == 1
        await damage(redis, keys[0])
        damaged = await post(s.url, BODY)
        await cache.settled()
        replaced = await post(s.url, BODY)
        await redis.aclose()
    assert [first[:2], damaged[:2], replaced[:2]] == [(200, "MISS"), (200, "MISS"), (200, "HIT")]
    assert replaced[2] == damaged[2]  # the answer that replaced it
    assert fake.state.counters["requests"] == 2
    assert otel.count("sidecar.cache.lookups", **{"sidecar.cache.result": "skipped"}) == 0


async def test_redis_down_skips_the_cache_and_claude_answers(
    fake: FakeServer, sidecar_for: SidecarFactory, redis_server: RedisServer
) -> None:
    otel = make_otel()
    async with sidecar_for(on_redis(redis_server), telemetry=otel.telemetry) as s:
        await post(s.url, BODY)
        await redis_server.kill()
        down = [await post(s.url, BODY) for _ in range(2)]
        # A new request while Redis is down: answered, and its entry cannot be written.
        other = await post(s.url, asking("while redis is down"))
        assert s.runtime.cache is not None
        await s.runtime.cache.settled()
    assert [r[:2] for r in down] == [(200, "MISS"), (200, "MISS")]
    assert other[:2] == (200, "MISS")
    assert b"event: message_stop" in down[0][2]
    assert fake.state.counters["requests"] == 4
    skipped = otel.count("sidecar.cache.lookups", **{"sidecar.cache.result": "skipped"})
    assert skipped >= 3  # two lookups that could not read, one entry that could not be written


async def test_identical_requests_coalesce_while_redis_is_down(
    fake: FakeServer, sidecar_for: SidecarFactory, redis_server: RedisServer
) -> None:
    """Coalescing needs no store: with Redis down, ten identical concurrent requests still
    make one Claude call (each lookup counted `skipped`; the answer is not written)."""
    otel = make_otel()
    async with sidecar_for(on_redis(redis_server), telemetry=otel.telemetry) as s:
        await redis_server.kill()
        results = await post_at_once(s.url, asking("[[fake tokens=30 tps=100]] down"), 10)
        assert s.runtime.cache is not None
        await s.runtime.cache.settled()
    assert fake.state.counters["requests"] == 1
    assert sorted(str(cache) for _, cache, _ in results) == ["HIT"] * 9 + ["MISS"]
    assert len({raw for _, _, raw in results}) == 1
    assert b"event: message_stop" in results[0][2]
    assert otel.count("sidecar.cache.lookups", **{"sidecar.cache.result": "miss"}) == 0
    assert otel.count("sidecar.cache.lookups", **{"sidecar.cache.result": "skipped"}) >= 1
    assert otel.count("sidecar.cache.lookups", **{"sidecar.cache.result": "stored"}) == 0


async def test_a_stalled_redis_is_a_store_error_within_the_timeout_then_recovers(
    redis_server: RedisServer,
) -> None:
    """SIGSTOP: nothing answers. A lookup or a write fails within `redis_timeout_seconds`
    (a request waits no longer before Claude answers it), and works again once Redis does."""
    timeout = 0.25
    store = RedisCacheStore(redis_server.url, max_bytes=1 << 20, timeout=timeout)
    try:
        assert await store.put("k", b"entry", 60)
        async with redis_server.stalled():
            for call in (lambda: store.get("k"), lambda: store.put("other", b"entry", 60)):
                async with asyncio.timeout(timeout * 3):  # the old bound was timeout + 1 s
                    with pytest.raises(CacheStoreError):
                        await call()
        assert await store.get("k") == b"entry"
    finally:
        await store.close()


async def test_an_outage_is_logged_once_and_its_end_once_while_each_skip_is_counted(
    fake: FakeServer,
    sidecar_for: SidecarFactory,
    redis_server: RedisServer,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="sidecar.cache")
    otel = make_otel()
    async with sidecar_for(on_redis(redis_server), telemetry=otel.telemetry) as s:
        await redis_server.kill()
        for n in range(3):  # lookups that fail
            assert (await post(s.url, asking(f"while redis is down {n}")))[:2] == (200, "MISS")
        assert s.runtime.cache is not None
        await s.runtime.cache.settled()
        await redis_server.start()
        assert (await post(s.url, BODY))[:2] == (200, "MISS")
        await s.runtime.cache.settled()
    lines = [r.getMessage() for r in caplog.records if r.name == "sidecar.cache"]
    assert lines == ["cache store failed", "cache store recovered"]
    skipped = otel.count("sidecar.cache.lookups", **{"sidecar.cache.result": "skipped"})
    assert skipped == 3  # each lookup (nothing is recorded when the lookup failed)
