"""The browser files under `browser.path`, over real sockets (no browser needed)."""

from __future__ import annotations

import email.utils
import hashlib
import re
from pathlib import Path

import aiohttp
import pytest
import yaml
from pydantic import ValidationError

from sidecar import loader
from sidecar.browser import static_file
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
            assert post.headers["Allow"] == "GET, HEAD, OPTIONS"
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


MODULE = "/_sidecar/claude-stream.js"


async def test_a_preflight_for_the_module_passes_from_any_origin(
    fake: FakeServer, sidecar_for: SidecarFactory
) -> None:
    async with sidecar_for() as sidecar, aiohttp.ClientSession() as http:
        asked = {
            "Origin": "https://any.example",
            "Access-Control-Request-Method": "GET",
            "Access-Control-Request-Headers": "If-None-Match, x-trace, bad header",
        }
        async with http.options(sidecar.url + MODULE, headers=asked) as preflight:
            assert preflight.status == 204
            assert preflight.headers["Access-Control-Allow-Origin"] == "*"
            assert preflight.headers["Access-Control-Allow-Methods"] == "GET, HEAD, OPTIONS"
            # The headers asked for, well-formed names only.
            assert preflight.headers["Access-Control-Allow-Headers"] == "if-none-match, x-trace"
            assert preflight.headers["Allow"] == "GET, HEAD, OPTIONS"
            assert await preflight.read() == b""
        async with http.options(sidecar.url + MODULE) as plain:
            assert plain.status == 204
            assert plain.headers["Allow"] == "GET, HEAD, OPTIONS"
            assert plain.headers["Access-Control-Allow-Origin"] == "*"
            assert "Access-Control-Allow-Headers" not in plain.headers
        async with http.options(sidecar.url + "/_sidecar/nothing.js") as unknown:
            assert unknown.status == 404
    assert fake.state.counters["requests"] == 0


async def test_the_demo_page_answers_options_without_opening_it_to_other_origins(
    fake: FakeServer, sidecar_for: SidecarFactory
) -> None:
    async with sidecar_for({"browser": {"demo": True}}) as sidecar:
        async with aiohttp.ClientSession() as http:
            asked = {"Origin": "https://any.example", "Access-Control-Request-Method": "GET"}
            async with http.options(sidecar.url + "/_sidecar/demo", headers=asked) as preflight:
                assert preflight.status == 204
                assert preflight.headers["Allow"] == "GET, HEAD, OPTIONS"
                assert "Access-Control-Allow-Origin" not in preflight.headers
            async with http.get(sidecar.url + "/_sidecar/demo") as page:
                assert "Access-Control-Allow-Origin" not in page.headers


async def test_files_carry_validators_and_a_current_copy_gets_a_304(
    fake: FakeServer, sidecar_for: SidecarFactory
) -> None:
    async with sidecar_for({"browser": {"demo": True}}) as sidecar:
        async with aiohttp.ClientSession() as http:
            for path in (MODULE, "/_sidecar/claude-stream.d.ts", "/_sidecar/demo",
                         "/_sidecar/demo.js"):  # fmt: skip
                url = sidecar.url + path
                async with http.get(url) as full:
                    assert full.status == 200, path
                    body = await full.read()
                    etag = full.headers["ETag"]
                    modified = full.headers["Last-Modified"]
                    cache = full.headers["Cache-Control"]
                    csp = full.headers.get("Content-Security-Policy")
                # Strong, and the hash of the bytes served (the demo page as rendered).
                assert etag == '"' + hashlib.sha256(body).hexdigest()[:32] + '"', path
                assert email.utils.parsedate_to_datetime(modified).timestamp() > 0
                async with http.get(url) as again:
                    assert again.headers["ETag"] == etag  # computed once: the same every time
                    assert again.headers["Last-Modified"] == modified
                current = [
                    {"If-None-Match": etag},
                    {"If-None-Match": f'"other", W/{etag}'},  # a list; weak comparison
                    {"If-None-Match": "*"},
                    {"If-Modified-Since": modified},
                ]
                for conditional in current:
                    for method in ("GET", "HEAD"):
                        async with http.request(method, url, headers=conditional) as cached:
                            assert cached.status == 304, (path, method, conditional)
                            assert await cached.read() == b""
                            assert cached.headers["ETag"] == etag
                            assert cached.headers["Last-Modified"] == modified
                            assert cached.headers["Cache-Control"] == cache
                            assert cached.headers.get("Content-Security-Policy") == csp
                stale = [
                    {"If-None-Match": '"other"'},
                    # If-None-Match decides alone when sent, even with a current date.
                    {"If-None-Match": '"other"', "If-Modified-Since": modified},
                    {"If-Modified-Since": "Thu, 01 Jan 1970 00:00:00 GMT"},
                    {"If-Modified-Since": "not a date"},
                ]
                for conditional in stale:
                    async with http.get(url, headers=conditional) as fresh:
                        assert fresh.status == 200, (path, conditional)
                        assert await fresh.read() == body
                async with http.head(url) as head:
                    assert head.status == 200
                    assert head.headers["ETag"] == etag
                    assert await head.read() == b""


async def test_the_module_keeps_its_cors_and_cache_headers_on_a_304(
    fake: FakeServer, sidecar_for: SidecarFactory
) -> None:
    async with sidecar_for() as sidecar, aiohttp.ClientSession() as http:
        async with http.get(sidecar.url + MODULE) as full:
            etag = full.headers["ETag"]
            assert full.headers["Access-Control-Expose-Headers"] == "ETag"
        cached_headers = {"If-None-Match": etag, "Origin": "https://any.example"}
        async with http.get(sidecar.url + MODULE, headers=cached_headers) as cached:
            assert cached.status == 304
            assert cached.headers["Access-Control-Allow-Origin"] == "*"
            assert cached.headers["Cache-Control"] == "public, max-age=300"
            assert cached.headers["X-Content-Type-Options"] == "nosniff"


def _classes(text: str) -> dict[str, str]:
    """Each `export class` of a module or declaration file, with its body's text."""
    starts = [(m.group(1), m.end()) for m in re.finditer(r"^export class (\w+)[^{]*\{", text, re.M)]
    return {name: text[at:].split("\n}", 1)[0] for name, at in starts}


def test_the_types_declare_every_exported_class_constructor_that_takes_arguments() -> None:
    """A class whose constructor takes arguments is declared with them in the `.d.ts`:
    without, TypeScript reads it as `new X()` and refuses `new ClaudeStreamError(type, …)`."""
    module = _classes(static_file("claude-stream.js"))
    types = _classes(static_file("claude-stream.d.ts"))
    assert set(module) == set(types)
    for name, body in module.items():
        takes = re.search(r"^  constructor\((.+)\)", body, re.M)
        if takes is not None:
            assert re.search(r"^  constructor\(\s*\w", types[name], re.M), name
