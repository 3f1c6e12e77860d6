"""The auth section: credentials required, JWT rules, API key hashes."""

from __future__ import annotations

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
