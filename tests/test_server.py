"""Lifecycle of a real `sidecar run` process: graceful shutdown with a stream in flight."""

from __future__ import annotations

import asyncio
import json
import signal
from pathlib import Path

import aiohttp
import pytest
import yaml

from tests.support import eventually, free_port, spawn_sidecar, stop_process, wait_ready

pytestmark = pytest.mark.timeout(60)


def write_config(path: Path, port: int, admin: int, grace: float) -> None:
    path.write_text(
        yaml.safe_dump(
            {
                "server": {
                    "listen": f"127.0.0.1:{port}",
                    "admin_listen": f"127.0.0.1:{admin}",
                    "shutdown_grace_seconds": grace,
                },
                "claude": {
                    "base_url": "builtin:fake",
                    "fake": {"tokens": 5, "tokens_per_second": 0, "time_to_first_token_ms": 0},
                },
            }
        )
    )


async def first_event(response: aiohttp.ClientResponse) -> bytes:
    """Read until the first complete SSE event (the stream is then surely in flight)."""
    buffer = b""
    while b"\n\n" not in buffer:
        chunk = await response.content.readany()
        assert chunk, "the stream ended before its first event"
        buffer += chunk
    return buffer


async def refused(url: str) -> bool:
    """True when a new connection to `url` is refused (a fresh session: no pooled one)."""
    try:
        async with aiohttp.ClientSession() as fresh, fresh.get(url) as response:
            await response.read()
    except aiohttp.ClientConnectionError:
        return True
    return False


async def readyz_status(
    http: aiohttp.ClientSession, admin_url: str
) -> tuple[int, dict[str, object]]:
    async with http.get(admin_url + "/readyz") as response:
        return response.status, json.loads(await response.text())


async def test_sigterm_drains_an_in_flight_stream_then_exits_0(tmp_path: Path) -> None:
    port, admin = free_port(), free_port()
    path = tmp_path / "sidecar.yaml"
    write_config(path, port, admin, grace=20)
    url, admin_url = f"http://127.0.0.1:{port}", f"http://127.0.0.1:{admin}"
    process = spawn_sidecar(path)
    try:
        async with aiohttp.ClientSession() as http:
            await wait_ready(http, admin_url)
            params = {"prompt": "[[fake tokens=40 tps=20]] slow"}  # about two seconds
            async with http.get(url + "/api/stream-response", params=params) as stream:
                assert stream.status == 200
                head = await first_event(stream)
                process.send_signal(signal.SIGTERM)

                async def draining() -> bool:
                    status, body = await readyz_status(http, admin_url)
                    return status == 503 and body["checks"] == {"lifecycle": "draining"}

                await eventually(draining)
                # The listener no longer accepts: a new connection is refused.
                assert await refused(url + "/api/stream-response?prompt=hi")
                rest = await stream.read()
            exit_code = await asyncio.to_thread(process.wait, 30)
    finally:
        logs = stop_process(process, path)
    events = (head + rest).decode().strip().split("\n\n")
    assert sum('"token"' in event for event in events) == 40  # nothing lost
    assert '"done": true' in events[-1] or '"done":true' in events[-1]
    assert exit_code == 0
    assert "Traceback" not in logs
    assert "shutdown grace over" not in logs


async def test_a_stream_longer_than_the_grace_gets_a_final_event_and_exit_0(
    tmp_path: Path,
) -> None:
    port, admin = free_port(), free_port()
    path = tmp_path / "sidecar.yaml"
    write_config(path, port, admin, grace=0.3)
    url, admin_url = f"http://127.0.0.1:{port}", f"http://127.0.0.1:{admin}"
    process = spawn_sidecar(path)
    try:
        async with aiohttp.ClientSession() as http:
            await wait_ready(http, admin_url)
            params = {"prompt": "[[fake tokens=2000 tps=20]] far too long"}
            async with http.get(url + "/api/stream-response", params=params) as stream:
                head = await first_event(stream)
                process.send_signal(signal.SIGTERM)
                rest = await stream.read()
            exit_code = await asyncio.to_thread(process.wait, 30)
    finally:
        logs = stop_process(process, path)
    events = (head + rest).decode().strip().split("\n\n")
    final = json.loads(events[-1].split("data: ", 1)[1])
    # Resumable, but its buffer lives in this process only: the client is told it is lost.
    assert final["error"]["type"] == "stream_lost"
    assert "shutting down" in final["error"]["message"]
    assert sum('"token"' in event for event in events) < 2000
    assert exit_code == 0
    assert "shutdown grace over" in logs
    assert "Traceback" not in logs
