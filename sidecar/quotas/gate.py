"""The quota gate: who is counted, which limits apply, and what the client is told.

`acquire` runs one store admission per Claude call (one round trip) and returns a
lease carrying the `anthropic-ratelimit-*` headers; `settle` runs one store
settlement when the stream ends, whatever ended it. Nothing here runs per event.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import itertools
import logging
import math
import os
import secrets
from collections.abc import Callable, Mapping
from types import MappingProxyType
from typing import Final

from sidecar.cancelling import honour_cancel
from sidecar.config import QuotaConfig
from sidecar.config.routes import TOP_LEVEL_ONLY
from sidecar.errors import reject
from sidecar.identity import Identity
from sidecar.quotas.decisions import limits_of, ratelimit_headers, rejection_of, subject_of
from sidecar.quotas.stores import Decision, Limits, QuotaStore, StoreError, make_store

log = logging.getLogger("sidecar.quotas")
_CLOSE_WAIT: Final = 5.0  # seconds close() waits for settlements still running
# A settlement the store did not take is sent again this often, while its lease lives.
SETTLE_AGAIN_SECONDS: Final = 1.0
_UNSETTLED_MAX: Final = 10_000  # settlements waiting to be sent again; beyond, they lapse
_LIMITS_CACHE: Final = 256  # policies remembered per gate
_NO_HEADERS: Final[Mapping[str, str]] = MappingProxyType({})

StoreErrorHook = Callable[[str, str], None]  # (on_store_error mode, operation)
# Lease ids: a random prefix per process and a counter. Unique across replicas sharing
# a Redis store like a random id per lease, without reading the OS's randomness per call.
_lease_prefix = secrets.token_hex(8)
_lease_numbers = itertools.count(1)


def _new_lease_id() -> str:
    return f"{_lease_prefix}{next(_lease_numbers):x}"


def reseed_lease_ids() -> None:
    """A new random prefix for lease ids (run in a forked child: it must not repeat its parent's)."""
    global _lease_prefix, _lease_numbers
    _lease_prefix, _lease_numbers = secrets.token_hex(8), itertools.count(1)


os.register_at_fork(after_in_child=reseed_lease_ids)


class QuotaLease:
    """An admitted call's reservation and stream slot; settle exactly once when it ends."""

    __slots__ = (
        "_decision",
        "_gate",
        "_headers",
        "_limits",
        "_renewal",
        "_reserved",
        "_settled",
        "_subject",
        "lease_id",
    )

    def __init__(
        self,
        gate: QuotaGate | None = None,
        subject: str = "",
        limits: Limits | None = None,
        reserved: int = 0,
        headers: Mapping[str, str] = _NO_HEADERS,
    ) -> None:
        self._gate = gate
        self._subject = subject
        self._limits = limits
        self._reserved = reserved
        self.lease_id = _new_lease_id()
        self._settled = gate is None
        self._renewal: asyncio.Task[None] | None = None
        self._headers: Mapping[str, str] | None = headers
        self._decision: Decision | None = None

    @property
    def headers(self) -> Mapping[str, str]:
        """The `anthropic-ratelimit-*` headers of the admission (built on first use)."""
        headers = self._headers
        if headers is None:
            self.prepare_headers()
            headers = self._headers
            assert headers is not None
        return headers

    @headers.setter
    def headers(self, headers: Mapping[str, str]) -> None:
        self._headers, self._decision = headers, None

    def prepare_headers(self) -> None:
        """Build the rate-limit headers from the admission's decision, if not built yet.

        Formatting them is left out of `acquire`: a Claude call builds them once its
        request is written (they are needed only when Claude answers).
        """
        decision = self._decision
        if decision is not None:
            self._headers, self._decision = ratelimit_headers(decision), None

    @property
    def renewal(self) -> asyncio.Task[None] | None:
        """The task renewing this lease's slot, once `start_renewal` started one."""
        return self._renewal

    def start_renewal(self) -> None:
        """Renew the lease every third of its lifetime until settled (one task per lease)."""
        if self._gate is not None and self._limits is not None:
            renewal = self._renew_until_settled(self._gate, self._limits)
            self._renewal = asyncio.create_task(renewal)

    async def _renew_until_settled(self, gate: QuotaGate, limits: Limits) -> None:
        interval = limits.lease_seconds / 3  # two renewals may fail before the lease lapses
        while True:
            await asyncio.sleep(interval)
            try:
                renewed = await gate.store.renew(self._subject, self.lease_id, limits.lease_seconds)
            except StoreError as exc:
                gate.store_failed("renew", exc)
                renewed = True  # not known to have lapsed: the next renewal may succeed
            honour_cancel()  # settled while renewing (redis-py may have swallowed the cancel)
            if not renewed:
                # Lapsed (renewals failed for a whole lease, or Redis lost its data): the
                # slot may be someone else's now; the stream goes on without one.
                log.warning("quota lease expired before its stream ended")
                return

    async def settle(self, input_tokens: int, output_tokens: int) -> None:
        """Charge actual usage instead of the reservation and free the slot (idempotent).

        Shielded: a cancelled caller (client gone, shutdown) still settles; the gate
        waits for settlements in flight when it closes.
        """
        gate, limits = self._gate, self._limits
        if self._settled or gate is None or limits is None:
            return
        self._settled = True
        if self._renewal is not None:
            self._renewal.cancel()
        if gate.store.settles_inline:  # cannot suspend, so cannot be cut short: no task
            await gate._settle(
                self._subject, limits, self.lease_id, self._reserved, input_tokens + output_tokens
            )
            return
        task = gate.settle_later(
            self._subject, limits, self.lease_id, self._reserved, input_tokens + output_tokens
        )
        await asyncio.shield(task)


NO_LEASE: Final = QuotaLease()
_Unsettled = tuple[float, str, Limits, str, int, int]


# Where counters live and what an outage of it does: process-wide, so a route may change
# its limits but none of these (`sidecar.loader`), and a reload keeps the gate while they
# are unchanged (`QuotaGate.settings_key`).
STORE_FIELDS: Final = TOP_LEVEL_ONLY["quotas"]


class QuotaGate:
    """Admission against the configured store, with the `quotas.on_store_error` policy."""

    def __init__(
        self,
        store: QuotaStore,
        mode: str = "fail_closed",
        on_store_error: StoreErrorHook | None = None,
    ) -> None:
        self.store = store
        self.mode = mode
        self.on_store_error = on_store_error
        self._pending: set[asyncio.Task[None]] = set()
        # Settlements the store failed, sent again until it takes them: (lapse time on the
        # loop's clock, subject, limits, lease id, reserved, used).
        self._unsettled: list[_Unsettled] = []
        self._settling_again: asyncio.Task[None] | None = None
        self._degraded = False
        self._limits: dict[int, tuple[QuotaConfig, Limits | None]] = {}  # by id(policy)
        self._count_limits: dict[tuple[int, bool], tuple[QuotaConfig, Limits | None]] = {}

    @classmethod
    def from_config(
        cls, config: QuotaConfig, on_store_error: StoreErrorHook | None = None
    ) -> QuotaGate:
        return cls(make_store(config), config.on_store_error, on_store_error)

    @staticmethod
    def settings_key(config: QuotaConfig) -> tuple[object, ...]:
        """The settings a gate depends on (`STORE_FIELDS`): a reload keeps it, its counters
        and live leases, while they are unchanged."""
        return tuple(getattr(config, name) for name in STORE_FIELDS)

    async def start(self) -> None:
        await self.store.start()

    async def close(self) -> None:
        """Let running settlements finish (bounded), then release the store. Settlements
        still waiting for the store to come back are left to lapse with their leases."""
        if self._pending:
            await asyncio.wait(set(self._pending), timeout=_CLOSE_WAIT)
        if self._settling_again is not None:
            self._settling_again.cancel()
            await asyncio.wait([self._settling_again], timeout=_CLOSE_WAIT)
        await self.store.close()

    async def ready(self) -> bool:
        return await self.store.ready()

    def store_failed(self, operation: str, exc: Exception) -> None:
        """Count every failure; log once per outage (the store may fail on every request)."""
        if self.on_store_error is not None:
            self.on_store_error(self.mode, operation)
        if not self._degraded:
            self._degraded = True
            log.warning(
                "quota store unavailable",
                extra={"operation": operation, "on_store_error": self.mode, "error": str(exc)},
            )

    def _store_ok(self) -> None:
        """The store answered again after failing (callers check `_degraded` first)."""
        self._degraded = False
        log.info("quota store recovered")

    async def _admit(
        self, policy: QuotaConfig, subject: str, limits: Limits, tokens: int, lease: QuotaLease
    ) -> Decision | None:
        """The store's decision, or None when it failed and the mode is fail_open."""
        store = self.store
        try:
            if store.settles_inline:  # never suspends: cannot be cancelled halfway
                decision = await store.admit(subject, limits, tokens, lease.lease_id)
            else:
                decision = await self._store_admit(subject, limits, tokens, lease.lease_id)
        except StoreError as exc:
            self.store_failed("admit", exc)
            if self._settles_again(limits):
                # A timeout may hide an admission Redis ran after all (late): once it
                # answers, give back what that took, or the slot stays held and the
                # reservation charged for a call that never ran. A no-op if it never ran.
                self._settle_again_later(subject, limits, lease.lease_id, tokens, 0)
            if self.mode == "fail_open":
                return None
            raise reject(
                "quota_store_unavailable", "the quota store is unavailable",
                headers={"retry-after": "1"},
            ) from None  # fmt: skip
        if self._degraded:
            self._store_ok()
        if not decision.admitted:
            raise rejection_of(decision, policy, tokens, subject)
        return decision

    async def _store_admit(
        self, subject: str, limits: Limits, tokens: int, lease_id: str
    ) -> Decision:
        """`store.admit`, undone if its caller is cancelled while the store admits it."""
        admitting = asyncio.create_task(self.store.admit(subject, limits, tokens, lease_id))
        try:
            return await asyncio.shield(admitting)
        except asyncio.CancelledError:
            # The script may run (or have run) for a caller that is gone: once it answers,
            # give back what it took, or the slot stays held and the reservation charged.
            admitting.add_done_callback(
                functools.partial(self._undo_admission, subject, limits, tokens, lease_id)
            )
            raise

    def _undo_admission(
        self,
        subject: str,
        limits: Limits,
        tokens: int,
        lease_id: str,
        admitting: asyncio.Task[Decision],
    ) -> None:
        if admitting.cancelled() or admitting.exception() is not None:
            return  # nothing was admitted, or the store failed (the lease lapses on its own)
        if admitting.result().admitted and limits.holds_lease:
            self.settle_later(subject, limits, lease_id, tokens, 0)

    async def acquire(
        self,
        policy: QuotaConfig,
        scope: str,
        identity: Identity,
        client_ip: str,
        reserve_tokens: int,
    ) -> QuotaLease:
        """Admit one Claude call (request, token reservation, stream slot) or raise Rejection."""
        limits = self._limits_of(policy)
        if limits is None:  # no limit set
            return NO_LEASE
        subject = subject_of(policy, scope, identity, client_ip)
        reserve = reserve_tokens if limits.counts_tokens else 0
        lease = QuotaLease(self, subject, limits, reserve)
        decision = await self._admit(policy, subject, limits, reserve, lease)
        if decision is None:
            return NO_LEASE
        if not limits.holds_lease:
            lease = QuotaLease()  # nothing to give back
        elif self.store.renews_leases and limits.concurrent_streams is not None:
            lease.start_renewal()
        # The headers are built when first needed (`prepare_headers`), off the request's way.
        lease._headers, lease._decision = None, decision
        return lease

    async def count_request(
        self,
        policy: QuotaConfig,
        scope: str,
        identity: Identity,
        client_ip: str,
        *,
        tokens: bool = True,
    ) -> Mapping[str, str]:
        """A request that generates no tokens: counted against `requests_per_minute` only.
        The headers to add, or raise Rejection.

        `tokens`: the headers also tell the token buckets' state as this one admission
        reads it (neither checked nor taken), as on every response of a Claude route;
        app routes, which never spend tokens, leave them out.
        """
        limits = self._count_limits_of(policy, tokens)
        if limits is None:  # no limit to count or tell
            return _NO_HEADERS
        subject = subject_of(policy, scope, identity, client_ip)
        decision = await self._admit(policy, subject, limits, 0, NO_LEASE)
        return _NO_HEADERS if decision is None else ratelimit_headers(decision)

    def _count_limits_of(self, policy: QuotaConfig, tokens: bool) -> Limits | None:
        """`count_request`'s limits, once per policy object and `tokens`: the requests
        bucket, and the token buckets to report; None when there is neither."""
        key = (id(policy), tokens)
        cached = self._count_limits.get(key)
        if cached is not None and cached[0] is policy:
            return cached[1]
        if len(self._count_limits) >= _LIMITS_CACHE:  # reloads bring new policy objects
            self._count_limits.clear()
        told = tokens and (
            policy.tokens_per_minute is not None or policy.tokens_per_day is not None
        )
        limits = None
        if policy.requests_per_minute is not None or told:
            limits = Limits(
                requests_per_minute=policy.requests_per_minute,
                tokens_per_minute=policy.tokens_per_minute if tokens else None,
                tokens_per_day=policy.tokens_per_day if tokens else None,
                checks_tokens=False,
            )
        self._count_limits[key] = (policy, limits)
        return limits

    def _limits_of(self, policy: QuotaConfig) -> Limits | None:
        """`limits_of` once per policy object (policies live as long as their config);
        None for a policy that sets no limit."""
        cached = self._limits.get(id(policy))
        if cached is not None and cached[0] is policy:
            return cached[1]
        if len(self._limits) >= _LIMITS_CACHE:  # reloads bring new policy objects
            self._limits.clear()
        limits: Limits | None = None
        if policy.enabled:
            limits = limits_of(policy)
            if not self.store.renews_leases:
                # Nothing renews this store's leases and they die with the process anyway: a
                # lease lives until its call settles, however long the stream runs.
                limits = dataclasses.replace(limits, lease_seconds=math.inf)
        self._limits[id(policy)] = (policy, limits)
        return limits

    def settle_later(
        self, subject: str, limits: Limits, lease_id: str, reserved: int, used: int
    ) -> asyncio.Task[None]:
        """Run one settlement as its own task, so cancelling the caller cannot cut it short."""
        task = asyncio.create_task(self._settle(subject, limits, lease_id, reserved, used))
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)
        return task

    async def _settle(
        self, subject: str, limits: Limits, lease_id: str, reserved: int, used: int
    ) -> None:
        try:
            await self.store.settle(subject, limits, lease_id, reserved, used)
        except StoreError as exc:
            self.store_failed("settle", exc)
            if self._settles_again(limits):
                self._settle_again_later(subject, limits, lease_id, reserved, used)
            # Else the store holds no lease to settle once: the reservation stays charged.
        else:
            if self._degraded:
                self._store_ok()

    def _settles_again(self, limits: Limits) -> bool:
        """Whether a failed settlement of a call under `limits` can be sent again: the store
        then holds its lease (a concurrency slot), which settles once however often sent."""
        return limits.concurrent_streams is not None and self.store.renews_leases

    def _settle_again_later(
        self, subject: str, limits: Limits, lease_id: str, reserved: int, used: int
    ) -> None:
        """Send a failed settlement again until the store takes it or its lease lapses: the
        slot is freed and the unused reservation returned once Redis answers, not held for
        the rest of the lease. The store settles a lease once (`again`), so a settlement
        that did run before its reply was lost is not counted twice."""
        if len(self._unsettled) >= _UNSETTLED_MAX:
            return  # it lapses with its lease, as if never sent again
        lapse = asyncio.get_running_loop().time() + limits.lease_seconds
        self._unsettled.append((lapse, subject, limits, lease_id, reserved, used))
        if self._settling_again is None or self._settling_again.done():
            self._settling_again = asyncio.create_task(self._settle_again())

    async def _settle_again(self) -> None:
        loop = asyncio.get_running_loop()
        while self._unsettled:
            await asyncio.sleep(SETTLE_AGAIN_SECONDS)
            now = loop.time()
            waiting = [unsettled for unsettled in self._unsettled if unsettled[0] > now]
            self._unsettled = []
            for n, (_, subject, limits, lease_id, reserved, used) in enumerate(waiting):
                try:
                    await self.store.settle(subject, limits, lease_id, reserved, used, again=True)
                except StoreError as exc:
                    self.store_failed("settle", exc)
                    self._unsettled = waiting[n:] + self._unsettled
                    break
                if self._degraded:
                    self._store_ok()
