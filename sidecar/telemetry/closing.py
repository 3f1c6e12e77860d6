"""The last exports when telemetry closes: every exporter done, or given up, by one deadline.

The SDK bounds each of its shutdowns on its own: its batch span processor joins its
thread for 30 s, a periodic metric reader up to 30 s, and a post waits out the OTLP
exporter's timeout (`OTEL_EXPORTER_OTLP_TIMEOUT`, 10 s) of retries. Against a collector
that never answers those add up past the shutdown margin the sidecar has after its
grace (`sidecar.server.SHUTDOWN_MARGIN`), and its watchdog would end the process with
the exports still under way. Here each shutdown gets the time left to one deadline
(`time.monotonic()`); the span processors' own `OTEL_BSP_EXPORT_TIMEOUT` applies when
sooner, and each post's own OTLP timeout too. What is still under way at the deadline
runs on a daemon thread that the interpreter's exit does not wait for.
"""

from __future__ import annotations

import time
from typing import Any, Final

from opentelemetry.sdk.trace.export import BatchSpanProcessor

from sidecar.telemetry.providers import Providers

# The time the last exports get when no deadline is given (not run by `sidecar run`'s
# shutdown, which gives its own): as long as the span exports always had.
DEFAULT_SECONDS: Final = 5.0
# A metric reader's share when the spans took all the time: its last export is at least
# started (a collector that answers takes milliseconds), and not waited for past this.
_LAST_SHARE: Final = 0.1


def shutdown_providers(providers: Providers, deadline: float | None = None) -> None:
    """Export what is pending and shut every exporter down, by `deadline` (`time.monotonic()`;
    `DEFAULT_SECONDS` from now when None)."""
    from sidecar.telemetry.loop_spans import LoopSpanProcessor

    if deadline is None:
        deadline = time.monotonic() + DEFAULT_SECONDS
    for processor in providers.span_processors:
        if isinstance(processor, LoopSpanProcessor):
            processor.shutdown(deadline)
        elif isinstance(processor, BatchSpanProcessor):
            # The SDK's processor, shut down with the time left (its own `shutdown` takes
            # none and waits 30 s); its thread is a daemon, its exporter told to stop.
            batch: Any = processor._batch_processor
            batch.shutdown(timeout_millis=_left_ms(deadline, 0.0))
    providers.tracer_provider.shutdown()  # the rest (a processor already shut: no effect)
    providers.meter_provider.shutdown(timeout_millis=_left_ms(deadline, _LAST_SHARE))


def _left_ms(deadline: float, floor: float) -> float:
    return max(deadline - time.monotonic(), floor) * 1e3
