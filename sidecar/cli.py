"""`sidecar run | check | schema`: serve, validate, or print the config's JSON Schema."""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import sys
from collections.abc import Sequence

import yaml

from sidecar import loader
from sidecar.config import Config
from sidecar.config.fields import MAX_SECONDS
from sidecar.config.schema import config_schema
from sidecar.interpreter import tune_interpreter

EXIT_BAD_CONFIG = 2
EXIT_UNHEALTHY = 1  # `health`: what a container HEALTHCHECK reads as unhealthy (never 2)


def _seconds(text: str) -> float:
    """A timeout flag: a finite number of seconds above 0 and at most `MAX_SECONDS` (`0`,
    `-1`, `nan`, `inf` and `1e300` would report a healthy sidecar as unhealthy, or fail in
    the socket layer)."""
    try:
        seconds = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}") from None
    if not math.isfinite(seconds) or not 0 < seconds <= MAX_SECONDS:
        raise argparse.ArgumentTypeError(
            f"must be a finite number of seconds > 0 and <= {MAX_SECONDS}, got {text!r}"
        )
    return seconds


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
    health = commands.add_parser(
        "health",
        help="exit 0 if the running sidecar's admin listener answers /healthz (/readyz with "
        "--ready), else 1: a container HEALTHCHECK without curl",
    )
    health.add_argument("-c", "--config", metavar="FILE", help=config_help)
    health.add_argument("--ready", action="store_true", help="ask /readyz instead of /healthz")
    health.add_argument(
        "--timeout", type=_seconds, default=3.0, metavar="SECONDS", help="default: 3"
    )
    return parser


def _load(path: str | None) -> Config | list[str]:
    """The config, or every problem it is refused with."""
    try:
        return loader.load(path)
    except loader.ConfigError as exc:
        return exc.problems


def _emit(text: str, code: int) -> int:
    """Write `text` to stdout and return `code`; a reader that went away (`| head`) ends
    the output quietly with the same code, never a traceback."""
    try:
        sys.stdout.write(text)
        sys.stdout.flush()
    except BrokenPipeError:
        # The interpreter flushes stdout again at exit: point it at nothing first.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    return code


def _refused_environment(exc: ValueError) -> str:
    """The one line for an `OTEL_*` value the SDK refused."""
    return f"invalid OpenTelemetry environment: {exc}"


def _refused_on_import(exc: ValueError) -> str:
    """The line for the SDK's refusal while it is imported (it reads the span limits
    then); any other `ValueError` is no such refusal and is raised again."""
    if not str(exc).startswith("OTEL_"):
        raise exc
    return _refused_environment(exc)


def _environment_problem(config: Config) -> str | None:
    """What `run` would refuse of the `OTEL_*` environment, as its one line; None if nothing."""
    try:  # the SDK reads OTEL_SPAN_ATTRIBUTE_COUNT_LIMIT when imported
        from sidecar.telemetry.providers import TelemetryEnvironmentError, check_environment
    except ValueError as exc:
        return _refused_on_import(exc)
    try:
        check_environment(config.telemetry)
    except TelemetryEnvironmentError as exc:
        return _refused_environment(exc)
    return None


def _check(path: str | None) -> int:
    config = _load(path)
    if isinstance(config, list):
        return _emit("".join(f"{problem}\n" for problem in config), EXIT_BAD_CONFIG)
    problem = _environment_problem(config)
    if problem is not None:
        return _emit(f"{problem}\n", EXIT_BAD_CONFIG)
    return _emit(yaml.safe_dump(loader.redacted(config), sort_keys=False), 0)


def _run(path: str | None) -> int:
    config = _load(path)
    if isinstance(config, list):
        for problem in config:
            print(problem, file=sys.stderr)
        return EXIT_BAD_CONFIG
    try:  # the SDK reads OTEL_SPAN_ATTRIBUTE_COUNT_LIMIT when imported
        from sidecar.server import serve
        from sidecar.telemetry import setup_logging
    except ValueError as exc:
        print(_refused_on_import(exc), file=sys.stderr)
        return EXIT_BAD_CONFIG

    setup_logging(config.telemetry)
    tune_interpreter()
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency where it builds
        return asyncio.run(serve(config, path))
    return uvloop.run(serve(config, path))


def _health(path: str | None, ready: bool, timeout: float) -> int:
    """Probe the admin listener the config names; one line either way."""
    from sidecar.probe import admin_url, probe

    config = _load(path)
    if isinstance(config, list):
        return _emit("".join(f"unhealthy: {problem}\n" for problem in config), EXIT_UNHEALTHY)
    url = admin_url(config, "/readyz" if ready else "/healthz")
    problem = probe(url, timeout)
    if problem is not None:
        return _emit(f"unhealthy: {problem}\n", EXIT_UNHEALTHY)
    return _emit(f"{'ready' if ready else 'healthy'}: {url}\n", 0)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `sidecar` console script."""
    args = _parser().parse_args(argv)
    if args.command == "schema":
        return _emit(json.dumps(config_schema(), indent=2) + "\n", 0)
    if args.command == "check":
        return _check(args.config)
    if args.command == "health":
        return _health(args.config, args.ready, args.timeout)
    return _run(args.config)


if __name__ == "__main__":
    sys.exit(main())
