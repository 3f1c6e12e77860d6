"""The policy sections: CORS lists and the quota store's Redis URL are checked at load."""

from __future__ import annotations

import pytest

from sidecar import loader
from sidecar.config import CorsConfig
from sidecar.fake_claude.server import RATE_LIMITS
from sidecar.upstream import RATELIMIT_PREFIX, RETURNED_RESPONSE_HEADERS
from tests.support.config import problems_of


@pytest.mark.parametrize(
    "url", ["localhost:6379", "http://127.0.0.1:6379/0", "redis://127.0.0.1:port/0"]
)
def test_redis_url_that_redis_cannot_use_is_a_config_error(url: str) -> None:
    secret = "s3cret-password"
    url = url.replace("127.0.0.1", f"user:{secret}@127.0.0.1")
    problems = problems_of({"quotas": {"store": "redis", "redis_url": url}})
    assert [p.split(":")[0] for p in problems] == ["quotas.redis_url"]
    assert secret not in " ".join(problems)


@pytest.mark.parametrize(
    "url", ["redis://127.0.0.1:6379/0", "rediss://:pw@redis.example:6380", "unix:///run/redis.sock"]
)
def test_redis_urls_redis_accepts_validate(url: str) -> None:
    config = loader.validate({"quotas": {"store": "redis", "redis_url": url}})
    assert config.quotas.redis_url is not None


@pytest.mark.parametrize("length", [0, 129, "wide"])
def test_an_ipv6_prefix_length_outside_1_to_128_is_a_config_error(length: object) -> None:
    for where in ({"quotas": {"ipv6_prefix_length": length}},
                  {"routes": [{"path": "/v1/", "handler": "anthropic",
                               "quotas": {"ipv6_prefix_length": length}}]}):  # fmt: skip
        problems = problems_of(where)
        assert len(problems) == 1
        assert "ipv6_prefix_length" in problems[0]


def test_the_ipv6_prefix_length_is_a_64_unless_set() -> None:
    assert loader.validate({}).quotas.ipv6_prefix_length == 64
    assert loader.validate({"quotas": {"ipv6_prefix_length": 1}}).quotas.ipv6_prefix_length == 1


@pytest.mark.parametrize(
    "key",
    ["requests_per_minute", "tokens_per_minute", "tokens_per_day", "concurrent_streams",
     "image_tokens", "remote_document_tokens"],
)  # fmt: skip
def test_a_quota_number_no_store_counts_exactly_is_a_config_error(key: str) -> None:
    """Redis's quota scripts count in doubles: up to 2**53 exactly; a limit of 10**30 made
    the token headers vanish and would not be enforced as written."""
    assert getattr(loader.validate({"quotas": {key: 2**53}}).quotas, key) == 2**53
    for where in ({"quotas": {key: 2**53 + 1}},
                  {"routes": [{"path": "/v1/", "handler": "anthropic",
                               "quotas": {key: 10**30}}]}):  # fmt: skip
        problems = problems_of(where)
        assert len(problems) == 1
        assert key in problems[0]


@pytest.mark.parametrize("method", ["*", "PO ST", "GET\r\nX-Evil: 1", ""])
def test_an_allowed_method_that_is_no_method_name_is_a_config_error(method: str) -> None:
    found = problems_of({"cors": {"allow_methods": ["GET", method]}})
    assert found == [f"cors.allow_methods: {method!r} is not a method name: list each method"]


def test_expose_headers_take_names_and_a_wildcard_only_without_credentials() -> None:
    found = problems_of({"cors": {"expose_headers": ["x-ok", "x bad"]}})
    assert found == ["cors.expose_headers: 'x bad' is not a header name"]
    found = problems_of({"cors": {"expose_headers": ["*"], "allow_credentials": True}})
    assert found == [
        "cors: '*' in expose_headers exposes nothing with allow_credentials: list the names"
    ]
    loader.validate({"cors": {"expose_headers": ["*"], "allow_methods": ["GET", "PATCH"]}}, {})


def test_every_header_passed_back_from_claude_is_exposed_by_default() -> None:
    """What the sidecar hands on from Claude's answer is there for the official JS SDK in
    a browser (`x-should-retry` decides its retries) and for page code: readable
    cross-origin with the default `cors.expose_headers`."""
    passed_on = set(RETURNED_RESPONSE_HEADERS)
    for family, _ in RATE_LIMITS:  # every `anthropic-ratelimit-*` family Claude sends
        passed_on |= {
            f"{RATELIMIT_PREFIX}{family}-{part}" for part in ("limit", "remaining", "reset")
        }
    assert passed_on - set(CorsConfig().expose_headers) == set()


# Fits RE2 alone (`re2.compile` takes it), but its DFA cannot run within RE2's memory budget:
# screening matches the rules as one RE2 set, by that DFA alone.
_DFA_TOO_LARGE = r"(?s)\pL{0,300}secret"
# Each of these fits, as a set of one too; twenty of them together do not.
_FIT_ALONE = [rf"(?s).{{0,900}}secret{n}" for n in range(20)]


@pytest.mark.parametrize("where", ["top", "route"])
def test_a_deny_rule_too_large_for_an_re2_set_is_a_config_error(where: str) -> None:
    screening = {"deny_patterns": ["(?i)fine", {"name": "wide", "pattern": _DFA_TOO_LARGE}]}
    config = (
        {"screening": screening}
        if where == "top"
        else {"routes": [{"path": "/v1/", "handler": "anthropic", "screening": screening}]}
    )
    prefix = "screening" if where == "top" else "routes.0.screening"
    problems = problems_of(config)
    assert [p.split(":")[0] for p in problems] == [f"{prefix}.deny_patterns.1.pattern"]
    assert "does not compile in RE2" in problems[0]
    assert "memory budget" in problems[0]


def test_deny_rules_that_fit_alone_but_not_together_are_a_config_error() -> None:
    problems = problems_of({"screening": {"deny_patterns": _FIT_ALONE}})
    assert [p.split(":")[0] for p in problems] == ["screening.deny_patterns"]
    assert "together" in problems[0]
    assert "fewer or smaller" in problems[0]
    loader.validate({"screening": {"deny_patterns": _FIT_ALONE[:10]}}, {})  # these fit
