"""JWKS: fetched asynchronously, cached, refreshed on schedule and (rate-limited) on unknown kid.

An outage keeps the last good keys. `ready` is False only while no key was ever loaded.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import aiohttp
import jwt
from yarl import URL

from sidecar.config import redact_url
from sidecar.config.auth import is_loopback

log = logging.getLogger("sidecar.auth.jwks")
MAX_JWKS_BYTES = 1024 * 1024  # a key set is a few KiB; a huge answer is a broken issuer
_FETCH_TIMEOUT = aiohttp.ClientTimeout(total=10)
_MAX_REDIRECTS = 5
_REDIRECTS = frozenset({301, 302, 303, 307, 308})


class RedirectRefused(ValueError):
    """The issuer redirected the key set to plain HTTP off the loopback (or too often)."""


@dataclass(frozen=True, slots=True)
class SigningKey:
    """One usable key of the set; `alg` is what the JWK pins (None: any listed algorithm)."""

    kid: str | None
    alg: str | None
    key: Any


class JwksCache:
    """The keys of one JWKS URL."""

    def __init__(
        self,
        url: str,
        session: aiohttp.ClientSession,
        *,
        refresh_seconds: float,
        min_refresh_seconds: float,
        on_refresh: Callable[[str], None] | None = None,
    ) -> None:
        self.url = url
        self.shown_url = redact_url(url)  # what log lines name: no credential in it
        self._on_refresh = on_refresh  # told `success` / `failure` after every fetch
        self._session = session
        self._refresh = refresh_seconds
        self._min_refresh = min_refresh_seconds
        self._keys: dict[str | None, SigningKey] = {}
        # The key a token without `kid` may use: the set's only usable key, if it has one.
        self._sole: SigningKey | None = None
        self._last_attempt = float("-inf")  # when the last fetch ended
        self._fetching: asyncio.Task[bool] | None = None  # the one fetch in flight
        self._task: asyncio.Task[None] | None = None
        self.fetches = 0

    @property
    def ready(self) -> bool:
        return bool(self._keys)

    async def start(self) -> None:
        await self.refresh()
        self._task = asyncio.create_task(self._scheduled())

    async def close(self) -> None:
        for task in (self._task, self._fetching):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task

    async def _scheduled(self) -> None:
        while True:
            await asyncio.sleep(self._refresh if self.ready else self._min_refresh)
            await self.refresh()  # never raises: a failed fetch is logged and reported

    async def refresh(self) -> bool:
        """Fetch the key set now unless a fetch ended within `min_refresh_seconds`; True if
        fetched. A call while a fetch is in flight waits for that one (single flight): a
        slow or hanging issuer costs one fetch timeout however many tokens wait, and is
        never asked twice at once. A caller that gives up (cancelled) leaves it running."""
        fetching = self._fetching
        if fetching is None:
            if time.monotonic() - self._last_attempt < self._min_refresh:
                return False
            fetching = self._fetching = asyncio.create_task(self._fetch())
        return await asyncio.shield(fetching)

    async def _fetch(self) -> bool:
        self.fetches += 1
        try:
            try:
                async with asyncio.timeout(_FETCH_TIMEOUT.total):
                    raw = await self._get()
                keys, usable = read_jwks(json.loads(raw))
            except (aiohttp.ClientError, TimeoutError, ValueError, RecursionError) as exc:
                log.warning("jwks fetch failed, keeping last keys", extra={"url": self.shown_url,
                            "error": type(exc).__name__})  # fmt: skip
                self._report("failure")
                return False
            except Exception:  # shared by every waiter: none of them may see it raise
                log.exception("jwks refresh failed", extra={"url": self.shown_url})
                self._report("failure")
                return False
            if usable > len(keys):
                log.warning(
                    "jwks has keys sharing a kid: tokens naming it are refused",
                    extra={"url": self.shown_url, "ambiguous_keys": usable - len(keys)},
                )
            if keys:
                self._keys = keys
                self._sole = next(iter(keys.values())) if usable == 1 else None
            else:
                log.warning(
                    "jwks had no usable key, keeping last keys", extra={"url": self.shown_url}
                )
            self._report("success" if keys else "failure")
            return True
        finally:
            self._last_attempt = time.monotonic()
            self._fetching = None

    async def _get(self) -> bytes:
        """The key set's bytes, redirects followed only where `jwks_url` itself could point:
        `https://`, or `http://` on a loopback host. A key set (or a redirect) that came
        over plain HTTP from elsewhere is anyone's on the network path, whatever the URL
        the config names; such a hop is refused before it is requested."""
        url = URL(self.url)
        for _ in range(_MAX_REDIRECTS + 1):
            async with self._session.get(
                url, timeout=_FETCH_TIMEOUT, allow_redirects=False
            ) as response:
                location = response.headers.get("Location")
                if response.status not in _REDIRECTS or location is None:
                    response.raise_for_status()
                    return await _whole_body(response)
            url = url.join(URL(location))
            if url.scheme != "https" and not (url.scheme == "http" and is_loopback(url.host or "")):
                raise RedirectRefused("redirected off https")
        raise RedirectRefused("too many redirects")

    def _report(self, result: str) -> None:
        if self._on_refresh is not None:
            self._on_refresh(result)

    async def key_for(self, kid: str | None) -> SigningKey | None:
        """The key for `kid`; an unknown kid triggers one rate-limited refetch.

        Looked up again whether or not this call fetched: a caller that waited for a
        fetch in flight (another token's, or the schedule's) uses the keys it brought."""
        key = self._lookup(kid)
        if key is None:
            await self.refresh()
            key = self._lookup(kid)
        return key

    def _lookup(self, kid: str | None) -> SigningKey | None:
        if kid is None and self._sole is not None:
            return self._sole
        return self._keys.get(kid)


async def _whole_body(response: aiohttp.ClientResponse) -> bytes:
    """The answer to its end, however many pieces it arrives in (one `read(n)` returns
    only what has arrived so far); ValueError past `MAX_JWKS_BYTES`."""
    raw = bytearray()
    async for chunk in response.content.iter_any():
        raw += chunk
        if len(raw) > MAX_JWKS_BYTES:
            raise ValueError("key set too large")
    return bytes(raw)


def read_jwks(document: Any) -> tuple[dict[str | None, SigningKey], int]:
    """The signing keys of a JWKS document by `kid`, and how many usable keys the set
    holds: entries that are not usable are skipped, and a `kid` that more than one usable
    key shares is left out (counted).

    A `kid` that names two keys (or two keys without one) is ambiguous: keeping either
    would refuse every token signed with the other, whichever came last in the document,
    and trying each would let a key the issuer meant to replace keep verifying under the
    name of its successor. So a token naming it is verified against neither (401, as an
    unknown kid), until the issuer publishes one key per `kid`."""
    keys: dict[str | None, SigningKey] = {}
    shared: set[str | None] = set()
    usable = 0
    entries = document.get("keys") if isinstance(document, dict) else None
    for entry in entries if isinstance(entries, list) else []:
        if not isinstance(entry, dict) or entry.get("use", "sig") != "sig":
            continue
        if entry.get("kty") == "oct":
            continue  # a shared secret has no place in a public key set (HS/RS confusion)
        kid, alg = entry.get("kid"), entry.get("alg")
        if not isinstance(kid, str | None) or not isinstance(alg, str | None):
            continue
        try:
            key = jwt.PyJWK(entry).key
        except (jwt.PyJWTError, ValueError, TypeError, KeyError):
            continue  # an unusable key is skipped, the others still work
        usable += 1
        if kid in keys or kid in shared:
            shared.add(kid)
            keys.pop(kid, None)
            continue
        keys[kid] = SigningKey(kid=kid, alg=alg, key=key)
    return keys, usable
