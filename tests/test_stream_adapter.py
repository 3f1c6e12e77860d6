"""Contract test: what the relay borrows from aiohttp's server still works on this aiohttp.

If one of these fails after an aiohttp upgrade, `sidecar/stream/adapter.py` needs
adapting (and the pin in pyproject.toml moving) before the relay can trust it.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from yarl import URL

from sidecar.stream import adapter
from tests.support.apps import serving
from tests.support.sockets import dechunk, free_port

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(auto_decompress=False) as session:
        yield session


@contextlib.asynccontextmanager
async def serving_get(handler: Handler) -> AsyncIterator[int]:
    """`handler` on `GET /` of a loopback aiohttp server; yields its port."""
    app = web.Application()
    app.router.add_get("/", handler)
    async with serving(app) as url:
        port = URL(url).port
        assert port is not None
        yield port


async def test_client_channel_frames_chunks_by_hand_and_aiohttp_ends_them(
    http: aiohttp.ClientSession,
) -> None:
    seen: dict[str, object] = {}

    async def handler(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(
            headers={"Content-Type": "text/event-stream", "X-Probe": "kept"}
        )
        await response.prepare(request)
        seen["chunked"] = response.headers.get("Transfer-Encoding")
        channel = adapter.ClientChannel(request, response)
        seen["headers_held"] = len(response.headers)
        channel.start(b"data: 1\n\n")
        channel.write(b"data: 2\n\n")
        channel.write(b"data: 3\n\n")
        seen["buffered"] = channel.buffered()
        await channel.drain()
        seen["closing"] = channel.closing()
        seen["loop"] = channel.loop is asyncio.get_running_loop()  # read from aiohttp's writer
        await channel.end(60)
        return response

    async with serving_get(handler) as port:
        async with http.get(f"http://127.0.0.1:{port}/") as response:
            body = await response.read()
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        raw = await reader.read()
        writer.close()
    assert body == b"data: 1\n\ndata: 2\n\ndata: 3\n\n"
    assert seen["chunked"] == "chunked"  # prepare() chose chunked framing, as relied on
    # prepare() serialised the head: the emptied header map still went out whole.
    assert seen["headers_held"] == 0
    assert isinstance(seen["buffered"], int)
    assert seen["closing"] is False
    assert seen["loop"] is True
    head, _, payload = raw.partition(b"\r\n\r\n")
    assert b"transfer-encoding: chunked" in head.lower()
    assert b"\r\nx-probe: kept" in head.lower()
    assert payload.endswith(b"0\r\n\r\n")  # aiohttp's own terminating chunk
    assert dechunk(payload) == body


@pytest.mark.stdlib_loop  # counts the sends by patching the transport's write
@pytest.mark.parametrize("started", [True, False], ids=["after-data", "nothing-sent-yet"])
async def test_the_end_leaves_in_one_send_with_the_last_bytes(
    http: aiohttp.ClientSession, started: bool
) -> None:
    sends: list[int] = []

    async def handler(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        channel = adapter.ClientChannel(request, response)
        if started:
            channel.start(b"data: 1\n\n")
        transport = request.transport
        assert transport is not None
        write, writelines = transport.write, transport.writelines

        def counted_write(data: bytes | bytearray | memoryview) -> None:
            sends.append(1)
            write(data)

        def counted_writelines(data: Iterable[bytes | bytearray | memoryview[Any]]) -> None:
            sends.append(1)
            writelines(data)

        transport.write = counted_write  # type: ignore[method-assign]
        transport.writelines = counted_writelines  # type: ignore[method-assign,assignment]
        channel.finish(b"data: last\n\n")
        channel.finish(b"data: final\n\n")
        await channel.end(60)
        return response

    async with serving_get(handler) as port, http.get(f"http://127.0.0.1:{port}/") as response:
        body = await response.read()
    assert body == (b"data: 1\n\n" if started else b"") + b"data: last\n\ndata: final\n\n"
    assert sends == [1]  # the last bytes, the last chunk (and the headers): one send


@pytest.mark.stdlib_loop  # counts the sends by patching the transport's write
@pytest.mark.parametrize("first", [b"data: 1\n\n", b""], ids=["with-data", "head-only"])
async def test_an_sse_response_sends_its_head_with_the_first_write(
    http: aiohttp.ClientSession, first: bytes
) -> None:
    sends: list[bytes] = []

    async def handler(request: web.Request) -> web.StreamResponse:
        _sends_of(request, sends)
        response = adapter.SSEResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        assert sends == []  # the head waits for the first bytes
        channel = adapter.ClientChannel(request, response)
        channel.start(first)
        assert len(sends) == 1
        channel.write(b"data: 2\n\n")
        await channel.end(60)
        return response

    async with serving_get(handler) as port, http.get(f"http://127.0.0.1:{port}/") as response:
        assert response.headers["Transfer-Encoding"] == "chunked"
        body = await response.read()
    assert body == first + b"data: 2\n\n"
    head, _, payload = sends[0].partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 OK\r\n")
    assert dechunk(payload) == first  # the head and the first bytes: one send
    assert len(sends) == 3  # then the second write, then the last chunk


def _sends_of(request: web.Request, sends: list[bytes]) -> None:
    """Record every send to `request`'s client from now on."""
    transport = request.transport
    assert transport is not None
    write, writelines = transport.write, transport.writelines

    def counted_write(data: bytes | bytearray | memoryview) -> None:
        sends.append(bytes(data))
        write(data)

    def counted_writelines(data: Iterable[bytes | bytearray | memoryview[Any]]) -> None:
        sends.append(b"".join(data))
        writelines(data)

    transport.write = counted_write  # type: ignore[method-assign]
    transport.writelines = counted_writelines  # type: ignore[method-assign,assignment]


