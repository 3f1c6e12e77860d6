"""Resumable streams on the prompt route, over real sockets (one process, memory store).

A cutting TCP proxy drops the client's connection after N events; the client comes back
with `Last-Event-ID` and must get exactly the rest: the concatenated events equal the
stream read whole, byte for byte, Claude was called once and the tokens charged once.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import re
import signal
import subprocess
import urllib.parse
from collections.abc import Awaitable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from multidict import CIMultiDict

from sidecar import sse
from sidecar.fake_claude import FakeServer
from sidecar.server import SidecarServer
from sidecar.stream.redis_store import keys, readers_key, redis_client
from tests.support.metrics import counts
from tests.support.redis_server import RedisServer
from tests.support.resume import (
    ROUTE,
    Reply,
    cutting_proxy,
    hold_resume_prepare,
    next_event,
    parse_events,
    replica,
    sse_request,
    stream_ends,
    without_opening,
)
from tests.support.sidecars import SidecarFactory
from tests.support.sockets import dechunk, shrink_send_buffers, small_buffered
from tests.support.timed_reads import gaps, joined, timed_response
from tests.support.waiting import eventually, holds

SLOW = "/api/stream-response?prompt=%5B%5Bfake%20tokens%3D30%20tps%3D60%5D%5D%20tell%20me"


def long_stream(tokens: int) -> str:
    """The prompt route's URL for a `tokens`-token answer at 40 tokens/s (GET)."""
    return ROUTE + f"?prompt=%5B%5Bfake%20tokens%3D{tokens}%20tps%3D40%5D%5D%20long"


def resumable(**resume: Any) -> dict[str, Any]:
    return {"resume": {"detach_grace_seconds": 10, **resume}}


