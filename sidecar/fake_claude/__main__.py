"""`python -m sidecar.fake_claude`: serve the fake until SIGTERM/SIGINT."""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
from collections.abc import Callable, Sequence

from sidecar.fake_claude.knobs import FakeSettings, KnobError, N, check_number
from sidecar.fake_claude.server import running_fake_claude

PROG = "python -m sidecar.fake_claude"


def _port(text: str) -> int:
    """A TCP port, 0 for a free one; anything else is refused, never bound elsewhere."""
    try:
        port = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a port: {text!r}") from None
    if not 0 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"not a port (0-65535): {port}")
    return port


def _knob(kind: type[N]) -> Callable[[str], N]:
    """A process default checked as the same knob is on a request (finite, >= 0)."""

    def parse(text: str) -> N:
        try:
            return check_number(text, kind)
        except KnobError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None

    parse.__name__ = kind.__name__  # argparse names the type in its messages
    return parse


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="A fake Claude Messages API (knobs: docs/fake-claude.md).",
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=_port, default=8000, help="0 picks a free port")
    parser.add_argument("--tokens", type=_knob(int), default=FakeSettings.tokens)
    parser.add_argument("--tps", type=_knob(float), default=FakeSettings.tps, help="0: no pacing")
    parser.add_argument("--ttft-ms", type=_knob(float), default=FakeSettings.ttft_ms)
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


EXIT_CANNOT_LISTEN = 3  # as `sidecar run`'s


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        import uvloop  # the fake is the upstream of CPU benchmarks: the faster loop when present
    except ImportError:
        run = asyncio.run
    else:
        run = uvloop.run
    try:
        run(serve(args))
    except OSError as exc:  # only binding does I/O that can fail before the server runs
        reason = exc.strerror or str(exc)
        print(f"{PROG}: cannot listen on {args.host}:{args.port}: {reason}", file=sys.stderr)
        return EXIT_CANNOT_LISTEN
    return 0


if __name__ == "__main__":
    sys.exit(main())
