"""Wiring: the traffic listener's handler and runtimes for a config; resources live and die together."""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from functools import partial
from typing import TYPE_CHECKING

import aiohttp
from aiohttp import web
from aiohttp.abc import AbstractStreamWriter
from aiohttp.http_parser import RawRequestMessage
from aiohttp.streams import StreamReader
from aiohttp.web_protocol import RequestHandler
from pydantic import SecretStr

from sidecar.admission import Admission
from sidecar.cache.service import ResponseCache
from sidecar.cache.stores import make_store as make_cache_store
from sidecar.cache.stores import store_key as cache_store_key
from sidecar.config import Config, JWTConfig
from sidecar.fake_claude import FakeSettings, running_fake_claude
from sidecar.handlers.anthropic import handle_anthropic
from sidecar.handlers.app_proxy import handle_app
from sidecar.handlers.lingering import LingeringClientWebSocket
from sidecar.handlers.prompt import handle_prompt
from sidecar.handlers.ui import handle_ui
from sidecar.http_client import Pool
from sidecar.pipeline import Pipeline
from sidecar.policy import AuthService
from sidecar.policy.jwks import JwksCache
from sidecar.quotas import QuotaGate
from sidecar.relay import StreamRegistry
from sidecar.routes import RouteTable
from sidecar.runtime import Runtime, RuntimeHolder, SharedPool
from sidecar.stream.resume import Resume, make_store, store_key
from sidecar.telemetry import Telemetry
from sidecar.upstream import ClaudeClient

if TYPE_CHECKING:
    from redis.asyncio import Redis

# `server.address` / `server.port` of the built-in fake in spans and metrics.
FAKE_PEER = ("builtin-fake", 0)
HANDLERS = {
    "prompt": handle_prompt,
    "anthropic": handle_anthropic,
    "ui": handle_ui,
    "app": handle_app,
}


async def _open_claude_pool(config: Config, base_url: str, own: contextlib.AsyncExitStack) -> Pool:
    # One keep-alive pool for every Claude call; bytes are relayed as received.
    pool = Pool(
        base_url,
        limit=config.claude.max_concurrent_streams + 16,
        connect_timeout=config.claude.connect_timeout_seconds,
        keepalive=30.0,
    )
    own.push_async_callback(pool.close)
    return pool


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
        # Only what the client sent: no `Accept: */*` or `Content-Type:
        # application/octet-stream` the client left out (an app may read their absence).
        skip_auto_headers=("User-Agent", "Accept-Encoding", "Accept", "Content-Type"),
        ws_response_class=LingeringClientWebSocket,  # an app's WebSocket error close lingers
    )


def _fake_settings(config: Config) -> FakeSettings:
    fake = config.claude.fake
    return FakeSettings(
        tokens=fake.tokens, tps=fake.tokens_per_second, ttft_ms=fake.time_to_first_token_ms
    )


async def _open_telemetry(config: Config, own: contextlib.AsyncExitStack) -> Telemetry:
    telemetry = Telemetry.from_config(config.telemetry)
    own.push_async_callback(telemetry.close)  # flushes spans/metrics; never blocks the loop
    return telemetry


async def _open_fake(config: Config, own: contextlib.AsyncExitStack) -> str:
    fake = await own.enter_async_context(running_fake_claude(_fake_settings(config)))
    return fake.url


async def _open_app_session(
    config: Config, own: contextlib.AsyncExitStack
) -> aiohttp.ClientSession | None:
    app_session = _app_session(config)
    if app_session is not None:
        await own.enter_async_context(app_session)
    return app_session


async def _open_jwks(
    url: str, jwt: JWTConfig, telemetry: Telemetry, own: contextlib.AsyncExitStack
) -> JwksCache:
    session = aiohttp.ClientSession()
    own.push_async_callback(session.close)
    cache = JwksCache(
        url,
        session,
        refresh_seconds=jwt.jwks_refresh_seconds,
        min_refresh_seconds=jwt.jwks_min_refresh_seconds,
        on_refresh=telemetry.jwks_refresh,
    )
    own.push_async_callback(cache.close)  # before the session closes
    await cache.start()
    return cache