async def test_a_cut_stream_resumes_from_its_last_event_byte_for_byte(
    fake: FakeServer, sidecar_for: SidecarFactory, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    async with sidecar_for(resumable()) as sidecar, cutting_proxy(sidecar.port, after=8) as proxy:
        first = await sse_request(proxy.port, target=SLOW)
        assert proxy.cut == 1
        assert first.status == 200
        assert len(first.events) == 8
        stream_id = first.stream_id
        assert first.last_id == f"{stream_id}:8"
        rest = await sse_request(
            sidecar.port, target=SLOW, headers={"Last-Event-ID": first.last_id}
        )
        assert rest.status == 200
        assert rest.stream_id == stream_id
        # Read whole afterwards, from the start: the same bytes, event for event.
        whole = await sse_request(sidecar.port, target=f"{ROUTE}?last_event_id={stream_id}:0")
        uninterrupted = await sse_request(sidecar.port, target=SLOW, headers={})
    joined = first.payload[: first.payload.rfind(b"\n\n") + 2] + rest.payload
    assert without_opening(joined) == whole.payload  # (the new stream's opening id aside)
    assert rest.events[0].id == f"{stream_id}:9"
    assert rest.events[-1].data.get("done") is True, rest.events[-1]
    assert first.text + rest.text == uninterrupted.text  # the whole answer, once
    assert [e.data for e in first.events + rest.events] == [e.data for e in uninterrupted.events]
    # Claude was called twice: once for the resumed stream, once for the uninterrupted one.
    assert fake.state.counters["requests"] == 2
    await eventually(lambda: holds(len(stream_ends(caplog)) == 2))
    assert stream_ends(caplog) == ["completed", "completed"]  # each settled once


async def test_a_stream_cut_before_its_first_event_resumes_from_its_opening_id(
    fake: FakeServer, sidecar_for: SidecarFactory
) -> None:
    """Cut after the head, before the first token (a long time to first token), a client
    that knows only what the SSE bytes say (an `EventSource`: it cannot read the
    `Sidecar-Stream-Id` header) holds the opening id-only block's `<stream id>:0` as its
    last event id; its reconnect sends it, and is a resume from event 1, not a second
    call to Claude."""
    slow_start = ROUTE + "?prompt=%5B%5Bfake%20tokens%3D12%20ttft_ms%3D1500%5D%5D%20think"
    announced = resumable(announce_stream_id=True)
    async with sidecar_for(announced) as sidecar, cutting_proxy(sidecar.port, after=0) as proxy:
        first = await sse_request(proxy.port, target=slow_start)
        assert proxy.cut == 1
        assert first.status == 200
        assert first.events == []  # no event reached it: the id-only block is none
        assert first.last_event_id == f"{first.stream_id}:0"
        # As an `EventSource` reconnects: with `Last-Event-ID` only if the bytes set one.
        cursor = {"Last-Event-ID": first.last_event_id} if first.last_event_id else {}
        rest = await sse_request(sidecar.port, target=slow_start, headers=cursor)
    assert rest.status == 200
    assert rest.stream_id == first.stream_id
    assert [e.id for e in rest.events] == [f"{first.stream_id}:{n}" for n in range(1, 14)]
    assert rest.last_event_id == rest.events[-1].id  # a resume never sends `:0` again
    assert rest.events[-1].data.get("done") is True
    assert len(rest.text.split()) == 12  # every token, once
    assert fake.state.counters["requests"] == 1  # Claude was called (and charged) once


async def test_resume_with_the_header_on_a_post_and_the_query_on_a_get(
    fake: FakeServer, sidecar_for: SidecarFactory
) -> None:
    async with sidecar_for(resumable()) as sidecar:
        done = await sse_request(sidecar.port, target=SLOW)
        stream_id = done.stream_id
        body = json.dumps({"prompt": "ignored: a resume never calls Claude"}).encode()
        by_post = await sse_request(
            sidecar.port, "POST", ROUTE, {"Last-Event-ID": f"{stream_id}:28"}, body
        )
        by_query = await sse_request(sidecar.port, target=f"{ROUTE}?last_event_id={stream_id}:29")
    assert by_post.status == 200
    assert [e.id for e in by_post.events] == [f"{stream_id}:{n}" for n in (29, 30, 31)]
    assert by_post.events[-1].data["done"] is True
    assert [e.id for e in by_query.events] == [f"{stream_id}:30", f"{stream_id}:31"]
    assert fake.state.counters["requests"] == 1


@pytest.mark.parametrize(
    ("method", "target", "headers"),
    [
        ("GET", f"{SLOW}&last_event_id=", {}),
        ("GET", SLOW, {"Last-Event-ID": ""}),
        ("GET", f"{SLOW}&last_event_id=%20", {"Last-Event-ID": " "}),
        ("POST", ROUTE, {"Last-Event-ID": ""}),
    ],
    ids=["empty_query", "empty_header", "blank_both", "empty_header_post"],
)
async def test_an_empty_cursor_is_none_and_starts_a_stream(
    fake: FakeServer,
    sidecar_for: SidecarFactory,
    method: str,
    target: str,
    headers: dict[str, str],
) -> None:
    """The SSE rules' empty last event id means "no event yet": a front end that always
    sends the header or the parameter gets a new stream, not a 400."""
    body = json.dumps({"prompt": "[[fake tokens=3]] hi"}).encode() if method == "POST" else b""
    async with sidecar_for(resumable()) as sidecar:
        reply = await sse_request(sidecar.port, method, target, headers, body)
    assert reply.status == 200
    assert reply.stream_id
    assert reply.events[-1].data.get("done") is True
    assert fake.state.counters["requests"] == 1


async def test_a_cursor_sent_twice_with_different_values_is_a_400_and_the_same_twice_is_one(
    fake: FakeServer, sidecar_for: SidecarFactory
) -> None:
    """Which of two different cursors to resume from would be a guess: the header twice,
    or the query parameter twice, is refused (and counted); a copy repeated as is, is one."""
    async with sidecar_for(resumable()) as sidecar:
        done = await sse_request(sidecar.port, target=SLOW)
        stream_id = done.stream_id
        one, two = f"{stream_id}:28", f"{stream_id}:29"
        body = b'{"prompt": "x"}'
        twice = CIMultiDict([("Last-Event-ID", one), ("Last-Event-ID", two)])
        refused = [
            await sse_request(sidecar.port, headers=twice),
            await sse_request(sidecar.port, "POST", ROUTE, twice, body),
            await sse_request(
                sidecar.port, target=f"{ROUTE}?last_event_id={one}&last_event_id={two}"
            ),
        ]
        same = CIMultiDict([("Last-Event-ID", one), ("Last-Event-ID", one)])
        resumed = await sse_request(sidecar.port, "POST", ROUTE, same, body)
        async with aiohttp.ClientSession() as http:
            async with http.get(sidecar.admin_url + "/metrics") as response:
                metrics = await response.text()
    for reply in refused:
        assert reply.status == 400
        error = json.loads(reply.payload)["error"]
        assert error["type"] == "invalid_request"
        assert "sent more than once with different values" in error["message"]
    assert resumed.status == 200
    assert [e.id for e in resumed.events] == [f"{stream_id}:{n}" for n in (29, 30, 31)]
    reasons = counts(metrics, "sidecar_rejections", "sidecar_rejection_reason")
    assert reasons.get("resume_malformed") == len(refused)
    assert fake.state.counters["requests"] == 1  # no resume called Claude


async def test_unknown_expired_foreign_and_finished_streams(
    fake: FakeServer, sidecar_for: SidecarFactory
) -> None:
    config = _alice_and_bob(ttl_seconds=4)
    alice, bob = {"X-Api-Key": "key-a"}, {"X-Api-Key": "key-b"}
    async with sidecar_for(config) as sidecar:
        done = await sse_request(sidecar.port, target=SLOW, headers=alice)
        cursor = done.last_id  # the `done` event's id
        stream_id = done.stream_id
        body = b'{"prompt": "x"}'

        async def get(last_id: str, who: dict[str, str]) -> int:
            reply = await sse_request(sidecar.port, headers={**who, "Last-Event-ID": last_id})
            return reply.status

        async def post(last_id: str, who: dict[str, str]) -> tuple[int, dict[str, Any]]:
            reply = await sse_request(
                sidecar.port, "POST", ROUTE, {**who, "Last-Event-ID": last_id}, body
            )
            return reply.status, json.loads(reply.payload or b"{}")

        # Resuming from the final event: nothing is left, the EventSource is told to stop.
        assert await get(cursor, alice) == 204
        # Someone else's stream is answered exactly as an unknown one (204 on a GET).
        assert await get(f"{stream_id}:3", bob) == 204
        assert await post(f"{stream_id}:3", bob) == await post("A" * 24 + ":3", alice)
        status, error = await post(f"{stream_id}:3", bob)
        assert status == 404
        assert error["error"]["type"] == "resume_expired"
        assert await get("B" * 24 + ":1", alice) == 204
        # Malformed cursors and events the stream never sent: a clear 400.
        for bad in (
            "12",
            f"{stream_id}",
            f"{stream_id}:x",
            f"{stream_id}:-1",
            "a:b:c",
            f"{stream_id}:99",
        ):
            status, error = await post(bad, alice)
            assert status == 400, bad
            assert "Last-Event-ID" in error["error"]["message"]
        # Still resumable within the TTL, then gone.
        assert await get(f"{stream_id}:29", alice) == 200
        await eventually(lambda: _is(get(f"{stream_id}:29", alice), 204), timeout=15)
        status, error = await post(f"{stream_id}:29", alice)
        assert (status, error["error"]["type"]) == (404, "resume_expired")
        async with aiohttp.ClientSession() as http:
            async with http.get(sidecar.admin_url + "/metrics") as response:
                metrics = await response.text()
    assert fake.state.counters["requests"] == 1  # no resume ever called Claude
    rejections = [line for line in metrics.splitlines() if "resume_malformed" in line]
    assert rejections
    assert rejections[0].startswith("sidecar_rejections_total{")
    assert float(rejections[0].rsplit(" ", 1)[1]) == 6  # every bad cursor counted
    results = {
        line.split('sidecar_resume_result="')[1].split('"')[0]
        for line in metrics.splitlines()
        if line.startswith("sidecar_stream_resumes_total{")
    }
    assert results == {"resumed", "expired", "forbidden"}


async def test_a_cursor_spelled_as_no_event_id_ever_is_is_a_400_however_it_is_sent(
    fake: FakeServer, sidecar_for: SidecarFactory
) -> None:
    """Only the exact spelling of a sent event id resumes: a leading zero, an id of another
    length than a stream id's or Unicode spaces around it name no event ever sent."""
    async with sidecar_for(resumable()) as sidecar:
        done = await sse_request(sidecar.port, target=SLOW)
        stream_id = done.stream_id
        spellings = (
            f"{stream_id}:01",
            f"{stream_id}:00",
            "A" * 16 + ":1",  # would be an unknown id (204) if it could be one
            "A" * 25 + ":1",
            f"{stream_id}:1\u00a0",
            f"\u3000{stream_id}:1",
        )
        answers = []
        for bad in spellings:
            quoted = urllib.parse.quote(bad, safe=":")
            for method, target, headers in (
                ("GET", f"{ROUTE}?last_event_id={quoted}", {}),
                ("POST", ROUTE, {"Last-Event-ID": bad}),
            ):
                body = b'{"prompt": "x"}' if method == "POST" else b""
                reply = await sse_request(sidecar.port, method, target, headers, body)
                answers.append((bad, method, reply.status))
        # The same cursor, spelled as sent, with the blanks HTTP allows around it, resumes.
        ok = await sse_request(sidecar.port, headers={"Last-Event-ID": f"{stream_id}:30 \t"})
    assert [status for _, _, status in answers] == [400] * len(answers), answers
    assert ok.status == 200
    assert [e.id for e in ok.events] == [f"{stream_id}:31"]
    assert fake.state.counters["requests"] == 1


# Answer headers that differ between any two requests, whatever they ask.
_PER_REQUEST = frozenset({"date", "x-request-id"})


@pytest.mark.parametrize("store", ["memory", "redis"])
async def test_someone_elses_stream_is_answered_exactly_as_an_unknown_id_on_every_method(
    store: str, fake: FakeServer, sidecar_for: SidecarFactory, redis_server: RedisServer
) -> None:
    """A GET, HEAD, POST resume or DELETE of another caller's stream, live or finished, gets
    the unknown id's answer: same status, headers and body (a GET's 204, not a 404 that
    would tell a prober the id exists)."""
    stored = {"store": "redis", "redis_url": redis_server.url} if store == "redis" else {}
    alice, bob = {"X-Api-Key": "key-a"}, {"X-Api-Key": "key-b"}
    unknown = "U" * 24

    async def answers(port: int, stream_id: str) -> list[tuple[int, dict[str, str], bytes]]:
        seen = []
        for method, target, headers, body in (
            ("GET", ROUTE, {"Last-Event-ID": f"{stream_id}:1"}, b""),
            ("GET", f"{ROUTE}?last_event_id={stream_id}:1", {}, b""),
            ("HEAD", ROUTE, {"Last-Event-ID": f"{stream_id}:1"}, b""),
            ("POST", ROUTE, {"Last-Event-ID": f"{stream_id}:1"}, b'{"prompt": "x"}'),
            ("DELETE", f"{ROUTE}/{stream_id}", {}, b""),
        ):
            reply = await sse_request(port, method, target, {**bob, **headers}, body)
            kept = {k: v for k, v in reply.headers.items() if k not in _PER_REQUEST}
            seen.append((reply.status, kept, reply.payload))
        return seen

    async with sidecar_for(_alice_and_bob(**stored)) as sidecar, aiohttp.ClientSession() as http:
        async with http.get(sidecar.url + long_stream(400), headers=alice) as live:
            stream_id = live.headers["Sidecar-Stream-Id"]
            await live.content.readuntil(b"\n\n")
            assert await answers(sidecar.port, stream_id) == await answers(sidecar.port, unknown)
        done = await sse_request(sidecar.port, target=SLOW, headers=alice)
        finished = await answers(sidecar.port, done.stream_id)
        assert finished == await answers(sidecar.port, unknown)
    assert [status for status, _, _ in finished] == [204, 204, 204, 404, 404]


async def test_someone_elses_live_stream_costs_what_an_unknown_id_costs(
    fake: FakeServer,
    sidecar_for: SidecarFactory,
    redis_server: RedisServer,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A resume or cancel of another caller's stream live on this replica does the store
    work an unknown id does (one lookup), then answers as for it: its time never tells
    that the stream exists (it answered at once, an unknown id after a Redis round trip)."""
    config = {
        "auth": {"mode": "required", "api_keys": [
            {"name": n, "sha256": hashlib.sha256(f"key-{n}".encode()).hexdigest()}
            for n in ("a", "b")]},
        "resume": {"store": "redis", "redis_url": redis_server.url, "detach_grace_seconds": 10},
    }  # fmt: skip
    alice, bob = {"X-Api-Key": "key-a"}, {"X-Api-Key": "key-b"}
    async with sidecar_for(config) as sidecar, aiohttp.ClientSession() as http:
        store = sidecar.runtime.resume.store
        looked_up: list[str] = []
        lookup = store.lookup

        async def counted(stream_id: str) -> Any:
            looked_up.append(stream_id)
            return await lookup(stream_id)

        monkeypatch.setattr(store, "lookup", counted)
        async with http.get(sidecar.url + long_stream(400), headers=alice) as stream:
            stream_id = stream.headers["Sidecar-Stream-Id"]
            await stream.content.readuntil(b"\n\n")
            seen = {}
            for who, target in (("foreign", stream_id), ("unknown", "U" * 24)):
                looked_up.clear()
                post = await sse_request(
                    sidecar.port, "POST", ROUTE, {**bob, "Last-Event-ID": f"{target}:1"}, b"{}"
                )
                cancel = await sse_request(sidecar.port, "DELETE", f"{ROUTE}/{target}", bob)
                seen[who] = (post.status, post.payload, cancel.status, cancel.payload, looked_up[:])
                assert "sidecar-stream-id" not in post.headers | cancel.headers
            assert seen["foreign"][:4] == seen["unknown"][:4]
            assert seen["foreign"][4] == [stream_id, stream_id]
            assert seen["unknown"][4] == ["U" * 24, "U" * 24]


async def test_leaving_and_coming_back_within_the_grace_keeps_the_generation(
    fake: FakeServer, sidecar_for: SidecarFactory, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    async with sidecar_for(resumable(detach_grace_seconds=5)) as sidecar:
        async with cutting_proxy(sidecar.port, after=3) as proxy:
            first = await sse_request(proxy.port, target=SLOW)
        assert fake.state.open_streams == 1  # detached, still generating
        await asyncio.sleep(0.3)  # away for a while
        rest = await sse_request(sidecar.port, headers={"Last-Event-ID": first.last_id})
    assert rest.events[-1].data["done"] is True
    assert len(first.events) + len(rest.events) == 31
    assert fake.state.counters["streams_completed"] == 1
    assert stream_ends(caplog) == ["completed"]


async def test_events_published_while_a_resume_prepares_its_response_reach_it_once(
    fake: FakeServer, sidecar_for: SidecarFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Preparing a resume's response is an await: whatever the producer publishes while it
    is pending reaches the reader, in order, exactly once (backlog or live, never neither)."""
    # The producer publishes while the resume's response is being prepared.
    sidecar: SidecarServer  # the one the test starts below, read once a resume is held
    held = hold_resume_prepare(
        monkeypatch, lambda: sidecar, lambda request: "Last-Event-ID" in request.headers,
        lambda log, last: log.last >= last + 3,
    )  # fmt: skip
    async with sidecar_for(resumable()) as sidecar:
        async with cutting_proxy(sidecar.port, after=2) as proxy:
            first = await sse_request(proxy.port, target=long_stream(40))
        stream_id = first.stream_id
        rest = await sse_request(sidecar.port, headers={"Last-Event-ID": first.last_id})
    assert len(held) == 1  # the resume's response was held while events came
    # Every event after the client's last, in order: none lost, none twice.
    assert [e.id for e in rest.events] == [
        f"{stream_id}:{n}" for n in range(3, len(rest.events) + 3)
    ]
    assert rest.events[-1].data["done"] is True


async def test_events_dropped_while_a_resume_prepares_its_response_end_it_without_a_gap(
    fake: FakeServer, sidecar_for: SidecarFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The client's next events leave the bounded log while its resume's response is being
    prepared: the read ends with no event (never a stream with a gap), and its next resume
    is told the stream is gone."""
    # The client's next events leave the buffer while its resume's response is prepared.
    sidecar: SidecarServer  # the one the test starts below, read once a resume is held
    held = hold_resume_prepare(
        monkeypatch, lambda: sidecar, lambda request: "Last-Event-ID" in request.headers,
        lambda log, _: log.base > 3,
    )  # fmt: skip
    async with sidecar_for(resumable(max_buffer_bytes=2048)) as sidecar:
        async with cutting_proxy(sidecar.port, after=2) as proxy:
            first = await sse_request(proxy.port, target=long_stream(200))
        rest = await sse_request(sidecar.port, headers={"Last-Event-ID": first.last_id})
        again = await sse_request(sidecar.port, headers={"Last-Event-ID": first.last_id})
    assert len(held) == 1
    assert rest.status == 200
    assert rest.events == []
    assert again.status == 204


async def test_a_generation_nobody_comes_back_for_is_cancelled_after_the_grace(
    fake: FakeServer, sidecar_for: SidecarFactory, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    slow = long_stream(400)
    async with sidecar_for(resumable(detach_grace_seconds=0.5)) as sidecar:
        async with cutting_proxy(sidecar.port, after=2) as proxy:
            first = await sse_request(proxy.port, target=slow)
        await eventually(lambda: holds(fake.state.counters["streams_cancelled"] == 1))
        assert fake.state.open_streams == 0
        runtime = sidecar.runtime
        await eventually(lambda: holds(runtime.admission.active == 0))
        # The buffer ends with the final event that says why.
        rest = await sse_request(sidecar.port, headers={"Last-Event-ID": first.last_id})
    assert rest.events[-1].data["error"]["type"] == "stream_abandoned"
    assert stream_ends(caplog) == ["client_detached"]


async def test_an_explicit_cancel_stops_claude_at_once(
    fake: FakeServer, sidecar_for: SidecarFactory, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    slow = "?prompt=%5B%5Bfake%20tokens%3D400%20tps%3D40%5D%5D%20long"
    async with sidecar_for(resumable(detach_grace_seconds=30)) as sidecar:
        reading = asyncio.create_task(sse_request(sidecar.port, target=ROUTE + slow))
        await eventually(lambda: holds(fake.state.open_streams == 1))
        live = sidecar.runtime.resume.hub.stream_ids()
        assert len(live) == 1
        async with aiohttp.ClientSession() as http:
            async with http.delete(f"{sidecar.url}{ROUTE}/{live[0]}") as response:
                assert response.status == 204
            async with http.delete(f"{sidecar.url}{ROUTE}/{'C' * 24}") as response:
                assert response.status == 404
        reply = await reading
        await eventually(lambda: holds(fake.state.open_streams == 0))
    assert reply.events[-1].data["error"]["type"] == "cancelled"
    assert fake.state.counters["streams_cancelled"] == 1
    assert stream_ends(caplog) == ["client_cancelled"]


@pytest.mark.parametrize(
    "spelling", ["/{route}/{id}", "{route}/./{id}", "{route}//{id}/", "{route}/x/../{id}"]
)
async def test_a_cancel_is_read_from_the_path_as_routed_in_any_spelling(
    spelling: str, fake: FakeServer, sidecar_for: SidecarFactory
) -> None:
    slow = "?prompt=%5B%5Bfake%20tokens%3D400%20tps%3D40%5D%5D%20long"
    async with sidecar_for(resumable(detach_grace_seconds=30)) as sidecar:
        reading = asyncio.create_task(sse_request(sidecar.port, target=ROUTE + slow))
        await eventually(lambda: holds(fake.state.open_streams == 1))
        (stream_id,) = sidecar.runtime.resume.hub.stream_ids()
        target = spelling.format(route=ROUTE, id=stream_id)
        cancel = await sse_request(sidecar.port, "DELETE", target)
        assert cancel.status == 204, target
        reply = await reading
    assert reply.events[-1].data["error"]["type"] == "cancelled"


async def _is(value: Awaitable[int], expected: int) -> bool:
    return await value == expected


async def _at_least(value: Awaitable[int], expected: int) -> bool:
    return await value >= expected


def _sha(key: str) -> str:
    import hashlib

    return hashlib.sha256(key.encode()).hexdigest()


def _alice_and_bob(**resume: Any) -> dict[str, Any]:
    """A resumable config whose callers are alice (`X-Api-Key: key-a`) or bob (`key-b`)."""
    return {
        **resumable(**resume),
        "auth": {"mode": "required", "api_keys": [
            {"name": "a", "sha256": _sha("key-a"), "user": "alice"},
            {"name": "b", "sha256": _sha("key-b"), "user": "bob"},
        ]},
    }  # fmt: skip


# ---------------------------------------------------------------------------- across replicas


async def events_stored(redis_server: RedisServer, stream_id: str) -> int:
    """How many of the stream's events are in Redis."""
    redis = redis_client(redis_server.url, 2.0)
    try:
        return int(await redis.xlen(keys(stream_id)[0]))
    finally:
        await redis.aclose()


async def readers_counted(redis_server: RedisServer, stream_id: str) -> int:
    """How many clients read the stream from the store, on every replica."""
    redis = redis_client(redis_server.url, 2.0)
    try:
        return int(await redis.zcard(readers_key(stream_id)))
    finally:
        await redis.aclose()


def completed_lines(path: Path) -> list[str]:
    log = path.with_suffix(".log").read_text(errors="replace")
    return [line for line in log.splitlines() if '"stream_complete"' in line]


async def settled_lines(path_a: Path, path_b: Path) -> tuple[list[str], list[str]]:
    """The `stream_complete` lines of both replicas while they run: once the producer's has
    been written, and a flush delay more (`telemetry.log_flush_seconds`: the replicas are
    killed on the way out, which loses lines still waiting), so a line of the other's
    would have been written too."""
    await eventually(lambda: holds(bool(completed_lines(path_a))))
    await asyncio.sleep(0.2)
    return completed_lines(path_a), completed_lines(path_b)


async def test_reconnects_count_against_the_routes_request_quota(
    fake: FakeServer, sidecar_for: SidecarFactory
) -> None:
    """A storm of reconnects is bounded by `requests_per_minute` as calls are: each is a
    request (never tokens), and past the limit it is a 429 that replays nothing."""
    config = {**resumable(), "quotas": {"requests_per_minute": 3}}
    async with sidecar_for(config) as sidecar, cutting_proxy(sidecar.port, after=4) as proxy:
        first = await sse_request(proxy.port, target=SLOW)  # request 1
        cursor = {"Last-Event-ID": first.last_id}
        resumed = [await sse_request(sidecar.port, headers=cursor) for _ in range(3)]
    assert [r.status for r in resumed] == [200, 200, 429]
    assert resumed[2].events == []
    assert fake.state.counters["requests"] == 1


async def test_a_cut_stream_resumes_on_another_replica_sharing_redis(
    fake: FakeServer, redis_server: RedisServer, tmp_path: Path
) -> None:
    async with (
        replica(tmp_path, "a", fake, redis_server) as (_, port_a, path_a),
        replica(tmp_path, "b", fake, redis_server) as (_, port_b, path_b),
        cutting_proxy(port_a, after=8) as proxy,
    ):
        first = await sse_request(proxy.port, target=SLOW)
        assert len(first.events) == 8
        rest = await sse_request(port_b, headers={"Last-Event-ID": first.last_id})
        whole = await sse_request(port_b, target=f"{ROUTE}?last_event_id={first.stream_id}:0")
        settled_a, settled_b = await settled_lines(path_a, path_b)
    assert rest.status == 200
    assert rest.events[0].id == f"{first.stream_id}:9"
    assert rest.events[-1].data.get("done") is True
    joined = first.payload[: first.payload.rfind(b"\n\n") + 2] + rest.payload
    # byte for byte, across replicas (the new stream's opening id and comment aside)
    assert without_opening(joined).removeprefix(sse.PING) == whole.payload
    assert len(first.text + rest.text) > 0
    assert fake.state.counters["requests"] == 1  # Claude was called once
    assert len(settled_a) == 1  # settled once, by the producing replica
    assert settled_b == []


async def test_a_stream_resumed_on_another_replica_holds_one_slot_and_is_charged_once(
    fake: FakeServer, redis_server: RedisServer, tmp_path: Path
) -> None:
    """Quotas shared in Redis, one concurrent stream, and tokens for two calls (a call
    reserves its input estimate + max_tokens 80, then is charged what it used: 68 here).
    The cut stream still holds its one slot (a new stream is a 429) but its resume on the
    other replica is admitted; once it is over the slot is free and its tokens were taken
    once: charged twice (136), the next call's reservation would not fit in the day's 200."""
    quotas = {"store": "redis", "redis_url": redis_server.url, "concurrent_streams": 1,
              "tokens_per_day": 200}  # fmt: skip
    claude = {"max_tokens": 80}
    async with (
        replica(tmp_path, "a", fake, redis_server, claude, quotas=quotas) as (_, port_a, _),
        replica(tmp_path, "b", fake, redis_server, claude, quotas=quotas) as (_, port_b, _),
        cutting_proxy(port_a, after=3) as proxy,
    ):
        first = await sse_request(proxy.port, target=long_stream(60))  # 8 + 60 tokens
        held = await sse_request(port_b, target=long_stream(3))
        rest = await sse_request(port_b, headers={"Last-Event-ID": first.last_id})
        replies: list[Reply] = []

        async def admitted() -> bool:  # A settles the call as its stream ends
            replies.append(await sse_request(port_b, target=long_stream(3)))
            return replies[-1].status == 200

        await eventually(admitted)  # never, with the slot kept or the tokens taken twice
        after = replies[-1]
    assert held.status == 429
    assert b"concurrent streams" in held.payload  # the slot, not the tokens
    assert rest.status == 200
    assert rest.events[-1].data.get("done") is True
    assert after.events[-1].data.get("done") is True
    assert fake.state.counters["requests"] == 2


async def test_a_stream_nobody_comes_back_for_ends_abandoned_for_every_replica(
    fake: FakeServer, redis_server: RedisServer, tmp_path: Path
) -> None:
    """Cut on A and never resumed: after the grace A cancels Claude, and a client that
    comes back later on B gets every event it missed, then `stream_abandoned`."""
    async with (
        replica(tmp_path, "a", fake, redis_server, detach_grace_seconds=0.5) as (_, port_a, _),
        replica(tmp_path, "b", fake, redis_server) as (_, port_b, _),
        cutting_proxy(port_a, after=2) as proxy,
    ):
        first = await sse_request(proxy.port, target=long_stream(400))
        await eventually(lambda: holds(fake.state.counters["streams_cancelled"] == 1))
        late = await sse_request(port_b, headers={"Last-Event-ID": first.last_id})
        whole = await sse_request(port_a, headers={"Last-Event-ID": f"{first.stream_id}:0"})
    assert late.status == 200
    assert late.events[0].id == f"{first.stream_id}:3"
    assert late.events[-1].data["error"]["type"] == "stream_abandoned"
    assert whole.payload.endswith(late.payload)
    assert fake.state.counters["requests"] == 1


async def test_readers_of_a_stream_produced_elsewhere_are_bounded_here_too(
    fake: FakeServer, redis_server: RedisServer, tmp_path: Path
) -> None:
    """`max_subscribers` bounds the clients reading one stream from the store on a replica
    that does not produce it, as the producer bounds its own."""
    slow = long_stream(200)
    async with (
        replica(tmp_path, "a", fake, redis_server) as (_, port_a, _),
        replica(tmp_path, "b", fake, redis_server, max_subscribers=2) as (_, port_b, _),
        cutting_proxy(port_a, after=3) as proxy,
    ):
        first = await sse_request(proxy.port, target=slow)
        cursor = {"Last-Event-ID": f"{first.stream_id}:0"}
        readers = [asyncio.create_task(sse_request(port_b, headers=cursor)) for _ in range(2)]
        # Both are reading the live stream from the store.
        await eventually(lambda: _is(readers_counted(redis_server, first.stream_id), 2))
        third = await sse_request(port_b, headers=cursor)
        done = await asyncio.gather(*readers)
    assert third.status == 429
    assert [r.status for r in done] == [200, 200]
    assert done[0].payload == done[1].payload


async def test_a_client_reading_on_another_replica_keeps_the_generation_going(
    fake: FakeServer, redis_server: RedisServer, tmp_path: Path
) -> None:
    """The producer's last own client left, but the client came back on another replica:
    that reader counts as attached, so the generation is not abandoned after the grace
    and the reader gets every event to the end."""
    slow = long_stream(160)  # ~4 s, the grace 1 s
    async with (
        replica(tmp_path, "a", fake, redis_server, detach_grace_seconds=1) as (_, port_a, _),
        replica(tmp_path, "b", fake, redis_server) as (_, port_b, _),
        cutting_proxy(port_a, after=3) as proxy,
    ):
        first = await sse_request(proxy.port, target=slow)
        rest = await sse_request(port_b, headers={"Last-Event-ID": first.last_id})
    assert rest.status == 200
    assert rest.events[-1].data.get("done") is True, rest.events[-1].data
    assert len(first.events) + len(rest.events) == 161  # every token, then `done`


async def test_a_quiet_stream_read_on_another_replica_gets_heartbeats(
    fake: FakeServer, redis_server: RedisServer, tmp_path: Path
) -> None:
    """A reader served from the store hears `: ping` while the stream is quiet, as the
    producer's own clients do."""
    quiet = ROUTE + "?prompt=%5B%5Bfake%20tokens%3D3%20tps%3D0.7%5D%5D%20slow"
    async with (
        replica(tmp_path, "a", fake, redis_server) as (_, port_a, _),
        replica(tmp_path, "b", fake, redis_server, claude={"heartbeat_seconds": 0.3}) as (
            _,
            port_b,
            _,
        ),
        cutting_proxy(port_a, after=1) as proxy,
    ):
        first = await sse_request(proxy.port, target=quiet)
        rest = await sse_request(port_b, headers={"Last-Event-ID": first.last_id})
    assert rest.status == 200
    assert rest.events[-1].data.get("done") is True
    assert rest.payload.count(b": ping\n\n") >= 2


async def test_a_store_readers_heartbeat_comes_a_heartbeat_after_its_last_bytes(
    fake: FakeServer, redis_server: RedisServer, tmp_path: Path
) -> None:
    """Tokens 1.4 s apart, read from the store on another replica with a 0.2 s heartbeat:
    no silence the reader's client sees is much longer than the heartbeat (the store is
    asked no longer than the heartbeat is due, not its own polling interval)."""
    quiet = ROUTE + "?prompt=%5B%5Bfake%20tokens%3D3%20tps%3D0.7%5D%5D%20slow"
    beat = 0.2
    async with (
        replica(tmp_path, "a", fake, redis_server) as (_, port_a, _),
        replica(tmp_path, "b", fake, redis_server, claude={"heartbeat_seconds": beat}) as (
            _,
            port_b,
            _,
        ),
        cutting_proxy(port_a, after=1) as proxy,
    ):
        first = await sse_request(proxy.port, target=quiet)
        reads = await timed_response(port_b, quiet, headers={"Last-Event-ID": first.last_id})
    assert b'"done"' in joined(reads)
    silences = gaps(reads)[1:]  # (the first: the resume's own answer)
    assert joined(reads).count(b": ping\n\n") >= 4
    assert max(silences) <= beat + 0.15, silences


async def test_a_stopping_replica_ends_its_store_readers_within_the_grace(
    fake: FakeServer, redis_server: RedisServer, tmp_path: Path
) -> None:
    """SIGTERM on a replica reading a stream produced elsewhere: after its grace the reader
    gets `shutting_down` (no id: its last event is still where it resumes), the process
    exits, and the stream goes on being read on the producer."""
    slow = long_stream(400)  # ~10 s
    async with (
        replica(tmp_path, "a", fake, redis_server) as (_, port_a, _),
        replica(tmp_path, "b", fake, redis_server) as (process_b, port_b, _),
        cutting_proxy(port_a, after=3) as proxy,
    ):
        first = await sse_request(proxy.port, target=slow)
        reading = asyncio.create_task(sse_request(port_b, headers={"Last-Event-ID": first.last_id}))
        await eventually(lambda: _is(readers_counted(redis_server, first.stream_id), 1))
        process_b.send_signal(signal.SIGTERM)  # grace 1 s
        read = await reading
        code = await asyncio.to_thread(process_b.wait, 10)
        rest = await sse_request(port_a, headers={"Last-Event-ID": read.last_id})
    assert code == 0
    assert read.events[-1].data["error"]["type"] == "shutting_down"
    assert read.events[-1].id is None
    assert rest.status == 200
    assert rest.events[-1].data.get("done") is True
    assert len(first.events) + len(read.events) - 1 + len(rest.events) == 401


async def test_a_store_read_that_starts_after_shutdown_stopped_the_readers_ends_at_once(
    fake: FakeServer, sidecar_for: SidecarFactory, redis_server: RedisServer
) -> None:
    """Shutdown stops the store readers of the moment; one that starts after (it was in its
    lookup, or came on a kept-alive connection) gets the same `shutting_down` without an
    id at once, instead of reading on until the listener cuts it with no final event."""
    config = {"resume": {"store": "redis", "redis_url": redis_server.url,
                         "detach_grace_seconds": 10}}  # fmt: skip
    async with (
        sidecar_for(config) as producer,
        sidecar_for(config) as reader,
        cutting_proxy(producer.port, after=3) as proxy,
    ):
        first = await sse_request(proxy.port, target=SLOW)
        assert reader.runtime.resume.stop_readers() == 0  # the grace is over: none yet
        late = await sse_request(reader.port, headers={"Last-Event-ID": first.last_id})
        rest = await sse_request(producer.port, headers={"Last-Event-ID": first.last_id})
    assert late.status == 200
    assert [e.data["error"]["type"] for e in late.events] == ["shutting_down"]
    assert late.events[0].id is None  # resume from the last event, elsewhere
    assert rest.events[-1].data.get("done") is True
    assert len(first.events) + len(rest.events) == 31


async def test_a_killed_producer_leaves_its_events_and_then_stream_lost(
    fake: FakeServer, redis_server: RedisServer, tmp_path: Path
) -> None:
    slow = long_stream(400)
    async with (
        replica(tmp_path, "a", fake, redis_server) as (process_a, port_a, _),
        replica(tmp_path, "b", fake, redis_server) as (_, port_b, _),
        cutting_proxy(port_a, after=5) as proxy,
    ):
        first = await sse_request(proxy.port, target=slow)
        # More events were generated, and written to Redis, after the cut.
        await eventually(
            lambda: _at_least(events_stored(redis_server, first.stream_id), len(first.events) + 5)
        )
        process_a.send_signal(signal.SIGKILL)
        loop = asyncio.get_running_loop()
        started = loop.time()
        rest = await sse_request(port_b, headers={"Last-Event-ID": first.last_id})
        took = loop.time() - started
        again = await sse_request(port_b, headers={"Last-Event-ID": rest.last_id})
    assert rest.status == 200
    tokens = [e for e in rest.events if "token" in e.data]
    assert len(tokens) >= 5  # what the dead replica buffered after the cut
    assert rest.events[0].id == f"{first.stream_id}:6"
    assert rest.events[-1].data["error"]["type"] == "stream_lost"
    assert took < 10  # the liveness key lapses within seconds: never a hang
    assert again.status == 204  # the lost event is now the stream's final one


async def test_a_client_ahead_of_a_killed_producers_writes_gets_stream_lost_not_400(
    fake: FakeServer, redis_server: RedisServer, tmp_path: Path
) -> None:
    """A producer serves its own client before its batched write to Redis: killed between
    the two, its client has events the store never got. A reconnect naming the client's
    real last event ends with `stream_lost` after it, as any lost stream does."""
    slow = long_stream(400)
    async with (
        replica(tmp_path, "a", fake, redis_server) as (process_a, port_a, _),
        replica(tmp_path, "b", fake, redis_server) as (_, port_b, _),
        cutting_proxy(port_a, after=5) as proxy,
    ):
        first = await sse_request(proxy.port, target=slow)
        await asyncio.sleep(0.3)
        process_a.send_signal(signal.SIGKILL)
        ahead = (
            await events_stored(redis_server, first.stream_id) + 3
        )  # what the client saw and the store never got
        rest = await sse_request(port_b, headers={"Last-Event-ID": f"{first.stream_id}:{ahead}"})
        again = await sse_request(port_b, headers={"Last-Event-ID": rest.last_id})
        # Another client (a second tab) whose last event is one the store never got, or
        # one past the client that came back first: the same end, never an empty read
        # (its EventSource would come back for ever) nor a 400.
        others = [
            await sse_request(port_b, headers={"Last-Event-ID": f"{first.stream_id}:{n}"})
            for n in (ahead - 1, ahead + 2)
        ]
    assert rest.status == 200
    assert [e.id for e in rest.events] == [f"{first.stream_id}:{ahead + 1}"]
    assert rest.events[-1].data["error"]["type"] == "stream_lost"
    assert again.status == 204  # the lost event is the stream's final one now
    for other in others:
        assert (other.status, other.payload) == (200, rest.payload)


async def test_a_cursor_past_a_live_streams_end_is_refused_on_another_replica_too(
    fake: FakeServer, redis_server: RedisServer, tmp_path: Path
) -> None:
    """An event a stream still produced elsewhere never sent is a 400, as on the replica
    producing it, not a read that waits for the whole stream and gets nothing (holding a
    reader's place and keeping an abandoned generation going meanwhile)."""
    async with (
        replica(tmp_path, "a", fake, redis_server) as (_, port_a, _),
        replica(tmp_path, "b", fake, redis_server) as (_, port_b, _),
        aiohttp.ClientSession() as http,
        http.get(f"http://127.0.0.1:{port_a}{long_stream(400)}") as stream,
    ):
        stream_id = stream.headers["Sidecar-Stream-Id"]
        await stream.content.readuntil(b"\n\n")
        cursor = {"Last-Event-ID": f"{stream_id}:999"}
        here = await sse_request(port_a, headers=cursor)
        elsewhere = await sse_request(port_b, "POST", ROUTE, cursor, b"{}", read_timeout=8)
        assert not stream.content.at_eof()  # refused long before the stream's end
    assert here.status == 400
    assert (elsewhere.status, elsewhere.payload) == (here.status, here.payload)
    assert b"never sent" in elsewhere.payload


# ---------------------------------------------------------------------------- anthropic route


async def test_the_anthropic_route_stays_byte_faithful_unless_resume_is_asked_for(
    fake: FakeServer, sidecar_for: SidecarFactory
) -> None:
    body = json.dumps({
        "model": "claude-sonnet-5-5", "max_tokens": 64, "stream": True,
        "messages": [{"role": "user", "content": "[[fake tokens=12 tps=60]] hi"}],
    }).encode()  # fmt: skip
    async with sidecar_for(resumable()) as sidecar:
        plain = await sse_request(sidecar.port, "POST", "/v1/messages", {}, body)
        async with cutting_proxy(sidecar.port, after=6) as proxy:
            opted = await sse_request(
                proxy.port, "POST", "/v1/messages", {"Sidecar-Resume": "on"}, body
            )
        stream_id = opted.headers["sidecar-stream-id"]
        cursor = f"{stream_id}:6"
        assert opted.payload.count(b"\n\n") == 6
        rest = await sse_request(
            sidecar.port, "POST", "/v1/messages", {"Last-Event-ID": cursor}, body
        )
    assert b"id: " not in plain.payload  # the default: Claude's bytes exactly
    assert "sidecar-stream-id" not in plain.headers
    resumed = [block for block in (opted.payload + rest.payload).split(b"\n\n") if block]
    events = [block for block in plain.payload.split(b"\n\n") if block]
    # The same events as the plain stream, each with an `id:` line put in front.
    assert [b.split(b"\n", 1)[0] for b in resumed] == [
        f"id: {stream_id}:{n}".encode() for n in range(1, len(resumed) + 1)
    ]
    unnumbered = [b.split(b"\n", 1)[1] for b in resumed]
    assert [b.split(b"\n", 1)[0] for b in unnumbered] == [b.split(b"\n", 1)[0] for b in events]
    deltas = [b for b in unnumbered if b.startswith(b"event: content_block_delta")]
    assert deltas == [b for b in events if b.startswith(b"event: content_block_delta")]
    assert fake.state.counters["requests"] == 2  # the resume did not call Claude


async def test_a_resumed_read_carries_the_request_id_as_any_answer_does(
    fake: FakeServer, sidecar_for: SidecarFactory
) -> None:
    """A resume is a request of its own: its answers carry its `X-Request-Id` (the
    client's, when well-formed), and on the Anthropic route its refusals that id in
    `request-id` as well, as every refusal there does. Its 200 made no Claude call, so it
    carries none of Claude's headers (no `request-id`), as a cache hit does."""
    body = json.dumps({
        "model": "claude-sonnet-5-5", "max_tokens": 64, "stream": True,
        "messages": [{"role": "user", "content": "[[fake tokens=6 tps=0]] hi"}],
    }).encode()  # fmt: skip
    own = {"X-Request-Id": "req_mine"}
    async with sidecar_for(resumable()) as sidecar:
        first = await sse_request(
            sidecar.port, "POST", "/v1/messages", {"Sidecar-Resume": "on"}, body
        )
        cursor = first.headers["sidecar-stream-id"] + ":2"
        resumed = await sse_request(
            sidecar.port, "POST", "/v1/messages", {"Last-Event-ID": cursor, **own}, body
        )
        prompt = await sse_request(sidecar.port, "GET", ROUTE + "?prompt=hi")
        again = prompt.headers["sidecar-stream-id"] + ":1"
        replies = [
            await sse_request(sidecar.port, method, ROUTE, {"Last-Event-ID": again, **own})
            for method in ("GET", "HEAD", "POST")
        ]
        async with aiohttp.ClientSession() as http:
            for cursor_ in ("A" * 24 + ":1", "x:1"):
                async with http.post(
                    sidecar.url + "/v1/messages", data=body, headers={"Last-Event-ID": cursor_}
                ) as refused:
                    error = await refused.json()
                    assert refused.status in (400, 404)
                    assert refused.headers["request-id"] == refused.headers["X-Request-Id"]
                    assert refused.headers["request-id"] == error["request_id"]
    assert first.headers["request-id"]  # Claude's, on the call that made the stream
    assert resumed.status == 200
    assert resumed.headers["x-request-id"] == "req_mine"
    assert "request-id" not in resumed.headers
    assert [reply.status for reply in replies] == [200, 200, 200]
    assert [reply.headers["x-request-id"] for reply in replies] == ["req_mine"] * 3


async def test_the_anthropic_sdk_reads_a_resumable_stream_untouched(
    fake: FakeServer, sidecar_for: SidecarFactory
) -> None:
    import anthropic

    config = {**resumable(), "routes": [{"path": "/v1/", "handler": "anthropic",
                                         "resume": {"enabled": True}}]}  # fmt: skip
    async with sidecar_for(config) as sidecar:
        client = anthropic.AsyncAnthropic(base_url=sidecar.url, api_key="unused", max_retries=0)
        async with client.messages.stream(
            model="claude-sonnet-5-5", max_tokens=64,
            messages=[{"role": "user", "content": "[[fake tokens=8]] hello"}],
        ) as stream:  # fmt: skip
            text = await stream.get_final_text()
        await client.close()
    assert len(text.split()) >= 7


def _docs_example(marker: str) -> str:
    """The Python block that follows `marker` in docs/streaming.md."""
    text = (Path(__file__).parent.parent / "docs" / "streaming.md").read_text()
    start = text.index("```python\n", text.index(marker)) + len("```python\n")
    return text[start : text.index("```", start)]


async def test_the_docs_sdk_resume_example_reads_a_stream_cut_inside_an_event_whole(
    fake: FakeServer, sidecar_for: SidecarFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """docs/streaming.md's Python example (the official SDK, `Sidecar-Resume: on`) cut
    after an event's `id:` line and before the event: its resume neither skips that event
    nor repeats one, and Claude is called once."""
    import anthropic

    monkeypatch.setenv("ANTHROPIC_API_KEY", "unused")
    example = _docs_example("The SDKs' stream objects do not show event ids")
    async with (
        sidecar_for(resumable()) as sidecar,
        # Cut right after event 7's `id:` line: the event itself never arrives.
        cutting_proxy(sidecar.port, after=0, at=re.compile(rb"\nid: [^\n]*:7\n")) as proxy,
    ):
        port = proxy.port
        names: dict[str, Any] = {}
        code = example.replace('"http://sidecar:8080"', f'"http://127.0.0.1:{port}"')
        code = code.replace('"Hello"', '"[[fake tokens=20]] Hello"')
        await asyncio.to_thread(exec, code, names)
        assert fake.state.counters["requests"] == 1  # the resume did not call Claude
        plain = anthropic.AsyncAnthropic(base_url=sidecar.url, max_retries=0)
        async with plain.messages.stream(
            model="claude-sonnet-5-5", max_tokens=1024,
            messages=[{"role": "user", "content": "[[fake tokens=20]] Hello"}],
        ) as stream:  # fmt: skip
            whole = await stream.get_final_text()
        await plain.close()
    assert names["attempt"] == 1  # it was cut, and read on once
    assert names["done"]
    assert names["text"] == whole


async def test_an_anthropic_stream_whose_producer_was_killed_ends_with_anthropics_error_event(
    fake: FakeServer, redis_server: RedisServer, tmp_path: Path
) -> None:
    """Killed mid-block (SIGKILL: no final event written), the stream read on another
    replica ends as Anthropic's protocol ends a stream that failed after its first event:
    one `event: error` with its error JSON, after whole events only (no block to close
    in this format: the SDK raises on the error), and the official SDK raises it."""
    import anthropic

    body = json.dumps({
        "model": "claude-sonnet-5-5", "max_tokens": 64, "stream": True,
        "messages": [{"role": "user", "content": "[[fake tokens=40 after=3 fault=stall_midstream]] hi"}],
    }).encode()  # fmt: skip
    async with (
        replica(tmp_path, "a", fake, redis_server) as (process_a, port_a, _),
        replica(tmp_path, "b", fake, redis_server) as (_, port_b, _),
    ):
        async with aiohttp.ClientSession() as http:
            async with http.post(
                f"http://127.0.0.1:{port_a}/v1/messages", data=body,
                headers={"Sidecar-Resume": "on", "Content-Type": "application/json"},
            ) as response:  # fmt: skip
                stream_id = response.headers["Sidecar-Stream-Id"]
                # message_start, content_block_start, ping, 3 deltas: then the stall
                await eventually(lambda: _at_least(events_stored(redis_server, stream_id), 6))
                process_a.send_signal(signal.SIGKILL)
                await asyncio.to_thread(process_a.wait, 10)
        cursor = {"Last-Event-ID": f"{stream_id}:2"}
        rest = await sse_request(port_b, "POST", "/v1/messages", cursor, body)
        client = anthropic.AsyncAnthropic(
            base_url=f"http://127.0.0.1:{port_b}", api_key="unused", max_retries=0
        )
        with pytest.raises(anthropic.APIStatusError) as raised:
            async with client.messages.stream(
                model="claude-sonnet-5-5", max_tokens=64,
                messages=[{"role": "user", "content": "hi"}],
                extra_headers={"Last-Event-ID": f"{stream_id}:0"},
            ) as stream:  # fmt: skip
                await stream.get_final_text()
        await client.close()
    blocks = [block for block in rest.payload.split(b"\n\n") if block]
    assert all(block.startswith(b"id: ") for block in blocks)  # whole events, each numbered
    names = [block.split(b"\n")[1] for block in blocks]
    assert names[-1] == b"event: error"
    assert names.count(b"event: error") == 1
    error = json.loads(blocks[-1].split(b"\n")[2].removeprefix(b"data: "))
    assert error["type"] == "error"
    assert error["error"]["type"] == "stream_lost"
    assert raised.value.body == error  # the SDK raised Anthropic's error event as sent


# ---------------------------------------------------------------------------- store failures


async def test_a_store_that_stalls_under_a_reader_elsewhere_is_a_lost_connection_not_a_lost_stream(
    fake: FakeServer, sidecar_for: SidecarFactory, redis_server: RedisServer
) -> None:
    """Redis stops answering (SIGSTOP) while a client reads a stream from it on another
    replica: the read ends with no final event (no `stream_lost`: the stream goes on), and
    the client's resume from its last event once Redis answers gets the rest."""
    config = {"resume": {"store": "redis", "redis_url": redis_server.url,
                         "redis_timeout_seconds": 0.3, "detach_grace_seconds": 10}}  # fmt: skip
    slow = ROUTE + "?prompt=%5B%5Bfake%20tokens%3D60%20tps%3D20%5D%5D%20tell%20me"
    async with (
        sidecar_for(config) as one,
        sidecar_for(config) as two,
        aiohttp.ClientSession() as http,
        http.get(one.url + slow) as producing,
    ):
        stream_id = producing.headers["Sidecar-Stream-Id"]
        reading = asyncio.create_task(
            sse_request(two.port, headers={"Last-Event-ID": f"{stream_id}:0"})
        )

        async def reader_joined() -> bool:
            return await readers_counted(redis_server, stream_id) > 0

        await eventually(reader_joined)
        async with redis_server.stalled(), asyncio.timeout(10):
            cut = await reading
        first = parse_events(await producing.read())
        rest = await sse_request(two.port, headers={"Last-Event-ID": cut.last_id})
    assert first[-1].data.get("done") is True
    assert cut.status == 200
    assert all(event.id is not None for event in cut.events)  # no final error event
    assert [e.id for e in cut.events + rest.events] == [e.id for e in first]
    assert rest.events[-1].data.get("done") is True


async def test_a_resume_store_outage_is_logged_once_and_its_end_once(
    fake: FakeServer,
    sidecar_for: SidecarFactory,
    redis_server: RedisServer,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Every stream that loses its resume is counted; the log says when the outage began
    and when it ended, not once per request."""
    caplog.set_level(logging.INFO, logger="sidecar.resume")
    config = {"resume": {"store": "redis", "redis_url": redis_server.url,
                         "redis_timeout_seconds": 0.5}}  # fmt: skip
    async with sidecar_for(config) as sidecar:
        await redis_server.kill()
        for _ in range(3):
            reply = await sse_request(sidecar.port)
            assert reply.headers["sidecar-resume"] == "unavailable"
        await redis_server.start()
        assert (await sse_request(sidecar.port)).headers["sidecar-stream-id"]
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("resume store")]
    assert lines == ["resume store failed", "resume store recovered"]


@pytest.mark.parametrize("mode", ["fail_open", "fail_closed"])
async def test_a_resume_store_outage_never_fails_the_stream_unless_told_to(
    fake: FakeServer, sidecar_for: SidecarFactory, redis_server: RedisServer, mode: str
) -> None:
    config = {"resume": {"store": "redis", "redis_url": redis_server.url,
                         "redis_timeout_seconds": 0.5, "on_store_error": mode}}  # fmt: skip
    async with sidecar_for(config) as sidecar:
        healthy = await sse_request(sidecar.port, target=SLOW)
        await redis_server.kill()
        reply = await sse_request(sidecar.port, target=SLOW)
        async with aiohttp.ClientSession() as http:
            async with http.get(sidecar.admin_url + "/metrics") as response:
                metrics = await response.text()
            async with http.get(sidecar.admin_url + "/readyz") as response:
                ready = response.status, (await response.json()).get("checks", {})
    assert healthy.headers["sidecar-stream-id"]
    errors = [
        line for line in metrics.splitlines() if line.startswith("sidecar_resume_store_errors")
    ]
    assert errors
    assert f'sidecar_resume_on_store_error="{mode}"' in errors[0]
    if mode == "fail_open":
        assert reply.status == 200
        assert reply.headers["sidecar-resume"] == "unavailable"  # streamed, but not resumable
        assert "sidecar-stream-id" not in reply.headers
        assert reply.events[-1].data.get("done") is True
        assert fake.state.counters["requests"] == 2
        assert ready == (200, {})  # serving without resume is what fail_open asks for
    else:
        assert ready == (503, {"resume_store": "unavailable"})
        assert reply.status == 503
        assert json.loads(reply.payload)["error"]["type"] == "overloaded"
        assert fake.state.counters["requests"] == 1  # refused before Claude was called


async def test_readers_of_one_stream_are_bounded(
    fake: FakeServer, sidecar_for: SidecarFactory
) -> None:
    slow = long_stream(200)
    async with sidecar_for(resumable(max_subscribers=2)) as sidecar:
        first = asyncio.create_task(sse_request(sidecar.port, target=slow))
        await eventually(lambda: holds(len(sidecar.runtime.resume.hub) == 1))
        (stream_id,) = sidecar.runtime.resume.hub.stream_ids()
        second = asyncio.create_task(
            sse_request(sidecar.port, headers={"Last-Event-ID": f"{stream_id}:0"})
        )

        async def two_readers() -> bool:
            live = sidecar.runtime.resume.hub.get(stream_id)
            return live is not None and len(live[0].subscribers) == 2

        await eventually(two_readers)
        third = await sse_request(sidecar.port, headers={"Last-Event-ID": f"{stream_id}:0"})
        async with aiohttp.ClientSession() as http:
            async with http.delete(f"{sidecar.url}{ROUTE}/{stream_id}") as response:
                assert response.status == 204
        one, two = await first, await second
    assert third.status == 429
    # Both readers got every event, the same bytes (the first one's opening id aside).
    assert without_opening(one.payload) == two.payload
    assert one.events[-1].data["error"]["type"] == "cancelled"


async def test_a_cancel_on_another_replica_stops_the_producer(
    fake: FakeServer, redis_server: RedisServer, tmp_path: Path
) -> None:
    """A `DELETE` on B stops A's call to Claude and A settles it: with one concurrent
    stream allowed (quotas shared in Redis), a new stream is admitted right after."""
    slow = long_stream(400)
    quotas = {"store": "redis", "redis_url": redis_server.url, "concurrent_streams": 1}
    async with (
        replica(tmp_path, "a", fake, redis_server, quotas=quotas) as (_, port_a, _),
        replica(tmp_path, "b", fake, redis_server, quotas=quotas) as (_, port_b, _),
        aiohttp.ClientSession() as http,
        http.get(f"http://127.0.0.1:{port_a}{slow}") as stream,
    ):
        stream_id = stream.headers["Sidecar-Stream-Id"]
        assert b"token" in await next_event(stream.content)
        async with http.delete(f"http://127.0.0.1:{port_b}{ROUTE}/{stream_id}") as response:
            assert response.status == 204  # B asks A, through Redis
        async with http.delete(f"http://127.0.0.1:{port_b}{ROUTE}/{'D' * 24}") as response:
            assert response.status == 404
        rest = await asyncio.wait_for(stream.read(), 15)

        async def admitted() -> bool:  # A settles the call as its stream ends
            return (await sse_request(port_b, target=long_stream(3))).status == 200

        await eventually(admitted)  # a slot kept by the cancelled stream: never
    events = [e for e in rest.split(b"\n\n") if e.strip()]
    assert b'"type":"cancelled"' in events[-1]
    assert len(events) < 400  # stopped long before the end
    await eventually(lambda: holds(fake.state.counters["streams_cancelled"] == 1))


async def test_a_drained_replica_ends_its_streams_resumable_elsewhere(
    fake: FakeServer, redis_server: RedisServer, tmp_path: Path
) -> None:
    slow = long_stream(400)
    async with (
        replica(tmp_path, "a", fake, redis_server) as (process_a, port_a, path_a),
        replica(tmp_path, "b", fake, redis_server) as (_, port_b, _),
        cutting_proxy(port_a, after=3) as proxy,
    ):
        first = await sse_request(proxy.port, target=slow)  # cut: detached, still generating
        process_a.send_signal(signal.SIGTERM)  # grace 1 s, then streams end
        try:
            await asyncio.to_thread(process_a.wait, 60)
        except subprocess.TimeoutExpired:
            log_tail = path_a.with_suffix(".log").read_text(errors="replace")[-3000:]
            pytest.fail(f"the drained replica did not exit:\n{log_tail}")
        rest = await sse_request(port_b, headers={"Last-Event-ID": first.last_id})
    assert rest.status == 200
    final = rest.events[-1].data["error"]
    assert final["type"] == "shutting_down"
    assert "another replica" in final["message"]
    assert len([e for e in rest.events if "token" in e.data]) > 3  # generated after the cut


ANTHROPIC_SLOW = json.dumps({
    "model": "claude-sonnet-5-5", "max_tokens": 1024, "stream": True,
    "messages": [{"role": "user", "content": "[[fake tokens=400 tps=40]] long"}],
}).encode()  # fmt: skip


async def _read_and_cancelled_on_its_own_kind_only(produce: int, read: int) -> None:
    """Streams produced through `produce` are read and cancelled through `read` only on a
    route of the kind that started them: their events are in that route's format."""
    done = await sse_request(produce, target=SLOW)  # the prompt route's, finished
    cursor = f"{done.stream_id}:3"
    for path in ("/v1/messages", "/api/chat"):
        other = await sse_request(read, "POST", path, {"Last-Event-ID": cursor}, b"{}")
        assert other.status == 400, (path, other.payload)
        assert b"another kind" in other.payload
        assert b'"token"' not in other.payload
    own = await sse_request(read, headers={"Last-Event-ID": cursor})
    assert own.status == 200
    assert own.events[-1].data.get("done") is True
    async with (
        aiohttp.ClientSession() as http,
        http.post(
            f"http://127.0.0.1:{produce}/v1/messages",
            data=ANTHROPIC_SLOW,
            headers={"Sidecar-Resume": "on", "Content-Type": "application/json"},
        ) as live,
    ):
        stream_id = live.headers["Sidecar-Stream-Id"]
        assert b"message_start" in await next_event(live.content)
        other = await sse_request(read, headers={"Last-Event-ID": f"{stream_id}:1"})
        assert other.status == 400
        assert b"another kind" in other.payload
        async with http.delete(f"http://127.0.0.1:{read}{ROUTE}/{stream_id}") as response:
            assert response.status == 404  # not a prompt stream: nothing to stop there
        async with http.delete(f"http://127.0.0.1:{read}/v1/messages/{stream_id}") as response:
            assert response.status == 204
        rest = await asyncio.wait_for(live.read(), 15)
    assert b'"type": "cancelled"' in rest


async def test_a_stream_is_resumed_and_cancelled_only_on_a_route_of_its_kind(
    fake: FakeServer, sidecar_for: SidecarFactory
) -> None:
    async with sidecar_for(resumable()) as sidecar:
        await _read_and_cancelled_on_its_own_kind_only(sidecar.port, sidecar.port)
    assert fake.state.counters["requests"] == 2  # no resume called Claude


async def test_a_stream_is_resumed_and_cancelled_only_on_its_kind_on_another_replica(
    fake: FakeServer, redis_server: RedisServer, tmp_path: Path
) -> None:
    async with (
        replica(tmp_path, "a", fake, redis_server) as (_, port_a, _),
        replica(tmp_path, "b", fake, redis_server) as (_, port_b, _),
    ):
        await _read_and_cancelled_on_its_own_kind_only(port_a, port_b)
    assert fake.state.counters["requests"] == 2


async def test_a_route_can_turn_resume_off(fake: FakeServer, sidecar_for: SidecarFactory) -> None:
    config = {"routes": [{"path": ROUTE, "handler": "prompt", "resume": {"enabled": False}}]}
    async with sidecar_for(config) as sidecar:
        reply = await sse_request(sidecar.port, target=SLOW)
        again = await sse_request(sidecar.port, target=SLOW, headers={"Last-Event-ID": "31"})
    assert "sidecar-stream-id" not in reply.headers
    # 30 tokens and `done`, each numbered.
    assert [e.id for e in reply.events if e.id] == [str(n) for n in range(1, 32)]
    assert again.status == 204  # a reconnect is told to stop, as before resume existed
    assert fake.state.counters["requests"] == 1


async def test_a_call_that_never_streams_gets_no_stream_id(
    fake: FakeServer, sidecar_for: SidecarFactory
) -> None:
    async with sidecar_for(resumable()) as sidecar:
        body = json.dumps({"prompt": "[[fake fault=overloaded]] busy"}).encode()
        refused = await sse_request(sidecar.port, "POST", ROUTE, {}, body)
        assert len(sidecar.runtime.resume.hub) == 0
        assert sidecar.runtime.resume.store.unfinished() == 0  # its empty buffer just expires
    assert refused.status == 503
    assert "sidecar-stream-id" not in refused.headers


async def test_redis_failing_mid_stream_never_fails_the_stream(
    fake: FakeServer, sidecar_for: SidecarFactory, redis_server: RedisServer
) -> None:
    config = {"resume": {"store": "redis", "redis_url": redis_server.url,
                         "redis_timeout_seconds": 0.3}}  # fmt: skip
    slow = ROUTE + "?prompt=%5B%5Bfake%20tokens%3D40%20tps%3D40%5D%5D%20go"
    async with (
        sidecar_for(config) as sidecar,
        aiohttp.ClientSession() as http,
        http.get(sidecar.url + slow) as stream,
    ):
        assert stream.headers["Sidecar-Stream-Id"]
        assert b"token" in await next_event(stream.content)
        await redis_server.kill()  # the store goes away under a live stream
        raw = await asyncio.wait_for(stream.read(), 20)
    events = [e for e in raw.split(b"\n\n") if e.strip()]
    assert b'"done":true' in events[-1]  # served from memory to the end
    assert sum(b'"token"' in e for e in events) == 39  # the rest of the 40, none lost


async def test_a_stream_over_here_is_known_over_before_its_end_reaches_the_store(
    fake: FakeServer, sidecar_for: SidecarFactory, redis_server: RedisServer
) -> None:
    """The replica that produced a stream knows it is over as its client does, though its
    end is not written to Redis yet (batches go a few ms apart; here Redis does not
    answer at all): a Stop is told nothing is live, a resume from the end is over."""
    config = {"resume": {"store": "redis", "redis_url": redis_server.url,
                         "redis_timeout_seconds": 0.3}}  # fmt: skip
    slow = ROUTE + "?prompt=%5B%5Bfake%20tokens%3D20%20tps%3D40%5D%5D%20go"
    async with sidecar_for(config) as sidecar, aiohttp.ClientSession() as http:
        async with http.get(sidecar.url + slow) as stream:
            stream_id = stream.headers["Sidecar-Stream-Id"]
            assert b"token" in await next_event(stream.content)
            async with redis_server.stalled():
                raw = await asyncio.wait_for(stream.read(), 20)
                assert b'"done":true' in raw
                async with http.delete(f"{sidecar.url}{ROUTE}/{stream_id}") as cancel:
                    cancelled = cancel.status
                last = {"Last-Event-ID": f"{stream_id}:21"}  # the `done` event's id
                async with http.get(sidecar.url + ROUTE, headers=last) as over:
                    resumed = over.status
    assert b"id: " + stream_id.encode() + b":21\n" in raw
    assert (cancelled, resumed) == (404, 204)


async def test_a_redis_restarted_empty_under_a_live_stream_holds_it_whole_again(
    fake: FakeServer, redis_server: RedisServer, tmp_path: Path
) -> None:
    """Redis restarts with nothing (no persistence) while replica A produces a stream: A
    writes every event it keeps to Redis again, so a client resuming on replica B from
    before the restart gets exactly what A's own client got, not a 204."""
    async with (
        replica(tmp_path, "a", fake, redis_server, redis_timeout_seconds=0.3) as (_, port_a, _),
        replica(tmp_path, "b", fake, redis_server, redis_timeout_seconds=0.3) as (_, port_b, _),
        aiohttp.ClientSession() as http,
        http.get(f"http://127.0.0.1:{port_a}{long_stream(160)}") as stream,
    ):
        stream_id = stream.headers["Sidecar-Stream-Id"]
        for _ in range(5):
            await next_event(stream.content)
        await redis_server.kill()  # every key is gone
        await redis_server.start()
        seen = await stream.read()  # A's own client reads on to the end (~4 s)
        early = await sse_request(port_b, headers={"Last-Event-ID": f"{stream_id}:2"})
        whole = await sse_request(port_b, headers={"Last-Event-ID": f"{stream_id}:0"})
    assert early.status == whole.status == 200
    assert [e.id for e in whole.events] == [f"{stream_id}:{n}" for n in range(1, 162)]
    assert whole.events[-1].data.get("done") is True
    assert whole.payload.endswith(early.payload)
    assert whole.payload.endswith(seen)  # byte for byte what A's own client got
    assert fake.state.counters["requests"] == 1


async def test_a_reader_elsewhere_left_behind_by_the_buffer_is_ended_never_given_a_gap(
    fake: FakeServer, sidecar_for: SidecarFactory, redis_server: RedisServer
) -> None:
    """A client reading a stream from the store on another replica, slower than it is
    produced, until events it had not read left the buffer (`max_buffer_bytes`): its read
    ends with no final event (as the producer cuts its own reader left that far behind),
    and its resume is told the events are gone; it never gets the stream with a hole."""
    config = {"resume": {"store": "redis", "redis_url": redis_server.url,
                         "max_buffer_bytes": 8192, "detach_grace_seconds": 10}}  # fmt: skip
    # A second before the first token (the reader elsewhere starts from the start), then
    # every token at once.
    flood = json.dumps(
        {"prompt": "[[fake tokens=3000 tps=0 ttft_ms=1000]] flood", "max_tokens": 3000}
    )
    async with (
        sidecar_for(config) as producer,
        sidecar_for(config) as elsewhere,
        aiohttp.ClientSession() as http,
        http.post(producer.url + ROUTE, data=flood, headers={"Content-Type": "application/json"})
        as stream,
    ):  # fmt: skip
        stream_id = stream.headers["Sidecar-Stream-Id"]
        reader, writer = await unread_resume(elsewhere, stream_id)
        whole = await stream.read()  # the producer's own client keeps up
        assert b'"done"' in whole
        received = await asyncio.wait_for(reader.read(), 30)
        writer.close()
        assert received.endswith(b"\r\n0\r\n\r\n")  # the response ended
        body = dechunk(received.partition(b"\r\n\r\n")[2])
        numbers = [int(n) for n in re.findall(rb"id: [\w-]+:(\d+)", body)]
        # What it got (maybe nothing: the first batch it read from the store may already
        # have been trimmed) is the stream from its start, with no event skipped.
        assert numbers == list(range(1, 1 + len(numbers)))
        assert b'"done"' not in body
        assert b'"error"' not in body  # no final event: the stream was not lost
        last = numbers[-1] if numbers else 0
        again = await sse_request(elsewhere.port, headers={"Last-Event-ID": f"{stream_id}:{last}"})
        results = await resume_results(elsewhere)
    assert again.status == 204  # the events after it are gone: an EventSource stops
    assert fake.state.counters["requests"] == 1
    # The read that fell behind is counted as what it was (its events expired), not as a
    # resume that reached the stream's end; so is the resume after it.
    assert results == {"expired": 2}


async def unread_resume(
    sidecar: SidecarServer, stream_id: str
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """A resume of `stream_id` from its start, over small socket buffers, whose body is read
    only once the stream is over (its head is read: a 200)."""
    shrink_send_buffers(sidecar)
    reader, writer = await small_buffered(sidecar.port)
    writer.write(
        f"GET {ROUTE} HTTP/1.1\r\nHost: sidecar\r\nLast-Event-ID: {stream_id}:0\r\n"
        "Connection: close\r\n\r\n".encode()
    )
    assert (await reader.readuntil(b"\r\n")).startswith(b"HTTP/1.1 200")
    return reader, writer


async def resume_results(sidecar: SidecarServer) -> dict[str, float]:
    """`sidecar.stream.resumes` by `sidecar.resume.result`, as scraped now."""
    async with (
        aiohttp.ClientSession() as http,
        http.get(sidecar.admin_url + "/metrics") as response,
    ):
        return counts(await response.text(), "sidecar_stream_resumes", "sidecar_resume_result")


async def test_a_live_reader_left_behind_by_the_buffer_is_cut_and_counted_as_expired(
    fake: FakeServer, sidecar_for: SidecarFactory
) -> None:
    """A resume of a stream live here, read slower than the stream is produced while its
    first client keeps up: once it is further behind than the buffer keeps, the hub cuts it
    (its next resume finds the events gone). Counted as `expired`, never as `resumed`."""
    config = {"resume": {"max_buffer_bytes": 8192, "detach_grace_seconds": 10}}
    # A second before the first token (the resume attaches first), then every token at once:
    # far more than the reader's socket buffers, the high-water mark and the buffer hold.
    flood = json.dumps(
        {"prompt": "[[fake tokens=8000 tps=0 ttft_ms=1000]] flood", "max_tokens": 8000}
    )
    async with (
        sidecar_for(config) as sidecar,
        aiohttp.ClientSession() as http,
        http.post(sidecar.url + ROUTE, data=flood, headers={"Content-Type": "application/json"})
        as stream,
    ):  # fmt: skip
        stream_id = stream.headers["Sidecar-Stream-Id"]
        reader, writer = await unread_resume(sidecar, stream_id)
        whole = await stream.read()  # the first client keeps up
        assert b'"done"' in whole

        async def counted() -> bool:
            return bool(await resume_results(sidecar))

        await eventually(counted, timeout=20)
        results = await resume_results(sidecar)
        try:
            received = await asyncio.wait_for(reader.read(), 30)
        except ConnectionResetError:
            received = b""
        writer.close()
    assert b'"done"' not in received  # cut before the end
    assert results == {"expired": 1}
    assert fake.state.counters["requests"] == 1


async def test_a_reader_from_the_store_that_stops_reading_is_cut(
    fake: FakeServer, sidecar_for: SidecarFactory, caplog: pytest.LogCaptureFixture
) -> None:
    """A resume replayed from the store (the stream has finished) to a client that takes
    nothing for `client_stall_timeout_seconds` is cut, as a live stream's stalled client
    is, instead of holding its reader (and its place among `max_subscribers`) for good."""
    caplog.set_level(logging.INFO)
    config = {"claude": {"client_stall_timeout_seconds": 0.5}}
    async with sidecar_for(config) as sidecar:
        flood = {"prompt": "[[fake tokens=5000]] flood", "max_tokens": 5000}
        whole = await sse_request(sidecar.port, "POST", ROUTE, body=json.dumps(flood).encode())
        stream_id = whole.headers["sidecar-stream-id"]
        shrink_send_buffers(sidecar)
        reader, writer = await small_buffered(sidecar.port)
        writer.write(
            f"GET {ROUTE} HTTP/1.1\r\nHost: sidecar\r\nLast-Event-ID: {stream_id}:1\r\n"
            "Connection: close\r\n\r\n".encode()
        )  # and never reads

        def resumes() -> list[str]:
            return [getattr(r, "path", "") for r in caplog.records
                    if getattr(r, "event", None) == "access"]  # fmt: skip

        async def answered() -> bool:  # the resume's handler is done: it waits no more
            return len(resumes()) == 2

        await eventually(answered, timeout=20)
        try:
            received = await reader.read()
        except ConnectionResetError:
            received = b""
        writer.close()
    assert b'"done"' not in received  # cut before the end
    assert fake.state.counters["requests"] == 1  # a resume never calls Claude


async def test_a_head_answers_as_the_resuming_get_would_without_events(
    fake: FakeServer, sidecar_for: SidecarFactory
) -> None:
    config = _alice_and_bob()
    alice, bob = {"X-Api-Key": "key-a"}, {"X-Api-Key": "key-b"}
    async with sidecar_for(config) as sidecar, aiohttp.ClientSession() as http:
        done = await sse_request(sidecar.port, target=SLOW, headers=alice)
        stream_id = done.stream_id

        async def head(cursor: str, who: dict[str, str]) -> aiohttp.ClientResponse:
            async with http.head(
                sidecar.url + ROUTE, headers={**who, "Last-Event-ID": cursor}
            ) as response:
                assert await response.read() == b""
                return response

        middle = await head(f"{stream_id}:3", alice)
        assert middle.status == 200
        assert middle.headers["Content-Type"] == sse.CONTENT_TYPE
        assert middle.headers["Sidecar-Stream-Id"] == stream_id
        assert (await head(done.last_id, alice)).status == 204  # nothing left: stop
        assert (await head("C" * 24 + ":1", alice)).status == 204  # unknown: stop
        assert (await head(f"{stream_id}:3", bob)).status == 204  # someone else's: unknown
        assert (await head(f"{stream_id}:99", alice)).status == 400  # never sent
        async with http.head(
            sidecar.url + f"{ROUTE}?last_event_id={stream_id}:3", headers=alice
        ) as by_query:
            assert by_query.status == 200
        # The GET still has every event after the cursor: the HEAD read nothing.
        rest = await sse_request(sidecar.port, headers={**alice, "Last-Event-ID": f"{stream_id}:3"})
    assert rest.events[0].id == f"{stream_id}:4"
    assert fake.state.counters["requests"] == 1
