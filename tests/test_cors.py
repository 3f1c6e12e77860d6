"""CORS over real sockets: preflights, allowed and refused origins, streams, per-route policy."""

from __future__ import annotations

import contextlib
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from sidecar.config import CorsConfig
from sidecar.fake_claude import FakeServer
from sidecar.policy.cors import CorsPolicy, merge_vary
from tests.support.apps import serving
from tests.support.config import problems_of
from tests.support.policy import API_KEY, API_KEY_SHA256
from tests.support.sidecars import SidecarFactory, sidecar_command

PROMPT = "/api/stream-response"
ALLOWED = "https://app.example.com"
EVIL = "https://evil.example.net"
CONFIG: dict[str, Any] = {
    "cors": {"allow_origins": [ALLOWED], "allow_credentials": True, "max_age_seconds": 321},
    "auth": {"api_keys": [{"name": "web", "sha256": API_KEY_SHA256, "user": "web"}]},
}


def preflight(
    origin: str, method: str = "POST", headers: str = "authorization, content-type"
) -> dict[str, str]:
    return {
        "Origin": origin,
        "Access-Control-Request-Method": method,
        "Access-Control-Request-Headers": headers,
    }


def allow_headers(headers: Any) -> set[str]:
    return {h for h in headers if h.lower().startswith("access-control-allow")}


async def test_allowed_preflight_is_answered_by_the_sidecar(
    fake: FakeServer, sidecar_for: SidecarFactory
) -> None:
    asked = "authorization, content-type, x-api-key, anthropic-version, last-event-id"
    async with sidecar_for(CONFIG) as sidecar, aiohttp.ClientSession() as http:
        async with http.options(
            sidecar.url + PROMPT, headers=preflight(ALLOWED, headers=asked)
        ) as response:
            assert response.status == 204
            headers = response.headers
    assert headers["Access-Control-Allow-Origin"] == ALLOWED
    assert headers["Access-Control-Allow-Credentials"] == "true"
    assert "POST" in headers["Access-Control-Allow-Methods"]
    listed = {h.strip() for h in headers["Access-Control-Allow-Headers"].split(",")}
    assert set(asked.replace(" ", "").split(",")) <= listed
    assert headers["Access-Control-Max-Age"] == "321"
    assert headers["Vary"] == "Origin"
    assert fake.state.counters["requests"] == 0  # preflights never reach Claude (nor need auth)


@pytest.mark.parametrize(
    "request_headers",
    [
        preflight(EVIL),
        preflight("null"),
        preflight(ALLOWED + ":8443"),  # another port is another origin
        preflight("http://app.example.com"),  # another scheme too
        preflight(ALLOWED, method="PUT"),
        preflight(ALLOWED, headers="authorization, x-not-allowed"),
        {"Origin": ALLOWED, "Access-Control-Request-Method": ""},
    ],
    ids=["evil", "null", "port", "scheme", "method", "header", "empty_method"],
)
async def test_refused_preflight_is_403_without_allow_headers(
    fake: FakeServer, sidecar_for: SidecarFactory, request_headers: dict[str, str]
) -> None:
    async with sidecar_for(CONFIG) as sidecar, aiohttp.ClientSession() as http:
        async with http.options(sidecar.url + PROMPT, headers=request_headers) as response:
            assert response.status == 403
            body = await response.json()
            headers = response.headers
    assert body["error"]["type"] == "forbidden"
    assert allow_headers(headers) == set()
    assert headers["Vary"] == "Origin"
    assert fake.state.counters["requests"] == 0


