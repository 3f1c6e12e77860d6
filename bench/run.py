"""Benchmark: Claude streams direct vs a naive aiohttp passthrough vs the sidecar, side by side.

    uv run python bench/run.py            # full run (~3 min), writes bench/results/latest.md
    uv run python bench/run.py --quick    # fewer/shorter runs

Targets, each its own process on loopback, all in front of one fake Claude process:
direct (no proxy), `naive_proxy.py` (the obvious aiohttp passthrough), and the sidecar
three ways: all on (API-key auth, CORS, RE2 screening, memory quotas, spans exported
over OTLP/HTTP to `otlp_sink.py`, Prometheus metrics, JSON stream and access logs),
telemetry off (`OTEL_SDK_DISABLED`, no access log), and bare (no policy, no telemetry);
the all-on sidecar is measured on its prompt route too (`{"token": ...}` events).

Per target: one-token calls one at a time (added time to first token, CPU per call),
streams at several concurrencies (CPU per relayed event, per-event delay measured
from the fake's send stamp), and RSS per idle open stream. CPU comes from the target
process's own CPU time (/proc/PID/task/*/schedstat, all threads), so it depends little
on what else the machine does; latencies do, and are reported as measured.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from common import cpu_ns, free_port, rss_kib  # bench/ is on the path as the script's folder

ROOT = Path(__file__).resolve().parent.parent
PY = sys.executable
API_KEY = "bench-key-0123456789"


def wait_http(url: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=2):
                return
        except urllib.error.HTTPError:
            return  # it answers
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"{url} did not come up")


@contextlib.contextmanager
def process(args: list[str], ready_url: str, env: dict[str, str] | None = None) -> Iterator[int]:
    with tempfile.TemporaryFile() as log:
        proc = subprocess.Popen(
            args, cwd=ROOT, stdout=log, stderr=log, env={**os.environ, **(env or {})}
        )
        try:
            try:
                wait_http(ready_url)
            except RuntimeError:
                log.seek(0)
                sys.stderr.write(log.read().decode(errors="replace")[-4000:])
                raise
            yield proc.pid
        finally:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()


def sidecar_config(upstream: str, port: int, admin: int, *, full: bool) -> dict[str, Any]:
    import hashlib

    config: dict[str, Any] = {
        "server": {"listen": f"127.0.0.1:{port}", "admin_listen": f"127.0.0.1:{admin}"},
        "claude": {
            "base_url": upstream,
            "api_key": "sk-bench",
            "max_concurrent_streams": 1024,
            "idle_timeout_seconds": 60,
        },
        "telemetry": {"prometheus": full, "access_log": full, "log_level": "INFO"},
    }
    if full:
        config |= {
            "auth": {
                "mode": "required",
                "api_keys": [
                    {
                        "name": "bench",
                        "sha256": hashlib.sha256(API_KEY.encode()).hexdigest(),
                        "user": "bench",
                    }
                ],
            },
            "cors": {"allow_origins": ["https://app.example.com"], "allow_credentials": True},
            "screening": {"deny_patterns": ["(?i)ignore (all )?previous instructions", "BEGIN"]},
            "quotas": {
                "store": "memory",
                "requests_per_minute": 1_000_000,
                "tokens_per_minute": 1_000_000_000,
                "concurrent_streams": 10_000,
            },
        }
    return config


def run_load(
    url: str,
    streams: int,
    tokens: int,
    tps: float,
    api_key: str = "",
    requests: int = 0,
    route: str = "anthropic",
) -> dict[str, Any]:
    out = subprocess.run(
        [PY, str(ROOT / "bench" / "load.py"), "--url", url, "--streams", str(streams),
         "--tokens", str(tokens), "--tps", str(tps), "--api-key", api_key,
         "--requests", str(requests), "--route", route],
        capture_output=True, text=True, check=True, cwd=ROOT, timeout=600,
    )  # fmt: skip
    result: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


def measure(
    target: Target, streams: int, tokens: int, tps: float, requests: int = 0
) -> dict[str, Any]:
    """One load run against a target, with the CPU its process used during the run."""
    before = cpu_ns(target.pid) if target.pid else 0
    result = run_load(target.url, streams, tokens, tps, target.key, requests, target.route)
    used = cpu_ns(target.pid) - before if target.pid else 0
    result["cpu_us"] = used / 1000 if target.pid else None
    return result


def idle_stream_memory(target: Target, streams: int) -> float | None:
    """KiB of RSS per open-but-quiet stream (the fake stalls after message_start)."""
    import asyncio

    import aiohttp

    if target.pid is None or target.route != "anthropic":
        return None
    pid = target.pid

    async def hold() -> float:
        # Bounded: a target that cannot hold `streams` open at once fails here, not hangs.
        body = {
            "model": "claude-sonnet-5-5", "max_tokens": 10, "stream": True,
            "messages": [{"role": "user", "content": "[[fake fault=stall]] idle"}],
        }  # fmt: skip
        headers = {"x-api-key": target.key} if target.key else {}
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:
            before = rss_kib(pid)
            responses = []
            for _ in range(streams):
                response = await session.post(
                    target.url + "/v1/messages", json=body, headers=headers
                )
                await response.content.readline()
                responses.append(response)
            await asyncio.sleep(0.5)
            after = rss_kib(pid)
            for response in responses:
                response.close()
            return (after - before) / streams

    async def bounded() -> float:
        async with asyncio.timeout(120):
            return await hold()

    return asyncio.run(bounded())


@dataclass
class Target:
    name: str
    url: str
    pid: int | None
    key: str = ""
    route: str = "anthropic"  # or "prompt": the sidecar's simple route, {"token": ...} events


@dataclass
class Plan:
    levels: list[int]
    tokens: int  # per stream in the streaming phase
    sequential: int  # one-token calls, one at a time, for added TTFT and CPU per request
    idle: int  # quiet streams held open for memory per stream


def bench_target(target: Target, plan: Plan) -> dict[str, Any]:
    """Every measurement of one target: sequential calls, streams at each level, idle memory."""
    run_load(target.url, 5, 20, 0, target.key, route=target.route)  # warm up every code path
    # Memory first: after the load phases the heap has room to spare and RSS would not move.
    idle_kib = idle_stream_memory(target, plan.idle)
    sequential = measure(target, 1, 1, 0, plan.sequential)
    levels = {}
    for level in plan.levels:
        tps = min(100.0, 4000 / level)
        levels[level] = measure(target, level, plan.tokens, tps)
    return {"target": target.name, "sequential": sequential, "levels": levels, "idle_kib": idle_kib}


def sidecar_target(
    stack: contextlib.ExitStack, name: str, upstream: str, otlp: str, mode: str
) -> Target:
    port, admin = free_port(), free_port()
    config = sidecar_config(upstream, port, admin, full=mode != "bare")
    env: dict[str, str] = {}
    if mode == "all":
        config["telemetry"]["otlp_endpoint"] = otlp
    else:
        env["OTEL_SDK_DISABLED"] = "true"
        config["telemetry"] |= {"prometheus": False, "access_log": False}
    with tempfile.NamedTemporaryFile("w", suffix=".yaml", delete=False) as handle:
        yaml.safe_dump(config, handle)
    stack.callback(os.unlink, handle.name)
    pid = stack.enter_context(
        process([PY, "-m", "sidecar", "run", "-c", handle.name],
                f"http://127.0.0.1:{admin}/healthz", env)
    )  # fmt: skip
    return Target(name, f"http://127.0.0.1:{port}", pid, API_KEY if mode != "bare" else "")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" / "latest.md"))
    args = parser.parse_args()
    plan = (
        Plan(levels=[5, 50], tokens=100, sequential=100, idle=100)
        if args.quick
        else Plan(levels=[5, 50, 200], tokens=300, sequential=300, idle=200)
    )
    fake_port, naive_port, otlp_port = free_port(), free_port(), free_port()
    fake_url = f"http://127.0.0.1:{fake_port}"
    otlp_url = f"http://127.0.0.1:{otlp_port}"
    results: list[dict[str, Any]] = []
    with contextlib.ExitStack() as stack:
        stack.enter_context(process(
            [PY, "-m", "sidecar.fake_claude", "--port", str(fake_port), "--host", "127.0.0.1"],
            fake_url + "/_fake/stats",
        ))  # fmt: skip
        stack.enter_context(process(
            [PY, str(ROOT / "bench" / "otlp_sink.py"), "--port", str(otlp_port)], otlp_url + "/"
        ))  # fmt: skip
        naive_pid = stack.enter_context(process(
            [PY, str(ROOT / "bench" / "naive_proxy.py"), "--port", str(naive_port),
             "--upstream", fake_url, "--uvloop"],
            f"http://127.0.0.1:{naive_port}/",
        ))  # fmt: skip
        all_on = sidecar_target(stack, "sidecar, all on", fake_url, otlp_url, "all")
        targets = [
            Target("direct", fake_url, None),
            Target("naive aiohttp", f"http://127.0.0.1:{naive_port}", naive_pid),
            all_on,
            Target("sidecar, all on, prompt route", all_on.url, all_on.pid, all_on.key, "prompt"),
            sidecar_target(stack, "sidecar, telemetry off", fake_url, otlp_url, "no-telemetry"),
            sidecar_target(stack, "sidecar, bare", fake_url, otlp_url, "bare"),
        ]
        for target in targets:
            print(f"bench: {target.name}", file=sys.stderr, flush=True)
            results.append(bench_target(target, plan))
    report = render(results, plan)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(report)
    print(report)


def _ms(value: float) -> str:
    return f"{value:.2f}"


def render(results: list[dict[str, Any]], plan: Plan) -> str:
    direct = results[0]
    lines = [
        f"Machine: {platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()},"
        f" {platform.platform()}",
        "",
        f"**Per call** ({plan.sequential} one-token streams, one at a time): time to first token"
        " as the client sees it, and the proxy process's CPU per call.",
        "",
        "| case | TTFT p50 / p99 (ms) | added TTFT p50 / p99 (ms) | CPU per call (µs) |",
        "| --- | --- | --- | ---: |",
    ]
    base = direct["sequential"]
    per_call: dict[str, float] = {}
    for result in results:
        seq = result["sequential"]
        cpu = seq["cpu_us"]
        if cpu is not None:
            per_call[result["target"]] = cpu / max(seq["requests"], 1)
        lines.append(
            f"| {result['target']} | {_ms(seq['ttft_p50_ms'])} / {_ms(seq['ttft_p99_ms'])}"
            f" | {seq['ttft_p50_ms'] - base['ttft_p50_ms']:+.2f}"
            f" / {seq['ttft_p99_ms'] - base['ttft_p99_ms']:+.2f}"
            f" | {per_call[result['target']]:.0f} |"
            if cpu is not None
            else f"| {result['target']} | {_ms(seq['ttft_p50_ms'])} / {_ms(seq['ttft_p99_ms'])}"
            " | — | — |"
        )
    lines += [
        "",
        f"**Streams** of {plan.tokens} tokens, total ≈ 4000 events/s (≤ 100 tokens/s per stream)."
        " CPU per event = the proxy's CPU over the run / events relayed; *net* subtracts the"
        " per-call CPU above once per stream, leaving what each relayed event costs.",
        "",
        "| case | streams | events | failures | CPU µs/event | net µs/event | TTFT p50 / p99 (ms)"
        " | event delay p50 / p99 (ms) | added delay p50 / p99 (ms) |",
        "| --- | ---: | ---: | ---: | ---: | ---: | --- | --- | --- |",
    ]
    for level in plan.levels:
        ref = direct["levels"][level]
        for result in results:
            row = result["levels"][level]
            cpu = row["cpu_us"]
            total = f"{cpu / row['events']:.1f}" if cpu else "—"
            net = (
                f"{(cpu - per_call[result['target']] * row['requests']) / row['events']:.1f}"
                if cpu
                else "—"
            )
            lines.append(
                f"| {result['target']} | {level} | {row['events']} | {row['failures']}"
                f" | {total} | {net}"
                f" | {_ms(row['ttft_p50_ms'])} / {_ms(row['ttft_p99_ms'])}"
                f" | {_ms(row['delay_p50_ms'])} / {_ms(row['delay_p99_ms'])}"
                f" | {row['delay_p50_ms'] - ref['delay_p50_ms']:+.2f}"
                f" / {row['delay_p99_ms'] - ref['delay_p99_ms']:+.2f} |"
            )
    lines += ["", f"**Memory**: RSS per idle stream ({plan.idle} open, quiet streams).", ""]
    lines += ["| case | KiB per idle stream |", "| --- | ---: |"]
    lines += [
        f"| {r['target']} | {r['idle_kib']:.1f} |" for r in results if r["idle_kib"] is not None
    ]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
