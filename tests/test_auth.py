"""Authentication over real sockets: every bad credential is a 401/403 and Claude is never called;
route overrides fail closed (credentials on a route mean the route needs them)."""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import aiohttp
import anthropic
import jwt
import pytest
from multidict import CIMultiDict, CIMultiDictProxy

from sidecar import loader
from sidecar.config import AuthConfig
from sidecar.errors import Rejection
from sidecar.fake_claude import FakeServer
from sidecar.identity import Identity
from sidecar.policy import AuthService
from tests.support.apps import echoed_headers, running_app
from tests.support.metrics import counts
from tests.support.policy import (
    API_KEY,
    API_KEY_SHA256,
    AUDIENCE,
    ISSUER,
    SECRET,
    claims_text,
    forge,
    mint,
    new_key,
    public_pem,
    sign_text,
    write_public_key,
)
from tests.support.sdk import sdk
from tests.support.sidecars import SidecarFactory

PROMPT = "/api/stream-response"
MODEL = "claude-sonnet-5-5"
RSA_KEY = new_key("RS256")
OTHER_RSA_KEY = new_key("RS256")
INVALID = 'Bearer realm="claude-sidecar", error="invalid_token"'


def auth_config(public_key_file: Path | None = None, **auth: Any) -> dict[str, Any]:
    jwt_config: dict[str, Any] = {
        "secret": SECRET, "algorithms": ["HS256"], "issuer": ISSUER, "audience": AUDIENCE,
        "tenant_claim": "org", "query_param": "access_token",
    }  # fmt: skip
    if public_key_file is not None:
        jwt_config.update(public_key_file=str(public_key_file), algorithms=["HS256", "RS256"])
    return {
        "auth": {
            "mode": "required",
            "jwt": jwt_config,
            "api_keys": [{"name": "ci", "sha256": API_KEY_SHA256, "user": "ci-bot"}],
            **auth,
        }
    }


@pytest.fixture
def rsa_pem(tmp_path: Path) -> Path:
    return write_public_key(RSA_KEY, tmp_path)


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def post_prompt(
    url: str, headers: Mapping[str, str], body: dict[str, Any] | None = None, query: str = ""
) -> tuple[int, Any, CIMultiDictProxy[str]]:
    async with aiohttp.ClientSession() as http:
        async with http.post(
            url + PROMPT + query, json=body or {"prompt": "hi"}, headers=headers
        ) as response:
            raw = await response.read()
            body_out: Any = raw
            if response.content_type == "application/json":
                body_out = json.loads(raw)
            return response.status, body_out, response.headers


_NOW = int(time.time())
# (id, request headers, expected status, expected short type, expected WWW-Authenticate)
ATTACKS: list[tuple[str, Mapping[str, str], int, str, str | None]] = [
    ("missing", {}, 401, "unauthorized", 'Bearer realm="claude-sidecar"'),
    ("garbled_jwt", bearer("eyJhbGciOi.JIUzI1NiJ9.garbage"), 401, "unauthorized", INVALID),
    ("garbled_opaque", bearer("not a token at all"), 401, "unauthorized", INVALID),
    ("empty_bearer", {"Authorization": "Bearer "}, 401, "unauthorized", None),
    ("expired", bearer(mint(exp=_NOW - 3600)), 401, "unauthorized", INVALID),
    ("not_yet_valid", bearer(mint(nbf=_NOW + 3600)), 401, "unauthorized", INVALID),
    ("wrong_issuer", bearer(mint(iss="https://evil.test")), 401, "unauthorized", INVALID),
    ("wrong_audience", bearer(mint(aud="someone-else")), 401, "unauthorized", INVALID),
    ("no_exp", bearer(mint(exp=None)), 401, "unauthorized", INVALID),
    ("no_user_claim", bearer(mint(sub=None)), 401, "unauthorized", INVALID),
    ("wrong_secret", bearer(mint(key="x" * 40)), 401, "unauthorized", INVALID),
    ("alg_not_listed", bearer(mint(SECRET * 2, alg="HS512")), 401, "unauthorized", INVALID),
    ("alg_none", bearer(forge({"alg": "none", "typ": "JWT"}, None)), 401, "unauthorized", INVALID),
    ("alg_none_caps", bearer(forge({"alg": "None"}, None)), 401, "unauthorized", INVALID),
    (
        "hs_signed_with_rsa_public_key",
        bearer(forge({"alg": "HS256", "typ": "JWT"}, public_pem(RSA_KEY))),
        401, "unauthorized", INVALID,
    ),
    ("rs_signed_by_other_key", bearer(mint(OTHER_RSA_KEY, "RS256")), 401, "unauthorized", INVALID),
    ("kid_not_a_string", bearer(forge({"alg": "RS256", "kid": ["x"]}, b"k")), 401,
     "unauthorized", INVALID),
    ("revoked_api_key", {"x-api-key": "sk-sidecar-revoked"}, 401, "unauthorized", INVALID),
    ("api_key_as_bearer_revoked", bearer("sk-sidecar-revoked"), 401, "unauthorized", INVALID),
    ("basic_auth", {"Authorization": "Basic YTpi"}, 401, "unauthorized", None),
    # Two copies of a credential header: auth would check the first, an app may read another.
    ("two_authorization_lines",
     CIMultiDict([("Authorization", f"Bearer {mint()}"), ("Authorization", "Bearer forged")]),
     401, "unauthorized", INVALID),
    ("two_api_key_lines", CIMultiDict([("x-api-key", API_KEY), ("x-api-key", "sk-forged")]),
     401, "unauthorized", INVALID),
    ("forbidden_tenant", bearer(mint(org="evil")), 403, "forbidden", None),
    # A member named twice: verified with the last copy, an app may read the first.
    ("claim_named_twice", bearer(sign_text('{"alg": "HS256"}', claims_text('"sub": "bob"'))),
     401, "unauthorized", INVALID),
    ("exp_named_twice", bearer(sign_text('{"alg": "HS256"}', claims_text(f'"exp": {_NOW + 60}'))),
     401, "unauthorized", INVALID),
    ("nested_member_named_twice",
     bearer(sign_text('{"alg": "HS256"}', claims_text('"ctx": {"role": "a", "role": "b"}'))),
     401, "unauthorized", INVALID),
    ("header_alg_named_twice",
     bearer(sign_text('{"alg": "none", "alg": "HS256"}', claims_text())),
     401, "unauthorized", INVALID),
    ("rs_header_member_named_twice",
     bearer(sign_text('{"alg": "RS256", "typ": "JWT", "typ": "JWT"}', claims_text(), RSA_KEY,
                      "RS256")), 401, "unauthorized", INVALID),
    ("rs_claim_named_twice",
     bearer(sign_text('{"alg": "RS256"}', claims_text('"org": "acme"'), RSA_KEY, "RS256")),
     401, "unauthorized", INVALID),
]  # fmt: skip


