"""The registry of live streams: one watchdog timer per interval, and shutdown's final events."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import cast

import pytest

from sidecar.record import StreamRecord
from sidecar.relay import LiveStream
from sidecar.stream.registry import StreamRegistry


@dataclass(eq=False)
class Stream:
    """What the registry asks of a live stream: its interval, its look, its stop."""

    tick_every: float
    resumable: bool = False
    ticks: list[float] = field(default_factory=list)
    stops: list[tuple[str, str, str]] = field(default_factory=list)
    fails: bool = False

    def __post_init__(self) -> None:
        self.record = StreamRecord(request_id="req_x", route="/", started=0.0)
        self.generation = self

    def tick(self, now: float) -> None:
        self.ticks.append(now)
        if self.fails:
            raise RuntimeError("a watchdog bug")

    def stop(self, outcome: str, error_type: str, message: str) -> None:
        self.stops.append((outcome, error_type, message))


def live(stream: Stream) -> LiveStream:
    return cast(LiveStream, stream)


async def test_each_interval_has_one_timer_that_ticks_its_streams_until_none_is_left() -> None:
    registry = StreamRegistry()
    fast, also_fast, slow = Stream(0.02), Stream(0.02, fails=True), Stream(0.5)
    for stream in (fast, also_fast, slow):
        registry.add(live(stream))
    assert len(registry) == 3
    await asyncio.sleep(0.11)
    assert len(fast.ticks) >= 3
    assert len(also_fast.ticks) == len(fast.ticks)  # one failing look stops nobody's watchdog
    assert slow.ticks == []
    registry.discard(live(fast))
    registry.discard(live(also_fast))
    seen = len(fast.ticks)
    await asyncio.sleep(0.06)
    assert len(fast.ticks) == seen
    assert 0.02 not in registry.tick_intervals()  # an interval left empty stops its timer
    assert list(registry) == [live(slow)]


@pytest.mark.parametrize(
    ("resumable", "shared", "error_type"),
    [(False, False, "overloaded_error"), (True, True, "overloaded_error"),
     (True, False, "stream_lost")],
)  # fmt: skip
async def test_shutdown_ends_every_stream_saying_what_a_client_can_still_do(
    resumable: bool, shared: bool, error_type: str
) -> None:
    registry = StreamRegistry()
    registry.add(live(stream := Stream(1.0, resumable=resumable)))
    assert registry.stop_all(shared_store=shared) == 1
    ((outcome, kind, message),) = stream.stops
    assert outcome == "shutting_down"
    assert kind == error_type
    assert ("another replica" in message) == (resumable and shared)
    registry.discard(live(stream))


async def test_a_stream_that_starts_after_shutdown_stopped_the_others_is_stopped_at_once() -> None:
    """A call queued for a slot (or waiting for Claude's head) when the grace ended starts
    streaming after `stop_all`: it gets the same final event instead of running unseen
    until the listener cuts it."""
    registry = StreamRegistry()
    assert registry.stop_all(shared_store=True) == 0
    late = Stream(1.0, resumable=True)
    registry.add(live(late))
    ((outcome, kind, message),) = late.stops
    assert (outcome, kind) == ("shutting_down", "overloaded_error")
    assert "another replica" in message
    registry.discard(live(late))
