"""The browser files under `browser.path`, over real sockets (no browser needed)."""

from __future__ import annotations

from pathlib import Path

import aiohttp
import pytest
import yaml
from pydantic import ValidationError

from sidecar import loader
from sidecar.config import BrowserConfig
from sidecar.fake_claude import FakeServer
from sidecar.server import SidecarServer
from tests.support.sidecars import BASE, SidecarFactory, get_status


async def test_the_module_is_public_code_served_before_any_route(
    fake: FakeServer, sidecar_for: SidecarFactory
) -> None:
    # An app route at `/` (here: an unreachable app) would take every path; not these.
    config = {"app": {"url": "http://127.0.0.1:9"}, "routes": [{"path": "/", "handler": "app"}]}
    async with sidecar_for(config) as sidecar, aiohttp.ClientSession() as http:
        async with http.get(
            sidecar.url + "/_sidecar/claude-stream.js", headers={"Origin": "https://any.example"}
        ) as module:
            assert module.status == 200
            assert module.headers["Content-Type"].startswith("text/javascript")
            assert module.headers["Access-Control-Allow-Origin"] == "*"
            assert module.headers["X-Content-Type-Options"] == "nosniff"
            assert "export function streamClaude" in await module.text()
        async with http.get(sidecar.url + "/_sidecar/claude-stream.d.ts") as types:
            assert types.status == 200
            assert "export class ClaudeStream" in await types.text()
        async with http.head(sidecar.url + "/_sidecar/claude-stream.js") as head:
            assert head.status == 200
        async with http.post(sidecar.url + "/_sidecar/claude-stream.js") as post:
            assert post.status == 405
            assert post.headers["Allow"] == "GET, HEAD"
        async with http.get(sidecar.url + "/_sidecar/nothing.js") as unknown:
            assert unknown.status == 404
            assert (await unknown.json())["error"]["type"] == "not_found"


async def test_path_and_enabled_are_configurable(
    fake: FakeServer, sidecar_for: SidecarFactory
) -> None:
    config = {"browser": {"path": "/static/claude", "demo": True}}
    async with sidecar_for(config) as sidecar, aiohttp.ClientSession() as http:
        assert await get_status(http, sidecar.url + "/static/claude/claude-stream.js") == 200
        assert await get_status(http, sidecar.url + "/static/claude/demo.js") == 200
        assert await get_status(http, sidecar.url + "/_sidecar/claude-stream.js") == 404
    async with sidecar_for({"browser": {"enabled": False}}) as sidecar:
        async with aiohttp.ClientSession() as http:
            async with http.get(sidecar.url + "/_sidecar/claude-stream.js") as off:
                assert off.status == 404
                assert "no route" in (await off.json())["error"]["message"]


def test_browser_path_must_be_a_clean_prefix() -> None:
    for bad in ("_sidecar", "/_sidecar/", "/a b", "/../x"):
        with pytest.raises(ValidationError):
            BrowserConfig(path=bad)
    assert BrowserConfig(path="/static/claude").path == "/static/claude"


async def test_a_reload_turns_the_demo_on(fake: FakeServer, tmp_path: Path) -> None:
    """`browser` is read per request from the running config: a reload applies at once."""
    path = tmp_path / "sidecar.yaml"
    data = loader.deep_merge(BASE, {"server": {"reload_poll_seconds": 0},
                        "claude": {"base_url": fake.url, "api_key": "k"}})  # fmt: skip
    path.write_text(yaml.safe_dump(data))
    server = SidecarServer(loader.load(path, {}), config_path=path, env={})
    await server.start()
    try:
        async with aiohttp.ClientSession() as http:
            async with http.get(server.url + "/_sidecar/demo") as before:
                assert before.status == 404
            path.write_text(yaml.safe_dump(loader.deep_merge(data, {"browser": {"demo": True}})))
            assert await server.reload()
            async with http.get(server.url + "/_sidecar/demo") as after:
                assert after.status == 200
    finally:
        await server.shutdown(grace=1.0)
