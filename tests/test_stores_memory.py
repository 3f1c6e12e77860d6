"""The memory quota store: lapsed leases are found without walking every lease."""

from __future__ import annotations

import math

from sidecar.quotas.stores import Limits, MemoryQuotaStore


async def test_memory_leases_lapse_one_by_one_with_renewals_in_between() -> None:
    """Lapsed leases are found without walking every lease on every call: same answers."""
    now = [1000.0]
    store = MemoryQuotaStore(clock=lambda: now[0])
    limits = Limits(concurrent_streams=2, lease_seconds=30)
    assert (await store.admit("s", limits, 0, "a")).admitted
    assert (await store.admit("s", limits, 0, "b")).admitted
    now[0] += 20
    assert await store.renew("s", "b", 30)  # b now lives to 1050, a still to 1030
    now[0] += 11  # 1031: a lapsed, b live
    assert (await store.admit("s", limits, 0, "c")).admitted  # a's slot
    refused = await store.admit("s", limits, 0, "d")
    assert not refused.admitted
    assert refused.limited_by == "concurrency"
    assert not await store.renew("s", "a", 30)
    await store.settle("s", limits, "b", 0, 0)
    assert (await store.admit("s", limits, 0, "d")).admitted  # b's slot, freed by settling
    now[0] += 31  # 1062: c and d lapsed together
    assert (await store.admit("s", limits, 0, "e")).admitted
    assert (await store.admit("s", limits, 0, "f")).admitted
    assert not (await store.admit("s", limits, 0, "g")).admitted


async def test_subjects_whose_streams_all_settled_are_forgotten_once_their_buckets_refill() -> None:
    """A subject that held stream slots is forgotten like any other once its buckets are
    full and its leases settled: the gate's memory leases never expire (they last as long
    as their call), and a settled one must not keep its subject forever (one entry per
    client address or user ever seen)."""
    now = [1000.0]
    store = MemoryQuotaStore(clock=lambda: now[0])
    limits = Limits(requests_per_minute=10, concurrent_streams=2, lease_seconds=math.inf)
    for n in range(100):
        assert (await store.admit(f"caller-{n}", limits, 0, f"lease-{n}")).admitted
        await store.settle(f"caller-{n}", limits, f"lease-{n}", 0, 0)
    assert (await store.admit("streaming", limits, 0, "open")).admitted  # never settled
    now[0] += 3600
    other = Limits(requests_per_minute=1_000_000)
    for _ in range(2048):  # a sweep of forgettable subjects runs every 1024 admissions
        assert (await store.admit("other", other, 0, "x")).admitted
    assert len(store) == 2  # "other", and the subject whose stream still runs
    refused = await store.admit("streaming", Limits(concurrent_streams=1), 0, "more")
    assert refused.limited_by == "concurrency"  # its open lease was kept
