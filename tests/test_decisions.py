"""From a quota policy to the subject counted, and from a store's decision to the client's
headers or rejection."""

from __future__ import annotations

from sidecar.config import QuotaConfig
from sidecar.identity import ANONYMOUS, Identity
from sidecar.quotas.decisions import ratelimit_headers, rejection_of, subject_of
from sidecar.quotas.stores import Decision, Window

JAN_1 = 1_767_225_600  # 2026-01-01T00:00:00Z


def test_a_user_is_counted_within_its_tenant_and_its_realm() -> None:
    policy = QuotaConfig(key="user")
    alice_a = Identity(method="jwt", user="alice", tenant="a")
    alice_b = Identity(method="jwt", user="alice", tenant="b")
    alice_a_route = Identity(method="jwt", user="alice", tenant="a", realm="route")
    subjects = {subject_of(policy, "global", who, "192.0.2.1")
                for who in (alice_a, alice_b, alice_a_route)}  # fmt: skip
    assert len(subjects) == 3
    assert subject_of(policy, "global", alice_a, "192.0.2.1") != subject_of(
        policy, "route", alice_a, "192.0.2.1"
    )


def test_a_caller_without_the_keyed_name_is_counted_by_address() -> None:
    keyed = {key: subject_of(QuotaConfig(key=key), "global", ANONYMOUS, "192.0.2.1")
             for key in ("client_ip", "user", "tenant", "api_key")}  # fmt: skip
    assert len(set(keyed.values())) == 1
    assert subject_of(QuotaConfig(key="user"), "global", ANONYMOUS, "192.0.2.2") != keyed["user"]


def test_an_ipv6_caller_is_counted_by_its_network_of_the_configured_length() -> None:
    """Every key falls back to the address, and there an IPv6 caller is its /64 (or the
    configured prefix): rotating addresses inside one allocation is one caller."""
    for key in ("client_ip", "user", "tenant", "api_key"):
        policy = QuotaConfig(key=key)
        one = subject_of(policy, "global", ANONYMOUS, "2001:db8:1:2::1")
        assert one == subject_of(policy, "global", ANONYMOUS, "2001:db8:1:2:ffff::9")
        assert one != subject_of(policy, "global", ANONYMOUS, "2001:db8:1:3::1")
    exact = QuotaConfig(key="client_ip", ipv6_prefix_length=128)
    assert subject_of(exact, "global", ANONYMOUS, "2001:db8:1:2::1") != subject_of(
        exact, "global", ANONYMOUS, "2001:db8:1:2::2"
    )
    mapped = subject_of(QuotaConfig(key="client_ip"), "global", ANONYMOUS, "::ffff:192.0.2.1")
    assert mapped == subject_of(QuotaConfig(key="client_ip"), "global", ANONYMOUS, "192.0.2.1")


def test_reset_times_are_whole_seconds_rounded_up_in_utc() -> None:
    def reset(at: float) -> str:
        decision = Decision(True, None, 0.0, Window(10, 9, at), None, JAN_1)
        return ratelimit_headers(decision)["anthropic-ratelimit-requests-reset"]

    assert reset(JAN_1) == "2026-01-01T00:00:00Z"
    assert reset(JAN_1 + 0.001) == "2026-01-01T00:00:01Z"


def test_headers_name_only_the_enabled_limits() -> None:
    decision = Decision(True, None, 0.0, None, Window(1000, 400, JAN_1 + 30.2), JAN_1)
    assert ratelimit_headers(decision) == {
        "anthropic-ratelimit-tokens-limit": "1000",
        "anthropic-ratelimit-tokens-remaining": "400",
        "anthropic-ratelimit-tokens-reset": "2026-01-01T00:00:31Z",
    }


def test_a_refusal_is_a_429_with_its_wait_rounded_up_and_the_limit_it_hit() -> None:
    policy = QuotaConfig(concurrent_streams=2)
    refused = Decision(False, "concurrency", 1.2, None, None, JAN_1)
    rejection = rejection_of(refused, policy, 0)
    assert rejection.status == 429
    assert rejection.headers["retry-after"] == "2"
    assert rejection.headers["retry-after-ms"] == "1200"
    assert "at most 2 concurrent streams per user" in rejection.message


def test_a_call_larger_than_the_smaller_token_limit_is_a_400_naming_it() -> None:
    policy = QuotaConfig(tokens_per_minute=1000, tokens_per_day=500)
    too_large = Decision(False, "too_large", 0.0, None, Window(500, 500, JAN_1), JAN_1)
    rejection = rejection_of(too_large, policy, 800)
    assert rejection.status == 400
    assert "retry-after" not in rejection.headers
    assert "up to 800 tokens" in rejection.message
    assert "token quota of 500" in rejection.message
