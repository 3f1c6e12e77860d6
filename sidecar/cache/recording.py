"""One answer as it is produced: recorded for the cache and read live by coalesced callers.

The Claude call writes into a `Recording` through the call tap (`sidecar.stream.tap`):
each upstream chunk with the time since the previous one, or a whole message, then the
end. Identical requests arriving meanwhile read the same recording from its first chunk
and follow it as it grows, each through its own stream core, so they get the whole
stream live without a Claude call of their own. A completed recording becomes an
`Entry`; one that ended any other way (error, cut off, cancelled, abandoned) is never
stored.

A recording is bounded by what can be stored (its `limit`, `cache.max_bytes`). Once past
it, it can never become an entry, so it stops being a cache candidate (`spilled`): it
leaves the answers in flight, a caller that had not started reading it gets none of it
(it makes its own call), and it keeps only what its readers still need (`held` bytes).
Each reader reads through a `Cursor`; a count of readers per position says when the
oldest chunk was read by all of them, which is then let go (O(1) a chunk). Its memory is
then the slowest reader's lag, which the replay's stall rule bounds (a reader that takes
nothing for `claude.client_stall_timeout_seconds` is cut). Before that, nothing is
counted per chunk.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections import Counter
from collections.abc import Callable

from opentelemetry.trace import SpanContext

from sidecar.cache.entry import Entry
from sidecar.record import StreamRecord
from sidecar.stream.waiters import park, wake


class Cursor:
    """One reader's place in a recording: the index of the next chunk it reads."""

    __slots__ = ("at",)

    def __init__(self) -> None:
        self.at = 0


class Recording:
    """Chunks so far, their gaps, and whether the answer completed, failed or goes on."""

    __slots__ = (
        "_cursors", "_first", "_last", "_limit", "_on_end", "_on_spill", "_readers",
        "_waiters", "base", "chunks", "completed", "count", "cut", "ended", "entry",
        "followers", "gaps", "held", "on_idle", "origin", "size", "spilled", "stream",
        "ticked", "ticked_before", "ticks",
    )  # fmt: skip

    def __init__(
        self,
        stream: bool,
        on_end: Callable[[Recording], None] | None = None,
        *,
        limit: int | None = None,
        on_spill: Callable[[Recording], None] | None = None,
    ) -> None:
        self.stream = stream
        # Chunk `i` (counted from the answer's first) is `chunks[i - base]`, its gap
        # `gaps[i - base]`; those before `_first` were let go (empty until compacted away).
        self.chunks: list[bytes] = []
        self.gaps: list[float] = []
        self.base = 0
        self._first = 0
        self.count = 0  # chunks recorded
        self.size = 0  # their bytes
        self.held = 0  # the bytes of those still held
        # Bytes past which the answer cannot be stored (`cache.max_bytes`; None: no bound).
        self._limit: float = math.inf if limit is None else limit
        self.spilled = False  # past the limit: never an entry, read chunks let go
        self._on_spill = on_spill
        self._cursors: set[Cursor] = set()
        self._readers: Counter[int] | None = None  # readers per position, once spilled
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
        # The call's watchdog looks while it streams (`tick`: how many, the loop time of the
        # last and of the one before): readers following it live time their own client's
        # heartbeat by them (`replay_stream`), as the relay times a live stream's.
        self.ticks = 0
        self.ticked = self.ticked_before = 0.0

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
        self.count += 1
        self.size += len(data)
        self.held += len(data)
        if self.size > self._limit:
            self._past_limit()
        if self._waiters:
            wake(self._waiters)

    def stopped(self, end: BaseException) -> None:
        """The call's stream was cut (`StreamCore.end`'s reason): followers end with it."""
        if not self.ended:
            self.cut = end

    def message(self, body: bytes) -> None:
        """A whole non-streaming answer."""
        if not self.ended:  # (one body, read whole: kept while read, stored if it fits)
            self.chunks = [body]
            self.gaps = [0.0]
            self.count = 1
            self.size = self.held = len(body)

    def tick(self, now: float) -> None:
        """The call's watchdog looked (`now`, loop time): readers waiting for chunks wake,
        each to see whether its client's heartbeat is due. Per tick, never per chunk."""
        if not self.ended:
            self.ticks += 1
            self.ticked_before, self.ticked = self.ticked, now
            if self._waiters:
                wake(self._waiters)

    def finish(self, record: StreamRecord) -> None:
        """The call ended: only a completed answer without an error event becomes an entry."""
        if self.ended:
            return
        if record.outcome == "completed" and record.error_type is None and self.count:
            self.completed = True
        if self.completed and not self.spilled:  # (a message too large: the store refuses it)
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

    def _past_limit(self) -> None:
        """Past what can be stored: no longer a cache candidate, and from now on each chunk
        every reader has read is let go (at once when nobody reads it)."""
        if self.spilled:
            if not self._readers:
                self._release()
            return
        self.spilled = True
        self._readers = Counter(cursor.at for cursor in self._cursors)
        self._release()
        on_spill, self._on_spill = self._on_spill, None
        if on_spill is not None:
            on_spill(self)

    def _release(self) -> None:
        """Let go of the oldest chunks up to the slowest reader's (each once: O(1) a chunk)."""
        readers = self._readers
        assert readers is not None
        first, base, chunks, gaps = self._first, self.base, self.chunks, self.gaps
        while first < self.count and first not in readers:
            self.held -= len(chunks[first - base])
            chunks[first - base] = b""
            gaps[first - base] = 0.0
            first += 1
        self._first = first
        gone = first - base
        if gone > len(chunks) // 2:  # compacted once half are gone: amortised O(1)
            del chunks[:gone], gaps[:gone]
            self.base = first

    # ------------------------------------------------------------------ readers

    def follow(self) -> Cursor | None:
        """A caller starts reading it from its first chunk (every `follow` that gave a
        cursor is matched by one `unfollow`); None once it spilled: its start may be gone,
        and its answer is nobody's to share any more."""
        if self.spilled:
            return None
        self.followers += 1
        cursor = Cursor()
        self._cursors.add(cursor)
        return cursor

    def unfollow(self, cursor: Cursor) -> None:
        """A caller stopped reading it (its replay ended, failed or its client left)."""
        self.done(cursor)
        self.followers -= 1
        if not self.followers and self.on_idle is not None:
            self.on_idle()

    def done(self, cursor: Cursor) -> None:
        """`cursor`'s caller reads no more of it (it may still be a member: a resumable
        stream's first caller reads the generation instead)."""
        if cursor not in self._cursors:
            return
        self._cursors.discard(cursor)
        readers = self._readers
        if readers is not None:
            self._left(readers, cursor.at)

    def _left(self, readers: Counter[int], at: int) -> None:
        left = readers[at] - 1
        if left:
            readers[at] = left
        else:
            del readers[at]
            if at == self._first:
                self._release()

    def read(self, cursor: Cursor) -> bytes:
        """`cursor`'s next chunk (there is one: `cursor.at < count`), `cursor` past it."""
        at = cursor.at
        cursor.at = at + 1
        chunk = self.chunks[at - self.base]
        readers = self._readers
        if readers is not None:  # (spilled: counted, and let go once all read it)
            readers[at + 1] += 1
            self._left(readers, at)
        return chunk

    def gap(self, at: int) -> float:
        """The time before chunk `at` (not yet read by the asking cursor)."""
        return self.gaps[at - self.base]

    async def wait(self, seen: int) -> None:
        """Until there are more than `seen` chunks, the recording ended, or a watchdog tick."""
        if self.count <= seen and not self.ended:
            await park(self._waiters)