@pytest.mark.parametrize(
    ("headers", "status", "short_type", "challenge"),
    [case[1:] for case in ATTACKS],
    ids=[case[0] for case in ATTACKS],
)
async def test_bad_credentials_are_rejected_before_claude(
    fake: FakeServer,
    sidecar_for: SidecarFactory,
    rsa_pem: Path,
    headers: Mapping[str, str],
    status: int,
    short_type: str,
    challenge: str | None,
) -> None:
    config = auth_config(rsa_pem, allowed_tenants=["acme"])
    message = {"model": MODEL, "max_tokens": 8, "messages": [{"role": "user", "content": "x"}]}
    async with sidecar_for(config) as sidecar, aiohttp.ClientSession() as http:
        got, body, response_headers = await post_prompt(sidecar.url, headers)
        async with http.post(sidecar.url + "/v1/messages", json=message, headers=headers) as r:
            anthropic_status, anthropic_body = r.status, await r.json()
            anthropic_headers = r.headers
    assert got == status
    assert set(body) == {"error"}
    assert body["error"]["type"] == short_type
    assert set(body["error"]) == {"type", "message"}
    assert "Traceback" not in body["error"]["message"]
    # The Anthropic route answers in Anthropic's shape, so SDKs raise the matching error.
    assert anthropic_status == status
    assert set(anthropic_body) == {"type", "error", "request_id"}
    assert anthropic_body["type"] == "error"
    expected = "authentication_error" if status == 401 else "permission_error"
    assert anthropic_body["error"]["type"] == expected
    assert anthropic_body["error"]["message"] == body["error"]["message"]
    for seen in (response_headers, anthropic_headers):
        if challenge is not None:
            assert seen["WWW-Authenticate"] == challenge
        if status == 403:
            assert "WWW-Authenticate" not in seen
    assert fake.state.counters["requests"] == 0


async def test_rejections_are_counted_by_reason(sidecar_for: SidecarFactory) -> None:
    async with sidecar_for(auth_config()) as sidecar, aiohttp.ClientSession() as http:
        await post_prompt(sidecar.url, bearer(mint(exp=_NOW - 3600)))
        await post_prompt(sidecar.url, {})
        async with http.get(sidecar.admin_url + "/metrics") as response:
            metrics = await response.text()
    lines = [line for line in metrics.splitlines() if line.startswith("sidecar_rejections")]
    assert any('reason="auth_expired"' in line and line.endswith(" 1.0") for line in lines)
    assert any('reason="auth_missing"' in line and line.endswith(" 1.0") for line in lines)


def _events(raw: bytes) -> list[dict[str, Any]]:
    return [json.loads(line[6:]) for line in raw.decode().splitlines() if line.startswith("data: ")]


@pytest.mark.parametrize(
    "headers",
    [
        bearer(mint()),
        {"x-api-key": API_KEY},
        bearer(API_KEY),
        {"x-api-key": mint()},  # the SDK's api_key= may carry a JWT
        {"leeway": "minted when the test runs"},  # expired 10 s ago: within the 30 s leeway
        bearer(mint(RSA_KEY, "RS256")),
    ],
    ids=["jwt_bearer", "api_key_header", "api_key_bearer", "jwt_in_x_api_key", "leeway", "rs256"],
)
async def test_valid_credentials_stream(
    fake: FakeServer, sidecar_for: SidecarFactory, rsa_pem: Path, headers: dict[str, str]
) -> None:
    if "leeway" in headers:  # minted now: a token minted at collection could be long expired
        headers = bearer(mint(exp=int(time.time()) - 10))
    async with sidecar_for(auth_config(rsa_pem)) as sidecar:
        status, raw, _ = await post_prompt(sidecar.url, headers)
    assert status == 200
    assert _events(raw)[-1]["done"] is True
    assert fake.state.counters["requests"] == 1
    sent = fake.state.requests[0].headers
    assert sent["x-api-key"] == "sk-sidecar"  # the sidecar's key, never the client's credential
    assert "authorization" not in sent


@pytest.mark.parametrize("alg", ["PS256", "ES256", "EdDSA"])
async def test_asymmetric_algorithms_with_a_public_key_file(
    sidecar_for: SidecarFactory, tmp_path: Path, alg: str
) -> None:
    key = new_key(alg)
    config = {"auth": {"jwt": {"public_key_file": str(write_public_key(key, tmp_path)),
                               "algorithms": [alg], "issuer": ISSUER, "audience": AUDIENCE}}}  # fmt: skip
    async with sidecar_for(config) as sidecar:
        ok, _, _ = await post_prompt(sidecar.url, bearer(mint(key, alg)))
        # The same token family signed by another key, and an HS token, both fail.
        forged, _, _ = await post_prompt(sidecar.url, bearer(mint(new_key(alg), alg)))
        hs, _, _ = await post_prompt(sidecar.url, bearer(mint()))
    assert (ok, forged, hs) == (200, 401, 401)


