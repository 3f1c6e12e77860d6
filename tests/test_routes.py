"""The route table: first match in config order, on whole segments; answers remembered per
raw path, bounded."""

from __future__ import annotations

from sidecar import loader, routes
from sidecar.routes import RouteTable

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
    long = "/v1/" + "a" * routes._REMEMBERED_LENGTH
    assert routed.resolve(long) is not routed.resolve(long)  # too long to keep
    assert routed.resolve(long) == routed.resolve(long)  # but routed alike
    for n in range(routes._REMEMBERED + 10):  # a client inventing paths
        routed.resolve(f"/v1/{n}")
    assert len(routed._resolved) <= routes._REMEMBERED
