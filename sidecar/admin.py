"""The admin listener: liveness, readiness and Prometheus metrics, apart from traffic."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Final

from aiohttp import web

from sidecar.app_state import RUNTIMES
from sidecar.config import Config
from sidecar.errors import Rejection, reject, render_json
from sidecar.pipeline import UNMATCHED
from sidecar.readiness import unready_checks
from sidecar.runtime import RuntimeHolder

log = logging.getLogger("sidecar.admin")
# How often the readiness task looks again whether metrics are pushed (a reload may turn
# OTLP export on) while they are not.
_PULLED_ONLY_RECHECK_SECONDS: Final = 30.0


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


async def check_readiness_for_pushed_metrics(holder: RuntimeHolder) -> None:
    """Keep `sidecar.ready` current where no one asks: metrics pushed over OTLP carry the
    last check's result, and without a scrape or a `/readyz` probe there would be none
    (or a stale one). So while a reader pushes, readiness is checked once per export
    interval; a Prometheus scrape checks it itself."""
    while True:
        interval = holder.current.telemetry.pushed_metrics_interval()
        if interval is None or holder.draining:  # draining: its stores are closing
            await asyncio.sleep(_PULLED_ONLY_RECHECK_SECONDS)
            continue
        try:
            await failing_checks(holder)
        except Exception as error:  # a check that broke: the next interval tries again
            log.warning("readiness check failed", extra={"error": type(error).__name__})
        await asyncio.sleep(interval)


async def _readiness_task(app: web.Application) -> AsyncIterator[None]:
    task = asyncio.create_task(check_readiness_for_pushed_metrics(app[RUNTIMES]))
    yield
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


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
    app.cleanup_ctx.append(_readiness_task)
    return app
