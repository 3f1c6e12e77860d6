"""JWKS: fetched asynchronously, cached, refreshed on schedule and (rate-limited) on unknown kid.

An outage keeps the last good keys. `ready` is False only while no key was ever loaded.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import Any

import aiohttp
import jwt

log = logging.getLogger("sidecar.auth.jwks")


class JwksCache:
    """The keys of one JWKS URL."""

    def __init__(
        self,
        url: str,
        session: aiohttp.ClientSession,
        *,
        refresh_seconds: float,
        min_refresh_seconds: float,
    ) -> None:
        self.url = url
        self._session = session
        self._refresh = refresh_seconds
        self._min_refresh = min_refresh_seconds
        self._keys: dict[str | None, jwt.PyJWK] = {}
        self._last_attempt = float("-inf")
        self._lock = asyncio.Lock()
        self._task: asyncio.Task[None] | None = None
        self.fetches = 0

    @property
    def ready(self) -> bool:
        return bool(self._keys)

    async def start(self) -> None:
        await self.refresh()
        self._task = asyncio.create_task(self._scheduled())

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _scheduled(self) -> None:
        while True:
            await asyncio.sleep(self._refresh if self.ready else self._min_refresh)
            await self.refresh()

    async def refresh(self) -> bool:
        """Fetch the key set now unless fetched within `min_refresh_seconds`; True if fetched."""
        async with self._lock:
            now = time.monotonic()
            if now - self._last_attempt < self._min_refresh:
                return False
            self._last_attempt = now
            self.fetches += 1
            try:
                timeout = aiohttp.ClientTimeout(total=10)
                async with self._session.get(self.url, timeout=timeout) as response:
                    response.raise_for_status()
                    document: Any = await response.json(content_type=None)
                keys = self._parse(document)
            except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
                log.warning("jwks fetch failed, keeping last keys", extra={"url": self.url,
                            "error": type(exc).__name__})  # fmt: skip
                return False
            if keys:
                self._keys = keys
            return True

    @staticmethod
    def _parse(document: Any) -> dict[str | None, jwt.PyJWK]:
        keys: dict[str | None, jwt.PyJWK] = {}
        for entry in document.get("keys", []) if isinstance(document, dict) else []:
            if not isinstance(entry, dict) or entry.get("use", "sig") != "sig":
                continue
            try:
                keys[entry.get("kid")] = jwt.PyJWK(entry)
            except (jwt.PyJWKError, jwt.InvalidKeyError, ValueError, TypeError):
                continue  # an unusable key is skipped, the others still work
        return keys

    async def key_for(self, kid: str | None) -> jwt.PyJWK | None:
        """The key for `kid`; an unknown kid triggers one rate-limited refetch."""
        key = self._lookup(kid)
        if key is None and await self.refresh():
            key = self._lookup(kid)
        return key

    def _lookup(self, kid: str | None) -> jwt.PyJWK | None:
        if kid is None and len(self._keys) == 1:
            return next(iter(self._keys.values()))
        return self._keys.get(kid)
