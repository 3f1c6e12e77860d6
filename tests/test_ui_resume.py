"""Stream resume on the `ui` route over real sockets: `GET <route>/<chat id>/stream`.

A cutting TCP proxy drops the chat turn's connection after a few events, as a reload or
a dropped network does; the AI SDK then asks for the chat's stream and must get the whole
message once, from its `start` to `[DONE]`, with Claude called once.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import signal
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from sidecar.fake_claude import FakeServer
from sidecar.server import SidecarServer
from sidecar.stream.redis_store import redis_client
from tests.support.redis_server import RedisServer
from tests.support.resume import (
    Reply,
    cutting_proxy,
    hold_resume_prepare,
    replica,
    sse_request,
    stream_ends,
)
from tests.support.sidecars import SidecarFactory
from tests.support.waiting import eventually, holds

CHAT = "/api/chat"
SLOW = "[[fake tokens=40 tps=20]] tell me"
LONG = "[[fake tokens=400 tps=40]] go on"


def resumable(grace: float = 10, **extra: Any) -> dict[str, Any]:
    return {"resume": {"detach_grace_seconds": grace}, **extra}


def turn(chat_id: str, text: str = SLOW) -> bytes:
    message = {"id": "u1", "role": "user", "parts": [{"type": "text", "text": text}]}
    return json.dumps({"id": chat_id, "trigger": "submit-message", "messages": [message]}).encode()


async def post(port: int, chat_id: str, text: str = SLOW, **headers: str) -> Reply:
    return await sse_request(port, "POST", CHAT, headers, turn(chat_id, text))


async def resume_chat(port: int, chat_id: str, **headers: str) -> Reply:
    return await sse_request(port, target=f"{CHAT}/{chat_id}/stream", headers=headers)


def kinds(reply: Reply) -> list[Any]:
    return [e.data.get("type", e.data.get("done")) for e in reply.events]


def text_of(reply: Reply) -> str:
    return "".join(str(e.data["delta"]) for e in reply.events if e.data.get("type") == "text-delta")


async def test_a_cut_turn_resumes_as_the_whole_message_once(
    fake: FakeServer, sidecar_for: SidecarFactory
) -> None:
    async with sidecar_for(resumable()) as sidecar:
        async with cutting_proxy(sidecar.port, after=6) as proxy:
            first = await post(proxy.port, "chat-cut")
        assert proxy.cut == 1
        assert first.status == 200
        assert kinds(first)[:3] == ["start", "start-step", "text-start"]
        resumed = await resume_chat(sidecar.port, "chat-cut")
        assert fake.state.counters["requests"] == 1  # the resume never called Claude
        # Finished now: the client has the whole message, nothing to resume.
        again = await resume_chat(sidecar.port, "chat-cut")
        whole = await post(sidecar.port, "chat-whole")
    assert resumed.status == 200
    assert resumed.headers["x-vercel-ai-ui-message-stream"] == "v1"
    assert resumed.headers["content-type"].startswith("text/event-stream")
    assert resumed.stream_id == first.stream_id
    # From the message's start (the SDK rebuilds it), ending like the uninterrupted turn.
    assert kinds(resumed) == kinds(whole)
    assert kinds(resumed)[-4:] == ["text-end", "finish-step", "finish", "[DONE]"]
    assert resumed.events[0].id == f"{first.stream_id}:1"
    assert resumed.payload.startswith(first.payload[: first.payload.rfind(b"\n\n") + 2])
    assert text_of(resumed) == text_of(whole) != ""
    assert again.status == 204
    assert fake.state.counters["requests"] == 2


async def test_parts_published_while_a_chat_resume_prepares_its_response_reach_it_once(
    fake: FakeServer, sidecar_for: SidecarFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Preparing the chat resume's response is an await: the parts the turn produces while
    it is pending reach the resumed message, in order, exactly once."""
    # The turn goes on while the resume's response is being prepared.
    sidecar: SidecarServer  # the one the test starts below, read once a resume is held
    held = hold_resume_prepare(
        monkeypatch, lambda: sidecar, lambda request: request.path.endswith("/stream"),
        lambda log, last: log.last >= last + 3,
    )  # fmt: skip
    async with sidecar_for(resumable()) as sidecar:
        async with cutting_proxy(sidecar.port, after=4) as proxy:
            first = await post(proxy.port, "chat-held")
        resumed = await resume_chat(sidecar.port, "chat-held")
    assert len(held) == 1
    ids = [e.id for e in resumed.events if e.id is not None]
    assert ids == [f"{first.stream_id}:{n}" for n in range(1, len(ids) + 1)]
    assert kinds(resumed)[-2:] == ["finish", "[DONE]"]


