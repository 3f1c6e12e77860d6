"""The sidecar's meter provider exports exactly what the SDK's would: the same measurements
recorded into the SDK's histograms and into the sidecar's give byte-identical Prometheus
text, in-memory data and OTLP requests (timestamps aside), cumulative and delta, metric
order included; where the SDK would aggregate differently the SDK keeps its histograms;
and the private SDK surface the provider relies on is what it expects."""

from __future__ import annotations

import inspect
import math
from time import time_ns
from typing import Any

import pytest
from opentelemetry.metrics import Meter
from opentelemetry.sdk.metrics import (
    AlwaysOffExemplarFilter,
    AlwaysOnExemplarFilter,
    MeterProvider,
)
from opentelemetry.sdk.metrics import Histogram as SdkHistogram
from opentelemetry.sdk.metrics._internal.instrument import _Histogram
from opentelemetry.sdk.metrics.export import (
    AggregationTemporality,
    InMemoryMetricReader,
    MetricReader,
)
from opentelemetry.sdk.metrics.view import (
    ExplicitBucketHistogramAggregation,
    ExponentialBucketHistogramAggregation,
    View,
)

from sidecar.config import TelemetryConfig
from sidecar.telemetry.health import Health
from sidecar.telemetry.histograms import AttributeSet, Histogram
from sidecar.telemetry.instruments import Instruments
from sidecar.telemetry.meters import SidecarMeterProvider, histogram_view
from sidecar.telemetry.providers import build_providers
from sidecar.telemetry.semconv import DEFAULT, LATEST, GenAiNames
from tests.support.twins import (
    DELTA_PREFERENCE,
    LIMIT,
    Twin,
    comparable,
    make_twin,
    points_of,
)


def call(inst: Instruments, model: str, seconds: float, status: int = 200) -> None:
    """The points of one Claude call, as core and streams record them."""
    inst.queue_wait.record(seconds / 10, {"sidecar.queue.admitted": True})
    metric = AttributeSet({
        "gen_ai.operation.name": "chat", "gen_ai.provider.name": "anthropic",
        "gen_ai.request.model": model, "server.address": "api.anthropic.com",
    })  # fmt: skip
    inst.operation_duration.record(seconds, metric)
    if not inst.names.latest:
        inst.token_usage.record(12, {**metric, "gen_ai.token.type": "input"})
        inst.token_usage.record(30, {**metric, "gen_ai.token.type": "output"})
    inst.time_to_first_chunk.record(seconds / 2, metric)
    inst.time_per_output_chunk.record(seconds / 30, metric)
    inst.server_ttft.record(seconds / 2 + 0.001, metric)
    inst.streams.add(1, {**metric, "sidecar.stream.outcome": "completed"})
    inst.request_duration.record(
        seconds + 0.001,
        {"http.request.method": "POST", "url.scheme": "http", "http.route": "/api",
         "http.response.status_code": status},
    )  # fmt: skip


def scenario(twin: Twin, names: GenAiNames) -> None:
    """Calls, edge values, first uses between collections, idle cycles and overflow."""
    meter = twin.provider.get_meter("claude-sidecar")
    inst, health = Instruments(meter, names), Health(meter)
    twin.collect()  # observable instruments only: they are listed before any histogram
    inst.cache_lookups.add(1, {"sidecar.cache.result": "miss"})  # an SDK counter first
    inst.active_streams.add(1, {"sidecar.route": "/api"})
    call(inst, "claude-a", 0.1)
    health.readiness({})
    twin.collect()

    # Float sums that round differently by grouping, bucket bounds, and edge amounts.
    duration = inst.operation_duration
    for amount in (0.1, 0.2, 0.3, 0.01, 0.02, 81.92, 0, -0.0, 1e9, 7):
        duration.record(amount, {"server.address": "x", "gen_ai.request.model": "m"})
    duration.record(0.4, {"gen_ai.request.model": "m", "server.address": "x"})  # same set
    duration.record(0.5)
    for bad in (-1.0, math.nan, math.inf):
        duration.record(bad, {"server.address": "x"})  # ignored, as by the SDK
    inst.server_tpot.record(0.02, {"gen_ai.request.model": "m"})  # first use after a collection
    inst.retries.add(1, {"sidecar.retry.reason": "429"})  # then an SDK counter's
    inst.queue_wait.record(0.3, {"sidecar.queue.admitted": False})
    call(inst, "claude-b", 1.5, status=500)
    health.reload("failure")
    twin.collect()

    inst.request_duration.record(0.2, {"http.route": "/only"})  # one set in this cycle
    twin.collect()

    for n in range(LIMIT + 5):  # past the readers' cardinality limit
        inst.request_duration.record(n / 100, {"http.route": f"/r{n}"})
    inst.request_duration.record(0.2, {"http.route": "/only"})
    twin.collect()
    for n in range(3):  # delta readers start a new cycle: new sets fit again
        inst.request_duration.record(n, {"http.route": f"/late{n}"})
    twin.collect()


