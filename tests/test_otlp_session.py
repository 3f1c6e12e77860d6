"""The OTLP/HTTP span exporter's session: `requests`' environment merge, done once per URL.

The session answers what `requests` answers for the environment (proxies, no-proxy, CA
bundle), the SDK's exporter posts through it (a proxy from the environment is used),
the environment is read once however many batches are posted, and a credential
provider still makes the session as the SDK does.
"""

from __future__ import annotations

import asyncio
import os
import ssl
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import requests
import requests.utils
from opentelemetry.exporter.otlp.proto.http.metric_exporter import (
    OTLPMetricExporter as HttpMetricExporter,
)
from opentelemetry.exporter.otlp.proto.http.trace_exporter import (
    OTLPSpanExporter as SdkHttpSpanExporter,
)
from opentelemetry.sdk.metrics.export import MetricExportResult, MetricsData
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult
from opentelemetry.trace import SpanContext, TraceFlags

from sidecar.telemetry.otlp_session import (
    CREDENTIAL_PROVIDERS,
    METRICS_CREDENTIAL_PROVIDERS,
    ExportSession,
    export_session,
)
from sidecar.telemetry.otlp_spans import HttpSpanExporter
from tests.support.certs import write_self_signed
from tests.support.otlp import receiving

METRICS = MetricsData(resource_metrics=[])
PROXY_VARIABLES = ("http_proxy", "https_proxy", "all_proxy", "no_proxy")
URLS = ("http://collector:4318/v1/traces", "https://otlp.example.com/v1/traces")


def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.startswith("OTEL_") or name.lower() in PROXY_VARIABLES or "CA_BUNDLE" in name:
            monkeypatch.delenv(name)


def stop(exporter: SpanExporter) -> None:
    exporter.shutdown()  # typed here: the SDK's exporters leave it untyped


def spans(count: int) -> list[ReadableSpan]:
    resource = Resource({"service.name": "s"})
    return [
        ReadableSpan(f"s{i}", SpanContext(1, i + 1, False, TraceFlags(1)), resource=resource)
        for i in range(count)
    ]


ENVIRONMENTS: list[dict[str, str]] = [
    {},
    {"HTTP_PROXY": "http://proxy:3128", "HTTPS_PROXY": "http://secure-proxy:3128"},
    {"https_proxy": "http://p:1", "no_proxy": "collector,.example.com"},
    {"ALL_PROXY": "socks5://p:1080", "NO_PROXY": "*"},
    {"REQUESTS_CA_BUNDLE": "/etc/ca.pem"},
    {"CURL_CA_BUNDLE": "/etc/curl.pem", "HTTP_PROXY": "http://proxy:3128"},
]


@pytest.mark.parametrize("environment", ENVIRONMENTS)
@pytest.mark.parametrize("verify", [True, "/otel/ca.pem", False])
def test_the_settings_are_requests_own(
    environment: dict[str, str], verify: bool | str, monkeypatch: pytest.MonkeyPatch
) -> None:
    clean_env(monkeypatch)
    for name, value in environment.items():
        monkeypatch.setenv(name, value)
    ours, theirs = ExportSession(), requests.Session()
    ours.verify = theirs.verify = verify  # as the SDK's transport sets it
    ours.cert = theirs.cert = ("/c.pem", "/k.pem")
    for url in URLS * 2:  # the second time from the cache
        expected = theirs.merge_environment_settings(url, {}, None, None, None)
        if verify is not True:  # the exporter's CA file wins over REQUESTS_CA_BUNDLE & co
            expected["verify"] = verify
        assert ours.merge_environment_settings(url, {}, None, None, None) == expected
    assert ours.merge_environment_settings(URLS[0], {}, None, None, None) is not (
        ours.merge_environment_settings(URLS[0], {}, None, None, None)
    )  # each caller its own
    given: tuple[dict[str, str], bool, bool, None] = ({"http": "http://given:1"}, True, False, None)
    monkeypatch.setenv("HTTP_PROXY", "http://changed:1")  # per-call settings: merged anew
    assert ours.merge_environment_settings(URLS[0], dict(given[0]), *given[1:]) == (
        theirs.merge_environment_settings(URLS[0], dict(given[0]), *given[1:])
    )


