"""The Redis quota store: its keys (one hash tag per subject, the subject hidden) and how
long Redis keeps them."""

from __future__ import annotations

from redis.asyncio import Redis

from sidecar.quotas.stores import Limits
from sidecar.quotas.stores.redis import RedisQuotaStore, subject_keys
from tests.support.redis_server import RedisServer

FULL = Limits(requests_per_minute=100, tokens_per_minute=1000, tokens_per_day=5000)
RPM100 = Limits(requests_per_minute=100)


async def test_redis_keeps_a_subject_as_long_as_its_slowest_bucket_needs(
    redis_server: RedisServer,
) -> None:
    """The bucket hash's time to live is never shortened by an admission that checked only
    the requests bucket (it would expire the day's tokens with it)."""
    store = RedisQuotaStore(redis_server.url)
    raw: Redis = Redis.from_url(redis_server.url)
    try:
        subject = "global\x1fuser\x1fbob"
        assert (await store.admit(subject, FULL, 1000, "l1")).admitted
        buckets, _ = subject_keys(subject)
        day = await raw.pttl(buckets)
        assert day > 3_600_000  # hours until the day bucket is full again
        assert (await store.admit(subject, RPM100, 0, "l2")).admitted
        assert await raw.pttl(buckets) >= day - 1000
    finally:
        await raw.aclose()
        await store.close()


async def test_a_shorter_lease_never_shortens_the_lease_set_under_a_longer_one(
    redis_server: RedisServer,
) -> None:
    """After a reload shortens `lease_seconds`, admitting (or renewing) a lease under the
    new value must not make the subject's lease set expire before a stream admitted under
    the old one: that stream's slot would vanish and the concurrency limit be exceeded."""
    store = RedisQuotaStore(redis_server.url)
    raw: Redis = Redis.from_url(redis_server.url)
    before = Limits(concurrent_streams=5, lease_seconds=600)
    after = Limits(concurrent_streams=5, lease_seconds=2)
    try:
        subject = "global\x1fuser\x1fbob"
        _, leases = subject_keys(subject)
        assert (await store.admit(subject, before, 0, "old")).admitted
        assert (await store.admit(subject, after, 0, "new")).admitted
        assert await raw.pttl(leases) > 590_000  # the old stream's ten minutes
        assert await store.renew(subject, "new", after.lease_seconds)
        assert await raw.pttl(leases) > 590_000
        await store.settle(subject, after, "new", 0, 0)
        assert await raw.pttl(leases) > 590_000
        assert await raw.zrange(leases, 0, -1) == [b"old"]
    finally:
        await raw.aclose()
        await store.close()


async def test_redis_keys_share_a_hash_tag_and_hide_the_subject(redis_server: RedisServer) -> None:
    store = RedisQuotaStore(redis_server.url)
    raw: Redis = Redis.from_url(redis_server.url, decode_responses=True)
    try:
        subject = "global\x1fuser\x1falice@example.com"
        limits = Limits(requests_per_minute=5, concurrent_streams=1)
        assert (await store.admit(subject, limits, 0, "l1")).admitted
        buckets, leases = subject_keys(subject)
        assert buckets[buckets.index("{") :] == leases[leases.index("{") : len(buckets)]
        keys = sorted(await raw.keys("*"))
        assert keys == sorted([buckets, leases])
        assert not any("alice" in key for key in keys)
        assert 0 < await raw.pttl(buckets) <= 61_000  # forgotten once the bucket is full again
        assert 0 < await raw.pttl(leases) <= 61_000
    finally:
        await raw.aclose()
        await store.close()
