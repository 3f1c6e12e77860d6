"""Resume stores: where a stream's numbered events stay readable for `resume.ttl_seconds`.

A `StreamLog` is one stream's buffer as its producer writes it: `append` never waits
(the hot path calls it per event), `finish` marks the last event. It also hands out the
stream's event ids (`id: <stream id>:<n>`, `id_prefix` and `numbered`), so whoever frames
an event can write its id in the same step. The producing replica
serves its own clients from the log in memory; a `ResumeStore` makes the log readable
by a reconnect that finds no live generation here: `lookup` says whose it is and how far
it got, `read` yields the events after a client's last one until the final event, or
raises `StreamLost` when the producer died without one.

`memory` (this module) keeps logs in the process; `redis` (`redis_store.py`) in Redis
Streams, so a reconnect may land on any replica.
"""

from __future__ import annotations

import asyncio
import collections
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Final

from sidecar.stream.waiters import park, wake

_BLANK: Final = b"\n\n"  # ends an event
MAX_CHATS = 100_000  # chat → stream mappings the memory store keeps (the oldest go first)
POLL_SECONDS: Final = 1.0  # a quiet reader hears from `read` at least this often


class StoreError(Exception):
    """The resume store failed (unreachable, full); never the stream's own failure."""


class StreamLost(Exception):
    """The stream's producer died without a final event."""


class FellBehind(Exception):
    """A reader fell behind the stream's buffer: events after its last one were dropped
    (over `resume.max_buffer_bytes`) before it read them. Never a gap: its read ends."""


class BeyondEnd(ValueError):
    """A client claims an event the stream never sent."""


@dataclass(frozen=True, slots=True)
class StreamInfo:
    """What a reconnect needs to know before reading."""

    owner: str  # hash of the identity that started it
    last: int  # number of the newest event kept
    final: bool  # the last event is the stream's final one
    first: int = 1  # number of the oldest event still kept
    origin: str = ""  # `<trace id>-<span id>` of the producing stream's span, for links
    # A producer still writes it (shared stores: its liveness key is set; one process: it
    # is not final). A client ahead of the store while this holds names an unsent event.
    producing: bool = False
    # The route kind (`prompt`, `ui`, `anthropic`) whose format its events are in: only a
    # route of that kind may read or cancel it. "" from a replica that kept none: any.
    kind: str = ""
    # Its final event is the `stream_lost` a reader kept after its producer died (shared
    # stores): events its client got may be missing before it, and a client may hold
    # events past it. Such a client is given that end too, never told it names an event
    # the stream never sent.
    lost: bool = False

    def framed_for(self, kind: str) -> bool:
        """Whether a route of `kind` may serve this stream's events (its format)."""
        return framed_for(self.kind, kind)


def framed_for(stored: str, kind: str) -> bool:
    """Whether a route of `kind` may serve events stored in the format of kind `stored`
    ("" from a replica that kept none: any)."""
    return not stored or stored == kind


class Budget:
    """Bytes kept by a store's logs, as a running total: every log of the store adds what it
    keeps and drops, the store subtracts a log it lets go (never a sum over all logs)."""

    __slots__ = ("used",)

    def __init__(self) -> None:
        self.used = 0


