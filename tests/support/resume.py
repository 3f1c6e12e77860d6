"""Helpers for the resume tests: a TCP proxy that cuts a stream, a raw SSE client, event parsing."""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import subprocess
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from sidecar.fake_claude import FakeServer
from sidecar.server import SidecarServer
from sidecar.stream.store import StreamLog
from tests.support.redis_server import RedisServer
from tests.support.sidecars import sidecar_process
from tests.support.waiting import eventually, holds

ROUTE = "/api/stream-response"


@dataclass
class Event:
    """One complete SSE event as the client received it."""

    raw: bytes
    id: str | None
    data: dict[str, Any]


@dataclass
class Reply:
    status: int
    headers: dict[str, str]
    payload: bytes  # the SSE bytes of the complete chunks received
    events: list[Event] = field(default_factory=list)

    @property
    def stream_id(self) -> str:
        return self.headers["sidecar-stream-id"]

    @property
    def last_id(self) -> str:
        ids = [e.id for e in self.events if e.id is not None]
        return ids[-1]

    @property
    def last_event_id(self) -> str:
        """The SSE last event id a browser holds after this reply: the id of the last
        complete block that had one, an id-only block's too (WHATWG "dispatch the event")."""
        complete = self.payload[: self.payload.rfind(b"\n\n") + 2]
        found = ""
        for line in complete.split(b"\n"):
            if line.startswith(b"id: "):
                found = line[4:].decode()
        return found

    @property
    def text(self) -> str:
        return "".join(str(e.data["token"]) for e in self.events if "token" in e.data)


def parse_events(payload: bytes) -> list[Event]:
    """Complete events only (a cut stream may end mid-event); comments skipped, and blocks
    with no data (the prompt route's opening `id: <stream id>:0`), which are no events."""
    complete = payload[: payload.rfind(b"\n\n") + 2] if b"\n\n" in payload else b""
    events = []
    for block in complete.split(b"\n\n"):
        lines = [line for line in block.split(b"\n") if line and not line.startswith(b":")]
        if not any(line.startswith(b"data") for line in lines):
            continue
        event_id = None
        data: dict[str, Any] = {}
        for line in lines:
            name, _, value = line.partition(b": ")
            if name == b"id":
                event_id = value.decode()
            elif name == b"data" and value == b"[DONE]":  # the UI message stream's end
                data = {"done": "[DONE]"}
            elif name == b"data":
                data = json.loads(value)
        events.append(Event(block + b"\n\n", event_id, data))
    return events


def without_opening(payload: bytes) -> bytes:
    """A prompt stream's bytes without the id-only block its first client gets with the
    head (`id: <stream id>:0`): a resume, or the store, never sends it."""
    block, blank, rest = payload.partition(b"\n\n")
    if blank and block.startswith(b"id: ") and block.endswith(b":0") and b"\n" not in block:
        return rest
    return payload


def complete_chunks(data: bytes) -> bytes:
    """The payload of the complete HTTP/1.1 chunks in `data` (a cut body ends anywhere)."""
    out = bytearray()
    while b"\r\n" in data:
        size_line, _, rest = data.partition(b"\r\n")
        try:
            size = int(size_line, 16)
        except ValueError:
            break
        if size == 0 or len(rest) < size + 2:
            break
        out += rest[:size]
        data = rest[size + 2 :]
    return bytes(out)


