"""Quota accounting when the caller is cancelled while Redis runs its admission."""

from __future__ import annotations

import asyncio
import contextlib

from redis.asyncio import Redis

from sidecar.config import QuotaConfig
from sidecar.identity import ANONYMOUS
from sidecar.quotas import QuotaGate
from sidecar.quotas.stores.redis import RedisQuotaStore
from tests.support.redis_server import running_redis
from tests.support.waiting import eventually

POLICY = QuotaConfig(concurrent_streams=1, tokens_per_minute=1000)


# Spins inside Redis for 0.5 s (Redis answers nobody meanwhile).
BUSY_SCRIPT = """
local t = redis.call('TIME')
local stop = tonumber(t[1]) * 1000000 + tonumber(t[2]) + 500000
repeat t = redis.call('TIME') until tonumber(t[1]) * 1000000 + tonumber(t[2]) > stop
return 1
"""


async def _scripts_run(admin: Redis) -> int:
    """EVALSHA calls Redis has run (the store's scripts; the busy one is an EVAL)."""
    stats = await admin.info("commandstats")
    return int(stats.get("cmdstat_evalsha", {}).get("calls", 0))


async def _busy(url: str) -> bool:
    """True once Redis is inside the busy script (a PING then gets no answer for a while)."""
    probe: Redis = Redis.from_url(url, socket_timeout=0.05)
    try:
        await probe.ping()
    except Exception:
        return True
    finally:
        await probe.aclose()
    return False


async def test_cancelled_admission_gives_back_its_slot_and_reservation() -> None:
    async with running_redis() as server:
        gate = QuotaGate(RedisQuotaStore(server.url))
        admin: Redis = Redis.from_url(server.url, decode_responses=True)
        try:
            warm = await gate.acquire(POLICY, "global", ANONYMOUS, "192.0.2.1", 10)
            await warm.settle(0, 0)
            # Keep Redis busy in a script while the admission script queues behind it, and
            # cancel its caller meanwhile: the script still runs (slot + 400 tokens) for a
            # caller that is gone.
            before = await _scripts_run(admin)
            busy = asyncio.create_task(admin.eval(BUSY_SCRIPT, 0))
            await eventually(lambda: _busy(server.url))
            admitting = asyncio.create_task(
                gate.acquire(POLICY, "global", ANONYMOUS, "192.0.2.1", 400)
            )
            for _ in range(50):  # until its command is written; the busy script outlasts this
                await asyncio.sleep(0)
            admitting.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await admitting
            await busy

            async def scripts_run(count: int) -> bool:
                return await _scripts_run(admin) >= count

            await eventually(lambda: scripts_run(before + 1))  # the orphaned admission ran

            async def slot_back() -> bool:
                return sum([await admin.zcard(key) for key in await admin.keys("*:leases")]) == 0

            await eventually(slot_back)
            lease = await gate.acquire(POLICY, "global", ANONYMOUS, "192.0.2.1", 10)
            assert lease.headers["anthropic-ratelimit-tokens-remaining"] == "990"
            await lease.settle(0, 10)
        finally:
            await admin.aclose()
            await gate.close()
