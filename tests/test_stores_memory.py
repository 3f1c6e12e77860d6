"""The memory quota store: lapsed leases are found without walking every lease."""

from __future__ import annotations

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
