"""A proxy with an idle timeout, as load balancers have: it cuts a connection whose
server sent nothing for `idle` seconds."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field


@dataclass
class IdleProxy:
    """Where it listens, and how many connections it cut for silence."""

    port: int = 0
    cut: int = 0
    _tasks: set[asyncio.Task[None]] = field(default_factory=set)


async def _pipe(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, idle: float | None
) -> bool:
    """Copy until EOF (True), or False once `idle` seconds passed without a byte."""
    while True:
        try:
            async with asyncio.timeout(idle):
                data = await reader.read(65536)
        except TimeoutError:
            return False
        if not data:
            return True
        writer.write(data)
        await writer.drain()


@contextlib.asynccontextmanager
async def idle_proxy(target_port: int, idle: float) -> AsyncIterator[IdleProxy]:
    proxy = IdleProxy()

    async def serve(client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        server_r, server_w = await asyncio.open_connection("127.0.0.1", target_port)
        upstream = asyncio.create_task(_pipe(client_r, server_w, None))
        try:
            if not await _pipe(server_r, client_w, idle):
                proxy.cut += 1
        except (ConnectionError, OSError):
            pass
        finally:
            upstream.cancel()
            client_w.close()
            server_w.close()

    def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.create_task(serve(reader, writer))
        proxy._tasks.add(task)
        task.add_done_callback(proxy._tasks.discard)

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    proxy.port = server.sockets[0].getsockname()[1]
    try:
        yield proxy
    finally:
        server.close()
        for task in list(proxy._tasks):
            task.cancel()
        await asyncio.gather(*proxy._tasks, return_exceptions=True)
        await server.wait_closed()