async def _open_auth(
    routes: RouteTable,
    primary: JWTConfig | None,
    telemetry: Telemetry,
    shared: SharedPool,
    own: contextlib.AsyncExitStack,
) -> AuthService:
    policies = [route.policy.auth for route in routes.routes]
    # Each JWKS is a resource of its own, kept while its URL and schedule stay: a reload
    # that changes other auth settings (an API key revoked) keeps its keys and schedule,
    # and does not depend on the issuer answering at that moment.
    jwks: dict[str, JwksCache] = {}
    for policy in policies:
        jwt, url = policy.jwt, policy.jwks_in_use  # a key set no token meets: not fetched
        if jwt is not None and url is not None and url not in jwks:
            key = (url, jwt.jwks_refresh_seconds, jwt.jwks_min_refresh_seconds)
            jwks[url] = await shared.use(own, "jwks", key, partial(_open_jwks, url, jwt, telemetry))
    auth = AuthService(policies, primary=primary, jwks=jwks, on_jwks_refresh=telemetry.jwks_refresh)
    await auth.start()
    own.push_async_callback(auth.close)
    return auth


def _auth_key(routes: RouteTable) -> list[object]:
    """Auth settings per route, and the identity of each JWT key file: a replaced one is re-read."""
    key: list[object] = []
    for route in routes.routes:
        auth = route.policy.auth
        key_file = auth.jwt.public_key_file if auth.jwt is not None else None
        try:
            stat = os.stat(key_file) if key_file is not None else None
        except OSError:
            stat = None
        key.append((auth, stat and (stat.st_ino, stat.st_mtime_ns, stat.st_size)))
    return key


async def _shared_redis(
    shared: SharedPool, own: contextlib.AsyncExitStack, url: SecretStr | None, timeout: float
) -> Redis | None:
    """One Redis client (one connection pool) per URL and timeout, for the resume store and the
    cache alike: the same Redis is one pool, and an outage is seen by both at once."""
    if url is None:
        return None
    from sidecar.stream.redis_store import redis_client  # Redis only where it is configured

    key = (url.get_secret_value(), timeout)

    async def open_client(client_own: contextlib.AsyncExitStack) -> Redis:
        client = redis_client(*key)
        client_own.push_async_callback(client.aclose)
        return client

    # Released on `own` after the store using it has closed (the stack unwinds in reverse).
    return await shared.use(own, "redis", key, open_client)


async def _open_resume(
    config: Config, shared: SharedPool, own: contextlib.AsyncExitStack
) -> Resume:
    redis = config.resume.enabled and config.resume.store == "redis"
    url = config.resume_redis_url if redis else None
    client = await _shared_redis(shared, own, url, config.resume.redis_timeout_seconds)
    resume = Resume(make_store(config, client))
    await resume.store.start()
    own.push_async_callback(resume.close)
    return resume


async def _open_cache(
    config: Config, telemetry: Telemetry, shared: SharedPool, own: contextlib.AsyncExitStack
) -> ResponseCache:
    url = config.cache_redis_url if config.cache.store == "redis" else None
    client = await _shared_redis(shared, own, url, config.cache.redis_timeout_seconds)
    cache = ResponseCache(make_cache_store(config, client), count=telemetry.cache_lookup)
    await cache.store.start()
    own.push_async_callback(cache.close)
    return cache


async def _open_admission(config: Config, own: contextlib.AsyncExitStack) -> Admission:
    return Admission(config.claude)


