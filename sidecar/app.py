"""Wiring: build the traffic and admin apps for a config; resources live and die together."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

import aiohttp
from aiohttp import web

from sidecar.admin import build_admin_app
from sidecar.admission import Admission
from sidecar.config import Config
from sidecar.fake_claude import FakeSettings, running_fake_claude
from sidecar.handlers.anthropic import handle_anthropic
from sidecar.handlers.app_proxy import handle_app
from sidecar.handlers.prompt import handle_prompt
from sidecar.keys import RUNTIME
from sidecar.pipeline import Pipeline
from sidecar.policy import AuthService
from sidecar.quotas import QuotaGate
from sidecar.relay import StreamRegistry
from sidecar.routes import RouteTable
from sidecar.runtime import Runtime
from sidecar.telemetry import Telemetry
from sidecar.upstream import ClaudeClient

HANDLERS = {"prompt": handle_prompt, "anthropic": handle_anthropic, "app": handle_app}


def _claude_session(config: Config) -> aiohttp.ClientSession:
    # One keep-alive pool for every Claude call; bytes are relayed as received.
    connector = aiohttp.TCPConnector(
        limit=config.claude.max_concurrent_streams + 16, ttl_dns_cache=300, keepalive_timeout=30
    )
    return aiohttp.ClientSession(
        connector=connector,
        auto_decompress=False,
        cookie_jar=aiohttp.DummyCookieJar(),
        skip_auto_headers=("User-Agent",),
    )


def _app_session(config: Config) -> aiohttp.ClientSession | None:
    if config.app is None:
        return None
    timeout = aiohttp.ClientTimeout(
        total=None,
        sock_connect=config.app.connect_timeout_seconds,
        sock_read=config.app.read_timeout_seconds,
    )
    return aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=0, keepalive_timeout=30),
        timeout=timeout,
        auto_decompress=False,  # the app's encoding passes through untouched
        cookie_jar=aiohttp.DummyCookieJar(),
        skip_auto_headers=("User-Agent", "Accept-Encoding"),
    )


def _fake_settings(config: Config) -> FakeSettings:
    fake = config.claude.fake
    return FakeSettings(
        tokens=fake.tokens, tps=fake.tokens_per_second, ttft_ms=fake.time_to_first_token_ms
    )


async def _open_runtime(
    config: Config, telemetry: Telemetry | None, stack: contextlib.AsyncExitStack
) -> Runtime:
    """Open every resource of a config on `stack`, which closes them in reverse order."""
    if telemetry is None:
        telemetry = Telemetry.from_config(config.telemetry)
        stack.callback(telemetry.shutdown)
    base_url = config.claude.base_url
    if config.claude.is_fake:
        fake = await stack.enter_async_context(running_fake_claude(_fake_settings(config)))
        base_url = fake.url
    session = await stack.enter_async_context(_claude_session(config))
    app_session = _app_session(config)
    if app_session is not None:
        await stack.enter_async_context(app_session)
    routes = RouteTable(config)
    auth = AuthService([route.policy.auth for route in routes.routes])
    await auth.start()
    stack.push_async_callback(auth.close)
    quotas = QuotaGate.from_config(config.quotas, on_store_error=telemetry.quota_store_error)
    await quotas.start()
    stack.push_async_callback(quotas.close)
    return Runtime(
        config=config,
        routes=routes,
        telemetry=telemetry,
        auth=auth,
        quotas=quotas,
        admission=Admission(config.claude),
        streams=StreamRegistry(),
        claude=ClaudeClient(
            config.claude,
            base_url,
            session,
            on_retry=telemetry.upstream_retry,
            on_status=telemetry.upstream_status,
        ),
        app_session=app_session,
    )


def build_apps(
    config: Config, telemetry: Telemetry | None = None
) -> tuple[web.Application, web.Application]:
    """The traffic app (every path through the pipeline) and the admin app sharing its runtime."""
    app = web.Application(client_max_size=config.server.max_body_bytes)

    async def runtime_ctx(app: web.Application) -> AsyncIterator[None]:
        async with contextlib.AsyncExitStack() as stack:
            app[RUNTIME] = await _open_runtime(config, telemetry, stack)
            yield

    app.cleanup_ctx.append(runtime_ctx)
    app.router.add_route("*", "/{tail:.*}", Pipeline(HANDLERS).handle)
    return app, build_admin_app(app, config)
