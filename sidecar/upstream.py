"""The Claude client: one shared keep-alive session, retries before the first byte.

Retries use exponential backoff with full jitter on connect errors and 429/500/
502/503/529, honour `retry-after` (seconds or an HTTP-date), and stop at
`claude.max_retries`. A wait longer than `retry_max_seconds` is not slept through:
the client gets the error with its `retry-after` and backs off itself.
"""

from __future__ import annotations

import asyncio
import math
import random
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Final

import aiohttp
from yarl import URL

from sidecar.config import ClaudeConfig
from sidecar.errors import Rejection

RETRYABLE_STATUS: Final = frozenset({429, 500, 502, 503, 529})
# Request headers a client may send that Claude should see; credentials never pass.
FORWARDED_REQUEST_HEADERS: Final = ("anthropic-version", "anthropic-beta", "content-type")
# Response headers that come back to the client unchanged.
RETURNED_RESPONSE_HEADERS: Final = ("request-id", "retry-after", "retry-after-ms", "x-should-retry")
RATELIMIT_PREFIX: Final = "anthropic-ratelimit-"
_URL_CACHE: Final = 256  # joined URLs remembered (paths may carry client query strings)


@dataclass(frozen=True, slots=True)
class Attempt:
    """What one upstream call needs beyond the body (prepared once per request)."""

    method: str
    path: str  # path + query, e.g. /v1/messages?beta=true
    headers: Mapping[str, str]


class ClaudeClient:
    """Sends requests to Claude (or the built-in fake) with retries before the first byte."""

    def __init__(
        self,
        config: ClaudeConfig,
        base_url: str,
        session: aiohttp.ClientSession,
        *,
        on_retry: Callable[[str], None] | None = None,
        on_status: Callable[[int], None] | None = None,
        peer: tuple[str, int] | None = None,
    ) -> None:
        self._config = config
        self._base = URL(base_url)
        self._session = session
        self._on_retry = on_retry
        self._on_status = on_status
        self._timeout = aiohttp.ClientTimeout(
            total=None, sock_connect=config.connect_timeout_seconds, sock_read=None
        )
        self._key = config.api_key.get_secret_value() if config.api_key else None
        # What telemetry names as Claude's address and port (default: those of base_url).
        self.server_address, self.server_port = peer or (self._base.host or "", self._base.port)
        self._urls: dict[str, URL] = {}

    @property
    def base_url(self) -> str:
        """Where calls go (for `builtin:fake`, the fake's real address on this start)."""
        return str(self._base)

    def url_for(self, path: str) -> URL:
        """The Claude URL of `path` (+ query); joined once per distinct path."""
        url = self._urls.get(path)
        if url is None:
            if len(self._urls) >= _URL_CACHE:
                self._urls.clear()
            url = self._urls[path] = self._base.join(URL(path, encoded=True))
        return url

    def request_headers(self, client: Mapping[str, str]) -> dict[str, str]:
        """Headers for Claude: the sidecar's own key plus the client's version/beta."""
        headers = {name: client[name] for name in FORWARDED_REQUEST_HEADERS if name in client}
        headers.setdefault("anthropic-version", self._config.anthropic_version)
        headers.setdefault("content-type", "application/json")
        headers["accept-encoding"] = "identity"  # relay bytes as they come, never re-encode
        if self._key is not None:
            headers["x-api-key"] = self._key
        return headers

    def backoff(self, attempt: int, retry_after: str | None) -> float:
        """Seconds to wait before retry number `attempt` (0-based)."""
        if retry_after is not None:
            wait = _retry_after_seconds(retry_after)
            if wait is not None:
                return wait
        cap = min(self._config.retry_max_seconds, self._config.retry_base_seconds * 2**attempt)
        return random.uniform(0, cap)

    async def send(
        self, attempt: Attempt, body: bytes | None
    ) -> tuple[aiohttp.ClientResponse, int]:
        """Send with retries; returns (response, retries used). Raises Rejection if unreachable."""
        url = self.url_for(attempt.path)
        retries = 0
        while True:
            try:
                async with asyncio.timeout(self._config.idle_timeout_seconds):
                    response = await self._session.request(
                        attempt.method, url, data=body, headers=attempt.headers,
                        timeout=self._timeout, allow_redirects=False,
                    )  # fmt: skip
            except aiohttp.ClientError as exc:  # before TimeoutError: a connect timeout is both
                if retries >= self._config.max_retries:
                    raise Rejection(
                        502,
                        "api_error",
                        f"Claude is unreachable ({type(exc).__name__})",
                        reason="upstream_unreachable",
                    ) from None
                delay = self.backoff(retries, None)
                self._count_retry("connect_error")
            except TimeoutError:
                raise Rejection(
                    504, "timeout_error", "Claude did not answer in time", reason="upstream_timeout"
                ) from None
            else:
                if self._on_status is not None:
                    self._on_status(response.status)
                if response.status not in RETRYABLE_STATUS or retries >= self._config.max_retries:
                    return response, retries
                delay = self.backoff(retries, response.headers.get("retry-after"))
                if delay > self._config.retry_max_seconds:
                    return response, retries  # the client backs off itself
                response.release()
                self._count_retry(str(response.status))
            retries += 1
            await asyncio.sleep(delay)

    def _count_retry(self, reason: str) -> None:
        if self._on_retry is not None:
            self._on_retry(reason)


async def read_answer(response: aiohttp.ClientResponse, limit: int | None = None) -> bytes:
    """Claude's whole answer (at most `limit` bytes), then its connection is let go; 502 if cut."""
    try:
        if limit is None:
            return await response.read()
        body = bytearray()
        while len(body) < limit:  # `read(n)` returns what has arrived so far, not n bytes
            data = await response.content.read(limit - len(body))
            if not data:
                break
            body += data
        return bytes(body)
    except aiohttp.ClientError:
        raise Rejection(
            502, "api_error", "the connection to Claude was lost", reason="upstream_lost"
        ) from None
    finally:
        response.release()  # a body not read to its end closes the connection (never pooled)


def _retry_after_seconds(value: str) -> float | None:
    """`retry-after` as seconds from now: delay-seconds or an HTTP-date; None when unreadable."""
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = parsedate_to_datetime(value)
        except (TypeError, ValueError, IndexError):
            return None
        if when.tzinfo is None:  # RFC 9110: HTTP-dates are GMT
            when = when.replace(tzinfo=UTC)
        seconds = (when - datetime.now(UTC)).total_seconds()
    return None if math.isnan(seconds) else max(0.0, seconds)


def returned_headers(upstream: Mapping[str, str], *, keep_ratelimit: bool) -> dict[str, str]:
    """Claude's response headers the client should see (request id, retry and rate-limit info)."""
    headers = {name: upstream[name] for name in RETURNED_RESPONSE_HEADERS if name in upstream}
    if keep_ratelimit:
        for name, value in upstream.items():
            if name.lower().startswith(RATELIMIT_PREFIX):
                headers[name] = value
    return headers
