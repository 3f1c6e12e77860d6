"""Listeners and lifecycle: start both listeners, drain on SIGTERM/SIGINT, exit cleanly.

Shutdown order: `/readyz` turns 503 → the traffic listener stops accepting → in-flight
requests get `server.shutdown_grace_seconds` to finish → streams still live get a
final `shutting_down` error event → connections close → the admin listener closes.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import ssl
from typing import Any

from aiohttp import web

from sidecar.app import build_apps
from sidecar.config import Config, split_host_port
from sidecar.keys import RUNTIME
from sidecar.runtime import Runtime
from sidecar.telemetry import Telemetry

log = logging.getLogger("sidecar.server")
_FINAL_EVENT_GRACE = 2.0  # seconds for final events to reach clients after streams are stopped


def _ssl_context(config: Config) -> ssl.SSLContext | None:
    tls = config.server.tls
    if tls.cert_file is None or tls.key_file is None:
        return None
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(tls.cert_file, tls.key_file)
    return context


def _port_of(runner: web.AppRunner) -> int:
    address: Any = runner.addresses[0]
    return int(address[1])


class SidecarServer:
    """The two listeners of one config; `start` binds, `shutdown` drains and closes."""

    def __init__(self, config: Config, *, telemetry: Telemetry | None = None) -> None:
        self.config = config
        traffic, admin = build_apps(config, telemetry)
        # handler_cancellation: a client that goes away cancels its stream at once.
        self._traffic = web.AppRunner(
            traffic, handler_cancellation=True, access_log=None, shutdown_timeout=1.0
        )
        self._admin = web.AppRunner(admin, access_log=None, shutdown_timeout=1.0)
        self._traffic_app = traffic
        self._sites: list[web.TCPSite] = []
        self.port = 0
        self.admin_port = 0

    @property
    def runtime(self) -> Runtime:
        return self._traffic_app[RUNTIME]

    @property
    def scheme(self) -> str:
        return "https" if self.config.server.tls.enabled else "http"

    @property
    def url(self) -> str:
        host, _ = split_host_port(self.config.server.listen)
        return f"{self.scheme}://{_client_host(host)}:{self.port}"

    @property
    def admin_url(self) -> str:
        host, _ = split_host_port(self.config.server.admin_listen)
        return f"http://{_client_host(host)}:{self.admin_port}"

    async def start(self) -> None:
        """Bind both listeners (port 0 picks a free port; see `port` / `admin_port`)."""
        await self._traffic.setup()
        await self._admin.setup()
        host, port = split_host_port(self.config.server.listen)
        site = web.TCPSite(
            self._traffic, host, port, ssl_context=_ssl_context(self.config), backlog=1024
        )
        await site.start()
        self._sites.append(site)
        admin_host, admin_port = split_host_port(self.config.server.admin_listen)
        await web.TCPSite(self._admin, admin_host, admin_port).start()
        self.port = _port_of(self._traffic)
        self.admin_port = _port_of(self._admin)

    async def shutdown(self, grace: float | None = None) -> None:
        """Drain: not ready, stop accepting, wait for in-flight work, end what is left."""
        runtime = self.runtime
        runtime.lifecycle.draining = True
        for site in self._sites:
            await site.stop()
        self._sites.clear()
        wait = self.config.server.shutdown_grace_seconds if grace is None else grace
        if not await runtime.lifecycle.wait_idle(wait):
            stopped = runtime.streams.stop_all()
            log.warning("shutdown grace over", extra={"streams_stopped": stopped})
            await runtime.lifecycle.wait_idle(_FINAL_EVENT_GRACE)
        await self._traffic.cleanup()
        await self._admin.cleanup()


def _client_host(host: str) -> str:
    if host in ("0.0.0.0", ""):
        return "127.0.0.1"
    if host == "::":
        return "[::1]"
    return f"[{host}]" if ":" in host else host


async def serve(config: Config) -> int:
    """Run until SIGTERM/SIGINT, then shut down gracefully; returns the exit code."""
    server = SidecarServer(config)
    try:
        await server.start()
    except OSError as exc:
        log.error("cannot listen: %s", exc)
        return 1
    log.info(
        "sidecar serving",
        extra={"url": server.url, "admin_url": server.admin_url, "claude": config.claude.base_url},
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    log.info("shutting down", extra={"grace_seconds": config.server.shutdown_grace_seconds})
    await server.shutdown()
    return 0
