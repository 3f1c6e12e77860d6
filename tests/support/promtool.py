"""`promtool` (Debian's `prometheus` package) for the alerting-rule tests, or a skip saying how."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent.parent
RULES = ROOT / "deploy" / "prometheus" / "claude-sidecar-rules.yaml"
RULE_TESTS = ROOT / "deploy" / "prometheus" / "claude-sidecar-rules.test.yaml"
INSTALL = "apt-get install -y prometheus  # Debian/Ubuntu: provides promtool"


def promtool() -> str:
    """The `promtool` binary, or skip the test with the command that installs it."""
    found = shutil.which("promtool")
    if found is None:
        pytest.skip(f"promtool not installed: {INSTALL}")
    return found


def run_promtool(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    """`promtool ARGS` (bounded: it only reads files); its output for assertion messages."""
    return subprocess.run(
        [promtool(), *args], capture_output=True, text=True, timeout=60, cwd=cwd, check=False
    )
