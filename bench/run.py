"""Benchmark: Claude streams direct vs a naive aiohttp passthrough vs the sidecar, side by side.

    uv run python bench/run.py            # full run, writes bench/results/latest.md
    uv run python bench/run.py --quick    # fewer/shorter runs

Every target runs in its own process on loopback; the fake Claude runs in another
and the load client in a third. CPU per event comes from each proxy process's own
CPU time (/proc/PID/task/*/schedstat, nanoseconds, all threads), so it does not
depend on what else the machine is doing; latencies do, and are reported as measured.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parent.parent
PY = sys.executable
API_KEY = "bench-key-0123456789"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def cpu_ns(pid: int) -> int:
    """CPU time of every thread of a process, in nanoseconds."""
    total = 0
    for task in Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(OSError):
            total += int((task / "schedstat").read_text().split()[0])
    return total


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


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
            wait_http(ready_url)
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


def run_load(url: str, streams: int, tokens: int, tps: float, api_key: str = "") -> dict[str, Any]:
    out = subprocess.run(
        [PY, str(ROOT / "bench" / "load.py"), "--url", url, "--streams", str(streams),
         "--tokens", str(tokens), "--tps", str(tps), "--api-key", api_key],
        capture_output=True, text=True, check=True, cwd=ROOT,
    )  # fmt: skip
    result: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


def measure(
    name: str, url: str, pid: int | None, streams: int, tokens: int, tps: float, key: str = ""
) -> dict[str, Any]:
    run_load(url, min(streams, 5), 20, 0, key)  # warm up connections and code paths
    before = cpu_ns(pid) if pid else 0
    result = run_load(url, streams, tokens, tps, key)
    used = cpu_ns(pid) - before if pid else 0
    result |= {"case": name, "concurrency": streams}
    result["cpu_us_per_event"] = (
        (used / 1000 / result["events"]) if pid and result["events"] else None
    )
    return result


def idle_stream_memory(url: str, pid: int, streams: int, key: str) -> float:
    """KiB of RSS per open-but-quiet stream (the fake stalls after message_start)."""
    import asyncio

    import aiohttp

    async def hold() -> float:
        body = {
            "model": "claude-sonnet-5-5", "max_tokens": 10, "stream": True,
            "messages": [{"role": "user", "content": "[[fake fault=stall]] idle"}],
        }  # fmt: skip
        headers = {"x-api-key": key} if key else {}
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:
            before = rss_kib(pid)
            responses = []
            for _ in range(streams):
                response = await session.post(url + "/v1/messages", json=body, headers=headers)
                await response.content.readline()
                responses.append(response)
            await asyncio.sleep(0.5)
            after = rss_kib(pid)
            for response in responses:
                response.close()
            return (after - before) / streams

    return asyncio.run(hold())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" / "latest.md"))
    args = parser.parse_args()
    levels = [5, 50] if args.quick else [5, 50, 200]
    tokens = 100 if args.quick else 200
    fake_port = free_port()
    fake_url = f"http://127.0.0.1:{fake_port}"
    rows: list[dict[str, Any]] = []
    memory: dict[str, float] = {}
    with process(
        [PY, "-m", "sidecar.fake_claude", "--port", str(fake_port), "--host", "127.0.0.1"],
        fake_url + "/_fake/stats",
    ):
        naive_port = free_port()
        with process(
            [PY, str(ROOT / "bench" / "naive_proxy.py"), "--port", str(naive_port),
             "--upstream", fake_url, "--uvloop"],
            f"http://127.0.0.1:{naive_port}/",
        ) as naive_pid:  # fmt: skip
            for level in levels:
                tps = min(100.0, 4000 / level)
                rows.append(measure("direct", fake_url, None, level, tokens, tps))
                rows.append(
                    measure("naive aiohttp", f"http://127.0.0.1:{naive_port}", naive_pid,
                            level, tokens, tps)
                )  # fmt: skip
            memory["naive aiohttp"] = idle_stream_memory(
                f"http://127.0.0.1:{naive_port}", naive_pid, 200, ""
            )
        for full, label in (
            (True, "sidecar (all on)"),
            (False, "sidecar (policies+telemetry off)"),
        ):
            port, admin = free_port(), free_port()
            with tempfile.NamedTemporaryFile("w", suffix=".yaml", delete=False) as handle:
                yaml.safe_dump(sidecar_config(fake_url, port, admin, full=full), handle)
            env = {} if full else {"OTEL_SDK_DISABLED": "true"}
            with process(
                [PY, "-m", "sidecar", "run", "-c", handle.name],
                f"http://127.0.0.1:{admin}/healthz",
                env,
            ) as pid:
                key = API_KEY if full else ""
                for level in levels:
                    tps = min(100.0, 4000 / level)
                    rows.append(
                        measure(label, f"http://127.0.0.1:{port}", pid, level, tokens, tps, key)
                    )
                memory[label] = idle_stream_memory(f"http://127.0.0.1:{port}", pid, 200, key)
            os.unlink(handle.name)
    report = render(rows, memory, tokens)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(report)
    print(report)


def render(rows: list[dict[str, Any]], memory: dict[str, float], tokens: int) -> str:
    direct = {r["concurrency"]: r for r in rows if r["case"] == "direct"}
    lines = [
        f"Machine: {platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()},"
        f" {platform.platform()}",
        f"Streams of {tokens} tokens; total rate ≈ 4000 events/s (≤ 100 tokens/s per stream).",
        "",
        "| case | streams | events | failures | CPU µs/event | TTFT p50 / p99 (ms) | added TTFT p50 "
        "(ms) | event delay p50 / p99 (ms) | added delay p50 / p99 (ms) |",
        "| --- | ---: | ---: | ---: | ---: | --- | ---: | --- | --- |",
    ]
    for row in rows:
        base = direct[row["concurrency"]]
        cpu = f"{row['cpu_us_per_event']:.1f}" if row["cpu_us_per_event"] else "—"
        lines.append(
            f"| {row['case']} | {row['concurrency']} | {row['events']} | {row['failures']} | {cpu}"
            f" | {row['ttft_p50_ms']:.2f} / {row['ttft_p99_ms']:.2f}"
            f" | {row['ttft_p50_ms'] - base['ttft_p50_ms']:+.2f}"
            f" | {row['delay_p50_ms']:.2f} / {row['delay_p99_ms']:.2f}"
            f" | {row['delay_p50_ms'] - base['delay_p50_ms']:+.2f}"
            f" / {row['delay_p99_ms'] - base['delay_p99_ms']:+.2f} |"
        )
    lines += ["", "| case | RSS per idle stream (KiB) |", "| --- | ---: |"]
    lines += [f"| {name} | {kib:.1f} |" for name, kib in memory.items()]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
