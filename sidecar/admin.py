"""The admin listener: liveness, readiness and Prometheus metrics, apart from traffic."""

from __future__ import annotations

import json

from aiohttp import web

from sidecar.app_state import RUNTIMES
from sidecar.config import Config
from sidecar.readiness import unready_checks
from sidecar.runtime import RuntimeHolder


def _json(status: int, body: dict[str, object]) -> web.Response:
    return web.Response(status=status, text=json.dumps(body), content_type="application/json")


async def healthz(request: web.Request) -> web.Response:
    """The process is alive and its loop answers."""
    return _json(200, {"status": "ok"})


async def readyz(request: web.Request) -> web.Response:
    """Ready to take traffic: not draining, and every dependency it needs is there."""
    holder = request.app[RUNTIMES]
    checks = await failing_checks(holder)
    config = {"config_sha256": holder.config_sha256}  # which config is live (after reloads)
    if checks:
        return _json(503, {"status": "unavailable", "checks": checks, **config})
    return _json(200, {"status": "ready", **config})


async def failing_checks(holder: RuntimeHolder) -> dict[str, str]:
    """The readiness checks that fail now (empty: ready); recorded as `sidecar.ready`."""
    runtime = holder.current
    checks = {"lifecycle": "draining"} if holder.draining else {}
    checks.update(await unready_checks(runtime))
    runtime.telemetry.readiness(checks)
    return checks


async def metrics(request: web.Request) -> web.Response:
    """Prometheus text exposition of every sidecar and GenAI metric."""
    holder = request.app[RUNTIMES]
    await failing_checks(holder)  # `sidecar.ready` as of this scrape, probed or not
    body, content_type = holder.current.telemetry.prometheus()
    response = web.Response(body=body)
    response.headers["Content-Type"] = content_type
    return response


def build_admin_app(runtimes: RuntimeHolder, config: Config) -> web.Application:
    """The admin app reads the traffic app's current runtime (opened when traffic starts)."""
    app = web.Application()
    app[RUNTIMES] = runtimes
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    if config.telemetry.prometheus:
        app.router.add_get("/metrics", metrics)
    return app