async def sse_request(
    port: int,
    method: str = "GET",
    target: str = ROUTE + "?prompt=hi",
    headers: Mapping[str, str] | None = None,
    body: bytes = b"",
    read_timeout: float = 30,
) -> Reply:
    """One HTTP/1.1 request on a fresh connection, read until the server (or a cut) closes it."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    head = f"{method} {target} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n"
    for name, value in (headers or {}).items():
        head += f"{name}: {value}\r\n"
    if body:
        head += f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n"
    writer.write(head.encode() + b"\r\n" + body)
    raw = bytearray()
    try:
        async with asyncio.timeout(read_timeout):
            while chunk := await reader.read(65536):
                raw += chunk
    except ConnectionError:
        pass  # cut: what arrived is what the client has
    finally:
        writer.close()
    head_bytes, _, rest = bytes(raw).partition(b"\r\n\r\n")
    lines = head_bytes.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1]) if lines and lines[0] else 0
    parsed = {k.strip().lower(): v.strip() for k, _, v in (x.partition(":") for x in lines[1:])}
    payload = complete_chunks(rest) if parsed.get("transfer-encoding") == "chunked" else rest
    return Reply(status, parsed, payload, parse_events(payload))


async def next_event(content: aiohttp.StreamReader) -> bytes:
    """The next SSE event read from a response body; comments (`: ping`, a stream's opening
    one included) and blocks with no data (the prompt route's opening id) skipped."""
    while not is_event(block := await content.readuntil(b"\n\n")):
        pass
    return block


def is_event(block: bytes) -> bool:
    """Whether a block (ending in its blank line) is an event: it has a data line (a
    comment or an id-only block sets no event off)."""
    return block.startswith(b"data") or b"\ndata" in block


class CuttingProxy:
    """A TCP proxy in front of a sidecar; the first `cuts` connections are cut after `after`
    complete SSE events reached the client (both sides aborted, as a dropped network does).
    Comments (`: ping`) and id-only blocks are no events: they are passed on, not counted.
    `after=0`: the response's first bytes with a whole block (its head and what came with
    it: a prompt stream's opening) pass, and the connection is cut as the next bytes (the
    first event's) come, none of them passed: the client has long read the first ones.
    `at`: instead, cut right after the first match of this pattern (e.g. an event's `id:`
    line, leaving the event itself unsent)."""

    def __init__(
        self, target_port: int, after: int, cuts: int = 1, at: re.Pattern[bytes] | None = None
    ) -> None:
        self.target_port = target_port
        self.after = after
        self.at = at
        self.cuts = cuts
        self.connections = 0
        self.cut = 0
        self._server: asyncio.Server | None = None
        self.port = 0

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()

    async def _serve(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        self.connections += 1
        cutting = self.connections <= self.cuts
        upstream_r, upstream_w = await asyncio.open_connection("127.0.0.1", self.target_port)

        async def pump_up() -> None:
            with contextlib.suppress(ConnectionError):
                while data := await client_r.read(65536):
                    upstream_w.write(data)
                    await upstream_w.drain()

        up = asyncio.create_task(pump_up())
        seen = 0
        tail = b""
        opened = False  # (after=0) the first bytes with a whole block passed
        try:
            while data := await upstream_r.read(65536):
                if cutting and self.at is not None:
                    found = self.at.search(tail + data)
                    if found is not None:
                        client_w.write(data[: found.end() - len(tail)])
                        await client_w.drain()
                        self.cut += 1
                        client_w.transport.abort()
                        upstream_w.transport.abort()
                        return
                    tail = (tail + data)[-200:]
                    client_w.write(data)
                    await client_w.drain()
                    continue
                if cutting and self.after == 0:
                    if opened:
                        self.cut += 1
                        client_w.transport.abort()
                        upstream_w.transport.abort()
                        return
                    assert b"\ndata:" not in data, "an event came with the first bytes"
                    opened = b"\n\n" in data
                    client_w.write(data)
                    await client_w.drain()
                    continue
                if cutting:
                    scan = tail + data
                    start = 0
                    while (at := scan.find(b"\n\n", start)) >= 0:
                        event = b"data:" in scan[start:at]  # not a comment (`: ping`)
                        start = at + 2
                        seen += event
                        if event and seen == self.after:
                            keep = start - len(tail)
                            if data[keep : keep + 2] == b"\r\n":  # the chunk's own end
                                keep += 2
                            client_w.write(data[: max(keep, 0)])
                            await client_w.drain()
                            self.cut += 1
                            client_w.transport.abort()
                            upstream_w.transport.abort()
                            return
                    tail = scan[-1:]
                client_w.write(data)
                await client_w.drain()
        except ConnectionError:
            pass
        finally:
            up.cancel()
            client_w.close()
            upstream_w.close()


@contextlib.asynccontextmanager
async def cutting_proxy(
    target_port: int, after: int, cuts: int = 1, at: re.Pattern[bytes] | None = None
) -> AsyncIterator[CuttingProxy]:
    proxy = CuttingProxy(target_port, after, cuts, at)
    await proxy.start()
    try:
        yield proxy
    finally:
        await proxy.close()


async def stream_then_resume(
    http: aiohttp.ClientSession, url: str, prompt: str, after: int
) -> None:
    """Streams `prompt` by GET at `url`, then reads that stream again from after event `after`:
    the replay must succeed and run to `done`."""
    async with http.get(url, params={"prompt": prompt}) as first:
        stream_id = first.headers["Sidecar-Stream-Id"]
        await first.read()
    async with http.get(url, params={"last_event_id": f"{stream_id}:{after}"}) as again:
        assert again.status == 200
        assert b'"done"' in await again.read()


def stream_ends(caplog: pytest.LogCaptureFixture) -> list[str]:
    """The outcomes of the streams the captured logs ended, in order."""
    return [
        str(getattr(r, "outcome", None))
        for r in caplog.records
        if getattr(r, "event", None) in ("stream_complete", "stream_error")
    ]


@contextlib.asynccontextmanager
async def replica(
    tmp_path: Path,
    name: str,
    fake: FakeServer,
    redis: RedisServer,
    claude: dict[str, Any] | None = None,
    cors: dict[str, Any] | None = None,
    quotas: dict[str, Any] | None = None,
    **resume: Any,
) -> AsyncIterator[tuple[subprocess.Popen[bytes], int, Path]]:
    """A `sidecar run` process using the shared fake Claude and Redis resume store
    (shutdown grace 1 s): its process, port and config path; `quotas`: its quota policy."""
    config = {
        "server": {"shutdown_grace_seconds": 1},
        "claude": {"base_url": fake.url, "api_key": "sk-sidecar", **(claude or {})},
        "resume": {"store": "redis", "redis_url": redis.url, "detach_grace_seconds": 10, **resume},
        "telemetry": {"log_format": "json"},
    }
    if cors is not None:
        config["cors"] = cors
    if quotas is not None:
        config["quotas"] = quotas
    async with sidecar_process(config, tmp_path, name=name) as running:
        port = int(running.url.rsplit(":", 1)[1])
        yield running.process, port, running.config_path


def hold_resume_prepare(
    monkeypatch: pytest.MonkeyPatch,
    sidecar: Callable[[], SidecarServer],
    resuming: Callable[[web.BaseRequest], bool],
    until: Callable[[StreamLog, int], bool],
) -> list[int]:
    """Hold the first response `resuming` picks in its `prepare` (an await of every
    resume) until `until(log, last)` holds for the one live stream's log, `last` being its
    last event number when the hold began. The list returned gets that number."""
    prepare = web.StreamResponse.prepare
    held: list[int] = []

    async def held_prepare(self: web.StreamResponse, request: web.BaseRequest) -> Any:
        if resuming(request) and not held:
            hub = sidecar().runtime.resume.hub
            (stream_id,) = hub.stream_ids()
            live = hub.get(stream_id)
            assert live is not None
            log = live[0].log
            assert log is not None
            held.append(log.last)
            await eventually(lambda: holds(until(log, held[0])))
        return await prepare(self, request)

    monkeypatch.setattr(web.StreamResponse, "prepare", held_prepare)
    return held
