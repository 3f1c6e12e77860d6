"""The floor: a bare uvloop TCP byte relay, one upstream connection per client connection.

    python bench/floor_relay.py --port 8002 --upstream http://127.0.0.1:8000

No HTTP parsing, no headers, no policy: bytes read from one side are written to the
other in the same callback, with reading paused while the other side's buffer is full.
Any proxy that understands HTTP does at least this much per event, so its row in the
benchmark is the lowest CPU and latency a Python-hosted relay can reach on this machine.
"""

from __future__ import annotations

import argparse
import asyncio
from urllib.parse import urlsplit


class _Side(asyncio.Protocol):
    """One socket of a relayed pair; what it reads goes straight to its peer's transport."""

    __slots__ = ("peer", "pending", "transport")

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.peer: _Side | None = None
        self.pending: list[bytes] = []  # bytes read before the peer connected

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # a TCP transport (uvloop's own class)

    def data_received(self, data: bytes) -> None:
        peer = self.peer
        if peer is None or peer.transport is None:
            self.pending.append(data)
            return
        peer.transport.write(data)

    def eof_received(self) -> bool | None:
        if self.peer is not None and self.peer.transport is not None:
            self.peer.transport.close()
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        if self.peer is not None and self.peer.transport is not None:
            self.peer.transport.close()

    # Backpressure: the peer's write buffer is full, so stop reading this side.
    def pause_writing(self) -> None:
        if self.peer is not None and self.peer.transport is not None:
            self.peer.transport.pause_reading()

    def resume_writing(self) -> None:
        if self.peer is not None and self.peer.transport is not None:
            self.peer.transport.resume_reading()


async def serve(port: int, upstream: str) -> None:
    target = urlsplit(upstream)
    host, upstream_port = target.hostname or "127.0.0.1", target.port or 80
    loop = asyncio.get_running_loop()
    connecting: set[asyncio.Task[None]] = set()  # held until done (the loop keeps weak refs)

    def accepted() -> _Side:
        client = _Side()

        async def connect() -> None:
            try:
                _, server = await loop.create_connection(_Side, host, upstream_port)
            except OSError:
                if client.transport is not None:
                    client.transport.close()
                return
            server.peer, client.peer = client, server
            if server.transport is not None:
                for data in client.pending:
                    server.transport.write(data)
            client.pending.clear()

        task = loop.create_task(connect())
        connecting.add(task)
        task.add_done_callback(connecting.discard)
        return client

    server = await loop.create_server(accepted, "127.0.0.1", port, backlog=4096)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--upstream", required=True)
    args = parser.parse_args()
    import uvloop

    uvloop.run(serve(args.port, args.upstream))
