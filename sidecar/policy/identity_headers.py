"""Verified identity for the app: client-sent copies are always removed first."""

from __future__ import annotations

from multidict import CIMultiDict

from sidecar.config import IdentityHeaders
from sidecar.identity import Identity


def strip_and_set_identity(
    headers: CIMultiDict[str], identity: Identity, names: IdentityHeaders
) -> None:
    """Drop every configured identity header, then set the verified ones that exist."""
    values = {
        names.user: identity.user,
        names.tenant: identity.tenant,
        names.api_key_name: identity.api_key_name,
    }
    for name, value in values.items():
        headers.popall(name, None)
        if value is not None:
            headers[name] = value
