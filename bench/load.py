"""Load client: C concurrent Claude streams through one target; prints a JSON summary.

Each stream asks the fake Claude (via a prompt directive, so it passes every proxy)
to stamp each text delta with its send time (`time.monotonic_ns()`, system-wide on
Linux), so the client measures per-event delay end to end, not just inter-arrival.

    python bench/load.py --url http://127.0.0.1:8080 --streams 50 --tokens 200 --tps 40
    python bench/load.py --url ... --streams 1 --requests 300 --tokens 1   # sequential
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from typing import Any

import aiohttp

DELTA = b"event: content_block_delta"


async def one_stream(
    session: aiohttp.ClientSession,
    url: str,
    tokens: int,
    tps: float,
    headers: dict[str, str],
    route: str = "anthropic",
) -> dict[str, Any]:
    prompt = f"[[fake tokens={tokens} tps={tps} stamp=1]] benchmark"
    if route == "prompt":  # the simple route: {"token": "..."} events
        path, marker = "/api/stream-response", b'data: {"token"'
        body: dict[str, Any] = {"prompt": prompt, "max_tokens": tokens + 10}
    else:  # Anthropic's Messages API, passed through
        path, marker = "/v1/messages", DELTA
        body = {
            "model": "claude-sonnet-5-5",
            "max_tokens": tokens + 10,
            "stream": True,
            "messages": [{"role": "user", "content": prompt}],
        }
    started = time.monotonic_ns()
    first: int | None = None
    delays: list[int] = []
    events = 0
    carry = b""
    async with session.post(url + path, json=body, headers=headers) as response:
        if response.status != 200:
            return {"error": response.status}
        async for chunk in response.content.iter_any():
            now = time.monotonic_ns()
            data = carry + chunk
            blocks = data.split(b"\n\n")
            carry = blocks.pop()
            for block in blocks:
                events += 1
                if marker in block:
                    if first is None:
                        first = now
                    delays.append(now - _stamp(block))
    return {"ttft_ns": (first or started) - started, "delays_ns": delays, "events": events}


def _stamp(block: bytes) -> int:
    """The send time the fake wrote into a text delta (first word of its text)."""
    payload = json.loads(block.split(b"data: ", 1)[1])
    text = payload["token"] if "token" in payload else payload["delta"]["text"]
    return int(text.split()[0])


def percentile(values: list[int], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def summary(
    url: str,
    streams: int,
    tokens: int,
    tps: float,
    api_key: str = "",
    requests: int = 0,
    route: str = "anthropic",
    extra_headers: dict[str, str] | None = None,
) -> dict[str, Any]:
    """Run `requests` (default: `streams`) streams, `streams` at a time; their summary."""
    headers = {"anthropic-version": "2023-06-01", "content-type": "application/json"}
    if api_key:
        headers["x-api-key"] = api_key
    headers |= extra_headers or {}
    connector = aiohttp.TCPConnector(limit=0)
    timeout = aiohttp.ClientTimeout(total=600)
    total = requests or streams
    results: list[dict[str, Any]] = []
    busy = 0

    async def worker(session: aiohttp.ClientSession) -> None:
        # Each of `streams` workers runs streams back to back until `total` have run.
        nonlocal busy
        while len(results) + busy < total:
            busy += 1
            try:
                results.append(await one_stream(session, url, tokens, tps, headers, route))
            finally:
                busy -= 1

    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        await asyncio.gather(*(worker(session) for _ in range(streams)))
    failures = [r for r in results if "error" in r]
    ok = [r for r in results if "error" not in r]
    ttfts = [r["ttft_ns"] for r in ok]
    delays = [d for r in ok for d in r["delays_ns"]]
    return {
        "streams": len(ok),
        "requests": len(results),
        "failures": len(failures),
        "events": sum(r["events"] for r in ok),
        "ttft_p50_ms": percentile(ttfts, 0.5) / 1e6,
        "ttft_p99_ms": percentile(ttfts, 0.99) / 1e6,
        "delay_p50_ms": percentile(delays, 0.5) / 1e6,
        "delay_p99_ms": percentile(delays, 0.99) / 1e6,
    }


async def main(args: argparse.Namespace) -> None:
    result = await summary(
        args.url, args.streams, args.tokens, args.tps, args.api_key, args.requests, args.route
    )
    print(json.dumps(result))


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--url", required=True)
    parser.add_argument("--streams", type=int, default=50, help="concurrent streams")
    parser.add_argument(
        "--requests", type=int, default=0, help="streams in all (default: one per worker)"
    )
    parser.add_argument("--tokens", type=int, default=200)
    parser.add_argument("--tps", type=float, default=40)
    parser.add_argument("--api-key", default="")
    parser.add_argument("--route", choices=["anthropic", "prompt"], default="anthropic")
    try:
        import uvloop

        uvloop.run(main(parser.parse_args()))
    except ImportError:
        asyncio.run(main(parser.parse_args()))
