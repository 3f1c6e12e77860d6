"""The resume stores: one contract for the memory store and the Redis store (a real
redis-server), and the memory store's bounds."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sidecar.stream.redis_store import RedisResumeStore
from sidecar.stream.store import (
    BeyondEnd,
    FellBehind,
    ResumeStore,
    StoreError,
    StreamLog,
    StreamLost,
)
from tests.support.redis_server import RedisServer, running_redis
from tests.support.stream_logs import event, fill, read_all, settled
from tests.support.waiting import eventually

Factory = Callable[..., contextlib.AbstractAsyncContextManager[ResumeStore]]


@pytest.fixture(params=["memory", "redis"])
async def stores(request: pytest.FixtureRequest) -> AsyncIterator[Factory]:
    """A factory of started stores of one kind: Redis ones share one server, like replicas;
    the memory store is one per process, so every call gives the same one."""
    async with contextlib.AsyncExitStack() as stack:
        redis = (
            await stack.enter_async_context(running_redis()) if request.param == "redis" else None
        )
        yield _factory(redis)


def _factory(redis: RedisServer | None) -> Factory:
    memory: dict[tuple[float, int], ResumeStore] = {}

    @contextlib.asynccontextmanager
    async def make(**settings: float) -> AsyncIterator[ResumeStore]:
        ttl = settings.get("ttl", 60.0)
        max_bytes = int(settings.get("max_buffer_bytes", 1 << 20))
        store: ResumeStore
        if redis is None:
            shared = memory.get((ttl, max_bytes))
            if shared is None:
                shared = ResumeStore(ttl=ttl, max_buffer_bytes=max_bytes, max_total_bytes=1 << 30)
                memory[(ttl, max_bytes)] = shared
            yield shared
            return
        else:
            store = RedisResumeStore(
                redis.url, ttl=ttl, max_buffer_bytes=max_bytes,
                alive_seconds=settings.get("alive_seconds", 1.5),
            )  # fmt: skip
        await store.start()
        try:
            yield store
        finally:
            await store.close()

    return make


async def test_a_finished_stream_reads_back_from_any_point(stores: Factory) -> None:
    async with stores() as store:
        log = await store.create("stream-aaaaaaaaaaaaaaaa", "owner-1")
        fill(log, 10)
        log.finish()
        log.close()
        await settled(store, "stream-aaaaaaaaaaaaaaaa", 10)
        info = await store.lookup("stream-aaaaaaaaaaaaaaaa")
        assert info is not None
        assert (info.owner, info.last, info.final, info.first) == ("owner-1", 10, True, 1)
        assert await read_all(store, "stream-aaaaaaaaaaaaaaaa", 0) == [
            event(n) for n in range(1, 11)
        ]
        assert await read_all(store, "stream-aaaaaaaaaaaaaaaa", 7) == [
            event(8),
            event(9),
            event(10),
        ]
        assert await read_all(store, "stream-aaaaaaaaaaaaaaaa", 10) == []


async def _at_least(value: Awaitable[int], minimum: int) -> bool:
    return await value >= minimum


async def test_unknown_streams_are_none(stores: Factory) -> None:
    async with stores() as store:
        assert await store.lookup("never-created-xxxxxxxx") is None


async def test_a_reader_gets_the_live_tail_until_the_final_event(stores: Factory) -> None:
    async with stores() as producer_store, stores() as reader_store:
        log = await producer_store.create("stream-bbbbbbbbbbbbbbbb", "o")
        fill(log, 3)
        await settled(reader_store, "stream-bbbbbbbbbbbbbbbb", 3)
        reading = asyncio.create_task(read_all(reader_store, "stream-bbbbbbbbbbbbbbbb", 1))
        await asyncio.sleep(0.1)
        assert not reading.done()  # waits for more: the stream is not final
        fill(log, 3, start=4)
        await asyncio.sleep(0.05)
        log.append(event(7))
        log.finish()
        log.close()
        assert await reading == [event(n) for n in range(2, 8)]


async def test_each_stream_is_bounded_and_drops_its_oldest_events(stores: Factory) -> None:
    size = len(event(1))
    async with stores(max_buffer_bytes=size * 5) as store:
        log = await store.create("stream-cccccccccccccccc", "o")
        fill(log, 12)
        log.finish()
        log.close()
        await settled(store, "stream-cccccccccccccccc", 12)

        async def first() -> int:
            info = await store.lookup("stream-cccccccccccccccc")
            assert info is not None
            return info.first

        await eventually(lambda: _at_least(first(), 8))
        assert await first() == 8  # 5 events fit: 8..12
        assert log.since(2) is None  # the producer's own copy is bounded the same way
        with pytest.raises(BeyondEnd):
            log.since(13)
        assert await read_all(store, "stream-cccccccccccccccc", 9) == [
            event(n) for n in (10, 11, 12)
        ]


async def test_kept_gives_the_events_still_kept_up_to_a_number(stores: Factory) -> None:
    """What a reader ending a stream itself reads once: the kept events up to its last."""
    size = len(event(1))
    async with stores(max_buffer_bytes=size * 5) as store:
        log = await store.create("stream-kkkkkkkkkkkkkkkk", "o")
        fill(log, 4)
        await settled(store, "stream-kkkkkkkkkkkkkkkk", 4)
        assert await store.kept("stream-kkkkkkkkkkkkkkkk", 3) == [event(n) for n in (1, 2, 3)]
        assert await store.kept("stream-kkkkkkkkkkkkkkkk", 9) == [event(n) for n in range(1, 5)]
        fill(log, 6, start=5)  # 1..10: only 6..10 fit
        log.finish()
        log.close()
        await settled(store, "stream-kkkkkkkkkkkkkkkk", 10)

        async def oldest() -> bool:
            return (await store.kept("stream-kkkkkkkkkkkkkkkk", 10))[0] == event(6)

        await eventually(oldest)
        assert await store.kept("stream-kkkkkkkkkkkkkkkk", 8) == [event(n) for n in (6, 7, 8)]
        assert await store.kept("stream-kkkkkkkkkkkkkkkk", 5) == []
        assert await store.kept("never-created-xxxxxxxx", 5) == []


async def test_a_reader_left_behind_by_the_buffer_never_skips_events(stores: Factory) -> None:
    """Events a reader had not read yet leave a full buffer: its read ends (`FellBehind`)
    instead of going on past a gap."""
    size = len(event(1))
    async with (
        stores(max_buffer_bytes=size * 5) as producer_store,
        stores(max_buffer_bytes=size * 5) as reader_store,
    ):
        log = await producer_store.create("stream-llllllllllllllll", "o")
        fill(log, 3)
        await settled(reader_store, "stream-llllllllllllllll", 3)
        got: list[bytes] = []
        reading = reader_store.read("stream-llllllllllllllll", 1)
        got.extend(await anext(reading))  # 2 and 3; then this reader lags
        fill(log, 12, start=4)  # 4..15: only 11..15 are kept
        log.finish()
        log.close()
        await settled(reader_store, "stream-llllllllllllllll", 15)

        async def trimmed() -> bool:
            info = await reader_store.lookup("stream-llllllllllllllll")
            return info is not None and info.first == 11

        await eventually(trimmed)
        with pytest.raises(FellBehind):
            async for batch in reading:
                got.extend(batch)
    assert got == [event(2), event(3)]


async def test_a_stream_keeps_the_route_kind_it_was_started_on(stores: Factory) -> None:
    async with stores() as producer_store, stores() as reader_store:
        log = await producer_store.create("stream-kkkkkkkkkkkkkkkk", "o", kind="anthropic")
        fill(log, 1)
        await settled(reader_store, "stream-kkkkkkkkkkkkkkkk", 1)
        info = await reader_store.lookup("stream-kkkkkkkkkkkkkkkk")
        log.finish()
        log.close()
    assert info is not None
    assert info.kind == "anthropic"
    assert info.framed_for("anthropic")
    assert not info.framed_for("prompt")
    assert StreamLog("S", "o", 1).info().framed_for("ui")  # kept with no kind: any route


async def test_streams_expire_after_the_ttl(stores: Factory) -> None:
    async with stores(ttl=0.3) as store:
        log = await store.create("stream-dddddddddddddddd", "o")
        fill(log, 2)
        log.finish()
        log.close()
        await settled(store, "stream-dddddddddddddddd", 2)
        await asyncio.sleep(0.5)
        async with stores(ttl=0.3) as other:  # a fresh store (or replica) sees the expiry too
            assert await other.lookup("stream-dddddddddddddddd") is None
        assert await store.lookup("stream-dddddddddddddddd") is None


async def test_a_producer_that_stops_without_a_final_event_is_lost(
    stores: Factory,
) -> None:
    async with stores(alive_seconds=0.6) as reader_store:
        async with stores(alive_seconds=0.6) as producer_store:
            log = await producer_store.create("stream-eeeeeeeeeeeeeeee", "o")
            fill(log, 4)
            await settled(reader_store, "stream-eeeeeeeeeeeeeeee", 4)
            if producer_store.name == "memory":
                return  # one process: a memory producer cannot die apart from its readers
            # The producer's store stops refreshing its liveness without finishing the stream
            # (what a SIGKILLed replica looks like from Redis).
            assert isinstance(producer_store, RedisResumeStore)
            await producer_store._redis.aclose()
            writer = producer_store._writer
            assert writer is not None
            writer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await writer
            got: list[bytes] = []
            loop = asyncio.get_running_loop()
            started = loop.time()
            with pytest.raises(StreamLost):
                async with asyncio.timeout(15):
                    async for batch in reader_store.read("stream-eeeeeeeeeeeeeeee", 2):
                        got.extend(batch)
            assert got == [event(3), event(4)]  # the buffered events, then lost
            assert loop.time() - started < 10


async def test_the_memory_store_is_bounded_in_total() -> None:
    size = len(event(1))
    store = ResumeStore(ttl=60, max_buffer_bytes=size * 10, max_total_bytes=size * 25)
    finished = await store.create("finished-aaaaaaaaaaaaaa", "o")
    fill(finished, 10)
    finished.finish()
    live = [await store.create(f"live-{i}-aaaaaaaaaaaaaaa", "o") for i in range(2)]
    for log in live:
        fill(log, 10)
    # Over the total: the finished stream is evicted first, live ones are kept.
    third = await store.create("live-2-aaaaaaaaaaaaaaa", "o")
    assert await store.lookup("finished-aaaaaaaaaaaaaa") is None
    assert await store.lookup("live-0-aaaaaaaaaaaaaaa") is not None
    fill(third, 10)
    with pytest.raises(StoreError):  # live streams alone exceed it: no new buffers
        await store.create("live-3-aaaaaaaaaaaaaaa", "o")


# One step of a memory store's life: (what, which stream, how many bytes); a stream is
# picked by index among those made so far.
steps = st.lists(
    st.tuples(
        st.sampled_from(["create", "append", "append", "finish"]),
        st.integers(0, 15),
        st.integers(1, 40),
    ),
    max_size=80,
)


@settings(max_examples=200, deadline=None)
@given(steps, st.sampled_from([0.0, 3600.0]), st.integers(20, 300))
def test_the_memory_stores_total_is_the_sum_of_what_its_streams_keep(
    script: list[tuple[str, int, int]], ttl: float, max_total: int
) -> None:
    """The total the budget checks is kept as a running sum (no pass over every stream
    per new one): after any mix of new streams, events (each log bounded, dropping its
    oldest), ends, expiries and evictions it equals the bytes the retained streams hold."""

    async def play() -> None:
        store = ResumeStore(ttl=ttl, max_buffer_bytes=60, max_total_bytes=max_total)
        made: list[tuple[str, StreamLog]] = []
        for kind, which, size in script:
            if kind == "create":
                stream_id = f"stream-{len(made):02d}-aaaaaaaaaaaaa"
                before = store.used_bytes
                try:
                    made.append((stream_id, await store.create(stream_id, "o")))
                except StoreError:
                    assert before > max_total  # refused only when over the total
            elif made:
                log = made[which % len(made)][1]
                if log.final:
                    continue
                if kind == "append":
                    log.append(b"x" * size)
                else:
                    log.finish()
            kept = 0
            for stream_id, log in made:
                if await store.lookup(stream_id) is not None:  # retained (may expire now)
                    kept += sum(len(e) for e in log.events)
                    assert log.size <= 60 or len(log.events) == 1  # each log bounded
            assert store.used_bytes == kept
        await store.close()
        assert store.used_bytes == 0

    asyncio.run(play())


async def test_a_chat_names_its_newest_stream_for_its_owner_on_every_replica(
    stores: Factory,
) -> None:
    async with stores() as writer, stores() as reader:
        await writer.bind_chat("owner-1", "chat-A_1", "stream-first")
        await writer.bind_chat("owner-1", "chat-A_1", "stream-second")  # the next turn
        assert await reader.chat_stream("owner-1", "chat-A_1") == "stream-second"
        assert await reader.chat_stream("owner-2", "chat-A_1") is None  # another caller's
        assert await reader.chat_stream("owner-1", "chat-B") is None  # never bound


async def test_a_chat_mapping_expires_after_the_ttl(stores: Factory) -> None:
    async with stores(ttl=0.3) as store:
        await store.bind_chat("owner-1", "chat-ttl", "stream-x")
        assert await store.chat_stream("owner-1", "chat-ttl") == "stream-x"
        await eventually(lambda: _is_none(store.chat_stream("owner-1", "chat-ttl")), timeout=5)


async def _is_none(value: Awaitable[str | None]) -> bool:
    return await value is None
