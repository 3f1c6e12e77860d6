"""The auth section: credentials required, JWT rules, API key hashes."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import pytest
from pydantic import SecretStr

from sidecar import loader
from sidecar.config import JWTConfig
from tests.support.config import problems_of
from tests.support.policy import new_key, public_pem


def test_auth_required_needs_credentials() -> None:
    assert problems_of("auth: {mode: required}") == ["auth: mode 'required' needs jwt or api_keys"]


def test_jwt_rules() -> None:
    found = problems_of(
        """
auth:
  jwt: {secret: short, algorithms: [HS256, none]}
"""
    )
    assert any("alg 'none' is never allowed" in p for p in found)
    found = problems_of("auth: {jwt: {secret: short}}")
    assert any("at least 32 bytes" in p for p in found)
    found = problems_of("auth: {jwt: {algorithms: [RS256], secret: '" + "x" * 40 + "'}}")
    assert any("need public_key_file or jwks_url" in p for p in found)


@pytest.mark.parametrize(
    ("algorithms", "needed"),
    [(["HS256"], 32), (["HS384"], 48), (["HS512"], 64), (["HS256", "HS512"], 64),
     (["HS384", "RS256"], 48)],
)  # fmt: skip
def test_a_secret_shorter_than_its_algorithms_hash_is_a_config_error(
    algorithms: list[str], needed: int
) -> None:
    jwt = {"algorithms": algorithms, "jwks_url": "https://issuer.test/jwks.json"}
    secret = "k" * (needed - 1)
    found = problems_of({"auth": {"jwt": {**jwt, "secret": secret}}})
    assert len(found) == 1
    assert found[0].startswith(f"auth.jwt: secret must be at least {needed} bytes")
    assert secret not in found[0]
    route = {"path": "/v1/", "handler": "anthropic", "auth": {"jwt": {**jwt, "secret": secret}}}
    assert [p.partition(":")[0] for p in problems_of({"routes": [route]})] == ["routes.0.auth.jwt"]
    loader.validate({"auth": {"jwt": {**jwt, "secret": "k" * needed}}}, {})  # long enough


def test_api_key_hash_must_be_sha256_hex() -> None:
    found = problems_of("auth: {api_keys: [{name: ci, sha256: nothex}]}")
    assert found == ["auth.api_keys.0.sha256: must be the 64-character hex SHA-256 of the key"]


def test_api_key_names_given_twice_are_named() -> None:
    keys = [{"name": name, "sha256": digit * 64} for name, digit in (("ci", "a"), ("ci", "b"))]
    assert problems_of({"auth": {"api_keys": keys}}) == [
        "auth: api_keys names must be unique: 'ci' given more than once"
    ]


def test_jwt_settings_that_would_refuse_every_token_are_config_errors() -> None:
    secret = "'" + "x" * 40 + "'"
    found = problems_of("auth: {jwt: {secret: " + secret + ", audience: []}}")
    assert found == [
        "auth.jwt.audience: an empty list accepts no token: list the audiences, or unset it"
    ]
    found = problems_of("auth: {jwt: {secret: " + secret + ", user_claim: ''}}")
    assert [p.partition(":")[0] for p in found] == ["auth.jwt.user_claim"]
    # A route's override is checked as merged.
    found = problems_of(
        "auth: {jwt: {secret: " + secret + "}}\n"
        "routes: [{path: /v1/, handler: anthropic, auth: {jwt: {audience: []}}}]"
    )
    assert [p.partition(":")[0] for p in found] == ["routes.0.auth.jwt.audience"]


def test_one_key_listed_under_two_names_is_a_config_error() -> None:
    digest = "ab" * 32
    found = problems_of(
        {"auth": {"api_keys": [
            {"name": "old", "sha256": digest}, {"name": "new", "sha256": digest.upper()},
        ]}}
    )  # fmt: skip
    assert found == [
        "auth.api_keys: 'new' has the sha256 of 'old' in auth.api_keys; one key is one caller "
        "everywhere: use one name"
    ]
    # A route's own list is held to the same rule, once (the routes inheriting the top
    # level's list are not told again).
    top = {"name": "svc", "sha256": "cd" * 32}
    route = {"path": "/p/", "handler": "anthropic", "auth": {"api_keys": [
        {"name": "old", "sha256": digest}, {"name": "new", "sha256": digest},
    ]}}  # fmt: skip
    found = problems_of({"auth": {"api_keys": [top]}, "routes": [route]})
    assert found == [
        "routes.0.auth.api_keys: 'new' has the sha256 of 'old' in routes.0.auth.api_keys; "
        "one key is one caller everywhere: use one name"
    ]


def test_a_key_name_is_one_caller_on_every_route() -> None:
    """Two keys under one name on two routes would be one caller to the cache's scope,
    resume owners, quotas and the app: refused; the top level's own key listed again on a
    route is fine."""
    top = {"name": "svc", "sha256": "ab" * 32}
    again = {"path": "/again/", "handler": "anthropic", "auth": {"api_keys": [top]}}
    loader.validate({"auth": {"api_keys": [top]}, "routes": [again]}, {})
    for other, says in [
        ({"name": "svc", "sha256": "cd" * 32}, "'svc' is another key (or user or tenant)"),
        ({**top, "tenant": "acme"}, "'svc' is another key (or user or tenant)"),
        ({"name": "bot", "sha256": "ab" * 32}, "'bot' has the sha256 of 'svc'"),
    ]:
        route = {"path": "/p/", "handler": "anthropic", "auth": {"api_keys": [other]}}
        found = problems_of({"auth": {"api_keys": [top]}, "routes": [again, route]})
        assert len(found) == 1
        assert found[0].startswith(f"routes.1.auth.api_keys: {says}")
        assert "auth.api_keys" in found[0].split(":", 1)[1]


def test_allowed_tenants_where_nobody_is_identified_is_a_config_error() -> None:
    message = (
        "allowed_tenants restricts nothing with mode 'none' (no caller is identified):"
        " set a mode and credentials, or allowed_tenants: null"
    )
    route = {"path": "/v1/", "handler": "anthropic", "auth": {"allowed_tenants": ["acme"]}}
    assert problems_of({"routes": [route]}) == [f"routes.0.auth: {message}"]
    keys = {"api_keys": [{"name": "ci", "sha256": "ab" * 32, "tenant": "acme"}]}
    opened = {"path": "/open", "handler": "prompt", "auth": {"mode": "none"}}
    found = problems_of({"auth": {**keys, "allowed_tenants": ["acme"]}, "routes": [opened]})
    assert found == [f"routes.0.auth: {message}"]
    # Said outright, the route is open; a model list needs no caller.
    opened["auth"] = {"mode": "none", "allowed_tenants": None, "allowed_models": ["m"]}
    loader.validate({"auth": {**keys, "allowed_tenants": ["acme"]}, "routes": [opened]}, {})


@pytest.mark.parametrize(
    "url",
    ["http://idp.example/jwks", "http://10.0.0.7:8080/jwks", "http://localhost.evil.test/jwks",
     "http://0.0.0.0/jwks", "http://[fe80::1]/jwks"],
)  # fmt: skip
def test_a_jwks_url_over_plain_http_is_a_config_error(url: str) -> None:
    """Key material over plain HTTP lets anyone on the path swap in a key and mint tokens."""
    found = problems_of({"auth": {"jwt": {"jwks_url": url, "algorithms": ["RS256"]}}})
    assert len(found) == 1
    assert found[0].startswith("auth.jwt.jwks_url: must be an https:// URL")
    # A route's own block is checked the same way.
    route = {"path": "/v1/", "handler": "anthropic",
             "auth": {"mode": "required", "jwt": {"jwks_url": url, "algorithms": ["RS256"]}}}  # fmt: skip
    found = problems_of({"routes": [route]})
    assert [p.partition(":")[0] for p in found] == ["routes.0.auth.jwt.jwks_url"]


@pytest.mark.parametrize(
    "url",
    ["https://idp.example/jwks", "http://127.0.0.1:8080/jwks", "http://127.9.8.7/jwks",
     "http://localhost:9000/jwks", "http://LOCALHOST./jwks", "http://[::1]:9000/jwks"],
)  # fmt: skip
def test_a_jwks_url_over_https_or_on_a_loopback_host_is_accepted(url: str) -> None:
    config = loader.validate({"auth": {"jwt": {"jwks_url": url, "algorithms": ["RS256"]}}}, {})
    assert config.auth.jwt is not None
    assert config.auth.jwt.jwks_url == url


def test_routes_sharing_a_jwks_url_must_share_its_schedule() -> None:
    """One URL is one key set, fetched on one schedule: a route asking for another one
    would silently get the first route's, so the config is refused naming both."""
    jwks = {"jwks_url": "https://idp.example/jwks", "algorithms": ["RS256"]}
    routes: list[dict[str, Any]] = [
        {"path": "/v1/", "handler": "anthropic"},
        {"path": "/api/stream-response", "handler": "prompt",
         "auth": {"jwt": {"jwks_min_refresh_seconds": 60}}},
        {"path": "/api/chat", "handler": "ui", "auth": {"jwt": {"jwks_refresh_seconds": 60}}},
    ]  # fmt: skip
    found = problems_of({"auth": {"jwt": jwks}, "routes": routes})
    assert [p.partition(":")[0] for p in found] == ["routes.1.auth.jwt", "routes.2.auth.jwt"]
    assert "routes.0's (/v1/)" in found[0]
    # The same schedule everywhere, or another URL, is fine.
    same = [{**route, "auth": {"jwt": {"jwks_refresh_seconds": 60}}} for route in routes]
    assert loader.validate({"auth": {"jwt": jwks}, "routes": same}, {}).routes
    other = {"jwt": {"jwks_url": "https://other.example/jwks", "jwks_refresh_seconds": 60}}
    apart = [routes[0], {**routes[2], "auth": other}]
    assert loader.validate({"auth": {"jwt": jwks}, "routes": apart}, {}).routes


def test_a_jwt_realm_names_its_key_source_by_fingerprints_never_the_secret(
    tmp_path: Path,
) -> None:
    """The realm (who vouches for the tokens' names) changes with the secret and with the
    key a key file holds, not only its path, and holds neither the secret nor its plain
    SHA-256 (a keyed hash of it)."""
    secret = "k" * 40
    path = tmp_path / "issuer.pem"
    path.write_bytes(public_pem(new_key("RS256")))
    config = JWTConfig(secret=SecretStr(secret), algorithms=["HS256", "RS256"],
                       public_key_file=path, issuer="https://issuer.test")  # fmt: skip
    realm = config.realm()
    assert realm == config.realm()
    assert realm != config.model_copy(update={"secret": SecretStr("m" * 40)}).realm()
    assert realm != config.model_copy(update={"issuer": "https://other.test"}).realm()
    assert secret not in realm
    assert hashlib.sha256(secret.encode()).hexdigest()[:16] not in realm
    path.write_bytes(public_pem(new_key("RS256")))  # another deployment's key at that path
    assert config.realm() != realm
