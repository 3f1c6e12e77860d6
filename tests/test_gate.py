"""The quota gate: an admission undone when its caller is cancelled, lease ids, and
renewals that end with their lease."""

from __future__ import annotations

import asyncio
import contextlib

import pytest
from redis.asyncio import Redis

from sidecar.config import QuotaConfig
from sidecar.errors import Rejection
from sidecar.identity import ANONYMOUS
from sidecar.quotas.gate import QuotaGate, QuotaLease
from sidecar.quotas.stores import Limits
from sidecar.quotas.stores.memory import MemoryQuotaStore
from sidecar.quotas.stores.redis import RedisQuotaStore
from tests.support.redis_server import running_redis
from tests.support.waiting import eventually

CANCEL_POLICY = QuotaConfig(concurrent_streams=1, tokens_per_minute=1000)


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


async def _ran_then_freed(admin: Redis, before: int, timeout: float = 10) -> None:
    """Wait until Redis has run one more of the store's scripts than `before` (an admission
    the gate gave up on), then until no lease is left in any subject's lease set."""

    async def scripts_run() -> bool:
        return await _scripts_run(admin) >= before + 1

    async def slot_back() -> bool:
        return sum([await admin.zcard(key) for key in await admin.keys("*:leases")]) == 0

    await eventually(scripts_run)
    await eventually(slot_back, timeout=timeout)


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
            warm = await gate.acquire(CANCEL_POLICY, "global", ANONYMOUS, "192.0.2.1", 10)
            await warm.settle(0, 0)
            # Keep Redis busy in a script while the admission script queues behind it, and
            # cancel its caller meanwhile: the script still runs (slot + 400 tokens) for a
            # caller that is gone.
            before = await _scripts_run(admin)
            busy = asyncio.ensure_future(admin.eval(BUSY_SCRIPT, 0))
            await eventually(lambda: _busy(server.url))
            admitting = asyncio.create_task(
                gate.acquire(CANCEL_POLICY, "global", ANONYMOUS, "192.0.2.1", 400)
            )
            for _ in range(50):  # until its command is written; the busy script outlasts this
                await asyncio.sleep(0)
            admitting.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await admitting
            await busy

            await _ran_then_freed(admin, before)  # the orphaned admission ran, its slot back
            lease = await gate.acquire(CANCEL_POLICY, "global", ANONYMOUS, "192.0.2.1", 10)
            assert lease.headers["anthropic-ratelimit-tokens-remaining"] == "990"
            await lease.settle(0, 10)
        finally:
            await admin.aclose()
            await gate.close()


def test_lease_ids_are_unique_and_a_new_prefix_does_not_repeat_them() -> None:
    """Ids are a per-process random prefix and a counter: replicas sharing Redis draw
    their own prefix, and a forked child draws a new one (the hook `os.fork` runs in
    the child is called here directly: forking a test process with threads may hang)."""
    from sidecar.quotas import gate

    ids = [gate.QuotaLease().lease_id for _ in range(1000)]
    assert len(set(ids)) == 1000
    gate.reseed_lease_ids()
    after = [gate.QuotaLease().lease_id for _ in range(1000)]
    assert len(set(after)) == 1000
    assert not set(after) & set(ids)
    assert after[0][:16] != ids[0][:16]  # a new prefix, not just a later count


