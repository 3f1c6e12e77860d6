"""The in-process quota store: one process, no I/O, same semantics as the Redis store."""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Final

from sidecar.quotas.stores.base import (
    CONCURRENCY_RETRY_SECONDS,
    DAY,
    MINUTE,
    Decision,
    LimitedBy,
    Limits,
    QuotaStore,
    tighter,
    window_of,
)

_SWEEP_EVERY: Final = 1024  # admissions between sweeps of forgettable subjects
_PLANS: Final = 256  # policies' buckets remembered


@dataclass(slots=True)
class _Subject:
    levels: dict[str, float] = field(default_factory=dict)  # bucket name -> level at its stamp
    # Bucket name -> when its level was computed. Per bucket: an admission that checks only
    # some buckets (requests per minute for a forwarded call) leaves the others' refill
    # running from their own last update, never from its own.
    stamps: dict[str, float] = field(default_factory=dict)
    leases: dict[str, float] = field(default_factory=dict)  # lease id -> expiry
    # Bounds on the leases' expiries, so a call never walks every lease of its subject
    # (thousands when one key carries all traffic): none expires before `first_expiry`
    # (it may be early, never late) and none after `last_expiry` (late, never early).
    first_expiry: float = math.inf
    last_expiry: float = -math.inf
    # When every bucket is full again (as far as known), apart from the leases: a lease
    # that is settled stops counting, whatever its expiry was (inf on the gate's memory store).
    full_at: float = 0.0
    forget_at: float = 0.0  # every bucket full and no lease left: as good as absent

    def open_lease(self, lease_id: str, expiry: float) -> None:
        self.leases[lease_id] = expiry
        self.first_expiry = min(self.first_expiry, expiry)
        self.last_expiry = max(self.last_expiry, expiry)

    def close_lease(self, lease_id: str) -> None:
        self.leases.pop(lease_id, None)
        if not self.leases:
            self.first_expiry, self.last_expiry = math.inf, -math.inf

    def drop_lapsed(self, now: float) -> None:
        """Forget leases that expired by `now` (a walk only when one may have)."""
        if now < self.first_expiry:
            return
        self.leases = {lid: exp for lid, exp in self.leases.items() if exp > now}
        self.first_expiry = min(self.leases.values(), default=math.inf)
        self.last_expiry = max(self.leases.values(), default=-math.inf)


_Bucket = tuple[str, int, float, LimitedBy]


def settled_level(
    stored: float | None, stamp: float, now: float, limit: int, period: float, refund: int
) -> tuple[float, float] | None:
    """A token bucket's level and its stamp once `refund` (reserved - used) is settled;
    None when nothing changes. As `lua.SETTLE` computes it.

    The refund is added to the level as stored, at its stamp: the refill from there is
    computed when the bucket is next read, at the limit in force then (which caps it). A
    settlement does not refill or cap the bucket at the limits its call was admitted
    under: a reload may have raised them since, and capping at the old limit would take
    the capacity the new one gave. Only a charge beyond the reservation on a bucket full
    by now starts from full, now: the refill past full is not capacity to charge it from.
    """
    if refund == 0 or (stored is None and refund > 0):
        return None  # nothing to give back, or the bucket is full (absent)
    elapsed = now - stamp if now > stamp else 0.0
    if stored is None or (refund < 0 and stored + elapsed * limit / period >= limit):
        return limit + refund, now
    return stored + refund, stamp


def _buckets(limits: Limits) -> tuple[_Bucket, ...]:
    """The enabled buckets, in the order limits are checked (ties go to the first)."""
    buckets: list[_Bucket] = []
    if limits.requests_per_minute is not None:
        buckets.append(("r", limits.requests_per_minute, MINUTE, "requests"))
    if limits.tokens_per_minute is not None:
        buckets.append(("m", limits.tokens_per_minute, MINUTE, "tokens_per_minute"))
    if limits.tokens_per_day is not None:
        buckets.append(("d", limits.tokens_per_day, DAY, "tokens_per_day"))
    return tuple(buckets)