async def test_last_event_id_resumes_a_turn_after_its_last_event(
    fake: FakeServer, sidecar_for: SidecarFactory
) -> None:
    async with sidecar_for(resumable()) as sidecar:
        async with cutting_proxy(sidecar.port, after=7) as proxy:
            first = await post(proxy.port, "chat-cursor")
        rest = await sse_request(
            sidecar.port, "POST", CHAT, {"Last-Event-ID": first.last_id}, turn("ignored")
        )
        whole = await sse_request(sidecar.port, target=f"{CHAT}?last_event_id={first.stream_id}:0")
    assert first.last_id == f"{first.stream_id}:7"
    assert rest.status == 200
    assert rest.headers["x-vercel-ai-ui-message-stream"] == "v1"
    assert rest.events[0].id == f"{first.stream_id}:8"
    assert first.payload[: first.payload.rfind(b"\n\n") + 2] + rest.payload == whole.payload
    assert kinds(whole)[-2:] == ["finish", "[DONE]"]
    assert fake.state.counters["requests"] == 1


async def test_an_event_source_on_the_chats_stream_url_resumes_after_its_last_event(
    fake: FakeServer, sidecar_for: SidecarFactory
) -> None:
    """`Last-Event-ID` on `GET <route>/<chat id>/stream` (an `EventSource` reconnecting
    there) is a resume like anywhere else: the events after it, never the message again."""
    async with sidecar_for(resumable()) as sidecar:
        async with cutting_proxy(sidecar.port, after=5) as proxy:
            first = await post(proxy.port, "chat-es")
        rest = await resume_chat(sidecar.port, "chat-es", **{"Last-Event-ID": first.last_id})
    assert rest.status == 200
    assert rest.events[0].id == f"{first.stream_id}:6"
    assert kinds(rest)[-2:] == ["finish", "[DONE]"]
    assert fake.state.counters["requests"] == 1


async def test_unknown_foreign_and_malformed_chats_answer_204(
    fake: FakeServer, sidecar_for: SidecarFactory
) -> None:
    keys = [{"name": name, "sha256": hashlib.sha256(f"key-{name}".encode()).hexdigest(),
             "user": name} for name in ("alice", "bob")]  # fmt: skip
    config = resumable(auth={"mode": "required", "api_keys": keys})
    alice, bob = {"X-Api-Key": "key-alice"}, {"X-Api-Key": "key-bob"}
    async with sidecar_for(config) as sidecar:
        async with cutting_proxy(sidecar.port, after=3) as proxy:
            cut = await post(proxy.port, "chat-alice", LONG, **alice)
        assert cut.status == 200
        assert sidecar.runtime.resume.hub.stream_ids() == [cut.stream_id]  # still generating
        foreign = await resume_chat(sidecar.port, "chat-alice", **bob)
        unknown = await resume_chat(sidecar.port, "chat-nobody", **alice)
        malformed = await resume_chat(sidecar.port, "chat%20with%20spaces", **alice)
        too_long = await resume_chat(sidecar.port, "c" * 129, **alice)
        assert fake.state.open_streams == 1  # none of them touched alice's generation
        async with aiohttp.ClientSession() as http:  # bob cannot stop it either
            url = f"{sidecar.url}{CHAT}/{cut.stream_id}"
            async with http.delete(url, headers=bob) as response:
                assert response.status == 404
            async with http.delete(url, headers=alice) as response:
                assert response.status == 204
        await eventually(lambda: holds(fake.state.open_streams == 0))
        stopped = await resume_chat(sidecar.port, "chat-alice", **alice)
    assert [foreign.status, unknown.status, malformed.status, too_long.status] == [204] * 4
    assert [foreign.payload, unknown.payload] == [b"", b""]
    assert stopped.status == 204  # cancelled: the generation is over
    assert fake.state.counters["streams_cancelled"] == 1


