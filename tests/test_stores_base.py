"""One contract every quota store passes: memory and Redis (a real redis-server), same tests.

Time is rolled without sleeping: the memory store takes an injected clock, the Redis
store an offset added to Redis' own clock inside its scripts.
"""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

import pytest

from sidecar.quotas.stores import Decision, Limits, MemoryQuotaStore, QuotaStore
from sidecar.quotas.stores.redis import RedisQuotaStore
from tests.support.redis_server import running_redis


@dataclass
class Harness:
    store: QuotaStore
    advance: Callable[[float], None]
    subject: str

    async def admit(self, limits: Limits, tokens: int = 0, lease: str = "") -> Decision:
        return await self.store.admit(self.subject, limits, tokens, lease or secrets.token_hex(4))


class Clock:
    def __init__(self) -> None:
        self.now = 1_800_000_000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture(params=["memory", "redis"])
async def harness(request: pytest.FixtureRequest) -> AsyncIterator[Harness]:
    subject = "global\x1fuser\x1f" + secrets.token_hex(6)
    if request.param == "memory":
        clock = Clock()

        def advance_clock(seconds: float) -> None:
            clock.now += seconds

        yield Harness(MemoryQuotaStore(clock), advance_clock, subject)
        return
    async with running_redis() as server:
        store = RedisQuotaStore(server.url)

        def advance_offset(seconds: float) -> None:
            store.offset += seconds

        try:
            yield Harness(store, advance_offset, subject)
        finally:
            await store.close()


RPM3 = Limits(requests_per_minute=3)
TPM1000 = Limits(tokens_per_minute=1000)


async def test_requests_bucket_empties_then_refills_one_request_per_interval(
    harness: Harness,
) -> None:
    results = [await harness.admit(RPM3) for _ in range(4)]
    assert [d.admitted for d in results] == [True, True, True, False]
    assert [d.requests.remaining for d in results if d.requests] == [2, 1, 0, 0]
    refused = results[-1]
    assert refused.limited_by == "requests"
    assert refused.retry_after == pytest.approx(20, abs=0.1)  # 1 request per 20 s refill
    assert refused.requests is not None
    assert refused.requests.reset_at - refused.now == pytest.approx(60, abs=0.1)
    harness.advance(19)
    assert not (await harness.admit(RPM3)).admitted
    harness.advance(1.1)
    assert (await harness.admit(RPM3)).admitted
    assert not (await harness.admit(RPM3)).admitted


async def test_a_whole_window_later_the_full_limit_is_back(harness: Harness) -> None:
    for _ in range(3):
        assert (await harness.admit(RPM3)).admitted
    harness.advance(61)
    decisions = [await harness.admit(RPM3) for _ in range(4)]
    assert [d.admitted for d in decisions] == [True, True, True, False]


async def test_token_reservation_refused_before_it_would_exceed_the_limit(
    harness: Harness,
) -> None:
    first = await harness.admit(TPM1000, tokens=600)
    assert first.admitted
    assert first.tokens is not None
    assert (first.tokens.limit, first.tokens.remaining) == (1000, 400)
    refused = await harness.admit(TPM1000, tokens=600)
    assert not refused.admitted
    assert refused.limited_by == "tokens_per_minute"
    assert refused.retry_after == pytest.approx(12, abs=0.1)  # 200 missing at 1000 / 60 s
    assert refused.tokens is not None
    assert refused.tokens.remaining == 400  # a refusal takes nothing


async def test_settlement_replaces_the_reservation_with_actual_usage(harness: Harness) -> None:
    assert (await harness.admit(TPM1000, tokens=600, lease="a")).admitted
    await harness.store.settle(harness.subject, TPM1000, "a", reserved=600, used=100)
    after = await harness.admit(TPM1000, tokens=600, lease="b")
    assert after.admitted  # 900 were left after settling
    assert after.tokens is not None
    assert after.tokens.remaining == 300


async def test_usage_above_the_reservation_is_charged_too(harness: Harness) -> None:
    assert (await harness.admit(TPM1000, tokens=100, lease="a")).admitted
    await harness.store.settle(harness.subject, TPM1000, "a", reserved=100, used=700)
    decision = await harness.admit(TPM1000, tokens=400)
    assert not decision.admitted
    assert decision.tokens is not None
    assert decision.tokens.remaining == 300


async def test_refunds_never_fill_a_bucket_beyond_its_limit(harness: Harness) -> None:
    assert (await harness.admit(TPM1000, tokens=500, lease="a")).admitted
    harness.advance(60)
    await harness.store.settle(harness.subject, TPM1000, "a", reserved=500, used=0)
    decision = await harness.admit(TPM1000, tokens=1)
    assert decision.tokens is not None
    assert decision.tokens.remaining == 999