async def test_wrong_key_type_for_the_algorithm_is_401_not_500(
    fake: FakeServer, sidecar_for: SidecarFactory, tmp_path: Path
) -> None:
    # RS256 and ES256 both allowed, but the key file is RSA: an ES256 token meets an RSA key.
    config = {"auth": {"jwt": {"public_key_file": str(write_public_key(RSA_KEY, tmp_path)),
                               "algorithms": ["RS256", "ES256"]}}}  # fmt: skip
    async with sidecar_for(config) as sidecar:
        status, body, _ = await post_prompt(sidecar.url, bearer(mint(new_key("ES256"), "ES256")))
    assert status == 401
    assert body["error"]["type"] == "unauthorized"
    assert fake.state.counters["requests"] == 0


async def test_a_head_is_read_as_the_get_it_asks_about(
    fake: FakeServer, sidecar_for: SidecarFactory
) -> None:
    """The query token, the fields and the answer's head of the GET; Claude is not called."""
    token = mint()
    async with sidecar_for(auth_config()) as sidecar, aiohttp.ClientSession() as http:
        url = sidecar.url + PROMPT
        answers = []
        for params in (
            {"prompt": "hi", "access_token": token},
            {"prompt": "hi"},  # no credential
            {"access_token": token},  # no prompt
        ):
            async with http.head(url, params=params) as response:
                assert await response.read() == b""
                answers.append((response.status, response.headers.get("Content-Type")))
    assert answers[0] == (200, "text/event-stream; charset=utf-8")
    assert answers[1][0] == 401
    assert answers[2][0] == 400
    assert fake.state.counters["requests"] == 0


async def test_query_token_only_for_get(fake: FakeServer, sidecar_for: SidecarFactory) -> None:
    token = mint()
    async with sidecar_for(auth_config()) as sidecar, aiohttp.ClientSession() as http:
        url = sidecar.url + PROMPT
        async with http.get(url, params={"prompt": "hi", "access_token": token}) as response:
            assert response.status == 200
            events = _events(await response.read())
        status, _, _ = await post_prompt(sidecar.url, {}, query=f"?access_token={token}")
    assert events[-1]["done"] is True
    assert status == 401
    assert fake.state.counters["requests"] == 1
    assert token not in json.dumps(fake.state.requests[0].body)  # not a prompt field


def metrics_of(metrics: str, route: str) -> str:
    """The lines of a scrape for one `http.route` (and the metadata lines)."""
    label = f'http_route="{route}"'
    return "\n".join(line for line in metrics.splitlines() if line.startswith("#") or label in line)


@pytest.mark.parametrize(
    "field",
    ["Authorization", "x-api-key", "access_token"],
)
async def test_a_credential_sent_twice_with_different_values_is_refused_on_every_route(
    fake: FakeServer, sidecar_for: SidecarFactory, field: str
) -> None:
    """Which copy of a repeated credential counts is each reader's guess: the sidecar would
    check one, and an app that gets credentials (`app.forward_credentials`) could read the
    other. Two different copies are a 401, counted; the same copy twice is one credential."""
    valid = {"Authorization": f"Bearer {mint()}", "x-api-key": API_KEY, "access_token": mint()}
    other = {"Authorization": f"Bearer {mint(sub='mallory')}", "x-api-key": "guess",
             "access_token": mint(sub="mallory")}  # fmt: skip
    message = {"model": MODEL, "max_tokens": 8, "messages": [{"role": "user", "content": "x"}]}
    statuses: dict[str, list[int]] = {"twice": [], "same": []}
    async with running_app() as (app_url, _):
        config = auth_config()
        config["app"] = {"url": app_url, "forward_credentials": True}
        config["routes"] = [
            {"path": PROMPT, "handler": "prompt"},
            {"path": "/v1/", "handler": "anthropic"},
            {"path": "/", "handler": "app"},
        ]
        async with sidecar_for(config) as sidecar, aiohttp.ClientSession() as http:
            for case, second in (("twice", other[field]), ("same", valid[field])):
                pairs = [(field, valid[field]), (field, second)]
                headers = CIMultiDict(pairs if field != "access_token" else [])
                query = [("prompt", "hi"), *pairs] if field == "access_token" else []
                requests: list[tuple[str, str, dict[str, Any]]] = [
                    ("GET", PROMPT, {"params": query or {"prompt": "hi"}}),
                    ("GET", "/echo", {"params": query}),
                ]
                if field != "access_token":  # a query token is for an EventSource's GET
                    requests.append(("POST", "/v1/messages", {"json": message}))
                for method, path, options in requests:
                    made = http.request(method, sidecar.url + path, headers=headers, **options)
                    async with made as response:
                        statuses[case].append(response.status)
                        if case == "twice":
                            assert response.status == 401, path
                            error = (await response.json())["error"]
                            assert error["type"] in ("unauthorized", "authentication_error")
                            assert "sent more than once" in error["message"]
                        else:
                            await response.read()
            async with http.get(sidecar.admin_url + "/metrics") as response:
                metrics = await response.text()
    assert set(statuses["twice"]) == {401}
    assert set(statuses["same"]) == {200}
    refused = {route: counts(metrics_of(metrics, route), "sidecar_rejections",
                             "sidecar_rejection_reason") for route in (PROMPT, "/v1/", "/")}  # fmt: skip
    assert [by_reason.get("auth_invalid_key", 0) for by_reason in refused.values()] == [
        1,
        0 if field == "access_token" else 1,
        1,
    ]
    assert fake.state.counters["requests"] == len(statuses["same"]) - 1  # not the app's


