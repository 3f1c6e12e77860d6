"""Which context propagation `OTEL_PROPAGATORS` asks for, read as the OpenTelemetry API reads it.

Unset (the API's default, `tracecontext,baggage`) or naming only `tracecontext` (and
`baggage`), the sidecar continues and writes W3C `traceparent` / `tracestate` itself,
without a propagator call per request (`Telemetry.extract`, `Telemetry.inject`): that is
the `None` answer here. Any other value is the API's own composite propagator, built by
the API's own loader (`opentelemetry.propagate`, entry points `opentelemetry_propagator`):
`none` extracts and injects nothing (a caller's trace is not continued and no trace
header reaches Claude or the app), `b3`, `jaeger`, ... when their package is installed.
A name no installed package provides stops the API with a `ValueError`: a startup error.
"""

from __future__ import annotations

import os
from typing import Final

from opentelemetry.baggage.propagation import W3CBaggagePropagator
from opentelemetry.environment_variables import OTEL_PROPAGATORS
from opentelemetry.propagators.composite import CompositePropagator
from opentelemetry.propagators.textmap import TextMapPropagator
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

# What the sidecar's own W3C handling covers (baggage is neither read nor written by it).
_W3C: Final = (TraceContextTextMapPropagator, W3CBaggagePropagator)


def configured_propagator() -> TextMapPropagator | None:
    """The environment's propagator, or None for W3C trace context (the sidecar's own).

    Raises `ValueError` for a propagator no installed package provides (the API's error).
    """
    if not os.environ.get(OTEL_PROPAGATORS):
        return None
    from opentelemetry import propagate  # reads OTEL_PROPAGATORS when first imported

    loaded = propagate._load_propagators()  # the API's reading of the variable now
    inner = getattr(loaded, "_propagators", None)  # the composite's list (the API's field)
    if isinstance(loaded, CompositePropagator) and isinstance(inner, list):
        kinds = [type(propagator) for propagator in inner]
        if TraceContextTextMapPropagator in kinds and all(kind in _W3C for kind in kinds):
            return None
    return loaded
