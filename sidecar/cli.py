"""`sidecar run | check | schema`: serve, validate, or print the config's JSON Schema."""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import sys
from collections.abc import Sequence

import yaml

from sidecar import loader
from sidecar.config import Config

EXIT_BAD_CONFIG = 2
# How long a thread waiting for the GIL waits before the holder must hand it over
# (Python's default: 5 ms). The event loop shares the GIL with the SDK's export threads
# (the batch span processor, the periodic metric reader), which encode a batch to
# protobuf in Python for tens of ms: at 5 ms, each wake-up of the loop during an export
# (a request arriving, Claude's first bytes) waited up to 5 ms, several times a call.
# The interval only matters while two threads want the GIL (an export running), so a
# shorter one costs nothing between exports and a few switches during one.
SWITCH_INTERVAL_SECONDS = 0.0002


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="sidecar",
        description="Claude sidecar: auth, CORS, screening, quotas and telemetry for Claude "
        "streams and the app beside it.",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    config_help = "config file (default: $SIDECAR_CONFIG, else the embedded default)"
    run = commands.add_parser("run", help="serve traffic and admin listeners")
    run.add_argument("-c", "--config", metavar="FILE", help=config_help)
    check = commands.add_parser(
        "check", help="validate a config; print every problem, or the effective config"
    )
    check.add_argument("-c", "--config", metavar="FILE", help=config_help)
    commands.add_parser("schema", help="print the config's JSON Schema (for editors)")
    return parser


def _load(path: str | None, out: object) -> Config | None:
    try:
        return loader.load(path)
    except loader.ConfigError as exc:
        for problem in exc.problems:
            print(problem, file=out)  # type: ignore[call-overload]
        return None


def _check(path: str | None) -> int:
    config = _load(path, sys.stdout)
    if config is None:
        return EXIT_BAD_CONFIG
    sys.stdout.write(yaml.safe_dump(loader.redacted(config), sort_keys=False))
    return 0


def tune_interpreter() -> None:
    """Set the process up for serving: a short GIL switch interval, a frozen heap.

    Call once, after the modules and the config are loaded. What exists by then (modules,
    classes, the config) lives as long as the process: after a collection of the garbage,
    it moves to the permanent generation, and every later full collection walks only
    what serving allocated (in the benchmark config ~10,000 objects instead of ~76,000:
    ~1.5 ms of CPU instead of ~50 ms, a pause every call that meets it would wait out).
    The runtime (apps, pools, telemetry) stays collectable: a reload replaces it.
    """
    sys.setswitchinterval(SWITCH_INTERVAL_SECONDS)
    gc.collect()
    gc.freeze()


def _run(path: str | None) -> int:
    config = _load(path, sys.stderr)
    if config is None:
        return EXIT_BAD_CONFIG
    from sidecar.server import serve
    from sidecar.telemetry import setup_logging

    setup_logging(config.telemetry)
    tune_interpreter()
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency where it builds
        return asyncio.run(serve(config, path))
    return uvloop.run(serve(config, path))


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `sidecar` console script."""
    args = _parser().parse_args(argv)
    if args.command == "schema":
        print(json.dumps(Config.model_json_schema(), indent=2))
        return 0
    if args.command == "check":
        return _check(args.config)
    return _run(args.config)


if __name__ == "__main__":
    sys.exit(main())
