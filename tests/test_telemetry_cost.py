"""The per-call shortcuts in telemetry keep its output: counter totals, exemplars, stream start."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator
from typing import Any

import pytest
from opentelemetry.sdk.metrics import (
    AlwaysOffExemplarFilter,
    MeterProvider,
)
from opentelemetry.sdk.metrics.export import InMemoryMetricReader

from sidecar.config import TelemetryConfig
from sidecar.telemetry import setup_logging
from sidecar.telemetry.instruments import CARDINALITY_LIMIT, Instruments
from sidecar.telemetry.providers import build_providers, exemplar_filter_of
from tests.conftest import SidecarFactory
from tests.test_telemetry import make_otel, prompt


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


def test_exemplar_filter_defaults_to_off_and_follows_the_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("OTEL_METRICS_EXEMPLAR_FILTER", raising=False)
    assert isinstance(exemplar_filter_of(), AlwaysOffExemplarFilter)
    for name in ("trace_based", "always_on", "always_off"):
        monkeypatch.setenv("OTEL_METRICS_EXEMPLAR_FILTER", name)
        assert exemplar_filter_of() is None  # the SDK reads the variable itself
    # A value the SDK does not know would stop it with a traceback: ignored instead.
    monkeypatch.setenv("OTEL_METRICS_EXEMPLAR_FILTER", "bogus")
    assert isinstance(exemplar_filter_of(), AlwaysOffExemplarFilter)
    providers = build_providers(TelemetryConfig(), None, None)
    assert providers is not None
    providers.meter_provider.shutdown()


@pytest.fixture
def log_lines() -> Iterator[io.StringIO]:
    root = logging.getLogger()
    saved_handlers, saved_level = list(root.handlers), root.level
    buffer = io.StringIO()
    setup_logging(TelemetryConfig(), stream=buffer)
    yield buffer
    for handler in list(root.handlers):
        root.removeHandler(handler)
    for handler in saved_handlers:
        root.addHandler(handler)
    root.setLevel(saved_level)


async def test_stream_start_comes_first_even_for_a_call_ended_at_once(
    sidecar_for: SidecarFactory, log_lines: io.StringIO
) -> None:
    """A quota refusal ends the call before the loop runs the deferred start: still in order."""
    otel = make_otel()
    quotas = {"quotas": {"store": "memory", "requests_per_minute": 1}}
    async with sidecar_for(quotas, telemetry=otel.telemetry) as sidecar:
        first, _ = await prompt(sidecar.url, "one [[fake tokens=2]]")
        second, _ = await prompt(sidecar.url, "two [[fake tokens=2]]")
    assert (first, second) == (200, 429)
    entries = [json.loads(line) for line in log_lines.getvalue().splitlines()]
    stream = [e for e in entries if e["logger"] == "sidecar.stream"]
    assert [e["message"] for e in stream] == [
        "stream_start", "stream_complete", "stream_start", "stream_error"
    ]  # fmt: skip
    assert stream[2]["request_id"] == stream[3]["request_id"] != stream[0]["request_id"]
    assert stream[3]["outcome"] == "rejected"
    for start, end in ((stream[0], stream[1]), (stream[2], stream[3])):
        assert start["trace_id"] == end["trace_id"]
        assert start["span_id"] == end["span_id"]
    # One queue wait point per admitted call, however the deferred start and admission interleave.
    assert otel.count("sidecar.queue.wait", **{"sidecar.queue.admitted": True}) == 1
    assert otel.count("sidecar.streams", **{"sidecar.stream.outcome": "rejected"}) == 1


async def test_telemetry_off_still_logs_usage_and_cost(
    sidecar_for: SidecarFactory, log_lines: io.StringIO, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With the SDK off nothing is measured, but the stream lines keep every number."""
    monkeypatch.setenv("OTEL_SDK_DISABLED", "true")
    otel = make_otel()
    assert not otel.telemetry.enabled
    async with sidecar_for(telemetry=otel.telemetry) as sidecar:
        status, _ = await prompt(sidecar.url, "hello [[fake tokens=3]]")
    assert status == 200
    entries = [json.loads(line) for line in log_lines.getvalue().splitlines()]
    (complete,) = [e for e in entries if e["message"] == "stream_complete"]
    assert complete["outcome"] == "completed"
    assert complete["output_tokens"] == 3
    assert complete["input_tokens"] > 0
    assert complete["cost_usd"] > 0
    assert complete["upstream_status"] == 200
    assert otel.exporter.get_finished_spans() == ()  # no provider ever held the exporter
