"""Verified identity for the app: client-sent copies are always removed first."""

from __future__ import annotations

from multidict import CIMultiDict

from sidecar.config import IdentityHeaders
from sidecar.identity import Identity


def strip_and_set_identity(
    headers: CIMultiDict[str], identity: Identity, names: IdentityHeaders
) -> None:
    """Drop every configured identity header, then set the verified ones that exist.

    Spellings with `_` for `-` go too: WSGI/CGI servers map `X_Sidecar_User` and
    `X-Sidecar-User` to the same variable, so either would reach the app as the identity.
    """
    values = {
        names.user: identity.user,
        names.tenant: identity.tenant,
        names.api_key_name: identity.api_key_name,
    }
    reserved = {name.lower().replace("_", "-") for name in values}
    for sent in {k for k in headers if k.lower().replace("_", "-") in reserved}:
        headers.popall(sent, None)
    for name, value in values.items():
        if value is not None:
            headers[name] = value
