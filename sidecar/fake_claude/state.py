"""What the fake saw, for tests: received requests, counters, and when each event was written."""

from __future__ import annotations

import asyncio
import time
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

# History is bounded: the fake also serves long benchmarks, which must not grow without limit.
DEFAULT_HISTORY = 10_000


@dataclass(frozen=True, slots=True)
class ReceivedRequest:
    """One request as the fake received it (headers with lowercase names, body as parsed JSON)."""

    method: str
    path: str
    headers: dict[str, str]
    body: Any  # None when the body was not JSON
    peer: str = ""  # host:port of the client connection it came on (tells reuse apart)
    raw_path: str = ""  # the path (and query) exactly as it arrived

    def __getitem__(self, name: str) -> Any:
        """`request["headers"]` reads like the plain dict tests may expect."""
        return getattr(self, name)


@dataclass(slots=True)
class StreamRecord:
    """One streamed reply: its events in order and the monotonic time each write returned."""

    message_id: str
    events: list[str] = field(default_factory=list)
    sent_at: list[float] = field(default_factory=list)
    outcome: str = "open"  # open | completed | cancelled | errored | dropped

    def sent(self, name: str) -> None:
        self.events.append(name)
        self.sent_at.append(time.monotonic())


# Counter names (`counters[...]`, and `GET /_fake/stats` which also has open_streams);
# each fault applied adds one to `faults_<fault>`.
COUNTERS = (
    "requests",
    "streams_started",
    "streams_completed",
    "streams_cancelled",  # the client went away before message_stop
    "streams_errored",  # mid-stream `event: error` sent
    "streams_dropped",  # connection aborted on purpose
    "messages_completed",  # non-streaming replies
)


@dataclass
class FakeClaudeState:
    """Counters and bounded history of one fake (the fake also serves long benchmarks)."""

    history: int = DEFAULT_HISTORY
    counters: Counter[str] = field(default_factory=Counter)
    open_streams: int = 0
    requests: deque[ReceivedRequest] = field(init=False)
    streams: dict[str, StreamRecord] = field(default_factory=dict)  # by message id, oldest first
    fail_counts: Counter[str] = field(default_factory=Counter)  # per fail_key
    # Bumped by `POST /_fake/release`: stalls begun before it go on as unstalled replies.
    releases: int = 0

    def __post_init__(self) -> None:
        self.requests = deque(maxlen=self.history)

    @property
    def sent_at(self) -> dict[str, list[float]]:
        """Message id → the monotonic time each of its events was written."""
        return {message_id: record.sent_at for message_id, record in self.streams.items()}

    def received(self, request: ReceivedRequest) -> None:
        self.counters["requests"] += 1
        self.requests.append(request)

    def fault_applied(self, fault: str) -> None:
        self.counters["faults_" + fault] += 1

    def stream_opened(self, message_id: str) -> StreamRecord:
        if len(self.streams) >= self.history:
            del self.streams[next(iter(self.streams))]  # dicts keep insertion order
        record = self.streams[message_id] = StreamRecord(message_id)
        self.counters["streams_started"] += 1
        self.open_streams += 1
        return record

    def stream_closed(self, record: StreamRecord, outcome: str) -> None:
        record.outcome = outcome
        self.counters["streams_" + outcome] += 1
        self.open_streams -= 1

    def stats(self) -> dict[str, int]:
        counts = dict.fromkeys(COUNTERS, 0) | dict(self.counters)
        counts["open_streams"] = self.open_streams
        return counts

    def reset(self) -> None:
        """Forget history and counters (open streams stay counted: they are still open)."""
        self.counters.clear()
        self.requests.clear()
        self.streams.clear()
        self.fail_counts.clear()

    async def wait_for(
        self, predicate: Callable[[FakeClaudeState], bool], timeout: float = 5.0
    ) -> None:
        """Poll until `predicate(state)` holds (e.g. the fake has noticed a disconnect)."""
        async with asyncio.timeout(timeout):
            while True:
                if predicate(self):
                    return
                await asyncio.sleep(0.005)


FAKE_STATE = web.AppKey("fake_claude_state", FakeClaudeState)
