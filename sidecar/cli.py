"""`sidecar run | check | schema`: serve, validate, or print the config's JSON Schema."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from collections.abc import Sequence

import yaml

from sidecar import loader
from sidecar.config import Config
from sidecar.interpreter import tune_interpreter

EXIT_BAD_CONFIG = 2


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


def _environment_problem(config: Config) -> str | None:
    """What `run` would refuse of the `OTEL_*` environment, as its one line; None if nothing."""
    try:
        from sidecar.telemetry.providers import TelemetryEnvironmentError, check_environment
    except ValueError as exc:  # the SDK reads OTEL_SPAN_ATTRIBUTE_COUNT_LIMIT when imported
        if not str(exc).startswith("OTEL_"):
            raise
        return f"invalid OpenTelemetry environment: {exc}"
    try:
        check_environment(config.telemetry)
    except TelemetryEnvironmentError as exc:
        return f"invalid OpenTelemetry environment: {exc}"
    return None


def _check(path: str | None) -> int:
    config = _load(path, sys.stdout)
    if config is None:
        return EXIT_BAD_CONFIG
    problem = _environment_problem(config)
    if problem is not None:
        print(problem)
        return EXIT_BAD_CONFIG
    sys.stdout.write(yaml.safe_dump(loader.redacted(config), sort_keys=False))
    return 0


def _run(path: str | None) -> int:
    config = _load(path, sys.stderr)
    if config is None:
        return EXIT_BAD_CONFIG
    try:
        from sidecar.server import serve
        from sidecar.telemetry import setup_logging
    except ValueError as exc:  # the SDK reads OTEL_SPAN_ATTRIBUTE_COUNT_LIMIT when imported
        if not str(exc).startswith("OTEL_"):
            raise
        print(f"invalid OpenTelemetry environment: {exc}", file=sys.stderr)
        return EXIT_BAD_CONFIG

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