async def test_a_cancel_on_the_ui_route_ends_the_turn_with_an_error_part(
    fake: FakeServer, sidecar_for: SidecarFactory, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    async with sidecar_for(resumable(grace=30)) as sidecar:
        reading = asyncio.create_task(post(sidecar.port, "chat-stop", LONG))
        await eventually(lambda: holds(fake.state.open_streams == 1))
        live = sidecar.runtime.resume.hub.stream_ids()
        assert len(live) == 1
        async with aiohttp.ClientSession() as http:
            async with http.delete(f"{sidecar.url}{CHAT}/{live[0]}") as response:
                assert response.status == 204
        reply = await reading
    assert kinds(reply)[-2:] == ["error", "[DONE]"]
    assert reply.events[-2].data["errorText"] == "the stream was cancelled"
    assert stream_ends(caplog) == ["client_cancelled"]


async def test_a_client_that_leaves_detaches_and_the_grace_ends_the_turn(
    fake: FakeServer, sidecar_for: SidecarFactory, caplog: pytest.LogCaptureFixture
) -> None:
    """useChat's `stop()` aborts the POST: with resume on the turn goes on for the detach
    grace (a reload may come back for it), then stops; it never runs forever."""
    caplog.set_level(logging.INFO)
    async with sidecar_for(resumable(grace=0.5)) as sidecar:
        async with cutting_proxy(sidecar.port, after=3) as proxy:
            await post(proxy.port, "chat-left", LONG)
        await eventually(lambda: holds(fake.state.counters["streams_cancelled"] == 1))
        assert fake.state.open_streams == 0
        await eventually(lambda: holds(sidecar.runtime.admission.active == 0))
        after = await resume_chat(sidecar.port, "chat-left")
    assert after.status == 204
    assert stream_ends(caplog) == ["client_detached"]


async def test_with_resume_off_the_route_streams_unnumbered_and_answers_204(
    fake: FakeServer, sidecar_for: SidecarFactory
) -> None:
    config = {"routes": [{"path": CHAT, "handler": "ui", "resume": {"enabled": False}}]}
    async with sidecar_for(config) as sidecar:
        async with cutting_proxy(sidecar.port, after=4) as proxy:
            cut = await post(proxy.port, "chat-off")
        probe = await resume_chat(sidecar.port, "chat-off")
    assert "sidecar-stream-id" not in cut.headers
    assert all(e.id is None for e in cut.events)
    assert probe.status == 204


# ---------------------------------------------------------------------------- across replicas


def shared(redis: RedisServer) -> dict[str, Any]:
    return {"resume": {"store": "redis", "redis_url": redis.url, "detach_grace_seconds": 10}}


async def test_a_chat_cut_on_one_replica_resumes_on_another(
    fake: FakeServer, sidecar_for: SidecarFactory, redis_server: RedisServer
) -> None:
    async with (
        sidecar_for(shared(redis_server)) as a,
        sidecar_for(shared(redis_server)) as b,
        cutting_proxy(a.port, after=5) as proxy,
    ):
        first = await post(proxy.port, "chat-replicas")
        assert proxy.cut == 1
        resumed = await resume_chat(b.port, "chat-replicas")
        whole = await post(b.port, "chat-whole")
    assert resumed.status == 200
    assert resumed.stream_id == first.stream_id
    assert kinds(resumed) == kinds(whole)
    assert text_of(resumed) == text_of(whole) != ""
    assert fake.state.counters["requests"] == 2  # once for the resumed turn, once for `whole`


async def test_a_killed_producer_ends_the_resumed_message_with_an_error_part(
    fake: FakeServer, sidecar_for: SidecarFactory, redis_server: RedisServer, tmp_path: Path
) -> None:
    async with (
        replica(tmp_path, "producer", fake, redis_server) as (producer, port, _),
        sidecar_for(shared(redis_server)) as reader,
        cutting_proxy(port, after=5) as proxy,
    ):
        first = await post(proxy.port, "chat-lost", LONG)
        await asyncio.sleep(0.5)  # more events reached Redis meanwhile
        producer.send_signal(signal.SIGKILL)
        producer.wait(timeout=10)
        resumed = await resume_chat(reader.port, "chat-lost")
        again = await resume_chat(reader.port, "chat-lost")
    assert resumed.status == 200
    assert resumed.stream_id == first.stream_id
    assert kinds(resumed)[:3] == ["start", "start-step", "text-start"]
    assert kinds(resumed)[-2:] == ["error", "[DONE]"]  # the UI format, not the prompt route's
    assert "producer stopped" in resumed.events[-2].data["errorText"]
    assert text_of(resumed).startswith(text_of(first))
    assert again.status == 204  # the lost stream is final now: nothing to resume


async def test_a_chat_whose_redis_restarted_empty_resumes_whole_on_another_replica(
    fake: FakeServer, sidecar_for: SidecarFactory, redis_server: RedisServer, tmp_path: Path
) -> None:
    """Redis restarts with nothing while the producer streams a turn: the producer writes
    the chat's name and every event it keeps again, so `useChat`'s resume on another
    replica still gets the whole message, not a 204."""
    async with (
        replica(tmp_path, "producer", fake, redis_server) as (_, port, _),
        sidecar_for(shared(redis_server)) as reader,
        cutting_proxy(port, after=5) as proxy,
    ):
        first = await post(proxy.port, "chat-restart", LONG)
        await redis_server.kill()  # every key is gone, the chat's name with them
        await redis_server.start()
        client = redis_client(redis_server.url, 1.0)

        async def named() -> bool:
            return bool(await client.keys("sidecar:resume:chat:*"))

        try:
            await eventually(named)
        finally:
            await client.aclose()
        resumed = await resume_chat(reader.port, "chat-restart")
    assert resumed.status == 200
    assert resumed.stream_id == first.stream_id
    assert kinds(resumed)[:3] == ["start", "start-step", "text-start"]
    assert kinds(resumed)[-1] == "[DONE]"
    assert text_of(resumed).startswith(text_of(first))
    assert fake.state.counters["requests"] == 1


async def test_a_stopping_replica_closes_the_open_parts_before_its_shutting_down_part(
    fake: FakeServer, sidecar_for: SidecarFactory, redis_server: RedisServer
) -> None:
    """A read of a turn produced on another replica, ended by this replica's shutdown,
    closes the part the turn has open before its `error` (no id: the client resumes
    elsewhere, the turn goes on), as any end of a ui stream does."""
    async with (
        sidecar_for(shared(redis_server)) as producer,
        sidecar_for(shared(redis_server)) as reader,
        cutting_proxy(producer.port, after=5) as proxy,
    ):
        stalled = "[[fake tokens=40 tps=20 after=6 fault=stall_midstream]] hold"
        first = await post(proxy.port, "chat-stopping", stalled)
        assert reader.runtime.resume.stop_readers() == 0
        late = await sse_request(reader.port, target=CHAT, headers={"Last-Event-ID": first.last_id})
    assert late.status == 200
    assert kinds(late) == ["text-end", "error", "[DONE]"]  # the text part opened before
    assert late.events[0].data == {"type": "text-end", "id": "0"}
    assert "shutting down" in late.events[1].data["errorText"]
    assert all(e.id is None for e in late.events)  # resumed from its last event elsewhere


async def test_a_head_on_the_chats_stream_url_answers_as_its_get_without_parts(
    fake: FakeServer, sidecar_for: SidecarFactory
) -> None:
    async with sidecar_for(resumable()) as sidecar, aiohttp.ClientSession() as http:
        async with cutting_proxy(sidecar.port, after=3) as proxy:
            cut = await post(proxy.port, "chat-head")
        answers = []
        for chat_id in ("chat-head", "chat-nobody"):
            async with http.head(f"{sidecar.url}{CHAT}/{chat_id}/stream") as response:
                assert await response.read() == b""
                answers.append((response.status, response.headers.get("Sidecar-Stream-Id")))
                if chat_id == "chat-head":
                    assert response.headers["x-vercel-ai-ui-message-stream"] == "v1"
        resumed = await resume_chat(sidecar.port, "chat-head")
    assert answers == [(200, cut.stream_id), (204, None)]
    assert resumed.events[0].id == f"{cut.stream_id}:1"  # the HEAD took nothing
    assert fake.state.counters["requests"] == 1
