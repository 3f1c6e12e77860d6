"""The telemetry section."""

from __future__ import annotations

import pytest

from sidecar.config import TelemetryConfig
from tests.support.config import problems_of


def test_the_flush_delay_is_a_checked_config_key() -> None:
    assert TelemetryConfig().log_flush_seconds == 0.02
    for bad in (-1, 11, "soon"):
        with pytest.raises(ValueError, match="log_flush_seconds"):
            TelemetryConfig(log_flush_seconds=bad)


@pytest.mark.parametrize(
    "endpoint",
    ["http://collector:4318/?api_key=OtlpKey123", "https://collector:4318/otlp?x=1&key=OtlpKey123",
     "http://collector:4318#OtlpKey123"],
)  # fmt: skip
def test_an_otlp_endpoint_with_a_query_or_fragment_is_refused_without_echoing_it(
    endpoint: str,
) -> None:
    # The exporters join `/v1/traces` after it (into the query) and log the URL on errors.
    problems = problems_of({"telemetry": {"otlp_endpoint": endpoint}})
    assert len(problems) == 1
    assert problems[0].startswith("telemetry.otlp_endpoint: must be a base URL")
    assert "OtlpKey123" not in problems[0]
    assert TelemetryConfig(otlp_endpoint="http://collector:4318/base/").otlp_endpoint


KEY = "k3y-" + "x" * 40  # a key long enough (44 bytes)


def test_a_user_hash_key_is_a_secret_of_at_least_32_bytes() -> None:
    config = TelemetryConfig(user_hash_key=KEY)
    assert config.user_hash_key is not None
    assert config.user_hash_key.get_secret_value() == KEY
    assert KEY not in repr(config)
    assert TelemetryConfig().user_hash_key is None  # unset: plain SHA-256 pseudonyms


@pytest.mark.parametrize(
    ("written", "env"),
    [("ShortKey-31-bytes-long-xxxxxxxx", {}),
     ("${HASH_KEY}", {"HASH_KEY": "ShortKey-from-the-environment"}),
     ("${HASH_KEY:-}", {})],
    ids=["literal", "from_env", "empty"],
)  # fmt: skip
def test_a_short_user_hash_key_is_refused_without_echoing_it(
    written: str, env: dict[str, str]
) -> None:
    problems = problems_of({"telemetry": {"user_hash_key": written}}, env)
    assert len(problems) == 1
    assert problems[0].startswith("telemetry.user_hash_key: must be at least 32 bytes")
    assert "ShortKey" not in problems[0]


@pytest.mark.parametrize("mode", ["plain", "none"])
def test_a_user_hash_key_without_hashed_pseudonyms_is_refused(mode: str) -> None:
    problems = problems_of({"telemetry": {"user_attribute": mode, "user_hash_key": KEY}})
    assert len(problems) == 1
    assert "user_hash_key is set but user_attribute is" in problems[0]
    assert KEY not in problems[0]
