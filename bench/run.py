"""Benchmark: the floor, nginx, a naive aiohttp passthrough and the sidecar, side by side.

    uv run python bench/run.py                    # full run (~6 min on 2 cores)
    uv run python bench/run.py --quick            # smoke run (15-35 s), tiny counts
    uv run python bench/run.py --compare old.json # full run, then a table against old.json
    uv run python bench/run.py --compare old.json --against new.json   # compare only
    uv run python bench/run.py --replot docs/bench/results.json        # tables + plots again

Every peer is its own process on loopback in front of one fake Claude process
(`python -m sidecar.fake_claude`, which stamps each text delta with its send time):
direct (no proxy: the reference), the floor (`floor_relay.py`, a bare uvloop TCP
byte relay), nginx (when installed: generated config, `proxy_buffering off`,
upstream keepalive), `naive_proxy.py` (the obvious aiohttp passthrough) and the
sidecar all on (API-key auth, CORS, RE2 screening, memory quotas, spans and metrics
over OTLP/HTTP to `otlp_sink.py`, Prometheus, JSON stream and access logs), again
with resume on (memory store; when the config has `resume`), on its prompt route,
with telemetry off and bare.

Per peer: RSS at start and per open quiet stream (N held open at once), one-token
calls one at a time and from 50 concurrent callers (CPU per call, added time to
first token over direct; in 4 rounds, every peer taking its turn in each, so the
ratios come from the same minutes; CPU per call and percentiles the median of the
rounds'), and streams at several concurrencies (CPU per
relayed event, per-event delay from the fake's send stamp; in 2 rounds likewise, CPU
per event over both). CPU is the peer process's own
CPU time (/proc/PID/task/*/schedstat, all threads), so it depends little on what
else the machine does; latencies do, and are reported as measured.

Writes `results.json` (the numbers, for `--compare`), `results.md` (the tables) and
PNG plots to `--out` (default `docs/bench/`).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime
import json
import os
import platform
import statistics
import sys
import time
import urllib.request
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import aiohttp
import load
import peers  # bench/ is on the path as the script's folder
import report
import uvloop
from common import cpu_ns, free_port, rss_kib
from peers import PY, ROOT, Target

SCHEMA = 1


@dataclass
class Plan:
    """How much of each measurement one run makes."""

    levels: list[int]  # concurrent streams in the streaming phase
    tokens: int  # per stream in the streaming phase
    sequential: int  # one-token calls, one at a time
    callers: int  # concurrent callers in the concurrent-calls phase
    concurrent: int  # one-token calls in all in that phase
    open_streams: int  # quiet streams held open at once for RSS per stream
    sidecar_variants: bool  # also prompt route, telemetry off, bare
    rounds: int  # the call phases in this many rounds, every peer taking its turn in each
    stream_rounds: int  # the streaming phase in this many rounds, likewise


FULL = Plan([5, 50, 200], 300, 1000, 50, 2000, 1000, True, 4, 2)
QUICK = Plan([5, 50], 10, 30, 50, 100, 50, False, 2, 2)


def run_load(
    target: Target, streams: int, tokens: int, tps: float, requests: int = 0
) -> dict[str, Any]:
    """One load run (`load.py`'s client, on uvloop in this process), bounded in time.

    The client runs here rather than in a child process: only the peer's own CPU is
    measured, and a run costs no interpreter start (which kept quick runs slow).
    """

    async def bounded() -> dict[str, Any]:
        async with asyncio.timeout(600):
            return await load.summary(
                target.url,
                streams,
                tokens,
                tps,
                target.key,
                requests,
                target.route,
                target.headers,
            )

    return uvloop.run(bounded())


def measure(
    target: Target, streams: int, tokens: int, tps: float, requests: int = 0
) -> dict[str, Any]:
    """One load run against a target, with the CPU (µs) its process used during the run."""
    before = cpu_ns(target.pid) if target.pid else 0
    result = run_load(target, streams, tokens, tps, requests)
    result["cpu_us"] = (cpu_ns(target.pid) - before) / 1000 if target.pid else None
    return result


def open_stream_memory(target: Target, count: int) -> dict[str, Any] | None:
    """RSS per open-but-quiet stream: `count` held at once (the fake stalls after message_start)."""
    if target.pid is None or target.route != "anthropic":
        return None
    pid = target.pid
    body = {
        "model": "claude-sonnet-5-5", "max_tokens": 10, "stream": True,
        "messages": [{"role": "user", "content": "[[fake fault=stall]] idle"}],
    }  # fmt: skip
    headers = {"x-api-key": target.key} if target.key else {}
    headers |= target.headers

    async def hold() -> dict[str, Any]:
        connector = aiohttp.TCPConnector(limit=0)
        async with aiohttp.ClientSession(connector=connector) as session:
            before = rss_kib(pid)
            responses: list[aiohttp.ClientResponse] = []

            async def one() -> None:
                response = await session.post(
                    target.url + "/v1/messages", json=body, headers=headers
                )
                await response.content.readline()  # the stream is open at the peer
                responses.append(response)

            for start in range(0, count, 50):  # 50 at a time: no accept-queue overflow
                await asyncio.gather(*(one() for _ in range(min(50, count - start))))
            await asyncio.sleep(0.5)
            after = rss_kib(pid)
            for response in responses:
                response.close()
            return {"open": count, "before_kib": before, "after_kib": after,
                    "per_stream_kib": (after - before) / count}  # fmt: skip

    async def bounded() -> dict[str, Any]:
        # A peer that cannot hold `count` streams at once fails here, it does not hang.
        async with asyncio.timeout(180):
            return await hold()

    return uvloop.run(bounded())


def release_stalls(fake: str, timeout: float = 60) -> None:
    """End the streams the memory phase held open, and wait until the fake has none open.

    A peer that never notices its client left (the naive passthrough) would otherwise keep
    every one of them, and their objects would weigh on its later phases (a larger heap for
    each garbage collection to walk): each peer starts its timed phases with none open.
    """
    urllib.request.urlopen(urllib.request.Request(fake + "/_fake/release", method="POST")).close()
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with urllib.request.urlopen(fake + "/_fake/stats") as answer:
            if json.load(answer)["open_streams"] == 0:
                return
        time.sleep(0.1)
    raise RuntimeError("the fake still has open streams after the release")


def bench_memory(target: Target, plan: Plan, fake: str) -> dict[str, Any] | None:
    """RSS per open quiet stream, on a fresh peer after a warm-up (`fake`: to end held
    streams)."""
    run_load(target, 5, 20, 0)  # warm up every code path
    memory = open_stream_memory(target, plan.open_streams)
    release_stalls(fake)
    return memory


def bench_calls(targets: list[Target], plan: Plan) -> dict[str, dict[str, Any]]:
    """One-token calls, sequential and from `plan.callers` callers, per peer, in rounds.

    In each of `plan.rounds` rounds every peer takes its turn (the order rotating), so
    what the machine does meanwhile (another process, a frequency step) falls on all of
    them alike rather than on whichever ran in that minute: the ratios between peers
    are taken from the same minutes. A peer's figures pool its rounds: CPU and calls
    summed, CPU per call and latency percentiles the median of its rounds' (a round
    that met a burst of other work moves them least; each round's also kept).
    """
    levels = {"1": (1, plan.sequential), str(plan.callers): (plan.callers, plan.concurrent)}
    rows: dict[str, dict[str, list[dict[str, Any]]]] = {
        target.name: {level: [] for level in levels} for target in targets
    }
    for target in targets:  # warm up every code path
        run_load(target, 5, 20, 0)
    for round_ in range(plan.rounds):
        turn = round_ % len(targets)
        for target in targets[turn:] + targets[:turn]:
            for level, (callers, calls) in levels.items():
                share = max(calls // plan.rounds, 1)
                rows[target.name][level].append(measure(target, callers, 1, 0, share))
    return {
        name: {level: pooled(rounds) for level, rounds in by_level.items()}
        for name, by_level in rows.items()
    }


def pooled(rounds: list[dict[str, Any]]) -> dict[str, Any]:
    """One row from the rounds of one measurement: counts summed, percentiles' medians."""
    row: dict[str, Any] = {
        key: sum(r[key] for r in rounds) for key in ("streams", "requests", "failures", "events")
    }
    cpu = [r["cpu_us"] for r in rounds]
    row["cpu_us"] = None if None in cpu else sum(cpu)
    for key in ("ttft_p50_ms", "ttft_p99_ms", "delay_p50_ms", "delay_p99_ms"):
        row[key] = statistics.median(r[key] for r in rounds)
    row["rounds"] = rounds
    return row


def bench_streams(targets: list[Target], plan: Plan) -> dict[str, dict[str, Any]]:
    """Streams at each concurrency of `plan.levels`, per peer, in `plan.stream_rounds` rounds.

    As the call phases: every peer takes its turn in each round (the order rotating), and
    a peer's rows pool its rounds (events, streams and CPU summed, so CPU per event is
    over all of them; delay percentiles the median of the rounds'; each round's kept).
    """
    rows: dict[str, dict[str, list[dict[str, Any]]]] = {
        target.name: {str(level): [] for level in plan.levels} for target in targets
    }
    for round_ in range(plan.stream_rounds):
        turn = round_ % len(targets)
        for target in targets[turn:] + targets[:turn]:
            for level in plan.levels:
                row = measure(target, level, plan.tokens, min(100.0, 4000 / level))
                rows[target.name][str(level)].append(row)
    return {
        name: {level: pooled(rounds) for level, rounds in by_level.items()}
        for name, by_level in rows.items()
    }


def derive(results: list[dict[str, Any]]) -> None:
    """Per-call and per-event figures, and the added latency over direct, into each result."""
    direct = next(r for r in results if r["kind"] == "direct")
    for result in results:
        for level, row in result["calls"].items():
            ref = direct["calls"][level]
            cpu = row["cpu_us"]
            rounds = [r for r in row.get("rounds", []) if r["cpu_us"] is not None]
            if cpu is None:
                row["cpu_us_per_call"] = None
            elif rounds:  # the median of the rounds' (`bench_calls`)
                row["cpu_us_per_call"] = statistics.median(
                    r["cpu_us"] / max(r["requests"], 1) for r in rounds
                )
            else:
                row["cpu_us_per_call"] = cpu / max(row["requests"], 1)
            row["added_ttft_p50_ms"] = row["ttft_p50_ms"] - ref["ttft_p50_ms"]
            row["added_ttft_p99_ms"] = row["ttft_p99_ms"] - ref["ttft_p99_ms"]
        per_call = result["calls"]["1"]["cpu_us_per_call"]
        for level, row in result["streams"].items():
            ref = direct["streams"][level]
            cpu, events = row["cpu_us"], max(row["events"], 1)
            row["cpu_us_per_event"] = cpu / events if cpu is not None else None
            # Net of the per-call work once per stream: what each relayed event costs.
            row["net_us_per_event"] = (
                (cpu - per_call * row["requests"]) / events if cpu is not None else None
            )
            row["added_delay_p50_ms"] = row["delay_p50_ms"] - ref["delay_p50_ms"]
            row["added_delay_p99_ms"] = row["delay_p99_ms"] - ref["delay_p99_ms"]


def progress(phase: str, started_at: float) -> None:
    print(f"bench: {phase} done at {time.monotonic() - started_at:.1f} s", file=sys.stderr)


def machine() -> dict[str, Any]:
    return {
        "arch": platform.machine(), "cpus": os.cpu_count(), "python": platform.python_version(),
        "platform": platform.platform(), "load_average": list(os.getloadavg()),
    }  # fmt: skip


def run(plan: Plan, quick: bool) -> dict[str, Any]:
    """Start every peer, measure each in turn, return the results document."""
    started_at = time.monotonic()
    notes: list[str] = []
    results: list[dict[str, Any]] = []
    fake_port, otlp_port = free_port(), free_port()
    fake = f"http://127.0.0.1:{fake_port}"
    otlp = f"http://127.0.0.1:{otlp_port}"
    with contextlib.ExitStack() as stack:
        fake_launch = peers.Launch(
            Target("direct (no proxy)", "direct", fake, None),
            [PY, "-m", "sidecar.fake_claude", "--port", str(fake_port), "--host", "127.0.0.1"],
            fake + "/_fake/stats",
        )
        sink = peers.Launch(
            Target("otlp sink", "sink", otlp, None),
            [PY, str(ROOT / "bench" / "otlp_sink.py"), "--port", str(otlp_port)], otlp + "/",
        )  # fmt: skip
        launches = [fake_launch, sink, peers.floor(fake)]
        nginx = peers.nginx(stack, fake_port)
        if isinstance(nginx, str):
            notes.append(nginx)
        else:
            launches.append(nginx)
        launches.append(peers.naive(fake))
        all_on = peers.sidecar(stack, "sidecar, all on", fake, otlp, "all")
        launches.append(all_on)
        if peers.resume_supported():
            launches.append(peers.sidecar(
                stack, "sidecar, all on + resume (memory)", fake, otlp, "resume"))  # fmt: skip
        else:
            notes.append("this sidecar has no `resume` config: the resume row is skipped")
        if plan.sidecar_variants:
            launches += [
                peers.sidecar(stack, "sidecar, telemetry off", fake, otlp, "no-telemetry"),
                peers.sidecar(stack, "sidecar, bare", fake, otlp, "bare"),
            ]

        def up(peer_stack: contextlib.ExitStack) -> list[Target]:
            """Every peer started afresh, as the phases see them (direct first)."""
            targets = peers.launch(peer_stack, launches)
            direct = targets[0]
            direct.pid = None  # the reference: nothing in front of the fake to measure
            targets = [direct, *targets[2:]]
            if plan.sidecar_variants:  # the all-on process again, on its prompt route
                one = all_on.target
                prompt = Target("sidecar, all on, prompt route", "sidecar", one.url, one.pid,
                                one.key, "prompt", one.rss_start_kib)  # fmt: skip
                targets.insert(targets.index(one) + 1, prompt)
            return targets

        # The load phases and the memory phase each on processes of their own, started
        # afresh: RSS per stream is read on a heap that has served nothing yet (after the
        # load phases it has room to spare and would not grow), and the calls are measured
        # on peers that never held a thousand streams (which leaves each its own heap and
        # pools behind: naive's CPU per call at 50 callers rose ~25 % after it, the
        # sidecar's ~11 %, which flattered the ratios).
        with contextlib.ExitStack() as load_stack:
            targets = up(load_stack)
            print(f"bench: peers up in {time.monotonic() - started_at:.1f} s", file=sys.stderr)
            calls = bench_calls(targets, plan)
            progress("calls", started_at)
            streams = bench_streams(targets, plan)
            progress("streams", started_at)
        with contextlib.ExitStack() as memory_stack:
            fresh = up(memory_stack)
            memory = {target.name: bench_memory(target, plan, fake) for target in fresh}
            progress("memory", started_at)
        for target in targets:
            results.append({
                "name": target.name, "kind": target.kind, "route": target.route,
                "rss_start_kib": target.rss_start_kib, "memory": memory[target.name],
                "calls": calls[target.name], "streams": streams[target.name],
            })  # fmt: skip
    derive(results)
    return {
        "schema": SCHEMA,
        "quick": quick,
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "machine": machine(),
        "plan": asdict(plan),
        "notes": notes,
        "duration_s": round(time.monotonic() - started_at, 1),
        "peers": results,
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="smoke run: tiny counts, core peers")
    parser.add_argument("--out", default=str(ROOT / "docs" / "bench"), help="output folder")
    parser.add_argument("--no-plots", action="store_true", help="skip the PNG plots")
    parser.add_argument(
        "--replot",
        metavar="RESULTS",
        help="no run: tables and plots from a results.json into --out",
    )
    parser.add_argument("--compare", metavar="OLD", help="results.json of an earlier run")
    parser.add_argument(
        "--against", metavar="NEW", help="with --compare: compare two files, no run"
    )
    args = parser.parse_args()
    if args.against and not args.compare:
        parser.error("--against needs --compare")
    if args.against:
        old, new = (json.loads(Path(p).read_text()) for p in (args.compare, args.against))
        print(report.compare(old, new))
        return
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if args.replot:
        results = json.loads(Path(args.replot).read_text())
    else:
        results = run(QUICK if args.quick else FULL, args.quick)
        (out / "results.json").write_text(json.dumps(results, indent=1) + "\n")
    tables = report.render(results)
    (out / "results.md").write_text(tables)
    print(tables)
    if not args.no_plots:
        import plots

        for path in plots.write_all(results, out):
            print(f"bench: wrote {path}", file=sys.stderr)
    if args.compare:
        print(report.compare(json.loads(Path(args.compare).read_text()), results))


if __name__ == "__main__":
    main()