async def test_the_query_parameter_takes_a_jwt_never_an_api_key(
    fake: FakeServer, sidecar_for: SidecarFactory
) -> None:
    """`auth.jwt.query_param` is for short-lived tokens (an EventSource's): a long-lived
    API key in the URL is refused there, and accepted in its header."""
    async with sidecar_for(auth_config()) as sidecar, aiohttp.ClientSession() as http:
        url = sidecar.url + PROMPT
        async with http.get(url, params={"prompt": "hi", "access_token": API_KEY}) as response:
            in_query = response.status
        async with http.get(url, params={"prompt": "hi"}, headers={"x-api-key": API_KEY}) as r:
            in_header = r.status
            await r.read()
    assert in_query == 401
    assert in_header == 200
    assert fake.state.counters["requests"] == 1


async def test_optional_mode(fake: FakeServer, sidecar_for: SidecarFactory) -> None:
    async with sidecar_for(auth_config(mode="optional")) as sidecar:
        anonymous, _, _ = await post_prompt(sidecar.url, {})
        bad, _, _ = await post_prompt(sidecar.url, bearer(mint(exp=_NOW - 3600)))
    assert (anonymous, bad) == (200, 401)  # a presented credential must verify
    assert fake.state.counters["requests"] == 1


@pytest.mark.parametrize(
    ("authorization", "status"),
    [
        ("Basic Zm9vOmJhcg==", 401), ("Token abc", 401), ("abc", 401),
        ("Bearer\tnot.a.jwt", 401), (f"Bearer\t{API_KEY}", 200), (f"bearer   {API_KEY}", 200),
    ],
)  # fmt: skip
async def test_optional_mode_never_takes_an_unread_authorization_for_none(
    fake: FakeServer, sidecar_for: SidecarFactory, authorization: str, status: int
) -> None:
    """A header the sidecar cannot read as a credential is a 401 like a bad one, not an
    anonymous call; `Bearer` is read whatever whitespace follows it."""
    async with sidecar_for(auth_config(mode="optional")) as sidecar:
        got, _, _ = await post_prompt(sidecar.url, {"Authorization": authorization})
    assert got == status
    assert fake.state.counters["requests"] == (status == 200)


async def test_per_route_override(fake: FakeServer, sidecar_for: SidecarFactory) -> None:
    config = auth_config()
    config["routes"] = [
        {"path": PROMPT, "handler": "prompt", "auth": {"mode": "none"}},
        {"path": "/v1/", "handler": "anthropic"},
    ]
    async with sidecar_for(config) as sidecar, aiohttp.ClientSession() as http:
        open_status, _, _ = await post_prompt(sidecar.url, {})
        body = {"model": MODEL, "max_tokens": 8, "messages": [{"role": "user", "content": "x"}]}
        async with http.post(sidecar.url + "/v1/messages", json=body) as response:
            closed = response.status
    assert (open_status, closed) == (200, 401)


async def test_forbidden_model_is_403(fake: FakeServer, sidecar_for: SidecarFactory) -> None:
    config = auth_config(allowed_models=["claude-haiku-5-5"])
    async with sidecar_for(config) as sidecar:
        status, body, _ = await post_prompt(
            sidecar.url, {"x-api-key": API_KEY}, {"prompt": "hi", "model": MODEL}
        )
    assert status == 403
    assert body["error"]["type"] == "forbidden"
    assert fake.state.counters["requests"] == 0


async def test_sdk_raises_the_right_exceptions(
    fake: FakeServer, sidecar_for: SidecarFactory
) -> None:
    messages: Any = [{"role": "user", "content": "hello"}]
    config = auth_config(allowed_tenants=["acme"], allowed_models=[MODEL])
    config["auth"]["api_keys"][0]["tenant"] = "acme"
    async with sidecar_for(config) as sidecar:
        with pytest.raises(anthropic.AuthenticationError) as unauthenticated:
            await sdk(sidecar.url, "sk-wrong").messages.create(
                model=MODEL, max_tokens=8, messages=messages
            )
        with pytest.raises(anthropic.PermissionDeniedError):
            await sdk(sidecar.url, mint(org="evil")).messages.create(
                model=MODEL, max_tokens=8, messages=messages
            )
        with pytest.raises(anthropic.PermissionDeniedError):
            await sdk(sidecar.url, API_KEY).messages.create(
                model="claude-opus-5-5", max_tokens=8, messages=messages
            )
        assert fake.state.counters["requests"] == 0
        async with sdk(sidecar.url, API_KEY) as client:
            reply = await client.messages.create(model=MODEL, max_tokens=8, messages=messages)
        async with (
            sdk(sidecar.url, mint()) as client,
            client.messages.stream(model=MODEL, max_tokens=8, messages=messages) as stream,
        ):
            text = await stream.get_final_text()
    body = unauthenticated.value.body
    assert isinstance(body, dict)
    assert body["type"] == "error"
    assert body["error"]["type"] == "authentication_error"
    assert reply.content
    assert text
    assert fake.state.counters["requests"] == 2


async def test_identity_headers_are_verified_never_client_sent(
    sidecar_for: SidecarFactory,
) -> None:
    spoof = {"X-Sidecar-User": "mallory", "X-Sidecar-Tenant": "evil",
             "X-Sidecar-Api-Key-Name": "root"}  # fmt: skip
    config = auth_config()
    config["auth"]["api_keys"][0]["tenant"] = "acme"
    async with running_app() as (app_url, _):
        config["app"] = {"url": app_url}
        config["routes"] = [{"path": "/", "handler": "app"}]
        async with sidecar_for(config) as sidecar, aiohttp.ClientSession() as http:
            async with http.get(
                sidecar.url + "/echo", headers={**spoof, "x-api-key": API_KEY}
            ) as response:
                by_key = echoed_headers(await response.json())
            async with http.get(sidecar.url + "/echo", headers={**spoof, **bearer(mint())}) as r:
                by_jwt = echoed_headers(await r.json())
            async with http.get(sidecar.url + "/echo", headers=spoof) as response:
                assert response.status == 401
    assert (by_key["x-sidecar-user"], by_key["x-sidecar-tenant"]) == ("ci-bot", "acme")
    assert by_key["x-sidecar-api-key-name"] == "ci"
    assert (by_jwt["x-sidecar-user"], by_jwt["x-sidecar-tenant"]) == ("alice", "acme")
    assert "x-sidecar-api-key-name" not in by_jwt


