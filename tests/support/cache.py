"""Shared by the response cache's tests: a cacheable request and a client that reports `X-Cache`."""

from __future__ import annotations

import asyncio
from typing import Any

import aiohttp

from tests.support.redis_server import RedisServer

MODEL = "claude-sonnet-5-5"
BODY: dict[str, Any] = {
    "model": MODEL, "max_tokens": 64, "temperature": 0, "stream": True,
    "messages": [{"role": "user", "content": "what is a sidecar?"}],
}  # fmt: skip


def cached(**cache: Any) -> dict[str, Any]:
    """Config data with the cache on."""
    return {"cache": {"enabled": True, **cache}}


def on_redis(server: RedisServer, **cache: Any) -> dict[str, Any]:
    """Config data with the cache on, in `server` (through the quota store's URL)."""
    return {"cache": {"enabled": True, "store": "redis", "redis_timeout_seconds": 0.5, **cache},
            "quotas": {"redis_url": server.url}}  # fmt: skip


def asking(text: str, **fields: Any) -> dict[str, Any]:
    """`BODY` asking `text` (fake directives such as `[[fake fault=drop]]` go in it)."""
    return {**BODY, "messages": [{"role": "user", "content": text}], **fields}


async def post(
    url: str, body: dict[str, Any], headers: dict[str, str] | None = None
) -> tuple[int, str | None, bytes]:
    """POST /v1/messages: status, X-Cache, body bytes."""
    async with (
        aiohttp.ClientSession() as http,
        http.post(url + "/v1/messages", json=body, headers=headers) as response,
    ):
        return response.status, response.headers.get("X-Cache"), await response.read()


async def post_at_once(
    url: str, body: dict[str, Any], times: int
) -> list[tuple[int, str | None, bytes]]:
    """`times` identical POSTs of `body` sent together (a leader and its followers)."""
    return list(await asyncio.gather(*(post(url, body) for _ in range(times))))
