"""The route table: first match in config order, on whole segments; answers remembered per
raw path, bounded."""

from __future__ import annotations

import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sidecar import loader, routes
from sidecar.config import Config
from sidecar.config.schema import config_schema
from sidecar.routes import RouteTable
from tests.support.config import refused_per_route

CONFIG = {
    "routes": [
        {"path": "/v1", "handler": "anthropic"},
        {"path": "/public", "handler": "app"},
        {"path": "/", "handler": "app"},
    ],
    "app": {"url": "http://127.0.0.1:9"},
}


def table() -> RouteTable:
    return RouteTable(loader.validate(CONFIG, {}))


def test_routes_match_whole_segments_in_config_order() -> None:
    routed = table()
    assert [routed.resolve(p).route.path for p in ("/v1/messages", "/v1", "/v1x", "/")] == [  # type: ignore[union-attr]
        "/v1", "/v1", "/", "/",
    ]  # fmt: skip
    climbing = routed.resolve("/public/../v1/messages")
    assert climbing.refused is not None
    assert climbing.refused.reason == "path_climbs"
    assert climbing.route is not None
    assert climbing.route.path == "/public"


def test_answers_are_remembered_per_raw_path_and_the_memo_is_bounded() -> None:
    routed = table()
    first = routed.resolve("/v1/messages")
    assert routed.resolve("/v1/messages") is first  # routed once
    refused = routed.resolve("/v1/%2e%2e/%2e%2e/x")
    assert routed.resolve("/v1/%2e%2e/%2e%2e/x") is refused  # a refusal too, the same
    assert refused.refused is not None
    long = "/v1/" + "a" * routes.REMEMBERED_LENGTH
    assert routed.resolve(long) is not routed.resolve(long)  # too long to keep
    assert routed.resolve(long) == routed.resolve(long)  # but routed alike
    for n in range(routes.REMEMBERED + 10):  # a client inventing paths
        routed.resolve(f"/v1/{n}")
    assert routed.remembered <= routes.REMEMBERED


# Routes whose policies differ: a stricter `/admin` and `/v1` under a credential-free `/`.
_STRICT_UNDER_OPEN = {
    "routes": [
        {"path": "/admin", "handler": "app"},
        {"path": "/v1/", "handler": "anthropic"},
        {"path": "/", "handler": "app", "auth": {"mode": "none"}},
    ],
    "app": {"url": "http://127.0.0.1:9"},
}


def _java_reading(path: str) -> str:
    """How Tomcat and Jetty read a path: `;...` up to the next `/` removed from every
    segment, then repeated slashes merged."""
    return re.sub("/+", "/", re.sub(r";[^/]*", "", path)) or "/"


def _case_reading(path: str) -> str:
    return path.lower()


@pytest.mark.parametrize(
    "raw",
    [
        "/admin;x/secret", "/admin;/secret", "/admin;jsessionid=1", "/;x/admin/secret",
        "/;/admin", "/ADMIN/secret", "/Admin", "/aDmIn;x=1/y", "/V1/messages",
        "/v1;x/messages", "/;x/v1/messages", "/x/..;/admin",
    ],
)  # fmt: skip
def test_a_path_another_server_reads_as_a_stricter_route_is_refused(raw: str) -> None:
    resolved = RouteTable(loader.validate(_STRICT_UNDER_OPEN, {})).resolve(raw)
    assert resolved.refused is not None, raw
    assert resolved.refused.reason in ("path_ambiguous", "path_invalid"), raw


@pytest.mark.parametrize(
    ("raw", "route"),
    [
        ("/admin/secret;x", "/admin"), ("/admin/x;y/z", "/admin"), ("/admin/SECRET", "/admin"),
        ("/v1/messages;x", "/v1/"), ("/v1/Models", "/v1/"), ("/;jsessionid=1", "/"),
        ("/public;x/y", "/"), ("/admin%3Bx/y", "/"), ("/ADMINS/x", "/"), ("/adminx;y", "/"),
    ],
)  # fmt: skip
def test_a_path_every_reading_routes_alike_is_served(raw: str, route: str) -> None:
    resolved = RouteTable(loader.validate(_STRICT_UNDER_OPEN, {})).resolve(raw)
    assert resolved.refused is None, raw
    assert resolved.route is not None
    assert resolved.route.path == route
    assert resolved.path == raw  # forwarded as sent: the readings only decide the route


