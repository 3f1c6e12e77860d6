"""Memory-store leases last as long as their call, however long it streams."""

from __future__ import annotations

import asyncio
import json

import aiohttp

from sidecar.quotas.stores import Limits
from sidecar.quotas.stores.memory import MemoryQuotaStore
from tests.conftest import SidecarFactory

MODEL = "claude-sonnet-5-5"
LEASE = 0.2  # seconds: the stream below outlives several of these


def message(text: str) -> dict[str, object]:
    return {
        "model": MODEL,
        "max_tokens": 32,
        "stream": True,
        "messages": [{"role": "user", "content": text}],
    }


async def test_a_long_stream_keeps_its_slot_on_the_memory_store(
    sidecar_for: SidecarFactory,
) -> None:
    quotas = {"quotas": {"store": "memory", "concurrent_streams": 1, "lease_seconds": LEASE}}
    async with sidecar_for(quotas) as sidecar, aiohttp.ClientSession() as http:
        held = await http.post(
            sidecar.url + "/v1/messages", json=message("hold [[fake fault=stall]]")
        )
        assert held.status == 200
        # Lease expiry is a matter of time passing: nothing to await but the clock. Nothing
        # renews a memory-store lease, so only the call's end may free the slot.
        await asyncio.sleep(LEASE * 3)
        async with http.post(sidecar.url + "/v1/messages", json=message("second")) as refused:
            status = refused.status
            raw = await refused.read() if status != 200 else b"{}"
        held.close()
    assert status == 429
    body = json.loads(raw)
    assert body["error"]["type"] == "rate_limit_error"
    assert "concurrent streams" in body["error"]["message"]


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
