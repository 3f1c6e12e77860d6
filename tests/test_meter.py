"""The sidecar's meter: histograms named, bounded and deduplicated as the SDK's would be,
the SDK's own instruments otherwise, and synchronous ones noting their first measurement."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from opentelemetry.metrics import CallbackOptions, Observation
from opentelemetry.sdk.metrics import AlwaysOffExemplarFilter, MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader

from sidecar.telemetry.histograms import Histogram
from sidecar.telemetry.meter import DEFAULT_BOUNDS, SidecarMeter, advised_bounds
from tests.support.twins import points_of


@pytest.fixture
def meter() -> Iterator[tuple[SidecarMeter, list[str], list[Histogram], InMemoryMetricReader]]:
    """A sidecar meter over a real SDK meter, with what it reports kept in lists."""
    reader = InMemoryMetricReader()
    provider = MeterProvider(metric_readers=[reader], exemplar_filter=AlwaysOffExemplarFilter())
    first: list[str] = []
    adopted: list[Histogram] = []
    yield (
        SidecarMeter(provider.get_meter("m"), first.append, adopted.append),
        first,
        adopted,
        reader,
    )
    provider.shutdown()


def test_histograms_are_the_sidecars_named_and_deduplicated_as_the_sdks(
    meter: tuple[SidecarMeter, list[str], list[Histogram], InMemoryMetricReader],
) -> None:
    sidecar, _, adopted, _ = meter
    h = sidecar.create_histogram("Some.Latency", "s", "d", explicit_bucket_boundaries_advisory=[1])
    assert isinstance(h, Histogram)
    assert (h.name, h.unit, h.description) == ("some.latency", "s", "d")  # as the SDK exports
    again = sidecar.create_histogram(
        "some.latency", "s", "d", explicit_bucket_boundaries_advisory=[5]
    )
    assert again is h  # one instrument; the first advice kept, as by the SDK
    assert adopted == [h]


def test_bounds_follow_the_advice_as_the_sdk_reads_it() -> None:
    assert advised_bounds([1, 2.5]) == [1, 2.5]
    assert advised_bounds([]) == []  # one bucket
    assert advised_bounds(None) == DEFAULT_BOUNDS
    assert advised_bounds(["a"]) == DEFAULT_BOUNDS  # type: ignore[list-item]  # advice dropped
    for bad in ([2, 1], [1, 1], [float("inf")]):
        with pytest.raises(ValueError, match="finite and increasing"):
            advised_bounds(bad)


def test_synchronous_instruments_note_their_first_kept_measurement_once(
    meter: tuple[SidecarMeter, list[str], list[Histogram], InMemoryMetricReader],
) -> None:
    sidecar, first, _, reader = meter
    counter = sidecar.create_counter("c")
    counter.add(-1)  # ignored by the SDK: not listed yet
    assert first == []
    counter.add(2)
    assert "add" in vars(counter)  # the SDK's own method from now on
    counter.add(3)
    up_down = sidecar.create_up_down_counter("u")
    up_down.add(-4)
    gauge = sidecar.create_gauge("g")
    gauge.set(float("nan"))  # ignored by the SDK
    gauge.set(7)
    assert first == ["c", "u", "g"]
    data = reader.get_metrics_data()
    assert [p.value for n in ("c", "u", "g") for p in points_of(data, n)] == [5, -4, 7]


def test_observable_instruments_are_the_sdks(
    meter: tuple[SidecarMeter, list[str], list[Histogram], InMemoryMetricReader],
) -> None:
    sidecar, first, _, reader = meter

    def observe(_options: CallbackOptions) -> list[Observation]:
        return [Observation(2, {"k": "v"})]

    sidecar.create_observable_counter("oc", [observe])
    sidecar.create_observable_up_down_counter("ou", [observe])
    sidecar.create_observable_gauge("og", [observe])
    data = reader.get_metrics_data()
    assert [p.value for n in ("oc", "ou", "og") for p in points_of(data, n)] == [2, 2, 2]
    assert first == []  # listed by the SDK when first observed, not noted here
