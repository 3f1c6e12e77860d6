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
