"""`Expect: 100-continue` over raw sockets: `100 Continue` only when a route reads the body."""

from __future__ import annotations

import asyncio

import pytest

from tests.support.apps import running_app
from tests.support.sidecars import SidecarFactory
from tests.support.sockets import expecting_continue


@pytest.mark.parametrize("path", ["/v1/messages", "/app/upload"], ids=["anthropic", "app"])
async def test_an_upload_refused_before_its_body_is_read_gets_no_100_continue(
    sidecar_for: SidecarFactory, path: str
) -> None:
    """`100 Continue` is sent when the route reads the body: a request refused before that
    (here: no credential) gets its final answer instead, uploads nothing, and its
    connection ends with that answer (the client may send the body or not)."""
    key = {
        "name": "k",
        "sha256": "2bb80d537b1da3e38bd30361aa855686bde0eacd7162fef6a25fe97bf527a25b",
    }
    async with running_app() as (app_url, _):
        routes = [{"path": "/v1/", "handler": "anthropic"}, {"path": "/app/", "handler": "app"}]
        config = {
            "auth": {"mode": "required", "api_keys": [key]}, "app": {"url": app_url},
            "routes": routes,
        }  # fmt: skip
        async with sidecar_for(config) as sidecar:
            first, reader, writer = await expecting_continue(sidecar.port, path)
            # Then the connection ends (once aiohttp's lingering for a body is over).
            rest = await asyncio.wait_for(reader.read(), 30)
            writer.close()
    assert first.startswith(b"HTTP/1.1 401 "), first
    assert b"Connection: close" in first
    assert b"100 Continue" not in rest
