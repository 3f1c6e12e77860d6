"""`python -m sidecar.fake_claude`: serve the fake until SIGTERM/SIGINT."""

from __future__ import annotations

import argparse
import asyncio
import signal
from collections.abc import Sequence

from sidecar.fake_claude.knobs import FakeSettings
from sidecar.fake_claude.server import running_fake_claude


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m sidecar.fake_claude",
        description="A fake Claude Messages API (see sidecar/fake_claude/__init__.py for knobs).",
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000, help="0 picks a free port")
    parser.add_argument("--tokens", type=int, default=FakeSettings.tokens)
    parser.add_argument("--tps", type=float, default=FakeSettings.tps, help="0: no pacing")
    parser.add_argument("--ttft-ms", type=float, default=FakeSettings.ttft_ms)
    parser.add_argument("--model", default=None, help="answer with this model id")
    parser.add_argument("--api-key", default=None, help="require this x-api-key / bearer")
    return parser.parse_args(argv)


async def serve(args: argparse.Namespace) -> None:
    settings = FakeSettings(
        tokens=args.tokens, tps=args.tps, ttft_ms=args.ttft_ms, model=args.model,
        api_key=args.api_key,
    )  # fmt: skip
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    async with running_fake_claude(settings, args.host, args.port) as server:
        # One line, flushed: parents wait for it and read the real port from it.
        print(f"fake claude listening on {server.url}", flush=True)
        await stop.wait()


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    try:
        import uvloop  # the fake is the upstream of CPU benchmarks: the faster loop when present
    except ImportError:
        asyncio.run(serve(args))
    else:
        uvloop.run(serve(args))


if __name__ == "__main__":
    main()
