"""One answer as it is produced: recorded for the cache and read live by coalesced callers.

The Claude call writes into a `Recording` through the call tap (`sidecar.stream.tap`):
each upstream chunk with the time since the previous one, or a whole message, then the
end. Identical requests arriving meanwhile read the same recording from its first chunk
and follow it as it grows, each through its own stream core, so they get the whole
stream live without a Claude call of their own. A completed recording becomes an
`Entry`; one that ended any other way (error, cut off, cancelled, abandoned) is never
stored.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

from opentelemetry.trace import SpanContext

from sidecar.cache.entry import Entry
from sidecar.record import StreamRecord
from sidecar.stream.waiters import park, wake


class Recording:
    """Chunks so far, their gaps, and whether the answer completed, failed or goes on."""

    __slots__ = (
        "_last", "_on_end", "_waiters", "chunks", "completed", "cut", "ended", "entry",
        "followers", "gaps", "on_idle", "origin", "pings", "size", "stream",
    )  # fmt: skip

    def __init__(self, stream: bool, on_end: Callable[[Recording], None] | None = None) -> None:
        self.stream = stream
        self.chunks: list[bytes] = []
        self.gaps: list[float] = []
        self.size = 0
        self.ended = False
        self.completed = False
        self.entry: Entry | None = None  # set once completed
        # Why the call's stream was cut before Claude ended it (a stop by the sidecar, the
        # connection to Claude lost): its followers' streams end the same way.
        self.cut: BaseException | None = None
        self._last: float | None = None
        self._on_end = on_end
        self._waiters: list[asyncio.Future[None]] = []
        # The span of the Claude call being recorded (None for a stored entry's replay).
        self.origin: SpanContext | None = None
        self.followers = 0  # callers replaying it now (coalesced requests)
        # Told when the last follower leaves (set by the call's generation once its own
        # clients left it to the followers; cleared when it ends).
        self.on_idle: Callable[[], None] | None = None
        # Heartbeats of the call while Claude is quiet: readers following it live send
        # their client one (`replay_stream`), as the relay does to a live stream's.
        self.pings = 0

    # ------------------------------------------------------------------ the call tap

    def started(self, span: SpanContext) -> None:
        """The Claude call's span, which a follower's request span links to."""
        self.origin = span

    def chunk(self, data: bytes) -> None:
        """One upstream body chunk (from the socket's read callback: never waits)."""
        if self.ended:
            return
        now = time.perf_counter()
        self.gaps.append(0.0 if self._last is None else now - self._last)
        self._last = now
        self.chunks.append(data)
        self.size += len(data)
        if self._waiters:
            wake(self._waiters)

    def stopped(self, end: BaseException) -> None:
        """The call's stream was cut (`StreamCore.end`'s reason): followers end with it."""
        if not self.ended:
            self.cut = end

    def message(self, body: bytes) -> None:
        """A whole non-streaming answer."""
        if not self.ended:
            self.chunks = [body]
            self.gaps = [0.0]
            self.size = len(body)

    def ping(self) -> None:
        """The call's heartbeat is due (its watchdog's, only while Claude is quiet)."""
        if not self.ended:
            self.pings += 1
            wake(self._waiters)

    def finish(self, record: StreamRecord) -> None:
        """The call ended: only a completed answer without an error event becomes an entry."""
        if self.ended:
            return
        if record.outcome == "completed" and record.error_type is None and self.chunks:
            self.completed = True
            self.entry = Entry(
                stream=self.stream,
                chunks=self.chunks,
                gaps=self.gaps,
                created=time.time(),
                input_tokens=record.total_input_tokens,
                output_tokens=record.output_tokens,
            )
        self._end()

    def abandon(self) -> None:
        """The call never started (its request was refused first): followers go their own way."""
        self._end()

    def _end(self) -> None:
        self.ended = True
        wake(self._waiters)
        on_end, self._on_end = self._on_end, None
        if on_end is not None:
            on_end(self)

    # ------------------------------------------------------------------ readers

    def follow(self) -> None:
        """A caller starts reading it (every `follow` is matched by one `unfollow`)."""
        self.followers += 1

    def unfollow(self) -> None:
        """A caller stopped reading it (its replay ended, failed or its client left)."""
        self.followers -= 1
        if not self.followers and self.on_idle is not None:
            self.on_idle()

    async def wait(self, seen: int) -> None:
        """Until there are more than `seen` chunks, the recording ended, or a heartbeat."""
        if len(self.chunks) <= seen and not self.ended:
            await park(self._waiters)
