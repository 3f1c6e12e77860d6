"""The Redis resume store: outages are errors not hangs, refused batches sent again in order,
readers counted across replicas, and a close or a stop that a swallowed cancel does not hold up."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable

import pytest
from redis.asyncio import Redis

from sidecar.stream.redis_store import CANCELS, RedisResumeStore
from sidecar.stream.store import StoreError
from tests.support.redis_server import RedisServer
from tests.support.stream_logs import event, fill, read_all, settled
from tests.support.waiting import eventually, holds


async def test_a_redis_outage_is_a_store_error_not_a_hang(redis_server: RedisServer) -> None:
    store = RedisResumeStore(redis_server.url, ttl=60, max_buffer_bytes=1 << 20, timeout=0.5)
    await store.start()
    try:
        await redis_server.kill()
        with pytest.raises(StoreError):
            await store.create("stream-ffffffffffffffff", "o")
        with pytest.raises(StoreError):
            await store.lookup("stream-ffffffffffffffff")
    finally:
        await store.close()


async def test_pooled_connections_dead_after_a_redis_restart_are_retried_once(
    redis_server: RedisServer,
) -> None:
    """After a restart every pooled connection is dead: the first use of each is retried
    on a fresh one instead of failing the stream's create or a reconnect's lookup."""
    store = RedisResumeStore(redis_server.url, ttl=60, max_buffer_bytes=1 << 20, timeout=0.5)
    await store.start()
    try:
        await asyncio.gather(*(store.lookup(f"stream-{n:016x}") for n in range(8)))  # a pool
        await redis_server.kill()
        await redis_server.start()
        logs = await asyncio.gather(*(store.create(f"stream-{n:016x}", "o") for n in range(8)))
        assert len(logs) == 8
        assert await store.lookup("stream-0000000000000000") is not None
    finally:
        await store.close()


async def test_readers_are_counted_across_replicas_and_seen_by_the_producer(
    redis_server: RedisServer,
) -> None:
    """`join` bounds a stream's readers over every replica sharing Redis (a reader that
    leaves frees its place, one that vanishes lapses); the producer's log learns how many
    read it elsewhere."""
    kinds = dict(ttl=60, max_buffer_bytes=1 << 20, alive_seconds=0.6)
    stream = "stream-1111111111111111"
    producer = RedisResumeStore(redis_server.url, **kinds)  # type: ignore[arg-type]
    one, two = (RedisResumeStore(redis_server.url, **kinds) for _ in range(2))  # type: ignore[arg-type]
    for store in (producer, one, two):
        await store.start()
    try:
        log = await producer.create(stream, "o")
        assert await one.join(stream, "r1", 2)
        assert await two.join(stream, "r2", 2)
        assert not await two.join(stream, "r3", 2)  # two read it already, on two replicas
        assert await one.join(stream, "r1", 2)  # already counted: refreshed, not refused
        await eventually(lambda: holds(log.readers_elsewhere == 2))
        await one.leave(stream, "r1")
        assert await two.join(stream, "r3", 2)
        await asyncio.sleep(0.8)  # neither refreshed: both lapse
        await eventually(lambda: holds(log.readers_elsewhere == 0))
        assert await one.join(stream, "r4", 1)
        keeping = asyncio.create_task(one.keep(stream, "r4"))  # a reader busy writing
        await asyncio.sleep(1.0)  # longer than a lapse: still counted, kept apart from reads
        assert not await two.join(stream, "r5", 1)
        await eventually(lambda: holds(log.readers_elsewhere == 1))
        keeping.cancel()
        # Redis gone: no reader elsewhere can be counted on (an old count would hold an
        # abandoned stream open for the outage).
        await redis_server.kill()
        await eventually(lambda: holds(log.readers_elsewhere == 0))
    finally:
        for store in (producer, one, two):
            await store.close()


async def test_a_cancel_asked_on_another_replica_reaches_the_producer_before_its_refresh(
    redis_server: RedisServer,
) -> None:
    """`request_cancel` is heard by the producing replica at once (pub/sub), not at its
    next liveness refresh: here refreshes are 100 s apart, so only the message can do it.
    A stream not produced there, or over, is not cancelled."""
    kinds = dict(ttl=60, max_buffer_bytes=1 << 20, alive_seconds=300)
    producer = RedisResumeStore(redis_server.url, **kinds)  # type: ignore[arg-type]
    other = RedisResumeStore(redis_server.url, **kinds)  # type: ignore[arg-type]
    for store in (producer, other):
        await store.start()
    try:
        cancelled: list[str] = []
        live = await producer.create("stream-0000000000000001", "o")
        over = await producer.create("stream-0000000000000002", "o")
        live.on_cancel = lambda: cancelled.append(live.stream_id)
        over.on_cancel = lambda: cancelled.append(over.stream_id)
        over.append(event(1))
        over.finish()
        await settled(producer, over.stream_id, 1)
        assert await other.request_cancel(over.stream_id)  # still alive in Redis: asked
        assert await other.request_cancel(live.stream_id)
        await eventually(lambda: holds(cancelled == [live.stream_id]))
    finally:
        for store in (producer, other):
            await store.close()


async def test_a_reader_whose_last_event_the_dead_producer_never_wrote_reads_the_lost_end(
    redis_server: RedisServer,
) -> None:
    """A producer that died served its own client events it never wrote (2 of 5 here);
    that client's reader sealed the stream with its final event after them (`seal`, as
    number 6). A reader whose last event is one of the unwritten ones (3) gets that end,
    not a read that ends with nothing (its client would come back for it for ever)."""
    producer = RedisResumeStore(redis_server.url, ttl=60, max_buffer_bytes=1 << 20)
    reader = RedisResumeStore(redis_server.url, ttl=60, max_buffer_bytes=1 << 20)
    for store in (producer, reader):
        await store.start()
    try:
        log = await producer.create("stream-0000000000000003", "o")
        fill(log, 2)
        await settled(reader, log.stream_id, 2)
        lost = b'id: s:006\ndata: {"error":{"type":"stream_lost"}}\n\n'
        await reader.seal(log.stream_id, 6, lost)
        assert await read_all(reader, log.stream_id, 3) == [lost]
        assert await read_all(reader, log.stream_id, 1) == [event(2), lost]
    finally:
        for store in (producer, reader):
            await store.close()


async def test_a_batch_redis_refused_is_sent_again_in_order(redis_server: RedisServer) -> None:
    store = RedisResumeStore(redis_server.url, ttl=60, max_buffer_bytes=1 << 20, timeout=0.3,
                             alive_seconds=0.6)  # fmt: skip
    await store.start()
    try:
        log = await store.create("stream-gggggggggggggggg", "o", kind="ui")
        fill(log, 3)
        await settled(store, "stream-gggggggggggggggg", 3)
        await redis_server.kill()
        fill(log, 3, start=4)  # queued while Redis is down
        await asyncio.sleep(0.5)  # the writer tried and failed
        await redis_server.start()  # back, but empty (no persistence)
        log.append(event(7))
        log.finish()
        log.close()
        await settled(store, "stream-gggggggggggggggg", 7)
        info = await store.lookup("stream-gggggggggggggggg")
        assert info is not None
        assert info.owner == "o"  # the stream's meta is written again with every batch
        assert info.kind == "ui"  # the route kind with it: still read only on a ui route
        assert info.first == 4  # 1..3 were lost with Redis; 4..7 arrived, none missing
        assert await read_all(store, "stream-gggggggggggggggg", 3) == [
            event(n) for n in range(4, 8)
        ]
    finally:
        await store.close()


async def test_a_live_stream_redis_lost_is_written_again_whole(redis_server: RedisServer) -> None:
    """Redis emptied (a restart or a flush) under a live stream: the producer's next
    liveness refresh finds its key gone and writes every event it keeps again, with the
    chat naming the stream, ahead of and in order with those written since."""
    store = RedisResumeStore(redis_server.url, ttl=60, max_buffer_bytes=1 << 20, timeout=0.3,
                             alive_seconds=0.6)  # fmt: skip
    await store.start()
    client = Redis.from_url(redis_server.url)
    stream_id = "stream-kkkkkkkkkkkkkkkk"
    try:
        log = await store.create(stream_id, "o", kind="ui")
        await store.bind_chat("o", "chat-1", stream_id)
        fill(log, 3)
        await settled(store, stream_id, 3)
        await client.flushall()
        fill(log, 2, start=4)  # written on top of the emptied Redis

        async def whole() -> bool:
            info = await store.lookup(stream_id)
            return info is not None and info.first == 1 and info.last == 5

        await eventually(whole)
        assert await store.chat_stream("o", "chat-1") == stream_id
        log.append(event(6))
        log.finish()
        log.close()
        assert await read_all(store, stream_id, 0) == [event(n) for n in range(1, 7)]
    finally:
        await client.aclose()
        await store.close()


async def test_a_batch_refused_while_the_log_dropped_its_oldest_resends_what_is_kept(
    redis_server: RedisServer,
) -> None:
    """Over `max_buffer_bytes` while Redis is down: the retry sends the events the log still
    keeps, in order, and the stream's end with them."""
    size = len(event(1))
    store = RedisResumeStore(redis_server.url, ttl=60, max_buffer_bytes=size * 4, timeout=0.3,
                             alive_seconds=0.6)  # fmt: skip
    await store.start()
    try:
        log = await store.create("stream-hhhhhhhhhhhhhhhh", "o")
        fill(log, 3)
        await settled(store, "stream-hhhhhhhhhhhhhhhh", 3)
        await redis_server.kill()
        fill(log, 6, start=4)  # queued while Redis is down; the log keeps 6..9
        log.finish()
        assert store.used_bytes == log.size == size * 4  # what this replica holds
        await asyncio.sleep(0.5)  # the writer tried and failed
        await redis_server.start()  # back, but empty
        log.close()
        assert store.used_bytes == 0
        await settled(store, "stream-hhhhhhhhhhhhhhhh", 9)
        info = await store.lookup("stream-hhhhhhhhhhhhhhhh")
        assert info is not None
        assert (info.first, info.last, info.final) == (6, 9, True)
        assert await read_all(store, "stream-hhhhhhhhhhhhhhhh", 5) == [
            event(n) for n in range(6, 10)
        ]
    finally:
        await store.close()


