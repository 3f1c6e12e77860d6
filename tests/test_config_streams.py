"""The resume and cache sections: defaults and values checked with their paths."""

from __future__ import annotations

import pytest

from sidecar import loader
from tests.support.config import problems_of


def test_resume_settings_are_checked_with_their_paths() -> None:
    cases = [
        ({"resume": {"store": "redis"}}, "resume.redis_url or quotas.redis_url"),
        ({"resume": {"ttl_seconds": 0}}, "resume.ttl_seconds"),
        ({"resume": {"on_store_error": "maybe"}}, "resume.on_store_error"),
        ({"resume": {"redis_url": "http://x"}}, "resume.redis_url"),
        ({"routes": [{"path": "/x", "handler": "prompt", "resume": {"ttl_seconds": 3}}]},
         "routes.0.resume.ttl_seconds"),
    ]  # fmt: skip
    for data, where in cases:
        with pytest.raises(loader.ConfigError) as failed:
            loader.validate(data, {})
        assert any(where in problem for problem in failed.value.problems), failed.value.problems
    # A route cannot turn on what the top level turned off (no store is opened for it).
    route = {"path": "/x", "handler": "anthropic", "resume": {"enabled": True}}
    assert problems_of({"resume": {"enabled": False}, "routes": [route]}) == [
        "routes.0.resume.enabled: resume is off for every route (resume.enabled: false); "
        "turn it on at the top level, and off on the routes that should not resume"
    ]
    # The Redis store without a URL is reported at its section, beside the file's other
    # problems, not as one unplaced line hiding them.
    found = problems_of({"resume": {"store": "redis"}, "cache": {"size": 1}})
    assert sorted(found) == [
        "cache.size: unknown key",
        "resume: store 'redis' needs resume.redis_url or quotas.redis_url",
    ]
    route["resume"] = {"enabled": False}
    loader.validate({"resume": {"enabled": False}, "routes": [route]}, {})
    # The Redis store falls back to the quota store's URL.
    config = loader.validate(
        {"quotas": {"redis_url": "redis://r:6379/0"}, "resume": {"store": "redis"}}, {}
    )
    assert config.resume_redis_url is not None
    assert config.resume_redis_url.get_secret_value() == "redis://r:6379/0"


def test_cache_defaults_are_off_memory_tenant_scoped() -> None:
    cache = loader.validate({}).cache
    assert (cache.enabled, cache.store, cache.scope, cache.replay) == (
        False, "memory", "tenant", "instant",
    )  # fmt: skip
    assert (cache.ttl_seconds, cache.max_entries, cache.max_bytes) == (3600, 1000, 67108864)
    assert not cache.include_sampled
    assert not cache.charge_hits
    assert cache.redis_url is None


def test_cache_bad_values_are_errors_with_their_path() -> None:
    found = problems_of({"cache": {"scope": "team", "replay": "slow", "max_entries": 0, "ttl": 5}})
    assert any(p.startswith("cache.scope:") for p in found), found
    assert any(p.startswith("cache.replay:") for p in found), found
    assert any(p.startswith("cache.max_entries:") for p in found), found
    assert any(p.startswith("cache.ttl:") for p in found), found
