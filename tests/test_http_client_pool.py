"""The keep-alive pool: what goes on the wire, reuse, limits, idle expiry, failures, TLS."""

from __future__ import annotations

import asyncio
import socket
import ssl
from pathlib import Path

import pytest

from sidecar.http_client import ConnectError, Disconnected, Pool
from tests.support.certs import write_self_signed
from tests.support.raw_http import Exchange, raw_server
from tests.support.sockets import free_port

OK = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"


async def never(exchange: Exchange) -> None:
    """Never answers (a call waits for its head)."""
    await asyncio.sleep(10)


async def answer_ok(exchange: Exchange) -> None:
    exchange.writer.write(OK)


async def test_the_request_goes_out_whole_with_host_and_length() -> None:
    async with raw_server(answer_ok) as server:
        pool = Pool(server.url, limit=2, connect_timeout=5)
        headers = {"anthropic-version": "2023-06-01", "x-api-key": "k"}
        response = await pool.request("POST", "/v1/messages?beta=true", headers, b'{"a":1}')
        assert await response.read() == b"ok"
        await (await pool.request("GET", "/v1/models", {}, None)).read()
        await (await pool.request("POST", "/empty", {}, None)).read()
        await pool.close()
    port = server.url.rsplit(":", 1)[1]
    first, second, third = server.exchanges
    assert first.head == (
        b"POST /v1/messages?beta=true HTTP/1.1\r\nhost: 127.0.0.1:%b\r\n"
        b"anthropic-version: 2023-06-01\r\nx-api-key: k\r\ncontent-length: 7\r\n\r\n"
        % port.encode()
    )
    assert first.body == b'{"a":1}'
    # A GET without headers or a body: the request line, host and the blank line, no more.
    assert second.head == b"GET /v1/models HTTP/1.1\r\nhost: 127.0.0.1:%b\r\n\r\n" % port.encode()
    assert third.head.startswith(b"POST /empty HTTP/1.1\r\n")  # nothing stray before it
    assert b"\r\ncontent-length: 0\r\n" in third.head  # a POST always says its length


@pytest.mark.parametrize("bad", ["\r\n", "\n", "\r", "\0"], ids=["crlf", "lf", "cr", "nul"])
async def test_no_header_or_request_can_be_smuggled_in_a_value(bad: str) -> None:
    async with raw_server(answer_ok) as server:
        pool = Pool(server.url, limit=2, connect_timeout=5)
        headers = {"anthropic-beta": f"x{bad}x-injected: 1{bad}{bad}GET /admin HTTP/1.1"}
        await (await pool.request(f"GET{bad}", f"/p{bad}ath", headers, None)).read()
        await pool.close()
    (exchange,) = server.exchanges
    lines = exchange.head.split(b"\r\n")
    assert lines[0].startswith(b"GET")
    assert sum(line.lower().startswith(b"anthropic-beta") for line in lines) == 1
    assert not any(line.startswith(b"x-injected") for line in lines)
    assert all(b"\0" not in line and b"\n" not in line for line in lines)


async def test_connections_are_reused_and_capped_at_the_limit() -> None:
    release = asyncio.Event()

    async def slow(exchange: Exchange) -> None:
        await release.wait()
        exchange.writer.write(OK)

    async with raw_server(slow) as server:
        pool = Pool(server.url, limit=2, connect_timeout=5)
        calls = [asyncio.create_task(pool.request("GET", "/", {}, None)) for _ in range(5)]
        await asyncio.sleep(0.1)
        assert pool.open_connections == 2  # the other three wait for one of them
        release.set()
        for call in calls:
            assert await (await call).read() == b"ok"
        assert server.connections == 2
        assert len(server.exchanges) == 5
        assert pool.idle_connections == 2
        await pool.close()


async def test_idle_connections_expire_and_closed_ones_are_forgotten() -> None:
    async with raw_server(answer_ok) as server:
        pool = Pool(server.url, limit=4, connect_timeout=5, keepalive=0.1)
        await (await pool.request("GET", "/", {}, None)).read()
        assert pool.idle_connections == 1
        await asyncio.sleep(0.4)
        assert pool.open_connections == 0
        assert pool.idle_connections == 0
        await (await pool.request("GET", "/", {}, None)).read()
        assert server.connections == 2
        await pool.close()

    async def then_close(exchange: Exchange) -> None:
        exchange.writer.write(OK)
        await exchange.writer.drain()
        exchange.writer.close()  # a server that ends idle connections on its side

    async with raw_server(then_close) as server:
        pool = Pool(server.url, limit=4, connect_timeout=5)
        await (await pool.request("GET", "/", {}, None)).read()
        await asyncio.sleep(0.05)
        assert pool.open_connections == 0
        await (await pool.request("GET", "/", {}, None)).read()  # a fresh connection
        assert server.connections == 2
        await pool.close()


async def test_a_call_that_leaves_before_the_head_closes_its_connection() -> None:
    async with raw_server(never) as server:
        pool = Pool(server.url, limit=4, connect_timeout=5)
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(0.1):
                await pool.request("GET", "/", {}, None)
        await asyncio.sleep(0.01)
        assert pool.open_connections == 0  # its answer would confuse the next call
        await pool.close()


