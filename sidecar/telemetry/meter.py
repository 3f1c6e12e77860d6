"""The meter `meters.SidecarMeterProvider` hands out: the SDK's meter for one scope, except
that histograms are the sidecar's (`histograms.Histogram`), and the SDK's synchronous
instruments note their first measurement, where the SDK starts listing a metric in a
reader's collection (so the provider can list the histograms among them in the SDK's order).
Observable instruments are the SDK's own.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Sequence
from typing import Any, Final

from opentelemetry.context import Context
from opentelemetry.metrics import (
    CallbackT,
    ObservableCounter,
    ObservableGauge,
    ObservableUpDownCounter,
)
from opentelemetry.metrics import Counter as ApiCounter
from opentelemetry.metrics import Histogram as ApiHistogram
from opentelemetry.metrics import Meter as ApiMeter
from opentelemetry.metrics import UpDownCounter as ApiUpDownCounter
from opentelemetry.metrics import _Gauge as ApiGauge
from opentelemetry.sdk.metrics import Histogram as SdkHistogram
from opentelemetry.util.types import Attributes

from sidecar.telemetry.histograms import Histogram

# The SDK's bounds for a histogram created without advice (none of the sidecar's).
DEFAULT_BOUNDS: Final = (0, 5, 10, 25, 50, 75, 100, 250, 500, 750, 1000, 2500, 5000, 7500, 10000)


def advised_bounds(advisory: Sequence[float] | None) -> Sequence[float]:
    """The bounds the SDK's default aggregation would use for this advice.

    Advice that is not a sequence of numbers is dropped (as by the SDK's meter); bounds
    that are not finite and strictly increasing are refused (the SDK would refuse them at
    the first measurement).
    """
    numbers = isinstance(advisory, Sequence) and all(isinstance(b, (int, float)) for b in advisory)
    bounds = advisory if numbers and advisory is not None else DEFAULT_BOUNDS
    if not all(math.isfinite(b) for b in bounds) or any(
        a >= b for a, b in itertools.pairwise(bounds)
    ):
        raise ValueError(f"histogram bounds must be finite and increasing: {bounds!r}")
    return bounds


class SidecarMeter(ApiMeter):
    """The SDK's meter for one scope, with the sidecar's histograms.

    `first_use(name)` is told a synchronous instrument's first measurement; `adopt`
    is given each new histogram (for the provider to collect).
    """

    def __init__(
        self,
        inner: ApiMeter,
        first_use: Callable[[str], None],
        adopt: Callable[[Histogram], None],
    ) -> None:
        super().__init__(inner.name, inner.version, inner.schema_url)
        self._inner, self._first_use, self._adopt = inner, first_use, adopt
        self._created: dict[int, Histogram] = {}

    def _noting(self, instrument: Any) -> Callable[[], None]:
        first_use, name = self._first_use, instrument.name
        return lambda: first_use(name)

    def create_histogram(
        self,
        name: str,
        unit: str = "",
        description: str = "",
        *,
        explicit_bucket_boundaries_advisory: Sequence[float] | None = None,
    ) -> ApiHistogram:
        """The sidecar's histogram, named and deduplicated as the SDK's would be."""
        # The SDK's instrument is never recorded into (so never exported): it validates
        # the name and unit, spells them as the SDK exports them, and dedupes.
        sdk = self._inner.create_histogram(
            name, unit, description,
            explicit_bucket_boundaries_advisory=explicit_bucket_boundaries_advisory,
        )  # fmt: skip
        if not isinstance(sdk, SdkHistogram):  # not the SDK's meter: nothing to take over
            return sdk
        if id(sdk) not in self._created:  # the first creation's advice wins, as in the SDK
            bounds = advised_bounds(explicit_bucket_boundaries_advisory)
            histogram = Histogram(sdk.name, sdk.unit, sdk.description, bounds, self._noting(sdk))
            self._created[id(sdk)] = histogram
            self._adopt(histogram)
        return self._created[id(sdk)]

    def create_counter(self, name: str, unit: str = "", description: str = "") -> ApiCounter:
        """The SDK's counter, noting its first measurement."""
        inner = self._inner.create_counter(name, unit, description)
        return _Counter(inner, self._noting(inner))

    def create_up_down_counter(
        self, name: str, unit: str = "", description: str = ""
    ) -> ApiUpDownCounter:
        """The SDK's up-down counter, noting its first measurement."""
        inner = self._inner.create_up_down_counter(name, unit, description)
        return _UpDownCounter(inner, self._noting(inner))

    def create_gauge(self, name: str, unit: str = "", description: str = "") -> ApiGauge:
        """The SDK's gauge, noting its first measurement."""
        inner = self._inner.create_gauge(name, unit, description)
        return _Gauge(inner, self._noting(inner))

    def create_observable_counter(
        self, name: str, callbacks: Sequence[CallbackT] | None = None, unit: str = "",
        description: str = "",
    ) -> ObservableCounter:  # fmt: skip
        """The SDK's."""
        return self._inner.create_observable_counter(name, callbacks, unit, description)

    def create_observable_up_down_counter(
        self, name: str, callbacks: Sequence[CallbackT] | None = None, unit: str = "",
        description: str = "",
    ) -> ObservableUpDownCounter:  # fmt: skip
        """The SDK's."""
        return self._inner.create_observable_up_down_counter(name, callbacks, unit, description)

    def create_observable_gauge(
        self, name: str, callbacks: Sequence[CallbackT] | None = None, unit: str = "",
        description: str = "",
    ) -> ObservableGauge:  # fmt: skip
        """The SDK's."""
        return self._inner.create_observable_gauge(name, callbacks, unit, description)


# The SDK's synchronous instruments, noting the first measurement the SDK keeps (a finite
# amount; a counter's non-negative); from then on the SDK's own method is called directly.


class _Counter(ApiCounter):
    def __init__(self, inner: ApiCounter, noted: Callable[[], None]) -> None:
        self._inner, self._noted = inner, noted

    def add(
        self, amount: float, attributes: Attributes = None, context: Context | None = None
    ) -> None:
        self._inner.add(amount, attributes, context)
        if 0 <= amount < math.inf:
            self._noted()
            self.add = self._inner.add  # type: ignore[method-assign]


class _UpDownCounter(ApiUpDownCounter):
    def __init__(self, inner: ApiUpDownCounter, noted: Callable[[], None]) -> None:
        self._inner, self._noted = inner, noted

    def add(
        self, amount: float, attributes: Attributes = None, context: Context | None = None
    ) -> None:
        self._inner.add(amount, attributes, context)
        if math.isfinite(amount):
            self._noted()
            self.add = self._inner.add  # type: ignore[method-assign]


class _Gauge(ApiGauge):
    def __init__(self, inner: ApiGauge, noted: Callable[[], None]) -> None:
        self._inner, self._noted = inner, noted

    def set(
        self, amount: float, attributes: Attributes = None, context: Context | None = None
    ) -> None:
        self._inner.set(amount, attributes, context)
        if math.isfinite(amount):
            self._noted()
            self.set = self._inner.set  # type: ignore[method-assign]
