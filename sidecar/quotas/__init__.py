"""Quotas (interim in-process implementation; the store-backed gate replaces this module)."""

from __future__ import annotations

from collections.abc import Callable
from typing import ClassVar

from sidecar.config import QuotaConfig
from sidecar.identity import Identity


class QuotaLease:
    headers: ClassVar[dict[str, str]] = {}

    async def settle(self, input_tokens: int, output_tokens: int) -> None:
        return None


class QuotaGate:
    on_store_error: Callable[[str], None] | None = None

    @classmethod
    def from_config(cls, config: QuotaConfig) -> QuotaGate:
        return cls()

    async def start(self) -> None:
        return None

    async def close(self) -> None:
        return None

    async def ready(self) -> bool:
        return True

    async def acquire(
        self,
        policy: QuotaConfig,
        scope: str,
        identity: Identity,
        client_ip: str,
        reserve_tokens: int,
    ) -> QuotaLease:
        return QuotaLease()
