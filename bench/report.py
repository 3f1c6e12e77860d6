"""The benchmark's results document as Markdown tables, and two runs compared."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

Row = dict[str, Any]
Metric = tuple[str, Callable[[Row], float | None], str]  # label, getter, format


def _get(*path: str) -> Callable[[Row], float | None]:
    def getter(peer: Row) -> float | None:
        value: Any = peer
        for key in path:
            if not isinstance(value, dict) or key not in value:
                return None
            value = value[key]
        return float(value) if isinstance(value, int | float) else None

    return getter


def _fmt(value: float | None, spec: str) -> str:
    return "—" if value is None else format(value, spec)


def headline_metrics(doc: dict[str, Any]) -> list[Metric]:
    """The figures a reader compares first, one row each."""
    plan = doc["plan"]
    callers = str(plan["callers"])
    metrics: list[Metric] = [
        ("CPU per call, sequential (µs)", _get("calls", "1", "cpu_us_per_call"), ".0f"),
        (f"CPU per call, {callers} callers (µs)", _get("calls", callers, "cpu_us_per_call"), ".0f"),
        ("added TTFT p50, sequential (ms)", _get("calls", "1", "added_ttft_p50_ms"), "+.2f"),
        ("added TTFT p99, sequential (ms)", _get("calls", "1", "added_ttft_p99_ms"), "+.2f"),
        (f"added TTFT p50, {callers} callers (ms)", _get("calls", callers, "added_ttft_p50_ms"), "+.2f"),
        (f"added TTFT p99, {callers} callers (ms)", _get("calls", callers, "added_ttft_p99_ms"), "+.2f"),
    ]  # fmt: skip
    for level in plan["levels"]:
        metrics.append(
            (f"CPU per event, {level} streams (µs)",
             _get("streams", str(level), "cpu_us_per_event"), ".1f")
        )  # fmt: skip
    metrics += [
        (f"RSS per open stream, {plan['open_streams']} open (KiB)",
         _get("memory", "per_stream_kib"), ".1f"),
        ("RSS at start (MiB)", lambda p: p["rss_start_kib"] / 1024 if p["rss_start_kib"] else None,
         ".1f"),
    ]  # fmt: skip
    return metrics


def _side_by_side(peers: list[Row], metrics: list[Metric]) -> list[str]:
    lines = ["| | " + " | ".join(p["name"] for p in peers) + " |"]
    lines.append("| --- |" + " ---: |" * len(peers))
    for label, getter, spec in metrics:
        lines.append(f"| {label} | " + " | ".join(_fmt(getter(p), spec) for p in peers) + " |")
    return lines


P99_BUDGET_MS = 1.5  # added time to first token, p99, sequential and concurrent


def budgets(doc: dict[str, Any]) -> list[str]:
    """Each sidecar row against the budgets, as ratios to the naive passthrough of this run.

    CPU per call ≤ 1.5 × naive; added TTFT p50 ≤ naive's and p99 ≤ 1.5 ms; CPU per
    streamed event ≤ naive; RSS per open stream ≤ naive. `met` / `over` per figure.
    """
    peers = doc["peers"]
    naive = next((p for p in peers if p["kind"] == "naive"), None)
    if naive is None:
        return []
    plan = doc["plan"]
    callers = str(plan["callers"])
    # (label, getter, budget as a function of naive's figure)
    checks: list[tuple[str, Callable[[Row], float | None], Callable[[float], float], str]] = []
    for level, name in (("1", "sequential"), (callers, f"{callers} callers")):
        checks.append((f"CPU per call, {name}", _get("calls", level, "cpu_us_per_call"),
                       lambda n: 1.5 * n, "ratio"))  # fmt: skip
        checks.append((f"added TTFT p50, {name}", _get("calls", level, "added_ttft_p50_ms"),
                       lambda n: n, "ms"))  # fmt: skip
        checks.append((f"added TTFT p99, {name}", _get("calls", level, "added_ttft_p99_ms"),
                       lambda n: P99_BUDGET_MS, "ms"))  # fmt: skip
    for level in plan["levels"]:
        checks.append((f"CPU per event, {level} streams",
                       _get("streams", str(level), "cpu_us_per_event"), lambda n: n, "ratio"))  # fmt: skip
    checks.append(("RSS per open stream", _get("memory", "per_stream_kib"), lambda n: n, "ratio"))
    sidecars = [p for p in peers if p["kind"] == "sidecar"]
    lines = [
        "| budget (against naive in this run) | " + " | ".join(p["name"] for p in sidecars) + " |",
        "| --- |" + " ---: |" * len(sidecars),
    ]
    for label, getter, budget, unit in checks:
        reference = getter(naive)
        cells = []
        for peer in sidecars:
            value = getter(peer)
            if value is None or reference is None:
                cells.append("—")
                continue
            verdict = "met" if value <= budget(reference) else "over"
            shown = (
                f"{value / reference:.2f} ×"
                if unit == "ratio" and reference
                else f"{value:+.2f} ms"
            )
            cells.append(f"{shown} {verdict}")
        limit = {"ratio": "≤ 1.5 × naive" if "CPU per call" in label else "≤ naive",
                 "ms": f"≤ {P99_BUDGET_MS} ms" if "p99" in label else "≤ naive's"}[unit]  # fmt: skip
        lines.append(f"| {label} ({limit}) | " + " | ".join(cells) + " |")
    return lines


def render(doc: dict[str, Any]) -> str:
    """Markdown: the side-by-side table, then per-call, per-stream and memory detail."""
    m = doc["machine"]
    plan = doc["plan"]
    peers = [p for p in doc["peers"] if p["kind"] != "direct"]
    lines = [
        f"Machine: {m['arch']}, {m['cpus']} CPUs, Python {m['python']}, {m['platform']};"
        f" load average at start {m['load_average'][0]:.2f}. {doc['date']},"
        f" {doc['duration_s']:.0f} s{' (quick run)' if doc['quick'] else ''}.",
        "",
    ]
    lines += [f"Note: {note}" for note in doc["notes"]]
    lines += ["", "**Side by side** (CPU is the peer process's own; added TTFT is over calling"
              " the fake directly in the same run)", ""]  # fmt: skip
    lines += _side_by_side(peers, headline_metrics(doc))
    verdicts = budgets(doc)
    if verdicts:
        lines += [
            "",
            "**Budgets**, every sidecar row against the naive passthrough of this run",
            "",
        ]
        lines += verdicts
    callers = str(plan["callers"])
    lines += [
        "", f"**Per call**: {plan['sequential']} one-token streams one at a time, then"
        f" {plan['concurrent']} from {callers} concurrent callers.", "",
        "| peer | TTFT p50 / p99 (ms) | added p50 / p99 (ms) | CPU µs/call"
        f" | {callers} callers: TTFT p50 / p99 (ms) | added p50 / p99 (ms) | CPU µs/call |",
        "| --- | --- | --- | ---: | --- | --- | ---: |",
    ]  # fmt: skip
    for peer in doc["peers"]:
        cells = []
        for level in ("1", callers):
            row = peer["calls"][level]
            cells.append(
                f"{row['ttft_p50_ms']:.2f} / {row['ttft_p99_ms']:.2f}"
                f" | {row['added_ttft_p50_ms']:+.2f} / {row['added_ttft_p99_ms']:+.2f}"
                f" | {_fmt(row['cpu_us_per_call'], '.0f')}"
            )
        lines.append(f"| {peer['name']} | " + " | ".join(cells) + " |")
    lines += [
        "", f"**Streams** of {plan['tokens']} tokens, ≈ 4000 events/s in all (≤ 100 tokens/s"
        " per stream). *Net* subtracts the sequential per-call CPU once per stream.", "",
        "| peer | streams | events | failures | CPU µs/event | net µs/event"
        " | event delay p50 / p99 (ms) | added p50 / p99 (ms) |",
        "| --- | ---: | ---: | ---: | ---: | ---: | --- | --- |",
    ]  # fmt: skip
    for level in plan["levels"]:
        for peer in doc["peers"]:
            row = peer["streams"][str(level)]
            lines.append(
                f"| {peer['name']} | {level} | {row['events']} | {row['failures']}"
                f" | {_fmt(row['cpu_us_per_event'], '.1f')} | {_fmt(row['net_us_per_event'], '.1f')}"
                f" | {row['delay_p50_ms']:.2f} / {row['delay_p99_ms']:.2f}"
                f" | {row['added_delay_p50_ms']:+.2f} / {row['added_delay_p99_ms']:+.2f} |"
            )
    lines += ["", f"**Memory**: {plan['open_streams']} quiet streams held open at once.", "",
              "| peer | RSS at start (MiB) | RSS with them open (MiB) | KiB per open stream |",
              "| --- | ---: | ---: | ---: |"]  # fmt: skip
    for peer in doc["peers"]:
        memory = peer["memory"]
        if memory is None:
            continue
        start = peer["rss_start_kib"] / 1024 if peer["rss_start_kib"] else None
        lines.append(
            f"| {peer['name']} | {_fmt(start, '.1f')} | {memory['after_kib'] / 1024:.1f}"
            f" | {memory['per_stream_kib']:.1f} |"
        )
    return "\n".join(lines) + "\n"


def compare(old: dict[str, Any], new: dict[str, Any]) -> str:
    """Markdown: every headline figure of the peers both runs have, old → new and the change."""
    names = [p["name"] for p in new["peers"] if p["kind"] != "direct"]
    before = {p["name"]: p for p in old["peers"]}
    lines = [
        f"Compared: {old['date']} ({'quick' if old['quick'] else 'full'})"
        f" → {new['date']} ({'quick' if new['quick'] else 'full'})",
        "",
        "| peer | figure | old | new | change |",
        "| --- | --- | ---: | ---: | ---: |",
    ]
    for name in names:
        if name not in before:
            lines.append(f"| {name} | (not in the old run) | | | |")
            continue
        peer = next(p for p in new["peers"] if p["name"] == name)
        for label, getter, spec in headline_metrics(new):
            was, now = getter(before[name]), getter(peer)
            if was is None and now is None:
                continue
            change = (
                f"{(now - was) / abs(was) * 100:+.0f} %"
                if was is not None and now is not None and was != 0 and "added" not in label
                else (f"{now - was:+.2f}" if was is not None and now is not None else "—")
            )
            lines.append(f"| {name} | {label} | {_fmt(was, spec)} | {_fmt(now, spec)} | {change} |")
    lines.append("")
    lines.append("Latency changes are differences in ms (both runs' own direct baselines);")
    lines.append("compare runs of one machine, quiet both times.")
    return "\n".join(lines) + "\n"
