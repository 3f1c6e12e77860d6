"""Label values that alerts, dashboard panels and documented queries filter on are real.

A rule or panel that filters on a bounded label (`sidecar_rejection_reason="..."`, an
outcome matched by `=~` or `!~`) silently matches nothing, or misfiles a new value, when
the value is misspelled or renamed: every value such a matcher names is one the sidecar
emits, and every alternative of a regex matcher matches one of them.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import get_args

import pytest

from sidecar.errors import REASONS
from sidecar.handlers.app_websocket import Outcome as WebSocketOutcome
from sidecar.record import Outcome as StreamOutcome

ROOT = Path(__file__).resolve().parent.parent

# The bounded labels with a catalogue in code: Prometheus name -> every value emitted.
CATALOGUES: dict[str, frozenset[str]] = {
    "sidecar_rejection_reason": frozenset(REASONS),
    "sidecar_stream_outcome": frozenset(get_args(StreamOutcome)),
    "sidecar_websocket_outcome": frozenset(get_args(WebSocketOutcome)),
}
# `label="value"`, `label=~"regex"`, `label!~"regex"`, `label!="value"`, as PromQL writes
# them in YAML and Markdown, or JSON-escaped (`\"`) in the dashboard's text.
MATCHER = re.compile(r'\b([a-z_]+)\s*(=~|!~|!=|=)\s*\\?"((?:[^"\\]|\\[^"])*)\\?"')


def query_texts() -> dict[str, str]:
    """Every text holding PromQL that ships: rules (plain and Helm), dashboard, docs."""
    texts = {
        "deploy/prometheus/claude-sidecar-rules.yaml": "",
        "helm/claude-sidecar/templates/prometheusrule.yaml": "",
    }
    for name in texts:
        texts[name] = (ROOT / name).read_text()
    dashboard = json.loads((ROOT / "docs" / "grafana-dashboard.json").read_text())
    texts["docs/grafana-dashboard.json"] = "\n".join(
        target["expr"] for panel in dashboard["panels"] for target in panel["targets"]
    )
    for doc in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]:
        texts[str(doc.relative_to(ROOT))] = doc.read_text()
    return texts


def matchers() -> list[tuple[str, str, str, str]]:
    """(file, label, operator, value) of every matcher on a catalogued label."""
    found = []
    for name, text in query_texts().items():
        for label, operator, value in MATCHER.findall(text):
            if label in CATALOGUES:
                found.append((name, label, operator, value.replace("\\\\", "\\")))
    return found


def test_the_shipped_queries_filter_on_catalogued_labels() -> None:
    """The test reads something: the rules filter on reasons and on stream outcomes."""
    labels = {label for _, label, _, _ in matchers()}
    assert {"sidecar_rejection_reason", "sidecar_stream_outcome"} <= labels


@pytest.mark.parametrize(("where", "label", "operator", "value"), matchers())
def test_every_value_a_query_names_is_emitted(
    where: str, label: str, operator: str, value: str
) -> None:
    values = CATALOGUES[label]
    if operator in ("=", "!="):
        assert value in values, f"{where}: {label}{operator}{value!r} is never emitted"
        return
    for alternative in value.split("|"):
        pattern = re.compile(alternative)
        assert any(pattern.fullmatch(v) for v in values), (
            f"{where}: {label}{operator}{value!r}: {alternative!r} matches no value"
        )
