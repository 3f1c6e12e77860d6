"""The Redis cache store: one key per entry with a TTL, shared by every replica.

Failures are handled as the resume store handles them: every Redis or socket error,
or a timeout, becomes `CacheStoreError`, and the caller skips the cache for that
request (the request itself is served from Claude). When the resume store uses the same
Redis (URL and timeout), both use one client and its connection pool (`sidecar.app`).
"""

from __future__ import annotations

from typing import Final

from redis.asyncio import Redis
from redis.exceptions import RedisError, ResponseError

from sidecar.cache.stores import CacheStoreError
from sidecar.stream.redis_store import redis_client

PREFIX: Final = "sidecar:cache:"


class RedisCacheStore:
    """Entries as Redis strings under `sidecar:cache:<key>`, expiring after their TTL."""

    name = "redis"

    def __init__(
        self, url: str, *, max_bytes: int, timeout: float = 1.0, client: Redis | None = None
    ) -> None:
        self.max_bytes = max_bytes
        # A client handed in (shared with the resume store) is closed by its owner.
        self._owns_client = client is None
        self._redis: Redis = client if client is not None else redis_client(url, timeout)

    async def start(self) -> None:
        """Connections open on first use (Redis may come up after the sidecar)."""

    async def close(self) -> None:
        if self._owns_client:
            await self._redis.aclose()

    async def get(self, key: str) -> bytes | None:
        try:
            value = await self._redis.get(PREFIX + key)
        except ResponseError as exc:
            if str(exc).startswith("WRONGTYPE"):
                # A value of another Redis type under the key (another version's layout,
                # another program's key): an entry that does not decode, so a miss, and
                # the answer's SET replaces it. Redis answered: no outage.
                return None
            raise CacheStoreError(f"redis: {type(exc).__name__}") from exc
        except (RedisError, OSError, TimeoutError) as exc:
            raise CacheStoreError(f"redis: {type(exc).__name__}") from exc
        return value if isinstance(value, bytes) else None

    async def put(self, key: str, value: bytes, ttl: float) -> bool:
        if len(value) > self.max_bytes:
            return False
        try:
            await self._redis.set(PREFIX + key, value, px=max(1, int(ttl * 1000)))
        except (RedisError, OSError, TimeoutError) as exc:
            raise CacheStoreError(f"redis: {type(exc).__name__}") from exc
        return True
