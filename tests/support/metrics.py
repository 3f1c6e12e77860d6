"""Reading a Prometheus scrape in tests."""

from __future__ import annotations

from prometheus_client.parser import text_string_to_metric_families


def counts(metrics: str, counter: str, label: str) -> dict[str, float]:
    """A counter's values in a scrape (`counter` without `_total`), by one of its labels."""
    return {
        sample.labels[label]: sample.value
        for family in text_string_to_metric_families(metrics)
        if family.name == counter
        for sample in family.samples
        if sample.name == counter + "_total"
    }
