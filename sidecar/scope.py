"""Whom a request is answered for, as its trust source vouches for it: the one place a
caller's identity becomes a key (the response cache's scope, and so its coalescing, and
the owner of a resumable stream).

A name alone names nobody across deployments: two `sidecar` deployments (or two routes,
or a reload with another `auth` configuration) sharing one Redis may both have a tenant
`acme` or a user `alice`, and each is someone else. So a caller is its names together
with who vouched for them (`Identity.source`, `Identity.tenant_source`): the JWT block's
realm (issuer, key source, claims read), an API key's configured SHA-256 (never its
display name), or, for a caller nobody verified, its client address under the auth
policy that let it in. Those are digests holding no secret (`sidecar.config.auth`).

The parts are joined by NUL, which no verified name holds (`identity.is_name`) and no
digest or address does: no value can pose as another.
"""

from __future__ import annotations

from dataclasses import dataclass

from sidecar.identity import Identity


@dataclass(frozen=True, slots=True)
class CallerScope:
    """One request's caller and tenant as keys (computed once per request:
    `RequestContext.scope`)."""

    caller: str  # one caller: the verified user or key as vouched for, or the client address
    tenant: str | None  # its tenant as vouched for; None without one (a tenant of nobody)


def scope_of(identity: Identity, client_ip: str) -> CallerScope:
    """The caller and tenant keys of `identity` calling from `client_ip`.

    A caller with neither user nor API key is its exact client address (an IPv6 one too,
    never its network) under the auth policy that admitted it. A tenant is keyed only with
    the source that vouches for it: tokens of another issuer or key, or API keys other
    than this tenant's, name another tenant.
    """
    source = identity.source or ""
    tenant = identity.tenant
    if identity.user is None and identity.api_key_name is None:
        caller = f"ip\0{client_ip}\0{tenant or ''}\0{source}"
    else:
        # The key's display name is not part of it: its configured hash (`source`) is it.
        caller = f"{identity.method}\0{identity.user or ''}\0{tenant or ''}\0{source}"
    if tenant is None:
        return CallerScope(caller, None)
    return CallerScope(caller, f"{tenant}\0{identity.tenant_source or ''}")
