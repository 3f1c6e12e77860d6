"""A Claude that answers with scripted raw bytes, for what the fake Claude cannot do on
purpose: bodies cut after the headers, broken chunk framing, error bodies in pieces."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import aiohttp

from tests.support.sidecars import running_sidecar
from tests.support.sockets import peer_may_leave

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
    """`data` as one HTTP/1.1 chunk."""
    return b"%x\r\n%b\r\n" % (len(data), data)


@contextlib.asynccontextmanager
async def scripted_claude(*scripts: Script, seen: list[bytes] | None = None) -> AsyncIterator[str]:
    """A Claude that answers the n-th request (on any connection) with `scripts[n]`; the
    heads it read go to `seen` (when given)."""
    queue = list(scripts)

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """Read each request whole, then answer it with the next script."""
        with (
            contextlib.suppress(ConnectionError, asyncio.IncompleteReadError),
            peer_may_leave(writer),
        ):
            while queue:
                head = await reader.readuntil(b"\r\n\r\n")
                if seen is not None:
                    seen.append(head)
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
    """Config data pointing the sidecar at `url`, no retries unless `extra` says so."""
    return {"claude": {"base_url": url, "api_key": "sk", "max_retries": 0, **extra}}


def messages_body(stream: bool = True) -> dict[str, Any]:
    """A one-message Messages API request body."""
    return {"model": MODEL, "max_tokens": 5, "stream": stream,
            "messages": [{"role": "user", "content": "hi"}]}  # fmt: skip


async def relayed(script: Script, route: str = "/v1/messages", body: Any = None) -> bytes:
    """What a client reads from a sidecar on `route` (default body: `messages_body()`)
    when Claude answers with `script`."""
    async with (
        scripted_claude(script) as url,
        running_sidecar(claude_config(url)) as sidecar,
        aiohttp.ClientSession() as http,
        http.post(sidecar.url + route, json=messages_body() if body is None else body) as response,
    ):
        return await response.read()
