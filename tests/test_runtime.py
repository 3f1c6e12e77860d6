"""What a request needs, built once per config: work bounded in time, the in-flight count
a runtime closes after, resources shared by successive runtimes (closed with the last),
and a close that never returns cannot hold the shutdown."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import pytest

from sidecar import runtime as runtime_module
from sidecar.runtime import Lifecycle, SharedPool, finish_within
from tests.support.sidecars import running_sidecar

pytestmark = pytest.mark.timeout(60)

FAKE_CONFIG: dict[str, Any] = {
    "server": {"shutdown_grace_seconds": 0.2},
    "claude": {
        "base_url": "builtin:fake",
        "fake": {"tokens": 5, "tokens_per_second": 0, "time_to_first_token_ms": 0},
    },
}


async def test_finish_within_returns_whether_the_work_ended_in_time() -> None:
    assert await finish_within(asyncio.sleep(0), 1) is True

    async def stuck() -> None:
        await asyncio.Event().wait()

    assert await finish_within(stuck(), 0.05) is False

    async def fails() -> None:
        raise ValueError("boom")

    with pytest.raises(ValueError, match="boom"):
        await finish_within(fails(), 1)


async def test_finish_within_is_back_in_time_when_the_work_ignores_its_cancel() -> None:
    release = asyncio.Event()

    async def stubborn() -> None:
        while not release.is_set():
            with contextlib.suppress(asyncio.CancelledError):
                await release.wait()

    try:
        assert await asyncio.wait_for(finish_within(stubborn(), 0.05), 5) is False
    finally:
        release.set()
        await asyncio.sleep(0)


async def test_a_lifecycle_is_idle_once_every_request_left() -> None:
    lifecycle = Lifecycle()
    assert await lifecycle.wait_idle(0)
    lifecycle.enter()
    lifecycle.enter()
    assert lifecycle.inflight == 2
    assert not await lifecycle.wait_idle(0.01)
    lifecycle.leave()
    assert not await lifecycle.wait_idle(0.01)
    waiting = asyncio.ensure_future(lifecycle.wait_idle())
    lifecycle.leave()
    assert await asyncio.wait_for(waiting, 1)
    assert lifecycle.inflight == 0


async def test_shared_resources_are_reused_for_an_equal_key_and_closed_with_their_last_user() -> (
    None
):
    pool = SharedPool()
    opened: list[str] = []
    closed: list[str] = []

    def opener(value: str) -> Any:
        async def open_(stack: contextlib.AsyncExitStack) -> str:
            opened.append(value)
            stack.callback(closed.append, value)
            return value

        return open_

    first, second, third = (contextlib.AsyncExitStack() for _ in range(3))
    assert await pool.use(first, "store", ("a", 1), opener("one")) == "one"
    assert await pool.use(second, "store", ("a", 1), opener("two")) == "one"  # reused
    assert await pool.use(third, "store", ("b", 2), opener("three")) == "three"  # other key
    assert opened == ["one", "three"]
    assert pool.live("store") == 2
    assert pool.live("other") == 0
    await first.aclose()
    assert closed == []  # still used by the second runtime
    await second.aclose()
    assert closed == ["one"]
    await third.aclose()
    assert closed == ["one", "three"]
    assert pool.live("store") == 0


async def test_a_resource_that_fails_to_open_is_not_kept() -> None:
    pool = SharedPool()
    cleaned: list[str] = []

    async def broken(stack: contextlib.AsyncExitStack) -> str:
        stack.callback(cleaned.append, "partial")
        raise OSError("unreachable")

    async with contextlib.AsyncExitStack() as stack:
        with pytest.raises(OSError, match="unreachable"):
            await pool.use(stack, "store", "k", broken)
    assert cleaned == ["partial"]
    assert pool.live("store") == 0


async def test_a_close_that_never_returns_cannot_hold_the_shutdown(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(runtime_module, "CLOSE_TIMEOUT", 0.5)
    release = asyncio.Event()

    async def stuck_close() -> None:  # a store whose close hangs and ignores cancellation
        while not release.is_set():
            with contextlib.suppress(asyncio.CancelledError):
                await release.wait()

    async with running_sidecar(FAKE_CONFIG) as server:
        monkeypatch.setattr(server.runtime.resume.store, "close", stuck_close)
        shutdown = asyncio.ensure_future(server.shutdown(grace=0.2))
        try:
            done, _ = await asyncio.wait([shutdown], timeout=30)
            assert done, "the shutdown waited on a close that never returns"
            shutdown.result()
        finally:
            release.set()  # the stuck close may end now (and the test loop with it)
            await asyncio.wait([shutdown], timeout=5)
            await asyncio.sleep(0.1)
    assert "closing a runtime timed out" in caplog.text
