"""One keep-alive connection to Claude: back to the pool only when its answer ended cleanly
and its request was all taken; bytes nobody asked for close it."""

from __future__ import annotations

import asyncio

import pytest

from sidecar.http_client import Pool
from tests.support.raw_http import Exchange, raw_server


@pytest.mark.stdlib_loop  # patches the transport's write buffer size
async def test_a_connection_whose_request_was_not_all_taken_is_not_reused() -> None:
    async def early(exchange: Exchange) -> None:
        exchange.writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n")
        await exchange.writer.drain()
        await asyncio.sleep(0.1)
        exchange.writer.write(b"ok")

    async with raw_server(early) as server:
        pool = Pool(server.url, limit=2, connect_timeout=5)
        response = await pool.request("POST", "/", {}, b"x")
        connection = next(iter(pool.connections()))
        transport = connection.transport
        assert transport is not None
        transport.get_write_buffer_size = lambda: 1  # type: ignore[method-assign]
        assert await response.read() == b"ok"  # answered before the body was all sent
        assert pool.idle_connections == 0
        await pool.close()


async def test_bytes_after_the_end_of_an_answer_drop_the_connection() -> None:
    async def script(exchange: Exchange) -> None:
        exchange.writer.write(
            b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
            b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nextra"
        )

    async with raw_server(script) as server:
        pool = Pool(server.url, limit=2, connect_timeout=5)
        try:
            response = await pool.request("GET", "/", {}, None)
            assert await response.read() == b"ok"
            await asyncio.sleep(0.01)
            assert pool.idle_connections == 0
            assert pool.open_connections == 0
        finally:
            await pool.close()


async def test_bytes_while_no_call_waits_close_an_idle_connection() -> None:
    async def script(exchange: Exchange) -> None:
        exchange.writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        await exchange.writer.drain()
        await asyncio.sleep(0.1)
        exchange.writer.write(b"HTTP/1.1 200 OK\r\n")  # out of step: nobody asked

    async with raw_server(script) as server:
        pool = Pool(server.url, limit=2, connect_timeout=5)
        try:
            response = await pool.request("GET", "/", {}, None)
            assert await response.read() == b"ok"
            assert (pool.idle_connections, pool.open_connections) == (1, 1)
            for _ in range(100):
                if pool.open_connections == 0:
                    break
                await asyncio.sleep(0.01)
            assert (pool.idle_connections, pool.open_connections) == (0, 0)
        finally:
            await pool.close()
