"""Canonical paths: one normal form, routed by and forwarded as, over every spelling.

Paths are generated as tokens that each know their canonical text and their possible
spellings (percent-encoded in either case, dot segments in any encoding, doubled
slashes), so the expected canonical path, route and outcome come from the tokens, not
from the code under test. The end-to-end properties run against a real sidecar with an
app route under `/public` (no auth), an app route under `/` (API key required) and the
Anthropic route under `/v1/`, with a real test app and the fake Claude behind them.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import http.client
import json
import logging
import re
import threading
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from yarl import URL

from sidecar import loader
from sidecar.fake_claude import FakeServer, FakeSettings, running_fake_claude
from sidecar.paths import PathRefused, canonical
from sidecar.routes import shown
from sidecar.server import SidecarServer
from tests.support.apps import serving
from tests.support.sidecars import SidecarFactory, running_sidecar

KEY = "sk-paths-client-key"

# --------------------------------------------------------------------------- tokens

_NAMES = ["public", "admin", "v1", "models", "messages", "count_tokens", "a", "b~c", "x.y", "_-",
          "pub@lic:x", "c+(d)!"]  # fmt: skip


def _spell_char(char: str) -> st.SearchStrategy[str]:
    """A character escapes are decoded for (unreserved, `!$&'()*+:@`), as itself or
    percent-encoded in either case."""
    code = f"{ord(char):02x}"
    return st.sampled_from([char, f"%{code}", f"%{code.upper()}"])


def _spell_name(name: str) -> st.SearchStrategy[str]:
    return st.tuples(*(_spell_char(c) for c in name)).map("".join)


@dataclass(frozen=True)
class Token:
    """One segment: its canonical text and one way it was spelled."""

    canonical: str
    spelled: str


_DOT = st.sampled_from([".", "%2e", "%2E"])
_DOTDOT = st.sampled_from(["..", ".%2e", ".%2E", "%2e.", "%2E.", "%2e%2e", "%2E%2E", "%2e%2E"])
_OPAQUE = st.sampled_from(
    [
        Token("q:r", "q%3Ar"), Token("q@r", "q%40r"),  # no syntax in a path: decoded
        Token("q%3Br", "q%3br"), Token("q%3D%2C", "q%3d%2c"),  # parameter syntax: kept, upper
        Token("%252e%252e", "%252e%252e"),  # double encoding is opaque, never a dot segment
        Token("%252E", "%252E"), Token("a%20b", "a%20b"), Token("p;q=1", "p;q=1"),
    ]
)  # fmt: skip
_TOKEN = st.one_of(
    st.sampled_from(_NAMES).flatmap(lambda n: _spell_name(n).map(lambda s: Token(n, s))),
    _DOT.map(lambda s: Token(".", s)),
    _DOTDOT.map(lambda s: Token("..", s)),
    _OPAQUE,
)


_LEADS = [(), ("public",), ("v1",), ("v1", "models"), ("v1", "messages"), ("admin",)]


@st.composite
def spelled_paths(draw: st.DrawFn) -> tuple[list[Token], str]:
    """Tokens (ending with a plain segment) and one raw spelling of them."""
    lead = draw(st.sampled_from(_LEADS))  # most paths start like a real route's paths
    tokens = [Token(n, draw(_spell_name(n))) for n in lead] + draw(st.lists(_TOKEN, max_size=5))
    tokens.append(draw(st.sampled_from(_NAMES).map(lambda n: Token(n, n))))
    raw = "".join(draw(st.sampled_from(["/", "/", "//"])) + t.spelled for t in tokens)
    return tokens, raw


@dataclass(frozen=True)
class Expected:
    """What the tokens mean: climbing above `/`, the written and the canonical path."""

    climbs: bool
    written: list[str]
    resolved: list[str]

    @property
    def path(self) -> str:
        return "/" + "/".join(self.resolved)


def meaning(tokens: list[Token]) -> Expected:
    """RFC 3986 dot-segment removal over the tokens' canonical texts (the reference)."""
    resolved: list[str] = []
    climbs = False
    for token in tokens:
        if token.canonical == "..":
            if resolved:
                resolved.pop()
            else:
                climbs = True
        elif token.canonical != ".":
            resolved.append(token.canonical)
    return Expected(climbs, [t.canonical for t in tokens], resolved)


