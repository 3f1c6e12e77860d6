"""Explicit-bucket histograms aggregated by the sidecar, exported as the SDK's own points.

The SDK's `Histogram.record` copies the attribute set, hashes it (sorting its keys) and
locks, per measurement and per reader: about 40 Python calls a point a reader, and a
Claude call records up to nine points. `Histogram` here keeps the same aggregation
with the SDK's arithmetic in a few bytecodes per reader: per reader and attribute set,
bucket counts (`bisect_left` over the bounds), sum, min and max since that reader's last
collection, folded at collection exactly as `_ExplicitBucketHistogramAggregation` folds
them (cumulative: `window + previous`, so float sums round as the SDK's do; delta: the
window itself, idle attribute sets released, the cardinality limit counted per cycle).
`sidecar.telemetry.meters` hands the resulting `Metric`s to each reader's collection.

Thread safety: points are recorded on the event loop thread and collected there
(`/metrics`) or on the OTLP exporter's thread. One uncontended lock per measurement
(two C calls, well under a microsecond) lets a collection fold each point whole, with
no count ahead of its buckets or sum. Lock-free schemes (a sequence counter the
collector re-checks, swapped buffers) would rest on when CPython may switch threads,
and a torn or lost update would show as a count that disagrees with its buckets.
"""

from __future__ import annotations

import logging
import math
from bisect import bisect_left
from collections.abc import Callable, Mapping, Sequence
from threading import Lock
from time import time_ns
from typing import Any, Final

from opentelemetry.context import Context
from opentelemetry.metrics import Histogram as ApiHistogram
from opentelemetry.sdk.metrics.export import (
    AggregationTemporality,
    HistogramDataPoint,
    Metric,
)
from opentelemetry.sdk.metrics.export import Histogram as HistogramData
from opentelemetry.util.types import Attributes, AttributeValue

_INF: Final = math.inf
_OVERFLOW: Final[dict[str, AttributeValue]] = {"otel.metric.overflow": True}
Key = frozenset[tuple[str, Any]]
_EMPTY: Final[Key] = frozenset()
_OVERFLOW_KEY: Final[Key] = frozenset(_OVERFLOW.items())
# The SDK's own logger and words for a measurement it ignores.
_sdk_log = logging.getLogger("opentelemetry.sdk.metrics._internal.instrument")


class AttributeSet(dict[str, AttributeValue]):
    """Attributes whose key is computed once: one stream's several points share it.

    A plain dict to everything else (the SDK, counters, tests); never change it after.
    """

    __slots__ = ("key",)

    def __init__(self, attributes: Mapping[str, AttributeValue]) -> None:
        super().__init__(attributes)
        self.key: Key = frozenset(self.items())


def key_of(attributes: Attributes) -> Key:
    """The identity of an attribute set: order-insensitive, as the SDK's hash of it.

    Sequence values (unhashable lists) count by their items, as in the SDK. Values that
    compare equal across types (`True`, `1`, `1.0`) are one set here and three in the
    SDK; no sidecar attribute ever takes both a bool and a number.
    """
    if type(attributes) is AttributeSet:
        return attributes.key
    if not attributes:
        return _EMPTY
    try:
        return frozenset(attributes.items())
    except TypeError:
        return frozenset((k, tuple(v) if isinstance(v, list) else v) for k, v in attributes.items())


class _Point:
    """One attribute set in one reader's view: the open window and, cumulative, the totals."""

    __slots__ = ("attributes", "counts", "max", "min", "start", "sum", "totals")

    def __init__(self, attributes: dict[str, AttributeValue], start: int, buckets: int) -> None:
        self.attributes = attributes
        self.start = start
        self.counts = [0] * buckets
        self.sum: float = 0
        self.min: float = _INF
        self.max: float = -_INF
        # Cumulative readers only: (bucket counts, sum, min, max) up to the last collection.
        self.totals: tuple[list[int], float, float, float] | None = None


class _Window:
    """One reader's points of one histogram since that reader's last collection."""

    __slots__ = ("delta", "limit", "points", "previous")

    def __init__(self, delta: bool, limit: int) -> None:
        self.points: dict[Key, _Point] = {}
        self.delta = delta
        self.limit = limit
        self.previous: int | None = None  # delta: when this reader last collected


