"""`sidecar health`'s probe: the admin URL a config names, and what an answer means."""

from __future__ import annotations

import asyncio

import pytest
from aiohttp import web

from sidecar import loader
from sidecar.probe import admin_url, probe
from tests.support.apps import serving


@pytest.mark.parametrize(
    ("listen", "url"),
    [
        ("0.0.0.0:9090", "http://127.0.0.1:9090/healthz"),
        ("[::]:9091", "http://[::1]:9091/healthz"),
        ("10.1.2.3:9092", "http://10.1.2.3:9092/healthz"),
        ("[fd00::1]:9093", "http://[fd00::1]:9093/healthz"),
    ],
)
def test_admin_url_reaches_a_wildcard_listener_on_loopback(listen: str, url: str) -> None:
    config = loader.validate({"server": {"admin_listen": listen}}, {})
    assert admin_url(config, "/healthz") == url


async def test_only_a_200_is_healthy() -> None:
    async def answer(request: web.Request) -> web.Response:
        return web.Response(status=int(request.query["status"]))

    app = web.Application()
    app.router.add_get("/", answer)
    async with serving(app) as url:
        ok = await asyncio.to_thread(probe, url + "/?status=200", 5)
        draining = await asyncio.to_thread(probe, url + "/?status=503", 5)
    assert ok is None
    assert draining == f"{url}/?status=503: HTTP 503"
