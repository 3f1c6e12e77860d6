"""From a quota policy to a store's terms (its limits, the subject counted) and from the
store's decision to what the client is told (the `anthropic-ratelimit-*` headers, or
the rejection with its `retry-after`)."""

from __future__ import annotations

import functools
import math
from collections.abc import Mapping
from datetime import UTC, datetime
from types import MappingProxyType
from typing import Final

from sidecar.client_address import ip_subject
from sidecar.config import QuotaConfig
from sidecar.errors import Rejection, reject
from sidecar.identity import Identity
from sidecar.quotas.stores import Decision, Limits


def limits_of(policy: QuotaConfig) -> Limits:
    return Limits(
        requests_per_minute=policy.requests_per_minute,
        tokens_per_minute=policy.tokens_per_minute,
        tokens_per_day=policy.tokens_per_day,
        concurrent_streams=policy.concurrent_streams,
        lease_seconds=policy.lease_seconds,
    )


# The Identity attribute each `quotas.key` counts by (client_ip: none, the address is used).
_KEY_ATTRIBUTE: Final[Mapping[str, str | None]] = MappingProxyType(
    {"user": "user", "api_key": "api_key_name", "tenant": "tenant", "client_ip": None}
)


def subject_of(policy: QuotaConfig, scope: str, identity: Identity, client_ip: str) -> str:
    """The counter key: route scope + `quotas.key` value, or the client IP when there is none
    (an IPv6 one as its network: `sidecar.client_address.ip_subject`).

    A user is counted within its tenant: a user name names one caller only inside its
    tenant (each tenant's users are its own, as for resume and the cache), so `alice` of
    one tenant never spends from `alice` of another. The parts are joined by U+001F, which
    no verified name holds (`identity.is_name`): no value can pose as another.
    """
    attribute = _KEY_ATTRIBUTE[policy.key]
    value = getattr(identity, attribute) if attribute is not None else None
    kind = policy.key
    if not value:  # an IPv6 client by its network (`quotas.ipv6_prefix_length`)
        kind, value = "client_ip", ip_subject(client_ip, policy.ipv6_prefix_length)
    elif kind == "user":
        value = f"{value}\x1f{identity.tenant or ''}"
    if kind in ("user", "tenant") and identity.realm is not None:
        value = f"{value}\x1f{identity.realm}"  # a route's own issuer: its names are others
    return f"{scope}\x1f{kind}\x1f{value}"


@functools.lru_cache(maxsize=256)  # resets fall on few distinct seconds: format each once
def _rfc3339_second(second: int) -> str:
    """A whole second in UTC: `2026-01-01T00:00:00Z` (as Anthropic's reset headers)."""
    return datetime.fromtimestamp(second, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


# Header names built once: a lease keeps its headers for its stream's life, and
# shared name strings are neither formatted per call nor held once per stream.
_RATELIMIT_NAMES: Final = tuple(
    (kind, f"anthropic-ratelimit-{kind}-limit", f"anthropic-ratelimit-{kind}-remaining",
     f"anthropic-ratelimit-{kind}-reset")
    for kind in ("requests", "tokens")
)  # fmt: skip


def ratelimit_headers(decision: Decision) -> dict[str, str]:
    """`anthropic-ratelimit-{requests,tokens}-{limit,remaining,reset}` for the enabled limits."""
    headers: dict[str, str] = {}
    for kind, limit, remaining, reset in _RATELIMIT_NAMES:
        window = decision.requests if kind == "requests" else decision.tokens
        if window is not None:
            headers[limit] = str(window.limit)
            headers[remaining] = str(window.remaining)
            headers[reset] = _rfc3339_second(math.ceil(window.reset_at))  # rounded up
    return headers


# How a refusal names whom a limit counts (`quotas.key`, or the client IP it fell back to).
_COUNTED_AS: Final[Mapping[str, str]] = MappingProxyType(
    {"user": "user", "api_key": "API key", "tenant": "tenant", "client_ip": "client IP"}
)


def rejection_of(
    decision: Decision, policy: QuotaConfig, reserve: int, subject: str | None = None
) -> Rejection:
    """The 429 (or 400 for a call larger than a whole token limit) for a refused admission.

    The message names what the limit counted: `quotas.key`, or the client IP for a caller
    without that value (`subject`, as `subject_of` made it, tells which).
    """
    headers = ratelimit_headers(decision)
    limited_by = decision.limited_by
    if limited_by == "too_large":
        limit = min(x for x in (policy.tokens_per_minute, policy.tokens_per_day) if x is not None)
        return reject(
            "quota_request_too_large",
            f"this call may use up to {reserve} tokens (input estimate + max_tokens), more "
            f"than the token quota of {limit}; lower max_tokens",
            headers=headers,
        )
    wait = max(decision.retry_after, 0.001)
    headers["retry-after"] = str(math.ceil(wait))
    headers["retry-after-ms"] = str(math.ceil(wait * 1000))
    kind = subject.split("\x1f", 2)[1] if subject is not None else policy.key
    per = f"per {_COUNTED_AS[kind]}"
    messages = {
        "requests": f"rate limit of {policy.requests_per_minute} requests per minute {per}",
        "tokens_per_minute": f"token quota of {policy.tokens_per_minute} per minute {per} "
        f"(this call reserves {reserve})",
        "tokens_per_day": f"token quota of {policy.tokens_per_day} per day {per} "
        f"(this call reserves {reserve})",
        "concurrency": f"at most {policy.concurrent_streams} concurrent streams {per}",
    }
    limit_name = limited_by or "requests"
    message = messages[limit_name]
    return reject(f"quota_{limit_name}", f"{message}; retry after {wait:.1f} s", headers=headers)