def route_of(segments: list[str]) -> str:
    """The configured route a path with these segments falls under (first segment decides)."""
    first = segments[0] if segments else ""
    return {"public": "/public", "pub@lic:x": "/pub@lic:x", "v1": "/v1/"}.get(first, "/")


# --------------------------------------------------------------------------- pure properties


@given(spelled_paths())
def test_every_spelling_has_the_tokens_canonical_form(case: tuple[list[Token], str]) -> None:
    tokens, raw = case
    expected = meaning(tokens)
    if expected.climbs:
        with pytest.raises(PathRefused) as refused:
            canonical(raw)
        assert refused.value.reason == "path_climbs"
        return
    found = canonical(raw)
    assert found.path == expected.path
    assert found.written == "/" + "/".join(expected.written)
    assert canonical(found.path).path == found.path  # a fixed point: nothing left to resolve


_SEPARATORS = st.sampled_from(["%2F", "%2f", "%5C", "%5c", "\\", "%00", "%0a", "%7F", "%g1", "%%"])


@given(spelled_paths(), _SEPARATORS, st.integers(min_value=0, max_value=200))
def test_encoded_separators_controls_and_bad_escapes_are_refused_anywhere(
    case: tuple[list[Token], str], bad: str, where: int
) -> None:
    _, raw = case
    at = 1 + where % len(raw)  # after the leading `/`, anywhere (inside an escape too)
    with pytest.raises(PathRefused) as refused:
        canonical(raw[:at] + bad + raw[at:])
    assert refused.value.reason in ("path_encoded_separator", "path_invalid", "path_climbs")


_NORMAL = re.compile(r"(?:/(?:[A-Za-z0-9\-._~!$&'()*+,;=:@]|%[0-9A-F]{2})+)*/?")
_ENCODED_UNRESERVED = re.compile(
    r"%(?:4[0-9A-F]|5[0-9A]|6[1-9A-F]|7[0-9A]|3[0-9A]|2[146-9ABDE]|5F|7E)"
)  # an escape of an unreserved character or of one of `!$&'()*+:@`: always decoded


@given(st.text(alphabet=st.characters(min_codepoint=0, max_codepoint=0x2FF), max_size=40))
def test_any_input_is_refused_or_comes_out_in_normal_form(tail: str) -> None:
    reason: str | None = None
    try:
        path = canonical("/" + tail).path
    except PathRefused as refused:
        reason = refused.reason
    if reason is not None:
        assert reason in ("path_invalid", "path_encoded_separator", "path_climbs", "path_not_utf8")
        return
    assert _NORMAL.fullmatch(path), path  # pchars and upper-case escapes only, no `//`
    assert not _ENCODED_UNRESERVED.search(path)
    assert "/./" not in path + "/"
    assert "/../" not in path + "/"
    assert canonical(path).path == path


@given(st.text(max_size=60))
def test_a_refused_path_is_shown_in_visible_ascii_and_spells_its_bytes(raw: str) -> None:
    """Whatever a parser handed on (surrogate-escaped bytes, controls, any character), the
    path logs and spans carry is visible ASCII, and a path of visible ASCII is itself."""
    raw = "/" + raw
    out = shown(raw)
    assert out.isascii()
    assert out.isprintable()
    assert " " not in out
    if all(0x21 <= ord(char) <= 0x7E for char in raw):
        assert out == raw


def test_dot_segments_with_parameters_are_refused() -> None:
    for raw in ("/public/..;/admin", "/a/.;x/b", "/a/%2e%2e;x"):
        with pytest.raises(PathRefused):
            canonical(raw)