async def test_stream_and_rejections_carry_cors_headers_for_allowed_origins(
    fake: FakeServer, sidecar_for: SidecarFactory
) -> None:
    async with sidecar_for(CONFIG) as sidecar, aiohttp.ClientSession() as http:
        url = sidecar.url + PROMPT
        sent = {"Origin": ALLOWED, "x-api-key": API_KEY}
        async with http.post(url, json={"prompt": "hi"}, headers=sent) as response:
            assert response.status == 200
            assert response.content_type == "text/event-stream"
            stream_headers = response.headers
            assert b'"done"' in await response.read()
        async with http.post(url, json={"prompt": "hi"}, headers={"Origin": ALLOWED}) as response:
            assert response.status == 401  # the page can read why
            unauthorized = response.headers
    for headers in (stream_headers, unauthorized):
        assert headers["Access-Control-Allow-Origin"] == ALLOWED
        assert headers["Access-Control-Allow-Credentials"] == "true"
        assert "x-request-id" in headers["Access-Control-Expose-Headers"]
        assert headers["Vary"] == "Origin"


async def test_cross_origin_claude_calls_from_refused_origins_never_reach_claude(
    fake: FakeServer, sidecar_for: SidecarFactory
) -> None:
    body = {"model": "claude-sonnet-5-5", "max_tokens": 8,
            "messages": [{"role": "user", "content": "hi"}]}  # fmt: skip
    async with sidecar_for(CONFIG) as sidecar, aiohttp.ClientSession() as http:
        sent = {"Origin": EVIL, "x-api-key": API_KEY}
        async with http.get(sidecar.url + PROMPT, params={"prompt": "hi"}, headers=sent) as r:
            prompt_status, prompt_headers = r.status, r.headers
        async with http.post(sidecar.url + "/v1/messages", json=body, headers=sent) as r:
            anthropic_status = r.status
            anthropic_error = (await r.json())["error"]["type"]
        # A page served by the sidecar itself is same-origin: no allow-list entry needed.
        own = {"Origin": sidecar.url, "x-api-key": API_KEY}
        async with http.get(sidecar.url + PROMPT, params={"prompt": "hi"}, headers=own) as r:
            own_status = r.status
            own_headers = r.headers
            await r.read()
    assert (prompt_status, anthropic_status) == (403, 403)
    assert anthropic_error == "permission_error"
    assert allow_headers(prompt_headers) == set()
    assert own_status == 200
    assert allow_headers(own_headers) == set()  # same-origin needs no CORS grant
    assert fake.state.counters["requests"] == 1


async def test_no_origin_means_no_cors_headers_but_vary(sidecar_for: SidecarFactory) -> None:
    async with sidecar_for(CONFIG) as sidecar, aiohttp.ClientSession() as http:
        async with http.get(sidecar.url + "/nowhere") as response:
            assert response.status == 404
            assert response.headers["Vary"] == "Origin"
        async with http.post(
            sidecar.url + PROMPT, json={"prompt": "x"}, headers={"x-api-key": API_KEY}
        ) as response:
            assert response.status == 200
            assert allow_headers(response.headers) == set()
            assert response.headers["Vary"] == "Origin"


async def test_per_route_origins_and_wildcard(
    fake: FakeServer, sidecar_for: SidecarFactory
) -> None:
    config = {
        **CONFIG,
        "routes": [
            {"path": PROMPT, "handler": "prompt",
             "cors": {"allow_origins": ["*"], "allow_credentials": False}},
            {"path": "/v1/", "handler": "anthropic"},
        ],
    }  # fmt: skip
    async with sidecar_for(config) as sidecar, aiohttp.ClientSession() as http:
        async with http.options(sidecar.url + PROMPT, headers=preflight(EVIL)) as response:
            assert response.status == 204
            assert response.headers["Access-Control-Allow-Origin"] == "*"
            assert "Access-Control-Allow-Credentials" not in response.headers
        async with http.options(sidecar.url + "/v1/messages", headers=preflight(EVIL)) as r:
            assert r.status == 403
        async with http.options(sidecar.url + "/v1/messages", headers=preflight(ALLOWED)) as r:
            assert r.status == 204
            assert r.headers["Access-Control-Allow-Origin"] == ALLOWED


@contextlib.asynccontextmanager
async def varying_app() -> AsyncIterator[str]:
    seen: list[str | None] = []

    async def page(request: web.Request) -> web.Response:
        seen.append(request.headers.get("Origin"))
        return web.Response(text="page", headers={"Vary": "Accept-Encoding"})

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", page)
    async with serving(app) as url:
        yield url


