"""The admin listener: liveness, readiness and Prometheus metrics, apart from traffic."""

from __future__ import annotations

import json

from aiohttp import web

from sidecar.config import Config
from sidecar.keys import RUNTIME


def _json(status: int, body: dict[str, object]) -> web.Response:
    return web.Response(status=status, text=json.dumps(body), content_type="application/json")


async def healthz(request: web.Request) -> web.Response:
    """The process is alive and its loop answers."""
    return _json(200, {"status": "ok"})


async def readyz(request: web.Request) -> web.Response:
    """Ready to take traffic: not draining, and every dependency it needs is there."""
    runtime = request.app[RUNTIME]
    checks: dict[str, str] = {}
    if runtime.lifecycle.draining:
        checks["lifecycle"] = "draining"
    quotas = runtime.config.quotas
    if quotas.on_store_error == "fail_closed" and not await runtime.quotas.ready():
        checks["quota_store"] = "unavailable"
    if not runtime.auth.ready():
        checks["jwks"] = "no keys loaded"
    if checks:
        return _json(503, {"status": "unavailable", "checks": checks})
    return _json(200, {"status": "ready"})


async def metrics(request: web.Request) -> web.Response:
    """Prometheus text exposition of every sidecar and GenAI metric."""
    body, content_type = request.app[RUNTIME].telemetry.prometheus()
    response = web.Response(body=body)
    response.headers["Content-Type"] = content_type
    return response


def build_admin_app(runtime_app: web.Application, config: Config) -> web.Application:
    """The admin app reads the traffic app's runtime (created when the traffic app starts)."""
    app = web.Application()

    async def share_runtime(admin: web.Application) -> None:
        admin[RUNTIME] = runtime_app[RUNTIME]

    app.on_startup.append(share_runtime)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    if config.telemetry.prometheus:
        app.router.add_get("/metrics", metrics)
    return app
