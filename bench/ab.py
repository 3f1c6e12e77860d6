"""A change's cost, measured against another version of the sidecar in the same minutes.

    uv run python bench/ab.py                       # this tree against HEAD, all on
    uv run python bench/ab.py --rev main~3          # against another commit
    uv run python bench/ab.py --base ../other-tree  # against a folder holding `sidecar/`
    uv run python bench/ab.py --callers 1,50 --rounds 7 --mode no-telemetry

Between two full runs of `run.py` CPU per call moves by ±5 % and the sequential added
TTFT by a few hundredths of a millisecond, about what one change saves: compared
across runs, noise reads as a saving. Here both versions run at once, each its own
process (the same config as `run.py`'s sidecar rows) in front of one fake Claude,
with the naive passthrough and direct calls as references, and take turns in every
round (one-token calls, one at a time or from concurrent callers). Each version's
process imports its own `sidecar` package (`PYTHONPATH`, with `PYTHONSAFEPATH` so the
working directory does not come first). Printed per number of callers: each
version's CPU per call (median of the rounds, each round's in brackets) and its ratio
to naive, the added TTFT p50 (median of the rounds'), and the change from the base.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import subprocess
import tempfile
from pathlib import Path

import peers  # bench/ is on the path as the script's folder
import run as bench

MODES = ("all", "resume", "no-telemetry", "bare")


def exported(stack: contextlib.ExitStack, rev: str) -> Path:
    """A folder holding the `sidecar` package as of commit `rev` (removed with `stack`)."""
    folder = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="bench-ab-")))
    archive = subprocess.run(
        ["git", "archive", rev, "sidecar"], cwd=peers.ROOT, capture_output=True, check=True
    ).stdout
    subprocess.run(["tar", "-x", "-C", str(folder)], input=archive, check=True)
    return folder


def importing_from(launch: peers.Launch, folder: Path) -> peers.Launch:
    """`launch`, its process importing the `sidecar` package under `folder`."""
    paths = [str(folder), *filter(None, [os.environ.get("PYTHONPATH")])]
    env = {"PYTHONPATH": os.pathsep.join(paths), "PYTHONSAFEPATH": "1"}
    launch.env = {**(launch.env or {}), **env}
    return launch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    base = parser.add_mutually_exclusive_group()
    base.add_argument("--rev", default="HEAD", help="the base: a commit (default HEAD)")
    base.add_argument("--base", type=Path, help="the base: a folder holding `sidecar/`")
    parser.add_argument("--mode", choices=MODES, default="all")
    parser.add_argument("--callers", default="1,50", help="comma-separated, e.g. 1,50")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--calls", type=int, default=400, help="per round (at least 40 per caller)")
    args = parser.parse_args()
    callers = [int(c) for c in args.callers.split(",")]
    with contextlib.ExitStack() as stack:
        folder = args.base.resolve() if args.base else exported(stack, args.rev)
        if not (folder / "sidecar" / "__init__.py").is_file():
            parser.error(f"{folder} holds no sidecar package")
        fake, _, otlp = peers.fake_and_sink(stack)
        here, there = (
            importing_from(peers.sidecar(stack, name, fake, otlp, args.mode), path)
            for name, path in (("this tree", peers.ROOT), ("base", folder))
        )
        targets = [
            peers.Target("direct", "direct", fake, None),
            *peers.launch(stack, [peers.naive(fake), here, there]),
        ]
        for count in callers:
            calls = max(args.calls, 40 * count)
            for target in targets:
                bench.run_load(target, count, 1, 0, max(calls // 4, count))  # warm up
            rounds: dict[str, list[tuple[float, float]]] = {t.name: [] for t in targets}
            for _ in range(args.rounds):
                for target in targets:
                    result = bench.measure(target, count, 1, 0, calls)
                    cpu = (result["cpu_us"] or 0.0) / max(result["requests"], 1)
                    rounds[target.name].append((cpu, result["ttft_p50_ms"]))
            print(report(count, rounds, ["naive aiohttp", "base", "this tree"]))


def report(count: int, rounds: dict[str, list[tuple[float, float]]], names: list[str]) -> str:
    """The table of one caller count: CPU per call and added TTFT p50 by version."""
    direct = [ttft for _, ttft in rounds["direct"]]
    naive = statistics.median(cpu for cpu, _ in rounds["naive aiohttp"])
    lines = [
        f"\n**{count} caller{'s' if count > 1 else ''}**, {len(direct)} rounds\n",
        "| peer | CPU per call, median (µs) | × naive | added TTFT p50 (ms) | per round (µs) |",
        "| --- | ---: | ---: | ---: | --- |",
    ]
    medians: dict[str, tuple[float, float]] = {}
    for name in names:
        rows = rounds[name]
        cpu = statistics.median(c for c, _ in rows)
        added = statistics.median(t - d for (_, t), d in zip(rows, direct, strict=True))
        medians[name] = cpu, added
        each = " ".join(f"{c:.0f}" for c, _ in rows)
        lines.append(f"| {name} | {cpu:.1f} | {cpu / naive:.2f} | {added:+.3f} | {each} |")
    (base_cpu, base_ttft), (cpu, ttft) = medians["base"], medians["this tree"]
    lines.append(
        f"\nthis tree against the base: CPU per call {cpu - base_cpu:+.1f} µs"
        f" ({(cpu / base_cpu - 1) * 100:+.1f} %), added TTFT p50 {(ttft - base_ttft) * 1000:+.0f} µs"
    )
    return "\n".join(lines)


if __name__ == "__main__":
    main()