async def test_app_route_keeps_the_apps_vary_and_lets_cross_site_posts_through(
    sidecar_for: SidecarFactory,
) -> None:
    async with varying_app() as app_url:
        config = {"cors": CONFIG["cors"], "app": {"url": app_url},
                  "routes": [{"path": "/", "handler": "app"}]}  # fmt: skip
        async with sidecar_for(config) as sidecar, aiohttp.ClientSession() as http:
            # e.g. an identity provider's `form_post` callback: the app decides, not CORS.
            async with http.post(sidecar.url + "/callback", headers={"Origin": EVIL}) as r:
                assert r.status == 200
                assert allow_headers(r.headers) == set()
                assert r.headers["Vary"] == "Accept-Encoding, Origin"
            async with http.get(sidecar.url + "/x", headers={"Origin": ALLOWED}) as r:
                assert r.headers["Access-Control-Allow-Origin"] == ALLOWED
                assert r.headers["Vary"] == "Accept-Encoding, Origin"


@pytest.mark.parametrize(
    ("existing", "merged"),
    [(None, "Origin"), ("", "Origin"), ("Accept-Encoding", "Accept-Encoding, Origin"),
     ("origin, Cookie", "origin, Cookie"), ("*", "*")],
)  # fmt: skip
def test_merge_vary(existing: str | None, merged: str) -> None:
    assert merge_vary(existing) == merged


