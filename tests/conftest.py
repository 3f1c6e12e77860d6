"""Shared fixtures: a real fake Claude on a free port, and sidecars pointed at it."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest

from sidecar import loader
from sidecar.fake_claude import FakeServer, FakeSettings, running_fake_claude
from tests.support.redis_server import RedisServer, running_redis
from tests.support.sidecars import SidecarFactory, running_sidecar


@pytest.fixture
async def fake() -> AsyncIterator[FakeServer]:
    """The fake Claude, fast: 12 tokens, no pacing."""
    async with running_fake_claude(FakeSettings(tokens=12)) as server:
        yield server


@pytest.fixture
def sidecar_for(fake: FakeServer) -> SidecarFactory:
    """`async with sidecar_for({...config overrides...}) as s:` — a sidecar using `fake`."""

    def factory(data: dict[str, Any] | None = None, **kwargs: Any) -> Any:
        # No detach grace: a client that leaves ends its stream at once (the resume tests
        # set a grace of their own).
        base = {"claude": {"base_url": fake.url, "api_key": "sk-sidecar", "max_retries": 2,
                           "retry_base_seconds": 0.01},
                "resume": {"detach_grace_seconds": 0}}  # fmt: skip
        return running_sidecar(loader.deep_merge(base, data or {}), **kwargs)

    return factory


@pytest.fixture
async def redis_server() -> AsyncIterator[RedisServer]:
    """A real `redis-server` on a free port (no persistence); `kill()` / `start()` for outages."""
    async with running_redis() as server:
        yield server