async def _raw_exchange(port: int, requests: bytes) -> bytes:
    """Send `requests` as they are on one connection; everything read until it closes."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(requests)
    async with asyncio.timeout(5):
        raw = await reader.read(-1)
    writer.close()
    return raw


def _without_date(head: bytes) -> list[bytes]:
    return [line for line in head.split(b"\r\n") if not line.lower().startswith(b"date:")]


HEADERS = {"X-Request-Id": "r1", "request-id": "req_1", "Access-Control-Allow-Origin": "*"}
SSE = {"Content-Type": "text/event-stream; charset=utf-8", "Cache-Control": "no-cache"}


@pytest.mark.parametrize("close", [False, True], ids=["keep-alive", "connection-close"])
async def test_an_opened_channel_sends_the_head_prepare_would_send(close: bool) -> None:
    async def ours(request: web.Request) -> web.StreamResponse:
        channel = await adapter.ClientChannel.open(request, {**HEADERS, **SSE})
        channel.start(b"data: 1\n\n")
        await channel.end(60)
        return channel.response

    async def aiohttp_own(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={**HEADERS, **SSE})
        await response.prepare(request)
        await response.write(b"data: 1\n\n")
        await response.write_eof()
        return response

    connection = b"close" if close else b"keep-alive"
    heads = []
    for handler in (ours, aiohttp_own):
        async with serving_get(handler) as port:
            raw = await _raw_exchange(
                port,
                b"GET / HTTP/1.1\r\nHost: x\r\nConnection: %b\r\n\r\n" % connection
                if close
                else b"GET / HTTP/1.1\r\nHost: x\r\n\r\nGET / HTTP/1.1\r\nHost: x\r\n"
                b"Connection: close\r\n\r\n",
            )
        heads.append(raw)
    ours_raw, theirs_raw = heads
    # The same status line, headers (order included) and framing, byte for byte but the date.
    assert [_without_date(part) for part in ours_raw.split(b"\r\n\r\n")] == [
        _without_date(part) for part in theirs_raw.split(b"\r\n\r\n")
    ]
    assert ours_raw.count(b"HTTP/1.1 200 OK") == (1 if close else 2)  # kept alive when asked


@pytest.mark.stdlib_loop  # counts the sends by patching the transport's write
@pytest.mark.parametrize("started", [True, False], ids=["started", "whole-at-the-end"])
async def test_an_opened_channel_sends_the_head_with_the_first_bytes_then_ends_in_one_send(
    started: bool,
) -> None:
    all_sends: list[bytes] = []
    answers: list[list[bytes]] = []  # the sends of each answer
    seen: dict[str, object] = {}

    async def handler(request: web.Request) -> web.StreamResponse:
        if not answers:  # one connection: its transport is recorded once, into `all_sends`
            _sends_of(request, all_sends)
        answers.append(all_sends[len(all_sends) :])
        sends = answers[-1]
        before = len(all_sends)
        channel = await adapter.ClientChannel.open(request, {**SSE})
        assert len(all_sends) == before  # the head waits for the first bytes
        if started:
            seen["lag"] = channel.start(b"data: 1\n\n")
            assert len(all_sends) == before + 1
            channel.send(b"data: 2\n\n")
        channel.finish(b"data: last\n\n")
        channel.end_now()
        await channel.end(60)  # nothing more: it ended
        sends.extend(all_sends[before:])
        response = channel.response
        seen["prepared"] = response.prepared
        seen["output"] = request.writer.output_size
        return response

    async with serving_get(handler) as port:
        raw = await _raw_exchange(
            port,
            b"GET / HTTP/1.1\r\nHost: x\r\n\r\nGET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        )
    first, second = raw.split(b"HTTP/1.1 200 OK")[1:]  # both answered on one connection
    for answer in (first, second):
        body = (b"data: 1\n\ndata: 2\n\n" if started else b"") + b"data: last\n\n"
        assert dechunk(answer.partition(b"\r\n\r\n")[2]) == body
    for sends in answers:
        # head + 1, then 2, then last + the last chunk; or all of it in one send
        assert len(sends) == (3 if started else 1)
        assert sends[0].startswith(b"HTTP/1.1 200 OK\r\n")
        assert sends[-1].endswith(b"data: last\n\n\r\n0\r\n\r\n")
    assert seen["lag"] is False if started else "lag" not in seen
    assert seen["prepared"] is True
    output = seen["output"]
    assert isinstance(output, int)
    assert output > 0  # aiohttp knows a response went out


async def test_a_handler_failing_after_the_first_bytes_is_not_answered_again() -> None:
    async def handler(request: web.Request) -> web.StreamResponse:
        channel = await adapter.ClientChannel.open(request, {**SSE})
        channel.start(b"data: 1\n\n")
        raise RuntimeError("the relay failed")

    async with serving_get(handler) as port:
        raw = await _raw_exchange(port, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    assert raw.count(b"HTTP/1.1") == 1  # the stream, cut: no 500 written after it
    assert b"data: 1" in raw
    assert not raw.endswith(b"0\r\n\r\n")


@pytest.mark.parametrize(
    ("request_line", "headers"),
    [
        (b"GET / HTTP/1.0\r\nHost: x\r\n\r\n", {}),  # not HTTP/1.1: no chunked framing
        (b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n", {"Date": "Tue, 1 Jan"}),
    ],
    ids=["http-1.0", "a-header-prepare-sets"],
)
async def test_what_aiohttp_answers_differently_goes_through_its_prepare(
    request_line: bytes, headers: dict[str, str]
) -> None:
    async def handler(request: web.Request) -> web.StreamResponse:
        channel = await adapter.ClientChannel.open(request, {**headers, **SSE})
        channel.start(b"data: 1\n\n")
        await channel.end(60)
        return channel.response

    async with serving_get(handler) as port:
        raw = await _raw_exchange(port, request_line)
    head, _, body = raw.partition(b"\r\n\r\n")
    if b"HTTP/1.0" in request_line:
        assert b"transfer-encoding" not in head.lower()
        assert body == b"data: 1\n\n"  # raw bytes, the connection's end ends them
    else:
        assert b"\r\nDate: Tue, 1 Jan\r\n" in head  # prepare() keeps a date it was given
        assert dechunk(body) == b"data: 1\n\n"


async def test_response_signals_still_run_for_an_opened_channel() -> None:
    async def handler(request: web.Request) -> web.StreamResponse:
        channel = await adapter.ClientChannel.open(request, {**SSE})
        channel.start(b"data: 1\n\n")
        await channel.end(60)
        return channel.response

    async def signal(request: web.Request, response: web.StreamResponse) -> None:
        response.headers["X-Signal"] = "ran"

    app = web.Application()
    app.router.add_get("/", handler)
    app.on_response_prepare.append(signal)
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        raw = await _raw_exchange(port, b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    finally:
        await runner.cleanup()
    assert b"\r\nX-Signal: ran" in raw.partition(b"\r\n\r\n")[0]


async def test_a_client_gone_before_the_head_ends_the_call_at_open() -> None:
    errors: list[BaseException] = []

    async def handler(request: web.Request) -> web.StreamResponse:
        transport = request.transport
        assert transport is not None
        transport.close()
        try:
            await adapter.ClientChannel.open(request, {**SSE})
        except ConnectionResetError as exc:
            errors.append(exc)
            raise
        raise AssertionError("opened for a client that is gone")

    async with serving_get(handler) as port:
        await _raw_exchange(port, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        await asyncio.sleep(0.05)
    assert len(errors) == 1


async def test_a_client_websockets_handshake_headers_are_its_servers_101s(
    http: aiohttp.ClientSession,
) -> None:
    """`websocket_handshake_headers` reads the `101` a client WebSocket was answered with
    (the app route passes its fields on to the client)."""

    async def handler(request: web.Request) -> web.StreamResponse:
        ws = web.WebSocketResponse()
        ws.headers["Set-Cookie"] = "s=1"
        await ws.prepare(request)
        await ws.close()
        return ws

    async with serving_get(handler) as port, http.ws_connect(f"http://127.0.0.1:{port}/") as ws:
        headers = adapter.websocket_handshake_headers(ws)
        assert headers["Set-Cookie"] == "s=1"
        assert headers["Upgrade"].lower() == "websocket"


async def test_a_client_websockets_transport_is_the_one_its_frames_go_through(
    http: aiohttp.ClientSession,
) -> None:
    """`websocket_transport` finds the socket under a client WebSocket (the app route's
    stall watch reads its queue and aborts it), and none once the connection is gone."""

    async def handler(request: web.Request) -> web.StreamResponse:
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        async for message in ws:
            await ws.send_str(message.data)
        return ws

    async with serving_get(handler) as port, http.ws_connect(f"http://127.0.0.1:{port}/") as ws:
        transport = adapter.websocket_transport(ws)
        assert transport is not None
        await ws.send_str("hi")
        assert await ws.receive_str(timeout=5) == "hi"
        assert transport.get_extra_info("peername")[1] == port
        transport.abort()  # what the watch does to a stalled app
        closed = await ws.receive(timeout=5)
        assert closed.type in (aiohttp.WSMsgType.CLOSED, aiohttp.WSMsgType.CLOSE)
        assert adapter.websocket_transport(ws) is None


async def test_an_answer_is_ended_once_its_last_chunk_is_written(
    http: aiohttp.ClientSession,
) -> None:
    """`answer_ended` reads aiohttp's own flag: false until the last chunk is written, true
    after, on the response and (for a handler that returns none) on the request's writer."""
    seen: list[tuple[bool, bool, bool, bool]] = []

    async def handler(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse()
        await response.prepare(request)
        await response.write(b"partial")
        before = adapter.answer_ended(request, response), adapter.answer_ended(request, None)
        await response.write_eof()
        after = adapter.answer_ended(request, response), adapter.answer_ended(request, None)
        seen.append((*before, *after))
        return response

    async with serving_get(handler) as port:
        async with http.get(f"http://127.0.0.1:{port}/") as answer:
            assert await answer.read() == b"partial"
    assert seen == [(False, False, True, True)]


async def test_every_head_aiohttp_writes_keeps_header_bytes_as_they_were_read() -> None:
    """aiohttp reads a header byte that is no UTF-8 as a `surrogateescape` character; every
    head it writes (through `serialize_head`, set in its writer) has that byte back, as an
    SSE head opened here does."""
    value = b'attachment; filename="r\xe9sum\xe9.pdf" caf\xc3\xa9'.decode(
        "utf-8", "surrogateescape"
    )

    async def plain(request: web.Request) -> web.StreamResponse:
        return web.Response(text="ok", headers={"Content-Disposition": value})

    async def opened(request: web.Request) -> web.StreamResponse:
        channel = await adapter.ClientChannel.open(request, {"Content-Disposition": value, **SSE})
        channel.start(b"data: 1\n\n")
        await channel.end(60)
        return channel.response

    for handler in (plain, opened):
        async with serving_get(handler) as port:
            raw = await _raw_exchange(
                port, b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
            )
        head = raw.split(b"\r\n\r\n")[0]
        assert (
            b'\r\nContent-Disposition: attachment; filename="r\xe9sum\xe9.pdf" caf\xc3\xa9\r\n'
            in head
        )


@pytest.mark.parametrize("control", ["\r", "\n", "\0", "\x01", "\x7f"])
def test_a_control_character_beside_an_escaped_byte_is_still_refused(control: str) -> None:
    with pytest.raises(ValueError, match="Forbidden control character"):
        adapter.serialize_head("HTTP/1.1 200 OK", {"X-A": f"r\udce9sum\udce9{control}X-B: 1"})
    with pytest.raises(ValueError, match="Forbidden control character"):
        adapter.serialize_head(f"HTTP/1.1 200 \udce9{control}", {"X-A": "1"})


def test_an_ascii_head_is_aiohttps_own() -> None:
    headers = {**HEADERS, **SSE, "X-Tab": "a\tb"}
    assert (
        adapter.serialize_head("HTTP/1.1 200 OK", headers)
        == (
            "HTTP/1.1 200 OK\r\n" + "".join(f"{k}: {v}\r\n" for k, v in headers.items()) + "\r\n"
        ).encode()
    )
    assert (
        adapter.serialize_head("HTTP/1.1 204 No Content", {}) == b"HTTP/1.1 204 No Content\r\n\r\n"
    )
