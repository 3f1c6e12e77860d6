"""Waits of one length under one timer: overrun waits are cancelled (and only those), in
the order they began, each at its own deadline; a cancellation from elsewhere is never
taken for a timeout; a stopped wait leaves its task alone."""

from __future__ import annotations

import asyncio

import pytest

from sidecar.deadlines import Deadlines


async def _wait(deadlines: Deadlines, seconds: float) -> str:
    """Wait `seconds` under a deadline: "done", or "timeout" when the deadline cut it."""
    task = deadlines.start()
    try:
        await asyncio.sleep(seconds)
    except asyncio.CancelledError:
        if deadlines.stop(task):
            return "timeout"
        raise
    finally:
        deadlines.stop(task)
    return "done"


async def test_a_wait_past_its_deadline_is_cut_and_one_in_time_is_not() -> None:
    deadlines = Deadlines(0.1)
    assert await _wait(deadlines, 5) == "timeout"
    assert await _wait(deadlines, 0.01) == "done"
    assert deadlines.pending() == 0


async def test_a_stopped_wait_leaves_its_task_alone_after_the_deadline() -> None:
    deadlines = Deadlines(0.05)
    assert await _wait(deadlines, 0.01) == "done"
    await asyncio.sleep(0.15)  # the timer armed for that wait fires meanwhile: nothing to cut
    assert asyncio.current_task().cancelling() == 0  # type: ignore[union-attr]


async def test_many_waits_share_the_timer_and_each_ends_at_its_own_deadline() -> None:
    deadlines = Deadlines(0.2)
    loop = asyncio.get_running_loop()
    ended: dict[int, float] = {}

    async def wait(n: int, seconds: float) -> str:
        started = loop.time()
        result = await _wait(deadlines, seconds)
        ended[n] = loop.time() - started
        return result

    tasks = []
    for n in range(6):
        # Odd ones finish in time, even ones overrun; they start 30 ms apart.
        tasks.append(asyncio.create_task(wait(n, 0.05 if n % 2 else 5)))
        await asyncio.sleep(0.03)
    results = await asyncio.gather(*tasks)
    assert results == ["timeout", "done"] * 3
    for n in (0, 2, 4):
        assert 0.19 <= ended[n] < 0.6  # its own deadline, not the first one's
    assert deadlines.pending() == 0


async def test_a_later_wait_gets_its_own_deadline_after_an_earlier_one_stopped() -> None:
    deadlines = Deadlines(0.2)
    loop = asyncio.get_running_loop()
    assert await _wait(deadlines, 0.01) == "done"  # arms the timer for ~0.2 s from now
    await asyncio.sleep(0.1)
    started = loop.time()
    assert await _wait(deadlines, 5) == "timeout"
    assert loop.time() - started >= 0.19  # re-armed for this wait, not cut at the old time


async def test_a_cancellation_from_elsewhere_is_not_a_timeout() -> None:
    deadlines = Deadlines(5)
    task = asyncio.create_task(_wait(deadlines, 5))
    await asyncio.sleep(0.01)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert deadlines.pending() == 0


async def test_a_cancellation_from_elsewhere_on_top_of_the_deadline_goes_on() -> None:
    deadlines = Deadlines(0.05)
    verdicts: list[bool] = []

    async def wait() -> None:
        task = deadlines.start()
        try:
            await asyncio.sleep(5)
        except asyncio.CancelledError:
            task.cancel()  # someone else cancels too before the wait ends
            verdicts.append(deadlines.stop(task))

    task = asyncio.create_task(wait())
    with pytest.raises(asyncio.CancelledError):
        await task
    assert verdicts == [False]  # not a timeout: the other cancellation goes on


async def test_close_stops_the_timer() -> None:
    deadlines = Deadlines(0.05)
    task = asyncio.create_task(_wait(deadlines, 0.2))
    await asyncio.sleep(0.01)
    deadlines.close()
    assert await task == "done"  # nothing fired


async def test_a_wait_needs_a_task() -> None:
    deadlines = Deadlines(1)

    def outside() -> None:
        deadlines.start()

    loop = asyncio.get_running_loop()
    future: asyncio.Future[None] = loop.create_future()

    def run() -> None:
        try:
            outside()
        except RuntimeError as exc:
            future.set_exception(exc)
        else:
            future.set_result(None)

    loop.call_soon(run)
    with pytest.raises(RuntimeError, match="running task"):
        await future