def counting(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The URLs `requests` looked the environment's proxies up for."""
    looked_up: list[str] = []
    get_environ_proxies: Callable[..., Any] = requests.utils.get_environ_proxies

    def counted(url: str, no_proxy: str | None = None) -> Any:
        looked_up.append(url)
        return get_environ_proxies(url, no_proxy=no_proxy)

    monkeypatch.setattr("requests.sessions.get_environ_proxies", counted)  # as it calls it
    return looked_up


async def test_the_environment_is_read_once_per_exporter(monkeypatch: pytest.MonkeyPatch) -> None:
    clean_env(monkeypatch)
    looked_up = counting(monkeypatch)
    async with receiving() as receiver:

        def post(kind: type[SdkHttpSpanExporter]) -> list[SpanExportResult]:
            exporter = kind(endpoint=receiver.url)
            results = [exporter.export(spans(3)) for _ in range(4)]
            stop(exporter)
            return results

        assert await asyncio.to_thread(post, SdkHttpSpanExporter) == [SpanExportResult.SUCCESS] * 4
        assert looked_up == [receiver.url] * 4  # the SDK's session: every export
        looked_up.clear()
        assert await asyncio.to_thread(post, HttpSpanExporter) == [SpanExportResult.SUCCESS] * 4
        assert looked_up == [receiver.url]
    assert len(receiver.bodies) == 8
    assert receiver.bodies[:4] == receiver.bodies[4:]
    assert receiver.headers[0].keys() == receiver.headers[4].keys()  # requests' own headers


async def test_a_proxy_from_the_environment_carries_the_exports(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The collector's name does not resolve: only the proxy (the receiver) can be reached."""
    clean_env(monkeypatch)
    async with receiving() as proxy:
        monkeypatch.setenv("HTTP_PROXY", proxy.url.removesuffix("/v1/traces"))

        def post() -> list[SpanExportResult]:
            exporter = HttpSpanExporter(endpoint="http://collector.invalid:4318/v1/traces")
            results = [exporter.export(spans(2)), exporter.export(spans(1))]
            stop(exporter)
            return results

        assert await asyncio.to_thread(post) == [SpanExportResult.SUCCESS] * 2
    assert [headers["Host"] for headers in proxy.headers] == ["collector.invalid:4318"] * 2


def test_a_credential_provider_makes_the_session_as_in_the_sdk(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    clean_env(monkeypatch)
    assert isinstance(export_session(), ExportSession)
    for name in CREDENTIAL_PROVIDERS:
        monkeypatch.setenv(name, "no-such-provider")
        assert export_session() is None
        with pytest.raises(RuntimeError, match="no-such-provider"):  # the SDK looked it up
            HttpSpanExporter(endpoint="http://127.0.0.1:1/v1/traces")
        monkeypatch.delenv(name)
    for name in METRICS_CREDENTIAL_PROVIDERS:  # the metric exporter's, as the SDK reads them
        monkeypatch.setenv(name, "no-such-provider")
        assert export_session("METRICS") is None
        monkeypatch.delenv(name)
    assert isinstance(export_session("METRICS"), ExportSession)
    given = requests.Session()
    exporter = HttpSpanExporter(endpoint="http://127.0.0.1:1/v1/traces", session=given)
    stop(exporter)


async def test_the_otlp_certificate_wins_over_the_environments_ca_bundle(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """A collector with a private CA, trusted through `OTEL_EXPORTER_OTLP_CERTIFICATE`, in an
    environment whose `REQUESTS_CA_BUNDLE` names the system's bundle (which `requests` would
    use instead): spans and metrics reach it; without the certificate they do not."""
    clean_env(monkeypatch)
    write_self_signed(tmp_path / "collector.pem", tmp_path / "collector.key")
    tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    tls.load_cert_chain(tmp_path / "collector.pem", tmp_path / "collector.key")
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", requests.utils.DEFAULT_CA_BUNDLE_PATH)
    async with receiving(tls) as receiver:
        metrics_url = receiver.url.replace("/v1/traces", "/v1/metrics")

        def post() -> tuple[SpanExportResult, MetricExportResult]:
            spans_exporter = HttpSpanExporter(endpoint=receiver.url)
            metrics_exporter = HttpMetricExporter(
                endpoint=metrics_url, session=export_session("METRICS")
            )
            results = (spans_exporter.export(spans(1)), metrics_exporter.export(METRICS))
            stop(spans_exporter)
            metrics_exporter.shutdown()
            return results

        monkeypatch.setenv("OTEL_EXPORTER_OTLP_TIMEOUT", "1")
        refused = (SpanExportResult.FAILURE, MetricExportResult.FAILURE)
        assert await asyncio.to_thread(post) == refused  # the system's bundle: not trusted
        monkeypatch.setenv("OTEL_EXPORTER_OTLP_CERTIFICATE", str(tmp_path / "collector.pem"))
        trusted = (SpanExportResult.SUCCESS, MetricExportResult.SUCCESS)
        assert await asyncio.to_thread(post) == trusted
    assert len(receiver.bodies) == 2
