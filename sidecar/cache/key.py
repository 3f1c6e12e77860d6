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

Spellings of one request are one key: key order and whitespace (the body is parsed), a
sampling parameter (`temperature`, `top_p`: one floating-point number to the API) written
`0`, `0.0` or `0e0` (the Python SDK sends `temperature=0.0` as `0.0`, JavaScript's
`JSON.stringify` as `0`), `anthropic-beta`
features in any order, spacing or repetition, query parameters in any order or
percent-encoding, and a field set to the API's fixed default or left out (`_DEFAULTS`).
Defaults that depend on the model (`temperature`, `top_p`, `top_k`, `thinking`) are
kept as written: the same spelling may mean different things to different models. Every
other number is keyed as written: in free-form JSON Claude reads (a tool's
`input_schema`, a `tool_use` input in the history) `1.0` and `1` are other text, and an
integer field written `5.0` (`top_k`) is a request the API may refuse.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from typing import Any, Final, Literal
from urllib.parse import parse_qsl

from sidecar.header_lists import header_value
from sidecar.scope import CallerScope

_IGNORED: Final = frozenset({"metadata"})  # the caller's own tags: never answer-changing
# Fields whose value here is what the API does when they are left out, for every model:
# written or not, one request. (`tool_choice` `auto` only counts with tools; without, the
# API refuses a `tool_choice`, so that request is another one.)
_DEFAULTS: Final[Mapping[str, tuple[Any, ...]]] = {
    "stream": (False,),
    "stop_sequences": ([],),
    "tool_choice": ({"type": "auto"}, {"type": "auto", "disable_parallel_tool_use": False}),
}
# Parameters the API reads as one floating-point number: `0`, `0.0` and `0e0` are one value.
_FLOATS: Final = ("temperature", "top_p")
Scope = Literal["tenant", "user", "global"]


def scope_key(scope: Scope, caller: CallerScope) -> str:
    """Who shares entries: one tenant, one caller (the IP when nobody is verified), or all,
    each as its trust source vouches for it (`sidecar.scope`): a tenant `acme` of another
    issuer, key source or API keys, of another deployment sharing the store too, is
    another tenant.

    Under `tenant`, a caller with no tenant shares with nobody else: its own entries,
    as under `user` (callers without a tenant are not one tenant).
    """
    if scope == "global":
        return "global"
    if scope == "tenant" and caller.tenant is not None:
        return f"tenant\0{caller.tenant}"
    return f"user\0{caller.caller}"


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
    for name in _FLOATS:
        value = request.get(name)
        # A whole float as an int (`0.0` → `0`): JSON has one number type, Python's parser
        # two. (`is_integer` is False for inf and nan, which the parser refuses anyway.)
        if isinstance(value, float) and value.is_integer():
            request[name] = int(value)
    for name, defaults in _DEFAULTS.items():
        if name in request and (name != "tool_choice" or request.get("tools")):
            # As JSON: `False == 0` in Python, not to Claude.
            written = json.dumps(request[name], sort_keys=True)
            if any(written == json.dumps(default, sort_keys=True) for default in defaults):
                del request[name]
    version = (header_value(headers, "anthropic-version") or "").strip()
    betas = {beta.strip() for beta in (header_value(headers, "anthropic-beta") or "").split(",")}
    sent = [version, ",".join(sorted(betas - {""}))]
    canonical = json.dumps(
        [kind, scope, upstream, _target(target), sent, request],
        sort_keys=True,
        separators=(",", ":"),
        ensure_ascii=False,
    )
    return hashlib.sha256(canonical.encode()).hexdigest()


def _target(target: str) -> list[Any]:
    """Path and query as Claude reads them: the parameters decoded (`%74rue` is `true`,
    `+` a space) and in name order, repeated names keeping theirs. Latin-1 maps each
    escaped byte to one character, so two different queries never decode alike."""
    path, _, query = target.partition("?")
    pairs = parse_qsl(query, keep_blank_values=True, encoding="latin-1")
    return [path, sorted(pairs, key=lambda pair: pair[0])]


def sampled(body: Mapping[str, Any]) -> bool:
    """The answer varies between calls: temperature unset (Claude's default is 1) or above 0."""
    temperature = body.get("temperature")
    if isinstance(temperature, bool) or not isinstance(temperature, int | float):
        return True
    return temperature > 0


def directives(value: str | None) -> frozenset[str]:
    """The `Cache-Control` request directives, from its lines joined as one list
    (`header_value`), read whole (a line is as long as the HTTP parser allows, no longer);
    unknown ones are kept and later ignored."""
    if not value:
        return frozenset()
    return frozenset(
        part.split("=", 1)[0].strip().lower() for part in value.split(",") if part.strip()
    )
