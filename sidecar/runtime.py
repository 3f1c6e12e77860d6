"""Everything a request needs, built once per config: routes, clients, stores, telemetry."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import aiohttp

    from sidecar.admission import Admission
    from sidecar.config import Config
    from sidecar.policy import AuthService
    from sidecar.quotas import QuotaGate
    from sidecar.relay import StreamRegistry
    from sidecar.routes import RouteTable
    from sidecar.telemetry import Telemetry
    from sidecar.upstream import ClaudeClient


class Lifecycle:
    """Draining flag and in-flight request count, for readiness and graceful shutdown."""

    def __init__(self) -> None:
        self.draining = False
        self.inflight = 0
        self._idle = asyncio.Event()
        self._idle.set()

    def enter(self) -> None:
        self.inflight += 1
        self._idle.clear()

    def leave(self) -> None:
        self.inflight -= 1
        if self.inflight == 0:
            self._idle.set()

    async def wait_idle(self, timeout: float) -> bool:
        """Wait until no request is in flight; False if `timeout` passed first."""
        try:
            async with asyncio.timeout(timeout):
                await self._idle.wait()
        except TimeoutError:
            return False
        return True


@dataclass(slots=True)
class Runtime:
    """The wired services of one running config."""

    config: Config
    routes: RouteTable
    telemetry: Telemetry
    auth: AuthService
    quotas: QuotaGate
    admission: Admission
    streams: StreamRegistry
    claude: ClaudeClient
    app_session: aiohttp.ClientSession | None
    lifecycle: Lifecycle = field(default_factory=Lifecycle)
