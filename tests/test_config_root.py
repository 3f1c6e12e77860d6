"""The whole config: default routes, route paths, the typed route overrides in the schema."""

from __future__ import annotations

from sidecar import loader
from sidecar.config import Config
from tests.support.config import problems_of


def test_app_route_needs_app_section() -> None:
    found = problems_of('routes: [{path: "/", handler: app}]')
    assert any("needs the app section" in p for p in found)


def test_checks_across_sections_are_listed_beside_other_sections_problems() -> None:
    """`check` lists every problem: one in an unrelated section does not hide the checks
    across sections, and a section such a check reads that failed on its own is reported
    once, by itself, not as a second, false problem of the check."""
    found = problems_of(
        """
server: {max_body_bytes: x}
resume: {store: redis}
routes: [{path: /a, handler: prompt}, {path: /a, handler: app}]
"""
    )
    assert found == [
        "server.max_body_bytes: Input should be a valid integer, unable to parse string as an integer",
        "resume: store 'redis' needs resume.redis_url or quotas.redis_url",
        "routes: handler 'app' needs the app section (app.url); paths must be unique: '/a' given"
        " more than once",
    ]
    found = problems_of(
        """
app: {url: "ftp://x"}
quotas: {store: redis, redis_url: 5}
resume: {store: redis}
routes: [{path: /a, handler: app}]
"""
    )
    assert [p.partition(": ")[0] for p in found] == ["app.url", "quotas.redis_url"]


def test_default_routes_include_the_app_when_configured() -> None:
    config = loader.validate({"app": {"url": "http://127.0.0.1:3000"}}, {})
    assert [(r.path, r.handler) for r in config.routes] == [
        ("/api/stream-response", "prompt"),
        ("/v1/", "anthropic"),
        ("/api/chat", "ui"),
        ("/", "app"),
    ]


def test_route_paths_are_absolute_and_unique() -> None:
    found = problems_of('routes: [{path: "api", handler: prompt}]')
    assert found == ["routes.0.path: must start with '/'"]
    found = problems_of(
        'routes: [{path: "/a", handler: prompt}, {path: "/b", handler: ui},'
        ' {path: "/b", handler: prompt}, {path: "/a", handler: anthropic}]'
    )
    assert found == ["routes: paths must be unique: '/a', '/b' given more than once"]


def test_a_route_no_request_can_reach_is_a_config_error() -> None:
    # Under browser.path: the browser files are served first (the default routes too).
    found = problems_of("browser: {path: /api}")
    (problem,) = found
    assert problem.startswith(
        "routes: route 0 (/api/stream-response) is never reached: it is under browser.path "
        "(/api), whose browser files are served first; route "
    )
    found = problems_of('browser: {path: /v1}\nroutes: [{path: "/v1/", handler: anthropic}]')
    assert any("route 0 (/v1/) is never reached" in p for p in found)
    # Behind an earlier route that matches every path it would: the first match wins.
    for first, later in (("/api", "/api/chat"), ("/api/", "/api"), ("/", "/v1/"), ("/v1", "/v1/")):
        found = problems_of(
            f'routes: [{{path: "{first}", handler: prompt}}, {{path: "{later}", handler: ui}}]'
        )
        assert found == [
            f"routes: route 1 ({later}) is never reached: route 0 ({first}) matches every "
            "path under it first"
        ]
    # Reachable: a sibling, a longer name, a catch-all last, the browser files turned off.
    loader.validate(
        {
            "app": {"url": "http://127.0.0.1:3000"},
            "routes": [
                {"path": "/api/chat", "handler": "ui"},
                {"path": "/api", "handler": "prompt"},
                {"path": "/apix", "handler": "prompt"},
                {"path": "/_sidecarx", "handler": "prompt"},
                {"path": "/", "handler": "app"},
            ],
        },
        {},
    )
    loader.validate({"browser": {"enabled": False, "path": "/api"}}, {})


def test_route_overrides_are_typed_and_in_the_schema() -> None:
    schema = Config.model_json_schema()
    defs = schema["$defs"]
    auth_ref = defs["RouteConfig"]["properties"]["auth"]["anyOf"][0]["$ref"]
    assert auth_ref == "#/$defs/AuthOverride"
    assert {"mode", "jwt", "api_keys", "allowed_tenants"} <= set(defs["AuthOverride"]["properties"])
    assert "required" not in defs["AuthOverride"]  # every key optional
    assert "secret" in defs["JWTOverride"]["properties"]
    for name in ("CorsOverride", "ScreeningOverride", "QuotaOverride"):
        assert "required" not in defs[name]
    found = problems_of(
        """
routes:
  - {path: /a, handler: prompt, auth: {jwt: {secrett: x}}}
  - {path: /b, handler: prompt, screening: {deny_patterns: ["(?i)plain string rule"]}}
"""
    )
    assert found == ["routes.0.auth.jwt.secrett: unknown key"]
