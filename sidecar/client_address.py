"""Who a quota counts: the client IP (trusted proxies only) and the subject key."""

from __future__ import annotations

import functools
import ipaddress
from collections.abc import Sequence

from sidecar.config import Network

Address = ipaddress.IPv4Address | ipaddress.IPv6Address


def client_ip(peer: str, xff: str | None, trusted: Sequence[Network]) -> str:
    """The client's address: walk X-Forwarded-For right to left past trusted proxies.

    A hop is read as the address it names, in one spelling: with a port (`1.2.3.4:5678`,
    `[2001:db8::1]:443`, as some load balancers write it), in any IPv6 spelling, or
    IPv4-mapped (`::ffff:1.2.3.4`), it is the same client, so a quota keyed on it is one
    quota, not one per source port. A hop that names no address is kept as written.
    """
    if not xff or not trusted or not _trusted(peer, trusted):
        return peer
    hops = [hop.strip() for hop in xff.split(",") if hop.strip()]
    for hop in reversed(hops):
        address = _address(hop)
        if address is None or not _member(address, trusted):
            return _spelled(hop, address)  # (not an address: never a trusted proxy)
    return _spelled(hops[0], _address(hops[0])) if hops else peer


@functools.lru_cache(maxsize=4096)  # a client makes many calls: its subject is worked out once
def ip_subject(client_ip: str, ipv6_prefix_length: int) -> str:
    """The client a per-IP quota counts: an IPv4 address as is; an IPv6 address as its
    network of `ipv6_prefix_length` bits (`2001:db8:1:2::/64`), since one subscriber is
    given a whole /64 and may use any address in it; an IPv4-mapped one as its IPv4
    address. A client IP that names no address is kept as written."""
    try:
        address = ipaddress.ip_address(client_ip)
    except ValueError:
        return client_ip
    if isinstance(address, ipaddress.IPv4Address):
        return str(address)
    if address.ipv4_mapped is not None:
        return str(address.ipv4_mapped)
    host_bits = 128 - ipv6_prefix_length
    network = int(address) >> host_bits << host_bits  # any `%zone` is dropped too
    return f"{ipaddress.IPv6Address(network)}/{ipv6_prefix_length}"


def _spelled(hop: str, address: Address | None) -> str:
    """A hop as the client's address: the one spelling of the address it names, else as
    written. Bytes in it that are no UTF-8 (aiohttp hands them on as `surrogateescape`
    characters) are written `\\xff`: the key, log line and span attribute it becomes are
    text, and two hops of other bytes stay two clients."""
    if address is not None:
        return str(address)
    if hop.isascii():
        return hop
    return hop.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


def is_trusted_proxy(peer: str, trusted: Sequence[Network]) -> bool:
    """Whether `peer` is one of `server.trusted_proxies` (its X-Forwarded-* are believed)."""
    return _trusted(peer, trusted)


def _trusted(address: str, trusted: Sequence[Network]) -> bool:
    ip = _address(address)
    return ip is not None and _member(ip, trusted)


def _member(address: Address, trusted: Sequence[Network]) -> bool:
    """Whether `address` is in one of `trusted`, in either spelling of an IPv4 address: a
    network written IPv4-mapped (`::ffff:10.0.0.0/104`, as a dual-stack listener shows its
    peers) holds `10.0.0.1`, and `10.0.0.0/8` holds the peer `::ffff:10.0.0.1`."""
    if any(address in network for network in trusted):
        return True
    if isinstance(address, ipaddress.IPv4Address):
        mapped = ipaddress.IPv6Address(b"\0" * 10 + b"\xff\xff" + address.packed)
        return any(mapped in network for network in trusted)
    return False


def _address(hop: str) -> Address | None:
    """The address a forwarded hop names (its port, brackets and IPv4 mapping dropped)."""
    host = hop
    if host.startswith("["):  # `[v6]` or `[v6]:port`
        end = host.find("]")
        if end < 0 or (end + 1 < len(host) and not _port(host[end + 1 :])):
            return None
        host = host[1:end]
    elif host.count(":") == 1:  # `v4:port` (a bare IPv6 address has two colons or more)
        host, _, port = host.partition(":")
        if not _port(":" + port):
            return None
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def _port(suffix: str) -> bool:
    return suffix.startswith(":") and suffix[1:].isascii() and suffix[1:].isdigit()
