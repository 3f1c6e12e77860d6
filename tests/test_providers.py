"""The OpenTelemetry SDK reads its own environment; the config fills in what the env leaves."""

from __future__ import annotations

import pytest
from opentelemetry.sdk.resources import Resource
from opentelemetry.trace import SpanKind

from sidecar.config import TelemetryConfig
from sidecar.telemetry.providers import build_providers, resource_of
from tests.helpers_otel import memory_otel


@pytest.fixture(autouse=True)
def clean_otel_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("OTEL_SERVICE_NAME", "OTEL_RESOURCE_ATTRIBUTES", "OTEL_TRACES_SAMPLER",
                 "OTEL_TRACES_SAMPLER_ARG", "OTEL_EXPERIMENTAL_RESOURCE_DETECTORS"):  # fmt: skip
        monkeypatch.delenv(name, raising=False)


def test_config_resource_when_the_environment_says_nothing() -> None:
    config = TelemetryConfig(service_name="shop", resource_attributes={"team": "payments"})
    attributes = resource_of(config).attributes
    assert attributes["service.name"] == "shop"
    assert attributes["team"] == "payments"
    assert attributes["telemetry.sdk.language"] == "python"  # the SDK's own attributes


def test_resource_attributes_are_percent_decoded_as_the_sdk_does(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    encoded = "deployment.environment=prod%20eu,team=a%2Cb,url=https%3A%2F%2Fshop.example"
    monkeypatch.setenv("OTEL_RESOURCE_ATTRIBUTES", encoded)
    attributes = resource_of(TelemetryConfig(resource_attributes={"team": "config"})).attributes
    assert attributes["deployment.environment"] == "prod eu"
    assert attributes["team"] == "a,b"  # the environment wins over the config
    assert attributes["url"] == "https://shop.example"
    sdk = Resource.create().attributes  # what the SDK itself makes of the same variable
    for key in ("deployment.environment", "team", "url"):
        assert attributes[key] == sdk[key]


def test_service_name_from_the_environment_wins(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OTEL_SERVICE_NAME", "from-env")
    monkeypatch.setenv("OTEL_RESOURCE_ATTRIBUTES", "service.name=from-attributes")
    assert resource_of(TelemetryConfig(service_name="config")).attributes["service.name"] == (
        "from-env"
    )


def test_sampler_is_the_sdks_reading_of_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OTEL_TRACES_SAMPLER", "traceidratio")
    monkeypatch.setenv("OTEL_TRACES_SAMPLER_ARG", "0.25")
    providers = build_providers(TelemetryConfig(), None, None)
    assert providers is not None
    assert providers.tracer_provider.sampler.get_description() == "TraceIdRatioBased{0.25}"


def test_spans_carry_the_environments_resource(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OTEL_RESOURCE_ATTRIBUTES", "k8s.pod.name=shop-0,note=a%3Db")
    otel = memory_otel(service_name="shop")
    parent = otel.telemetry.extract({})
    server = otel.telemetry.start_server_span(
        parent, method="GET", route="/", path="/", scheme="http"
    )
    otel.telemetry.end_server_span(server, 200)
    (ended,) = otel.spans(SpanKind.SERVER)
    assert ended.resource.attributes["k8s.pod.name"] == "shop-0"
    assert ended.resource.attributes["note"] == "a=b"
    assert ended.resource.attributes["service.name"] == "shop"
