"""The Redis resume store: each stream is a Redis Stream, so a reconnect may land on any replica.

Keys per stream (one hash tag, so a cluster keeps them together):
`sidecar:resume:{id}` the events, entry id `0-<n>` = event number n (field `e`, and `f`
on the final one); `...:meta` the owner hash, the route kind and the originating span; `...:alive` a
short-lived key the producer refreshes; `...:cancel` a cancel asked on another replica
(also published on the channel `sidecar:resume:cancels`, which every replica listens to
on one connection, so the producer cancels at once; the key, checked with the liveness
refresh, is the fallback for a message missed while that connection was down);
`...:readers` the clients reading the stream from Redis on any replica (a sorted set of
reader tokens scored by when they lapse, each refreshed by its reader about once a
second): they bound `resume.max_subscribers` across replicas, and the producer counts
them as attached, so a client that reconnected elsewhere keeps the generation going.
`sidecar:resume:chat:<owner hash>:<chat id>` names a chat's newest stream (the `ui` route).
All expire `ttl_seconds` after the last write.

The producer never waits on Redis per event: `append` queues, and one writer task sends
what queued in pipelined batches every few milliseconds (one round trip per batch). It
also refreshes the liveness key of every live stream about once a second; a reader on
another replica that sees no new event and no liveness key knows the producer died.
A liveness key found missing at a refresh means Redis lost the stream (it restarted
empty): the producer writes everything it keeps of it again (`_queue_whole`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from typing import Any, Final

from redis.asyncio import ConnectionPool, Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError, ResponseError

from sidecar.cancelling import honour_cancel
from sidecar.stream.store import (
    POLL_SECONDS,
    Budget,
    FellBehind,
    ResumeStore,
    StoreError,
    StreamInfo,
    StreamLog,
    StreamLost,
)

log = logging.getLogger("sidecar.resume")
PREFIX: Final = "sidecar:resume:"
FLUSH_EVERY: Final = 0.005  # seconds a batch collects before it is sent
CANCELS: Final = PREFIX + "cancels"  # pub/sub channel: the ids of streams asked to cancel


# KEYS[1] the readers set; ARGV: token, lapse (ms), limit. Drops lapsed readers, then adds
# (or refreshes) the token unless `limit` others read already: 1 if counted, else 0.
# Scores are Redis' own clock, so replicas' clocks never disagree about a lapse.
_JOIN: Final = """
local t = redis.call('TIME')
local now = t[1] * 1000 + math.floor(t[2] / 1000)
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
if redis.call('ZSCORE', KEYS[1], ARGV[1]) == false
   and redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[3]) then
  return 0
end
redis.call('ZADD', KEYS[1], now + tonumber(ARGV[2]), ARGV[1])
redis.call('PEXPIRE', KEYS[1], tonumber(ARGV[2]))
return 1
"""
# KEYS[1] the readers set: how many have not lapsed.
_COUNT: Final = """
local t = redis.call('TIME')
return redis.call('ZCOUNT', KEYS[1], '(' .. (t[1] * 1000 + math.floor(t[2] / 1000)), '+inf')
"""


def redis_client(url: str, timeout: float) -> Redis:
    """A Redis client (its own connection pool) with the timeouts the sidecar's stores use.

    `timeout` bounds every call (`redis_timeout_seconds`): a stalled Redis costs a request
    no more than that.
    One immediate retry on a fresh connection: after a Redis restart every pooled
    connection is dead and its first use fails. What is retried is safe to run twice
    (events carry their ids, the rest sets values); a timeout is not retried.
    """
    return Redis.from_url(
        url,
        socket_timeout=timeout,
        socket_connect_timeout=timeout,
        retry=Retry(NoBackoff(), 1, supported_errors=(RedisConnectionError,)),
    )


def with_socket_timeout(client: Redis, socket_timeout: float) -> Redis:
    """A client of the same server and settings with another socket timeout (a pool of its
    own, closed by whoever made it)."""
    pool = client.connection_pool
    kwargs = {**pool.connection_kwargs, "socket_timeout": socket_timeout}
    return Redis(connection_pool=ConnectionPool(connection_class=pool.connection_class, **kwargs))


def keys(stream_id: str) -> tuple[str, str, str, str]:
    """Events, meta, liveness and cancel keys of a stream."""
    base = f"{PREFIX}{{{stream_id}}}"
    return base, base + ":meta", base + ":alive", base + ":cancel"


def readers_key(stream_id: str) -> str:
    """The set of a stream's readers on every replica (`_JOIN`)."""
    return f"{PREFIX}{{{stream_id}}}:readers"