@pytest.mark.parametrize("names", [DEFAULT, LATEST], ids=["default-names", "latest-names"])
@pytest.mark.parametrize("delta_periodic", [False, True], ids=["cumulative", "delta"])
def test_every_reader_exports_what_the_sdks_histograms_export(
    names: GenAiNames, delta_periodic: bool, caplog: pytest.LogCaptureFixture
) -> None:
    sdk, ours = make_twin(False, delta_periodic), make_twin(True, delta_periodic)
    assert isinstance(ours.provider, SidecarMeterProvider)
    assert ours.provider.owns_histograms
    for twin in (sdk, ours):
        scenario(twin, names)
        twin.provider.shutdown()
    assert len(sdk.exports) == len(ours.exports) == 6
    for theirs, mine in zip(sdk.exports, ours.exports, strict=True):
        assert comparable(mine) == comparable(theirs)
    # Non-trivially: histograms in every reader, the overflow point, and the delta cycles.
    last = ours.exports[4]
    for reader in ("cumulative", "delta", "periodic"):
        points = points_of(last[reader], "http.server.request.duration")
        assert len(points) == LIMIT + 1
        assert {"otel.metric.overflow": True} in [p.attributes for p in points]
    assert b"http_server_request_duration_seconds_bucket{" in last["prometheus"]
    (only,) = points_of(ours.exports[3]["delta"], "http.server.request.duration")
    assert only.attributes == {"http.route": "/only"}
    assert only.count == 1
    assert len(points_of(ours.exports[5]["delta"], "http.server.request.duration")) == 3
    ignored = [r.getMessage() for r in caplog.records if "ignoring measurement" in r.getMessage()]
    assert len(ignored) == 4  # nan and inf, on both providers, in the SDK's words


def test_start_times_are_the_first_measurement_cumulative_and_the_last_collection_delta() -> None:
    twin = make_twin(True)
    histogram = twin.provider.get_meter("m").create_histogram(
        "h", explicit_bucket_boundaries_advisory=[1.0]
    )
    before = time_ns()
    histogram.record(0.5, {"k": "v"})
    after = time_ns()
    first = twin.collect()
    histogram.record(2.0, {"k": "v"})
    second = twin.collect()
    (c1,), (c2,) = points_of(first["cumulative"], "h"), points_of(second["cumulative"], "h")
    assert before <= c1.start_time_unix_nano <= after <= c1.time_unix_nano
    assert c2.start_time_unix_nano == c1.start_time_unix_nano < c2.time_unix_nano
    assert (c2.count, c2.sum, c2.bucket_counts, c2.min, c2.max) == (2, 2.5, (1, 1), 0.5, 2.0)
    (d1,), (d2,) = points_of(first["delta"], "h"), points_of(second["delta"], "h")
    assert before <= d1.start_time_unix_nano <= after
    assert d2.start_time_unix_nano == d1.time_unix_nano < d2.time_unix_nano
    assert (d2.count, d2.sum, d2.bucket_counts, d2.min, d2.max) == (1, 2.0, (0, 1), 2.0, 2.0)
    twin.provider.shutdown()


def test_a_reader_added_later_sees_measurements_from_then_on_as_with_the_sdk() -> None:
    exports = []
    for kind in (MeterProvider, SidecarMeterProvider):
        first, late = InMemoryMetricReader(), InMemoryMetricReader()
        provider = kind(metric_readers=[first], exemplar_filter=AlwaysOffExemplarFilter())
        histogram = provider.get_meter("m").create_histogram(
            "h", explicit_bucket_boundaries_advisory=[1.0]
        )
        histogram.record(0.5, {"k": "v"})
        provider.add_metric_reader(late)
        histogram.record(3.0, {"k": "v"})
        exports.append(
            [(p.count, p.sum) for r in (first, late) for p in points_of(r.get_metrics_data(), "h")]
        )
        provider.shutdown()
    assert exports[0] == exports[1] == [(2, 3.5), (1, 3.0)]


