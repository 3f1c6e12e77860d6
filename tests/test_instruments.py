"""The metric instruments' own totals: cumulative sums per attribute set, the gauge of live
streams, and the overflow set past the cardinality limit."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from opentelemetry.sdk.metrics import (
    MeterProvider,
)
from opentelemetry.sdk.metrics.export import InMemoryMetricReader

from sidecar.telemetry.histograms import AttributeSet
from sidecar.telemetry.instruments import CARDINALITY_LIMIT, Instruments


def collected(reader: InMemoryMetricReader, name: str) -> list[Any]:
    data = reader.get_metrics_data()
    assert data is not None
    return [
        point
        for resource in data.resource_metrics
        for scope in resource.scope_metrics
        for metric in scope.metrics
        if metric.name == name
        for point in metric.data.data_points
    ]


@pytest.fixture
def instruments() -> Iterator[tuple[Instruments, InMemoryMetricReader]]:
    reader = InMemoryMetricReader()
    provider = MeterProvider(metric_readers=[reader])
    yield Instruments(provider.get_meter("test")), reader
    provider.shutdown()


def test_counter_totals_are_cumulative_sums_per_attribute_set(
    instruments: tuple[Instruments, InMemoryMetricReader],
) -> None:
    inst, reader = instruments
    inst.streams.add(1, {"a": "x", "b": 1})
    inst.streams.add(1, {"b": 1, "a": "x"})  # the same set, listed in another order
    inst.streams.add(1, {"a": "y", "b": 1})
    inst.cost.add(0.25, {"gen_ai.request.model": "m"})
    inst.cost.add(0.5, {"gen_ai.request.model": "m"})
    inst.active_streams.add(1, {"sidecar.route": "/r"})
    points = {
        tuple(sorted(p.attributes.items())): p.value for p in collected(reader, "sidecar.streams")
    }
    assert points == {(("a", "x"), ("b", 1)): 2, (("a", "y"), ("b", 1)): 1}
    (cost,) = collected(reader, "sidecar.cost.usd")
    assert cost.value == pytest.approx(0.75)
    (active,) = collected(reader, "sidecar.streams.active")
    assert active.value == 1
    inst.active_streams.add(-1, {"sidecar.route": "/r"})
    inst.streams.add(1, {"a": "x", "b": 1})
    (active,) = collected(reader, "sidecar.streams.active")
    assert active.value == 0  # a gauge back at zero, still reported
    by_a = {p.attributes["a"]: p.value for p in collected(reader, "sidecar.streams")}
    assert by_a == {"x": 3, "y": 1}  # cumulative across collections


def test_counter_totals_fold_into_overflow_past_the_cardinality_limit(
    instruments: tuple[Instruments, InMemoryMetricReader],
) -> None:
    inst, reader = instruments
    for n in range(CARDINALITY_LIMIT + 5):
        inst.rejections.add(1, {"http.route": f"/r{n}"})
    inst.rejections.add(1, {"http.route": "/r0"})  # a known set keeps counting on its own
    points = collected(reader, "sidecar.rejections")
    assert len(points) == CARDINALITY_LIMIT + 1
    (overflow,) = [p for p in points if p.attributes.get("otel.metric.overflow") is True]
    assert overflow.value == 5
    (first,) = [p for p in points if p.attributes.get("http.route") == "/r0"]
    assert first.value == 2


def test_counter_totals_take_an_attribute_set_with_its_key_as_the_same_set(
    instruments: tuple[Instruments, InMemoryMetricReader],
) -> None:
    inst, reader = instruments
    inst.streams.add(1, AttributeSet({"a": "x", "b": 1}))
    inst.streams.add(2, {"b": 1, "a": "x"})
    (point,) = collected(reader, "sidecar.streams")
    assert (point.attributes, point.value) == ({"a": "x", "b": 1}, 3)
