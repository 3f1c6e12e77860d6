"""An upstream answer parsed as it arrives: head, pulled and pushed bodies, every way it ends."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
from collections.abc import AsyncIterator

import pytest

from sidecar.http_client import Disconnected, MalformedResponse, Pool, Response
from tests.support.raw_http import SSE_HEAD, Exchange, Script, chunk, raw_server


class Collect:
    """A sink recording what the parser pushes."""

    def __init__(self) -> None:
        self.data = bytearray()
        self.ends: list[BaseException | None] = []
        self.lasts: list[bytes] = []  # bytes that came with the end (`on_last`)
        self.ended = asyncio.Event()

    def on_data(self, data: bytes) -> None:
        self.data += data

    def on_last(self, data: bytes) -> None:
        self.lasts.append(data)
        self.data += data
        self.on_end(None)

    def on_end(self, error: BaseException | None) -> None:
        self.ends.append(error)
        self.ended.set()


@pytest.fixture
async def gate() -> asyncio.Event:
    return asyncio.Event()


async def pool_for(url: str) -> Pool:
    return Pool(url, limit=4, connect_timeout=5)


@contextlib.asynccontextmanager
async def answer_to(
    script: Script, method: str = "GET", body: bytes | None = None
) -> AsyncIterator[tuple[Pool, Response]]:
    """The answer `script` gives to one call (its head read), and the pool it came from."""
    async with raw_server(script) as server:
        pool = await pool_for(server.url)
        try:
            yield pool, await pool.request(method, "/", {}, body)
        finally:
            await pool.close()


async def test_push_mode_hands_every_chunk_to_the_sink_and_reuses_the_connection(
    gate: asyncio.Event,
) -> None:
    async def script(exchange: Exchange) -> None:
        exchange.writer.write(SSE_HEAD + chunk(b"first\n\n"))
        await gate.wait()
        for i in range(20):
            exchange.writer.write(chunk(b"event %d\n\n" % i))
            await exchange.writer.drain()
        exchange.writer.write(b"0\r\n\r\n")

    async with raw_server(script) as server:
        pool = await pool_for(server.url)
        response = await pool.request("POST", "/v1/messages", {}, b"{}")
        assert response.status == 200
        assert response.headers["content-type"] == "text/event-stream"
        await asyncio.sleep(0.05)
        buffered = response.take_buffered()
        sink = Collect()
        response.start_push(sink)
        assert response.pushing
        assert len(response.headers) == 0  # read before: an open stream does not hold them
        gate.set()
        await asyncio.wait_for(sink.ended.wait(), 10)
        assert sink.ends == [None]
        expected = b"first\n\n" + b"".join(b"event %d\n\n" % i for i in range(20))
        assert buffered + bytes(sink.data) == expected
        assert not response.pushing  # let go at the end
        assert pool.idle_connections == 1  # complete and kept alive: back in the pool
        response.close()  # after the end: no effect on the pooled connection
        again = await pool.request("POST", "/v1/messages", {}, b"{}")
        sink = Collect()
        again.start_push(sink)
        await asyncio.wait_for(sink.ended.wait(), 10)
        assert server.connections == 1
        assert len(server.exchanges) == 2
        await pool.close()


async def test_a_sink_started_after_the_end_hears_of_it_at_once() -> None:
    async def script(exchange: Exchange) -> None:
        exchange.writer.write(SSE_HEAD + chunk(b"all\n\n") + b"0\r\n\r\n")

    async with answer_to(script) as (_, response):
        await asyncio.sleep(0.05)
        assert response.take_buffered() == b"all\n\n"
        sink = Collect()
        response.start_push(sink)
        assert sink.ends == [None]
        assert not sink.data
        assert response.complete


@pytest.mark.parametrize(
    "broken",
    [b"zz-not-hex\r\nbroken\r\n", b"5\r\nabcdefgh\r\n", b"5\r\nab\r\n\x00\x00"],
    ids=["size", "overrun", "garbage"],
)
async def test_broken_chunked_framing_ends_the_body_at_once(broken: bytes) -> None:
    async def script(exchange: Exchange) -> None:
        exchange.writer.write(SSE_HEAD + chunk(b"ok\n\n"))
        await exchange.writer.drain()
        await asyncio.sleep(0.05)
        exchange.writer.write(broken)
        await asyncio.sleep(5)

    async with answer_to(script) as (pool, response):
        sink = Collect()
        response.take_buffered()
        response.start_push(sink)
        await asyncio.wait_for(sink.ended.wait(), 2)
        assert isinstance(sink.ends[0], MalformedResponse)
        assert "malformed" in str(sink.ends[0])
        assert pool.open_connections == 0  # a broken connection is never reused


async def test_a_connection_cut_mid_body_is_disconnected_and_a_body_until_close_completes() -> None:
    async def cut(exchange: Exchange) -> None:
        exchange.writer.write(SSE_HEAD + chunk(b"part"))
        await exchange.writer.drain()
        exchange.writer.close()

    async def until_close(exchange: Exchange) -> None:
        exchange.writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\nwhole body")
        await exchange.writer.drain()
        exchange.writer.close()

    async with answer_to(cut) as (_, response):
        with pytest.raises(Disconnected):
            await response.read()
    async with answer_to(until_close) as (pool, response):
        assert await response.read() == b"whole body"
        assert pool.open_connections == 0


async def test_read_whole_and_read_up_to_a_limit() -> None:
    body = b"x" * 5000

    async def script(exchange: Exchange) -> None:
        exchange.writer.write(b"HTTP/1.1 429 Too Many\r\nContent-Length: %d\r\n" % len(body))
        exchange.writer.write(b"Retry-After: 3\r\nX-Twice: a\r\nx-twice: b\r\n\r\n")
        for i in range(0, len(body), 1000):
            exchange.writer.write(body[i : i + 1000])
            await exchange.writer.drain()
            await asyncio.sleep(0.01)

    async with answer_to(script) as (pool, response):
        assert response.status == 429
        assert response.headers["retry-after"] == "3"
        assert response.headers.getall("X-TWICE") == ["a", "b"]
        assert response.content_type == "application/octet-stream"  # none given
        assert await response.read() == body
        assert pool.idle_connections == 1
        limited = await pool.request("GET", "/", {}, None)
        assert await limited.read(1500) == body[:1500]
        # Not read to its end: that connection is closed, never handed to the next call.
        await asyncio.sleep(0.01)
        assert pool.open_connections == 0


async def test_no_body_answers_head_and_204() -> None:
    async def script(exchange: Exchange) -> None:
        if exchange.head.startswith(b"HEAD"):
            exchange.writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n")
        else:
            exchange.writer.write(b"HTTP/1.1 204 No Content\r\n\r\n")

    async with raw_server(script) as server:
        pool = await pool_for(server.url)
        head = await pool.request("HEAD", "/", {}, None)
        assert head.status == 200
        assert await head.read() == b""
        empty = await pool.request("DELETE", "/", {}, None)
        assert empty.status == 204
        assert await empty.read() == b""
        await pool.close()


async def test_pause_and_resume_reading(gate: asyncio.Event) -> None:
    async def script(exchange: Exchange) -> None:
        exchange.writer.write(SSE_HEAD + chunk(b"one\n\n"))
        await gate.wait()
        exchange.writer.write(chunk(b"two\n\n") + b"0\r\n\r\n")

    async with answer_to(script) as (_, response):
        sink = Collect()
        response.take_buffered()
        response.start_push(sink)
        response.pause()
        gate.set()
        await asyncio.sleep(0.1)
        assert not sink.ended.is_set()  # nothing read while paused
        response.resume()
        await asyncio.wait_for(sink.ended.wait(), 5)
        assert sink.ends == [None]
        assert sink.data.endswith(b"two\n\n")


@pytest.mark.parametrize(
    ("failing", "rest"),
    [("on_data", chunk(b"boom\n\n")), ("on_last", chunk(b"end\n\n") + b"0\r\n\r\n")],
    ids=["mid-body", "last-bytes"],
)
async def test_a_failing_sink_ends_its_own_stream_with_its_error(
    gate: asyncio.Event, failing: str, rest: bytes
) -> None:
    def fail(self: Collect, data: bytes) -> None:
        raise KeyError("a relay bug")

    failing_sink = type("Failing", (Collect,), {failing: fail})

    async def script(exchange: Exchange) -> None:
        exchange.writer.write(SSE_HEAD)
        await gate.wait()
        exchange.writer.write(rest)
        await asyncio.sleep(5)

    async with answer_to(script) as (_, response):
        sink = failing_sink()
        response.start_push(sink)
        gate.set()
        await asyncio.wait_for(sink.ended.wait(), 5)
        assert isinstance(sink.ends[0], KeyError)


async def test_headers_decode_as_aiohttp_does() -> None:
    async def script(exchange: Exchange) -> None:
        exchange.writer.write(
            b"HTTP/1.1 200 OK\r\nContent-Type: Application/JSON; charset=utf-8\r\n"
            b"request-id: req_\xc3\xa9\xff\r\nContent-Length: 2\r\n\r\n{}"
        )

    async with answer_to(script) as (_, response):
        assert response.content_type == "application/json"
        value = response.headers["Request-Id"]
        assert value.encode("utf-8", "surrogateescape") == b"req_\xc3\xa9\xff"  # byte for byte
        assert await response.read() == b"{}"


def test_a_response_is_small() -> None:
    assert Response.__dictoffset__ == 0  # slots only, no instance dict: one per open stream


@pytest.mark.parametrize("bad", [b"\x00", b"\x01", b"\x7f"], ids=["nul", "soh", "del"])
async def test_control_bytes_in_a_header_value_are_a_malformed_answer(bad: bytes) -> None:
    async def script(exchange: Exchange) -> None:
        exchange.writer.write(b"HTTP/1.1 200 OK\r\nx-odd: a%bb\r\nContent-Length: 0\r\n\r\n" % bad)

    async with raw_server(script) as server:
        pool = await pool_for(server.url)
        with pytest.raises(MalformedResponse):
            await pool.request("GET", "/", {}, None)
        await pool.close()


async def test_an_answer_without_headers() -> None:
    async def script(exchange: Exchange) -> None:
        exchange.writer.write(b"HTTP/1.1 200 OK\r\n\r\nbody until close")
        await exchange.writer.drain()
        exchange.writer.close()

    async with answer_to(script) as (_, response):
        assert len(response.headers) == 0
        assert await response.read() == b"body until close"


async def test_a_body_until_close_that_ends_in_a_reset_is_cut_not_whole() -> None:
    """A body framed by the connection's close ends with an orderly close (FIN) only: a
    reset after some of it is a failure, pulled or pushed, never the body's clean end."""

    async def reset_after_some(exchange: Exchange) -> None:
        exchange.writer.write(b"HTTP/1.1 200 OK\r\n\r\nsome of the body")
        await exchange.writer.drain()
        sock = exchange.writer.get_extra_info("socket")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        exchange.writer.transport.abort()  # with a zero linger: an RST, not a FIN

    async with answer_to(reset_after_some) as (_, response):
        with pytest.raises(Disconnected):
            await response.read()
    async with answer_to(reset_after_some) as (_, response):
        sink = Collect()
        response.start_push(sink)
        await sink.ended.wait()
    (end,) = sink.ends
    assert isinstance(end, Disconnected)


