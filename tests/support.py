"""Real servers for tests: the sidecar in-process on free ports, configured from plain data."""

from __future__ import annotations

import contextlib
import socket
from collections.abc import AsyncIterator, Mapping
from typing import Any

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
