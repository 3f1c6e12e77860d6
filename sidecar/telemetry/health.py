"""State the alerting rules watch: readiness, the last config reload, JWKS refreshes.

Each is a plain value set where the event happens and reported by an observable
instrument when a reader collects, so Prometheus and OTLP see the same thing.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from opentelemetry.metrics import CallbackOptions, Meter, Observation

from sidecar.telemetry.instruments import Totals


class Health:
    """`sidecar.ready`, `sidecar.config.last_reload_successful`, `sidecar.jwks.refreshes`."""

    def __init__(self, meter: Meter) -> None:
        # The two 0/1 gauges have no unit: a gauge of unit `1` is named `..._ratio` when
        # pushed over OTLP into Prometheus, and the alerts read `sidecar_ready` either way.
        self._ready: int | None = None  # unknown until the first readiness check
        self._reload_ok = 1  # the config a process starts with loaded fine
        self.jwks_refreshes = Totals()
        meter.create_observable_gauge(
            "sidecar.ready", [self._observe_ready],
            description="1 when the last readiness check (/readyz, a scrape, an OTLP export interval) passed, else 0",
        )  # fmt: skip
        meter.create_observable_gauge(
            "sidecar.config.last_reload_successful", [self._observe_reload],
            description="0 after a config reload failed (the previous config still serves), else 1",
        )  # fmt: skip
        meter.create_observable_counter(
            "sidecar.jwks.refreshes", [self.jwks_refreshes.observe], unit="{refresh}",
            description="JWKS fetches, by result (success | failure)",
        )  # fmt: skip

    def readiness(self, failing: Mapping[str, str]) -> None:
        """The result of a readiness check: the checks that failed (none: ready)."""
        self._ready = 0 if failing else 1

    def reload(self, result: str) -> None:
        self._reload_ok = 1 if result == "success" else 0

    def _observe_ready(self, _options: CallbackOptions) -> Iterable[Observation]:
        return [] if self._ready is None else [Observation(self._ready)]

    def _observe_reload(self, _options: CallbackOptions) -> Iterable[Observation]:
        return [Observation(self._reload_ok)]