def test_wildcard_with_credentials_fails_sidecar_check(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text('cors: {allow_origins: ["*"], allow_credentials: true}\n')
    result = sidecar_command("check", "-c", str(path))
    assert result.returncode != 0
    assert "cors: " in result.stderr + result.stdout
    assert "allow_credentials" in result.stderr + result.stdout


@pytest.mark.parametrize(
    "origin",
    ["https://*.example.com", "https://*", "https://user@app.example.com",
     "https://app.example.com?x=1", "https://app.example.com#x", "https://bücher.example",
     "https://app..example.com", "https://app.example.com:443x"],
)  # fmt: skip
def test_an_allowed_origin_no_browser_could_send_is_a_config_error_at_any_level(
    origin: str,
) -> None:
    # Origins are matched exactly: a pattern would silently match nothing.
    for config in ({"cors": {"allow_origins": [origin]}},
                   {"routes": [{"path": "/v1", "handler": "anthropic",
                                "cors": {"allow_origins": [origin]}}]}):  # fmt: skip
        problems = problems_of(config)
        assert len(problems) == 1, problems
        assert "is not an origin" in problems[0]
        assert "allow_origins" in problems[0]
    assert CorsConfig(allow_origins=["http://[::1]:8080", "http://localhost:3000"]).allow_origins


async def test_origins_are_matched_as_browsers_send_them(sidecar_for: SidecarFactory) -> None:
    # Browsers send the host in lower case and never a default port.
    cors = {"allow_origins": ["https://App.Example.com:443", "http://Localhost:80"]}
    async with sidecar_for({"cors": cors}) as sidecar, aiohttp.ClientSession() as http:
        for origin in ("https://app.example.com", "http://localhost"):
            preflight = {"Origin": origin, "Access-Control-Request-Method": "POST"}
            async with http.options(sidecar.url + "/v1/messages", headers=preflight) as r:
                assert r.status == 204
                assert r.headers["Access-Control-Allow-Origin"] == origin


# --------------------------------------------------------------------------- the SDK's headers

# What the official JS SDK (with `dangerouslyAllowBrowser`) asks for in its preflight.
SDK_HEADERS = (
    "anthropic-dangerous-direct-browser-access, anthropic-version, content-type, x-api-key, "
    "x-stainless-arch, x-stainless-lang, x-stainless-os, x-stainless-package-version, "
    "x-stainless-retry-count, x-stainless-runtime, x-stainless-runtime-version, x-stainless-timeout"
)


async def test_every_rate_limit_header_an_answer_carries_is_exposed_by_default(
    fake: FakeServer, sidecar_for: SidecarFactory
) -> None:
    """Claude's whole `anthropic-ratelimit-*` family (requests, tokens, input and output
    tokens), passed on by the sidecar, is readable by the page with the default CORS."""
    body = {"model": "claude-sonnet-5-5", "max_tokens": 8,
            "messages": [{"role": "user", "content": "hi"}]}  # fmt: skip
    async with sidecar_for(CONFIG) as sidecar, aiohttp.ClientSession() as http:
        sent = {"Origin": ALLOWED, "x-api-key": API_KEY}
        async with http.post(sidecar.url + "/v1/messages", json=body, headers=sent) as response:
            assert response.status == 200
            headers = response.headers
    limits = {name.lower() for name in headers if name.lower().startswith("anthropic-ratelimit-")}
    assert any("output-tokens" in name for name in limits)  # the fake sends every family
    exposed = {name.strip() for name in headers["Access-Control-Expose-Headers"].split(",")}
    assert limits - exposed == set()


async def test_the_js_sdks_preflight_passes_with_the_default_headers(
    fake: FakeServer, sidecar_for: SidecarFactory
) -> None:
    async with sidecar_for(CONFIG) as sidecar, aiohttp.ClientSession() as http:
        async with http.options(
            sidecar.url + "/v1/messages", headers=preflight(ALLOWED, headers=SDK_HEADERS)
        ) as response:
            assert response.status == 204
            granted = response.headers["Access-Control-Allow-Headers"]
    # Exactly what was asked: a pattern such as `x-stainless-*` never reaches the browser.
    assert granted.split(", ") == SDK_HEADERS.split(", ")


@pytest.mark.parametrize(
    ("request_headers", "message"),
    [
        (preflight(EVIL), "origin not allowed"),
        (preflight(ALLOWED, method="PUT"), "method PUT not allowed"),
        (preflight(ALLOWED, method="P<U>T"), "the requested method not allowed"),
        (preflight(ALLOWED, headers="content-type, x-not-allowed"), "header x-not-allowed not allowed"),
        (preflight(ALLOWED, headers="content-type, x-<script>"), "a requested header name is not valid"),
        (preflight(ALLOWED, headers="x-" + "a" * 100), "a requested header name is not valid"),
    ],
    ids=["origin", "method", "odd_method", "header", "odd_header", "long_header"],
)  # fmt: skip
async def test_a_refused_preflight_says_what_was_refused_without_echoing_input(
    sidecar_for: SidecarFactory, request_headers: dict[str, str], message: str
) -> None:
    async with sidecar_for(CONFIG) as sidecar, aiohttp.ClientSession() as http:
        async with http.options(sidecar.url + PROMPT, headers=request_headers) as response:
            assert response.status == 403
            body = await response.json()
    assert body["error"]["message"] == message
    assert "<" not in json.dumps(body)


def test_allow_headers_patterns_match_prefixes_only() -> None:
    policy = CorsPolicy(CorsConfig(allow_origins=[ALLOWED], allow_headers=["x-app-*", "accept"]))
    assert policy.allows_header("X-App-Tenant")
    assert policy.allows_header("accept")
    assert not policy.allows_header("x-apple")
    assert not policy.allows_header("accept-language")
    with pytest.raises(ValueError, match="not a header name"):
        CorsConfig(allow_headers=["x bad"])


def test_the_resume_protocols_headers_are_granted_whatever_the_lists_say() -> None:
    """A custom list (the app's own headers) keeps what resume and cancel need."""
    policy = CorsPolicy(CorsConfig(allow_origins=[ALLOWED], allow_headers=["content-type"],
                                   expose_headers=["x-request-id", "Sidecar-Resume"]))  # fmt: skip
    for name in ("Last-Event-ID", "sidecar-resume", "content-type"):
        assert policy.allows_header(name)
    assert not policy.allows_header("authorization")
    exposed = policy.response_headers(ALLOWED)["Access-Control-Expose-Headers"]
    assert exposed == "x-request-id, Sidecar-Resume, sidecar-stream-id"  # each once
    granted = policy.preflight(ALLOWED, "POST", "content-type, last-event-id")
    assert granted.status == 204
    assert granted.headers["Access-Control-Allow-Headers"] == "content-type, last-event-id"


@pytest.mark.parametrize(
    ("origin", "host", "scheme", "refused"),
    [
        ("http://side.test:8080", "side.test:8080", "http", False),
        ("http://side.test", "side.test:80", "http", False),  # default port either way
        ("https://side.test", "SIDE.test:443", "https", False),
        ("https://side.test:8080", "side.test:8080", "http", True),  # another scheme
        ("http://side.test:8081", "side.test:8080", "http", True),  # another port
        ("http://side.test", "side.test:8080", "http", True),
        ("http://[::1]:8080", "[::1]:8080", "http", False),
        ("http://[::1]", "[::1]:80", "http", False),
        ("null", "side.test", "http", True),
    ],
)
def test_same_origin_means_same_scheme_host_and_port(
    origin: str, host: str, scheme: str, refused: bool
) -> None:
    policy = CorsPolicy(CorsConfig(allow_origins=[ALLOWED]))
    assert policy.refuses(origin, host, scheme) is refused


async def test_same_origin_behind_a_tls_ending_proxy_uses_its_scheme(
    fake: FakeServer, sidecar_for: SidecarFactory
) -> None:
    config = {"cors": {"allow_origins": [ALLOWED]}, "server": {"trusted_proxies": ["127.0.0.1/32"]}}
    async with sidecar_for(config) as sidecar, aiohttp.ClientSession() as http:
        host = sidecar.url.removeprefix("http://")
        statuses = []
        for origin, proto in [(f"https://{host}", "https"), (f"https://{host}", None),
                              (f"http://{host}", "https")]:  # fmt: skip
            headers = {"Origin": origin, **({"X-Forwarded-Proto": proto} if proto else {})}
            async with http.post(sidecar.url + PROMPT, json={"prompt": "hi"}, headers=headers) as r:
                statuses.append(r.status)
                await r.read()
    assert statuses == [200, 403, 403]


@pytest.mark.parametrize(
    ("path", "allow"),
    [
        (PROMPT, "GET, HEAD, POST, OPTIONS"),
        (PROMPT + "/" + "a" * 24, "DELETE, OPTIONS"),
        ("/api/chat", "POST, OPTIONS"),
        ("/api/chat/chat-1/stream", "GET, HEAD, OPTIONS"),
        ("/api/chat/" + "a" * 24, "DELETE, OPTIONS"),
        ("/v1/messages", "POST, OPTIONS"),
        ("/v1/messages/count_tokens", "POST, OPTIONS"),
    ],
)
async def test_a_plain_options_is_answered_with_what_the_path_allows(
    fake: FakeServer, sidecar_for: SidecarFactory, path: str, allow: str
) -> None:
    """No preflight headers: the route's `Allow`, as a 204, after auth; a `Last-Event-ID`
    on it is not a resume."""
    async with sidecar_for(CONFIG) as sidecar, aiohttp.ClientSession() as http:
        url = sidecar.url + path
        async with http.options(url, headers={"Origin": ALLOWED}) as response:
            assert response.status == 401  # fail closed: the same auth as the path's calls
        headers = {"Origin": ALLOWED, "Authorization": f"Bearer {API_KEY}"}
        async with http.options(url, headers=headers) as response:
            assert response.status == 204
            assert response.headers["Allow"] == allow
            assert response.headers["Access-Control-Allow-Origin"] == ALLOWED
            assert await response.read() == b""
        resuming = {**headers, "Last-Event-ID": "a" * 24 + ":0"}
        async with http.options(url, headers=resuming) as response:
            assert response.status == 204
            assert response.headers["Allow"] == allow
        metrics = await (await http.get(sidecar.admin_url + "/metrics")).text()
    assert "method_not_allowed" not in metrics
    assert not fake.state.requests