class MemoryQuotaStore(QuotaStore):
    """Buckets and leases in a dict; `clock` (epoch seconds) is injectable for tests."""

    settles_inline = True  # no I/O: `settle` never suspends, so nothing can cut it short

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self._clock = clock
        self._subjects: dict[str, _Subject] = {}
        self._admissions = 0
        # Each policy's buckets, built once. By id: the gate passes the same `Limits`
        # object for a policy on every call, and hashing a dataclass (its fields, each
        # time) would cost more than building the buckets. Kept with its `Limits`, so a
        # recycled id never matches.
        # With the buckets an admission checks and takes from: all of them, or the
        # requests bucket only when the token buckets are reported only.
        self._plans: dict[int, tuple[Limits, tuple[_Bucket, ...], tuple[_Bucket, ...]]] = {}

    def _plan(self, limits: Limits) -> tuple[tuple[_Bucket, ...], tuple[_Bucket, ...]]:
        """(every bucket of `limits`, the buckets an admission checks and takes from)."""
        plan = self._plans.get(id(limits))
        if plan is not None and plan[0] is limits:
            return plan[1], plan[2]
        if len(self._plans) >= _PLANS:  # reloads (and tests) bring new objects
            self._plans.clear()
        buckets = _buckets(limits)
        checked = buckets if limits.checks_tokens else tuple(b for b in buckets if b[0] == "r")
        self._plans[id(limits)] = (limits, buckets, checked)
        return buckets, checked

    def _buckets(self, limits: Limits) -> tuple[_Bucket, ...]:
        return self._plan(limits)[0]

    def __len__(self) -> int:
        return len(self._subjects)

    def _refilled(self, subject: str, buckets: tuple[_Bucket, ...], now: float) -> _Subject:
        state = self._subjects.get(subject)
        if state is None:
            state = self._subjects[subject] = _Subject()
        levels, stamps = state.levels, state.stamps
        for name, limit, period, _ in buckets:
            elapsed = now - stamps.get(name, now)
            level = levels.get(name, limit) + (elapsed if elapsed > 0.0 else 0.0) * limit / period
            levels[name] = level if level < limit else float(limit)
            stamps[name] = now
        if now >= state.first_expiry:
            state.drop_lapsed(now)
        return state

    def _forget_at(self, state: _Subject, buckets: tuple[_Bucket, ...]) -> float:
        """When every bucket is full again and every lease has expired: those of `buckets`
        as updated now, and, at the latest, what was known of the others before (the
        leases held now, not those already settled)."""
        levels, stamps = state.levels, state.stamps
        forget = state.full_at
        for name, limit, period, _ in buckets:
            full = stamps[name] + (limit - levels[name]) * period / limit
            if full > forget:
                forget = full
        state.full_at = forget
        return state.last_expiry if state.last_expiry > forget else forget

    async def admit(self, subject: str, limits: Limits, tokens: int, lease_id: str) -> Decision:
        now = self._clock()
        self._admissions += 1
        if self._admissions % _SWEEP_EVERY == 0:
            self._sweep(now)
        buckets, checked = self._plan(limits)
        state = self._refilled(subject, buckets, now)
        limited_by: LimitedBy | None = None
        wait = 0.0
        for name, limit, period, label in checked:
            cost = 1 if name == "r" else tokens
            if name != "r" and cost > limit:
                return self._decision(state, buckets, now, False, "too_large", 0.0)
            level = state.levels[name]
            if level < cost and (cost - level) * period / limit > wait:
                limited_by, wait = label, (cost - level) * period / limit
        slots = limits.concurrent_streams
        if slots is not None and len(state.leases) >= slots and wait < CONCURRENCY_RETRY_SECONDS:
            limited_by, wait = "concurrency", CONCURRENCY_RETRY_SECONDS
        if limited_by is not None:
            return self._decision(state, buckets, now, False, limited_by, wait)
        for name, _, _, _ in checked:
            state.levels[name] -= 1 if name == "r" else tokens
        if slots is not None:
            state.open_lease(lease_id, now + limits.lease_seconds)
        state.forget_at = self._forget_at(state, buckets)
        return self._decision(state, buckets, now, True, None, 0.0)

    def _decision(
        self,
        state: _Subject,
        buckets: tuple[_Bucket, ...],
        now: float,
        admitted: bool,
        limited_by: LimitedBy | None,
        wait: float,
    ) -> Decision:
        requests = minute = day = None
        levels = state.levels
        for name, limit, period, _ in buckets:
            window = window_of(limit, period, levels[name], now)
            if name == "r":
                requests = window
            elif name == "m":
                minute = window
            else:
                day = window
        return Decision(
            admitted=admitted,
            limited_by=limited_by,
            retry_after=wait,
            requests=requests,
            tokens=day if minute is None else minute if day is None else tighter(minute, day),
            now=now,
        )

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
        now = self._clock()
        refund = reserved - used
        state = self._subjects.get(subject)
        if again and (state is None or state.leases.get(lease_id, -math.inf) <= now):
            return  # sent again: only a lease still held settles (once)
        if state is None:
            if refund >= 0:
                return  # forgotten: its buckets are full and it holds no lease
            state = self._subjects[subject] = _Subject()
        levels, stamps = state.levels, state.stamps
        forget = state.full_at
        for name, limit, period, _ in self._buckets(limits):
            if name == "r":
                continue  # a settlement moves the token buckets only
            settled = settled_level(
                levels.get(name), stamps.get(name, now), now, limit, period, refund
            )
            if settled is not None:
                levels[name], stamps[name] = settled
                full = settled[1] + (limit - settled[0]) * period / limit
                forget = full if full > forget else forget
        state.close_lease(lease_id)
        state.full_at = forget
        state.forget_at = state.last_expiry if state.last_expiry > forget else forget

    async def renew(self, subject: str, lease_id: str, lease_seconds: float) -> bool:
        now = self._clock()
        state = self._subjects.get(subject)
        if state is None or state.leases.get(lease_id, 0.0) <= now:
            return False
        state.open_lease(lease_id, now + lease_seconds)  # the old expiry only bounds early
        state.forget_at = max(state.forget_at, now + lease_seconds)
        return True

    def _sweep(self, now: float) -> None:
        """Drop subjects whose buckets are full again and hold no lease."""
        for subject in [s for s, state in self._subjects.items() if state.forget_at <= now]:
            del self._subjects[subject]