def _meter_of(provider: MeterProvider) -> Meter:
    return provider.get_meter("m")


@pytest.mark.parametrize(
    "options",
    [
        {"exemplar_filter": AlwaysOnExemplarFilter()},
        {"views": [View(instrument_name="h", aggregation=ExplicitBucketHistogramAggregation([5]))]},
        {"aggregation": ExponentialBucketHistogramAggregation()},
        {"aggregation": ExplicitBucketHistogramAggregation([1, 2])},
    ],
    ids=["exemplars", "view", "exponential", "own-bounds"],
)
def test_histograms_stay_the_sdks_where_it_would_aggregate_them_otherwise(
    options: dict[str, Any],
) -> None:
    aggregation = options.pop("aggregation", None)
    reader = InMemoryMetricReader(
        preferred_aggregation={SdkHistogram: aggregation} if aggregation else None
    )
    options.setdefault("exemplar_filter", AlwaysOffExemplarFilter())
    provider = SidecarMeterProvider(metric_readers=[reader], **options)
    assert not provider.owns_histograms
    histogram = _meter_of(provider).create_histogram("h", explicit_bucket_boundaries_advisory=[1])
    assert isinstance(histogram, SdkHistogram)
    histogram.record(3.0)
    (point,) = points_of(reader.get_metrics_data(), "h")
    assert point.count == 1
    provider.shutdown()


def test_the_exporters_default_aggregation_and_delta_preference_are_taken_over(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_METRICS_TEMPORALITY_PREFERENCE", "delta")
    monkeypatch.setenv("OTEL_METRICS_EXEMPLAR_FILTER", "always_off")
    config = TelemetryConfig(prometheus=True, otlp_endpoint="http://127.0.0.1:9")
    providers = build_providers(config, None, None)
    assert providers is not None
    provider = providers.meter_provider
    assert isinstance(provider, SidecarMeterProvider)
    assert provider.owns_histograms
    prometheus, otlp = providers.readers
    assert histogram_view(prometheus)[0] is AggregationTemporality.CUMULATIVE
    assert histogram_view(otlp)[0] is AggregationTemporality.DELTA
    meter = provider.get_meter("claude-sidecar")
    assert isinstance(Instruments(meter).operation_duration, Histogram)
    provider.shutdown()


def test_the_private_sdk_surface_the_provider_relies_on() -> None:
    """If the SDK changes any of this, the provider must change with it."""
    # The reader calls the callback the provider set as `(reader, timeout_millis=...)`.
    assert "self._collect(self, timeout_millis=timeout_millis)" in inspect.getsource(
        MetricReader.collect
    )
    assert "self._collect = func" in inspect.getsource(MetricReader._set_collect_callback)
    reader = InMemoryMetricReader(
        preferred_temporality=DELTA_PREFERENCE, cardinality_limits={SdkHistogram: 7}
    )
    provider = SidecarMeterProvider(
        metric_readers=[reader], exemplar_filter=AlwaysOffExemplarFilter()
    )
    assert reader._collect is not None
    assert reader._collect.__name__ == "collect_with_histograms"
    assert isinstance(provider._sdk_config.exemplar_filter, AlwaysOffExemplarFilter)
    assert histogram_view(reader) == (AggregationTemporality.DELTA, 7, True)
    assert histogram_view(InMemoryMetricReader())[1] == 2000  # the SDK's default limit
    assert ExplicitBucketHistogramAggregation()._boundaries is None
    assert ExplicitBucketHistogramAggregation()._record_min_max is True
    # The readers' instrument class for histograms is the SDK's `_Histogram`.
    assert set(reader._instrument_class_temporality) >= {_Histogram}
    # A reader that collects as the SDK's does gets the histograms' points.
    histogram = _meter_of(provider).create_histogram("h", explicit_bucket_boundaries_advisory=[1])
    histogram.record(0.5)
    assert [p.count for p in points_of(reader.get_metrics_data(), "h")] == [1]
    provider.shutdown()