def chat_key(owner: str, chat_id: str) -> str:
    """A chat's newest stream id (the `ui` route's resume), per owner hash."""
    return f"{PREFIX}chat:{owner}:{chat_id}"


class _RedisLog(StreamLog):
    """A stream's log: kept in memory for this replica's clients, copied to Redis in batches."""

    __slots__ = (
        "_store",
        "chats",
        "closed",
        "final_queued",
        "origin_sent",
        "queued",
        "queued_from",
        "trimmed",
        "unsaved",
    )

    def __init__(
        self,
        store: RedisResumeStore,
        stream_id: str,
        owner: str,
        max_bytes: int,
        budget: Budget,
        kind: str,
    ) -> None:
        super().__init__(stream_id, owner, max_bytes, budget, kind=kind)
        self._store = store
        # Events not yet sent, numbers `queued_from`…; `final_queued`: the stream's end is
        # not sent yet (it marks the last of them, or the newest entry when there are none).
        self.queued: list[bytes] = []
        self.queued_from = 1
        self.final_queued = False
        self.trimmed = 0
        self.closed = False
        self.origin_sent = False
        # The chats naming this stream (`bind_chat`): written again with its events.
        self.chats: list[str] = []
        # Redis lost the stream (it restarted empty): everything kept here goes again.
        self.unsaved = False

    def append(self, event: bytes) -> None:
        super().append(event)
        queued = self.queued
        if not queued:  # the first of a batch: the writer sends it (a log queuing is dirty)
            self._store.dirty(self)
        queued.append(event)

    def finish(self) -> None:
        super().finish()
        self.final_queued = True
        self._store.dirty(self)

    def close(self) -> None:
        if not self.closed:  # this replica lets its copy go: it no longer counts
            self.budget.used -= self.size
            self.budget = Budget()
        self.closed = True
        self._store.dirty(self)

    def set_origin(self, origin: str) -> None:
        super().set_origin(origin)
        self._store.dirty(self)


