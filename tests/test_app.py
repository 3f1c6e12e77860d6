"""Wiring (`sidecar.app`): the traffic listener's handler and runtimes for a config, whose
resources are opened together on `open`, closed together on `close`, and closed again when
one of them fails to open; one Redis pool for the resume store and the cache alike."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any, get_args

import pytest
from yarl import URL

from sidecar import loader
from sidecar.app import HANDLERS, build_traffic
from sidecar.config import Config
from sidecar.config.routes import Handler
from sidecar.fake_claude import FakeServer
from sidecar.telemetry import Telemetry
from tests.support.cache import BODY, on_redis, post
from tests.support.policy import new_key, write_public_key
from tests.support.redis_server import RedisServer
from tests.support.sidecars import BASE, SidecarFactory
from tests.support.sockets import free_port

pytestmark = pytest.mark.timeout(60)

# Every resource a runtime takes from the shared pool, when its config uses them all.
RESOURCES = ("telemetry", "fake_claude", "claude_pool", "app_session", "auth", "quotas",
             "admission", "resume", "cache")  # fmt: skip
FAKE = {"base_url": "builtin:fake", "fake": {"tokens": 3, "tokens_per_second": 0}}


def config_for(**data: Any) -> Config:
    return loader.validate(loader.deep_merge(BASE, {"claude": FAKE, **data}), {})


async def refuses(url: str) -> bool:
    """Whether nothing listens at `url` any more."""
    try:
        _, writer = await asyncio.open_connection(URL(url).host, URL(url).port)
    except OSError:
        return True
    writer.close()
    return False


def test_every_handler_a_route_can_name_is_wired() -> None:
    assert set(HANDLERS) == set(get_args(Handler))


async def test_a_config_s_resources_open_together_and_close_together() -> None:
    config = config_for(app={"url": f"http://127.0.0.1:{free_port()}"}, cache={"enabled": True},
                        server={"max_body_bytes": 4096})  # fmt: skip
    traffic = build_traffic(config)
    shared = traffic.runtimes.shared
    assert traffic.max_body_bytes == 4096
    assert traffic.runtimes.live == []  # building opens nothing
    assert [shared.live(name) for name in RESOURCES] == [0] * len(RESOURCES)

    await traffic.open()
    runtime = traffic.runtimes.current
    try:
        assert traffic.runtimes.live == [runtime]
        assert runtime.config is config
        assert [shared.live(name) for name in RESOURCES] == [1] * len(RESOURCES)
        assert runtime.app_session is not None
        assert not runtime.app_session.closed
        assert runtime.cache is not None
        assert not await refuses(runtime.claude.base_url)  # the built-in fake Claude listens
    finally:
        await traffic.close()

    assert traffic.runtimes.live == []
    assert [shared.live(name) for name in RESOURCES] == [0] * len(RESOURCES)
    assert runtime.app_session.closed
    assert await refuses(runtime.claude.base_url)


async def test_only_what_the_config_uses_is_opened() -> None:
    traffic = build_traffic(config_for())
    await traffic.open()
    try:
        runtime = traffic.runtimes.current
        assert runtime.app_session is None
        assert runtime.cache is None
        assert traffic.runtimes.shared.live("cache") == 0
    finally:
        await traffic.close()


async def test_a_telemetry_given_is_used_and_left_to_its_owner() -> None:
    config = config_for()
    telemetry = Telemetry.from_config(config.telemetry)
    try:
        traffic = build_traffic(config, telemetry)
        await traffic.open()
        try:
            assert traffic.runtimes.current.telemetry is telemetry
            assert traffic.runtimes.shared.live("telemetry") == 0  # not the runtimes' to close
        finally:
            await traffic.close()
    finally:
        await telemetry.close()


async def test_a_resource_that_fails_to_open_closes_those_opened_before_it(
    tmp_path: Path,
) -> None:
    """The JWT key file is read when auth opens, after telemetry, the fake Claude, the Claude
    pool and the app's session: a file gone since the config was checked fails the open,
    and every one of those is closed, nothing left half-built."""
    key_file = write_public_key(new_key("ES256"), tmp_path)
    jwt = {"public_key_file": str(key_file), "algorithms": ["ES256"]}
    config = config_for(app={"url": f"http://127.0.0.1:{free_port()}"},
                        auth={"mode": "required", "jwt": jwt})  # fmt: skip
    key_file.unlink()
    traffic = build_traffic(config)
    with pytest.raises(FileNotFoundError):
        await traffic.open()
    shared = traffic.runtimes.shared
    assert traffic.runtimes.live == []
    assert [shared.live(name) for name in RESOURCES] == [0] * len(RESOURCES)
    await traffic.close()  # nothing left to close: a no-op


async def test_the_cache_and_the_resume_store_share_one_redis_pool(
    fake: FakeServer, sidecar_for: SidecarFactory, redis_server: RedisServer
) -> None:
    both = {**on_redis(redis_server), "resume": {"store": "redis", "redis_timeout_seconds": 0.5}}
    async with sidecar_for(both) as s:
        assert s.runtimes.shared.live("redis") == 1  # one client, one connection pool
        assert (await post(s.url, BODY))[1] == "MISS"
        assert s.runtime.cache is not None
        await s.runtime.cache.settled()
        assert (await post(s.url, BODY))[1] == "HIT"
    async with sidecar_for({**both, "resume": {"store": "redis"}}) as s:
        assert s.runtimes.shared.live("redis") == 2  # other timeouts: a client each
        assert (await post(s.url, BODY))[1] == "HIT"  # the entry is in Redis, not the process
    assert fake.state.counters["requests"] == 1