_SEGMENT = st.sampled_from(["admin", "Admin", "ADMIN", "v1", "V1", "public", "x", "", "messages"])
_PARAMETER = st.sampled_from(["", "", ";", ";x", ";jsessionid=1", ";a=b;c"])


@given(st.lists(st.tuples(_SEGMENT, _PARAMETER), min_size=1, max_size=4))
def test_every_served_path_routes_alike_under_each_reading(
    segments: list[tuple[str, str]],
) -> None:
    raw = "/" + "/".join(name + parameter for name, parameter in segments)
    routed = RouteTable(loader.validate(_STRICT_UNDER_OPEN, {}))
    resolved = routed.resolve(raw)
    if resolved.refused is not None or resolved.route is None:
        return
    for read in (_java_reading, _case_reading, lambda p: _java_reading(p).lower()):
        other = routed.resolve(read(resolved.path))
        assert other.route is resolved.route, (raw, read(resolved.path))


_LETTERS_PAST_ASCII = {
    "routes": [
        {"path": "/admin", "handler": "app"},
        {"path": "/kiosk", "handler": "app"},
        {"path": "/caf%C3%A9", "handler": "app"},
        {"path": "/", "handler": "app", "auth": {"mode": "none"}},
    ],
    "app": {"url": "http://127.0.0.1:9"},
}


@pytest.mark.parametrize(
    "raw",
    [
        "/adm%C4%B1n/secret",  # dotless ı: its upper case is I (Java's equalsIgnoreCase)
        "/adm%c4%b1n",  # the same, escaped in lower case
        "/ADM%C4%B0N/secret",  # dotted İ: its lower case is i (Character.toLowerCase)
        "/%E2%84%AAiosk",  # the Kelvin sign: its lower case is k
        "/kio%C5%BFk;x/y",  # long ſ: its upper case is S; parameters dropped too
        "/CAF%C3%89/menu",  # É is é's upper case, under a route spelled with é
        "/caf%c3%89",
    ],
)  # fmt: skip
def test_a_path_whose_letters_past_ascii_fold_into_another_route_is_refused(raw: str) -> None:
    resolved = RouteTable(loader.validate(_LETTERS_PAST_ASCII, {})).resolve(raw)
    assert resolved.route is not None, raw
    assert resolved.route.path == "/", raw
    assert resolved.refused is not None, raw
    assert resolved.refused.reason == "path_ambiguous", raw


@pytest.mark.parametrize(
    ("raw", "route"),
    [
        ("/caf%C3%A9/menu", "/caf%C3%A9"), ("/caf%c3%a9/MEN%C3%9C", "/caf%C3%A9"),
        ("/adm%C3%AEn", "/"), ("/%C3%9Fadmin", "/"), ("/%E2%84%AB", "/"),
    ],
)  # fmt: skip
def test_letters_past_ascii_that_fold_into_no_other_route_are_served(raw: str, route: str) -> None:
    resolved = RouteTable(loader.validate(_LETTERS_PAST_ASCII, {})).resolve(raw)
    assert resolved.refused is None, raw
    assert resolved.route is not None, raw
    assert resolved.route.path == route, raw


@pytest.mark.parametrize("raw", ["/admin%FF", "/caf%C3", "/caf%C3/menu", "/ADM%C0%AEN/x"])
def test_bytes_that_spell_no_letter_are_refused_in_the_route_they_were_written_under(
    raw: str,
) -> None:
    """No folding guesses at them: a path that is no UTF-8 is refused (`sidecar.paths`)."""
    resolved = RouteTable(loader.validate(_LETTERS_PAST_ASCII, {})).resolve(raw)
    assert resolved.refused is not None, raw
    assert resolved.refused.reason == "path_not_utf8", raw
    assert resolved.route is not None, raw


@pytest.mark.parametrize("section", ["quotas", "cache"])
def test_the_schema_offers_a_route_exactly_the_keys_it_may_override(section: str) -> None:
    """A key a route may not set (`quotas.store`, the cache's bounds) is no property of the
    override in `sidecar schema`, so an editor neither completes nor accepts it, while the
    loader still names it: `routes.N.quotas.store: can only be set at the top level`."""
    defs = config_schema()["$defs"]
    section_keys = set(getattr(Config(), section).model_dump())
    override = defs[f"{section.removesuffix('s').capitalize()}Override"]
    refused = refused_per_route(section)
    assert refused
    assert set(override["properties"]) == section_keys - refused
    assert override["additionalProperties"] is False
