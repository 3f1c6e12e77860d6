"""`sidecar.retry_after`: only RFC 9110's values are waits, each bounded."""

from __future__ import annotations

import time
from email.utils import formatdate

import pytest

from sidecar.retry_after import (
    MAX_SECONDS,
    retry_after_ms_seconds,
    retry_after_seconds,
    retry_wait,
)

# Not delay-seconds (a non-negative integer of ASCII digits) nor an HTTP-date.
NOT_A_DELAY = [
    "-5", "-0", "+5", "1e9", "1.5", "nan", "inf", "-inf", "Infinity", "1_0", "0x10",
    "\u0663", "", " ", "soon", "5 s", "Wed, 99 Foo 2015 07:28:00 GMT", "Mon", "3 4",
]  # fmt: skip


@pytest.mark.parametrize("value", NOT_A_DELAY)
def test_a_value_that_is_no_delay_seconds_nor_date_is_none(value: str) -> None:
    assert retry_after_seconds(value) is None


@pytest.mark.parametrize(
    ("value", "seconds"),
    [("0", 0.0), ("7", 7.0), (" 7\t", 7.0), ("007", 7.0), ("86400", MAX_SECONDS),
     ("1000000000", MAX_SECONDS), ("9" * 20, MAX_SECONDS)],
)  # fmt: skip
def test_delay_seconds_are_read_and_clamped(value: str, seconds: float) -> None:
    assert retry_after_seconds(value) == seconds


def test_an_http_date_is_seconds_from_now_clamped_and_never_negative() -> None:
    soon = retry_after_seconds(formatdate(time.time() + 120, usegmt=True))
    assert soon is not None
    assert 100 < soon <= 120
    assert retry_after_seconds(formatdate(time.time() - 60, usegmt=True)) == 0
    assert retry_after_seconds(formatdate(time.time() + 10**8, usegmt=True)) == MAX_SECONDS
    assert retry_after_seconds("Fri, 31 Dec 9999 23:59:59 GMT") == MAX_SECONDS


@pytest.mark.parametrize("value", ["-5", "1e9", "nan", "inf", "1_000", ".5", "5.", "", "x"])
def test_retry_after_ms_that_is_no_number_of_milliseconds_is_none(value: str) -> None:
    assert retry_after_ms_seconds(value) is None


@pytest.mark.parametrize(
    ("value", "seconds"),
    [("0", 0.0), ("1500", 1.5), ("2.5", 0.0025), ("9" * 20, MAX_SECONDS)],
)
def test_retry_after_ms_is_read_in_seconds_and_clamped(value: str, seconds: float) -> None:
    assert retry_after_ms_seconds(value) == seconds


def test_retry_after_ms_wins_unless_it_is_invalid() -> None:
    assert retry_wait("5", "1500") == 1.5
    assert retry_wait("5", "-1") == 5.0
    assert retry_wait("-5", "nan") is None
    assert retry_wait(None, None) is None
