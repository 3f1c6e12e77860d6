"""Memory-store leases last as long as their call, however long it streams."""

from __future__ import annotations

import asyncio
import json

import aiohttp

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