async def test_the_app_tells_two_issuers_users_apart_by_the_verified_issuer(
    sidecar_for: SidecarFactory,
) -> None:
    """A route trusting its own issuer names its own users: its `alice` is not the top
    level's. The app sees both as `X-Sidecar-User: alice`, so it gets who vouched for her
    too (`X-Sidecar-Issuer`, the verified `iss`); a client's copy never reaches it, nor
    does one for a caller no token named."""
    partner_secret = "p" * 40
    partner = {
        "mode": "required",
        "jwt": {"secret": partner_secret, "issuer": "https://partner.test"},
    }
    spoof = {"X-Sidecar-Issuer": ISSUER, "x_sidecar_issuer": ISSUER}
    config = auth_config()
    async with running_app() as (app_url, _):
        config["app"] = {"url": app_url}
        config["routes"] = [
            {"path": "/echo/partner", "handler": "app", "auth": partner},
            {"path": "/", "handler": "app"},
        ]
        other = bearer(mint(partner_secret, iss="https://partner.test"))
        seen = []
        async with sidecar_for(config) as sidecar, aiohttp.ClientSession() as http:
            for path, headers in [
                ("/echo", bearer(mint())),
                ("/echo/partner", other),
                ("/echo", {"x-api-key": API_KEY}),
            ]:
                async with http.get(sidecar.url + path, headers={**spoof, **headers}) as response:
                    assert response.status == 200
                    seen.append(echoed_headers(await response.json()))
    by_top, by_partner, by_key = seen
    assert (by_top["x-sidecar-user"], by_top["x-sidecar-issuer"]) == ("alice", ISSUER)
    assert (by_partner["x-sidecar-user"], by_partner["x-sidecar-issuer"]) == (
        "alice", "https://partner.test",
    )  # fmt: skip
    assert not {"x-sidecar-issuer", "x_sidecar_issuer"} & set(by_key)


@pytest.mark.parametrize(
    "claims",
    [{"sub": "alice\r\nX-Sidecar-Tenant: evil"}, {"sub": "a\x00b"}, {"sub": "a\x1bb"},
     {"org": "acme\n"}, {"sub": "alice\x7f"}, {"sub": "alice\x85evil"},
     {"org": "acme\u2028evil"}, {"sub": "alice\ud800"}, {"org": "\udfffacme"}],
    ids=["crlf_user", "nul_user", "esc_user", "lf_tenant", "del_user", "nel_user",
         "line_separator_tenant", "lone_surrogate_user", "lone_surrogate_tenant"],
)  # fmt: skip
async def test_names_with_control_characters_are_invalid_tokens(
    sidecar_for: SidecarFactory, claims: dict[str, str]
) -> None:
    """A signed token whose user or tenant carries control characters is a 401, never a
    500 from writing it into the app's identity headers (nor a header it could split)."""
    config = auth_config()
    async with running_app() as (app_url, _):
        config["app"] = {"url": app_url}
        config["routes"] = [{"path": PROMPT, "handler": "prompt"}, {"path": "/", "handler": "app"}]
        async with sidecar_for(config) as sidecar, aiohttp.ClientSession() as http:
            async with http.get(sidecar.url + "/echo", headers=bearer(mint(**claims))) as r:
                status, body = r.status, await r.json()
            prompt_status, prompt_body, _ = await post_prompt(sidecar.url, bearer(mint(**claims)))
    assert (status, body["error"]["type"]) == (401, "unauthorized")
    assert (prompt_status, prompt_body["error"]["type"]) == (401, "unauthorized")
    assert body["error"]["message"] == "invalid token"


@pytest.mark.parametrize("field", ["name", "user", "tenant"])
def test_api_key_names_with_control_characters_are_config_errors(field: str) -> None:
    key = {"name": "ci", "sha256": API_KEY_SHA256, "user": "ci-bot", field: "ci\nX-Evil: 1"}
    with pytest.raises(loader.ConfigError) as raised:
        loader.validate({"auth": {"api_keys": [key]}}, {})
    assert raised.value.problems == [
        f"auth.api_keys.0.{field}: must not contain control characters or line separators "
        "(it is sent in a header)"
    ]
    assert "X-Evil" not in str(raised.value)


def test_tokens_from_the_helpers_are_what_they_claim() -> None:
    # `sign_text` signs the text as written: without a repeated member it is a valid token.
    plain = sign_text('{"alg": "HS256"}', claims_text())
    assert jwt.decode(plain, SECRET, ["HS256"], audience=AUDIENCE)["sub"] == "alice"
    assert json.loads(claims_text('"sub": "bob"'))["sub"] == "bob"
    # Guards the table above: a broken helper would make every attack "pass" for the wrong reason.
    assert jwt.get_unverified_header(forge({"alg": "none"}, None))["alg"] == "none"
    decoded = jwt.decode(mint(), SECRET, algorithms=["HS256"], audience=AUDIENCE, issuer=ISSUER)
    assert decoded["sub"] == "alice"


