"""A client on a raw socket that notes when each of the sidecar's bytes arrived."""

from __future__ import annotations

import asyncio
import itertools
import json
from typing import Any


async def timed_response(
    port: int,
    path: str,
    body: dict[str, Any] | None = None,
    *,
    headers: dict[str, str] | None = None,
    limit: float = 20.0,
    only: float | None = None,
) -> list[tuple[float, bytes]]:
    """Send one request (`body`: a JSON POST, else a GET) and read its answer to the end
    (or for `only` seconds, then leave): each read with the loop time it arrived at, the
    first one's time counted from the send."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    extra = "".join(f"{name}: {value}\r\n" for name, value in (headers or {}).items())
    if body is None:
        head = f"GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n{extra}\r\n".encode()
    else:
        data = json.dumps(body).encode()
        head = (
            f"POST {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n{extra}"
            f"Content-Type: application/json\r\nContent-Length: {len(data)}\r\n\r\n"
        ).encode() + data
    loop = asyncio.get_running_loop()
    sent = loop.time()
    writer.write(head)
    reads: list[tuple[float, bytes]] = [(sent, b"")]
    try:
        async with asyncio.timeout(limit if only is None else only):
            while chunk := await reader.read(65536):
                reads.append((loop.time(), chunk))
    except TimeoutError:
        if only is None:
            raise
    finally:
        writer.close()
    return reads


def gaps(reads: list[tuple[float, bytes]]) -> list[float]:
    """The silences the client saw: from the request's send to the first byte, then
    between reads."""
    times = [at for at, _ in reads]
    return [b - a for a, b in itertools.pairwise(times)]


def joined(reads: list[tuple[float, bytes]]) -> bytes:
    return b"".join(data for _, data in reads)