async def test_connect_failures_are_connect_errors() -> None:
    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    pool = Pool(f"http://127.0.0.1:{port}", limit=1, connect_timeout=5)
    with pytest.raises(ConnectError, match="ConnectionRefusedError"):
        await pool.request("GET", "/", {}, None)
    assert pool.open_connections == 0
    unresolvable = Pool("http://no-such-host.invalid", limit=1, connect_timeout=5)
    with pytest.raises(ConnectError):
        await unresolvable.request("GET", "/", {}, None)


async def test_closing_the_pool_ends_calls_in_flight() -> None:
    async def partial(exchange: Exchange) -> None:
        exchange.writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nsome")
        await asyncio.sleep(10)

    async with raw_server(partial) as server:
        pool = Pool(server.url, limit=2, connect_timeout=5)
        response = await pool.request("GET", "/", {}, None)
        await pool.close()
        with pytest.raises(Disconnected):
            await response.read()
        with pytest.raises(ConnectError, match="closed"):
            await pool.request("GET", "/", {}, None)


def test_only_http_origins() -> None:
    with pytest.raises(ValueError, match="origin"):
        asyncio.run(_make("ftp://example.com"))


async def _make(origin: str) -> Pool:
    return Pool(origin, limit=1, connect_timeout=1)


async def test_tls_checks_the_certificate_and_its_host_name(tmp_path: Path) -> None:
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    write_self_signed(cert, key)
    served = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    served.load_cert_chain(cert, key)

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await reader.readuntil(b"\r\n\r\n")
            writer.write(OK)
            await writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError, ssl.SSLError):
            pass
        finally:
            writer.close()

    # Also on 127.0.0.2: an address the certificate does not name.
    port = free_port()
    server = await asyncio.start_server(serve, ["127.0.0.1", "127.0.0.2"], port, ssl=served)
    try:
        trusting = ssl.create_default_context(cafile=str(cert))
        pool = Pool(f"https://localhost:{port}", limit=1, connect_timeout=5, ssl_context=trusting)
        assert await (await pool.request("GET", "/", {}, None)).read() == b"ok"
        await pool.close()
        # The system's trust store does not know a self-signed certificate.
        strict = Pool(f"https://localhost:{port}", limit=1, connect_timeout=5)
        with pytest.raises(ConnectError, match="SSLCertVerificationError"):
            await strict.request("GET", "/", {}, None)
        # Trusted, but not for this host name.
        elsewhere = Pool(f"https://127.0.0.2:{port}", limit=1, connect_timeout=5,
                         ssl_context=trusting)  # fmt: skip
        with pytest.raises(ConnectError, match="SSLCertVerificationError"):
            await elsewhere.request("GET", "/", {}, None)
    finally:
        server.close()


async def test_a_call_waiting_for_a_connection_when_the_pool_closes_fails_to_connect() -> None:
    async with raw_server(never) as server:
        pool = Pool(server.url, limit=1, connect_timeout=5)
        first = asyncio.create_task(pool.request("GET", "/", {}, None))
        await asyncio.sleep(0.05)
        waiting = asyncio.create_task(pool.request("GET", "/", {}, None))
        await asyncio.sleep(0.05)
        await pool.close()
        with pytest.raises(ConnectError, match="closed"):
            await waiting
        with pytest.raises(Disconnected):
            await first
        assert server.connections == 1  # no connection opened for the waiting call


async def test_written_runs_after_the_request_is_written_before_its_answer() -> None:
    """The caller's deferred step runs once the request is on the wire, while the server
    has not answered yet; not at all when no connection opened; and its error ends the
    call with its connection closed."""
    arrived, release = asyncio.Event(), asyncio.Event()
    steps: list[str] = []

    async def held_back(exchange: Exchange) -> None:
        arrived.set()
        await release.wait()
        exchange.writer.write(OK)

    async with raw_server(held_back) as server:
        pool = Pool(server.url, limit=1, connect_timeout=5)
        call = asyncio.create_task(
            pool.request("POST", "/x", {}, b"{}", lambda: steps.append("written"))
        )
        await arrived.wait()  # the server has the request whole
        assert steps == ["written"]  # ran before any answer came
        release.set()
        response = await call
        assert await response.read() == b"ok"
        assert steps == ["written"]

        def fails() -> None:
            raise RuntimeError("bookkeeping failed")

        with pytest.raises(RuntimeError, match="bookkeeping"):
            await pool.request("POST", "/x", {}, b"{}", fails)
        await asyncio.sleep(0.01)
        assert pool.open_connections == 0  # its answer would confuse the next call
        await pool.close()
    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    refused = Pool(f"http://127.0.0.1:{port}", limit=1, connect_timeout=5)
    with pytest.raises(ConnectError):
        await refused.request("GET", "/", {}, None, lambda: steps.append("never"))
    assert steps == ["written"]