def test_config_route_paths_must_be_canonical() -> None:
    for path in ("/a/../b", "/a//b", "/a%2Fb", "/%61pi", "/%40admin", "/files%3Adelete"):
        with pytest.raises(loader.ConfigError) as error:
            loader.validate({"routes": [{"path": path, "handler": "anthropic"}]}, {})
        assert "routes.0.path" in str(error.value)


# --------------------------------------------------------------------------- end to end


async def _echo(request: web.Request) -> web.StreamResponse:
    if request.headers.get("Upgrade", "").lower() == "websocket":
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        await ws.send_str(request.raw_path)
        await ws.close()
        return ws
    return web.json_response({"raw_path": request.raw_path})


def _recording_app(seen: list[str]) -> web.Application:
    """An app that echoes (as `_echo`) and notes each raw path it was sent in `seen`."""

    async def recording(request: web.Request) -> web.StreamResponse:
        seen.append(request.raw_path)
        return await _echo(request)

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", recording)
    return app


def _config(fake: FakeServer, app_url: str) -> dict[str, Any]:
    digest = hashlib.sha256(KEY.encode()).hexdigest()
    return {
        "app": {"url": app_url},
        "claude": {"base_url": fake.url, "api_key": "sk-sidecar", "max_retries": 0},
        "telemetry": {"access_log": False},
        "routes": [
            {"path": "/public", "handler": "app"},
            {"path": "/pub@lic:x", "handler": "app"},
            {"path": "/v1/", "handler": "anthropic"},
            {"path": "/", "handler": "app",
             "auth": {"mode": "required", "api_keys": [{"name": "c", "sha256": digest}]}},
        ],
    }  # fmt: skip


@dataclass
class Stack:
    """A sidecar, its app and the fake Claude, served from a thread of their own."""

    url: str
    admin_url: str
    fake: FakeServer


@contextlib.asynccontextmanager
async def _running() -> AsyncIterator[tuple[SidecarServer, FakeServer]]:
    async with (
        running_fake_claude(FakeSettings(tokens=3)) as fake,
        serving(_app()) as app_url,
        running_sidecar(_config(fake, app_url)) as sidecar,
    ):
        yield sidecar, fake


def _app() -> web.Application:
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", _echo)
    return app


@pytest.fixture(scope="module")
def stack() -> Iterator[Stack]:
    """The servers run in their own loop and thread, so hypothesis drives plain sync tests."""
    ready: list[Stack] = []
    started, stop = threading.Event(), threading.Event()

    async def main() -> None:
        async with _running() as (sidecar, fake):
            ready.append(Stack(sidecar.url, sidecar.admin_url, fake))
            started.set()
            await asyncio.to_thread(stop.wait)

    thread = threading.Thread(target=lambda: asyncio.run(main()), daemon=True)
    thread.start()
    assert started.wait(30), "the servers did not start"
    try:
        yield ready[0]
    finally:
        stop.set()
        thread.join(30)


def _get(stack: Stack, raw: str, headers: dict[str, str] | None = None) -> tuple[int, Any]:
    """GET `raw` sent byte for byte (no client-side normalisation); (status, JSON body)."""
    url = URL(stack.url)
    connection = http.client.HTTPConnection(url.host or "", url.port, timeout=30)
    try:
        connection.request("GET", raw, headers=headers or {})
        response = connection.getresponse()
        return response.status, json.loads(response.read() or b"null")
    finally:
        connection.close()


def _error_type(body: Any) -> str:
    return str(body["error"]["type"])


