"""The Redis quota store's Lua scripts, run as they are in a real redis-server: the
arguments and replies each script's comment documents (the store reads them by position)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
import redis.asyncio as aioredis

from sidecar.quotas.stores import lua
from tests.support.redis_server import RedisServer

BUCKETS, LEASES = "q:{alice}", "q:{alice}:leases"
KEYS = [BUCKETS, LEASES]
# ADMIT's replies: verdict, wait ms, now ms, then left / reset ms of r, m and d.
ADMITTED, REQUESTS, TOKENS_PER_MINUTE, CONCURRENCY, TOO_LARGE = 0, 1, 2, 4, 5


@pytest.fixture
async def client(redis_server: RedisServer) -> AsyncIterator[aioredis.Redis]:
    connection = aioredis.Redis.from_url(redis_server.url)
    try:
        yield connection
    finally:
        await connection.aclose()


async def admit(
    client: aioredis.Redis,
    *,
    rpm: int = 0,
    tpm: int = 0,
    slots: int = 0,
    tokens: int = 0,
    lease: str = "l1",
    offset: float = 0,
) -> list[int]:
    args: list[str | float] = [offset, rpm, tpm, 0, slots, tokens, lease, 60, 1]
    reply = await client.eval(lua.ADMIT, 2, *KEYS, *args)
    return [int(value) for value in reply]


async def test_admit_takes_a_request_until_the_minute_has_none_left(
    client: aioredis.Redis,
) -> None:
    first, second, third = [await admit(client, rpm=2) for _ in range(3)]
    assert [first[0], second[0], third[0]] == [ADMITTED, ADMITTED, REQUESTS]
    assert [first[3], second[3]] == [1, 0]  # requests left in the window
    assert 29_000 <= third[1] <= 30_000  # one request refills in 60 / 2 seconds
    # Rolled a minute on by Redis' clock (the offset), the bucket is full again.
    assert (await admit(client, rpm=2, offset=60))[0] == ADMITTED


async def test_admit_refuses_a_call_larger_than_a_whole_token_limit(
    client: aioredis.Redis,
) -> None:
    assert (await admit(client, tpm=100, tokens=101))[0] == TOO_LARGE
    assert (await admit(client, tpm=100, tokens=60))[0] == ADMITTED
    assert (await admit(client, tpm=100, tokens=60))[0] == TOKENS_PER_MINUTE


async def test_a_slot_is_a_lease_that_settle_frees_once(client: aioredis.Redis) -> None:
    assert (await admit(client, slots=1, lease="a"))[0] == ADMITTED
    assert (await admit(client, slots=1, lease="b"))[0] == CONCURRENCY
    settle: list[str | float] = [0, 0, 100, 0, "a", 0]
    assert await client.eval(lua.SETTLE, 2, *KEYS, *settle, 0) == 1
    # Sent again (the first reply was lost): the lease is gone, so nothing is counted twice.
    assert await client.eval(lua.SETTLE, 2, *KEYS, *settle, 1) == 0
    assert (await admit(client, slots=1, lease="b"))[0] == ADMITTED


async def test_settle_gives_back_what_a_call_reserved_and_did_not_use(
    client: aioredis.Redis,
) -> None:
    assert (await admit(client, tpm=100, tokens=80, slots=1, lease="a"))[5] == 20  # m left
    await client.eval(lua.SETTLE, 2, *KEYS, 0, 0, 100, 0, "a", 50, 0)
    # 50 of the 80 reserved came back: 70 are left for the next call, then none (5 more
    # would take 3 s to refill at 100 a minute).
    assert (await admit(client, tpm=100, tokens=70, lease="b"))[0] == ADMITTED
    assert (await admit(client, tpm=100, tokens=5, lease="c"))[0] == TOKENS_PER_MINUTE


async def test_renew_extends_a_held_lease_and_refuses_a_lapsed_one(
    client: aioredis.Redis,
) -> None:
    await admit(client, slots=2, lease="a")
    renew = lua.RENEW
    assert await client.eval(renew, 1, LEASES, 0, "a", 60) == 1
    # A minute and more on by Redis' clock the lease has lapsed: no renewal brings it back.
    assert await client.eval(renew, 1, LEASES, 61, "a", 60) == 0
    assert await client.zscore(LEASES, "a") is None
    assert await client.eval(renew, 1, LEASES, 0, "never-held", 60) == 0
