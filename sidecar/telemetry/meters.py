"""A MeterProvider whose histograms the sidecar aggregates itself, joined to every reader.

`SidecarMeterProvider` is the SDK's provider with one difference: its meters'
histograms are `sidecar.telemetry.histograms.Histogram` (no SDK work per measurement),
and each reader's collection gains their points: the same `Metric`s, in the same place,
with the same temporality and cardinality limit as the SDK's own histograms would
have (Prometheus, periodic OTLP and in-memory readers alike). Everything else is the SDK's.

Where the SDK would not aggregate histograms as explicit buckets with their advised
bounds and no exemplars (a view, a reader's own histogram aggregation, an exemplar filter
other than `always_off`), the provider leaves histograms to the SDK entirely.

The order of metrics within a scope is the SDK's: the order in which each first had a
point in that reader, a synchronous instrument at its first measurement (the meter's
instruments note it, `meter.SidecarMeter`), an observable one at the collection where
its callback first reported.

This module is the one place that uses SDK internals; tests/test_meters.py holds them to
their contract. The SDK (1.45) has no public hook for a producer of extra metrics:
- `MetricReader._collect` / `_set_collect_callback`: the callback the provider gives each
  reader; wrapped once per reader so its `MetricsData` gains the histograms;
- `MetricReader._instrument_class_temporality`, `_instrument_class_aggregation` and
  `_instrument_class_cardinality_limit`, keyed by the SDK's `_Histogram` class, and an
  `ExplicitBucketHistogramAggregation`'s `_boundaries` and `_record_min_max`;
- `MeterProvider._sdk_config.exemplar_filter`: the exemplar filter the SDK resolved (the
  one given, or its own reading of `OTEL_METRICS_EXEMPLAR_FILTER`).
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence
from dataclasses import replace
from functools import partial
from threading import Lock
from time import time_ns

from opentelemetry.metrics import Meter as ApiMeter
from opentelemetry.metrics import NoOpMeter
from opentelemetry.sdk.metrics import AlwaysOffExemplarFilter, ExemplarFilter, MeterProvider
from opentelemetry.sdk.metrics._internal.instrument import _Histogram
from opentelemetry.sdk.metrics.export import (
    AggregationTemporality,
    Metric,
    MetricReader,
    MetricsData,
    ResourceMetrics,
    ScopeMetrics,
)
from opentelemetry.sdk.metrics.view import (
    DefaultAggregation,
    ExplicitBucketHistogramAggregation,
    View,
)
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.util.instrumentation import InstrumentationScope
from opentelemetry.util.types import Attributes

from sidecar.telemetry.histograms import Histogram
from sidecar.telemetry.meter import SidecarMeter

_Rank = tuple[int, int]
_Id = tuple[InstrumentationScope, str]


def histogram_view(reader: MetricReader) -> tuple[AggregationTemporality, int, bool]:
    """`reader`'s temporality and cardinality limit for histograms, and whether it
    aggregates them as the default does: explicit buckets at the instrument's advised
    bounds, with min and max (the OTLP exporters ask for that explicitly)."""
    temporality = reader._instrument_class_temporality[_Histogram]
    limit = reader._instrument_class_cardinality_limit[_Histogram]
    aggregation = reader._instrument_class_aggregation[_Histogram]
    default = isinstance(aggregation, DefaultAggregation) or (
        isinstance(aggregation, ExplicitBucketHistogramAggregation)
        and aggregation._boundaries is None
        and aggregation._record_min_max
    )
    return temporality, limit, default


class SidecarMeterProvider(MeterProvider):
    """The SDK's MeterProvider with histograms aggregated by the sidecar (see the module)."""

    def __init__(
        self,
        metric_readers: Sequence[MetricReader] = (),
        resource: Resource | None = None,
        exemplar_filter: ExemplarFilter | None = None,
        views: Sequence[View] = (),
    ) -> None:
        resource = resource if resource is not None else Resource.create({})
        super().__init__(
            metric_readers=metric_readers, resource=resource, exemplar_filter=exemplar_filter,
            views=views,
        )  # fmt: skip
        self._resource = resource
        # The filter as the SDK resolved it: the one given, else its reading of
        # `OTEL_METRICS_EXEMPLAR_FILTER`.
        no_exemplars = isinstance(self._sdk_config.exemplar_filter, AlwaysOffExemplarFilter)
        self.owns_histograms = (
            no_exemplars and not views and all(histogram_view(r)[2] for r in metric_readers)
        )
        self._lock = Lock()
        self._sequence = itertools.count()
        self._first_use: dict[_Id, _Rank] = {}  # synchronous instruments, every reader
        self._observed: dict[MetricReader, dict[_Id, _Rank]] = {}  # observable ones, per reader
        self._histograms: list[tuple[InstrumentationScope, Histogram]] = []
        self._sidecar_meters: dict[InstrumentationScope, SidecarMeter] = {}
        if self.owns_histograms:
            for reader in metric_readers:
                self._attach(reader)

    def get_meter(
        self,
        name: str,
        version: str | None = None,
        schema_url: str | None = None,
        attributes: Attributes = None,
    ) -> ApiMeter:
        """The SDK's meter, with histograms the sidecar aggregates when it owns them."""
        meter = super().get_meter(name, version, schema_url, attributes)
        if not self.owns_histograms or isinstance(meter, NoOpMeter):
            return meter
        scope = InstrumentationScope(name, version, schema_url, attributes)
        with self._lock:
            if scope not in self._sidecar_meters:
                self._sidecar_meters[scope] = SidecarMeter(
                    meter, partial(self.first_use, scope), partial(self._histogram, scope)
                )
            return self._sidecar_meters[scope]

    def add_metric_reader(self, metric_reader: MetricReader) -> None:
        """Register a reader; it sees the histograms' measurements from now on."""
        super().add_metric_reader(metric_reader)
        if self.owns_histograms and metric_reader not in self._observed:
            self._attach(metric_reader)

    # ------------------------------------------------------------------ bookkeeping

    def _histogram(self, scope: InstrumentationScope, histogram: Histogram) -> None:
        with self._lock:
            self._histograms.append((scope, histogram))
            for reader in self._observed:
                temporality, limit, _ = histogram_view(reader)
                histogram.add_reader(reader, temporality is AggregationTemporality.DELTA, limit)

    def first_use(self, scope: InstrumentationScope, name: str) -> None:
        """A synchronous instrument's first measurement: where the SDK starts listing it."""
        self._first_use.setdefault((scope, name), (next(self._sequence), 0))

    def _attach(self, reader: MetricReader) -> None:
        # Typed by the SDK as taking a temporality; it is called as `(reader, timeout_millis=)`.
        collect: Callable[..., MetricsData | None] | None = reader._collect  # type: ignore[assignment]
        if collect is None:
            return
        temporality, limit, _ = histogram_view(reader)
        with self._lock:
            self._observed[reader] = {}
            for _, histogram in self._histograms:
                histogram.add_reader(reader, temporality is AggregationTemporality.DELTA, limit)

        def collect_with_histograms(
            target: MetricReader, timeout_millis: float = 10_000
        ) -> MetricsData | None:
            marker = next(self._sequence)  # rank of whatever is first observed now
            data = collect(target, timeout_millis=timeout_millis)
            return self._merge(target, data, marker)

        reader._set_collect_callback(collect_with_histograms)  # type: ignore[arg-type]

    # ------------------------------------------------------------------ collection

    def _merge(
        self, reader: MetricReader, data: MetricsData | None, marker: int
    ) -> MetricsData | None:
        """`data` as the SDK would have collected it with the histograms its own."""
        observed, positions = self._observed[reader], itertools.count(1)

        def rank(scope: InstrumentationScope, metric: Metric) -> _Rank:
            identity = (scope, metric.name)
            first = self._first_use.get(identity) or observed.get(identity)
            if first is None:  # an observable instrument's first points, in the SDK's order
                first = observed[identity] = (marker, next(positions))
            return first

        resource = data.resource_metrics[0] if data is not None and data.resource_metrics else None
        for scope_metrics in resource.scope_metrics if resource is not None else ():
            for metric in scope_metrics.metrics:  # every collection: note first appearances
                rank(scope_metrics.scope, metric)
        now = time_ns()
        ours: dict[InstrumentationScope, list[Metric]] = {}
        for scope, histogram in list(self._histograms):
            if (collected := histogram.collect(reader, now)) is not None:
                ours.setdefault(scope, []).append(collected)
        if not ours:
            return data
        if resource is None:
            resource = ResourceMetrics(self._resource, [], self._resource.schema_url)
        listed = {s.scope: [*s.metrics, *ours.pop(s.scope, ())] for s in resource.scope_metrics}
        listed.update(ours)
        for scope, metrics in listed.items():
            metrics.sort(key=lambda metric, scope=scope: rank(scope, metric))  # type: ignore[misc]
        scopes = sorted(listed, key=lambda scope: rank(scope, listed[scope][0]))
        merged = replace(
            resource,
            scope_metrics=[
                ScopeMetrics(scope=s, metrics=listed[s], schema_url=s.schema_url or "")
                for s in scopes
            ],
        )
        rest = data.resource_metrics[1:] if data is not None else []
        return MetricsData(resource_metrics=[merged, *rest])