async def test_a_settled_lease_stops_renewing_though_its_renewal_swallowed_the_cancel(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Settling cancels the lease's renewals; a cancel lost in the store's call (redis-py's
    `asyncio.wait_for` on Python 3.11) still ends them, with no 'lease expired' warning."""
    renewing = asyncio.Event()

    class SwallowingStore(MemoryQuotaStore):
        renews_leases = True
        settles_inline = True

        async def renew(self, subject: str, lease_id: str, lease_seconds: float) -> bool:
            renewing.set()
            with contextlib.suppress(asyncio.CancelledError):  # lost, as the call completes
                await asyncio.sleep(0.2)
            return await super().renew(subject, lease_id, lease_seconds)

    gate = QuotaGate(SwallowingStore())
    limits = Limits(concurrent_streams=1, lease_seconds=0.06)
    decision = await gate.store.admit("s", limits, 0, "lease-1")
    assert decision.admitted
    lease = QuotaLease(gate, "s", limits, 0)
    lease.lease_id = "lease-1"
    lease.start_renewal()
    renewal = lease.renewal
    assert renewal is not None
    await asyncio.wait_for(renewing.wait(), 5)
    with caplog.at_level("WARNING", logger="sidecar.quotas"):
        await lease.settle(0, 0)
        await asyncio.wait([renewal], timeout=2)
    assert renewal.cancelled()
    assert "quota lease expired" not in caplog.text


async def test_a_settlement_redis_did_not_take_is_sent_again_once_it_answers() -> None:
    """Redis stalls (SIGSTOP) as a stream settles: the settlement times out, and is sent
    again once Redis answers, so the slot is free and the unused reservation back within
    about a second, not after the lease's `lease_seconds`; counted once."""
    policy = QuotaConfig(concurrent_streams=1, tokens_per_minute=1000, lease_seconds=60)
    async with running_redis() as server:
        failures: list[tuple[str, str]] = []
        gate = QuotaGate(
            RedisQuotaStore(server.url, timeout=0.2),
            on_store_error=lambda mode, operation: failures.append((mode, operation)),
        )
        admin: Redis = Redis.from_url(server.url, decode_responses=True)
        try:
            lease = await gate.acquire(policy, "global", ANONYMOUS, "192.0.2.1", 600)
            async with server.stalled():
                await lease.settle(0, 100)  # the store does not answer in time
            assert failures == [("fail_closed", "settle")]

            async def slot_back() -> bool:
                return sum([await admin.zcard(key) for key in await admin.keys("*:leases")]) == 0

            await eventually(slot_back, timeout=policy.lease_seconds / 4)
            after = await gate.acquire(policy, "global", ANONYMOUS, "192.0.2.1", 1)
            # 1000 - 100 used - 1 now, plus what refilled meanwhile (1000 a minute); held,
            # the reservation would leave about 400
            assert int(after.headers["anthropic-ratelimit-tokens-remaining"]) >= 899
            await after.settle(0, 1)
        finally:
            await admin.aclose()
            await gate.close()


async def test_an_admission_that_timed_out_but_ran_late_gives_back_its_slot() -> None:
    """Redis is busy past the timeout: the caller is refused (503), and the admission runs
    once Redis gets to it. Its slot and reservation are given back once Redis answers,
    not held for the lease's `lease_seconds` while the caller is refused as over its limit."""
    async with running_redis() as server:
        gate = QuotaGate(RedisQuotaStore(server.url, timeout=0.2))
        admin: Redis = Redis.from_url(server.url, decode_responses=True)
        try:
            warm = await gate.acquire(CANCEL_POLICY, "global", ANONYMOUS, "192.0.2.1", 10)
            await warm.settle(0, 0)
            before = await _scripts_run(admin)
            busy = asyncio.ensure_future(admin.eval(BUSY_SCRIPT, 0))
            await eventually(lambda: _busy(server.url))
            with pytest.raises(Rejection):  # the store did not answer within 0.2 s
                await gate.acquire(CANCEL_POLICY, "global", ANONYMOUS, "192.0.2.1", 400)
            await busy

            # The late admission ran, and its slot is back well before the 60 s lease lapses.
            await _ran_then_freed(admin, before, timeout=15)
            lease = await gate.acquire(CANCEL_POLICY, "global", ANONYMOUS, "192.0.2.1", 10)
            assert int(lease.headers["anthropic-ratelimit-tokens-remaining"]) >= 980
            await lease.settle(0, 10)
        finally:
            await admin.aclose()
            await gate.close()
