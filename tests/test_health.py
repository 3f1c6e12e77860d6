"""State metrics the alerts read: `sidecar.ready`, the last reload's result, JWKS refreshes."""

from __future__ import annotations

import re
from pathlib import Path

import aiohttp
import yaml
from opentelemetry.sdk.metrics.export import Gauge, InMemoryMetricReader
from prometheus_client.parser import text_string_to_metric_families

from sidecar import loader
from sidecar.config import TelemetryConfig
from sidecar.loader import deep_merge
from sidecar.server import SidecarServer
from sidecar.telemetry import Telemetry
from tests.support.redis_server import RedisServer
from tests.support.sidecars import BASE


async def gauges(server: SidecarServer) -> dict[str, float]:
    """The samples without attributes (only the exporter's scope labels) of a real scrape."""
    async with aiohttp.ClientSession() as http, http.get(server.admin_url + "/metrics") as r:
        text = await r.text()
    return {
        sample.name: sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if all(label.startswith("otel_scope_") for label in sample.labels)
    }


async def test_a_refused_reload_shows_until_a_good_one(tmp_path: Path) -> None:
    path = tmp_path / "sidecar.yaml"
    path.write_text(yaml.safe_dump(BASE))
    server = SidecarServer(loader.load(path, {}), config_path=path, env={})
    await server.start()
    try:
        assert (await gauges(server))["sidecar_config_last_reload_successful"] == 1
        path.write_text("server: {max_body_bytes: -1}\n")
        assert not await server.reload()
        assert (await gauges(server))["sidecar_config_last_reload_successful"] == 0
        path.write_text(yaml.safe_dump(deep_merge(BASE, {"screening": {"max_prompt_chars": 99}})))
        assert await server.reload()
        assert (await gauges(server))["sidecar_config_last_reload_successful"] == 1
    finally:
        await server.shutdown(grace=1.0)


async def test_ready_follows_the_quota_store(redis_server: RedisServer) -> None:
    """`sidecar_ready` is the readiness check as of the scrape, whether or not /readyz was probed."""
    data = deep_merge(BASE, {"quotas": {"store": "redis", "redis_url": redis_server.url,
                                   "on_store_error": "fail_closed"}})  # fmt: skip
    server = SidecarServer(loader.validate(data, {}))
    await server.start()
    try:
        assert (await gauges(server))["sidecar_ready"] == 1
        await redis_server.kill()
        assert (await gauges(server))["sidecar_ready"] == 0
        await redis_server.start()
        assert (await gauges(server))["sidecar_ready"] == 1
    finally:
        await server.shutdown(grace=1.0)


# The OpenTelemetry → Prometheus name translation a Collector or Prometheus' own OTLP
# receiver applies (the compatibility spec, with unit and type suffixes), written out here.
_UNIT_WORDS = {"s": "seconds", "ms": "milliseconds", "By": "bytes", "%": "percent"}


def pushed_name(name: str, unit: str, gauge: bool) -> str:
    """The Prometheus family name an OTLP-pushed metric gets (counters' `_total` aside)."""
    base = re.sub(r"[^A-Za-z0-9_:]", "_", name)
    word = _UNIT_WORDS.get(unit, "")
    if unit == "1" and gauge:
        word = "ratio"  # a dimensionless gauge reads as a ratio
    return base if not word or base.endswith("_" + word) else f"{base}_{word}"


def test_gauges_the_alerts_read_keep_their_names_when_pushed_over_otlp() -> None:
    """`sidecar_ready` and `sidecar_config_last_reload_successful` (and every other metric)
    have the same Prometheus name scraped from `/metrics` and pushed over OTLP into
    Prometheus: a unit `1` gauge would become `..._ratio` there, and the shipped alerts
    and the dashboard's job list would read a series that never exists."""
    reader = InMemoryMetricReader()
    telemetry = Telemetry.from_config(TelemetryConfig(), metric_reader=reader)
    try:
        telemetry.readiness({})
        telemetry.config_reload("success")
        telemetry.jwks_refresh("failure")
        body, _ = telemetry.prometheus()
        scraped = {family.name for family in text_string_to_metric_families(body.decode())}
        data = reader.get_metrics_data()
        assert data is not None
        pushed = {
            pushed_name(metric.name, metric.unit or "", isinstance(metric.data, Gauge))
            for resource in data.resource_metrics
            for scope in resource.scope_metrics
            for metric in scope.metrics
        }
    finally:
        telemetry.shutdown()
    assert {"sidecar_ready", "sidecar_config_last_reload_successful"} <= pushed
    assert pushed <= scraped, sorted(pushed - scraped)
