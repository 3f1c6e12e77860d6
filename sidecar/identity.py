"""Who is calling: the verified identity auth produces for quotas, telemetry and the app."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Final, Literal

# Controls (C0, DEL, C1) and the Unicode line and paragraph separators: never part of a
# name. C0 and DEL are not allowed in an HTTP field value (RFC 9110 §5.5), where the
# verified user, tenant and key name go for the app; C1's NEL and the separators end a
# line for an app that splits the value as text. Lone surrogates (a JSON `"\ud800"` in a
# token's claims decodes to one) are no text: no UTF-8 holds them, so a header, a log
# line, a pseudonym or a scope key could not be written from them.
_CONTROL: Final = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029\ud800-\udfff]")
_MAX_ISSUER: Final = 512  # an issuer is a URL the operator configured, not a document


def is_name(value: str) -> bool:
    """Whether `value` may name a user, tenant or API key: no control characters nor line
    separators (CR, LF and NUL in an identity header would split or end it; NEL or
    U+2028 would split it for an app reading it as text; the rest are invalid there),
    nor lone surrogates (no UTF-8 spells them)."""
    return _CONTROL.search(value) is None


@dataclass(frozen=True, slots=True)
class Identity:
    """A verified caller; `method` says how it was verified (`anonymous` when auth let it pass)."""

    method: Literal["jwt", "api_key", "anonymous"]
    user: str | None = None
    tenant: str | None = None
    api_key_name: str | None = None
    claims: Mapping[str, Any] = field(default_factory=dict)
    # Who vouched for `user` and `tenant` when it is not the top-level `auth.jwt` (a
    # route's JWT block with another issuer, keys or claims): names of two realms are two
    # quota subjects, however they are spelled. (Quotas count the top level's names as
    # they are, across deployments too; what is read back, cache entries and streams, is
    # keyed by `source`.)
    realm: str | None = None
    # Who vouches for this caller, as a digest that holds no secret (`sidecar.scope`):
    # the JWT block's realm (its issuer, key source and claims; the top level's too), an
    # API key's configured SHA-256, or the auth policy that let an anonymous caller in.
    # Two deployments naming a caller alike are two callers unless these are equal.
    source: str | None = None
    # Who vouches for `tenant`: the JWT block's realm, or the API keys naming this tenant
    # in the auth policy (so the keys of one tenant share its scope).
    tenant_source: str | None = None

    @property
    def issuer(self) -> str | None:
        """The verified token's `iss` claim (None without a token, or an `iss` that is no
        name: not a string, empty, over 512 characters, or with a control character)."""
        issuer = self.claims.get("iss") if self.method == "jwt" else None
        if isinstance(issuer, str) and 0 < len(issuer) <= _MAX_ISSUER and is_name(issuer):
            return issuer
        return None

    def __post_init__(self) -> None:
        # An empty claim names nobody: no tenant (or user) at all, never one shared by
        # every caller whose token carries `""` (the cache's tenant scope, quotas, the app).
        if self.tenant == "":
            object.__setattr__(self, "tenant", None)
        if self.user == "":
            object.__setattr__(self, "user", None)


ANONYMOUS = Identity(method="anonymous")
