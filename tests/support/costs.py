"""Deterministic cost measures of the sidecar, taken in its own process over real sockets.

The sidecar runs in this process (so cProfile and tracemalloc see it); the fake Claude
and the HTTP client are child processes, so nothing they do is counted. Every figure
is a difference between two runs that differ only in the thing measured (N events vs
2N, M calls vs 2M, K open streams vs 2K), so fixed costs (warm-up, the client's
connection, the test's own awaiting) drop out and what remains is per event, per
call or per stream, measured through public behaviour only.

- calls: Python and built-in function calls (cProfile), exact for a given code path;
- bytes / blocks: tracemalloc's live memory, i.e. what is held, not what was freed.
"""

from __future__ import annotations

import asyncio
import contextlib
import cProfile
import gc
import hashlib
import json
import logging
import os
import pstats
import sys
import tracemalloc
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult

from sidecar import loader
from sidecar.server import SidecarServer
from sidecar.telemetry import Telemetry, setup_logging
from tests.support.promtool import ROOT
from tests.support.sidecars import BASE, running_sidecar

T = TypeVar("T")
API_KEY = "costs-key-0123456789"
MODEL = "claude-sonnet-5-5"

# The client: `calls` requests, one at a time on one keep-alive connection, each a
# stream of `tokens` deltas; prints the number of SSE events it received. Or, with
# `hold`, opens `calls` quiet streams at once, prints "open", waits for a line on stdin.
# The route (the last argument, "anthropic" when absent) is one of ROUTES.
CLIENT = r"""
import http.client, json, sys
port, key, tokens, tps, calls, mode = sys.argv[1:7]
route = sys.argv[7] if len(sys.argv) > 7 else "anthropic"
directive = "fault=stall" if mode == "hold" else f"tokens={tokens} tps={tps}"
text = f"[[fake {directive}]] what it costs"
path = {"anthropic": "/v1/messages", "prompt": "/api/stream-response", "ui": "/api/chat"}[route]
if route == "prompt":
    body = json.dumps({"prompt": text, "max_tokens": int(tokens) + 10})
elif route == "ui":
    body = json.dumps({"id": "costs-chat", "messages": [{"id": "m1", "role": "user",
                       "parts": [{"type": "text", "text": text}]}]})
else:
    body = json.dumps({"model": "claude-sonnet-5-5", "max_tokens": int(tokens) + 10,
                       "stream": True, "messages": [{"role": "user", "content": text}]})
headers = {"content-type": "application/json", "x-api-key": key,
           "anthropic-version": "2023-06-01", "origin": "https://app.example.com"}
if mode == "hold":
    held = []
    for _ in range(int(calls)):
        conn = http.client.HTTPConnection("127.0.0.1", int(port))
        conn.request("POST", path, body, headers)
        response = conn.getresponse()
        assert response.status == 200, response.status
        response.fp.readline()  # the stream is open: its first bytes arrived
        held.append(conn)
    print("open", flush=True)
    sys.stdin.readline()
    sys.exit(0)
conn = http.client.HTTPConnection("127.0.0.1", int(port))
events = 0
for _ in range(int(calls)):
    conn.request("POST", path, body, headers)
    response = conn.getresponse()
    data = response.read()
    assert response.status == 200, (response.status, data[:300])
    events += data.count(b"\n\n")
print(events, flush=True)
"""


# The Claude routes a client can measure: the Messages API passthrough, the prompt
# route's small JSON events and the AI SDK's UI message stream (default paths).
ROUTES = ("anthropic", "prompt", "ui")
FEATURES = (
    "auth",
    "screening",
    "quotas",
    "metrics_spans",
    "logs",
)  # cors stays: the client sends an Origin


