"""Route auth overrides fail closed: credentials on a route mean the route needs them."""

from __future__ import annotations

from typing import Any

import aiohttp
import pytest

from sidecar import loader
from tests.support.policy import API_KEY, API_KEY_SHA256
from tests.support.sidecars import SidecarFactory

KEYS = [{"name": "ci", "sha256": API_KEY_SHA256, "user": "ci-bot"}]


def route_with_keys(**auth: Any) -> dict[str, Any]:
    return {
        "routes": [
            {
                "path": "/api/stream-response",
                "handler": "prompt",
                "auth": {"api_keys": KEYS, **auth},
            },
            {"path": "/open", "handler": "prompt"},
        ]
    }


async def test_route_override_with_credentials_and_no_top_level_auth_requires_them(
    sidecar_for: SidecarFactory,
) -> None:
    async with sidecar_for(route_with_keys()) as sidecar, aiohttp.ClientSession() as http:
        async with http.post(sidecar.url + "/api/stream-response", json={"prompt": "hi"}) as r:
            assert r.status == 401
            assert (await r.json())["error"]["type"] == "unauthorized"
        headers = {"x-api-key": API_KEY}
        async with http.post(
            sidecar.url + "/api/stream-response", json={"prompt": "hi"}, headers=headers
        ) as r:
            assert r.status == 200
            await r.read()
        async with http.post(sidecar.url + "/open", json={"prompt": "hi"}) as r:
            assert r.status == 200  # the other route keeps the top level's (absent) auth
            await r.read()


@pytest.mark.parametrize("mode", ["none", "optional"])
def test_route_override_that_names_its_mode_keeps_it(mode: str) -> None:
    config = loader.validate(route_with_keys(mode=mode))
    assert loader.route_policies(config)[0].auth.mode == mode


def test_top_level_mode_none_written_out_is_kept_for_route_credentials() -> None:
    data = {"auth": {"mode": "none"}, **route_with_keys()}
    assert loader.route_policies(loader.validate(data))[0].auth.mode == "none"


def test_route_override_without_credentials_keeps_auth_off() -> None:
    data = {"routes": [{"path": "/v1/", "handler": "anthropic", "auth": {"allowed_models": ["m"]}}]}
    assert loader.route_policies(loader.validate(data))[0].auth.mode == "none"
