"""Header names in the config are checked at load, not discovered broken on the first request."""

from __future__ import annotations

from typing import Any

import aiohttp
import pytest

from sidecar import loader
from tests.support.apps import echoed_headers, running_app
from tests.support.policy import API_KEY, API_KEY_SHA256
from tests.support.sidecars import SidecarFactory


def problems_of(data: dict[str, Any]) -> list[str]:
    with pytest.raises(loader.ConfigError) as caught:
        loader.validate(data)
    return caught.value.problems


@pytest.mark.parametrize("name", ["X Request Id", "X-Request-Id\n", "X-Id:", ""])
def test_request_id_header_must_be_a_header_name(name: str) -> None:
    problems = problems_of({"server": {"request_id_header": name}})
    assert [p.split(":")[0] for p in problems] == ["server.request_id_header"]


@pytest.mark.parametrize(
    ("headers", "field"),
    [
        ({"user": "X Sidecar User"}, "user"),
        ({"tenant": "Host"}, "tenant"),
        ({"api_key_name": "x-forwarded-for"}, "api_key_name"),
        ({"user": "Content-Length"}, "user"),
    ],
)
def test_identity_header_names_are_checked(headers: dict[str, str], field: str) -> None:
    problems = problems_of({"app": {"url": "http://127.0.0.1:3000", "identity_headers": headers}})
    assert [p.split(":")[0] for p in problems] == [f"app.identity_headers.{field}"]


def test_identity_header_names_must_differ() -> None:
    headers = {"user": "X-Who", "tenant": "x_who"}  # one name to a WSGI app
    problems = problems_of({"app": {"url": "http://127.0.0.1:3000", "identity_headers": headers}})
    assert [p.split(":")[0] for p in problems] == ["app.identity_headers"]


async def test_a_header_name_that_validates_serves(sidecar_for: SidecarFactory) -> None:
    async with running_app() as (url, _):
        config = {
            "server": {"request_id_header": "X-Trace_Id"},
            "app": {"url": url, "identity_headers": {"user": "X-Auth-User"}},
            "auth": {"api_keys": [{"name": "ci", "sha256": API_KEY_SHA256, "user": "ci-bot"}]},
        }
        async with sidecar_for(config) as sidecar, aiohttp.ClientSession() as http:
            async with http.get(sidecar.url + "/echo", headers={"x-api-key": API_KEY}) as r:
                assert r.status == 200
                assert r.headers["X-Trace_Id"]
                seen = echoed_headers(await r.json())
    assert seen["x-auth-user"] == "ci-bot"


@pytest.mark.parametrize(
    "url", ["localhost:6379", "http://127.0.0.1:6379/0", "redis://127.0.0.1:port/0"]
)
def test_redis_url_that_redis_cannot_use_is_a_config_error(url: str) -> None:
    secret = "s3cret-password"
    url = url.replace("127.0.0.1", f"user:{secret}@127.0.0.1")
    problems = problems_of({"quotas": {"store": "redis", "redis_url": url}})
    assert [p.split(":")[0] for p in problems] == ["quotas.redis_url"]
    assert secret not in " ".join(problems)


@pytest.mark.parametrize(
    "url", ["redis://127.0.0.1:6379/0", "rediss://:pw@redis.example:6380", "unix:///run/redis.sock"]
)
def test_redis_urls_redis_accepts_validate(url: str) -> None:
    config = loader.validate({"quotas": {"store": "redis", "redis_url": url}})
    assert config.quotas.redis_url is not None


async def test_origins_are_matched_as_browsers_send_them(sidecar_for: SidecarFactory) -> None:
    # Browsers send the host in lower case and never a default port.
    cors = {"allow_origins": ["https://App.Example.com:443", "http://Localhost:80"]}
    async with sidecar_for({"cors": cors}) as sidecar, aiohttp.ClientSession() as http:
        for origin in ("https://app.example.com", "http://localhost"):
            preflight = {"Origin": origin, "Access-Control-Request-Method": "POST"}
            async with http.options(sidecar.url + "/v1/messages", headers=preflight) as r:
                assert r.status == 204
                assert r.headers["Access-Control-Allow-Origin"] == origin
