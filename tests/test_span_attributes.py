"""Span attributes encode as the SDK encodes them, from a bounded cache of label pairs:
every plain value and key at the edges of its wire format, logged and dropped as by the
SDK; a full cache starts over; keys with many values leave the cache to the labels."""

from __future__ import annotations

import logging
from typing import Any

import pytest
from opentelemetry.sdk.trace import ReadableSpan

from sidecar.telemetry import span_attributes
from sidecar.telemetry.span_encoder import SpanEncoder
from sidecar.telemetry.spans import PlainSpan
from tests.support.otlp import RESOURCE, context, logged, sdk_bytes, shapes


def test_a_full_pair_cache_starts_over(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(span_attributes, "PAIR_CACHE_SIZE", 5)
    encoder = SpanEncoder()
    spans = shapes()
    for _ in range(3):
        assert encoder.serialize(spans) == sdk_bytes(spans)
    assert len(encoder.attributes.cached_keys()) <= 5


# Values the encoder writes itself, at the edges of their wire format, and their neighbours
# it hands to the SDK's function (out of int64, not UTF-8, other types).
PLAIN_VALUES: dict[str, Any] = {
    "empty": "", "ascii": "v", "unicode": "é✓😀", "125 bytes": "x" * 125, "126 bytes": "x" * 126,
    "long": "y" * 300, "very long": "z" * 20_000, "surrogate": "a\ud800",
    "zero": 0, "127": 127, "128": 128, "16383": 16383, "16384": 16384, "int64 max": 2**63 - 1,
    "minus one": -1, "int64 min": -(2**63), "past int64 max": 2**63, "past int64 min": -(2**63) - 1,
    "true": True, "false": False,
    "float zero": 0.0, "minus zero": -0.0, "nan": float("nan"), "minus nan": -float("nan"),
    "inf": float("inf"), "minus inf": -float("inf"), "tiny": 5e-324, "huge": 1e308,
    "strs": ("a", "é"), "one str": ("end_turn",), "no strs": (), "bad strs": ("\udc80",),
    "mixed": ("a", 1), "none": None, "bytes": b"\x00",
}  # fmt: skip
ODD_KEYS: dict[Any, Any] = {
    "": "empty key", "k" * 200: "long key", "ключ": 1, "\ud800": "surrogate key", 5: "int key",
    "k" * 120: 1.5,  # with its value, a `KeyValue` of more than 127 bytes
}  # fmt: skip


@pytest.mark.parametrize("readable", [ReadableSpan, PlainSpan])
def test_every_plain_value_and_key_encodes_to_the_sdks_bytes(
    readable: type[ReadableSpan], caplog: pytest.LogCaptureFixture
) -> None:
    """Each value alone, then all at once, each twice (the second from the caches)."""
    spans = [
        readable(key, context(1, i + 1), None, RESOURCE, {key: value}, start_time=1)
        for i, (key, value) in enumerate(PLAIN_VALUES.items())
    ]
    spans.append(readable("all", context(2, 1), None, RESOURCE, PLAIN_VALUES, start_time=1))
    spans.append(readable("odd keys", context(2, 2), None, RESOURCE, ODD_KEYS, start_time=1))
    encoder = SpanEncoder()
    for _ in range(2):
        caplog.clear()
        with caplog.at_level(logging.DEBUG):
            expected = sdk_bytes(spans)
            sdk_logs = logged(caplog)
            caplog.clear()
            assert encoder.serialize(spans) == expected
            assert logged(caplog) == sdk_logs
        # Out of int64, not UTF-8, a key not text: logged and dropped each time, as by the SDK.
        assert len(sdk_logs) == 2 * 4 + 2
    for span in spans:
        assert encoder.serialize([span]) == sdk_bytes([span]), span.name


def test_keys_with_many_values_leave_the_pair_cache_to_the_labels() -> None:
    """Ids and counts are written each time once their key has had `WIDE_KEY` values kept;
    the labels stay cached (the cache never fills and starts over)."""
    labels: dict[str, Any] = {
        "gen_ai.request.model": "m", "http.response.status_code": 200, "stream": True,
    }  # fmt: skip
    spans = [
        ReadableSpan(
            "chat", context(i + 1, 1), None, RESOURCE,
            {**labels, "request_id": f"req_{i}", "tokens": 1000 + i, "wait": i / 7},
            start_time=1,
        )
        for i in range(3 * span_attributes.WIDE_KEY)
    ]  # fmt: skip
    encoder = SpanEncoder()
    assert encoder.serialize(spans) == sdk_bytes(spans)
    assert encoder.attributes.wide_keys() == {"request_id", "tokens"}
    assert len(encoder.attributes.cached_keys()) == len(labels) + 2 * span_attributes.WIDE_KEY
    assert set(encoder.attributes.cached_keys()) == {*labels, "request_id", "tokens"}
    assert encoder.serialize(spans[::-1]) == sdk_bytes(spans[::-1])
