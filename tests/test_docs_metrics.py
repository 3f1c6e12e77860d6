"""docs/observability.md's metric tables against what `GET /metrics` exports.

Every instrument the sidecar creates is recorded once and scraped as the admin
listener's `/metrics` renders it: each Prometheus name exported is in the docs with
its type and unit, and each name the docs list is exported (under either GenAI
convention setting).
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from opentelemetry.metrics import Counter, Histogram

from sidecar.config import TelemetryConfig
from sidecar.telemetry import Telemetry
from sidecar.telemetry.instruments import Totals

ROOT = Path(__file__).resolve().parent.parent
DOC = (ROOT / "docs" / "observability.md").read_text()
# Series the exposition has besides the metric tables (described in their preamble).
NOT_INSTRUMENTS = {"target_info"}


def scrape(monkeypatch: pytest.MonkeyPatch, opt_in: str | None) -> dict[str, str]:
    """Prometheus name -> type, with every instrument recorded once."""
    if opt_in is None:
        monkeypatch.delenv("OTEL_SEMCONV_STABILITY_OPT_IN", raising=False)
    else:
        monkeypatch.setenv("OTEL_SEMCONV_STABILITY_OPT_IN", opt_in)
    telemetry = Telemetry.from_config(TelemetryConfig())
    try:
        for holder in (telemetry.instruments, telemetry.health):
            for value in vars(holder).values():
                if isinstance(value, Totals):
                    value.add(1, {})
                elif isinstance(value, Histogram):
                    value.record(0.5)
                elif isinstance(value, Counter):
                    value.add(1)
        telemetry.health.readiness({})
        body, _ = telemetry.prometheus()
    finally:
        telemetry.shutdown()
    return dict(re.findall(r"^# TYPE (\S+) (\S+)$", body.decode(), re.M))


def documented() -> dict[str, tuple[str, str]]:
    """Prometheus name -> (OTel name, type) from the GenAI and the sidecar's own tables."""
    metrics = DOC.split("\n## Metrics", 1)[1].split("\nRejection reasons", 1)[0]
    rows: dict[str, tuple[str, str]] = {}
    for line in metrics.splitlines():
        cells = [cell.strip() for cell in line.strip().strip("|").split(" | ")]
        if len(cells) < 4 or not cells[0].startswith("`"):
            continue
        otel, prom = cells[0].strip("`"), cells[1].strip("`")
        # GenAI rows: | otel | prom | unit | buckets | ... (all histograms);
        # the sidecar's: | otel | prom | type | unit | attributes |.
        kind = "histogram" if cells[2].startswith("`") else cells[2]
        rows[prom] = (otel, kind)
    return rows


def exposition_type(kind: str) -> str:
    """The Prometheus type of a documented instrument type."""
    if kind.startswith("histogram"):
        return "histogram"
    if kind.startswith("counter"):
        return "counter"
    return "gauge"  # gauges, and up-down counters shown as gauges


def test_every_exported_metric_is_documented_with_its_type(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    exported = scrape(monkeypatch, None)
    docs = documented()
    assert set(exported) - NOT_INSTRUMENTS == set(docs)
    wrong = {
        name: (docs[name][1], kind)
        for name, kind in exported.items()
        if name in docs and exposition_type(docs[name][1]) != kind
    }
    assert not wrong, wrong


def test_prometheus_names_follow_the_documented_rule() -> None:
    """Dots to underscores, `_seconds` for `s`, `_total` on counters."""
    for prom, (otel, kind) in documented().items():
        expected = otel.replace(".", "_")
        if prom.endswith("_seconds"):
            expected += "_seconds"
        if exposition_type(kind) == "counter":
            expected += "_total"
        assert prom == expected, (otel, prom)


def test_the_latest_convention_names_are_the_documented_ones(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    default = set(scrape(monkeypatch, None))
    latest = set(scrape(monkeypatch, "gen_ai_latest_experimental"))
    table = DOC.split("### Convention versions", 1)[1].split("\n## ", 1)[0]
    # The renamed histograms, by name; the usage counters as `.<kind>` after their prefix.
    written = set(re.findall(r"`(gen_ai[._][a-z_.]+)`", table))
    written |= {
        "gen_ai.client.inference.usage" + suffix for suffix in re.findall(r"`(\.[a-z_.]+)`", table)
    }
    prom_of = {name.replace(".", "_") for name in written}
    for name in latest - default:
        stem = name.removesuffix("_total").removesuffix("_seconds")
        assert name in written or stem in prom_of, name
    for name in default - latest:
        assert name.removesuffix("_seconds") in prom_of, name