@pytest.mark.parametrize(
    ("content", "algorithms", "problem"),
    [
        (b"not a key", ["RS256"], "is not a PEM public key"),
        (public_pem(RSA_KEY), ["ES256"], "none of the algorithms"),
        (public_pem(new_key("EdDSA")), ["RS256", "PS256"], "none of the algorithms"),
    ],
    ids=["garbage", "rsa_for_es", "ed25519_for_rsa"],
)
def test_unusable_public_key_files_are_config_errors(
    tmp_path: Path, content: bytes, algorithms: list[str], problem: str
) -> None:
    path = tmp_path / "key.pem"
    path.write_bytes(content)
    data = {"auth": {"jwt": {"public_key_file": str(path), "algorithms": algorithms}}}
    with pytest.raises(loader.ConfigError) as raised:
        loader.validate(data, {})
    assert any(p.startswith("auth.jwt: ") and problem in p for p in raised.value.problems)


# ------------------------------------------------------------------ route overrides


KEYS = [{"name": "ci", "sha256": API_KEY_SHA256, "user": "ci-bot"}]


def route_with_keys(**auth: Any) -> dict[str, Any]:
    return {
        "routes": [
            {
                "path": "/api/stream-response",
                "handler": "prompt",
                "auth": {"api_keys": KEYS, **auth},
            },
            {"path": "/open", "handler": "prompt"},
        ]
    }


async def test_route_override_with_credentials_and_no_top_level_auth_requires_them(
    sidecar_for: SidecarFactory,
) -> None:
    async with sidecar_for(route_with_keys()) as sidecar, aiohttp.ClientSession() as http:
        async with http.post(sidecar.url + "/api/stream-response", json={"prompt": "hi"}) as r:
            assert r.status == 401
            assert (await r.json())["error"]["type"] == "unauthorized"
        headers = {"x-api-key": API_KEY}
        async with http.post(
            sidecar.url + "/api/stream-response", json={"prompt": "hi"}, headers=headers
        ) as r:
            assert r.status == 200
            await r.read()
        async with http.post(sidecar.url + "/open", json={"prompt": "hi"}) as r:
            assert r.status == 200  # the other route keeps the top level's (absent) auth
            await r.read()


@pytest.mark.parametrize("mode", ["none", "optional"])
def test_route_override_that_names_its_mode_keeps_it(mode: str) -> None:
    config = loader.validate(route_with_keys(mode=mode))
    assert loader.route_policies(config)[0].auth.mode == mode


def test_top_level_mode_none_written_out_is_kept_for_route_credentials() -> None:
    data = {"auth": {"mode": "none"}, **route_with_keys()}
    assert loader.route_policies(loader.validate(data))[0].auth.mode == "none"


def test_route_override_without_credentials_keeps_auth_off() -> None:
    data = {"routes": [{"path": "/v1/", "handler": "anthropic", "auth": {"allowed_models": ["m"]}}]}
    assert loader.route_policies(loader.validate(data))[0].auth.mode == "none"


async def _status(http: aiohttp.ClientSession, url: str, headers: dict[str, str]) -> int:
    async with http.get(url, headers=headers) as response:
        return response.status


async def test_routes_that_differ_only_in_a_secret_accept_only_their_own(
    tmp_path: Path, sidecar_for: SidecarFactory
) -> None:
    other_secret = "o" * 40
    other_key = "sk-sidecar-client-key-2"
    rsa_dir, other_dir = tmp_path / "a", tmp_path / "b"
    rsa_dir.mkdir()
    other_dir.mkdir()
    jwt_base = {"audience": AUDIENCE, "issuer": ISSUER}

    def route(path: str, auth: dict[str, Any]) -> dict[str, Any]:
        return {"path": path, "handler": "app", "auth": {"mode": "required", **auth}}

    def api_key(key: str) -> dict[str, Any]:
        # Two keys are two names: one name is one caller on every route (a config error
        # otherwise: test_config_auth).
        return {"name": key, "sha256": hashlib.sha256(key.encode()).hexdigest()}

    async with running_app() as (url, _):
        config: dict[str, Any] = {
            "app": {"url": url},
            "routes": [
                route("/echo/hs-a", {"jwt": {**jwt_base, "secret": SECRET}}),
                route("/echo/hs-b", {"jwt": {**jwt_base, "secret": other_secret}}),
                route("/echo/key-a", {"api_keys": [api_key(API_KEY)]}),
                route("/echo/key-b", {"api_keys": [api_key(other_key)]}),
                route("/echo/file-a", {"jwt": {**jwt_base, "algorithms": ["RS256"],
                      "public_key_file": str(write_public_key(RSA_KEY, rsa_dir))}}),
                route("/echo/file-b", {"jwt": {**jwt_base, "algorithms": ["RS256"],
                      "public_key_file": str(write_public_key(OTHER_RSA_KEY, other_dir))}}),
            ],
        }  # fmt: skip
        credentials = {
            "/echo/hs-a": bearer(mint(SECRET)), "/echo/hs-b": bearer(mint(other_secret)),
            "/echo/key-a": {"x-api-key": API_KEY}, "/echo/key-b": {"x-api-key": other_key},
            "/echo/file-a": bearer(mint(RSA_KEY, "RS256")),
            "/echo/file-b": bearer(mint(OTHER_RSA_KEY, "RS256")),
        }  # fmt: skip
        async with sidecar_for(config) as sidecar, aiohttp.ClientSession() as http:
            seen = {
                (path, whose): await _status(http, sidecar.url + path, headers)
                for path in credentials
                for whose, headers in credentials.items()
            }
    expected = {(path, whose): 200 if path == whose else 401 for path, whose in seen}
    assert seen == expected


def test_policy_fingerprints_tell_secrets_apart_without_showing_them() -> None:
    def policy(secret: str) -> AuthConfig:
        return AuthConfig.model_validate({"jwt": {"secret": secret, "audience": AUDIENCE}})

    assert policy(SECRET).fingerprint() == policy(SECRET).fingerprint()
    assert policy(SECRET).fingerprint() != policy("o" * 40).fingerprint()
    assert SECRET not in policy(SECRET).fingerprint()


