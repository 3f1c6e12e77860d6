"""Real servers for tests: the sidecar in-process on free ports, configured from plain data."""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import subprocess
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web

from sidecar import loader
from sidecar.server import SidecarServer
from sidecar.telemetry import Telemetry


def free_port() -> int:
    """A TCP port free on loopback right now (for servers that cannot bind port 0)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def merge(base: dict[str, Any], override: Mapping[str, Any]) -> dict[str, Any]:
    """Deep-merge config data (override wins)."""
    merged = dict(base)
    for key, value in override.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), dict):
            merged[key] = merge(merged[key], value)
        else:
            merged[key] = value
    return merged


BASE: dict[str, Any] = {
    "server": {"listen": "127.0.0.1:0", "admin_listen": "127.0.0.1:0", "shutdown_grace_seconds": 2},
    "telemetry": {"log_format": "json"},
}


@contextlib.asynccontextmanager
async def running_sidecar(
    data: Mapping[str, Any] | None = None,
    *,
    telemetry: Telemetry | None = None,
    env: Mapping[str, str] | None = None,
) -> AsyncIterator[SidecarServer]:
    """Start a sidecar with `data` merged onto test defaults (free ports); shut it down after."""
    config = loader.validate(merge(BASE, data or {}), env or {})
    server = SidecarServer(config, telemetry=telemetry)
    await server.start()
    try:
        yield server
    finally:
        await server.shutdown(grace=1.0)


# --------------------------------------------------------------------------- subprocesses

ROOT = Path(__file__).resolve().parent.parent


def spawn_sidecar(
    config_path: Path, env: Mapping[str, str] | None = None
) -> subprocess.Popen[bytes]:
    """`python -m sidecar run -c FILE` as a real process; its logs go to FILE with `.log`."""
    with config_path.with_suffix(".log").open("wb") as log:  # a file: a pipe could fill up
        return subprocess.Popen(
            [sys.executable, "-m", "sidecar", "run", "-c", str(config_path)],
            stdout=subprocess.DEVNULL,
            stderr=log,
            cwd=ROOT,
            env={**os.environ, **(env or {})},
        )


async def wait_ready(http: aiohttp.ClientSession, admin_url: str, timeout: float = 30) -> None:
    """Wait until the admin listener answers `/readyz` 200 (the process is serving)."""
    async with asyncio.timeout(timeout):
        while True:
            with contextlib.suppress(aiohttp.ClientError):
                async with http.get(admin_url + "/readyz") as response:
                    if response.status == 200:
                        return
            await asyncio.sleep(0.05)


async def eventually(predicate: Callable[[], Awaitable[bool]], timeout: float = 10) -> None:
    """Poll `predicate` until it holds (for state another process or task changes)."""
    async with asyncio.timeout(timeout):
        while True:
            if await predicate():
                return
            await asyncio.sleep(0.02)


def stop_process(process: subprocess.Popen[bytes], config_path: Path) -> str:
    """Kill `process` if still running; its logs so far."""
    if process.poll() is None:
        process.kill()
        process.wait(timeout=10)
    return config_path.with_suffix(".log").read_text(errors="replace")


def dechunk(data: bytes) -> bytes:
    """The payload of an HTTP/1.1 chunked body."""
    out = bytearray()
    while True:
        size_line, _, rest = data.partition(b"\r\n")
        size = int(size_line, 16)
        if size == 0:
            return bytes(out)
        out += rest[:size]
        data = rest[size + 2 :]


def shrink_send_buffers(server: SidecarServer) -> None:
    """Accepted sockets inherit a small send buffer: a slow client fills it at once."""
    for site in server._sites:
        for listener in site._server.sockets:  # type: ignore[union-attr]
            listener.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)


async def slow_client(port: int, body: bytes) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """POST `body` to /v1/messages from a client with tiny buffers that reads only when told."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.setblocking(False)
    await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", port))
    reader, writer = await asyncio.open_connection(sock=sock, limit=4096)
    writer.write(
        b"POST /v1/messages HTTP/1.1\r\nHost: sidecar\r\nContent-Type: application/json\r\n"
        b"Content-Length: %d\r\nConnection: close\r\n\r\n%b" % (len(body), body)
    )
    await writer.drain()
    return reader, writer


@contextlib.asynccontextmanager
async def serving(app: web.Application) -> AsyncIterator[str]:
    """Serve an aiohttp app on a free loopback port; yields its base URL."""
    runner = web.AppRunner(app, shutdown_timeout=0.5, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    address: Any = runner.addresses[0]
    try:
        yield f"http://127.0.0.1:{address[1]}"
    finally:
        await runner.cleanup()
