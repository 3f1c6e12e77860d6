"""Who is calling: the verified identity auth produces for quotas, telemetry and the app."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Final, Literal

# C0 controls and DEL: never part of a name, and not allowed in an HTTP field value
# (RFC 9110 §5.5), where the verified user, tenant and key name go for the app.
_CONTROL: Final = re.compile(r"[\x00-\x1f\x7f]")


def is_name(value: str) -> bool:
    """Whether `value` may name a user, tenant or API key: no control characters (CR, LF
    and NUL in an identity header would split or end it; the rest are invalid there)."""
    return _CONTROL.search(value) is None


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
