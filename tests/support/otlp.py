"""An OTLP/HTTP receiver on loopback: what the sidecar's span exporter posted, as received."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

from aiohttp import web

from tests.support.sockets import free_port


@dataclass
class Receiver:
    """An OTLP/HTTP receiver: the bodies (decompressed) and headers it was sent."""

    url: str
    status: int = 200
    bodies: list[bytes] = field(default_factory=list)
    headers: list[dict[str, str]] = field(default_factory=list)


@contextlib.asynccontextmanager
async def receiving() -> AsyncIterator[Receiver]:
    """A receiver answering `POST /v1/traces` with its `status`, until the block ends."""
    port = free_port()
    receiver = Receiver(f"http://127.0.0.1:{port}/v1/traces")

    async def receive(request: web.Request) -> web.Response:
        receiver.bodies.append(await request.read())  # aiohttp decompresses it
        receiver.headers.append(dict(request.headers))
        return web.Response(status=receiver.status, content_type="application/x-protobuf")

    app = web.Application()
    app.router.add_post("/v1/traces", receive)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        yield receiver
    finally:
        await runner.cleanup()
