"""Where a call's CPU and a stream's memory go, by deterministic measures (no stopwatch).

    uv run python bench/costs.py                 # figures per call / event / open stream
    uv run python bench/costs.py --calls 200 --top 40   # + the top functions per call
    uv run python bench/costs.py --memory-sites  # + the top live allocation sites per stream
    uv run python bench/costs.py --breakdown     # the figures with each feature off in turn
    uv run python bench/costs.py --route prompt --event-diff 30  # per event on the prompt route

The sidecar runs in this process with every per-call feature on (API-key auth, CORS,
screening, memory quotas, Prometheus metrics, recorded spans, JSON access and stream
logs); the fake Claude and the client are child processes. Figures are differences
between runs (2M calls minus M, 2N events minus N, 2K open streams minus K): function
calls from cProfile, live memory from tracemalloc (see tests/support/costs.py, which
the allocation guard in tests/test_pipeline.py uses too). Under
`valgrind --tool=callgrind` the same run gives instruction counts.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import pstats
import sys
from collections.abc import Awaitable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.support import costs


def _counts(profile: cProfile.Profile) -> dict[str, int]:
    stats = pstats.Stats(profile).stats  # type: ignore[attr-defined]
    return {pstats.func_std_string(f): v[1] for f, v in stats.items()}  # type: ignore[attr-defined]


async def event_diff(port: int, top: int, route: str = "anthropic") -> None:
    """Function calls per relayed event, by function: a 400-delta stream minus a 200-delta one."""
    counts = []
    for tokens in (200, 400):
        profile = cProfile.Profile()

        def stream(n: int = tokens) -> Awaitable[int]:
            return costs.client(port, n, 1, 500, route)

        events, _ = await costs.measure(stream, profile)
        counts.append((events, _counts(profile)))
    (e1, c1), (e2, c2) = counts
    diff = {k: (c2.get(k, 0) - c1.get(k, 0)) / (e2 - e1) for k in c2.keys() | c1.keys()}
    print(f"calls per relayed event: {sum(diff.values()):.1f}")
    for name, n in sorted(diff.items(), key=lambda kv: -kv[1])[:top]:
        print(f"{n:6.2f}  {name}")


async def breakdown(calls: int) -> None:
    """Function calls and held memory per call and per open stream, one feature off at a time."""
    print("| off | calls per call | bytes per open stream | blocks per open stream |")
    print("| --- | ---: | ---: | ---: |")
    for off in ("", *costs.FEATURES, "everything"):
        without = frozenset(costs.FEATURES if off == "everything" else [off] if off else [])
        async with costs.measured_sidecar(without) as server:
            call = await costs.per_call(server, calls)
            stream = await costs.per_open_stream(server, 50)
        print(f"| {off or '(all on)'} | {call['calls']:.0f} | {stream['bytes']:.0f}"
              f" | {stream['blocks']:.0f} |", flush=True)  # fmt: skip


async def main(args: argparse.Namespace) -> None:
    if args.breakdown:
        await breakdown(args.calls)
        return
    async with costs.measured_sidecar() as server:
        per_call = await costs.per_call(server, args.calls, route=args.route)
        print(f"per call ({args.route} route):", costs.dump(per_call))
        per_event = await costs.per_event(server, 100, 500, args.route)
        print(f"per event ({args.route} route):", costs.dump(per_event))
        print("per open stream:", costs.dump(await costs.per_open_stream(server, 50)))
        if args.memory_sites:
            before = costs.snapshot()
            async with costs.held_streams(server.port, 200):
                await asyncio.sleep(0.2)
                print("\n".join(costs.top_growth(before, args.top or 30)))
        if args.event_diff:
            await event_diff(server.port, args.event_diff, args.route)
        if args.top:
            profile = cProfile.Profile()
            await costs.measure(
                lambda: costs.client(server.port, 1, args.calls, 0, args.route), profile
            )
            stats = pstats.Stats(profile)
            by_file: dict[str, int] = {}
            for (filename, _, _), (_, ncalls, *_) in stats.stats.items():  # type: ignore[attr-defined]
                key = filename.split("site-packages/")[-1].split("/python3.11/")[-1]
                by_file[key] = by_file.get(key, 0) + ncalls
            print("calls per call, by file:")
            for key, n in sorted(by_file.items(), key=lambda kv: -kv[1])[: args.top]:
                print(f"{n / args.calls:8.1f}  {key}")
            stats.sort_stats("ncalls").print_stats(args.top)
            if args.cumulative:
                stats.sort_stats("cumtime").print_stats(args.cumulative, args.top)
            if args.callers:
                stats.print_callers(args.callers)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--calls", type=int, default=200)
    parser.add_argument("--top", type=int, default=0, help="print the top N functions per call")
    parser.add_argument("--memory-sites", action="store_true")
    parser.add_argument("--breakdown", action="store_true", help="each feature off in turn")
    parser.add_argument("--event-diff", type=int, default=0, help="top N functions per event")
    parser.add_argument(
        "--route",
        choices=costs.ROUTES,
        default="anthropic",
        help="the route per call and per event figures use",
    )
    parser.add_argument("--cumulative", help="print functions matching this regex by cumtime")
    parser.add_argument("--callers", help="print who calls functions matching this regex")
    asyncio.run(main(parser.parse_args()))