def all_on(fake_url: str, without: frozenset[str] = frozenset()) -> dict[str, Any]:
    """Every per-call feature on (API-key auth, CORS, screening, quotas, metrics and spans,
    JSON access and stream logs), but those named in `without` (see FEATURES)."""
    config: dict[str, Any] = {
        "claude": {"base_url": fake_url, "api_key": "sk-costs", "max_concurrent_streams": 512},
        "auth": {
            "mode": "required",
            "api_keys": [
                {
                    "name": "costs",
                    "sha256": hashlib.sha256(API_KEY.encode()).hexdigest(),
                    "user": "costs-user",
                    "tenant": "costs-tenant",
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
        "telemetry": {"prometheus": True, "access_log": True, "log_format": "json"},
    }
    for feature in without:
        if feature == "metrics_spans":  # no exporter at all: the no-op providers
            config["telemetry"]["prometheus"] = False
        elif feature == "logs":
            config["telemetry"] |= {"access_log": False, "log_level": "WARNING"}
        else:
            del config[feature]
    return config


@contextlib.asynccontextmanager
async def fake_claude_process() -> AsyncIterator[str]:
    """`python -m sidecar.fake_claude` on a free port, as its own process; yields its URL."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "sidecar.fake_claude", "--port", "0", "--ttft-ms", "0",
        stdout=asyncio.subprocess.PIPE, cwd=ROOT,
    )  # fmt: skip
    try:
        assert proc.stdout is not None
        line = await asyncio.wait_for(proc.stdout.readline(), 60)
        yield line.decode().split()[-1]
    finally:
        proc.terminate()
        await proc.wait()


class DiscardingExporter(SpanExporter):
    """Takes every span it is given and keeps none (the exporter of the cost measures)."""

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        return SpanExportResult.SUCCESS

    def shutdown(self) -> None:
        pass


@contextlib.asynccontextmanager
async def sidecar_all_on(
    fake_url: str, without: frozenset[str] = frozenset()
) -> AsyncIterator[SidecarServer]:
    """The sidecar in this process with every per-call feature on; JSON logs to /dev/null.

    Logging is set up as `sidecar run` does it (replacing the root logger's handlers),
    so enter this in the test body: pytest's capture handlers, attached for the test's
    call, would otherwise keep every record, which would count as memory held per call.
    """
    root = logging.getLogger()
    saved = (list(root.handlers), root.level)
    data = all_on(fake_url, without)
    telemetry = None
    if "metrics_spans" not in without:
        # Spans are recorded only when something exports them: a processor that hands
        # each ended span to an exporter (which drops it) keeps their cost in the figures
        # without an export queue's contents counting as memory held per call.
        config = loader.validate(loader.deep_merge(BASE, data), {})
        telemetry = Telemetry.from_config(config.telemetry, span_exporter=DiscardingExporter())
    with open(os.devnull, "w") as sink:  # noqa: ASYNC230  (opening /dev/null does not block)
        async with running_sidecar(data, telemetry=telemetry) as server:
            setup_logging(server.runtime.config.telemetry, sink)  # every line is formatted
            try:
                yield server
            finally:
                for handler in list(root.handlers):
                    root.removeHandler(handler)
                    handler.close()  # its lines waiting go to the sink while it is open
                for handler in saved[0]:
                    root.addHandler(handler)
                root.setLevel(saved[1])


@contextlib.asynccontextmanager
async def measured_sidecar(
    without: frozenset[str] = frozenset(),
) -> AsyncIterator[SidecarServer]:
    """A fake Claude process and the all-on sidecar in this process, tracemalloc on."""
    async with fake_claude_process() as fake, sidecar_all_on(fake, without) as server:
        with tracing():
            yield server


async def client(
    port: int, tokens: int, calls: int, tps: float = 0, route: str = "anthropic"
) -> int:
    """Run the client to completion on `route` (one of ROUTES); the number of SSE events it
    received."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", CLIENT, str(port), API_KEY, str(tokens), str(tps), str(calls), "run",
        route,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await asyncio.wait_for(proc.communicate(), 120)
    assert proc.returncode == 0, err.decode()[-2000:]
    return int(out)


@contextlib.asynccontextmanager
async def held_streams(port: int, count: int) -> AsyncIterator[None]:
    """`count` quiet streams held open through the sidecar until the block ends."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", CLIENT, str(port), API_KEY, "1", "0", str(count), "hold",
        stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
    )  # fmt: skip
    assert proc.stdin is not None
    assert proc.stdout is not None
    try:
        assert await asyncio.wait_for(proc.stdout.readline(), 120) == b"open\n"
        yield
    finally:
        proc.stdin.write(b"\n")
        await proc.stdin.drain()
        await asyncio.wait_for(proc.wait(), 60)


@dataclass(frozen=True)
class Cost:
    """What one measured run cost in this process."""

    calls: int  # Python + built-in function calls (cProfile)
    bytes: int  # live traced memory, after minus before
    blocks: int  # live traced blocks, after minus before
    peak: int  # peak traced memory during the run, over what was live before it

    def __sub__(self, other: Cost) -> Cost:
        return Cost(
            self.calls - other.calls,
            self.bytes - other.bytes,
            self.blocks - other.blocks,
            self.peak - other.peak,
        )

    def per(self, n: int) -> dict[str, float]:
        return {k: v / n for k, v in vars(self).items()}


def _live() -> tuple[int, int]:
    gc.collect()
    snapshot = tracemalloc.take_snapshot()
    stats = snapshot.statistics("filename")
    return sum(s.size for s in stats), sum(s.count for s in stats)


@contextlib.contextmanager
def tracing() -> Iterator[None]:
    """tracemalloc on (one frame: cheapest) for the block."""
    tracemalloc.start(int(os.environ.get("COSTS_FRAMES", "1")))
    try:
        yield
    finally:
        tracemalloc.stop()


async def measure(
    run: Callable[[], Awaitable[T]], profile: cProfile.Profile | None = None
) -> tuple[T, Cost]:
    """`run()`'s result and cost; tracemalloc must be on (`tracing`).

    Calls come from one run under cProfile, memory from another without it (the
    profiler's own tables are traced memory, and grow with what it sees).
    """
    profiler = profile or cProfile.Profile()
    profiler.enable()
    try:
        await run()
    finally:
        profiler.disable()
    calls = int(pstats.Stats(profiler).total_calls)  # type: ignore[attr-defined]
    del profiler
    size, count = _live()
    tracemalloc.reset_peak()
    base = tracemalloc.get_traced_memory()[0]
    result = await run()
    peak = tracemalloc.get_traced_memory()[1] - base
    after_size, after_count = _live()
    return result, Cost(calls, after_size - size, after_count - count, peak)


async def per_call(
    server: SidecarServer, calls: int, tokens: int = 1, route: str = "anthropic"
) -> dict[str, float]:
    """Cost per call on `route` (one of ROUTES): `2 × calls` one-token calls minus `calls` of
    them, over `calls`."""
    port = server.port
    await client(port, tokens, 20, 0, route)  # warm every code path and cache
    _, once = await measure(lambda: client(port, tokens, calls, 0, route))
    _, twice = await measure(lambda: client(port, tokens, 2 * calls, 0, route))
    return (twice - once).per(calls)


async def cyclic_garbage_per_call(
    server: SidecarServer, calls: int, route: str = "anthropic"
) -> float:
    """Objects per call on `route` that only the cycle collector frees: with it paused,
    what `2 × calls` calls left unreachable minus what `calls` left, over `calls`.

    Whatever a finished call leaves in a reference cycle waits for a collection, which
    walks every young object, and holds its memory (and every buffer it points to)
    until then; freed by reference counting, it goes as the call ends.
    """
    port = server.port
    await client(port, 1, 20, 0, route)

    async def unreachable(n: int) -> int:
        gc.collect()
        gc.disable()
        try:
            await client(port, 1, n, 0, route)
            return gc.collect()
        finally:
            gc.enable()

    once = await unreachable(calls)
    twice = await unreachable(2 * calls)
    return (twice - once) / calls


async def per_event(
    server: SidecarServer, events: int, tps: float, route: str = "anthropic"
) -> dict[str, float]:
    """Cost per relayed event on `route` (one of ROUTES): a stream of `2 × events` deltas
    minus one of `events`."""
    port = server.port
    await client(port, 20, 3, tps, route)
    one, once = await measure(lambda: client(port, events, 1, tps, route))
    two, twice = await measure(lambda: client(port, 2 * events, 1, tps, route))
    return (twice - once).per(two - one)


async def per_open_stream(server: SidecarServer, count: int) -> dict[str, float]:
    """Live memory per open quiet stream: `2 × count` held open minus `count`."""
    port = server.port

    async def hold(n: int) -> tuple[int, int]:
        before = _live()
        async with held_streams(port, n):
            await _settle()
            during = _live()
        return during[0] - before[0], during[1] - before[1]

    await hold(5)  # warm up: the first streams fill caches
    once = await hold(count)
    twice = await hold(2 * count)
    return {"bytes": (twice[0] - once[0]) / count, "blocks": (twice[1] - once[1]) / count}


async def _settle() -> None:
    """Let the loop run the deferred per-stream work (start log line, timers) once."""
    for _ in range(3):
        await asyncio.sleep(0.05)


def dump(figures: dict[str, Any]) -> str:
    return json.dumps({k: round(v, 2) if isinstance(v, float) else v for k, v in figures.items()})


def snapshot() -> tracemalloc.Snapshot:
    gc.collect()
    return tracemalloc.take_snapshot()


def top_growth(before: tracemalloc.Snapshot, lines: int = 25) -> list[str]:
    """The allocation sites that grew most since `before`, by line (for profiling by hand)."""
    stats = snapshot().compare_to(before, "lineno")
    return [str(s) for s in stats[:lines]]


__all__ = [
    "FEATURES",
    "ROUTES",
    "Cost",
    "dump",
    "fake_claude_process",
    "measure",
    "measured_sidecar",
    "per_call",
    "per_event",
    "per_open_stream",
    "sidecar_all_on",
    "snapshot",
    "top_growth",
    "tracing",
]