class StreamLog:
    """One stream's events in memory, bounded by `max_bytes` (the oldest are dropped).

    Events are numbered from 1: `last` is the newest kept, `numbered` the newest whose id
    was written (`id_prefix` + n). A writer that numbers its own events bumps `numbered`
    as it frames each; the events are then appended in order, so `numbered - last` is how
    many numbered events are on their way to `append`.
    """

    __slots__ = (
        "_waiters", "base", "budget", "events", "final", "finished_at", "id_prefix", "kind",
        "last", "max_bytes", "numbered", "on_cancel", "origin", "owner", "readers_elsewhere",
        "size", "stream_id",
    )  # fmt: skip

    def __init__(
        self,
        stream_id: str,
        owner: str,
        max_bytes: int,
        budget: Budget | None = None,
        *,
        kind: str = "",
    ) -> None:
        self.stream_id = stream_id
        self.owner = owner
        self.kind = kind  # the route kind whose format the events are in
        self.max_bytes = max_bytes
        self.budget = budget if budget is not None else Budget()
        self.events: collections.deque[bytes] = collections.deque()
        self.base = 0  # events dropped from the front
        self.last = 0  # number of the newest event kept
        self.numbered = 0  # number of the newest event given its id
        self.id_prefix = b"id: " + stream_id.encode() + b":"
        self.size = 0
        self.final = False
        self.finished_at: float | None = None
        self.origin = ""
        # Called when another replica asks to cancel the stream (shared stores).
        self.on_cancel: Callable[[], object] | None = None
        # Clients reading the stream from the store on other replicas, as the store last
        # said (shared stores, about once a second): while any reads, it is attended.
        self.readers_elsewhere = 0
        self._waiters: list[asyncio.Future[None]] = []

    def append(self, event: bytes) -> None:
        """Keep one numbered event, number `last + 1` (never waits)."""
        events = self.events
        events.append(event)
        self.last += 1
        grown = len(event)
        size = self.size + grown
        if size > self.max_bytes:  # full: the oldest go (always keeping the newest)
            max_bytes = self.max_bytes
            while len(events) > 1:
                dropped = len(events.popleft())
                size -= dropped
                grown -= dropped
                self.base += 1
                if size <= max_bytes:
                    break
        self.size = size
        self.budget.used += grown
        if self._waiters:
            wake(self._waiters)

    def number(self, out: bytes) -> bytes:
        """`out`'s events (each ending in a blank line), each given its id: `id_prefix` + n.

        For a writer's less common events; its common one writes the id in its own format.
        """
        if out.count(_BLANK) == 1 and out.endswith(_BLANK):  # one event
            n = self.numbered = self.numbered + 1
            return b"%b%d\n%b" % (self.id_prefix, n, out)
        numbered = []
        for part in out.split(_BLANK):
            if part:
                n = self.numbered = self.numbered + 1
                numbered.append(b"%b%d\n%b\n\n" % (self.id_prefix, n, part))
        return b"".join(numbered)

    def finish(self) -> None:
        """The last appended event was the final one."""
        self.final = True
        self.finished_at = time.monotonic()
        wake(self._waiters)

    def since(self, n: int) -> list[bytes] | None:
        """Events after number `n`; None if some of them were dropped; `BeyondEnd` past the end."""
        if n > self.last:
            raise BeyondEnd(n)
        if n < self.base:
            return None
        return list(self.events)[n - self.base :] if n < self.last else []

    def info(self) -> StreamInfo:
        return StreamInfo(
            self.owner, self.last, self.final, self.base + 1, self.origin, not self.final, self.kind
        )

    def set_origin(self, origin: str) -> None:
        """The producing stream's span (`<trace id>-<span id>`): resumes link to it."""
        self.origin = origin

    async def wait(self, n: int) -> None:
        """Until there is an event after `n` or the stream is final."""
        while self.last <= n and not self.final:
            await park(self._waiters)

    def close(self) -> None:
        """The producer lets go (a Redis log flushes and stops its liveness key)."""