async def test_chunks_that_arrive_together_are_pushed_together(gate: asyncio.Event) -> None:
    class Calls(Collect):
        def __init__(self) -> None:
            super().__init__()
            self.calls: list[bytes] = []

        def on_data(self, data: bytes) -> None:
            self.calls.append(data)
            super().on_data(data)

    async def script(exchange: Exchange) -> None:
        exchange.writer.write(SSE_HEAD)
        await gate.wait()
        # One read: three events, then the end of the body.
        exchange.writer.write(chunk(b"a\n\n") + chunk(b"b\n\n") + chunk(b"c\n\n") + b"0\r\n\r\n")

    async with answer_to(script) as (_, response):
        sink = Calls()
        response.start_push(sink)
        gate.set()
        await asyncio.wait_for(sink.ended.wait(), 5)
        # One push, not three, and with the end that came in the same read.
        assert sink.calls == []
        assert sink.lasts == [b"a\n\nb\n\nc\n\n"]
        assert sink.ends == [None]


async def test_bytes_left_untaken_before_push_come_with_the_end() -> None:
    async def script(exchange: Exchange) -> None:
        exchange.writer.write(SSE_HEAD + chunk(b"x\n\n") + b"0\r\n\r\n")

    async with answer_to(script) as (_, response):
        await asyncio.sleep(0.05)
        assert response.complete
        sink = Collect()
        response.start_push(sink)  # nothing taken before: all of it, with the end
        assert sink.lasts == [b"x\n\n"]
        assert sink.ends == [None]