async def test_daily_tokens_refill_over_a_day(harness: Harness) -> None:
    limits = Limits(tokens_per_minute=10_000, tokens_per_day=1000)
    assert (await harness.admit(limits, tokens=1000)).admitted
    refused = await harness.admit(limits, tokens=100)
    assert refused.limited_by == "tokens_per_day"
    assert refused.retry_after == pytest.approx(8640, abs=1)
    assert refused.tokens is not None
    assert (refused.tokens.limit, refused.tokens.remaining) == (1000, 0)  # the tighter bucket
    harness.advance(8641)
    assert (await harness.admit(limits, tokens=100)).admitted


async def test_a_call_larger_than_a_whole_limit_is_too_large(harness: Harness) -> None:
    decision = await harness.admit(TPM1000, tokens=1001)
    assert (decision.admitted, decision.limited_by) == (False, "too_large")


async def test_refusal_takes_nothing_from_any_bucket(harness: Harness) -> None:
    limits = Limits(requests_per_minute=10, tokens_per_minute=100)
    assert (await harness.admit(limits, tokens=80)).admitted
    refused = await harness.admit(limits, tokens=50)
    assert refused.limited_by == "tokens_per_minute"
    assert refused.requests is not None
    assert refused.requests.remaining == 9


async def test_concurrency_slots_are_held_until_settled(harness: Harness) -> None:
    limits = Limits(concurrent_streams=2)
    assert (await harness.admit(limits, lease="a")).admitted
    assert (await harness.admit(limits, lease="b")).admitted
    refused = await harness.admit(limits, lease="c")
    assert (refused.admitted, refused.limited_by) == (False, "concurrency")
    assert refused.retry_after == 1
    await harness.store.settle(harness.subject, limits, "a", reserved=0, used=0)
    assert (await harness.admit(limits, lease="c")).admitted


async def test_a_settlement_sent_again_settles_a_held_lease_once(harness: Harness) -> None:
    """A settlement sent again (the first failed, and may have run) frees the slot and
    returns the reservation only if the lease is still held: never counted twice."""
    limits = Limits(tokens_per_minute=1000, concurrent_streams=1)
    assert (await harness.admit(limits, tokens=600, lease="ran")).admitted
    await harness.store.settle(harness.subject, limits, "ran", reserved=600, used=100)
    await harness.store.settle(harness.subject, limits, "ran", reserved=600, used=100, again=True)
    assert (await harness.admit(limits, tokens=600, lease="lost")).admitted  # 900 were left
    await harness.store.settle(harness.subject, limits, "lost", reserved=600, used=0, again=True)
    decision = await harness.admit(limits, tokens=1, lease="next")
    assert decision.admitted  # the slot was freed by the settlement sent again
    assert decision.tokens is not None
    assert decision.tokens.remaining == 899


async def test_leases_expire_unless_renewed(harness: Harness) -> None:
    limits = Limits(concurrent_streams=1, lease_seconds=30)
    assert (await harness.admit(limits, lease="crashed")).admitted
    harness.advance(31)  # its replica died: nobody renewed it
    assert (await harness.admit(limits, lease="next")).admitted
    assert not await harness.store.renew(harness.subject, "crashed", 30)


async def test_renewal_keeps_a_live_lease(harness: Harness) -> None:
    limits = Limits(concurrent_streams=1, lease_seconds=30)
    assert (await harness.admit(limits, lease="live")).admitted
    harness.advance(20)
    assert await harness.store.renew(harness.subject, "live", 30)
    harness.advance(20)  # 40 s after admission, 20 s after the renewal
    assert not (await harness.admit(limits, lease="other")).admitted
    harness.advance(11)
    assert (await harness.admit(limits, lease="other")).admitted


async def test_subjects_are_counted_apart(harness: Harness) -> None:
    for _ in range(3):
        assert (await harness.admit(RPM3)).admitted
    other = await harness.store.admit(harness.subject + "-other", RPM3, 0, "x")
    assert other.admitted
    assert not (await harness.admit(RPM3)).admitted


async def test_a_lower_limit_after_a_reload_caps_what_is_left(harness: Harness) -> None:
    assert (await harness.admit(TPM1000, tokens=10)).admitted
    decision = await harness.admit(Limits(tokens_per_minute=100), tokens=10)
    assert decision.tokens is not None
    assert decision.tokens.remaining == 90


FULL = Limits(requests_per_minute=100, tokens_per_minute=1000, tokens_per_day=5000)
RPM100 = Limits(requests_per_minute=100)


async def test_an_admission_of_some_buckets_leaves_the_others_refilling(harness: Harness) -> None:
    """A request counted alone (a forwarded call, a cache hit, an app request) checks the
    requests bucket only: the token buckets keep refilling from their own last update."""
    assert (await harness.admit(FULL, tokens=900)).admitted  # 100 tokens left this minute
    for _ in range(6):  # 30 s of requests-only admissions
        harness.advance(5)
        assert (await harness.admit(RPM100)).admitted
    decision = await harness.admit(FULL, tokens=500)  # 100 + 30 s x 1000/60 = 600 by now
    assert decision.admitted, decision
    assert decision.tokens is not None
    assert decision.tokens.remaining == 100