class Histogram(ApiHistogram):
    """`record(amount, attributes)` like the SDK's histogram; each reader collects its own view."""

    def __init__(
        self,
        name: str,
        unit: str,
        description: str,
        boundaries: Sequence[float],
        first_use: Callable[[], None],
    ) -> None:
        self.name, self.unit, self.description = name, unit, description
        self._bounds = tuple(boundaries)
        self._first_use: Callable[[], None] | None = first_use
        self._lock = Lock()
        self._windows: tuple[_Window, ...] = ()
        self._by_reader: dict[object, _Window] = {}

    def add_reader(self, reader: object, delta: bool, limit: int) -> None:
        """Start a view for `reader`: measurements from now on, as a reader added to the SDK."""
        with self._lock:
            window = self._by_reader[reader] = _Window(delta, limit)
            self._windows = (*self._windows, window)

    def record(
        self, amount: float, attributes: Attributes = None, context: Context | None = None
    ) -> None:
        """One measurement; non-finite and negative amounts are ignored, as by the SDK."""
        if not 0 <= amount < _INF:
            self._ignore(amount)
            return
        if type(attributes) is AttributeSet:  # `key_of`, inline: this runs per point
            key = attributes.key
        elif attributes:
            try:
                key = frozenset(attributes.items())
            except TypeError:
                key = key_of(attributes)
        else:
            key = _EMPTY
        index = bisect_left(self._bounds, amount)
        with self._lock:
            for window in self._windows:
                try:  # a subscript, not a `get` call: the set is new once per reader
                    point = window.points[key]
                except KeyError:
                    point = self._point(window, key, attributes)
                point.counts[index] += 1
                point.sum += amount
                if amount < point.min:
                    point.min = amount
                if amount > point.max:
                    point.max = amount

    def _point(self, window: _Window, key: Key, attributes: Attributes) -> _Point:
        """A new attribute set in `window` (the overflow set past the limit); lock held."""
        points = window.points
        copied: dict[str, AttributeValue] = dict(attributes) if attributes else {}
        if len(points) >= window.limit:
            key, copied = _OVERFLOW_KEY, dict(_OVERFLOW)
            if key in points:
                return points[key]
        point = points[key] = _Point(copied, window.previous or time_ns(), len(self._bounds) + 1)
        if self._first_use is not None:  # the point at which the SDK would list this metric
            self._first_use()
            self._first_use = None
        return point

    def _ignore(self, amount: float) -> None:
        if not math.isfinite(amount):
            _sdk_log.warning(
                "Record amount %s is not finite on Histogram %s, ignoring measurement.",
                amount,
                self.name,
            )
        else:
            _sdk_log.warning("Record amount must be non-negative on Histogram %s.", self.name)

    def collect(self, reader: object, now: int) -> Metric | None:
        """`reader`'s points at `now` (None when it has none), as the SDK would export them."""
        window = self._by_reader.get(reader)
        if window is None:
            return None
        with self._lock:
            if window.delta:  # the window goes out whole; later measurements start a new one
                points, window.points, window.previous = window.points, {}, now
                values = [(p, p.counts, p.sum, p.min, p.max) for p in points.values()]
                temporality = AggregationTemporality.DELTA
            else:
                values = [_fold(p) for p in window.points.values()]
                temporality = AggregationTemporality.CUMULATIVE
        if not values:
            return None
        bounds = self._bounds
        points_data = [
            HistogramDataPoint(
                attributes=p.attributes, exemplars=[], start_time_unix_nano=p.start,
                time_unix_nano=now, count=sum(counts), sum=total, bucket_counts=tuple(counts),
                explicit_bounds=bounds, min=low, max=high,
            )
            for p, counts, total, low, high in values
        ]  # fmt: skip
        return Metric(
            name=self.name,
            description=self.description,
            unit=self.unit,
            data=HistogramData(data_points=points_data, aggregation_temporality=temporality),
        )


def _fold(p: _Point) -> tuple[_Point, list[int], float, float, float]:
    """A cumulative point's window folded into its totals, and the window reset; lock held.

    The SDK's fold operand for operand, so float sums round the same way it rounds them.
    """
    if p.totals is None:  # before: no counts, sum 0, min inf, max -inf
        counts, total, low, high = p.counts, p.sum + 0, p.min, p.max
    else:
        before, total, low, high = p.totals
        counts = [c + b for c, b in zip(p.counts, before, strict=True)]
        total, low, high = p.sum + total, min(p.min, low), max(p.max, high)
    p.totals = (counts, total, low, high)
    p.counts, p.sum, p.min, p.max = [0] * len(counts), 0, _INF, -_INF
    return p, counts, total, low, high
