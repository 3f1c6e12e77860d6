"""State metrics the alerts read: `sidecar.ready`, the last reload's result, JWKS refreshes."""

from __future__ import annotations

from pathlib import Path

import aiohttp
import yaml
from prometheus_client.parser import text_string_to_metric_families

from sidecar import loader
from sidecar.loader import deep_merge
from sidecar.server import SidecarServer
from tests.support.redis_server import RedisServer
from tests.support.sidecars import BASE


async def gauges(server: SidecarServer) -> dict[str, float]:
    """The samples without attributes (only the exporter's scope labels) of a real scrape."""
    async with aiohttp.ClientSession() as http, http.get(server.admin_url + "/metrics") as r:
        text = await r.text()
    return {
        sample.name: sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if all(label.startswith("otel_scope_") for label in sample.labels)
    }


async def test_a_refused_reload_shows_until_a_good_one(tmp_path: Path) -> None:
    path = tmp_path / "sidecar.yaml"
    path.write_text(yaml.safe_dump(BASE))
    server = SidecarServer(loader.load(path, {}), config_path=path, env={})
    await server.start()
    try:
        assert (await gauges(server))["sidecar_config_last_reload_successful"] == 1
        path.write_text("server: {max_body_bytes: -1}\n")
        assert not await server.reload()
        assert (await gauges(server))["sidecar_config_last_reload_successful"] == 0
        path.write_text(yaml.safe_dump(deep_merge(BASE, {"screening": {"max_prompt_chars": 99}})))
        assert await server.reload()
        assert (await gauges(server))["sidecar_config_last_reload_successful"] == 1
    finally:
        await server.shutdown(grace=1.0)


async def test_ready_follows_the_quota_store(redis_server: RedisServer) -> None:
    """`sidecar_ready` is the readiness check as of the scrape, whether or not /readyz was probed."""
    data = deep_merge(BASE, {"quotas": {"store": "redis", "redis_url": redis_server.url,
                                   "on_store_error": "fail_closed"}})  # fmt: skip
    server = SidecarServer(loader.validate(data, {}))
    await server.start()
    try:
        assert (await gauges(server))["sidecar_ready"] == 1
        await redis_server.kill()
        assert (await gauges(server))["sidecar_ready"] == 0
        await redis_server.start()
        assert (await gauges(server))["sidecar_ready"] == 1
    finally:
        await server.shutdown(grace=1.0)
