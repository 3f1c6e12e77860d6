"""Process-wide admission: limit, FIFO queue, full queue, wait timeout, cancellation."""

from __future__ import annotations

import asyncio

import pytest

from sidecar.admission import Admission
from sidecar.config import ClaudeConfig, QueueConfig
from sidecar.errors import Rejection


def gate(limit: int, waiting: int, wait: float) -> Admission:
    return Admission(
        ClaudeConfig(
            max_concurrent_streams=limit,
            queue=QueueConfig(max_waiting=waiting, max_wait_seconds=wait),
        )
    )


async def test_admits_up_to_the_limit_then_queues_in_order() -> None:
    admission = gate(1, 5, 5)
    assert await admission.acquire() == 0.0
    order: list[int] = []

    async def waiter(n: int) -> None:
        await admission.acquire()
        order.append(n)

    tasks = [asyncio.create_task(waiter(n)) for n in range(3)]
    await asyncio.sleep(0.01)
    assert admission.waiting == 3
    for _ in range(3):
        admission.release()
        await asyncio.sleep(0.01)
    await asyncio.gather(*tasks)
    assert order == [0, 1, 2]
    assert admission.active == 1
    admission.release()
    assert admission.active == 0


async def test_full_queue_rejects_at_once_with_retry_after() -> None:
    admission = gate(1, 0, 5)
    await admission.acquire()
    with pytest.raises(Rejection) as caught:
        await admission.acquire()
    assert caught.value.status == 529
    assert caught.value.error_type == "overloaded_error"
    assert caught.value.reason == "queue_full"
    assert int(caught.value.headers["retry-after"]) >= 1


async def test_wait_timeout_rejects_and_frees_the_place() -> None:
    admission = gate(1, 1, 0.05)
    await admission.acquire()
    with pytest.raises(Rejection) as caught:
        await admission.acquire()
    assert caught.value.reason == "queue_timeout"
    assert admission.waiting == 0
    admission.release()
    assert admission.active == 0


async def test_cancelled_waiter_does_not_leak_a_slot() -> None:
    admission = gate(1, 2, 5)
    await admission.acquire()
    task = asyncio.create_task(admission.acquire())
    await asyncio.sleep(0.01)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert admission.waiting == 0
    admission.release()
    assert admission.active == 0


async def test_slot_handed_over_while_cancelled_is_passed_on() -> None:
    admission = gate(1, 2, 5)
    await admission.acquire()
    first = asyncio.create_task(admission.acquire())
    second = asyncio.create_task(admission.acquire())
    await asyncio.sleep(0.01)
    admission.release()  # hands the slot to `first` ...
    first.cancel()  # ... which is cancelled before it runs: the slot must reach `second`
    with pytest.raises(asyncio.CancelledError):
        await first
    await asyncio.wait_for(second, 1)
    assert admission.active == 1


async def test_shutdown_turns_away_the_waiters_and_every_later_call() -> None:
    """Once shutdown has ended the live streams, a slot they free is nobody's: the queued
    calls and any call after get a 503 `shutting_down` (before Claude is called)."""
    admission = gate(1, 5, 5)
    await admission.acquire()
    waiters = [asyncio.create_task(admission.acquire()) for _ in range(2)]
    await asyncio.sleep(0.01)
    admission.stop()
    admission.release()  # the stopped stream's slot
    for outcome in await asyncio.gather(*waiters, return_exceptions=True):
        assert isinstance(outcome, Rejection)
        assert (outcome.status, outcome.reason) == (503, "shutting_down")
        assert outcome.headers["retry-after"] == "1"
    assert admission.active == 0
    with pytest.raises(Rejection) as caught:
        await admission.acquire()  # a free slot, after the stop
    assert caught.value.reason == "shutting_down"
    assert admission.active == 0


async def test_a_waiter_cancelled_as_shutdown_turns_it_away_takes_no_slot() -> None:
    admission = gate(1, 5, 5)
    await admission.acquire()
    waiter = asyncio.create_task(admission.acquire())
    await asyncio.sleep(0.01)
    admission.stop()
    waiter.cancel()  # the client left in the same turn
    with pytest.raises(asyncio.CancelledError):
        await waiter
    assert admission.active == 1  # only the stream's, not freed twice
    admission.release()
    assert admission.active == 0
