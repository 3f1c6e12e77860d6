"""Verified identity for the app: client-sent copies are always removed first.

Two kinds of header say who a request is from: the sidecar's identity headers
(the verified user, tenant, API key name) and the forwarding headers proxies use
for the client's address and the URL it asked for. A client may send either to
impersonate someone, so both are stripped in every spelling before the app sees
the request: any case, and `_` or `.` for `-` (WSGI/CGI servers map `X_Real_IP` and
`X-Real-IP` to the same variable, PHP and lighttpd `X.Real.IP` too, so any of them would
reach the app as the real one).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Final

from multidict import CIMultiDict

from sidecar.config import IdentityHeaders
from sidecar.header_lists import folded_name
from sidecar.identity import Identity

# The client's address, or the URL it asked for, as proxies, CDNs and frameworks read them.
# Only a trusted proxy may set these (in their `-` spelling); from anyone else they go.
FORWARDING_HEADERS: Final = frozenset(
    {
        "forwarded", "x-forwarded", "forwarded-for", "x-forwarded-for", "x-forwarded-host",
        "x-forwarded-proto", "x-forwarded-port", "x-forwarded-prefix", "x-forwarded-server",
        "x-forwarded-ssl", "x-forwarded-scheme", "x-real-ip", "true-client-ip", "x-client-ip",
        "client-ip", "cf-connecting-ip", "cf-connecting-ipv6", "fastly-client-ip",
        "x-cluster-client-ip", "x-original-forwarded-for", "x-originating-ip", "x-remote-ip",
        "x-remote-addr", "x-proxyuser-ip", "x-envoy-external-address", "x-original-url",
        "x-rewrite-url", "x-original-uri", "x-original-host", "x-host", "x-http-host-override",
        "x-url-scheme", "front-end-https", "x-envoy-original-path",
        # Java's getClientIp helpers (WebLogic, Apache's mod_proxy setups) read these first.
        "proxy-client-ip", "wl-proxy-client-ip",
        # Set by hosting platforms and CDNs for the app behind them.
        "fly-client-ip", "x-azure-clientip", "x-azure-socketip", "x-appengine-user-ip",
        "x-vercel-forwarded-for", "x-nf-client-connection-ip", "cloudfront-viewer-address",
        # ASP.NET Core's ForwardedHeaders middleware keeps the values it replaced in these.
        "x-original-for", "x-original-proto", "x-original-prefix",
        # Read as the client's address by IP allow-lists (a known 403 bypass header).
        "x-custom-ip-authorization",
    }
)  # fmt: skip
_FORWARDING_PREFIX: Final = "x-forwarded-"  # every X-Forwarded-* of any proxy
# A header sent under its CGI variable's name (`HTTP_CLIENT_IP`, `HTTP_X_FORWARDED_FOR`):
# the same helpers read those names as headers too.
_CGI_PREFIX: Final = "http-"


def _folded(name: str) -> bool:
    """A spelling only servers that fold names read as the header (`_` or `.` for `-`)."""
    return "_" in name or "." in name


def is_forwarding_header(name: str) -> bool:
    """Whether `name`, in any spelling, is a forwarding / client-address header."""
    key = folded_name(name)
    if key.startswith(_CGI_PREFIX):
        key = key[len(_CGI_PREFIX) :]
    return key in FORWARDING_HEADERS or key.startswith(_FORWARDING_PREFIX)


def strip_forwarding_claims(headers: CIMultiDict[str], *, trusted: bool) -> None:
    """Drop forwarding headers: all of them from an untrusted peer; from a trusted proxy,
    only `_` and `.` spellings (proxies write the `-` ones, nothing legitimate the others)."""
    for name in [n for n in headers if is_forwarding_header(n) and (not trusted or _folded(n))]:
        headers.popall(name, None)


def strip_and_set_identity(
    headers: CIMultiDict[str], identity: Identity, names: IdentityHeaders
) -> None:
    """Drop every configured identity header in any spelling, then set the verified ones."""
    values = {
        names.user: identity.user,
        names.tenant: identity.tenant,
        names.api_key_name: identity.api_key_name,
        names.issuer: identity.issuer,
    }
    reserved = {folded_name(name) for name in values}
    for sent in {k for k in headers if folded_name(k) in reserved}:
        headers.popall(sent, None)
    for name, value in values.items():
        if value is not None:
            headers[name] = value


_API_KEY: Final = "x-api-key"


def header_credential(headers: Mapping[str, str]) -> bool:
    """Whether the request carries a credential the sidecar reads in a header (auth takes
    those before the query parameter): `Authorization: Bearer …` or `x-api-key`."""
    return bool(headers.get("x-api-key")) or _is_bearer(headers.get("Authorization", ""))


def keep_read_credential(headers: CIMultiDict[str]) -> None:
    """Leave the app only the credential auth read, for `app.forward_credentials`.

    A Bearer line is read before `x-api-key`, so beside one every `x-api-key` goes (it was
    never checked); an `x-api-key` spelled with `_` or `.` is never read by auth, so it
    always goes.
    """
    bearer = _is_bearer(headers.get("Authorization", ""))
    for name in [n for n in headers if folded_name(n) == _API_KEY]:
        if bearer or name.lower() != _API_KEY:
            headers.popall(name, None)


def strip_credentials(headers: CIMultiDict[str]) -> None:
    """Drop the credentials the sidecar reads: every `Authorization: Bearer …` line and
    `x-api-key` in any spelling. Another `Authorization` (the app's own `Basic`) stays."""
    for name in [n for n in headers if folded_name(n) == _API_KEY]:
        headers.popall(name, None)
    kept = [value for value in headers.getall("Authorization", ()) if not _is_bearer(value)]
    headers.popall("Authorization", None)
    for value in kept:
        headers.add("Authorization", value)


def _is_bearer(authorization: str) -> bool:
    """An `Authorization` value of the `Bearer` scheme (any case, any whitespace after)."""
    return authorization.lower().split(None, 1)[:1] == ["bearer"]