_E2E = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@_E2E
@given(spelled_paths())
def test_every_spelling_routes_and_reaches_the_upstream_as_its_canonical_form(
    stack: Stack, case: tuple[list[Token], str]
) -> None:
    tokens, raw = case
    expected = meaning(tokens)
    seen_by_fake = len(stack.fake.state.requests)
    status, body = _get(stack, raw + "?k=%2e%2E")
    route = route_of(expected.resolved)
    refused = expected.climbs or route_of(expected.written) != route
    event("refused" if refused else f"route {route}")
    if refused:
        assert status == 400, (raw, body)
        assert _error_type(body) in ("invalid_request_error", "invalid_request")
        assert len(stack.fake.state.requests) == seen_by_fake  # nothing went upstream
        return
    path = expected.path
    if route in ("/public", "/pub@lic:x"):
        assert (status, body) == (200, {"raw_path": path + "?k=%2e%2E"}), raw
    elif route == "/":
        assert status == 401, (raw, body)  # the credential-free `/public` never lends its policy
        status, body = _get(stack, raw, {"X-Api-Key": KEY})
        assert (status, body) == (200, {"raw_path": path}), raw
    elif path.rstrip("/") in ("/v1/messages", "/v1/messages/count_tokens"):
        # Dispatched as the real call (with screening, quotas and a slot), never forwarded.
        assert (status, body["type"]) == (405, "error"), raw
    elif path == "/v1/models" or path.startswith("/v1/models/"):
        # The fake's Models API: the list, a model, or a 404 for an id it does not know.
        answer = "list" if "data" in body else body["type"]
        assert (status, answer) in ((200, "list"), (200, "model"), (404, "error")), raw
        assert stack.fake.state.requests[-1].raw_path == path + "?k=%2e%2E", raw
    elif path.startswith("/v1/"):
        assert (status, _error_type(body)) == (403, "permission_error"), raw
    else:
        assert (status, _error_type(body)) == (404, "not_found_error"), raw


@_E2E
@given(spelled_paths(), _SEPARATORS, st.integers(min_value=0, max_value=200))
def test_encoded_separators_and_controls_never_reach_an_upstream(
    stack: Stack, case: tuple[list[Token], str], bad: str, where: int
) -> None:
    _, raw = case
    at = 1 + where % len(raw)
    seen_by_fake = len(stack.fake.state.requests)
    status, body = _get(stack, raw[:at] + bad + raw[at:], {"X-Api-Key": KEY})
    assert status == 400, (raw, body)  # the app and the fake would never answer 400 here
    assert _error_type(body) in ("invalid_request_error", "invalid_request")
    assert len(stack.fake.state.requests) == seen_by_fake


async def _websocket_path(base_url: str, raw: str) -> tuple[int, str]:
    """(handshake status, first message) of a WebSocket to `raw`, sent verbatim."""
    async with aiohttp.ClientSession() as http:
        try:
            async with http.ws_connect(URL(base_url + raw, encoded=True)) as ws:
                message = await ws.receive(timeout=10)
                return 101, str(message.data)
        except aiohttp.WSServerHandshakeError as exc:
            return exc.status, ""


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(spelled_paths())
def test_websocket_upgrades_take_the_same_canonical_path(
    stack: Stack, case: tuple[list[Token], str]
) -> None:
    tokens, raw = case
    expected = meaning([Token("public", "public"), *tokens])
    raw = "/public" + raw  # written under the credential-free route
    status, seen = asyncio.run(_websocket_path(stack.url, raw))
    # One `..` too many leaves `/public`: refused, never the `/` route without a key.
    if expected.climbs or route_of(expected.resolved) != "/public":
        assert status == 400, raw
    else:
        assert (status, seen) == (101, expected.path), raw


async def test_climbing_out_of_a_route_is_refused_in_its_format_and_counted() -> None:
    async with (
        running_fake_claude(FakeSettings(tokens=3)) as fake,
        serving(_app()) as app_url,
        running_sidecar(_config(fake, app_url)) as sidecar,
        aiohttp.ClientSession() as http,
    ):
        for raw, family in (("/public/../admin", "app"), ("/v1/../public/x", "anthropic")):
            url = URL(sidecar.url + raw, encoded=True)
            async with http.get(url) as response:
                assert response.status == 400
                body = await response.json()
            if family == "anthropic":
                assert body["type"] == "error"
            assert body["error"]["type"].startswith("invalid_request")
        async with http.get(sidecar.admin_url + "/metrics") as response:
            text = await response.text()
        counted = [
            line for line in text.splitlines()
            if line.startswith("sidecar_rejections_total") and 'reason="path_climbs"' in line
        ]  # fmt: skip
        assert sum(float(line.rsplit(" ", 1)[1]) for line in counted) == 2


