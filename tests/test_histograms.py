"""The sidecar's histograms: attribute-set identity, ignored amounts, and whole points for a
reader collecting on another thread while measurements keep arriving.

(That their exports equal the SDK's histograms' is tests/test_meters.py.)"""

from __future__ import annotations

import itertools
import threading

import pytest
from opentelemetry.sdk.metrics import AlwaysOffExemplarFilter
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.util.types import AttributeValue

from sidecar.telemetry.histograms import AttributeSet, Histogram, key_of
from sidecar.telemetry.meters import SidecarMeterProvider
from tests.support.twins import DELTA_PREFERENCE, points_of

BOUNDS = [1.0, 10.0, 100.0]


def histogram_with(*readers: InMemoryMetricReader) -> tuple[SidecarMeterProvider, Histogram]:
    provider = SidecarMeterProvider(
        metric_readers=readers, exemplar_filter=AlwaysOffExemplarFilter()
    )
    histogram = provider.get_meter("test").create_histogram(
        "h", unit="s", explicit_bucket_boundaries_advisory=BOUNDS
    )
    assert isinstance(histogram, Histogram)
    return provider, histogram


def test_an_attribute_set_is_one_set_whatever_its_order_or_spelling() -> None:
    attributes: dict[str, AttributeValue] = {"a": "x", "b": 1}
    keyed = AttributeSet(attributes)
    assert keyed == attributes  # a plain dict to everyone else
    assert key_of(keyed) == key_of({"b": 1, "a": "x"}) == keyed.key
    assert key_of(None) == key_of({})
    # Unhashable sequence values count by their items, as in the SDK's hash of the set.
    assert key_of({"l": ["p", "q"]}) == key_of({"l": ("p", "q")}) != key_of({"l": ("q", "p")})


def test_points_count_by_attribute_set_and_bound() -> None:
    reader = InMemoryMetricReader()
    provider, histogram = histogram_with(reader)
    keyed = AttributeSet({"route": "/a", "status": 200})
    for amount in (0.5, 1.0, 1.5, 100.0, 1000.0):
        histogram.record(amount, keyed)
    histogram.record(3, {"status": 200, "route": "/a"})
    histogram.record(3, {"l": ["p"]})
    histogram.record(4, {"l": ("p",)})
    a, listed = points_of(reader.get_metrics_data(), "h")
    assert a.attributes == {"route": "/a", "status": 200}
    assert a.attributes is not keyed  # copied, as the SDK copies
    # Bounds are upper-inclusive: 1.0 in (0, 1], 100.0 in (10, 100].
    assert (a.count, a.bucket_counts, a.sum, a.min, a.max) == (6, (2, 2, 1, 1), 1106.0, 0.5, 1000.0)
    assert (listed.attributes, listed.count) == ({"l": ["p"]}, 2)  # the first spelling kept
    provider.shutdown()


def test_amounts_the_sdk_ignores_are_ignored_with_its_warning(
    caplog: pytest.LogCaptureFixture,
) -> None:
    reader = InMemoryMetricReader()
    provider, histogram = histogram_with(reader)
    for amount in (-0.5, float("nan"), float("inf"), -float("inf")):
        histogram.record(amount)
    histogram.record(-0.0)  # not negative
    (point,) = points_of(reader.get_metrics_data(), "h")
    assert (point.count, point.sum) == (1, 0.0)
    messages = [record.getMessage() for record in caplog.records]
    assert messages.count("Record amount must be non-negative on Histogram h.") == 1
    assert sum("is not finite on Histogram h, ignoring measurement" in m for m in messages) == 3
    provider.shutdown()


def test_a_reader_on_another_thread_sees_whole_points_while_measurements_arrive() -> None:
    cumulative, delta = InMemoryMetricReader(), InMemoryMetricReader(DELTA_PREFERENCE)
    provider, histogram = histogram_with(cumulative, delta)
    amounts = [n % 200 for n in range(30_000)]
    prefix = list(itertools.accumulate(amounts, initial=0))  # sum of the first k amounts
    done = threading.Event()

    def record() -> None:
        for amount in amounts:
            histogram.record(amount, {"k": "v"})
        done.set()

    recorder = threading.Thread(target=record)
    recorder.start()
    counted = delta_counted = collections = 0
    while True:
        finished = done.is_set()
        for point in points_of(cumulative.get_metrics_data(), "h"):
            # Whole: the sum is exactly that of the first `count` amounts, never ahead or behind.
            assert point.count >= counted
            assert point.sum == prefix[point.count]
            counted = point.count
        for point in points_of(delta.get_metrics_data(), "h"):
            end = delta_counted + point.count
            assert point.sum == prefix[end] - prefix[delta_counted]
            assert sum(point.bucket_counts) == point.count
            delta_counted = end
        collections += 1
        if finished:
            break
    recorder.join()
    assert collections > 1
    assert counted == delta_counted == len(amounts)
    provider.shutdown()


def test_a_histogram_no_reader_collects_keeps_nothing() -> None:
    provider, histogram = histogram_with()
    histogram.record(1.0, {"k": "v"})
    assert histogram.collect(object(), 0) is None
    provider.shutdown()
