"""Raw sockets for tests: free ports, clients that read only when told, HTTP/1.1 framing."""

from __future__ import annotations

import asyncio
import contextlib
import random
import socket
from collections.abc import Iterator
from pathlib import Path

from sidecar.server import SidecarServer


def _ephemeral_range() -> tuple[int, int]:
    """The ports the kernel hands to outgoing connections (and to `bind(0)`)."""
    try:
        low, high = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()
        return int(low), int(high)
    except (OSError, ValueError):
        return 32768, 60999


_HANDED_OUT: set[int] = set()


def free_port() -> int:
    """A TCP port free on loopback right now (for servers that cannot bind port 0), never one
    this process handed out before: two picks for one server (its listener and its admin
    port) are bound later, so a second pick could otherwise repeat the first.

    It is taken below the ephemeral range: a port from `bind(0)` is one the kernel may give to
    the next outgoing connection's local end before the server that was told it binds it."""
    low, high = _ephemeral_range()
    bottom, top = (10000, low - 1) if low > 12000 else (high + 1, 65535)
    for _ in range(200 if bottom < top else 0):
        port = random.randint(bottom, top)
        if port in _HANDED_OUT:
            continue
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
        _HANDED_OUT.add(port)
        return port
    while True:  # no room outside the ephemeral range: the kernel's pick
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = int(sock.getsockname()[1])
        if port not in _HANDED_OUT:
            _HANDED_OUT.add(port)
            return port


async def expecting_continue(
    port: int, path: str, length: int = 4096
) -> tuple[bytes, asyncio.StreamReader, asyncio.StreamWriter]:
    """POST to `path` with `Expect: 100-continue` and a `length`-byte body not sent yet:
    the first head the sidecar answers (`100 Continue` or the final one), and the
    connection to go on with."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(
        f"POST {path} HTTP/1.1\r\nHost: sidecar\r\nContent-Type: application/json\r\n"
        f"Content-Length: {length}\r\nExpect: 100-continue\r\n\r\n".encode()
    )
    await writer.drain()
    first = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
    return first, reader, writer


def dechunk(data: bytes) -> bytes:
    """The payload in the complete chunks of an HTTP/1.1 chunked body read so far (all of it
    once the body has ended)."""
    out = bytearray()
    while b"\r\n" in data:
        size_line, _, rest = data.partition(b"\r\n")
        size = int(size_line, 16)
        if size == 0 or len(rest) < size + 2:
            break
        out += rest[:size]
        data = rest[size + 2 :]
    return bytes(out)


def relayed_payload(raw: bytes | bytearray) -> bytes:
    """The payload of a chunked response (head included) in its complete chunks read so far."""
    return dechunk(bytes(raw).partition(b"\r\n\r\n")[2])


def shrink_send_buffers(server: SidecarServer) -> None:
    """Accepted sockets inherit a small send buffer: a slow client fills it at once."""
    for listener in server.traffic_sockets():
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)


async def small_buffered(port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """A connection to `port` with tiny receive buffers: a client that reads only when told
    fills them at once."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.setblocking(False)
    await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", port))
    return await asyncio.open_connection(sock=sock, limit=4096)


async def slow_client(
    port: int,
    body: bytes,
    headers: bytes = b"",
    *,
    method: str = "POST",
    path: str = "/v1/messages",
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """POST `body` to /v1/messages (or `method` to `path`) from a client with tiny buffers
    that reads only when told; `headers`: more header lines, each ending in CRLF."""
    reader, writer = await small_buffered(port)
    writer.write(
        b"%b %b HTTP/1.1\r\nHost: sidecar\r\nContent-Type: application/json\r\n"
        b"Content-Length: %d\r\nConnection: close\r\n%b\r\n%b"
        % (method.encode(), path.encode(), len(body), headers, body)
    )
    await writer.drain()
    return reader, writer


@contextlib.contextmanager
def peer_may_leave(writer: asyncio.StreamWriter) -> Iterator[None]:
    """Around a scripted server's writes: a write once the peer has gone is dropped by
    asyncio's transports but refused by uvloop's (`RuntimeError`, the handle closed);
    either way the peer left, which ends the exchange. Any other error is the script's."""
    try:
        yield
    except RuntimeError:
        if not writer.is_closing():
            raise


def server_side(server: SidecarServer, client: asyncio.StreamWriter) -> asyncio.Transport:
    """The sidecar's transport of `client`'s connection (its port as the sidecar sees it)."""
    port = client.get_extra_info("sockname")[1]
    for handler in server.connections():
        transport = handler.transport
        if transport is not None and transport.get_extra_info("peername")[1] == port:
            return transport
    raise LookupError(f"no connection from port {port}")