SPELLINGS_OF_MESSAGES = [
    "/v1/models/../messages", "/v1/models/%2e%2E/messages", "/v1/./messages",
    "/v1//messages", "/v1/%6d%65ssages", "/v1/models/x/../../messages/",
]  # fmt: skip


@pytest.mark.parametrize("raw", SPELLINGS_OF_MESSAGES)
async def test_a_spelling_of_messages_is_the_real_call_with_its_checks(
    raw: str, fake: FakeServer, sidecar_for: SidecarFactory
) -> None:
    config = {"screening": {"deny_patterns": ["forbidden phrase"]},
              "claude": {"allowed_models": ["claude-sonnet-5-5"]}}  # fmt: skip
    url_of = "{}" + raw

    def body(model: str, text: str) -> dict[str, Any]:
        return {"model": model, "max_tokens": 8, "messages": [{"role": "user", "content": text}]}

    async with sidecar_for(config) as sidecar, aiohttp.ClientSession() as http:
        url = URL(url_of.format(sidecar.url), encoded=True)
        async with http.post(url, json=body("claude-sonnet-5-5", "hello")) as response:
            assert response.status == 200
            assert (await response.json())["type"] == "message"
        async with http.post(url, json=body("claude-sonnet-5-5", "a forbidden phrase")) as r:
            assert r.status == 400  # screened
        async with http.post(url, json=body("claude-opus-5-5", "hello")) as r:
            assert r.status == 400  # the model allow-list applies
    assert [r.raw_path for r in fake.state.requests] == ["/v1/messages"]


async def test_a_path_the_app_may_read_as_a_stricter_route_is_refused_before_the_app() -> None:
    """`/admin;x/y` (Tomcat's `/admin/y`) and `/ADMIN/y` (Express's `/admin/y`) must not
    reach the app through the credential-free `/` route: 400, counted, the app never
    called, WebSocket upgrades included."""
    seen: list[str] = []
    app = _recording_app(seen)
    digest = hashlib.sha256(KEY.encode()).hexdigest()
    config = {
        "app": {"url": ""},
        "telemetry": {"access_log": False},
        "routes": [
            {"path": "/admin", "handler": "app",
             "auth": {"mode": "required", "api_keys": [{"name": "c", "sha256": digest}]}},
            {"path": "/", "handler": "app", "auth": {"mode": "none"}},
        ],
    }  # fmt: skip
    ambiguous = ["/admin;x/y", "/;x/admin/y", "/ADMIN/y", "/Admin;jsessionid=1/y"]
    async with serving(app) as app_url:
        config["app"] = {"url": app_url}
        async with running_sidecar(config) as sidecar, aiohttp.ClientSession() as http:
            for raw in ambiguous:
                async with http.get(URL(sidecar.url + raw, encoded=True)) as response:
                    assert response.status == 400, raw
                    assert (await response.json())["error"]["type"] == "invalid_request"
                assert (await _websocket_path(sidecar.url, raw))[0] == 400
            async with http.get(URL(sidecar.url + "/admin/y;x", encoded=True)) as response:
                assert response.status == 401  # within its own route: that route's policy
            async with http.get(URL(sidecar.url + "/public;x/y", encoded=True)) as response:
                assert response.status == 200
            async with http.get(sidecar.admin_url + "/metrics") as response:
                text = await response.text()
    assert seen == ["/public;x/y"]
    counted = [
        line for line in text.splitlines()
        if line.startswith("sidecar_rejections_total") and 'reason="path_ambiguous"' in line
    ]  # fmt: skip
    assert sum(float(line.rsplit(" ", 1)[1]) for line in counted) == 2 * len(ambiguous)


# --------------------------------------------------------------------------- bytes past ASCII

