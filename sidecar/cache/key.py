"""The cache key: the request as Claude sees it, and who may share its answer.

The request part is the whole Messages body except what never changes the answer
(`metadata`), serialised canonically (sorted keys, no spaces), with the route kind (the
prompt route's events differ from the Anthropic route's), the Claude it is sent to (the
base URL), the path and query it is sent to, and the `anthropic-version` /
`anthropic-beta` headers as Claude receives them (the configured version when the client
names none; none of the client's on the routes that build their own request), which
select API behaviour. Every other body field — model,
system, messages, tools, tool_choice, max_tokens, temperature, top_p, top_k,
stop_sequences, thinking, stream, and fields added to the API later — is part of it.
The scope part makes entries private to a tenant (default), a user, or shared (global).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from typing import Any, Final, Literal

from sidecar.header_lists import header_value
from sidecar.identity import Identity

_IGNORED: Final = frozenset({"metadata"})  # the caller's own tags: never answer-changing
_HEADERS: Final = ("anthropic-version", "anthropic-beta")
Scope = Literal["tenant", "user", "global"]


def scope_of(scope: Scope, identity: Identity, client_ip: str) -> str:
    """Who shares entries: one tenant, one caller (the IP when nobody is verified), or all.

    Under `tenant`, a caller with no tenant shares with nobody else: its own entries,
    as under `user` (callers without a tenant are not one tenant).
    """
    if scope == "global":
        return "global"
    # A route's own issuer names tenants and users of its own: another realm's are others.
    realm = "" if identity.realm is None else f"\0{identity.realm}"
    if scope == "tenant" and identity.tenant is not None:
        return f"tenant\0{identity.tenant}{realm}"
    if identity.user is None and identity.api_key_name is None:
        return f"ip\0{client_ip}\0{identity.tenant or ''}"
    who = f"{identity.user or ''}\0{identity.api_key_name or ''}\0{identity.tenant or ''}"
    return f"user\0{who}{realm}"


def cache_key(
    kind: str,
    body: Mapping[str, Any],
    headers: Mapping[str, str],
    scope: str,
    target: str = "",
    upstream: str = "",
) -> str:
    """SHA-256 (hex) of the route kind, the answer-changing request and the scope.

    `headers` are those Claude is sent; `target` is the path and query Claude is sent
    (`/v1/messages?beta=true` is another request than `/v1/messages`); `upstream` is
    Claude's base URL.
    """
    request = {name: value for name, value in body.items() if name not in _IGNORED}
    sent = [header_value(headers, name) or "" for name in _HEADERS]
    canonical = json.dumps(
        [kind, scope, upstream, target, sent, request],
        sort_keys=True,
        separators=(",", ":"),
        ensure_ascii=False,
    )
    return hashlib.sha256(canonical.encode()).hexdigest()


def sampled(body: Mapping[str, Any]) -> bool:
    """The answer varies between calls: temperature unset (Claude's default is 1) or above 0."""
    temperature = body.get("temperature")
    if isinstance(temperature, bool) or not isinstance(temperature, int | float):
        return True
    return temperature > 0


def directives(value: str | None) -> frozenset[str]:
    """The `Cache-Control` request directives; unknown ones are kept and later ignored."""
    if not value:
        return frozenset()
    return frozenset(
        part.split("=", 1)[0].strip().lower() for part in value[:1024].split(",") if part.strip()
    )
