"""Where telemetry's CPU per call goes, in situ: thread CPU time inside each entry point.

    uv run python bench/telemetry_probe.py                 # 2,000 sequential one-token calls
    uv run python bench/telemetry_probe.py --callers 50    # from 50 concurrent callers

Starts the fake Claude, an OTLP sink and the all-on sidecar of `run.py` (the same
config), the sidecar wrapped so that each telemetry entry point (the `Telemetry`
methods a call runs, the span processor's encoding and posting, the log handler's
writes) adds the CPU time of the thread that ran it (`time.thread_time_ns`) to its
total. A call made inside another counted one is counted under it too (indented).
After a warm-up, the totals are taken before and after the calls: printed per call,
with how many times per call each ran. The sidecar's own CPU per call is printed
with them; every entry point costs the probe ~1 µs, so the total over-states a little.
The figures move with the machine like every timing: compare rows of one run.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import functools
import json
import os
import signal
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import peers  # bench/ is on the path as the script's folder
import run as bench

# (module, class or None, attribute): the entry points, in the order a call meets them.
ENTRY_POINTS: list[tuple[str, str | None, str]] = [
    ("sidecar.telemetry.core", "Telemetry", "extract"),
    ("sidecar.telemetry.core", "Telemetry", "start_server_span"),
    ("sidecar.telemetry.stream_telemetry", "StreamTelemetry", "start_stream"),
    ("sidecar.telemetry.stream_telemetry", "StreamTelemetry", "admitted"),
    ("sidecar.telemetry.core", "Telemetry", "inject"),
    ("sidecar.telemetry.stream_telemetry", "StreamTelemetry", "stream_started"),
    ("sidecar.telemetry.counters", "Counters", "upstream_status"),
    ("sidecar.telemetry.stream_telemetry", "StreamTelemetry", "finish_stream"),
    ("sidecar.telemetry.core", "Telemetry", "end_server_span"),
    ("sidecar.telemetry.counters", "Counters", "access"),
    ("sidecar.telemetry.spans", "Spans", "ended"),
    ("sidecar.telemetry.loop_spans", "LoopSpanProcessor", "_encode"),
    ("sidecar.telemetry.span_poster", "SpanPoster", "_post"),
    ("sidecar.telemetry.logs", None, "log_event"),
    ("sidecar.telemetry.log_handler", "LineHandler", "_write_when_due"),
    ("sidecar.telemetry.streams", None, "record_metrics"),
]


class Totals:
    """CPU nanoseconds and calls per entry point (nested ones under their caller's depth)."""

    def __init__(self) -> None:
        self.ns: collections.Counter[str] = collections.Counter()
        self.calls: collections.Counter[str] = collections.Counter()
        self._depth = threading.local()

    def wrap(self, function: Callable[..., Any], label: str) -> Callable[..., Any]:
        clock = time.thread_time_ns

        @functools.wraps(function)
        def counted(*args: Any, **kwargs: Any) -> Any:
            depth = getattr(self._depth, "value", 0)
            self._depth.value = depth + 1
            started = clock()
            try:
                return function(*args, **kwargs)
            finally:
                self._depth.value = depth
                key = "  " * depth + label
                self.ns[key] += clock() - started
                self.calls[key] += 1

        return counted

    def dump(self, path: str) -> None:
        Path(path).write_text(json.dumps({"ns": self.ns, "calls": self.calls}))


def install(totals: Totals) -> None:
    """Wrap every entry point (a module function in its module and wherever imported)."""
    import importlib

    for module_name, owner_name, attribute in ENTRY_POINTS:
        module = importlib.import_module(module_name)
        owner: Any = getattr(module, owner_name) if owner_name else module
        label = f"{owner_name or module_name.rsplit('.', 1)[1]}.{attribute}"
        original = getattr(owner, attribute)
        wrapped = totals.wrap(original, label)
        setattr(owner, attribute, wrapped)
        if owner_name is None:  # imported by name elsewhere: wrap those references too
            for other in list(sys.modules.values()):
                name = getattr(other, "__name__", "")
                if name.startswith("sidecar.") and getattr(other, attribute, None) is original:
                    setattr(other, attribute, wrapped)


def serve(config: str, dump_to: str) -> None:
    """The sidecar, wrapped; SIGUSR1 writes the totals to `dump_to`."""
    import sidecar.app  # noqa: F401  (every module imported before wrapping)
    from sidecar.cli import main as sidecar_main

    totals = Totals()
    install(totals)
    signal.signal(signal.SIGUSR1, lambda *_: totals.dump(dump_to))
    sys.exit(sidecar_main(["run", "-c", config]))


def snapshot(pid: int, path: str) -> dict[str, dict[str, int]]:
    """The totals of the sidecar `pid` once its calls have ended (it writes them to `path`
    on SIGUSR1): a call's client has its answer a moment before the sidecar's telemetry
    for it has run, so the totals are taken after a pause."""
    time.sleep(0.3)
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)
    os.kill(pid, signal.SIGUSR1)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        with contextlib.suppress(FileNotFoundError, ValueError):
            data: dict[str, dict[str, int]] = json.loads(Path(path).read_text())
            return data
        time.sleep(0.02)
    raise RuntimeError("the probed sidecar wrote no totals")


def measure(callers: int, calls: int) -> list[str]:
    """Run the calls against the wrapped all-on sidecar; the table's lines."""
    with contextlib.ExitStack() as stack:
        fake, _, otlp = peers.fake_and_sink(stack)
        launch = peers.sidecar(stack, "sidecar, all on (probed)", fake, otlp, "all")
        dump_to = str(Path(stack.enter_context(tempfile.TemporaryDirectory())) / "totals.json")
        launch.args = [peers.PY, __file__, "--serve", launch.args[-1], "--dump", dump_to]
        (target,) = peers.launch(stack, [launch])
        assert target.pid is not None
        bench.run_load(target, 5, 20, 0)  # warm up every path
        before = snapshot(target.pid, dump_to)
        result = bench.measure(target, callers, 1, 0, calls)
        after = snapshot(target.pid, dump_to)
    done = max(result["requests"], 1)
    lines = [
        f"sidecar CPU per call: {result['cpu_us'] / done:.1f} µs"
        f" ({done} one-token calls, {callers} at a time)",
        "",
        "| entry point | CPU per call (µs) | runs per call |",
        "| --- | ---: | ---: |",
    ]
    rows = []
    for key, ns in after["ns"].items():
        spent = (ns - before["ns"].get(key, 0)) / 1000 / done
        runs = (after["calls"][key] - before["calls"].get(key, 0)) / done
        rows.append((key, spent, runs))
    # The outermost entry points first (their sum is telemetry's part of the call), then
    # what was counted inside them again, each by CPU.
    rows.sort(key=lambda row: (row[0].startswith(" "), -row[1]))
    for key, spent, runs in rows:
        shown = f"inside: {key.strip()}" if key.startswith(" ") else key
        lines.append(f"| {shown} | {spent:.2f} | {runs:.2f} |")
    top = sum(spent for key, spent, _ in rows if not key.startswith(" "))
    lines.append(f"| **the outermost together** | **{top:.2f}** | |")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--callers", type=int, default=1)
    parser.add_argument("--calls", type=int, default=2000)
    parser.add_argument("--serve", help=argparse.SUPPRESS)  # the wrapped sidecar's config
    parser.add_argument("--dump", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        serve(args.serve, args.dump)
        return
    print("\n".join(measure(args.callers, args.calls)))


if __name__ == "__main__":
    main()
