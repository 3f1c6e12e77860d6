"""The `resume` and `cache` sections: what outlives one call (resume buffers, cached answers)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, SecretStr, field_validator

from sidecar.config.fields import Seconds, SecondsOrZero, Section
from sidecar.config.policy import QuotaConfig


class ResumeConfig(Section):
    """Resumable streams: every event is kept for `ttl_seconds` so a client can reconnect."""

    enabled: bool = True
    store: Literal["memory", "redis"] = "memory"
    redis_url: SecretStr | None = None  # None: quotas.redis_url
    redis_timeout_seconds: Seconds = 1.0
    ttl_seconds: Seconds = 300
    detach_grace_seconds: SecondsOrZero = 15
    max_buffer_bytes: int = Field(1024 * 1024, gt=0)  # per stream
    max_total_bytes: int = Field(256 * 1024 * 1024, gt=0)  # memory store, all streams
    max_subscribers: int = Field(4, gt=0)  # clients reading one stream at once
    on_store_error: Literal["fail_open", "fail_closed"] = "fail_open"
    # Prompt route: open each resumable stream with the id-only block `id: <stream id>:0`
    # (no event), so a browser `EventSource` cut before its first event resumes instead
    # of asking again. Off by default: SSE readers that yield a block with no data as an
    # event (not browsers) would see an empty one.
    announce_stream_id: bool = False

    @field_validator("redis_url")
    @classmethod
    def _redis_can_use(cls, value: SecretStr | None) -> SecretStr | None:
        return QuotaConfig._redis_can_use(value)


class CacheConfig(Section):
    """The response cache: complete answers replayed for identical requests (off by default)."""

    enabled: bool = False
    store: Literal["memory", "redis"] = "memory"
    redis_url: SecretStr | None = None  # None: quotas.redis_url
    redis_timeout_seconds: Seconds = 1.0
    ttl_seconds: Seconds = 3600
    max_entries: int = Field(1000, gt=0)  # memory store
    max_bytes: int = Field(64 * 1024 * 1024, gt=0)  # memory store, all entries
    scope: Literal["tenant", "user", "global"] = "tenant"
    include_sampled: bool = False
    replay: Literal["instant", "paced"] = "instant"
    charge_hits: bool = False

    @field_validator("redis_url")
    @classmethod
    def _redis_can_use(cls, value: SecretStr | None) -> SecretStr | None:
        return QuotaConfig._redis_can_use(value)
