"""The quota store interface: token buckets and stream leases, atomic per subject.

Every limit is a token bucket, as Anthropic's own rate limits are: its capacity
is the limit and it refills continuously at `limit` per minute (or per day).
`admit` checks every bucket and the concurrency slots of one subject and, only if
all allow it, takes one request, reserves the tokens and opens a lease, in one
atomic step. `settle` returns the unused part of the reservation (or charges the
overshoot) and frees the lease. Leases expire unless renewed, so a replica that
dies mid-stream cannot hold slots forever; its reservation stays charged.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Final, Literal

MINUTE: Final = 60.0
DAY: Final = 86400.0

LimitedBy = Literal["requests", "tokens_per_minute", "tokens_per_day", "concurrency", "too_large"]
# Concurrency frees when some stream ends, which no store can predict: suggest a short wait.
CONCURRENCY_RETRY_SECONDS: Final = 1.0


class StoreError(Exception):
    """The store could not answer (unreachable, timed out, bad reply)."""


@dataclass(frozen=True, slots=True)
class Limits:
    """The limits of one route's policy; `None` means unlimited."""

    requests_per_minute: int | None = None
    tokens_per_minute: int | None = None
    tokens_per_day: int | None = None
    concurrent_streams: int | None = None
    lease_seconds: float = 60.0
    # False: the token buckets are read for the decision's `tokens` window (what the
    # client is told) but neither checked nor taken: a request that generates no tokens
    # (count_tokens, a resume, a cache hit not charged) counts against the requests only.
    checks_tokens: bool = True
    # Derived once (a policy's limits are built once and read on every call):
    # a token bucket is on; an admitted call leaves state to settle (a reservation or a slot).
    counts_tokens: bool = field(init=False, repr=False, compare=False)
    holds_lease: bool = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        counts = self.checks_tokens and (
            self.tokens_per_minute is not None or self.tokens_per_day is not None
        )
        object.__setattr__(self, "counts_tokens", counts)
        object.__setattr__(self, "holds_lease", counts or self.concurrent_streams is not None)


# Window and Decision are built on every admission: plain slotted classes, since a
# frozen dataclass's `__init__` costs one `object.__setattr__` call per field. Nothing
# changes them after the store returns them.
@dataclass(slots=True)
class Window:
    """One bucket as the client sees it: limit, whole units left, when it is full again."""

    limit: int
    remaining: int
    reset_at: float  # epoch seconds (the store's clock)


@dataclass(slots=True)
class Decision:
    """The answer to `admit`: admitted or not, why, how long to wait, and the buckets."""

    admitted: bool
    limited_by: LimitedBy | None
    retry_after: float  # seconds; 0 when admitted
    requests: Window | None
    tokens: Window | None  # the more constrained of the per-minute and per-day buckets
    now: float  # epoch seconds (the store's clock)


def window_of(limit: int, period: float, level: float, now: float) -> Window:
    """The client's view of a bucket of `limit` per `period` seconds at `level` now."""
    refill = (limit - level) * period / limit
    # As `max(0, floor(level))` and `now + max(0.0, refill)`, without the calls.
    return Window(limit, math.floor(level) if level > 0 else 0, now + refill if refill > 0 else now)


def tighter(a: Window | None, b: Window | None) -> Window | None:
    """The window with fewer units left (ties: the later reset)."""
    if a is None or b is None:
        return a or b
    if (a.remaining, -a.reset_at) <= (b.remaining, -b.reset_at):
        return a
    return b


class QuotaStore(ABC):
    """Where buckets and leases live. Implementations must make each call atomic."""

    # True when leases must be renewed while a stream lives (the store outlives the process).
    renews_leases: bool = False
    # True when `settle` finishes without suspending (no I/O): callers may await it in
    # place instead of running it as a shielded task of its own.
    settles_inline: bool = False

    @abstractmethod
    async def admit(self, subject: str, limits: Limits, tokens: int, lease_id: str) -> Decision:
        """Take one request and reserve `tokens`, and open lease `lease_id`, or take nothing.

        The decision reports every bucket of `limits`, those it does not check too
        (`Limits.checks_tokens`), at their level now."""

    @abstractmethod
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
        """Replace the reservation with actual usage and free the lease. `again`: this
        settlement failed before (it may have run): settle only a lease still held (one
        with a concurrency slot), so a settlement is never counted twice."""

    @abstractmethod
    async def renew(self, subject: str, lease_id: str, lease_seconds: float) -> bool:
        """Extend a live lease; False if it had already expired."""

    async def start(self) -> None:
        """Open connections (stores that need none do nothing)."""
        return None

    async def ready(self) -> bool:
        """Whether the store answers right now."""
        return True

    async def close(self) -> None:
        """Release connections."""
        return None