async def test_optional_mode_with_allowed_tenants_refuses_anonymous_callers(
    fake: FakeServer, sidecar_for: SidecarFactory
) -> None:
    async with sidecar_for(auth_config(mode="optional", allowed_tenants=["acme"])) as sidecar:
        async with (
            aiohttp.ClientSession() as http,
            http.post(sidecar.url + PROMPT, json={"prompt": "hi"}) as response,
        ):
            anonymous, challenge = response.status, response.headers.get("WWW-Authenticate")
        tenant, _, _ = await post_prompt(sidecar.url, bearer(mint(org="acme")))
        other, _, _ = await post_prompt(sidecar.url, bearer(mint(org="evil")))
    assert (anonymous, tenant, other) == (401, 200, 403)
    assert challenge == 'Bearer realm="claude-sidecar"'
    assert fake.state.counters["requests"] == 1


async def test_identify_decides_at_once_unless_a_token_needs_verifying() -> None:
    """No auth, no credential and API keys are answered in place (no coroutine per
    request); a JWT comes back as an awaitable of its identity, checked like the rest."""
    policy = AuthConfig.model_validate(auth_config()["auth"])
    tenants = AuthConfig.model_validate(auth_config(allowed_tenants=["acme"])["auth"])
    open_policy = AuthConfig(mode="none")
    service = AuthService([policy, tenants, open_policy])
    await service.start()
    try:
        keyed = service.identify(policy, {"x-api-key": API_KEY}, {}, "POST")
        assert isinstance(keyed, Identity)
        assert (keyed.method, keyed.user) == ("api_key", "ci-bot")
        with pytest.raises(Rejection, match="tenant not permitted"):  # the key has no tenant
            service.identify(tenants, {"x-api-key": API_KEY}, {}, "POST")
        with pytest.raises(Rejection, match="credentials required"):
            service.identify(policy, {}, {}, "POST")
        with pytest.raises(Rejection, match="invalid credentials"):
            service.identify(policy, {"x-api-key": "not-a-key"}, {}, "POST")
        anonymous = service.identify(open_policy, {}, {}, "POST")
        assert isinstance(anonymous, Identity)
        assert (anonymous.method, anonymous.user, anonymous.tenant) == ("anonymous", None, None)
        token = service.identify(
            tenants, {"Authorization": f"Bearer {mint(org='acme')}"}, {}, "POST"
        )
        assert not isinstance(token, Identity)
        identity = await token
        assert (identity.method, identity.tenant) == ("jwt", "acme")
        other = service.identify(
            tenants, {"Authorization": f"Bearer {mint(org='evil')}"}, {}, "POST"
        )
        assert not isinstance(other, Identity)
        with pytest.raises(Rejection, match="tenant not permitted"):
            await other
    finally:
        await service.close()


async def test_a_routes_own_issuer_names_other_callers_than_the_top_levels(
    fake: FakeServer, sidecar_for: SidecarFactory
) -> None:
    """A route with a JWT block of its own (another issuer and key) names users and tenants
    of its own: its `alice` of `acme` is not the top level's. She cannot resume or cancel
    the other's stream, nor reach her chat by its id, nor read her tenant's cache entries,
    nor spend her quota; the top level's own tokens still share all of them."""
    partner_secret = "p" * 40
    partner = {
        "mode": "required",
        "jwt": {"secret": partner_secret, "issuer": "https://partner.test"},
    }
    routes = [
        {"path": "/partner/prompt", "handler": "prompt", "auth": partner},
        {"path": "/partner/chat", "handler": "ui", "auth": partner},
        {"path": "/partner/v1/", "handler": "anthropic", "auth": partner},
        {"path": PROMPT, "handler": "prompt"},
        {"path": "/api/chat", "handler": "ui"},
        {"path": "/v1/", "handler": "anthropic"},
    ]
    config = {
        **auth_config(),
        "routes": routes,
        "resume": {"detach_grace_seconds": 10},
        "cache": {"enabled": True},
        "quotas": {"key": "user", "requests_per_minute": 50},
    }
    alice = {"Authorization": f"Bearer {mint()}"}
    also_alice = {"Authorization": f"Bearer {mint(sub='alice', org='acme')}"}
    other = {"Authorization": "Bearer " + mint(partner_secret, iss="https://partner.test")}
    turn = {"id": "chat-1", "trigger": "submit-message",
            "messages": [{"id": "u1", "role": "user",
                          "parts": [{"type": "text", "text": "[[fake tokens=400 tps=40]] go"}]}]}  # fmt: skip
    question = {"model": MODEL, "max_tokens": 16, "temperature": 0,
                "messages": [{"role": "user", "content": "the same question"}]}  # fmt: skip

    async def first_event(response: aiohttp.ClientResponse) -> str:
        assert response.status == 200
        await response.content.readline()
        return response.headers["Sidecar-Stream-Id"]

    async with sidecar_for(config) as sidecar, aiohttp.ClientSession() as http:
        url = sidecar.url
        slow = url + PROMPT + "?prompt=" + "[[fake tokens=400 tps=40]] go"
        async with http.get(slow, headers=alice) as response:
            stream_id = await first_event(response)
        async with http.post(url + "/api/chat", json=turn, headers=alice) as response:
            await first_event(response)
        cursor = {"Last-Event-ID": f"{stream_id}:1"}
        async with http.get(url + "/partner/prompt", headers={**other, **cursor}) as response:
            assert response.status == 204  # as for an unknown id
            assert "Sidecar-Stream-Id" not in response.headers
        async with http.delete(url + f"/partner/prompt/{stream_id}", headers=other) as response:
            assert response.status == 404
        async with http.get(url + "/partner/chat/chat-1/stream", headers=other) as response:
            assert response.status == 204
            assert "Sidecar-Stream-Id" not in response.headers
        async with http.get(url + "/api/chat/chat-1/stream", headers=also_alice) as response:
            assert await first_event(response)
        async with http.get(url + PROMPT, headers={**also_alice, **cursor}) as response:
            assert await first_event(response) == stream_id

        async def ask(prefix: str, headers: dict[str, str]) -> str | None:
            async with http.post(
                url + prefix + "/v1/messages", json=question, headers=headers
            ) as r:
                assert r.status == 200
                await r.read()
                return r.headers.get("X-Cache")

        assert await ask("", alice) == "MISS"
        assert await ask("/partner", other) == "MISS"
        assert await ask("", also_alice) == "HIT"
        async with http.delete(url + f"{PROMPT}/{stream_id}", headers=alice) as response:
            assert response.status == 204
        # A quota each: the partner's alice spent hers on her resume, her question and this
        # one only (the top level's alice made six more calls on a shared bucket before).
        async with http.post(url + "/partner/v1/messages", json=question, headers=other) as r:
            remaining = int(r.headers["anthropic-ratelimit-requests-remaining"])
        assert remaining == 50 - 3


