"""The telemetry section."""

from __future__ import annotations

import pytest

from sidecar.config import TelemetryConfig


def test_the_flush_delay_is_a_checked_config_key() -> None:
    assert TelemetryConfig().log_flush_seconds == 0.02
    for bad in (-1, 11, "soon"):
        with pytest.raises(ValueError, match="log_flush_seconds"):
            TelemetryConfig(log_flush_seconds=bad)