async def test_interim_answers_are_read_past_to_the_final_one() -> None:
    async def script(exchange: Exchange) -> None:
        exchange.writer.write(
            b"HTTP/1.1 100 Continue\r\n\r\n"
            b"HTTP/1.1 103 Early Hints\r\nLink: </style.css>\r\n\r\n"
            b"HTTP/1.1 200 OK\r\nrequest-id: req_1\r\nContent-Length: 2\r\n\r\nok"
        )

    async with answer_to(script, "POST", b"{}") as (pool, response):
        assert response.status == 200
        assert dict(response.headers) == {"request-id": "req_1", "Content-Length": "2"}
        assert await response.read() == b"ok"
        assert pool.idle_connections == 1


async def test_a_switch_of_protocols_is_an_answer_that_ends_the_connection() -> None:
    async def script(exchange: Exchange) -> None:
        exchange.writer.write(
            b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: x\r\nConnection: Upgrade\r\n\r\nraw"
        )
        await asyncio.sleep(5)

    async with answer_to(script) as (pool, response):
        assert response.status == 101
        assert await response.read() == b""  # what follows is not HTTP: never read as a body
        assert pool.open_connections == 0


@pytest.mark.parametrize("end", ["complete", "closed", "failed"])
async def test_a_settled_answer_lets_go_of_its_parser(end: str) -> None:
    # The parser holds the response's callbacks: kept, it would make a cycle per call.
    async def script(exchange: Exchange) -> None:
        if end == "complete":
            exchange.writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        else:
            exchange.writer.write(SSE_HEAD + (b"zz\r\n" if end == "failed" else b""))
            await asyncio.sleep(5)

    async with answer_to(script) as (_, response):
        if end == "complete":
            await response.read()
        elif end == "closed":
            response.close()
        else:
            with pytest.raises(MalformedResponse):
                await response.read()
        assert not response.parsing


async def test_picked_headers_are_what_the_header_map_gives() -> None:
    async def script(exchange: Exchange) -> None:
        exchange.writer.write(
            b"HTTP/1.1 200 OK\r\nRequest-Id: req_\xc3\xa9\xff\r\nX-Twice: a\r\nx-twice: b\r\n"
            b"Anthropic-Ratelimit-Tokens-Limit: 10\r\nanthropic-ratelimit-requests-limit: 5\r\n"
            b"Content-Length: 2\r\n\r\n{}"
        )

    async with answer_to(script) as (_, response):
        picked = response.pick(("request-id", "x-twice", "retry-after"), "anthropic-ratelimit-")
        headers = response.headers
        assert picked == {
            "request-id": headers["request-id"],  # the first value, decoded as the map's
            "x-twice": "a",
            "Anthropic-Ratelimit-Tokens-Limit": "10",  # under its own name
            "anthropic-ratelimit-requests-limit": "5",
        }
        assert picked["request-id"].encode("utf-8", "surrogateescape") == b"req_\xc3\xa9\xff"
        assert await response.read() == b"{}"
