"""Who a quota counts: X-Forwarded-For is believed only from a trusted proxy, walked right
to left past the proxies the sidecar trusts."""

from __future__ import annotations

import ipaddress

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sidecar.client_address import client_ip, ip_subject, is_trusted_proxy
from sidecar.config import Network

TRUSTED: list[Network] = [
    ipaddress.ip_network("10.0.0.0/8"),
    ipaddress.ip_network("fd00::/8"),
]


@pytest.mark.parametrize(
    ("peer", "xff", "trusted", "expected"),
    [
        ("203.0.113.7", "198.51.100.1", TRUSTED, "203.0.113.7"),  # peer not a proxy
        ("10.0.0.1", "198.51.100.1", [], "10.0.0.1"),  # no proxies trusted
        ("10.0.0.1", None, TRUSTED, "10.0.0.1"),  # no header
        ("10.0.0.1", "", TRUSTED, "10.0.0.1"),
        ("10.0.0.1", "198.51.100.1", TRUSTED, "198.51.100.1"),
        ("10.0.0.1", "6.6.6.6, 198.51.100.1, 10.0.0.2", TRUSTED, "198.51.100.1"),
        ("10.0.0.1", " 198.51.100.1 ,, ", TRUSTED, "198.51.100.1"),
        ("10.0.0.1", "10.1.1.1, 10.2.2.2", TRUSTED, "10.1.1.1"),  # all trusted: the first
        ("10.0.0.1", " , ", TRUSTED, "10.0.0.1"),  # only empty hops
        ("fd00::1", "2001:db8::5", TRUSTED, "2001:db8::5"),
        ("10.0.0.1", "not-an-ip, 10.2.2.2", TRUSTED, "not-an-ip"),  # never trusted
    ],
)
def test_client_ip_walks_forwarded_hops_past_trusted_proxies(
    peer: str, xff: str | None, trusted: list[Network], expected: str
) -> None:
    assert client_ip(peer, xff, trusted) == expected


@pytest.mark.parametrize(
    ("xff", "expected"),
    [
        ("198.51.100.1:50123", "198.51.100.1"),  # a load balancer that writes the port
        ("198.51.100.1:50124, 10.0.0.2:443", "198.51.100.1"),  # a proxy's hop with a port too
        ("[2001:db8::5]:443", "2001:db8::5"),
        ("[2001:db8::5]", "2001:db8::5"),
        ("2001:DB8:0:0::5", "2001:db8::5"),  # another spelling of one address
        ("::ffff:198.51.100.1", "198.51.100.1"),  # IPv4-mapped
        ("[::ffff:198.51.100.1]:80", "198.51.100.1"),
        ("[::ffff:10.0.0.3]:80, 10.0.0.2", "10.0.0.3"),  # every hop trusted: the first, read
        ("198.51.100.1:x", "198.51.100.1:x"),  # not an address: kept as written
        ("[2001:db8::5]x", "[2001:db8::5]x"),
        ("198.51.100.1:\u0661", "198.51.100.1:\u0661"),  # a port of ASCII digits only
    ],
)
def test_client_ip_reads_each_hop_as_the_address_it_names(xff: str, expected: str) -> None:
    """One client is one subject whatever port or spelling its proxy wrote: a load balancer
    that adds the source port would otherwise make each connection a quota of its own."""
    assert client_ip("10.0.0.1", xff, TRUSTED) == expected


@pytest.mark.parametrize(
    ("peer", "expected"),
    [("10.9.8.7", True), ("fd00::abcd", True), ("11.0.0.1", False), ("2001:db8::1", False),
     ("unix-socket", False), ("", False)],
)  # fmt: skip
def test_is_trusted_proxy_matches_the_configured_networks(peer: str, expected: bool) -> None:
    assert is_trusted_proxy(peer, TRUSTED) is expected
    assert is_trusted_proxy(peer, []) is False


_MAPPED_TRUSTED: list[Network] = [ipaddress.ip_network("::ffff:10.0.0.0/104")]


@pytest.mark.parametrize(
    ("peer", "xff", "trusted", "expected"),
    [
        # A network written IPv4-mapped (as a dual-stack listener shows its peers) holds the
        # proxy's hop in either spelling.
        ("::ffff:10.0.0.1", "198.51.100.1, ::ffff:10.0.0.2", _MAPPED_TRUSTED, "198.51.100.1"),
        ("::ffff:10.0.0.1", "198.51.100.1, 10.0.0.2", _MAPPED_TRUSTED, "198.51.100.1"),
        ("10.0.0.1", "198.51.100.1, 10.0.0.2:443", _MAPPED_TRUSTED, "198.51.100.1"),
        # An IPv4 network holds a peer a dual-stack listener shows IPv4-mapped.
        ("::ffff:10.0.0.1", "198.51.100.1, ::ffff:10.0.0.2", TRUSTED, "198.51.100.1"),
        ("::ffff:203.0.113.7", "198.51.100.1", TRUSTED, "::ffff:203.0.113.7"),  # not a proxy
    ],
)
def test_a_trusted_network_holds_both_spellings_of_an_ipv4_address(
    peer: str, xff: str, trusted: list[Network], expected: str
) -> None:
    assert client_ip(peer, xff, trusted) == expected
    assert is_trusted_proxy(peer, trusted) is (expected != peer)


@pytest.mark.parametrize(
    ("address", "length", "expected"),
    [
        ("2001:db8:1:2:aaaa:bbbb:cccc:dddd", 64, "2001:db8:1:2::/64"),
        ("2001:db8:1:2::1", 64, "2001:db8:1:2::/64"),  # one subscriber's /64: one client
        ("2001:db8:1:3::1", 64, "2001:db8:1:3::/64"),  # the next /64: another
        ("2001:db8:1:2ff::1", 56, "2001:db8:1:200::/56"),
        ("2001:db8::1", 128, "2001:db8::1/128"),
        ("2001:db8::1", 1, "::/1"),
        ("fe80::1%eth0", 64, "fe80::/64"),  # the zone is no part of the client
        ("::ffff:198.51.100.7", 64, "198.51.100.7"),  # IPv4-mapped: the IPv4 client
        ("198.51.100.7", 64, "198.51.100.7"),  # IPv4: the address
        ("not-an-ip", 64, "not-an-ip"),  # named no address: as written
    ],
)
def test_a_quota_counts_an_ipv6_client_by_its_network(
    address: str, length: int, expected: str
) -> None:
    assert ip_subject(address, length) == expected


@given(st.binary(min_size=1, max_size=40).filter(lambda raw: b"," not in raw))
def test_a_hop_of_any_bytes_is_text_any_encoder_takes_and_stays_its_own(raw: bytes) -> None:
    """aiohttp hands on header bytes that are no UTF-8 as `surrogateescape` characters:
    a hop naming no address becomes text UTF-8 can write (a scope key, a log line, a span
    attribute), and two hops of other bytes stay two clients."""
    hop = "x" + raw.decode("utf-8", "surrogateescape")
    seen = client_ip("10.0.0.1", hop, TRUSTED)
    seen.encode()  # no lone surrogate
    assert client_ip("10.0.0.1", hop + "\udcff", TRUSTED) != client_ip(
        "10.0.0.1", hop + "\udcfe", TRUSTED
    )


def test_a_hop_of_utf8_text_is_kept_as_written_and_other_bytes_escaped() -> None:
    assert client_ip("10.0.0.1", "café", TRUSTED) == "café"
    assert client_ip("10.0.0.1", "caf\udcc3", TRUSTED) == "caf\\xc3"
