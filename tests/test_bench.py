"""The benchmark harness runs end to end in its quick mode and writes what readers use.

Asserts the shape of `results.json`, the tables, the plots and the comparison; never a
timing (the machine running the suite is shared, so the numbers mean nothing here).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent
RUN = ROOT / "bench" / "run.py"
PLOTS = ("cpu_per_event.png", "cpu_per_call.png", "added_ttft.png", "rss_per_stream.png")


def harness(*args: str, timeout: float = 240) -> str:
    done = subprocess.run(
        [sys.executable, str(RUN), *args],
        capture_output=True, text=True, cwd=ROOT, timeout=timeout, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One quick run (no plots: those are drawn from its JSON below), its output folder."""
    out = tmp_path_factory.mktemp("bench")
    harness("--quick", "--no-plots", "--out", str(out))
    return out


@pytest.mark.timeout(300)
def test_quick_run_measures_every_peer_side_by_side(quick_run: Path) -> None:
    doc = json.loads((quick_run / "results.json").read_text())
    assert doc["schema"] == 1
    assert doc["quick"] is True
    kinds = [peer["kind"] for peer in doc["peers"]]
    assert kinds[0] == "direct"
    assert {"floor", "naive", "sidecar"} <= set(kinds)
    # nginx is a peer when installed, else a note says its rows were skipped.
    assert "nginx" in kinds or any("nginx" in note for note in doc["notes"])
    resumed = any("resume" in peer["name"] for peer in doc["peers"])
    assert resumed or any("resume" in note for note in doc["notes"])
    plan = doc["plan"]
    for peer in doc["peers"]:
        measured = peer["kind"] != "direct"
        assert set(peer["calls"]) == {"1", str(plan["callers"])}
        for level, row in peer["calls"].items():
            assert row["failures"] == 0
            # Taken in rounds (every peer a turn in each), pooled: counts summed, medians.
            rounds = row["rounds"]
            assert len(rounds) == plan["rounds"] > 1
            assert row["requests"] == sum(r["requests"] for r in rounds) > 0
            calls = plan["sequential"] if level == "1" else plan["concurrent"]
            assert row["requests"] == calls // plan["rounds"] * plan["rounds"]
            if measured:
                assert row["cpu_us"] == sum(r["cpu_us"] for r in rounds)
                per_call = sorted(r["cpu_us"] / r["requests"] for r in rounds)
                assert per_call[0] <= row["cpu_us_per_call"] <= per_call[-1]
            p50s = sorted(r["ttft_p50_ms"] for r in rounds)
            assert p50s[0] <= row["ttft_p50_ms"] <= p50s[-1]
            assert _number(row["added_ttft_p50_ms"])
            assert _number(row["added_ttft_p99_ms"])
            assert _number(row["cpu_us_per_call"]) is measured
        assert set(peer["streams"]) == {str(level) for level in plan["levels"]}
        for row in peer["streams"].values():
            assert row["failures"] == 0
            assert row["events"] > 0
            assert _number(row["cpu_us_per_event"]) is measured
            rounds = row["rounds"]  # pooled likewise: CPU per event over every round's
            assert len(rounds) == plan["stream_rounds"] > 1
            assert row["events"] == sum(r["events"] for r in rounds)
            if measured:
                assert row["cpu_us_per_event"] == sum(r["cpu_us"] for r in rounds) / row["events"]
        if measured and peer["route"] == "anthropic":
            assert peer["memory"]["open"] == plan["open_streams"]
            assert _number(peer["memory"]["per_stream_kib"])
            assert peer["rss_start_kib"] > 0
    tables = (quick_run / "results.md").read_text()
    header = tables.split("**Side by side**")[1].splitlines()[2]
    for peer in doc["peers"][1:]:
        assert peer["name"] in header


@pytest.mark.timeout(120)
def test_plots_and_comparison_come_from_a_results_file(quick_run: Path) -> None:
    results = quick_run / "results.json"
    harness("--replot", str(results), "--out", str(quick_run))
    for name in PLOTS:
        assert (quick_run / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    compared = harness("--compare", str(results), "--against", str(results))
    assert "| sidecar, all on | CPU per call, sequential (µs) |" in compared
    assert "+0 %" in compared  # a run against itself changes nothing


@pytest.mark.timeout(120)
def test_the_telemetry_probe_counts_each_entry_point_of_every_call() -> None:
    """`bench/telemetry_probe.py`: the all-on sidecar's telemetry entry points, each with
    the CPU it took per call and how often a call ran it (counts, not timings, asserted)."""
    done = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "telemetry_probe.py"), "--calls", "40"],
        capture_output=True, text=True, cwd=ROOT, timeout=100, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    rows: dict[str, tuple[float, float]] = {}
    for line in done.stdout.splitlines():
        cells = [cell.strip() for cell in line.strip("|").split("|")]
        if len(cells) == 3 and cells[2] and cells[0] not in ("entry point", "---"):
            rows[cells[0]] = (float(cells[1]), float(cells[2]))
    once = ["Telemetry.start_server_span", "StreamTelemetry.start_stream",
            "StreamTelemetry.stream_started", "StreamTelemetry.finish_stream",
            "Telemetry.end_server_span", "Counters.access", "Telemetry.inject"]  # fmt: skip
    for name in once:
        spent, runs = rows[name]
        assert runs == 1.0, name
        assert spent > 0, name
    assert rows["inside: logs.log_event"][1] == 3.0  # the two stream lines and the access line
    assert rows["inside: Spans.ended"][1] == 2.0  # the request's span and the call's
    assert "sidecar CPU per call:" in done.stdout


def ab(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(ROOT / "bench" / "ab.py"), *args],
        capture_output=True, text=True, cwd=ROOT, timeout=240, check=False,
    )  # fmt: skip


def test_ab_compares_this_tree_with_a_commit_in_the_same_rounds() -> None:
    """`bench/ab.py`: this tree and HEAD's `sidecar` beside naive, one table per caller count."""
    done = ab("--callers", "1", "--rounds", "1", "--calls", "10", "--rev", "HEAD")
    assert done.returncode == 0, done.stderr[-3000:]
    rows = [line for line in done.stdout.splitlines() if line.startswith("| ")][2:]
    assert [row.split(" | ")[0] for row in rows] == ["| naive aiohttp", "| base", "| this tree"]
    for row in rows:
        cpu, ratio = (float(cell) for cell in row.split(" | ")[1:3])
        assert cpu > 0
        assert ratio > 0
    assert "this tree against the base: CPU per call" in done.stdout


def test_ab_runs_the_base_from_its_own_package(tmp_path: Path) -> None:
    """The base's process imports the `sidecar` under `--base`, not this tree's."""
    shutil.copytree(
        ROOT / "sidecar", tmp_path / "sidecar", ignore=shutil.ignore_patterns("__pycache__")
    )
    marker = tmp_path / "imported"
    with (tmp_path / "sidecar" / "__init__.py").open("a") as init:
        init.write(f"\nopen({str(marker)!r}, 'a').write('x')\n")
    done = ab("--callers", "1", "--rounds", "1", "--calls", "10", "--base", str(tmp_path))
    assert done.returncode == 0, done.stderr[-3000:]
    assert marker.read_text() == "x"  # one process: the base's sidecar


def test_ab_refuses_a_base_without_a_sidecar_package(tmp_path: Path) -> None:
    done = ab("--base", str(tmp_path))
    assert done.returncode == 2
    assert "holds no sidecar package" in done.stderr
