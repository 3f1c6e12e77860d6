"""Shared fixtures: a real fake Claude on a free port, sidecars pointed at it, the stock
upstream app for the app route, and the root logger routed to a buffer for the log tests."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from typing import Any

import pytest
import uvloop

from sidecar import loader
from sidecar.fake_claude import FakeServer, FakeSettings, running_fake_claude
from tests.support.apps import AppState, running_app
from tests.support.logs import LogReader, install_log_output
from tests.support.redis_server import RedisServer, running_redis
from tests.support.sidecars import SidecarFactory, running_sidecar


def pytest_asyncio_loop_factories(
    config: pytest.Config, item: pytest.Item
) -> Mapping[str, Callable[[], asyncio.AbstractEventLoop]]:
    """Every test runs on uvloop, the loop `sidecar run` serves on (its transports are no
    asyncio classes, and it buffers and schedules otherwise), unless marked `stdlib_loop`:
    a test that patches a transport's methods, which uvloop's do not allow."""
    if item.get_closest_marker("stdlib_loop") is not None:
        return {"asyncio": asyncio.new_event_loop}
    return {"uvloop": uvloop.new_event_loop}


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
async def app_upstream() -> AsyncIterator[tuple[str, AppState]]:
    """The stock upstream app (`tests.support.apps`) on a free port: its URL and what it saw."""
    async with running_app() as app:
        yield app


@pytest.fixture
async def redis_server() -> AsyncIterator[RedisServer]:
    """A real `redis-server` on a free port (no persistence); `kill()` / `start()` for outages."""
    async with running_redis() as server:
        yield server


@pytest.fixture
def log_output() -> Iterator[Callable[..., LogReader]]:
    """`read = log_output(**telemetry config)`: routes the root logger to a buffer, restores it.

    `read` flushes the handler first (as exit does): lines waiting for their batch's
    write are read too. When they are written is the subject of tests of its own.
    """
    yield from install_log_output()


@pytest.fixture
def records_made(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The logger names of the `LogRecord`s `logging` builds from here on."""
    made: list[str] = []
    make = logging.Logger.makeRecord

    def counted(self: logging.Logger, name: str, *args: Any, **kwargs: Any) -> logging.LogRecord:
        made.append(name)
        return make(self, name, *args, **kwargs)

    monkeypatch.setattr(logging.Logger, "makeRecord", counted)
    return made
