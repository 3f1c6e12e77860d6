"""Store outages are logged once when they start and once when they end, not per request."""

from __future__ import annotations

import logging

import pytest

from sidecar.outage import Outage


def test_an_outage_is_one_warning_and_its_end_one_info_line(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO)
    outage = Outage(logging.getLogger("sidecar.test"), "some store")
    outage.answered()  # nothing failed: nothing to say
    for n in range(3):
        outage.failed("redis: ConnectionError", f"req_{n}")
    outage.answered()
    outage.answered()
    outage.failed("redis: TimeoutError")
    lines = [(r.levelname, r.getMessage(), getattr(r, "error", None)) for r in caplog.records]
    assert lines == [
        ("WARNING", "some store failed", "redis: ConnectionError"),
        ("INFO", "some store recovered", None),
        ("WARNING", "some store failed", "redis: TimeoutError"),
    ]
    assert getattr(caplog.records[0], "request_id", None) == "req_0"  # the first it failed
