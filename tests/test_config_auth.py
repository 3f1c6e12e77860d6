"""The auth section: credentials required, JWT rules, API key hashes."""

from __future__ import annotations

from sidecar import loader
from tests.support.config import problems_of


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


def test_api_key_hash_must_be_sha256_hex() -> None:
    found = problems_of("auth: {api_keys: [{name: ci, sha256: nothex}]}")
    assert found == ["auth.api_keys.0.sha256: must be the 64-character hex SHA-256 of the key"]


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
    assert found == ["auth: api_keys 'old' and 'new' have the same sha256: one entry per key"]


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
