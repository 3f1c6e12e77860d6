"""Real sidecars for tests: in-process on free ports configured from plain data, or as a
`python -m sidecar run` process."""

from __future__ import annotations

import asyncio
import contextlib
import os
import subprocess
import sys
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import yaml

from sidecar import loader
from sidecar.server import SidecarServer
from sidecar.telemetry import Telemetry
from tests.support.sockets import free_port

# What the `sidecar_for` fixture returns: `async with sidecar_for({...overrides...}) as s:`.
SidecarFactory = Callable[..., contextlib.AbstractAsyncContextManager[SidecarServer]]

BASE: dict[str, Any] = {
    "server": {"listen": "127.0.0.1:0", "admin_listen": "127.0.0.1:0", "shutdown_grace_seconds": 2},
    "telemetry": {"log_format": "json"},
    "claude": {"api_key": "sk-sidecar-test"},  # needed by a real (test) Claude's URL
}


@contextlib.asynccontextmanager
async def running_sidecar(
    data: Mapping[str, Any] | None = None,
    *,
    telemetry: Telemetry | None = None,
    env: Mapping[str, str] | None = None,
) -> AsyncIterator[SidecarServer]:
    """Start a sidecar with `data` merged onto test defaults (free ports); shut it down after."""
    config = loader.validate(loader.deep_merge(BASE, data or {}), env or {})
    server = SidecarServer(config, telemetry=telemetry)
    await server.start()
    try:
        yield server
    finally:
        await server.shutdown(grace=1.0)


# --------------------------------------------------------------------------- subprocesses

ROOT = Path(__file__).resolve().parent.parent.parent


def sidecar_command(
    *args: str, env: Mapping[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """`python -m sidecar ARGS` run to its end from the repository root, output captured."""
    return subprocess.run(
        [sys.executable, "-m", "sidecar", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, **(env or {})},
        cwd=ROOT,
    )


def spawn_sidecar(
    config_path: Path, env: Mapping[str, str] | None = None, stdout: bool = False
) -> subprocess.Popen[bytes]:
    """`python -m sidecar run -c FILE` as a real process; its logs go to FILE with `.log`
    (and its stdout, with `stdout`, to FILE with `.out`; else nowhere)."""
    with (
        config_path.with_suffix(".log").open("wb") as log,  # a file: a pipe could fill up
        config_path.with_suffix(".out").open("wb") if stdout else contextlib.nullcontext() as out,
    ):
        return subprocess.Popen(
            [sys.executable, "-m", "sidecar", "run", "-c", str(config_path)],
            stdout=subprocess.DEVNULL if out is None else out,
            stderr=log,
            cwd=ROOT,
            env={**os.environ, **(env or {})},
        )


class SidecarExited(RuntimeError):
    """The process ended before it was ready; the message holds its last log lines."""


async def wait_ready(
    http: aiohttp.ClientSession,
    admin_url: str,
    timeout: float = 30,
    process: subprocess.Popen[bytes] | None = None,
    log_path: Path | None = None,
) -> None:
    """Wait until the admin listener answers `/readyz` 200 (the process is serving).

    With `process`, an exit before that fails at once; with `log_path`, the failure quotes the
    end of the log, and a timeout quotes the last `/readyz` answer too."""
    last = "no answer"
    try:
        async with asyncio.timeout(timeout):
            while True:
                if process is not None and process.poll() is not None:
                    raise SidecarExited(f"exited {process.returncode}: {_tail(log_path)}")
                with contextlib.suppress(aiohttp.ClientError):
                    async with http.get(admin_url + "/readyz") as response:
                        if response.status == 200:
                            return
                        last = f"{response.status} {await response.text()}"
                await asyncio.sleep(0.05)
    except TimeoutError:
        raise TimeoutError(
            f"not ready in {timeout} s; /readyz: {last}; {_tail(log_path)}"
        ) from None


def _tail(log_path: Path | None, lines: int = 20) -> str:
    if log_path is None or not log_path.exists():
        return "no log"
    return "log: " + " | ".join(log_path.read_text(errors="replace").splitlines()[-lines:])


async def get_status(http: aiohttp.ClientSession, url: str) -> int:
    """The status of a GET of `url` (its body read and dropped)."""
    async with http.get(url) as response:
        await response.read()
        return response.status


def stop_process(process: subprocess.Popen[bytes], config_path: Path) -> str:
    """Kill `process` if still running; its logs so far."""
    if process.poll() is None:
        process.kill()
        process.wait(timeout=10)
    return config_path.with_suffix(".log").read_text(errors="replace")


@dataclass
class SidecarProcess:
    """A `sidecar run` process serving on free ports, and the config file it reads."""

    process: subprocess.Popen[bytes]
    config_path: Path
    data: dict[str, Any]  # what the config file holds, listen addresses included
    url: str
    admin_url: str

    def logs(self) -> str:
        """Its log lines so far (stderr goes to a file next to the config)."""
        return self.config_path.with_suffix(".log").read_text(errors="replace")

    def stdout(self) -> str:
        """What it wrote to stdout so far (started with `stdout=True`)."""
        return self.config_path.with_suffix(".out").read_text(errors="replace")


@contextlib.asynccontextmanager
async def sidecar_process(
    data: Mapping[str, Any],
    directory: Path,
    env: Mapping[str, str] | None = None,
    name: str | None = None,
    stdout: bool = False,
) -> AsyncIterator[SidecarProcess]:
    """`sidecar run` with `data` on free loopback ports, yielded once `/readyz` answers 200;
    killed on the way out if it is still running. Its config is `directory/NAME.yaml` and its
    log `NAME.log` (its stdout `NAME.out`, with `stdout`). A port taken between its choice and
    the bind is chosen again."""
    running = await _start(data, directory, env, name, stdout)
    try:
        yield running
    finally:
        stop_process(running.process, running.config_path)


async def _start(
    data: Mapping[str, Any],
    directory: Path,
    env: Mapping[str, str] | None,
    name: str | None,
    stdout: bool = False,
) -> SidecarProcess:
    for attempt in range(1, 4):
        port, admin = free_port(), free_port()
        listen = {"listen": f"127.0.0.1:{port}", "admin_listen": f"127.0.0.1:{admin}"}
        config = loader.deep_merge(dict(data), {"server": listen})
        path = directory / f"{name or f'sidecar-{port}'}.yaml"
        path.write_text(yaml.safe_dump(config))
        running = SidecarProcess(
            spawn_sidecar(path, env, stdout), path, config, f"http://127.0.0.1:{port}",
            f"http://127.0.0.1:{admin}",
        )  # fmt: skip
        try:
            async with aiohttp.ClientSession() as http:
                await wait_ready(
                    http,
                    running.admin_url,
                    process=running.process,
                    log_path=path.with_suffix(".log"),
                )
            return running
        except SidecarExited as exited:
            stop_process(running.process, path)
            if "address already in use" not in str(exited) or attempt == 3:
                raise
        except BaseException:
            stop_process(running.process, path)
            raise
    raise AssertionError("unreachable")
