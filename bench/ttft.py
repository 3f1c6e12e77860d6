"""Added time to first token, robustly: rounds of one-token calls, targets taken in turn.

    uv run python bench/ttft.py [--rounds 5] [--calls 300]

Direct, nginx (when installed), the naive aiohttp passthrough, and the sidecar with everything on and with
telemetry off (the same processes and configs as `run.py`) each get `--calls`
sequential one-token calls per round; targets alternate within each round so drift
on a shared machine hits them alike. Prints, per target, the added TTFT p50 of every
round against direct in the same round, their median, and the median CPU per call.
"""

from __future__ import annotations

import argparse
import contextlib
import statistics

import peers  # bench/ is on the path as the script's folder
import run as bench


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--calls", type=int, default=300)
    args = parser.parse_args()
    with contextlib.ExitStack() as stack:
        fake, fake_port, otlp = peers.fake_and_sink(stack)
        launches = [
            peers.naive(fake),
            peers.sidecar(stack, "sidecar, all on", fake, otlp, "all"),
            peers.sidecar(stack, "sidecar, telemetry off", fake, otlp, "no-telemetry"),
        ]
        nginx = peers.nginx(stack, fake_port)
        if not isinstance(nginx, str):
            launches.insert(0, nginx)
        targets = [peers.Target("direct", "direct", fake, None), *peers.launch(stack, launches)]
        for target in targets:
            bench.run_load(target, 5, 20, 0)  # warm up
        rounds: dict[str, list[tuple[float, float]]] = {t.name: [] for t in targets}
        for _ in range(args.rounds):
            for target in targets:
                result = bench.measure(target, 1, 1, 0, args.calls)
                cpu = (result["cpu_us"] or 0.0) / max(result["requests"], 1)
                rounds[target.name].append((result["ttft_p50_ms"], cpu))
    direct = [ttft for ttft, _ in rounds["direct"]]
    print("| case | added TTFT p50 per round (ms) | median (ms) | CPU per call, median (µs) |")
    print("| --- | --- | ---: | ---: |")
    for name, rows in rounds.items():
        if name == "direct":
            continue
        added = [ttft - base for (ttft, _), base in zip(rows, direct, strict=True)]
        print(
            f"| {name} | {' '.join(f'{a:+.2f}' for a in added)}"
            f" | {statistics.median(added):+.2f} | {statistics.median(c for _, c in rows):.0f} |"
        )


if __name__ == "__main__":
    main()
