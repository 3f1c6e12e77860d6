"""Who a quota counts: the client IP (trusted proxies only) and the subject key."""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence

from sidecar.config import Network


def client_ip(peer: str, xff: str | None, trusted: Sequence[Network]) -> str:
    """The client's address: walk X-Forwarded-For right to left past trusted proxies."""
    if not xff or not trusted or not _trusted(peer, trusted):
        return peer
    hops = [hop.strip() for hop in xff.split(",") if hop.strip()]
    for hop in reversed(hops):
        if not _trusted(hop, trusted):
            return hop
    return hops[0] if hops else peer


def is_trusted_proxy(peer: str, trusted: Sequence[Network]) -> bool:
    """Whether `peer` is one of `server.trusted_proxies` (its X-Forwarded-* are believed)."""
    return _trusted(peer, trusted)


def _trusted(address: str, trusted: Sequence[Network]) -> bool:
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return False
    return any(ip in network for network in trusted)
