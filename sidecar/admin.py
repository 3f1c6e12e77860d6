"""The admin listener: liveness, readiness and Prometheus metrics, apart from traffic."""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable

from aiohttp import web

from sidecar.app_state import RUNTIMES
from sidecar.config import Config
from sidecar.errors import Rejection, reject, render_json
from sidecar.pipeline import UNMATCHED
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


def _refusal(request: web.Request, error: web.HTTPException) -> Rejection:
    """The catalogue's rejection for the router's 404 or 405 (any other error: a 404)."""
    if isinstance(error, web.HTTPMethodNotAllowed):
        allowed = ", ".join(sorted(error.allowed_methods))
        return reject("method_not_allowed", f"use {allowed}", headers={"Allow": allowed})
    return reject("no_route", "no admin endpoint at this path (/healthz, /readyz, /metrics)")


@web.middleware
async def json_errors(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    """The router's 404 and 405 as JSON in the routes' error format, counted, never
    aiohttp's plain text (the admin handlers raise nothing of their own)."""
    try:
        return await handler(request)
    except (web.HTTPNotFound, web.HTTPMethodNotAllowed) as error:
        rejection = _refusal(request, error)
    request.app[RUNTIMES].current.telemetry.rejected(
        rejection.reason, UNMATCHED, rejection.status, ""
    )
    return web.Response(
        status=rejection.status,
        body=render_json(rejection, "app", ""),
        content_type="application/json",
        headers=rejection.headers,
    )


def build_admin_app(runtimes: RuntimeHolder, config: Config) -> web.Application:
    """The admin app reads the traffic app's current runtime (opened when traffic starts).

    Each endpoint answers GET and HEAD (the same head, no body); any other method is a
    405 and any other path a 404, both JSON (`{"error": {"type", "message"}}`)."""
    app = web.Application(middlewares=[json_errors])
    app[RUNTIMES] = runtimes
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    if config.telemetry.prometheus:
        app.router.add_get("/metrics", metrics)
    return app
