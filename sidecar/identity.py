"""Who is calling: the verified identity auth produces for quotas, telemetry and the app."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal


@dataclass(frozen=True, slots=True)
class Identity:
    """A verified caller; `method` says how it was verified (`anonymous` when auth let it pass)."""

    method: Literal["jwt", "api_key", "anonymous"]
    user: str | None = None
    tenant: str | None = None
    api_key_name: str | None = None
    claims: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        # An empty claim names nobody: no tenant (or user) at all, never one shared by
        # every caller whose token carries `""` (the cache's tenant scope, quotas, the app).
        if self.tenant == "":
            object.__setattr__(self, "tenant", None)
        if self.user == "":
            object.__setattr__(self, "user", None)


ANONYMOUS = Identity(method="anonymous")
