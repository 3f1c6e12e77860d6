"""The streaming core against a scripted Claude (raw sockets): backpressure, bodies that
break after the headers, error bodies that arrive in pieces, and `retry-after` forms."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import logging
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from email.utils import formatdate
from typing import Any

import aiohttp
import pytest

from sidecar import relay
from sidecar.config import ClaudeConfig
from sidecar.fake_claude import FakeServer
from sidecar.upstream import ClaudeClient
from tests.support.sidecars import SidecarFactory, running_sidecar
from tests.support.sockets import dechunk, shrink_send_buffers, slow_client
from tests.support.waiting import eventually

MODEL = "claude-sonnet-5-5"
START = (
    b'event: message_start\ndata: {"type":"message_start","message":{"id":"msg_1",'
    b'"model":"m","usage":{"input_tokens":5,"output_tokens":1}}}\n\n'
)
DELTA = (
    b'event: content_block_delta\ndata: {"type":"content_block_delta","index":0,'
    b'"delta":{"type":"text_delta","text":"' + b"x" * 100 + b'"}}\n\n'
)
STOP = b'event: message_stop\ndata: {"type":"message_stop"}\n\n'
SSE_HEAD = (
    b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n"
)

# One scripted answer: gets the writer after the request was read.
Script = Callable[[asyncio.StreamWriter], Awaitable[None]]


def chunk(data: bytes) -> bytes:
    return b"%x\r\n%b\r\n" % (len(data), data)


@contextlib.asynccontextmanager
async def scripted_claude(*scripts: Script) -> AsyncIterator[str]:
    """A Claude that answers the n-th request (on any connection) with `scripts[n]`."""
    queue = list(scripts)

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(ConnectionError, asyncio.IncompleteReadError):
            while queue:
                head = await reader.readuntil(b"\r\n\r\n")
                length = 0
                for line in head.split(b"\r\n"):
                    name, _, value = line.partition(b":")
                    if name.strip().lower() == b"content-length":
                        length = int(value)
                await reader.readexactly(length)
                await queue.pop(0)(writer)
                if writer.is_closing():
                    return
        writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.close()


def claude_config(url: str, **extra: Any) -> dict[str, Any]:
    return {"claude": {"base_url": url, "api_key": "sk", "max_retries": 0, **extra}}


def messages_body(stream: bool = True) -> dict[str, Any]:
    return {"model": MODEL, "max_tokens": 5, "stream": stream,
            "messages": [{"role": "user", "content": "hi"}]}  # fmt: skip


async def test_a_stream_paused_again_while_resuming_still_finishes(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # One upstream read may hold more than the high-water mark past the point where the
    # relay paused Claude: resuming relays that rest at once and can pause again. A tiny
    # mark makes that happen on every resume.
    monkeypatch.setattr(relay, "HIGH_WATER", 4096)
    events = 20000

    async def burst(writer: asyncio.StreamWriter) -> None:
        body = chunk(START) + b"".join(chunk(DELTA) for _ in range(events)) + chunk(STOP)
        writer.write(SSE_HEAD + body + b"0\r\n\r\n")
        await writer.drain()

    async with scripted_claude(burst) as url, running_sidecar(claude_config(url)) as sidecar:
        payload = json.dumps(messages_body()).encode()
        reader, writer = await slow_client(sidecar.port, payload)
        raw = bytearray()
        async with asyncio.timeout(10):  # a stuck relay never ends the response
            while data := await reader.read(4096):
                raw += data
        writer.close()
    head, _, body = bytes(raw).partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200")
    blocks = dechunk(body).split(b"\n\n")
    assert sum(1 for b in blocks if b.startswith(b"event: content_block_delta")) == events
    assert blocks[-2:] == [STOP[:-2], b""]  # complete, no error event


def cut_after_headers(status: bytes, first: bytes) -> Script:
    """A JSON answer that promises more than it sends: the connection drops mid-body."""

    async def script(writer: asyncio.StreamWriter) -> None:
        writer.write(
            b"HTTP/1.1 %b\r\nContent-Type: application/json\r\nContent-Length: 4000\r\n\r\n%b"
            % (status, first)
        )
        await writer.drain()
        writer.transport.abort()

    return script


@pytest.mark.parametrize("path", ["/v1/messages", "/v1/messages/count_tokens"])
async def test_a_json_answer_cut_short_is_a_502_not_a_500(path: str) -> None:
    async with (
        scripted_claude(cut_after_headers(b"200 OK", b'{"id":"msg_1","con')) as url,
        running_sidecar(claude_config(url)) as sidecar,
        aiohttp.ClientSession() as http,
        http.post(sidecar.url + path, json=messages_body(stream=False)) as response,
    ):
        assert response.status == 502
        error = (await response.json())["error"]
        assert error["type"] == "api_error"
        assert "internal" not in error["message"]


async def test_an_error_answer_cut_short_is_a_502_on_the_prompt_route() -> None:
    async with (
        scripted_claude(cut_after_headers(b"429 Too Many Requests", b'{"type":"err')) as url,
        running_sidecar(claude_config(url)) as sidecar,
        aiohttp.ClientSession() as http,
        http.post(sidecar.url + "/api/stream-response", json={"prompt": "hi"}) as response,
    ):
        assert response.status == 502  # what Claude meant to say never arrived
        assert (await response.json())["error"]["type"] == "upstream_error"


async def test_an_error_body_that_arrives_in_pieces_is_relayed_whole() -> None:
    body = json.dumps({
        "type": "error", "request_id": "req_1",
        "error": {"type": "rate_limit_error", "message": "slow down " + "x" * 2000},
    }).encode()  # fmt: skip

    async def in_pieces(writer: asyncio.StreamWriter) -> None:
        writer.write(
            b"HTTP/1.1 429 Too Many Requests\r\nContent-Type: application/json\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n" + chunk(body[:40])
        )
        await writer.drain()
        await asyncio.sleep(0.05)  # the sidecar reads the first piece on its own
        writer.write(chunk(body[40:]) + b"0\r\n\r\n")
        await writer.drain()

    async with (
        scripted_claude(in_pieces, in_pieces) as url,
        running_sidecar(claude_config(url)) as sidecar,
        aiohttp.ClientSession() as http,
    ):
        async with http.post(sidecar.url + "/v1/messages", json=messages_body()) as response:
            assert response.status == 429
            assert await response.read() == body
        async with http.post(sidecar.url + "/api/stream-response", json={"prompt": "hi"}) as r:
            assert r.status == 429
            assert (await r.json())["error"]["type"] == "rate_limited"


async def test_retry_after_as_an_http_date_is_honoured() -> None:
    # RFC 9110 allows `retry-after: <HTTP-date>`; an hour from now is far past
    # `retry_max_seconds`, so the client gets the 429 at once and Claude is not called again.
    seen = 0

    async def limited(writer: asyncio.StreamWriter) -> None:
        nonlocal seen
        seen += 1
        when = formatdate(time.time() + 3600, usegmt=True).encode()
        body = b'{"type":"error","error":{"type":"rate_limit_error","message":"later"}}'
        writer.write(
            b"HTTP/1.1 429 Too Many Requests\r\nContent-Type: application/json\r\n"
            b"retry-after: %b\r\nContent-Length: %d\r\n\r\n%b" % (when, len(body), body)
        )
        await writer.drain()

    config = claude_config("", max_retries=2, retry_base_seconds=0.01, retry_max_seconds=5)
    async with scripted_claude(limited, limited, limited) as url:
        config["claude"]["base_url"] = url
        async with (
            running_sidecar(config) as sidecar,
            aiohttp.ClientSession() as http,
            http.post(sidecar.url + "/v1/messages", json=messages_body()) as response,
        ):
            assert response.status == 429
            assert "GMT" in response.headers["retry-after"]
    assert seen == 1


@pytest.mark.parametrize("value", ["-3", "nan", "soon", "", "Wed, 99 Foo 2015 07:28:00 GMT"])
def test_retry_after_that_is_negative_or_garbage_never_waits_wrongly(value: str) -> None:
    client = ClaudeClient(
        ClaudeConfig(retry_base_seconds=0.5, retry_max_seconds=2), "http://x", None
    )  # type: ignore[arg-type]
    assert 0 <= client.backoff(0, value) <= 2


def test_retry_after_in_the_past_is_no_wait() -> None:
    client = ClaudeClient(ClaudeConfig(), "http://x", None)  # type: ignore[arg-type]
    assert client.backoff(3, formatdate(time.time() - 60, usegmt=True)) == 0


async def test_a_long_pause_does_not_count_as_idle_once_the_client_catches_up() -> None:
    # Claude sends until the slow client makes the relay pause, then thinks for a moment
    # (shorter than the idle timeout) once the client has caught up.
    small = b'event: content_block_delta\ndata: {"type":"content_block_delta","index":0,' + (
        b'"delta":{"type":"text_delta","text":"' + b"y" * 8000 + b'"}}\n\n'
    )
    sent = 0
    caught_up = asyncio.Event()
    streams: list[relay.LiveStream] = []

    async def until_paused(writer: asyncio.StreamWriter) -> None:
        nonlocal sent
        writer.write(SSE_HEAD + chunk(START))
        while not (streams and streams[0]._paused):
            before = streams[0].record.chunks if streams else 0
            writer.write(chunk(small))
            await writer.drain()
            sent += 1
            await eventually(functools.partial(relayed_since, before))  # nothing held back
        await caught_up.wait()
        writer.write(chunk(STOP) + b"0\r\n\r\n")
        await writer.drain()

    async def relayed_since(before: int) -> bool:
        return bool(streams) and (streams[0].record.chunks > before or streams[0]._paused)

    config = claude_config("", idle_timeout_seconds=0.4, heartbeat_seconds=0.4)
    async with scripted_claude(until_paused) as url:
        config["claude"]["base_url"] = url
        async with running_sidecar(config) as sidecar:
            shrink_send_buffers(sidecar)
            reader, writer = await slow_client(sidecar.port, json.dumps(messages_body()).encode())

            async def started() -> bool:
                streams[:] = list(sidecar.runtime.streams._streams)
                return bool(streams)

            await eventually(started)
            await eventually(lambda: _true(streams[0]._paused))
            await asyncio.sleep(0.6)  # paused for longer than the idle timeout
            raw = bytearray()
            while relayed_payload(raw).count(b'"text_delta"') < sent:  # the client catches up...
                raw += await reader.read(65536)
            await asyncio.sleep(0.25)  # ...and Claude thinks for a while (< idle timeout)
            caught_up.set()
            raw += await reader.read()
            writer.close()
    assert b"event: message_stop" in raw
    assert b"idle" not in raw.split(b"text_delta")[-1]


def relayed_payload(raw: bytes | bytearray) -> bytes:
    """The SSE bytes in the complete HTTP chunks of a response read so far."""
    _, _, data = bytes(raw).partition(b"\r\n\r\n")
    out = bytearray()
    while b"\r\n" in data:
        size_line, _, rest = data.partition(b"\r\n")
        size = int(size_line, 16)
        if size == 0 or len(rest) < size + 2:
            break
        out += rest[:size]
        data = rest[size + 2 :]
    return bytes(out)


async def _true(value: bool) -> bool:
    return value


@pytest.mark.parametrize("max_tokens", ["²", "1²", "9" * 5000])
async def test_prompt_max_tokens_that_only_look_like_digits_are_a_400(
    sidecar_for: SidecarFactory, max_tokens: str
) -> None:
    async with (
        sidecar_for() as sidecar,
        aiohttp.ClientSession() as http,
        http.get(
            sidecar.url + "/api/stream-response", params={"prompt": "hi", "max_tokens": max_tokens}
        ) as response,
    ):
        assert response.status == 400
        error = (await response.json())["error"]
        assert error["type"] == "invalid_request"
        assert "max_tokens" in error["message"]


@pytest.mark.parametrize(
    ("route", "bad"),
    [
        ("/v1/messages", b"zz\r\nhello\r\n"),  # not a chunk size
        ("/v1/messages", b"5\r\nhelloXX"),  # no CRLF after the chunk
        ("/api/stream-response", b"zz\r\nhello\r\n"),
    ],
)
async def test_broken_chunked_framing_mid_stream_is_a_lost_connection(
    route: str, bad: bytes
) -> None:
    # aiohttp's parser drops the body reader on a framing error without telling it; the
    # stream must still end at once as "connection lost", not wait for the idle timeout.
    relayed = asyncio.Event()

    async def broken(writer: asyncio.StreamWriter) -> None:
        writer.write(SSE_HEAD + chunk(START) + chunk(DELTA))
        await writer.drain()
        await relayed.wait()
        writer.write(bad)
        await writer.drain()
        await relayed.wait()

    config = claude_config("", idle_timeout_seconds=20, heartbeat_seconds=0.2)
    body = messages_body() if route == "/v1/messages" else {"prompt": "hi"}
    async with scripted_claude(broken) as url:
        config["claude"]["base_url"] = url
        async with (
            running_sidecar(config) as sidecar,
            aiohttp.ClientSession() as http,
            http.post(sidecar.url + route, json=body) as response,
        ):
            raw = await response.content.readuntil(b"xxx")  # the delta has arrived
            relayed.set()
            raw += await response.read()
    last = raw.strip().split(b"\n\n")[-1]
    assert b"connection to Claude was lost" in last
    assert b"timeout" not in last


async def test_a_connection_lost_mid_event_still_ends_with_a_whole_error_event() -> None:
    async def cut(writer: asyncio.StreamWriter) -> None:
        writer.write(SSE_HEAD + chunk(START) + chunk(DELTA[:60]))
        await writer.drain()
        writer.transport.abort()

    async with (
        scripted_claude(cut) as url,
        running_sidecar(claude_config(url)) as sidecar,
        aiohttp.ClientSession() as http,
        http.post(sidecar.url + "/v1/messages", json=messages_body()) as response,
    ):
        raw = await response.read()
    assert raw.startswith(START + DELTA[:60])
    last = raw.split(b"\n\n")[-2]  # a client's SSE parser sees this as the last event
    name, _, data = last.partition(b"\n")
    assert name == b"event: error"
    assert data.startswith(b"data: ")
    assert json.loads(data[6:])["error"]["type"] == "api_error"


async def test_shutdown_ends_a_stream_paused_for_a_client_that_stopped_reading(
    sidecar_for: SidecarFactory, caplog: pytest.LogCaptureFixture
) -> None:
    body = {"model": MODEL, "max_tokens": 6000, "stream": True,
            "messages": [{"role": "user", "content": "[[fake tokens=5000]] flood"}]}  # fmt: skip
    async with sidecar_for() as sidecar:
        shrink_send_buffers(sidecar)
        payload = json.dumps(body).encode()
        reader, writer = await slow_client(sidecar.port, payload)
        streams = sidecar.runtime.streams

        async def paused() -> bool:
            return any(stream._paused for stream in streams._streams)

        await eventually(paused)
        stopping = asyncio.create_task(sidecar.shutdown(grace=0.1))

        async def gone() -> bool:
            return len(streams) == 0

        await eventually(gone)  # ended by shutdown, without the client reading a byte
        assert not stopping.done()  # (shutdown then gives final events time to leave)
        raw = await reader.read()
        writer.close()
        await stopping
    assert raw.endswith(b"\r\n0\r\n\r\n")  # the response was ended properly
    last = relayed_payload(raw).strip().split(b"\n\n")[-1]
    assert last.startswith(b"event: error")
    assert b"overloaded_error" in last
    ends = [r for r in caplog.records if getattr(r, "event", None) == "stream_error"]
    assert [getattr(r, "outcome", None) for r in ends] == ["shutting_down"]


async def test_a_connect_timeout_is_a_connect_error_and_is_retried() -> None:
    # A listener whose backlog is full: the next connection attempts time out.
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(0)
    filler = socket.socket()
    filler.connect(listener.getsockname())
    port = listener.getsockname()[1]
    config = claude_config(
        f"http://127.0.0.1:{port}",
        connect_timeout_seconds=0.2, max_retries=1, retry_base_seconds=0.01,
    )  # fmt: skip
    try:
        async with (
            running_sidecar(config) as sidecar,
            aiohttp.ClientSession() as http,
            http.post(sidecar.url + "/v1/messages", json=messages_body()) as response,
        ):
            assert response.status == 502
            assert "unreachable" in (await response.json())["error"]["message"]
            async with http.get(sidecar.admin_url + "/metrics") as metrics:
                text = await metrics.text()
    finally:
        filler.close()
        listener.close()
    retried = [line for line in text.splitlines() if line.startswith("sidecar_upstream_retries")]
    assert any('reason="connect_error"' in line and line.endswith(" 1.0") for line in retried)


@pytest.mark.parametrize("route", ["/v1/messages", "/api/stream-response"])
async def test_claudes_error_event_then_a_lost_connection_is_one_error(route: str) -> None:
    error = (
        b'event: error\ndata: {"type":"error","error":{"type":"overloaded_error",'
        b'"message":"Overloaded"}}\n\n'
    )

    async def error_then_drop(writer: asyncio.StreamWriter) -> None:
        writer.write(SSE_HEAD + chunk(START) + chunk(DELTA) + chunk(error))
        await writer.drain()
        writer.transport.abort()

    body = messages_body() if route == "/v1/messages" else {"prompt": "hi"}
    async with (
        scripted_claude(error_then_drop) as url,
        running_sidecar(claude_config(url)) as sidecar,
        aiohttp.ClientSession() as http,
        http.post(sidecar.url + route, json=body) as response,
    ):
        raw = await response.read()
    blocks = raw.strip().split(b"\n\n")
    errors = [b for b in blocks if b.startswith(b"event: error") or b'data: {"error"' in b]
    assert len(errors) == 1  # Claude's own error is the last word
    assert errors[0] == blocks[-1]
    assert b"Overloaded" in errors[0]


async def test_a_client_that_leaves_while_paused_frees_everything(
    fake: FakeServer, sidecar_for: SidecarFactory, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    body = {"model": MODEL, "max_tokens": 6000, "stream": True,
            "messages": [{"role": "user", "content": "[[fake tokens=5000]] flood"}]}  # fmt: skip
    async with sidecar_for() as sidecar:
        shrink_send_buffers(sidecar)
        runtime = sidecar.runtime
        payload = json.dumps(body).encode()
        _, writer = await slow_client(sidecar.port, payload)

        async def paused() -> bool:
            return any(stream._paused for stream in runtime.streams._streams)

        await eventually(paused)
        writer.transport.abort()  # the client leaves while Claude is held back for it

        async def released() -> bool:
            return (
                len(runtime.streams) == 0
                and runtime.admission.active == 0
                and fake.state.open_streams == 0
            )

        await eventually(released)
    ends = [r for r in caplog.records if getattr(r, "event", None) == "stream_complete"]
    assert [getattr(r, "outcome", None) for r in ends] == ["client_cancelled"]
    assert not [r for r in caplog.records if "never retrieved" in r.getMessage()]
