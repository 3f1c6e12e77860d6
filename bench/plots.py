"""PNG plots of a benchmark results document (matplotlib, a dev dependency)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only, no display

import matplotlib.pyplot as plt
from matplotlib.axes import Axes

COLOURS = {"floor": "#999999", "nginx": "#2ca02c", "naive": "#1f77b4", "sidecar": "#d62728"}
STYLES = ["-", "--", ":", "-."]


def _peers(doc: dict[str, Any]) -> list[dict[str, Any]]:
    return [p for p in doc["peers"] if p["kind"] != "direct"]


def _style(peer: dict[str, Any], index: int) -> dict[str, Any]:
    """One colour per kind of peer; sidecar variants differ by line style."""
    return {"color": COLOURS.get(peer["kind"], "#000000"), "linestyle": STYLES[index % 4]}


def _finish(fig: Any, ax: Axes, path: Path, title: str) -> Path:
    ax.set_title(title, fontsize=10)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _lines(doc: dict[str, Any], path: Path, phase: str, field: str, title: str, y: str) -> Path:
    fig, ax = plt.subplots(figsize=(6.4, 3.6))
    sidecars = 0
    for peer in _peers(doc):
        levels = sorted(peer[phase], key=int)
        points = [(int(lv), peer[phase][lv][field]) for lv in levels]
        points = [(x, v) for x, v in points if v is not None]
        if not points:
            continue
        index = sidecars if peer["kind"] == "sidecar" else 0
        sidecars += peer["kind"] == "sidecar"
        ax.plot(*zip(*points, strict=True), marker="o", label=peer["name"], **_style(peer, index))
    ax.set_xscale("log")
    ticks = sorted({int(lv) for peer in _peers(doc) for lv in peer[phase]})
    ax.set_xticks(ticks, [str(t) for t in ticks])
    ax.minorticks_off()
    ax.set_xlabel("concurrency")
    ax.set_ylabel(y)
    ax.set_ylim(bottom=0)
    return _finish(fig, ax, path, title)


def _bars(
    ax: Axes, names: list[str], groups: dict[str, list[float | None]], colours: list[str]
) -> None:
    width = 0.8 / max(len(groups), 1)
    for i, (label, values) in enumerate(groups.items()):
        xs = [j + i * width for j in range(len(names))]
        ax.bar(xs, [v or 0.0 for v in values], width, label=label, color=colours[i % len(colours)])
    ax.set_xticks([j + width * (len(groups) - 1) / 2 for j in range(len(names))])
    ax.set_xticklabels(names, rotation=20, ha="right", fontsize=7)


def added_ttft(doc: dict[str, Any], path: Path) -> Path:
    """Two panels (their scales differ by orders): sequential calls, and concurrent callers."""
    peers = _peers(doc)
    callers = str(doc["plan"]["callers"])
    names = [p["name"] for p in peers]
    fig, axes = plt.subplots(1, 2, figsize=(9.6, 3.8))
    for ax, level, title in ((axes[0], "1", "one caller at a time"),
                             (axes[1], callers, f"{callers} concurrent callers")):  # fmt: skip
        groups = {
            "p50": [p["calls"][level]["added_ttft_p50_ms"] for p in peers],
            "p99": [p["calls"][level]["added_ttft_p99_ms"] for p in peers],
        }
        _bars(ax, names, groups, ["#9ecae1", "#3182bd"])
        ax.set_ylabel("ms over calling the fake directly")
        ax.axhline(0, color="black", linewidth=0.5)
        ax.set_title(title, fontsize=9)
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle("Added time to first token (one-token calls)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def memory(doc: dict[str, Any], path: Path) -> Path:
    peers = [p for p in _peers(doc) if p["memory"] is not None]
    fig, ax = plt.subplots(figsize=(7.2, 3.6))
    _bars(ax, [p["name"] for p in peers],
          {f"KiB per open stream ({doc['plan']['open_streams']} open)":
           [p["memory"]["per_stream_kib"] for p in peers]},
          ["#756bb1"])  # fmt: skip
    ax.set_ylabel("KiB RSS per open stream")
    for i, peer in enumerate(peers):
        start = peer["rss_start_kib"]
        if start:
            ax.annotate(f"{start / 1024:.0f} MiB at start", (i, 0), xytext=(0, 3),
                        textcoords="offset points", ha="center", fontsize=6, rotation=90,
                        va="bottom")  # fmt: skip
    return _finish(fig, ax, path, "Memory per open, quiet stream")


def write_all(doc: dict[str, Any], out: Path) -> list[Path]:
    """Every plot into `out`; returns their paths."""
    return [
        _lines(doc, out / "cpu_per_event.png", "streams", "cpu_us_per_event",
               "CPU per relayed event, by concurrent streams", "µs of the peer's CPU per event"),
        _lines(doc, out / "cpu_per_call.png", "calls", "cpu_us_per_call",
               "CPU per call (one-token streams), by concurrent callers",
               "µs of the peer's CPU per call"),
        added_ttft(doc, out / "added_ttft.png"),
        memory(doc, out / "rss_per_stream.png"),
    ]  # fmt: skip
