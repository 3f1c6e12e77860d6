"""The span queue: spans kept as they end, encoded once, taken in batches that join into the
SDK's request, the oldest dropped when full (also from a batch put back)."""

from __future__ import annotations

import logging
from collections.abc import Sequence

import pytest
from opentelemetry.sdk.trace import ReadableSpan

from sidecar.telemetry.span_encoder import SpanEncoder
from sidecar.telemetry.span_queue import SpanQueue
from tests.support.otlp import OTHER, RESOURCE, SCOPE, context, sdk_bytes

LOG = logging.getLogger("tests.span_queue")


def spans(count: int, start: int = 0) -> list[ReadableSpan]:
    """Spans in runs of two resources and scopes: 0-1 one group, 2 another, 3-4 the first..."""
    return [
        ReadableSpan(
            f"span {n}", context(5, n + 1), None, OTHER if n % 3 == 2 else RESOURCE, {"n": n},
            start_time=n + 1, end_time=n + 2, instrumentation_scope=None if n % 3 == 2 else SCOPE,
        )
        for n in range(start, start + count)
    ]  # fmt: skip


def queue(max_size: int, batch_size: int) -> tuple[SpanQueue, SpanEncoder]:
    encoder = SpanEncoder()
    return SpanQueue(encoder, max_size, batch_size, LOG), encoder


def take(queue: SpanQueue, encoder: SpanEncoder) -> tuple[bytes, int]:
    batch, count = queue.take()
    return encoder.request(batch), count


def add(queue: SpanQueue, ended: Sequence[ReadableSpan]) -> None:
    for span in ended:
        queue.add(span)


def test_spans_are_kept_until_encoded_and_batches_are_the_sdks_requests() -> None:
    ended = spans(7)
    waiting, encoder = queue(10, 4)
    add(waiting, ended)
    assert (len(waiting.ended), len(waiting.entries), len(waiting)) == (7, 0, 7)
    assert not waiting.full()  # nothing encoded yet
    waiting.encode()
    assert (len(waiting.ended), len(waiting.entries)) == (0, 7)
    assert waiting.full()
    assert take(waiting, encoder) == (sdk_bytes(ended[:4]), 4)
    assert take(waiting, encoder) == (sdk_bytes(ended[4:]), 3)
    assert take(waiting, encoder) == (b"", 0)


def test_a_full_queue_drops_its_oldest_span_encoded_or_not(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, LOG.name)
    ended = spans(8)
    waiting, encoder = queue(4, 4)
    add(waiting, ended[:3])
    waiting.encode()
    add(waiting, ended[3:6])  # 0 and 1 go, encoded
    add(waiting, ended[6:])  # 2 and 3 go: 2 encoded, 3 not yet
    assert len(waiting) == 4
    waiting.encode()
    assert take(waiting, encoder) == (sdk_bytes(ended[4:]), 4)
    messages = [(record.getMessage(), record.__dict__.get("spans")) for record in caplog.records]
    assert messages == [
        ("span queue full: the oldest spans are dropped until an export makes room", None),
        ("spans dropped: the span queue was full", 4),
    ]


def test_a_batch_put_back_goes_first_and_loses_its_oldest_spans_when_there_is_no_room(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, LOG.name)
    ended = spans(9)
    waiting, encoder = queue(6, 4)
    add(waiting, ended[:6])
    waiting.encode()
    batch, count = waiting.take()  # 0-3, in three runs
    assert (len(batch), count) == (3, 4)
    add(waiting, ended[6:])  # 4-8 queued: room for one of the batch
    waiting.requeue(batch)
    waiting.encode()
    assert take(waiting, encoder) == (sdk_bytes(ended[3:7]), 4)
    assert take(waiting, encoder) == (sdk_bytes(ended[7:]), 2)
    assert [record.__dict__.get("spans") for record in caplog.records] == [3]


def test_a_batch_put_back_whole_when_there_is_room() -> None:
    ended = spans(6)
    waiting, encoder = queue(10, 3)
    add(waiting, ended[:3])
    waiting.encode()
    batch, _ = waiting.take()
    add(waiting, ended[3:])
    waiting.encode()
    waiting.requeue(batch)
    assert take(waiting, encoder) == (sdk_bytes(ended[:3]), 3)
    assert take(waiting, encoder) == (sdk_bytes(ended[3:]), 3)


def test_a_span_the_encoder_refuses_is_logged_and_dropped_alone(
    caplog: pytest.LogCaptureFixture,
) -> None:
    refused = ReadableSpan("refused", context(5, 99), None, RESOURCE, end_time=2**64)
    with pytest.raises(ValueError, match="out of range") as sdk:
        sdk_bytes([refused])
    ended = spans(3)
    waiting, encoder = queue(10, 10)
    add(waiting, [ended[0], refused, *ended[1:]])
    waiting.encode()
    assert take(waiting, encoder) == (sdk_bytes(ended), 3)
    assert caplog.messages == [f"Failed to encode span batch: {sdk.value}"]