class RedisResumeStore(ResumeStore):
    """Resume buffers in Redis Streams, shared by every replica."""

    name = "redis"

    def __init__(
        self,
        url: str,
        *,
        ttl: float,
        max_buffer_bytes: int,
        timeout: float = 1.0,
        alive_seconds: float = 3.0,
        client: Redis | None = None,
    ) -> None:
        super().__init__(ttl=ttl, max_buffer_bytes=max_buffer_bytes, max_total_bytes=1 << 62)
        # A client handed in (one pool shared with the response cache) is closed by its owner.
        self._owns_client = client is None
        self._redis: Redis = client if client is not None else redis_client(url, timeout)
        self._ttl_ms = int(ttl * 1000)
        self._alive_ms = int(alive_seconds * 1000)
        self.liveness_seconds = alive_seconds
        self._refresh = alive_seconds / 3
        self._block_ms = max(50, int(min(self._refresh, timeout) * 1000))
        # Blocking reads (`read`) have a pool of their own whose socket timeout leaves room
        # for the block (Redis ends one up to 1/hz late); every other call keeps `timeout`.
        self._reader = with_socket_timeout(self._redis, timeout + 1.0)
        self._close_timeout = timeout + 1.0
        self._live: dict[str, _RedisLog] = {}
        self._dirty: set[_RedisLog] = set()
        self._wake = asyncio.Event()
        self._writer: asyncio.Task[None] | None = None
        self._listener: asyncio.Task[None] | None = None
        self._closing = False
        self._failing = False
        self._join = self._redis.register_script(_JOIN)
        self._count = self._redis.register_script(_COUNT)

    @property
    def listener(self) -> asyncio.Task[None]:
        """The task listening for cancels (`start`)."""
        assert self._listener is not None, "start() first"
        return self._listener

    @property
    def failing(self) -> bool:
        """The writer's last batch was refused (Redis down or full); it retries."""
        return self._failing

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._writer = loop.create_task(self._write_loop())
        self._listener = loop.create_task(self._listen_for_cancels())

    async def close(self) -> None:
        """Send what is still queued (a drain's final events), then disconnect; bounded.

        Each step gets at most `timeout` + 1 s (the socket timeout): a writer that does not
        end when cancelled or a Redis that stopped answering cannot hold a shutdown.
        """
        bound = self._close_timeout
        # The writer also ends at its next turn on this flag: a cancel can be lost (on
        # Python 3.11, redis-py's `asyncio.wait_for` around a socket write swallows one
        # that lands as the write completes), and the loop would then run forever.
        self._closing = True
        if self._writer is not None:
            self._writer.cancel()
            self._wake.set()
            await asyncio.wait([self._writer], timeout=bound)  # never raises
        if self._listener is not None:
            self._listener.cancel()
            await asyncio.wait([self._listener], timeout=bound)
        with contextlib.suppress(RedisError, OSError, TimeoutError):
            async with asyncio.timeout(bound):
                await self._flush()
        with contextlib.suppress(RedisError, OSError, TimeoutError):
            async with asyncio.timeout(bound):
                await self._reader.aclose(close_connection_pool=True)
        if self._owns_client:
            with contextlib.suppress(RedisError, OSError, TimeoutError):
                async with asyncio.timeout(bound):
                    await self._redis.aclose()

    async def ready(self) -> bool:
        try:
            return bool(await self._redis.ping())
        except (RedisError, OSError, TimeoutError):
            return False

    # ------------------------------------------------------------------ producer side

    async def create(self, stream_id: str, owner: str, *, kind: str = "") -> StreamLog:
        _, meta, alive, _ = keys(stream_id)
        try:
            async with self._redis.pipeline(transaction=False) as pipe:
                pipe.hset(meta, mapping={"owner": owner, "kind": kind})
                pipe.pexpire(meta, self._ttl_ms)
                pipe.set(alive, b"1", px=self._alive_ms)
                await pipe.execute()
        except (RedisError, OSError, TimeoutError) as exc:
            raise StoreError(f"redis: {type(exc).__name__}") from exc
        log_ = _RedisLog(self, stream_id, owner, self.max_buffer_bytes, self._budget, kind)
        self._live[stream_id] = log_
        return log_

    def dirty(self, log_: _RedisLog) -> None:
        """A log has something to send: the writer sends it with the next batch."""
        if not self._dirty:
            self._wake.set()  # once per batch, not per event
        self._dirty.add(log_)

    async def bind_chat(self, owner: str, chat_id: str, stream_id: str) -> None:
        key = chat_key(owner, chat_id)
        live = self._live.get(stream_id)
        if live is not None:  # kept, so a Redis that restarted empty gets it again
            live.chats.append(key)
        try:
            await self._redis.set(key, stream_id, px=self._ttl_ms)
        except (RedisError, OSError, TimeoutError) as exc:
            raise StoreError(f"redis: {type(exc).__name__}") from exc

    async def chat_stream(self, owner: str, chat_id: str) -> str | None:
        try:
            value = await self._redis.get(chat_key(owner, chat_id))
        except (RedisError, OSError, TimeoutError) as exc:
            raise StoreError(f"redis: {type(exc).__name__}") from exc
        return value.decode() if isinstance(value, bytes) else None

    async def request_cancel(self, stream_id: str) -> bool:
        """Ask the replica producing a stream to cancel it; False if no replica produces it.

        Published on `CANCELS` (the producer hears it at once) and kept as the stream's
        cancel key (checked with each liveness refresh: a replica whose listening
        connection was down when it was published still cancels within about a second).
        A publish Redis refuses (an ACL user without the channel) leaves the key to do it."""
        _, _, alive, cancel = keys(stream_id)
        try:
            if not await self._redis.exists(alive):
                return False
            async with self._redis.pipeline(transaction=False) as pipe:
                pipe.set(cancel, b"1", px=self._ttl_ms)
                pipe.publish(CANCELS, stream_id)
                stored, published = await pipe.execute(raise_on_error=False)
        except (RedisError, OSError, TimeoutError) as exc:
            raise StoreError(f"redis: {type(exc).__name__}") from exc
        if isinstance(stored, Exception):
            raise StoreError(f"redis: {type(stored).__name__}") from stored
        if isinstance(published, Exception):
            log.warning(
                "resume cancel not published: the producer cancels at its next refresh",
                extra={"error": _reason(published)},
            )
        return True

    async def _listen_for_cancels(self) -> None:
        """Cancel a stream produced here as soon as another replica asks (`request_cancel`).

        One connection per replica, subscribed to `CANCELS`; a message names a stream id
        and costs a dict lookup (cancels are rare; no work per event). A failed connection
        is opened again after a refresh period; meanwhile the cancel key covers it."""
        refused = False  # said once per run of refusals, not every refresh
        while not self._closing:
            pubsub = self._reader.pubsub(ignore_subscribe_messages=True)
            try:
                await pubsub.subscribe(CANCELS)
                while not self._closing:
                    message = await pubsub.get_message(timeout=self._block_ms / 1000)
                    refused = False  # (a refused subscribe raises here, not above)
                    honour_cancel()  # a close's stop, if redis-py swallowed it
                    if message is not None and isinstance(message.get("data"), bytes):
                        self._cancelled(message["data"].decode(errors="replace"))
            except ResponseError as exc:  # refused: an ACL user without the channel
                if not refused:
                    log.warning(
                        "resume cancel listener refused: cancels wait for the refresh",
                        extra={"error": _reason(exc)},
                    )
                refused = True
                await asyncio.sleep(self._refresh)
            except (RedisError, OSError, TimeoutError):
                await asyncio.sleep(self._refresh)
            except Exception as exc:  # whatever else fails: listen again
                # redis-py's own state errors after a drop: the listener must outlive them
                # (the store would cancel only at refreshes), named by class only.
                log.warning("resume cancel listener failed", extra={"error": _reason(exc)})
                await asyncio.sleep(self._refresh)
            finally:
                with contextlib.suppress(RedisError, OSError, TimeoutError):
                    await pubsub.aclose()  # type: ignore[no-untyped-call]

    def _cancelled(self, stream_id: str) -> None:
        """Another replica asked to cancel `stream_id`: cancel it if it is produced here."""
        live = self._live.get(stream_id)
        if live is not None and not live.closed and not live.final:
            _cancel(live)

    async def _write_loop(self) -> None:
        loop = asyncio.get_running_loop()
        next_refresh = loop.time()
        while not self._closing:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self._refresh):
                    await self._wake.wait()
            await asyncio.sleep(FLUSH_EVERY)  # let a batch collect
            self._wake.clear()
            refresh = loop.time() >= next_refresh
            if refresh:
                next_refresh = loop.time() + self._refresh
            try:
                await self._flush(refresh=refresh)
            except (RedisError, OSError, TimeoutError) as exc:
                if not self._failing:  # once per outage, not once per batch
                    log.warning("resume store write failed", extra={"error": _reason(exc)})
                self._failing = True
                # Readers elsewhere read the same Redis: none can be counted on now, and
                # a count kept from before would hold an abandoned stream open.
                for live in self._live.values():
                    live.readers_elsewhere = 0
                await asyncio.sleep(self._refresh)  # what failed is sent again then
            else:
                self._failing = False

    async def _flush(self, *, refresh: bool = False) -> None:
        dirty, self._dirty = self._dirty, set()
        live = list(self._live.values()) if refresh else []
        if not dirty and not live:
            return
        taken: list[_Taken] = []
        async with self._redis.pipeline(transaction=False) as pipe:
            for log_ in dirty:
                taken.append(
                    (log_, log_.queued, log_.queued_from, log_.final_queued, log_.origin_sent,
                     log_.trimmed, log_.unsaved)
                )  # fmt: skip
                self._queue_log(pipe, log_)
            checked = [log_ for log_ in live if not log_.closed and not log_.final]
            for log_ in checked:
                _, _, alive, cancel = keys(log_.stream_id)
                pipe.set(alive, b"1", px=self._alive_ms, get=True)  # None: Redis lost it
                pipe.exists(cancel)
                await self._count(keys=[readers_key(log_.stream_id)], client=pipe)
            try:
                results = await pipe.execute(raise_on_error=False)
            except BaseException:
                self._requeue(taken)
                raise
        refused = _refusal(results)
        if refused is not None:
            # Redis refused a write (at `maxmemory`, read-only, ...): what it did not take
            # goes out again, as after a lost connection, never leaving a gap for a reader.
            # Events it did take are refused as not above the newest then, and skipped.
            self._requeue(taken)
            raise refused
        for log_ in dirty:  # written to its end: Redis knows it as this replica does
            if log_.closed and log_ not in self._dirty:
                self._live.pop(log_.stream_id, None)
        # The last 3 replies per checked log are (SET alive, EXISTS cancel, readers).
        start = len(results) - 3 * len(checked)
        for i, log_ in enumerate(checked):
            was_alive, cancelled, readers = results[start + 3 * i : start + 3 * i + 3]
            if was_alive is None:
                # The liveness key this replica keeps set is gone: Redis restarted empty
                # (or was flushed). What this replica keeps of the stream goes again with
                # the next batch, so a resume from before the loss finds its events.
                log_.unsaved = True
                self.dirty(log_)
            log_.readers_elsewhere = readers if isinstance(readers, int) else 0
            if cancelled == 1:
                _cancel(log_)

    def _requeue(self, taken: list[_Taken]) -> None:
        """A batch that did not reach Redis goes out again first, in order (never a gap);
        what the log itself no longer keeps (over max_buffer_bytes) is not kept for it."""
        for log_, queued, queued_from, final, origin_sent, trimmed, unsaved in taken:
            gone = min(max(log_.base + 1 - queued_from, 0), len(queued))
            log_.queued = queued[gone:] + log_.queued
            log_.queued_from = queued_from + gone
            log_.final_queued = final or log_.final_queued
            log_.origin_sent = origin_sent
            log_.trimmed = trimmed
            log_.unsaved = unsaved or log_.unsaved
            if log_.closed:
                self._live[log_.stream_id] = log_
            self._dirty.add(log_)

    def _queue_log(self, pipe: Any, log_: _RedisLog) -> None:
        events, meta, alive, _ = keys(log_.stream_id)
        if log_.unsaved:
            self._queue_whole(pipe, log_)
        queued, log_.queued = log_.queued, []
        first, log_.queued_from = log_.queued_from, log_.queued_from + len(queued)
        final, log_.final_queued = log_.final_queued, False
        if log_.origin and not log_.origin_sent:
            pipe.hset(meta, "origin", log_.origin)
            log_.origin_sent = True
        end = len(queued) - 1
        for i, event in enumerate(queued):
            fields = {"e": event, "f": b"1"} if final and i == end else {"e": event}
            pipe.xadd(events, fields, id=f"0-{first + i}")
        if final:  # the last event sent is the final one (or the newest entry, if none is)
            pipe.hset(meta, "final", first + end if queued else log_.last)
        if log_.base > log_.trimmed:  # over max_buffer_bytes: the oldest events go
            pipe.xtrim(events, minid=f"0-{log_.base + 1}", approximate=False)
            log_.trimmed = log_.base
        # Cheap, and heals a Redis that restarted empty.
        pipe.hset(meta, mapping={"owner": log_.owner, "kind": log_.kind})
        pipe.pexpire(events, self._ttl_ms)
        pipe.pexpire(meta, self._ttl_ms)
        if log_.closed:
            pipe.delete(alive)  # let go of here once written (`_flush`), not before

    def _queue_whole(self, pipe: Any, log_: _RedisLog) -> None:
        """Redis lost the stream: every event kept here goes again, ahead of those queued.

        They are written under another key, which then replaces the events' key in one
        step (`RENAME`): a reader never sees the stream emptied, and events written since
        Redis came back (newer than those rewritten) are replaced in order, never
        refused as older than the newest entry. Once per loss, not per event."""
        log_.unsaved = False
        events, meta, _, _ = keys(log_.stream_id)
        if log_.final and not log_.final_queued:
            pipe.hset(meta, "final", log_.last)
        else:  # a reader elsewhere that took it for lost while Redis was away was wrong
            pipe.hdel(meta, "final")
        sent = log_.queued_from - 1  # events before those queued were sent already
        kept = list(log_.events)[: max(sent - log_.base, 0)]
        if kept:
            healing = events + ":healing"
            pipe.delete(healing)
            final = log_.final and not log_.final_queued and sent == log_.last
            end = len(kept) - 1
            for i, event in enumerate(kept):
                fields = {"e": event, "f": b"1"} if final and i == end else {"e": event}
                pipe.xadd(healing, fields, id=f"0-{log_.base + 1 + i}")
            pipe.rename(healing, events)
        log_.trimmed = log_.base
        log_.origin_sent = False
        for chat in log_.chats:
            pipe.set(chat, log_.stream_id, px=self._ttl_ms)

    # ------------------------------------------------------------------ reader side

    async def lookup(self, stream_id: str) -> StreamInfo | None:
        # Produced here and over, its end maybe not written yet (batches go a few ms apart,
        # or Redis is failing): its end is known here exactly, so a cancel is told nothing
        # is live (404) and a resume from its final event is over (204), even when the
        # store cannot say. What is left to read is read from the store as ever.
        kept = self._live.get(stream_id)
        over_here = kept if kept is not None and kept.final else None
        events, meta, alive, _ = keys(stream_id)
        try:
            async with self._redis.pipeline(transaction=False) as pipe:
                pipe.hgetall(meta)
                pipe.xrevrange(events, count=1)
                pipe.xrange(events, count=1)
                pipe.exists(alive)
                fields, newest, oldest, producing = await pipe.execute()
        except (RedisError, OSError, TimeoutError) as exc:
            if over_here is not None:
                return over_here.info()
            raise StoreError(f"redis: {type(exc).__name__}") from exc
        owner = fields.get(b"owner")
        if owner is None:
            return None if over_here is None else over_here.info()
        last = _number(newest[0][0]) if newest else 0
        first = _number(oldest[0][0]) if oldest else last + 1
        final = b"final" in fields and int(fields[b"final"]) <= last
        origin = fields.get(b"origin", b"").decode()
        kind = fields.get(b"kind", b"").decode()  # none from a replica that kept none
        if over_here is not None:  # its last events are on their way to Redis
            return StreamInfo(owner.decode(), over_here.last, True, first, origin, False, kind)
        lost = final and bool(newest) and b"l" in newest[0][1]  # sealed by a reader (`seal`)
        return StreamInfo(owner.decode(), last, final, first, origin, producing == 1, kind, lost)

    async def join(self, stream_id: str, reader: str, limit: int) -> bool:
        try:
            joined = await self._join(
                keys=[readers_key(stream_id)], args=[reader, self._alive_ms, limit]
            )
        except (RedisError, OSError, TimeoutError) as exc:
            raise StoreError(f"redis: {type(exc).__name__}") from exc
        return bool(joined)

    async def leave(self, stream_id: str, reader: str) -> None:
        with contextlib.suppress(RedisError, OSError, TimeoutError):
            await self._redis.zrem(readers_key(stream_id), reader)

    async def read(
        self, stream_id: str, after: int, quiet: float = POLL_SECONDS
    ) -> AsyncIterator[list[bytes]]:
        events, meta, alive, _ = keys(stream_id)
        quiet_since: float | None = None
        loop = asyncio.get_running_loop()
        taken = loop.time()  # when the reader last took a batch (its quiet time starts)
        while True:
            # Blocks no longer than the reader's heartbeat is due (never 0: that is forever).
            left = int((quiet - (loop.time() - taken)) * 1000)
            try:
                reply: Any = await self._reader.xread(
                    {events: f"0-{after}"}, count=512, block=max(1, min(self._block_ms, left))
                )
            except (RedisError, OSError, TimeoutError) as exc:
                raise StoreError(f"redis: {type(exc).__name__}") from exc
            honour_cancel()  # a shutdown's stop, if redis-py swallowed it
            entries: list[tuple[bytes, dict[bytes, bytes]]] = list(reply[0][1]) if reply else []
            if entries:
                if _number(entries[0][0]) != after + 1 and b"l" not in entries[0][1]:
                    # Trimmed (over max_buffer_bytes) before this reader got to them: a
                    # reader never skips events, its read ends instead. Not so before a
                    # dead producer's final event (`seal`, field `l`): the events missing
                    # before it were never written and never will be, so a reader whose
                    # last event is among them gets that end, never a read that ends
                    # with nothing (its client would come back for ever).
                    raise FellBehind(stream_id)
                quiet_since = None
                after = _number(entries[-1][0])
                yield [fields[b"e"] for _, fields in entries]
                taken = loop.time()
                if b"f" in entries[-1][1]:
                    return
                continue
            try:
                producing = await self._redis.exists(alive)
                final = await self._redis.hget(meta, "final")
            except (RedisError, OSError, TimeoutError) as exc:
                raise StoreError(f"redis: {type(exc).__name__}") from exc
            honour_cancel()
            if final is not None and int(final) <= after:
                return
            if producing:
                quiet_since = None
                if loop.time() - taken >= quiet:
                    yield []  # quiet for `quiet` seconds: the reader's heartbeat is due
                    taken = loop.time()
                continue
            # No producer refreshes the key: allow one more read for a batch in flight.
            if quiet_since is None:
                quiet_since = loop.time()
            elif loop.time() - quiet_since > self._block_ms / 1000:
                raise StreamLost(stream_id)

    async def kept(self, stream_id: str, upto: int) -> list[bytes]:
        events = keys(stream_id)[0]
        try:
            entries: Any = await self._redis.xrange(events, "-", f"0-{upto}")
        except (RedisError, OSError, TimeoutError) as exc:
            raise StoreError(f"redis: {type(exc).__name__}") from exc
        return [fields[b"e"] for _, fields in entries]

    async def keep(self, stream_id: str, reader: str) -> None:
        """Keep `reader` counted about once a second until cancelled, whatever the reader
        is doing (a slow client can hold its writes for longer than a count lapses)."""
        while True:
            await asyncio.sleep(self._refresh)
            with contextlib.suppress(RedisError, OSError, TimeoutError):
                await self._join(
                    keys=[readers_key(stream_id)], args=[reader, self._alive_ms, 1 << 30]
                )
            honour_cancel()  # else a lost cancel would keep the reader counted for ever

    async def seal(self, stream_id: str, n: int, event: bytes) -> None:
        """Append a lost stream's final event (ignored if the producer got further).

        Marked `l` (lost): `n` may be past events the dead producer sent its own client
        but never wrote, and a reader whose last event is one of those reads this end."""
        events, meta, _, _ = keys(stream_id)
        with contextlib.suppress(RedisError, OSError, TimeoutError):
            # XADD refuses an id not above the newest: a producer that got further wins.
            await self._redis.xadd(events, {"e": event, "f": b"1", "l": b"1"}, id=f"0-{n}")
            await self._redis.hset(meta, "final", n)