# Escapes whose bytes are no well-formed UTF-8, each one a lenient decoder reads as text
# (`%C0%AE` is `.`, `%C0%AF` is `/`): refused wherever they stand, never forwarded escaped.
NOT_UTF8 = [
    "%C0%AE%C0%AE", "%c0%ae", "%C0%AF", "%C1%9C",  # overlong 2-byte forms of `.`, `/`, `\`
    "%E0%80%AE", "%E0%80%AF", "%F0%80%80%AE", "%F8%80%80%80%AE",  # overlong 3-, 4-, 5-byte
    "%ED%A0%80", "%ED%BF%BF", "%ED%A0%BD%ED%B8%80",  # encoded surrogates (lone, a pair)
    "%80", "%BF", "x%80y", "%C3%A9%A9",  # stray continuation bytes
    "%C3", "%E2%82", "%F0%9F%98", "caf%C3",  # truncated sequences
    "%FF", "%FE", "%F5%80%80%80", "%F4%90%80%80",  # bytes never in UTF-8, past U+10FFFF
]  # fmt: skip
# The same bytes sent raw: what the pure-Python HTTP parser hands on (`surrogateescape`),
# and a lone surrogate no decoder gives.
NOT_UTF8_RAW = ["\udcc0\udcae\udcc0\udcae", "\udced\udca0\udc80", "\udc80", "\udcc3", "\ud800"]
# Well-formed UTF-8, escaped in either case or sent raw: served, escaped in upper case.
UTF8 = [("%C3%A9", "%C3%A9"), ("%c3%a9", "%C3%A9"), ("é", "%C3%A9"), ("%F0%9F%98%80", "%F0%9F%98%80"),
        ("\U0001f600", "%F0%9F%98%80"), ("%EF%BF%BD", "%EF%BF%BD"), ("%F4%8F%BF%BF", "%F4%8F%BF%BF"),
        ("%C3\udca9", "%C3%A9")]  # fmt: skip
# Double encoding is text: `%25C0%25AE` is the six characters `%C0%AE`, kept as sent.
DOUBLE = ["%25C0%25AE", "%25c0%25ae%25C0%25AE", "%25ED%25A0%2580", "%25FF"]


@pytest.mark.parametrize("bad", NOT_UTF8 + NOT_UTF8_RAW)
@pytest.mark.parametrize("where", ["/public/{}", "/{}/admin", "/public/{}/../x", "/a{}b/c"])
def test_bytes_past_ascii_that_are_no_utf8_are_refused_anywhere(bad: str, where: str) -> None:
    with pytest.raises(PathRefused) as refused:
        canonical(where.format(bad))
    assert refused.value.reason == "path_not_utf8"
    assert "%" not in refused.value.message  # names no bytes


@pytest.mark.parametrize(("spelled", "normal"), UTF8)
def test_well_formed_utf8_is_served_escaped_in_upper_case(spelled: str, normal: str) -> None:
    assert canonical(f"/public/{spelled}/x").path == f"/public/{normal}/x"


@pytest.mark.parametrize("double", DOUBLE)
def test_double_encoding_stays_as_sent_and_is_never_decoded_twice(double: str) -> None:
    path = canonical(f"/public/{double}").path
    assert path == f"/public/{double}"
    assert canonical(path).path == path  # a fixed point: the second reading changes nothing


def _counted(metrics: str, reason: str) -> float:
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in metrics.splitlines()
        if line.startswith("sidecar_rejections_total") and f'reason="{reason}"' in line
    )