async def _identities(
    policy: AuthConfig, *headers: Mapping[str, str], primary: bool = True
) -> list[Identity]:
    """The identities `policy` gives the callers sending `headers`, in a service whose
    top-level `auth.jwt` is the policy's own (`primary`) or none."""
    service = AuthService([policy], primary=policy.jwt if primary else None)
    await service.start()
    try:
        return [await service.authenticate(policy, sent, {}, "POST") for sent in headers]
    finally:
        await service.close()


def _policy(secret: str = SECRET, **keys: str) -> AuthConfig:
    """A policy with the test issuer's JWTs under `secret` and API keys `name=key`,
    each of user `alice`, tenant `acme`."""
    config = auth_config()["auth"]
    config["jwt"]["secret"] = secret
    config["api_keys"] = [
        {"name": name, "sha256": hashlib.sha256(key.encode()).hexdigest(), "user": "alice",
         "tenant": "acme"}
        for name, key in keys.items()
    ]  # fmt: skip
    return AuthConfig.model_validate(config)


async def test_a_token_caller_carries_its_issuers_realm_the_top_levels_too() -> None:
    """Tokens of the top-level `auth.jwt` are vouched for by its realm (issuer, key source,
    claims): another deployment's secret names another `alice` of another `acme`. The realm
    holds no secret."""
    other_secret = "o" * 40
    (ours,) = await _identities(_policy(), bearer(mint()))
    (theirs,) = await _identities(_policy(other_secret), bearer(mint(key=other_secret)))
    (again,) = await _identities(_policy(), bearer(mint(sub="bob")))
    assert ours.source is not None
    assert theirs.source is not None
    assert (ours.user, ours.tenant) == (theirs.user, theirs.tenant) == ("alice", "acme")
    assert ours.source != theirs.source
    assert ours.tenant_source != theirs.tenant_source
    assert (again.source, again.tenant_source) == (ours.source, ours.tenant_source)
    assert ours.realm is None  # quotas still count the top level's names as they are
    for found in (ours.source, theirs.source):
        assert SECRET not in found
        assert other_secret not in found


async def test_a_tenant_claim_names_a_tenant_as_a_string_or_an_integer_only() -> None:
    """An integer claim is its digits (`"org": 1` is the tenant `"1"`, as the docs say);
    a float, boolean, array, object or null names no tenant. (`sub` must be a string.)"""
    tenants = (1, "1", 1.0, True, ["1"], {"id": "1"}, None)
    found = await _identities(_policy(), *(bearer(mint(org=org)) for org in tenants))
    assert [identity.tenant for identity in found] == ["1", "1", None, None, None, None, None]
    with pytest.raises(Rejection, match="invalid token"):
        await _identities(_policy(), bearer(mint(sub=7)))


async def test_an_api_key_caller_is_vouched_for_by_its_key_not_its_name() -> None:
    """Two deployments' keys under one name are two callers (and name two tenants without
    a top-level issuer); one key is one caller whatever it is called; the keys naming one
    tenant share it, with the top-level issuer's tokens when there is one."""
    mine, theirs = "sk-mine-0123456789", "sk-theirs-0123456789"
    no_jwt = {"mode": "required", "jwt": None}
    ours = AuthConfig.model_validate({**_policy(ci=mine, ops=API_KEY).model_dump(), **no_jwt})
    other = AuthConfig.model_validate({**_policy(ci=theirs).model_dump(), **no_jwt})
    renamed = AuthConfig.model_validate({**_policy(build=mine).model_dump(), **no_jwt})
    ci, ops = await _identities(ours, {"x-api-key": mine}, {"x-api-key": API_KEY}, primary=False)
    (foreign,) = await _identities(other, {"x-api-key": theirs}, primary=False)
    (build,) = await _identities(renamed, {"x-api-key": mine}, primary=False)
    assert ci.api_key_name == foreign.api_key_name == "ci"
    assert ci.source != foreign.source
    assert ci.tenant_source != foreign.tenant_source
    assert ci.source == build.source
    assert ci.source != ops.source
    assert ci.tenant_source == ops.tenant_source is not None
    for found in (ci.source, ci.tenant_source, foreign.source):
        assert found is not None
        assert mine not in found
        assert theirs not in found
    key, token = await _identities(_policy(ci=mine), {"x-api-key": mine}, bearer(mint()))
    assert key.tenant_source == token.tenant_source is not None  # the top level's `acme`
    assert key.source != token.source


async def test_anonymous_callers_are_vouched_for_by_the_policy_that_let_them_in() -> None:
    open_here = AuthConfig.model_validate({**_policy().model_dump(), "mode": "optional"})
    open_there = AuthConfig.model_validate({**_policy("o" * 40).model_dump(), "mode": "optional"})
    (here,) = await _identities(open_here, {})
    (there,) = await _identities(open_there, {})
    assert here.method == there.method == "anonymous"
    assert here.source is not None
    assert here.source != there.source
    assert SECRET not in here.source
