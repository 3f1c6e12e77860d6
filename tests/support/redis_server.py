"""A real `redis-server` for tests: free port, temp dir, no persistence; killable and restartable."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import tempfile
from collections.abc import AsyncIterator

import pytest

from tests.support.sockets import free_port

READY = b"Ready to accept connections"


class RedisServer:
    """One redis-server process; `kill` and `start` again keep the same port (an outage)."""

    def __init__(self, directory: str) -> None:
        self.directory = directory
        self.port = free_port()
        self._process: asyncio.subprocess.Process | None = None

    @property
    def url(self) -> str:
        """The `redis://` URL of this server."""
        return f"redis://127.0.0.1:{self.port}/0"

    async def start(self) -> None:
        """Start and wait until it says it accepts connections (its log line, not a sleep)."""
        binary = shutil.which("redis-server")
        if binary is None:
            pytest.skip("redis-server is not installed (apt-get install redis-server)")
        self._process = await asyncio.create_subprocess_exec(
            binary,
            "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
            "--appendonly", "no", "--dir", self.directory, "--logfile", "",
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
        )  # fmt: skip
        assert self._process.stdout is not None
        seen = b""
        async with asyncio.timeout(10):
            while READY not in seen:
                line = await self._process.stdout.readline()
                if not line:
                    raise RuntimeError(f"redis-server exited: {seen.decode(errors='replace')}")
                seen += line
        # Keep draining its log so a full pipe never blocks the server.
        asyncio.get_running_loop().create_task(self._drain(self._process))

    @staticmethod
    async def _drain(process: asyncio.subprocess.Process) -> None:
        assert process.stdout is not None
        with contextlib.suppress(Exception):
            while await process.stdout.read(65536):
                pass

    @contextlib.asynccontextmanager
    async def stalled(self) -> AsyncIterator[None]:
        """SIGSTOP for the block, then SIGCONT: connections stay open, nothing answers."""
        assert self._process is not None
        os.kill(self._process.pid, signal.SIGSTOP)
        try:
            yield
        finally:
            os.kill(self._process.pid, signal.SIGCONT)

    async def kill(self) -> None:
        """SIGKILL: every connection drops, every key is gone (no persistence)."""
        if self._process is not None and self._process.returncode is None:
            self._process.kill()
            await self._process.wait()
        self._process = None


@contextlib.asynccontextmanager
async def running_redis() -> AsyncIterator[RedisServer]:
    """A `redis-server` on a free port for the block, killed after."""
    with tempfile.TemporaryDirectory(prefix="sidecar-redis-") as directory:
        server = RedisServer(directory)
        await server.start()
        try:
            yield server
        finally:
            await server.kill()