async def test_close_ends_and_flushes_when_the_writer_loses_its_cancel(
    redis_server: RedisServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = RedisResumeStore(redis_server.url, ttl=60, max_buffer_bytes=1 << 20, timeout=0.5)
    await store.start()
    real_flush = store._flush
    in_flush = asyncio.Event()

    async def flush_losing_a_cancel(*, refresh: bool = False) -> None:
        # As redis-py's `asyncio.wait_for` around a socket write does on Python 3.11: a
        # cancel landing as the write completes is swallowed and the flush goes on.
        in_flush.set()
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.sleep(0.3)
        await real_flush(refresh=refresh)

    monkeypatch.setattr(store, "_flush", flush_losing_a_cancel)
    log = await store.create("stream-hhhhhhhhhhhhhhhh", "o")
    fill(log, 3)
    log.finish()
    log.close()
    await asyncio.wait_for(in_flush.wait(), 10)  # the writer is mid-flush
    closing = asyncio.ensure_future(store.close())
    done, _ = await asyncio.wait([closing], timeout=20)
    writer = store._writer
    for _ in range(5 if not done else 0):  # let a broken close's tasks end with the test
        closing.cancel()
        if writer is not None:
            writer.cancel()
        await asyncio.sleep(0.4)
    assert done, "close waited for a writer that lost its cancel"
    assert writer is not None
    assert writer.done()  # it ended: no task left running after the store closed
    reader = RedisResumeStore(redis_server.url, ttl=60, max_buffer_bytes=1 << 20)
    await reader.start()
    try:
        assert await read_all(reader, "stream-hhhhhhhhhhhhhhhh", 0) == [event(n) for n in (1, 2, 3)]
    finally:
        await reader.close()


async def test_a_reader_and_its_keeper_stop_when_told_though_redis_py_swallowed_the_cancel(
    redis_server: RedisServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A shutdown stops a store reader by cancelling it; on Python 3.11 redis-py's
    `asyncio.wait_for` around a socket write can swallow that cancel. The read and the
    task keeping its reader counted still end: else the reader never gets its final
    event, and the stream keeps a reader that left."""
    stream = "stream-2222222222222222"
    producer = RedisResumeStore(redis_server.url, ttl=60, max_buffer_bytes=1 << 20)
    reader = RedisResumeStore(redis_server.url, ttl=60, max_buffer_bytes=1 << 20, alive_seconds=0.6)
    for store in (producer, reader):
        await store.start()
    calls = {"xread": 0, "join": 0}

    def swallowing(name: str, real: Callable[..., Awaitable[object]]) -> Callable[..., object]:
        async def call(*args: object, **kwargs: object) -> object:
            calls[name] += 1
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.sleep(0.05)  # the cancel lands here, and is lost
            return await real(*args, **kwargs)

        return call

    monkeypatch.setattr(reader._reader, "xread", swallowing("xread", reader._reader.xread))
    monkeypatch.setattr(reader, "_join", swallowing("join", reader._join))
    tasks: list[asyncio.Task[None]] = []
    try:
        log = await producer.create(stream, "o")
        fill(log, 2)
        await settled(reader, stream, 2)

        async def read() -> None:
            async for _ in reader.read(stream, 0):
                pass

        tasks += [asyncio.create_task(read()), asyncio.create_task(reader.keep(stream, "r1"))]
        await eventually(lambda: holds(calls["xread"] > 1 and calls["join"] > 0))
        for task in tasks:
            task.cancel()
        await asyncio.wait(tasks, timeout=5)
        assert [task.cancelled() for task in tasks] == [True, True]  # the read, the keeper
    finally:
        for task in tasks:
            task.cancel()
        for store in (producer, reader):
            await store.close()


async def test_a_batch_redis_refuses_at_maxmemory_is_sent_again_without_a_gap(
    redis_server: RedisServer,
) -> None:
    """Redis at `maxmemory` refuses writes (OOM): the refused events are kept and sent again
    once it takes writes, so a reader on another replica never sees a gap."""
    store = RedisResumeStore(redis_server.url, ttl=60, max_buffer_bytes=1 << 20, timeout=0.3,
                             alive_seconds=0.6)  # fmt: skip
    admin = Redis.from_url(redis_server.url)
    await store.start()
    try:
        log = await store.create("stream-iiiiiiiiiiiiiiii", "o")
        fill(log, 3)
        await settled(store, "stream-iiiiiiiiiiiiiiii", 3)
        await admin.config_set("maxmemory", "1")  # noeviction: every write is refused
        fill(log, 3, start=4)
        await eventually(lambda: holds(store.failing))  # the writer's batch was refused
        await admin.config_set("maxmemory", "0")
        log.append(event(7))
        log.finish()
        log.close()
        await settled(store, "stream-iiiiiiiiiiiiiiii", 7)
        assert await read_all(store, "stream-iiiiiiiiiiiiiiii", 0) == [
            event(n) for n in range(1, 8)
        ]
    finally:
        await admin.aclose()
        await store.close()


async def test_a_stalled_redis_is_a_store_error_within_the_timeout_then_recovers(
    redis_server: RedisServer,
) -> None:
    """SIGSTOP: the connection stays open and nothing answers. A call fails within
    `redis_timeout_seconds` (a stream's create waits no longer before it streams without
    resume), and the store answers again once Redis does, with no restart."""
    timeout = 0.25
    store = RedisResumeStore(redis_server.url, ttl=60, max_buffer_bytes=1 << 20, timeout=timeout)
    await store.start()
    try:
        await store.create("stream-jjjjjjjjjjjjjjjj", "o")
        async with redis_server.stalled():
            for call in (
                lambda: store.create("stream-kkkkkkkkkkkkkkkk", "o"),
                lambda: store.lookup("stream-jjjjjjjjjjjjjjjj"),
            ):
                async with asyncio.timeout(timeout * 3):  # the old bound was timeout + 1 s
                    with pytest.raises(StoreError):
                        await call()
        assert await store.lookup("stream-jjjjjjjjjjjjjjjj") is not None
    finally:
        await store.close()


async def test_a_quiet_stream_is_read_as_quiet_rounds_within_a_short_timeout(
    redis_server: RedisServer,
) -> None:
    """A read blocks for less than the socket timeout: a live stream with nothing new is a
    quiet round (the reader sends its heartbeat), never a store error."""
    store = RedisResumeStore(redis_server.url, ttl=60, max_buffer_bytes=1 << 20, timeout=0.2)
    await store.start()
    try:
        log = await store.create("stream-llllllllllllllll", "o")
        fill(log, 1)
        await settled(store, "stream-llllllllllllllll", 1)
        batches: list[list[bytes]] = []
        async with asyncio.timeout(10):
            async for batch in store.read("stream-llllllllllllllll", 0):
                batches.append(batch)
                if len(batches) == 4:
                    break
        assert batches == [[event(1)], [], [], []]
    finally:
        await store.close()


async def _published_cancel_reaches(url: str, store: RedisResumeStore, stream_id: str) -> None:
    """A cancel published for `stream_id` (no cancel key: only the listener can hear it)
    reaches its producer in `store`."""
    cancelled: list[str] = []
    log = await store.create(stream_id, "o")
    log.on_cancel = lambda: cancelled.append(stream_id)
    publisher = Redis.from_url(url)
    try:

        async def published() -> bool:
            await publisher.publish(CANCELS, stream_id.encode())
            return bool(cancelled)

        await eventually(published)
    finally:
        await publisher.aclose()
        log.close()


async def test_the_cancel_listener_listens_again_after_a_redis_restart(
    redis_server: RedisServer,
) -> None:
    """Redis restarts: the listener's connection drops, and it subscribes again once Redis
    is back, on its own task (never a crash, never a second listener)."""
    store = RedisResumeStore(redis_server.url, ttl=60, max_buffer_bytes=1 << 20, timeout=0.3,
                             alive_seconds=0.6)  # fmt: skip
    await store.start()
    try:
        await _published_cancel_reaches(redis_server.url, store, "stream-5555555555555551")
        listener = store.listener
        await redis_server.kill()
        await redis_server.start()
        await _published_cancel_reaches(redis_server.url, store, "stream-5555555555555552")
        assert store.listener is listener
        assert not listener.done()
    finally:
        await store.close()
    assert store.listener.done()


async def test_a_producer_whose_cancel_fails_does_not_stop_the_listener(
    redis_server: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    """A stream's cancel that raises is logged (its class only) and the next cancel is
    still heard: the listener outlives whatever one message does."""
    store = RedisResumeStore(redis_server.url, ttl=60, max_buffer_bytes=1 << 20, timeout=0.3,
                             alive_seconds=0.6)  # fmt: skip
    await store.start()
    try:
        broken = await store.create("stream-6666666666666661", "o")

        def fails() -> None:
            raise RuntimeError("a producer's own bug \xff")

        broken.on_cancel = fails
        async with Redis.from_url(redis_server.url) as publisher:
            await publisher.publish(CANCELS, broken.stream_id.encode())
        await _published_cancel_reaches(redis_server.url, store, "stream-6666666666666662")
        assert not store.listener.done()
    finally:
        await store.close()
    assert "a producer's own bug" not in caplog.text


async def test_a_stop_with_redis_down_ends_the_listener(redis_server: RedisServer) -> None:
    """Redis is gone when the process stops: the close still ends the listener (and the
    writer) instead of leaving them retrying behind a closed store."""
    store = RedisResumeStore(redis_server.url, ttl=60, max_buffer_bytes=1 << 20, timeout=0.3,
                             alive_seconds=0.6)  # fmt: skip
    await store.start()
    await _published_cancel_reaches(redis_server.url, store, "stream-7777777777777771")
    await redis_server.kill()
    await store.close()
    assert store.listener.done()


async def test_a_stop_with_redis_stalled_ends_the_listener(redis_server: RedisServer) -> None:
    """Redis stops answering (its connections stay open) when the process stops: the
    close ends the listener within its bound all the same."""
    store = RedisResumeStore(redis_server.url, ttl=60, max_buffer_bytes=1 << 20, timeout=0.3,
                             alive_seconds=0.6)  # fmt: skip
    await store.start()
    await _published_cancel_reaches(redis_server.url, store, "stream-8888888888888881")
    async with redis_server.stalled():
        await store.close()
        assert store.listener.done()


async def test_a_redis_user_refused_the_cancel_channel_still_cancels_by_the_key(
    redis_server: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    """A Redis ACL user with no pub/sub channel (Redis 7's default for a new user) still
    cancels a stream produced elsewhere: the refused publish is a warning, not a failed
    `DELETE`, and the cancel key reaches the producer at its refresh. Each replica's
    listener says once that it is refused, not at every retry."""
    admin = Redis.from_url(redis_server.url)
    await admin.acl_setuser(
        "sidecar", enabled=True, passwords=["+pw"], keys=["*"], categories=["+@all"],
        reset_channels=True,
    )  # fmt: skip
    await admin.aclose()
    url = f"redis://sidecar:pw@127.0.0.1:{redis_server.port}/0"
    kinds = dict(ttl=60, max_buffer_bytes=1 << 20, alive_seconds=0.6)
    producer = RedisResumeStore(url, **kinds)  # type: ignore[arg-type]
    other = RedisResumeStore(url, **kinds)  # type: ignore[arg-type]
    for store in (producer, other):
        await store.start()

    def refusals() -> int:
        return caplog.text.count("resume cancel listener refused")

    try:
        await eventually(lambda: holds(refusals() == 2))
        cancelled: list[str] = []
        live = await producer.create("stream-0000000000000001", "o")
        live.on_cancel = lambda: cancelled.append(live.stream_id)
        assert await other.request_cancel(live.stream_id)
        await eventually(lambda: holds(cancelled == [live.stream_id]))
        assert "resume cancel not published" in caplog.text
        assert refusals() == 2
    finally:
        for store in (producer, other):
            await store.close()
