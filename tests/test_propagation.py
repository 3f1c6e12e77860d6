"""`OTEL_PROPAGATORS`: read as the OpenTelemetry API reads it, on every route a trace crosses.

W3C trace context (the default, or the variable naming it) is the sidecar's own fast
handling; any other value is the API's composite propagator: `none` continues no caller's
trace and sends no trace header to Claude, and the app gets the client's headers as sent;
`baggage` carries the caller's baggage on; a name no package provides stops the start.
"""

from __future__ import annotations

import aiohttp
import pytest
from opentelemetry.trace import SpanKind

from sidecar.config import TelemetryConfig
from sidecar.fake_claude import FakeServer
from sidecar.telemetry import Telemetry
from sidecar.telemetry.propagation import configured_propagator
from sidecar.telemetry.providers import TelemetryEnvironmentError
from tests.support.apps import echoed_headers, running_app
from tests.support.otel import make_otel, prompt
from tests.support.sidecars import SidecarFactory

CALLER_TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
TRACEPARENT = f"00-{CALLER_TRACE}-00f067aa0ba902b7-01"


def test_w3c_trace_context_is_the_sidecars_own_and_the_rest_the_apis(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("OTEL_PROPAGATORS", raising=False)
    assert configured_propagator() is None
    for value in ("tracecontext", " tracecontext , baggage", "baggage,tracecontext"):
        monkeypatch.setenv("OTEL_PROPAGATORS", value)
        assert configured_propagator() is None
    monkeypatch.setenv("OTEL_PROPAGATORS", "none")
    none = configured_propagator()
    assert none is not None
    assert none.fields == set()
    monkeypatch.setenv("OTEL_PROPAGATORS", "baggage")
    baggage = configured_propagator()
    assert baggage is not None
    assert baggage.fields == {"baggage"}


def test_a_propagator_no_package_provides_is_a_startup_error(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("OTEL_PROPAGATORS", "tracecontext,no-such-propagator")
    with pytest.raises(TelemetryEnvironmentError, match="no-such-propagator not found"):
        Telemetry.from_config(TelemetryConfig(prometheus=False))


async def test_none_continues_no_trace_and_sends_no_trace_header(
    fake: FakeServer, sidecar_for: SidecarFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OTEL_PROPAGATORS", "none")
    otel = make_otel()
    async with running_app() as (app_url, _):
        async with sidecar_for({"app": {"url": app_url}}, telemetry=otel.telemetry) as sidecar:
            status, _ = await prompt(sidecar.url, "hi", {"traceparent": TRACEPARENT})
            async with (
                aiohttp.ClientSession() as http,
                http.get(sidecar.url + "/echo", headers={"traceparent": TRACEPARENT}) as response,
            ):
                seen = echoed_headers(await response.json())
    assert status == 200
    assert "traceparent" not in fake.state.requests[-1].headers  # nothing to Claude
    assert seen["traceparent"] == TRACEPARENT  # the app: the client's header, as sent
    servers = otel.spans(SpanKind.SERVER)
    assert len(servers) == 2
    assert all(f"{span.context.trace_id:032x}" != CALLER_TRACE for span in servers)
    assert all(span.parent is None for span in servers)  # new traces


async def test_baggage_alone_carries_the_callers_baggage_and_no_trace(
    fake: FakeServer, sidecar_for: SidecarFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OTEL_PROPAGATORS", "baggage")
    otel = make_otel()
    caller = {"traceparent": TRACEPARENT, "baggage": "tenant=acme"}
    async with sidecar_for(telemetry=otel.telemetry) as sidecar:
        status, _ = await prompt(sidecar.url, "hi", caller)
    assert status == 200
    sent = fake.state.requests[-1].headers
    assert sent["baggage"] == "tenant=acme"
    assert "traceparent" not in sent
    (server,) = otel.spans(SpanKind.SERVER)
    assert f"{server.context.trace_id:032x}" != CALLER_TRACE
