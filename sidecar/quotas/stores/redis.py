"""The Redis quota store: buckets and leases shared by every replica, one script per call."""

from __future__ import annotations

import hashlib
from typing import Any, Final

from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError

from sidecar.quotas.stores import lua
from sidecar.quotas.stores.base import (
    Decision,
    LimitedBy,
    Limits,
    QuotaStore,
    StoreError,
    Window,
    tighter,
)

PREFIX: Final = "sidecar:quota:"
_VERDICTS: Final[dict[int, LimitedBy]] = {
    1: "requests", 2: "tokens_per_minute", 3: "tokens_per_day", 4: "concurrency", 5: "too_large",
}  # fmt: skip


def subject_keys(subject: str) -> tuple[str, str]:
    """Bucket hash and lease ZSET of a subject: hashed (no user ids in Redis), one hash tag."""
    tag = hashlib.blake2b(subject.encode(), digest_size=16).hexdigest()
    return f"{PREFIX}{{{tag}}}", f"{PREFIX}{{{tag}}}:leases"


def _limit(value: int | None) -> int:
    return 0 if value is None else value


def _window(left: int, reset_ms: int, limit: int | None) -> Window | None:
    if limit is None or left < 0:
        return None
    return Window(limit, left, reset_ms / 1000)


class RedisQuotaStore(QuotaStore):
    """A redis-py asyncio client running the scripts of `sidecar.quotas.stores.lua`."""

    renews_leases = True

    def __init__(self, url: str, *, timeout: float = 1.0, offset: float = 0.0) -> None:
        # One immediate retry on a fresh connection: after a Redis restart the pooled
        # connections are dead and the first use of each fails; a timeout is not retried,
        # since the script may have run and a retry could count a request twice.
        self._redis: Redis = Redis.from_url(
            url,
            socket_timeout=timeout,
            socket_connect_timeout=timeout,
            retry=Retry(NoBackoff(), 1, supported_errors=(RedisConnectionError,)),
        )
        self._admit = self._redis.register_script(lua.ADMIT)
        self._settle = self._redis.register_script(lua.SETTLE)
        self._renew = self._redis.register_script(lua.RENEW)
        self.offset = offset  # seconds added to Redis' clock; tests roll windows with it

    async def _run(self, script: Any, keys: list[str], args: list[Any]) -> Any:
        try:
            return await script(keys=keys, args=[repr(self.offset), *args])
        except (RedisError, OSError, TimeoutError) as exc:
            raise StoreError(f"redis: {type(exc).__name__}: {exc}") from exc

    async def admit(self, subject: str, limits: Limits, tokens: int, lease_id: str) -> Decision:
        reply = await self._run(
            self._admit,
            list(subject_keys(subject)),
            [
                _limit(limits.requests_per_minute),
                _limit(limits.tokens_per_minute),
                _limit(limits.tokens_per_day),
                _limit(limits.concurrent_streams),
                tokens,
                lease_id,
                repr(limits.lease_seconds),
                1 if limits.checks_tokens else 0,
            ],
        )
        try:
            verdict, wait_ms, now_ms, r_left, r_reset, m_left, m_reset, d_left, d_reset = (
                int(v) for v in reply
            )
        except (TypeError, ValueError) as exc:
            raise StoreError(f"redis: unexpected reply {reply!r}") from exc
        return Decision(
            admitted=verdict == 0,
            limited_by=_VERDICTS.get(verdict),
            retry_after=wait_ms / 1000,
            requests=_window(r_left, r_reset, limits.requests_per_minute),
            tokens=tighter(
                _window(m_left, m_reset, limits.tokens_per_minute),
                _window(d_left, d_reset, limits.tokens_per_day),
            ),
            now=now_ms / 1000,
        )

    async def settle(
        self,
        subject: str,
        limits: Limits,
        lease_id: str,
        reserved: int,
        used: int,
        *,
        again: bool = False,
    ) -> None:
        await self._run(
            self._settle,
            list(subject_keys(subject)),
            [
                _limit(limits.requests_per_minute),
                _limit(limits.tokens_per_minute),
                _limit(limits.tokens_per_day),
                lease_id,
                reserved - used,
                1 if again else 0,
            ],
        )

    async def renew(self, subject: str, lease_id: str, lease_seconds: float) -> bool:
        _, leases = subject_keys(subject)
        return bool(await self._run(self._renew, [leases], [lease_id, repr(lease_seconds)]))

    async def ready(self) -> bool:
        try:
            return bool(await self._redis.ping())
        except (RedisError, OSError, TimeoutError):
            return False

    async def close(self) -> None:
        await self._redis.aclose()