async def _open_runtime(
    config: Config,
    telemetry: Telemetry | None,
    stack: contextlib.AsyncExitStack,
    shared: SharedPool,
) -> Runtime:
    """Open every resource of a config on `stack`, which closes them in reverse order.

    Resources come from `shared`: one whose settings (the key) are unchanged since the
    previous runtime is reused, so a reload keeps quota counters, queued and admitted
    streams, JWKS keys and warm connections.
    """
    if telemetry is None:  # process-wide: `telemetry` changes need a restart
        telemetry = await shared.use(stack, "telemetry", None, partial(_open_telemetry, config))
    # Models this config names are metric labels of their own; others fold into `other`.
    telemetry.models.allow([config.claude.model, *(config.claude.allowed_models or ())])
    base_url = config.claude.base_url
    if config.claude.is_fake:
        base_url = await shared.use(
            stack, "fake_claude", _fake_settings(config), partial(_open_fake, config)
        )
    pool = await shared.use(
        stack,
        "claude_pool",
        (base_url, config.claude.max_concurrent_streams, config.claude.connect_timeout_seconds),
        partial(_open_claude_pool, config, base_url),
    )
    app_session = await shared.use(
        stack, "app_session", config.app, partial(_open_app_session, config)
    )
    routes = RouteTable(config)
    auth = await shared.use(
        stack,
        "auth",
        [config.auth.jwt, *_auth_key(routes)],
        partial(_open_auth, routes, config.auth.jwt, telemetry, shared),
    )

    async def open_quotas(own: contextlib.AsyncExitStack) -> QuotaGate:
        quotas = QuotaGate.from_config(config.quotas, on_store_error=telemetry.quota_store_error)
        await quotas.start()
        own.push_async_callback(quotas.close)
        return quotas

    # Counters and live leases carry over a reload unless where they are stored changed.
    quotas = await shared.use(stack, "quotas", QuotaGate.settings_key(config.quotas), open_quotas)
    return Runtime(
        config=config,
        routes=routes,
        telemetry=telemetry,
        auth=auth,
        quotas=quotas,
        admission=await shared.use(
            stack,
            "admission",
            Admission.settings_key(config.claude),
            partial(_open_admission, config),
        ),
        streams=StreamRegistry(),
        # Buffers and live generations carry over a reload unless where they are kept changed.
        resume=await shared.use(
            stack, "resume", store_key(config), partial(_open_resume, config, shared)
        ),
        claude=ClaudeClient(
            config.claude,
            base_url,
            pool,
            on_retry=telemetry.upstream_retry,
            on_status=telemetry.upstream_status,
            # The fake listens on a new free port each start: a stable name keeps its series.
            peer=FAKE_PEER if config.claude.is_fake else None,
            # ...and a new port is no other Claude: replicas sharing a Redis cache (and a
            # restart) find each other's entries. Its settings change its answers.
            identity=f"builtin:fake {config.claude.fake.fingerprint()}"
            if config.claude.is_fake
            else None,
        ),
        app_session=app_session,
        # Entries carry over a reload unless where they are kept changed.
        cache=await shared.use(
            stack, "cache", cache_store_key(config), partial(_open_cache, config, telemetry, shared)
        )
        if config.cache_used
        else None,
    )


@dataclass(frozen=True, slots=True)
class Traffic:
    """The traffic listener's parts: its runtimes and the one handler every request gets.

    There is no `web.Application` here: the pipeline routes by itself, so aiohttp's
    router, middleware chain and response signals would only add work to every request.
    """

    runtimes: RuntimeHolder
    handle: Callable[[web.Request], Awaitable[web.StreamResponse]]
    max_body_bytes: int
    config: Config

    def make_request(
        self,
        message: RawRequestMessage,
        payload: StreamReader,
        protocol: RequestHandler,
        writer: AbstractStreamWriter,
        task: asyncio.Task[None],
    ) -> web.Request:
        """aiohttp's request for a parsed head; reading more body than the limit is a 413."""
        return web.Request(
            message, payload, protocol, writer, task, task.get_loop(),
            client_max_size=self.max_body_bytes,
        )  # fmt: skip

    async def open(self) -> None:
        """Open and install the first runtime (before the listener accepts anything)."""
        self.runtimes.install(await self.runtimes.open(self.config))

    async def close(self) -> None:
        """Close every runtime (after the listener has drained)."""
        await self.runtimes.close()


def build_traffic(config: Config, telemetry: Telemetry | None = None) -> Traffic:
    """The traffic listener's runtimes and handler; the admin app reads the same runtimes.

    Both read the runtime from `runtimes.current`, which a reload replaces.
    """
    runtimes = RuntimeHolder(
        lambda cfg, stack, shared: _open_runtime(cfg, telemetry, stack, shared)
    )
    # Every path reaches the pipeline, which owns the answer.
    return Traffic(
        runtimes=runtimes,
        handle=Pipeline(HANDLERS, runtimes).handle,
        max_body_bytes=config.server.max_body_bytes,
        config=config,
    )
