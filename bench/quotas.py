"""Benchmark: what quotas cost per request (admission + settlement), memory vs Redis.

    uv run python bench/quotas.py            # full run, prints a markdown table
    uv run python bench/quotas.py --quick    # fewer iterations

1. Store API: one admission + one settlement (every limit on, a stream lease),
   sequential, p50/p99 per pair; and 64 concurrent callers, pairs per second.
2. Over HTTP: a sidecar process per mode (quotas off / memory / Redis) in front of
   a fake Claude process; sequential non-streaming calls, p50/p99 end to end, and
   what quotas add over "off".
3. Sidecar CPU (its own, from /proc/PID/task/*/schedstat) per stream and per
   relayed event (the slope between short and long streams) with quotas off and on:
   quotas work once per call, never per event, so the per-event figure must not move.
4. Python function calls per relayed event (cProfile counts): the same check, exact.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import secrets
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from common import cpu_ns, free_port  # noqa: E402  (bench/ is on the path as the script's folder)

from sidecar.quotas.stores import Limits, MemoryQuotaStore, QuotaStore  # noqa: E402
from sidecar.quotas.stores.redis import RedisQuotaStore  # noqa: E402

LIMITS = Limits(
    requests_per_minute=10**9,
    tokens_per_minute=10**12,
    tokens_per_day=10**12,
    concurrent_streams=10**6,
    lease_seconds=60,
)
QUOTAS_ON = {
    "requests_per_minute": 10**9, "tokens_per_minute": 10**12,
    "tokens_per_day": 10**12, "concurrent_streams": 10**6,
}  # fmt: skip


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


@contextlib.asynccontextmanager
async def spawn(args: list[str], ready: bytes) -> AsyncIterator[asyncio.subprocess.Process]:
    """A child process, up once `ready` appears in its output; terminated after."""
    proc = await asyncio.create_subprocess_exec(
        *args, cwd=ROOT, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT
    )
    assert proc.stdout is not None
    seen = b""
    async with asyncio.timeout(30):
        while ready not in seen:
            line = await proc.stdout.readline()
            if not line:
                raise RuntimeError(f"{args[0]} exited:\n{seen.decode(errors='replace')}")
            seen += line
    drain = asyncio.create_task(proc.stdout.read())
    try:
        yield proc
    finally:
        if proc.returncode is None:
            proc.terminate()
            await proc.wait()
        drain.cancel()


@contextlib.asynccontextmanager
async def redis_server() -> AsyncIterator[str]:
    binary = shutil.which("redis-server")
    if binary is None:
        raise SystemExit("redis-server is not installed")
    port = free_port()
    with tempfile.TemporaryDirectory() as directory:
        args = [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                "--appendonly", "no", "--dir", directory, "--logfile", ""]  # fmt: skip
        async with spawn(args, b"Ready to accept connections"):
            yield f"redis://127.0.0.1:{port}/0"


# --------------------------------------------------------------------------- 1. store API


async def store_pairs(store: QuotaStore, n: int) -> dict[str, float]:
    """Sequential admit+settle latency (µs) and 64-way concurrent pairs per second."""
    subject = "bench\x1fuser\x1f" + secrets.token_hex(4)

    async def pair(i: int) -> None:
        lease = f"l{i}"
        decision = await store.admit(subject, LIMITS, 1500, lease)
        assert decision.admitted
        await store.settle(subject, LIMITS, lease, 1500, 700)

    for i in range(min(500, n)):  # warm up (script cache, connection pool)
        await pair(i)
    samples: list[float] = []
    for i in range(n):
        start = time.perf_counter_ns()
        await pair(i)
        samples.append((time.perf_counter_ns() - start) / 1000)
    queue = iter(range(n))

    async def worker() -> None:
        for i in queue:
            await pair(i)

    began = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(64)))
    rate = n / (time.perf_counter() - began)
    return {"p50": pct(samples, 0.5), "p99": pct(samples, 0.99), "rate": rate}


# --------------------------------------------------------------------------- 2 + 3. HTTP


def sidecar_args(directory: str, upstream: str, port: int, quotas: dict[str, Any]) -> list[str]:
    config = {
        "server": {"listen": f"127.0.0.1:{port}", "admin_listen": f"127.0.0.1:{free_port()}"},
        "claude": {"base_url": upstream, "api_key": "sk-bench", "idle_timeout_seconds": 60},
        "auth": {"mode": "none"},
        "telemetry": {"access_log": False, "prometheus": False},
        "quotas": quotas,
    }
    path = Path(directory) / f"sidecar-{port}.yaml"
    path.write_text(yaml.safe_dump(config))
    return [sys.executable, "-m", "sidecar", "run", "-c", str(path)]


async def http_latency(http: aiohttp.ClientSession, url: str, n: int) -> list[float]:
    body = {"model": "claude-sonnet-5-5", "max_tokens": 16, "stream": False,
            "messages": [{"role": "user", "content": "hi [[fake tokens=1]]"}]}  # fmt: skip
    samples = []
    for i in range(n + 50):
        start = time.perf_counter_ns()
        async with http.post(url + "/v1/messages", json=body) as response:
            await response.read()
            assert response.status == 200, response.status
        if i >= 50:  # the first 50 warm up
            samples.append((time.perf_counter_ns() - start) / 1000)
    return samples


async def cpu_run(
    http: aiohttp.ClientSession, url: str, pid: int, streams: int, tokens: int
) -> tuple[float, int]:
    """Sidecar CPU ns and SSE events relayed for `streams` streams, 8 at a time."""
    body = {"model": "claude-sonnet-5-5", "max_tokens": tokens + 10, "stream": True,
            "messages": [{"role": "user", "content": f"go [[fake tokens={tokens} tps=0]]"}]}  # fmt: skip
    events = 0
    gate = asyncio.Semaphore(8)

    async def one() -> None:
        nonlocal events
        async with gate, http.post(url + "/v1/messages", json=body) as response:
            data = await response.read()
            events += data.count(b"event: ")

    before = cpu_ns(pid)
    await asyncio.gather(*(one() for _ in range(streams)))
    return cpu_ns(pid) - before, events


async def cpu_profile(
    http: aiohttp.ClientSession, url: str, pid: int, streams: int, tokens: int
) -> tuple[float, float]:
    """(CPU µs per stream, CPU ns per event): short and long streams, the difference is per event.

    Quotas work once per call, so with quotas on the per-stream cost may grow by the
    admission and settlement, and the per-event cost must not move.
    """
    await cpu_run(http, url, pid, 2, 10)  # warm up
    short_ns, short_events = await cpu_run(http, url, pid, streams, 10)
    long_ns, long_events = await cpu_run(http, url, pid, streams, tokens)
    per_event = (long_ns - short_ns) / (long_events - short_events)
    per_stream = (short_ns - per_event * short_events) / streams
    return per_stream / 1000, per_event


async def over_http(redis_url: str, quick: bool) -> list[dict[str, Any]]:
    """All three sidecars run at once and are measured in alternating rounds, so drift
    of the machine (other load, CPU frequency) spreads over every mode alike."""
    n, streams, tokens, rounds = (200, 16, 1000, 3) if quick else (600, 32, 2000, 5)
    modes = {
        "off": {},
        "memory": {"store": "memory", **QUOTAS_ON},
        "redis": {"store": "redis", "redis_url": redis_url, **QUOTAS_ON},
    }
    fake_port = free_port()
    fake = [sys.executable, "-m", "sidecar.fake_claude", "--port", str(fake_port), "--tps", "0"]
    latency: dict[str, list[float]] = {mode: [] for mode in modes}
    per_stream: dict[str, list[float]] = {mode: [] for mode in modes}
    per_event: dict[str, list[float]] = {mode: [] for mode in modes}
    with tempfile.TemporaryDirectory() as directory:
        async with contextlib.AsyncExitStack() as stack:
            await stack.enter_async_context(spawn(fake, b"listening"))
            http = await stack.enter_async_context(aiohttp.ClientSession())
            upstream = f"http://127.0.0.1:{fake_port}"
            targets = {}
            for mode, quotas in modes.items():
                port = free_port()
                args = sidecar_args(directory, upstream, port, quotas)
                proc = await stack.enter_async_context(spawn(args, b"sidecar serving"))
                targets[mode] = (f"http://127.0.0.1:{port}", proc.pid)
            for _ in range(rounds):
                for mode, (url, pid) in targets.items():
                    latency[mode] += await http_latency(http, url, n)
                    stream_us, event_ns = await cpu_profile(http, url, pid, streams, tokens)
                    per_stream[mode].append(stream_us)
                    per_event[mode].append(event_ns)
    return [
        {
            "mode": mode,
            "p50": pct(latency[mode], 0.5),
            "p99": pct(latency[mode], 0.99),
            "cpu_us_per_stream": statistics.median(per_stream[mode]),
            "cpu_ns_per_event": statistics.median(per_event[mode]),
            "cpu_spread": (min(per_event[mode]), max(per_event[mode])),
        }
        for mode in modes
    ]


# --------------------------------------------------------------------------- 4. calls per event


async def calls_per_event(quotas: dict[str, Any]) -> float:
    """Python function calls per relayed event (cProfile counts: exact, not timed).

    Short and long streams through an in-process sidecar; the difference of calls
    divided by the difference of events is the per-event work.
    """
    import cProfile
    import pstats

    from sidecar import loader
    from sidecar.fake_claude import FakeSettings, running_fake_claude
    from sidecar.server import SidecarServer

    async with running_fake_claude(FakeSettings(tps=0)) as fake:
        config = loader.validate(
            {
                "server": {"listen": "127.0.0.1:0", "admin_listen": "127.0.0.1:0"},
                "claude": {"base_url": fake.url, "api_key": "sk-bench"},
                "telemetry": {"access_log": False},
                "quotas": quotas,
            },
            {},
        )
        server = SidecarServer(config)
        await server.start()
        try:
            async with aiohttp.ClientSession() as http:

                async def profiled(tokens: int) -> tuple[int, int]:
                    body = {"model": "claude-sonnet-5-5", "max_tokens": tokens + 10,
                            "stream": True, "messages": [{"role": "user",
                            "content": f"go [[fake tokens={tokens}]]"}]}  # fmt: skip
                    events = 0
                    profile = cProfile.Profile()
                    for _ in range(3):
                        profile.enable()
                        async with http.post(server.url + "/v1/messages", json=body) as response:
                            data = await response.read()
                        profile.disable()
                        events += data.count(b"event: ")
                    # `Stats.stats` (function -> (calls, primitive calls, ...)) is public but
                    # missing from typeshed.
                    table: dict[Any, tuple[Any, ...]] = pstats.Stats(profile).stats  # type: ignore[attr-defined]
                    calls = sum(int(row[1]) for row in table.values())
                    return calls, events

                await profiled(10)
                short_calls, short_events = await profiled(100)
                long_calls, long_events = await profiled(1100)
        finally:
            await server.shutdown(grace=1)
    return (long_calls - short_calls) / (long_events - short_events)


# --------------------------------------------------------------------------- report


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    n = 2000 if args.quick else 20000
    print(f"# Quotas benchmark ({os.cpu_count()} CPUs, Python {sys.version.split()[0]})\n")
    async with redis_server() as redis_url:
        memory = await store_pairs(MemoryQuotaStore(), n)
        redis = RedisQuotaStore(redis_url)
        try:
            shared = await store_pairs(redis, n // 4)
        finally:
            await redis.close()
        print("Store API: one admission + one settlement (all four limits on)\n")
        print("| store | p50 µs | p99 µs | pairs/s (64 concurrent) |")
        print("| --- | ---: | ---: | ---: |")
        for name, pairs in (("memory", memory), ("redis", shared)):
            print(f"| {name} | {pairs['p50']:.1f} | {pairs['p99']:.1f} | {pairs['rate']:,.0f} |")
        rows = await over_http(redis_url, args.quick)
        calls = {
            "off": await calls_per_event({}),
            "memory": await calls_per_event(QUOTAS_ON),
            "redis": await calls_per_event({"store": "redis", "redis_url": redis_url, **QUOTAS_ON}),
        }
    off = rows[0]
    print(
        "\nOver HTTP (fake Claude, loopback): latency of non-streaming calls; sidecar CPU of streaming calls\n"
    )
    print(
        "| quotas | p50 µs | p99 µs | added p50 µs | added p99 µs | CPU µs / stream "
        "| CPU ns / event, median (min-max of rounds) |"
    )
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: |")
    for row in rows:
        low, high = row["cpu_spread"]
        print(
            f"| {row['mode']} | {row['p50']:.0f} | {row['p99']:.0f} | "
            f"{row['p50'] - off['p50']:+.0f} | {row['p99'] - off['p99']:+.0f} | "
            f"{row['cpu_us_per_stream']:,.0f} | {row['cpu_ns_per_event']:,.0f} "
            f"({low:,.0f}-{high:,.0f}) |"
        )
    print("\nPython function calls per relayed event (cProfile counts; exact, not timed)\n")
    print("| quotas | calls / event |")
    print("| --- | ---: |")
    for mode, value in calls.items():
        print(f"| {mode} | {value:.2f} |")


if __name__ == "__main__":
    asyncio.run(main())
