"""The config snippets of README.md and docs/*.md load as `sidecar check` loads them.

A user copies a snippet into a file: every key in it must exist and every value be
valid. Helm values embed a sidecar config as `config: |` (checked when whole). What a
snippet cannot hold (a file on the user's disk, the user's own key hash) is the only
problem allowed.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from sidecar import loader

ROOT = Path(__file__).resolve().parent.parent
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
# The environment the snippets' `${VAR}`s read (a user sets these from Secrets).
ENV = {
    "ANTHROPIC_API_KEY": "sk-ant-example",
    "JWT_SECRET": "an-hs256-secret-of-at-least-32-bytes",
    "REDIS_URL": "redis://127.0.0.1:6379",
}
# Problems only a user's own files and keys settle.
PLACEHOLDER_PROBLEMS = (r"not readable", r"must be the 64-character hex SHA-256")


def sidecar_configs() -> list[Any]:
    """(doc:line, config text) for every YAML block that is a sidecar config."""
    found = []
    for doc in DOCS:
        if doc.name == "BENCHMARKS.md":
            continue
        text = doc.read_text()
        for match in re.finditer(r"```ya?ml\n(.*?)```", text, re.S):
            where = f"{doc.name}:{text[: match.start()].count(chr(10)) + 1}"
            try:
                node = yaml.safe_load(match[1])
            except yaml.YAMLError:  # a Helm template; elsewhere the load below says why
                node = None if doc.name == "kubernetes.md" else {}
            if not isinstance(node, dict):
                continue
            embedded = _embedded_config(node)
            if embedded is not None:  # Helm values carrying the sidecar's config
                if "..." not in embedded:
                    found.append(pytest.param(embedded, id=where))
            elif doc.name != "kubernetes.md":  # its other blocks are Helm or Kubernetes files
                found.append(pytest.param(match[1], id=where))
    return found


def _embedded_config(values: dict[str, Any]) -> str | None:
    for node in (values, *(v for v in values.values() if isinstance(v, dict))):
        if isinstance(node.get("config"), str):
            return str(node["config"])
    return None


def test_the_docs_have_config_snippets() -> None:
    assert len(sidecar_configs()) >= 10


@pytest.mark.parametrize("snippet", sidecar_configs())
def test_a_config_snippet_is_a_valid_config(snippet: str, tmp_path: Path) -> None:
    path = tmp_path / "sidecar.yaml"
    path.write_text(snippet)
    try:
        loader.load(path, env=ENV)
    except loader.ConfigError as exc:
        real = [p for p in exc.problems if not any(re.search(x, p) for x in PLACEHOLDER_PROBLEMS)]
        assert not real, real