# A batch taken from a log: the log, its events, the first one's number, whether the
# stream's end was queued, and whether the origin and trimming were sent (for a retry).
_Taken = tuple[_RedisLog, list[bytes], int, bool, bool, int, bool]


def _refusal(results: list[Any]) -> ResponseError | None:
    """The first write of a batch Redis refused, if any; an event it holds already (sent
    again after an outage) is refused as not above the newest entry, which is no failure."""
    for result in results:
        if isinstance(result, ResponseError) and "equal or smaller" not in str(result):
            return result
    return None


def _cancel(log_: _RedisLog) -> None:
    """Run a log's cancel callback: one that raises is logged by its class and stays this
    stream's problem, never the listener's or the writer's (every stream's)."""
    if log_.on_cancel is None:
        return
    try:
        log_.on_cancel()
    except Exception as exc:  # one stream's failure ends no loop
        log.warning("resume stream cancel failed", extra={"error": _reason(exc)})


def _reason(exc: BaseException) -> str:
    """An error's type, and the code Redis gave a refusal (`OOM`, `READONLY`): bounded."""
    if isinstance(exc, ResponseError):
        return f"{type(exc).__name__}: {str(exc).partition(' ')[0][:32]}"
    return type(exc).__name__


def _number(entry_id: bytes) -> int:
    return int(entry_id.partition(b"-")[2])
