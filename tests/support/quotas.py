"""A quota store spy: each settlement recorded, waited for as an event (not a sleep)."""

from __future__ import annotations

import asyncio

from sidecar.quotas.stores import Decision, Limits, QuotaStore
from sidecar.server import SidecarServer


class SettleSpy(QuotaStore):
    """Wraps the sidecar's store and records each settlement (an event, not a sleep)."""

    def __init__(self, inner: QuotaStore) -> None:
        self.inner = inner
        self.renews_leases = inner.renews_leases
        self.settled: list[tuple[int, int]] = []
        self.changed = asyncio.Event()

    async def admit(self, subject: str, limits: Limits, tokens: int, lease_id: str) -> Decision:
        return await self.inner.admit(subject, limits, tokens, lease_id)

    async def settle(
        self,
        subject: str,
        limits: Limits,
        lease_id: str,
        reserved: int,
        used: int,
        *,
        again: bool = False,
    ) -> None:
        await self.inner.settle(subject, limits, lease_id, reserved, used, again=again)
        self.settled.append((reserved, used))
        self.changed.set()

    async def renew(self, subject: str, lease_id: str, lease_seconds: float) -> bool:
        return await self.inner.renew(subject, lease_id, lease_seconds)

    async def wait_settled(self, count: int) -> None:
        async with asyncio.timeout(10):
            while len(self.settled) < count:
                self.changed.clear()
                await self.changed.wait()


def spy_on(sidecar: SidecarServer) -> SettleSpy:
    gate = sidecar.runtime.quotas
    spy = SettleSpy(gate.store)
    gate.store = spy
    return spy


class HeldSettle(SettleSpy):
    """A store whose settlements wait until `release()`: they suspend, as Redis' do."""

    settles_inline = False

    def __init__(self, inner: QuotaStore) -> None:
        super().__init__(inner)
        self._released = asyncio.Event()

    def release(self) -> None:
        self._released.set()

    async def settle(
        self,
        subject: str,
        limits: Limits,
        lease_id: str,
        reserved: int,
        used: int,
        *,
        again: bool = False,
    ) -> None:
        await self._released.wait()
        await super().settle(subject, limits, lease_id, reserved, used, again=again)


def hold_settlements(sidecar: SidecarServer) -> HeldSettle:
    gate = sidecar.runtime.quotas
    held = HeldSettle(gate.store)
    gate.store = held
    return held