async def test_a_request_without_tokens_reports_the_token_buckets_it_leaves_alone(
    harness: Harness,
) -> None:
    """`checks_tokens=False` (a forwarded call, a resume, a hit not charged): one request is
    taken, and the token buckets are told as they stand now, neither checked nor taken, even
    when overdrawn."""
    told = Limits(
        requests_per_minute=100, tokens_per_minute=1000, tokens_per_day=5000, checks_tokens=False
    )
    assert (await harness.admit(FULL, tokens=900, lease="a")).admitted
    await harness.store.settle(harness.subject, FULL, "a", reserved=900, used=1100)  # -100
    decision = await harness.admit(told, tokens=0)
    assert decision.admitted  # the token buckets are below zero, but not checked
    assert decision.requests is not None
    assert decision.tokens is not None
    assert decision.requests.remaining == 98
    assert (decision.tokens.limit, decision.tokens.remaining) == (1000, 0)
    harness.advance(12)  # 200 tokens back: 100 this minute
    decision = await harness.admit(told, tokens=0)
    assert decision.tokens is not None
    assert (decision.tokens.limit, decision.tokens.remaining) == (1000, 100)
    assert decision.tokens.reset_at - decision.now == pytest.approx(54, abs=0.1)  # 900 to go
    decision = await harness.admit(FULL, tokens=100)  # nothing was taken from them meanwhile
    assert decision.admitted
    assert decision.tokens is not None
    assert decision.tokens.remaining == 0


async def test_an_admission_of_some_buckets_never_forgets_the_others(harness: Harness) -> None:
    """The subject is kept as long as its slowest bucket needs, whichever buckets the last
    admission checked: a requests-only admission does not reset the day."""
    limits = Limits(requests_per_minute=100, tokens_per_minute=1000, tokens_per_day=3000)
    assert (await harness.admit(limits, tokens=1000)).admitted
    for _ in range(2):
        harness.advance(60)
        assert (await harness.admit(limits, tokens=1000)).admitted  # the day is spent
    assert (await harness.admit(RPM100)).admitted
    harness.advance(120)  # the requests and minute buckets are full again; the day is not
    if isinstance(harness.store, MemoryQuotaStore):
        for n in range(1100):  # a sweep of forgettable subjects runs meanwhile
            await harness.store.admit(f"other-{n}", RPM100, 0, "")
    decision = await harness.admit(limits, tokens=600)
    assert not decision.admitted
    assert decision.limited_by == "tokens_per_day"


async def test_a_call_admitted_before_a_reload_settles_without_taking_what_new_limits_gave(
    harness: Harness,
) -> None:
    """A reload that raises the limits while a call streams: its settlement (under the limits
    it was admitted with) gives back what it did not use, and neither refills nor caps the
    buckets at the old limits, which would take what the raised ones refilled since."""
    before = Limits(requests_per_minute=10, tokens_per_minute=1000)
    raised = Limits(requests_per_minute=1000, tokens_per_minute=10_000)
    assert (await harness.admit(before, tokens=600, lease="a")).admitted  # 9 and 400 left
    harness.advance(30)  # 9 + 500 requests and 400 + 5000 tokens at the raised rates
    assert (await harness.admit(raised, tokens=100, lease="b")).admitted  # 508 and 5300
    harness.advance(3)  # 50 requests and 500 tokens more
    await harness.store.settle(harness.subject, before, "a", reserved=600, used=100)
    decision = await harness.admit(raised, tokens=1)
    assert decision.requests is not None
    assert decision.tokens is not None
    assert decision.requests.remaining == 557
    assert decision.tokens.remaining == 5300 + 500 + 500 - 1


async def test_a_charge_beyond_the_reservation_on_a_refilled_bucket_starts_from_full(
    harness: Harness,
) -> None:
    """Refunds of calls whose reservations the bucket has refilled since may leave its level
    above the limit until it is next read: a later overshoot is charged from the limit."""
    assert (await harness.admit(TPM1000, tokens=600, lease="a")).admitted  # 400 left
    harness.advance(60)  # full again
    assert (await harness.admit(TPM1000, tokens=300, lease="b")).admitted  # 700 left
    await harness.store.settle(harness.subject, TPM1000, "a", reserved=600, used=0)
    await harness.store.settle(harness.subject, TPM1000, "b", reserved=300, used=800)
    decision = await harness.admit(TPM1000, tokens=1)
    assert decision.tokens is not None
    assert decision.tokens.remaining == 1000 - 500 - 1