class ResumeStore:
    """The store interface, implemented in memory: one process, bounded, expiring."""

    name = "memory"
    # How long a producer that died may still look alive (`StreamInfo.producing`): none
    # here, where a producer cannot die apart from its readers.
    liveness_seconds = 0.0

    def __init__(self, *, ttl: float, max_buffer_bytes: int, max_total_bytes: int) -> None:
        self.ttl = ttl
        self.max_buffer_bytes = max_buffer_bytes
        self.max_total_bytes = max_total_bytes
        self._logs: dict[str, StreamLog] = {}
        self._budget = Budget()  # bytes kept by the logs in `_logs`
        self._finished: collections.OrderedDict[str, StreamLog] = collections.OrderedDict()
        # (owner, chat id) → (stream id, expiry), oldest first: a chat's newest stream.
        self._chats: collections.OrderedDict[tuple[str, str], tuple[str, float]] = (
            collections.OrderedDict()
        )

    async def start(self) -> None:
        """Connect (Redis); the memory store has nothing to open."""

    async def ready(self) -> bool:
        """The store answers (readiness); the memory store always does."""
        return True

    async def close(self) -> None:
        """Flush and disconnect."""
        for log in self._logs.values():
            log.budget = Budget()  # a stream still running no longer counts here
        self._budget.used = 0
        self._logs.clear()
        self._finished.clear()
        self._chats.clear()

    async def create(self, stream_id: str, owner: str, *, kind: str = "") -> StreamLog:
        """A new stream's log, its events in the format of route kind `kind`; `StoreError`
        if the store cannot take it."""
        self._expire()
        budget = self._budget
        while budget.used > self.max_total_bytes and self._finished:
            _, oldest = self._finished.popitem(last=False)
            self._drop(oldest)
        if budget.used > self.max_total_bytes:
            raise StoreError("the memory resume store is full")
        if (old := self._logs.get(stream_id)) is not None:
            self._drop(old)  # an id given twice: the old log stops counting
        log = _MemoryLog(self, stream_id, owner, self.max_buffer_bytes, budget, kind)
        self._logs[stream_id] = log
        return log

    @property
    def used_bytes(self) -> int:
        """Bytes the retained logs keep in this process (the running total that
        `max_total_bytes` bounds in the memory store)."""
        return self._budget.used

    def unfinished(self) -> int:
        """Logs whose stream has not ended (each must end: tests check none leaks)."""
        return sum(1 for log in self._logs.values() if not log.final)

    def finished(self, log: StreamLog) -> None:
        if self._logs.get(log.stream_id) is log:  # still retained here: it expires from now
            self._finished[log.stream_id] = log

    async def lookup(self, stream_id: str) -> StreamInfo | None:
        """Who owns the stream and how far it got; None if unknown or expired."""
        self._expire()
        log = self._logs.get(stream_id)
        return log.info() if log is not None else None

    async def join(self, stream_id: str, reader: str, limit: int) -> bool:
        """Count `reader` among the stream's readers on every replica; False (not counted)
        when `limit` read it already. One process: its own count is the whole count."""
        return True

    async def leave(self, stream_id: str, reader: str) -> None:
        """`reader` stopped reading (`join`'s other half)."""

    async def keep(self, stream_id: str, reader: str) -> None:
        """Keep `reader` counted while it reads (run as a task, cancelled when it stops);
        nothing to keep in one process."""

    async def read(
        self, stream_id: str, after: int, quiet: float = POLL_SECONDS
    ) -> AsyncIterator[list[bytes]]:
        """Batches of events after `after` until the final one (`StreamLost` if it never
        comes, `FellBehind` if events the reader had not read were dropped); an empty batch
        once nothing came for `quiet` seconds since the reader took the last batch (its
        heartbeat is due)."""
        log = self._logs.get(stream_id)
        if log is None:
            raise StreamLost(stream_id)
        while True:
            batch = log.since(after)
            if batch is None:
                raise FellBehind(stream_id)  # dropped while this reader lagged
            if batch:
                after += len(batch)
                yield batch
            if log.final and after >= log.last:
                return
            try:
                async with asyncio.timeout(quiet):
                    await log.wait(after)
            except TimeoutError:
                yield []

    async def kept(self, stream_id: str, upto: int) -> list[bytes]:
        """The stream's events still kept, oldest first, up to number `upto`: what a reader
        that sent up to `upto` must know to end its client's stream well (the parts it
        left open). Read once, at a read's end, never per event."""
        log = self._logs.get(stream_id)
        if log is None:
            return []
        return list(log.events)[: max(0, upto - log.base)]

    async def bind_chat(self, owner: str, chat_id: str, stream_id: str) -> None:
        """Remember `stream_id` as the newest stream of `owner`'s chat, for `ttl` seconds."""
        key = (owner, chat_id)
        self._chats.pop(key, None)
        now = time.monotonic()
        self._chats[key] = (stream_id, now + self.ttl)
        # Same lifetime for all, so the oldest expire first; each bind drops what expired.
        while self._chats:
            _, (_, expires) = next(iter(self._chats.items()))
            if expires > now and len(self._chats) <= MAX_CHATS:
                break
            self._chats.popitem(last=False)

    async def chat_stream(self, owner: str, chat_id: str) -> str | None:
        """The newest stream of `owner`'s chat; None if unknown, expired or someone else's."""
        bound = self._chats.get((owner, chat_id))
        if bound is None or bound[1] <= time.monotonic():
            return None
        return bound[0]

    async def request_cancel(self, stream_id: str) -> bool:
        """Ask another replica producing the stream to cancel it; False: none does."""
        return False

    async def seal(self, stream_id: str, n: int, event: bytes) -> None:
        """End a stream whose producer died with `event` as number `n` (shared stores)."""

    def _expire(self) -> None:
        cutoff = time.monotonic() - self.ttl
        while self._finished:
            log = next(iter(self._finished.values()))
            if log.finished_at is not None and log.finished_at > cutoff:
                break
            self._finished.popitem(last=False)
            self._drop(log)

    def _drop(self, log: StreamLog) -> None:
        """Let a log go: its bytes leave the total (from then on it counts only for itself)."""
        if self._logs.get(log.stream_id) is log:
            del self._logs[log.stream_id]
            self._budget.used -= log.size
            log.budget = Budget()


class _MemoryLog(StreamLog):
    __slots__ = ("_store",)

    def __init__(
        self,
        store: ResumeStore,
        stream_id: str,
        owner: str,
        max_bytes: int,
        budget: Budget,
        kind: str,
    ) -> None:
        super().__init__(stream_id, owner, max_bytes, budget, kind=kind)
        self._store = store

    def finish(self) -> None:
        super().finish()
        self._store.finished(self)
