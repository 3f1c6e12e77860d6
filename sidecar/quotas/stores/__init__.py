"""Quota stores: the interface and the explicit factory switch on `quotas.store`."""

from __future__ import annotations

from sidecar.config import QuotaConfig
from sidecar.quotas.stores.base import Decision, Limits, QuotaStore, StoreError, Window
from sidecar.quotas.stores.memory import MemoryQuotaStore


def make_store(config: QuotaConfig) -> QuotaStore:
    """The store `quotas.store` names (Redis is imported only when used)."""
    if config.store == "redis":
        from sidecar.quotas.stores.redis import RedisQuotaStore

        assert config.redis_url is not None  # config validation: redis needs redis_url
        return RedisQuotaStore(
            config.redis_url.get_secret_value(), timeout=config.redis_timeout_seconds
        )
    return MemoryQuotaStore()


__all__ = [
    "Decision", "Limits", "MemoryQuotaStore", "QuotaStore", "StoreError", "Window", "make_store",
]  # fmt: skip
