"""Cache stores: where entries live. `memory` (this module, an LRU per process) or
`redis` (`redis_store.py`, shared by every replica). Both hold opaque encoded entries
with a time to live; neither knows what an entry means.
"""

from __future__ import annotations

import collections
import time
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from redis.asyncio import Redis

    from sidecar.config import Config


class CacheStoreError(Exception):
    """The store failed (unreachable, timed out): the cache is skipped, never the request."""


class CacheStore(Protocol):
    """What the cache needs of a store."""

    name: str
    max_bytes: int  # a value larger than this is refused (and never recorded past it)

    async def start(self) -> None: ...

    async def close(self) -> None: ...

    async def get(self, key: str) -> bytes | None:
        """The value under `key`, or None; `CacheStoreError` when the store failed."""

    async def put(self, key: str, value: bytes, ttl: float) -> bool:
        """Keep `value` for `ttl` seconds; False if it was refused (too big)."""


class MemoryCacheStore:
    """Least recently used entries, bounded by count and by total bytes, each with a TTL."""

    name = "memory"

    def __init__(self, *, max_entries: int, max_bytes: int) -> None:
        self.max_entries = max_entries
        self.max_bytes = max_bytes
        self._entries: collections.OrderedDict[str, tuple[bytes, float]] = collections.OrderedDict()
        self._bytes = 0

    def __len__(self) -> int:
        return len(self._entries)

    def keys(self) -> list[str]:
        """The keys held, the least recently used first."""
        return list(self._entries)

    @property
    def total_bytes(self) -> int:
        """Bytes held by every entry."""
        return self._bytes

    async def start(self) -> None:
        """Nothing to open."""

    async def close(self) -> None:
        self._entries.clear()
        self._bytes = 0

    async def get(self, key: str) -> bytes | None:
        """The value under `key` (now the most recently used), or None if absent or expired."""
        found = self._entries.get(key)
        if found is None:
            return None
        value, expires = found
        if expires <= time.monotonic():
            self._drop(key)
            return None
        self._entries.move_to_end(key)
        return value

    async def put(self, key: str, value: bytes, ttl: float) -> bool:
        """Keep `value` for `ttl` seconds, evicting the least recently used; False if too big."""
        if len(value) > self.max_bytes:
            return False
        if key in self._entries:
            self._drop(key)
        self._entries[key] = (value, time.monotonic() + ttl)
        self._bytes += len(value)
        while len(self._entries) > self.max_entries or self._bytes > self.max_bytes:
            self._drop(next(iter(self._entries)))
        return True

    def _drop(self, key: str) -> None:
        value, _ = self._entries.pop(key)
        self._bytes -= len(value)


def make_store(config: Config, client: Redis | None = None) -> CacheStore:
    """The configured store (explicit switch); `client`: a shared Redis client to use."""
    cache = config.cache
    if cache.store == "redis":
        from sidecar.cache.redis_store import RedisCacheStore

        url = config.cache_redis_url
        assert url is not None  # the loader requires one when the cache is used
        return RedisCacheStore(
            url.get_secret_value(), max_bytes=cache.max_bytes,
            timeout=cache.redis_timeout_seconds, client=client,
        )  # fmt: skip
    return MemoryCacheStore(max_entries=cache.max_entries, max_bytes=cache.max_bytes)


def store_key(config: Config) -> tuple[object, ...]:
    """The settings the store depends on: a reload keeps it (and its entries) while unchanged."""
    cache = config.cache
    url = config.cache_redis_url
    if cache.store == "redis":
        return ("redis", url.get_secret_value() if url else None, cache.redis_timeout_seconds,
                cache.max_bytes)  # fmt: skip
    return ("memory", cache.max_entries, cache.max_bytes)