async def test_no_utf8_in_a_path_is_refused_on_every_route_before_any_upstream() -> None:
    """App routes, the Anthropic route (forwards, a resume DELETE), the browser files and
    WebSocket upgrades: 400 in the route's format, counted, the app and Claude never called."""
    seen: list[str] = []
    app = _recording_app(seen)
    places = {"/public/{}": "app", "/public/{}{}/admin": "app", "/v1/models/{}": "anthropic",
              "/v1/{}{}/models": "anthropic", "/v1/messages/AAAAAAAAAAAAAAAAAAAAAA{}": "anthropic",
              "/_sidecar/{}": "app", "/{}": "app"}  # fmt: skip
    async with (
        running_fake_claude(FakeSettings(tokens=3)) as fake,
        serving(app) as app_url,
        running_sidecar(_config(fake, app_url)) as sidecar,
        aiohttp.ClientSession() as http,
    ):
        sent = 0
        for bad in ("%C0%AE", "%ED%A0%80", "%80", "%E2%82", "%F0%80%80%AE"):
            for place, family in places.items():
                raw = place.replace("{}", bad)
                method = "DELETE" if "AAAA" in raw else "GET"
                async with http.request(method, URL(sidecar.url + raw, encoded=True)) as response:
                    assert response.status == 400, raw
                    body = await response.json()
                sent += 1
                assert (body.get("type") == "error") == (family == "anthropic"), raw
                assert body["error"]["type"].startswith("invalid_request"), raw
            assert (await _websocket_path(sidecar.url, f"/public/{bad}"))[0] == 400
            sent += 1
        for double in DOUBLE:  # text, not bytes: served as sent
            async with http.get(URL(f"{sidecar.url}/public/{double}", encoded=True)) as response:
                assert (response.status, await response.json()) == (
                    200, {"raw_path": f"/public/{double}"}
                )  # fmt: skip
        async with http.get(sidecar.admin_url + "/metrics") as response:
            metrics = await response.text()
        assert not fake.state.requests
    assert seen == [f"/public/{double}" for double in DOUBLE]
    assert _counted(metrics, "path_not_utf8") == sent


async def test_raw_bytes_in_the_request_line_are_refused_whichever_parser_reads_them(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """aiohttp's C parser refuses bytes past ASCII in the request line itself; its
    pure-Python parser (aiohttp without its extension) hands them on as `surrogateescape`
    characters, which must meet the same rule as their escapes, and reach logs and spans
    only as their escapes (no raw byte, no lone surrogate an exporter cannot encode)."""
    from aiohttp import http_parser, web_protocol

    caplog.set_level(logging.INFO)

    seen: list[str] = []
    app = _recording_app(seen)
    requests = [b"/public/\xc0\xae\xc0\xae/x", b"/public/\xed\xa0\x80", b"/public/\x80",
                b"/public/\xc3", b"/v1/models/\xc0\xae"]  # fmt: skip
    for parser in (http_parser.HttpRequestParser, http_parser.HttpRequestParserPy):
        monkeypatch.setattr(web_protocol, "HttpRequestParser", parser)  # C unless built without
        seen.clear()
        async with (
            running_fake_claude(FakeSettings(tokens=3)) as fake,
            serving(app) as app_url,
            running_sidecar(
                loader.deep_merge(_config(fake, app_url), {"telemetry": {"access_log": True}})
            ) as sidecar,
        ):
            answers = []
            for target in [*requests, b"/public/caf\xc3\xa9"]:
                reader, writer = await asyncio.open_connection("127.0.0.1", sidecar.port)
                writer.write(b"GET %b HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n" % target)
                await writer.drain()
                answers.append(await asyncio.wait_for(reader.read(), 10))
                writer.close()
            assert not fake.state.requests
        *refused, utf8 = answers
        assert all(a.startswith((b"HTTP/1.1 400 ", b"HTTP/1.0 400 ")) for a in refused)
        # Well-formed UTF-8 sent raw is the path its escapes spell, or refused whole.
        if parser is http_parser.HttpRequestParserPy or utf8.startswith(b"HTTP/1.1 200 "):
            assert b'"/public/caf%C3%A9"' in utf8
            assert seen == ["/public/caf%C3%A9"]
        else:
            assert utf8.startswith(b"HTTP/1.0 400 ")
            assert seen == []
    logged = [str(value) for record in caplog.records for value in record.__dict__.values()]
    assert all(value.isascii() for value in logged if isinstance(value, str))
    paths = {r.__dict__["path"] for r in caplog.records if r.getMessage() == "request"}
    assert {"/public/%C0%AE%C0%AE/x", "/public/%ED%A0%80", "/v1/models/%C0%AE"} <= paths
