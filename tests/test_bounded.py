"""Client-chosen values reach metrics and spans bounded in length and in cardinality."""

from __future__ import annotations

import asyncio
import logging
import re
from typing import Any

import aiohttp
import pytest
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind

from sidecar.config import TelemetryConfig
from sidecar.fake_claude import FakeServer
from sidecar.int64 import INT64
from sidecar.telemetry import Telemetry
from sidecar.telemetry.bounded import (
    MAX_EXTRA_LABELS,
    OTHER_MODEL,
    error_labels,
    model_labels,
)
from sidecar.telemetry.span_encoder import SpanEncoder
from tests.support.otel import make_otel
from tests.support.sidecars import SidecarFactory

KNOWN = "claude-sonnet-5-5"
_MODEL_LABEL = re.compile(r'gen_ai_request_model="([^"]*)"')


def _body(model: str, text: str = "hi", *, stream: bool = False) -> dict[str, Any]:
    return {"model": model, "max_tokens": 4, "stream": stream,
            "messages": [{"role": "user", "content": text}]}  # fmt: skip


async def _post_all(url: str, bodies: list[dict[str, Any]]) -> list[int]:
    statuses: list[int] = []
    limit = asyncio.Semaphore(16)
    async with aiohttp.ClientSession() as http:

        async def one(body: dict[str, Any]) -> None:
            async with limit, http.post(url + "/v1/messages", json=body) as response:
                await response.read()
                statuses.append(response.status)

        await asyncio.gather(*(one(body) for body in bodies))
    return statuses


async def test_a_thousand_client_model_names_leave_metrics_bounded(
    fake: FakeServer, sidecar_for: SidecarFactory
) -> None:
    exporter = InMemorySpanExporter()
    telemetry = Telemetry.from_config(TelemetryConfig(), span_exporter=exporter)
    config = {"claude": {"allowed_models": None, "max_retries": 0}}
    async with sidecar_for(config, telemetry=telemetry) as sidecar:
        # Distinct names (the fake echoes each back as the response model), some extending a
        # known name, some failing upstream (the error path), some streamed.
        bodies = [_body(f"client-model-{i}-" + "x" * 90) for i in range(700)]
        bodies += [_body(f"{KNOWN}-{i}") for i in range(200)]
        bodies += [_body(f"err-{i}", "[[fake fault=server_error]]") for i in range(50)]
        bodies += [_body(f"streamed-{i}", stream=True) for i in range(50)]
        statuses = await _post_all(sidecar.url, bodies)
        assert statuses.count(200) == 950
        assert statuses.count(500) == 50
        async with aiohttp.ClientSession() as http:
            async with http.get(sidecar.admin_url + "/metrics") as response:
                scraped = await response.text()
            too_long = _body("m" * 129)
            async with http.post(sidecar.url + "/v1/messages", json=too_long) as response:
                assert response.status == 400  # bounded in the parser too
            control = _body("claude\nfake")
            async with http.post(sidecar.url + "/v1/messages", json=control) as response:
                assert response.status == 400
    labels = set(_MODEL_LABEL.findall(scraped))
    assert OTHER_MODEL in labels
    assert len(labels) <= 3 + 1 + MAX_EXTRA_LABELS  # prices, other, a few dated-like names
    assert all(label == OTHER_MODEL or label.startswith("claude-") for label in labels)
    series = [line for line in scraped.splitlines() if line and not line.startswith("#")]
    assert len(series) < 6000
    assert len(scraped) < 2_000_000  # 1000 free labels make this tens of megabytes
    models = {
        (span.attributes or {}).get("gen_ai.request.model")
        for span in exporter.get_finished_spans()
    }
    models.discard(None)
    assert models <= labels
    names = {span.name for span in exporter.get_finished_spans()}
    assert all(len(name) < 100 for name in names)


def test_model_labels_keep_known_and_a_few_extensions() -> None:
    labels = model_labels([KNOWN])
    labels.allow(["my-tuned-model"])
    assert labels(KNOWN) == KNOWN
    assert labels("my-tuned-model") == "my-tuned-model"
    assert labels("anything-else") == OTHER_MODEL
    assert labels(None) == OTHER_MODEL
    extended = [labels(f"{KNOWN}-{i}") for i in range(MAX_EXTRA_LABELS + 10)]
    assert extended[:MAX_EXTRA_LABELS] == [f"{KNOWN}-{i}" for i in range(MAX_EXTRA_LABELS)]
    assert set(extended[MAX_EXTRA_LABELS:]) == {OTHER_MODEL}


def test_error_labels_fold_unknown_and_odd_types() -> None:
    labels = error_labels()
    assert labels("overloaded_error") == "overloaded_error"
    assert labels(None) == "_OTHER"
    assert labels("x" * 500) == "_OTHER"
    assert labels("has spaces") == "_OTHER"
    odd = {labels(f"Error{i}") for i in range(MAX_EXTRA_LABELS + 10)}
    assert len(odd) == MAX_EXTRA_LABELS + 1


def test_passing_holds_exactly_the_values_that_pass_as_themselves() -> None:
    """Callers skip the call for a value in `passing`: it must hold every value the call
    returns as itself, from the start, after `allow` (a reload) and once accepted."""
    labels = model_labels([KNOWN])
    assert labels.passing == {KNOWN}
    assert labels("tuned-later") == OTHER_MODEL
    assert "tuned-later" not in labels.passing
    labels.allow(["tuned-later"])  # a reloaded config names it: it passes from now on
    assert "tuned-later" in labels.passing
    assert labels("tuned-later") == "tuned-later"
    dated = f"{KNOWN}-20260101"
    assert dated not in labels.passing
    assert labels(dated) == dated
    assert dated in labels.passing
    tried = [f"{KNOWN}-{i}" for i in range(MAX_EXTRA_LABELS + 5)] + ["unrelated"]
    assert {value for value in tried if labels(value) == value} == labels.passing & set(tried)


async def test_numbers_a_client_sends_reach_the_span_only_as_protobuf_holds_them(
    sidecar_for: SidecarFactory, caplog: pytest.LogCaptureFixture
) -> None:
    """Sampling parameters are the client's: an int past int64 (or past a double, which
    `float()` would raise on) is left off the span, never a 500 nor a span the OTLP
    encoding logs a traceback for; a `top_k` of `true` is no int. In range, kept."""
    huge = 10**400
    otel = make_otel()
    async with sidecar_for(telemetry=otel.telemetry) as sidecar:
        async with aiohttp.ClientSession() as http:
            for extra in ({"temperature": huge}, {"top_p": -huge}, {"top_k": INT64},
                          {"top_k": True},
                          {"temperature": 1, "top_p": 0.5, "top_k": -INT64}):  # fmt: skip
                body = {**_body(KNOWN), **extra}
                async with http.post(sidecar.url + "/v1/messages", json=body) as response:
                    assert response.status == 200, extra
    spans = otel.spans(SpanKind.CLIENT)
    numbers = ("gen_ai.request.temperature", "gen_ai.request.top_p", "gen_ai.request.top_k")
    kept = [{k: v for k, v in (span.attributes or {}).items() if k in numbers} for span in spans]
    assert kept == [
        {}, {}, {}, {},
        {"gen_ai.request.temperature": 1.0, "gen_ai.request.top_p": 0.5,
         "gen_ai.request.top_k": -INT64},
    ]  # fmt: skip
    caplog.clear()
    encoder = SpanEncoder()
    for span in spans:
        encoder.entry(span)
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]
