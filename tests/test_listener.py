"""The traffic listener over raw sockets: requests aiohttp's parser refuses, and slow heads.

A refused request is a clean JSON 400/431, counted under a bounded reason, logged as one
line that quotes none of its bytes (a credential in the request line never reaches a log).
A head that does not arrive in time is a 408 and a closed connection.
"""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import json
import logging
import random
import socket
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, Final

import aiohttp
import pytest
import yaml
from aiohttp import web, web_protocol
from aiohttp.http_parser import RawRequestMessage
from aiohttp.test_utils import make_mocked_request
from prometheus_client.parser import text_string_to_metric_families

from sidecar import loader
from sidecar.fake_claude import FakeServer
from sidecar.listener import (
    PARSER_REASONS,
    TrafficProtocol,
    TrafficRunner,
    TrafficServerRunner,
    UnsupportedTransferCoding,
    classify,
    close_after,
)
from sidecar.loader import deep_merge as merge
from sidecar.server import SidecarServer
from tests.support.apps import running_app
from tests.support.sidecars import BASE, SidecarFactory
from tests.support.waiting import eventually, holds

SECRET = "tok-SECRET-4f2a9c"


async def exchange(port: int, data: bytes, timeout: float = 10) -> bytes:
    """Send raw bytes, read until the sidecar closes the connection."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(data)
        await writer.drain()
        return await asyncio.wait_for(reader.read(), timeout)
    finally:
        writer.close()


async def rejections(sidecar: SidecarServer) -> dict[tuple[str, str], float]:
    async with aiohttp.ClientSession() as http, http.get(sidecar.admin_url + "/metrics") as r:
        text = await r.text()
    return {
        (s.labels["sidecar_rejection_reason"], s.labels["http_response_status_code"]): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if s.name == "sidecar_rejections_total"
    }


MALFORMED: list[tuple[str, bytes, int, str]] = [
    ("long_request_line",
     b"GET /?access_token=" + SECRET.encode() + b"a" * 9000 + b" HTTP/1.1\r\nHost: x\r\n\r\n",
     431, "head_too_large"),
    ("long_header", b"GET / HTTP/1.1\r\nHost: x\r\nX-Token: " + SECRET.encode() + b"a" * 9000
     + b"\r\n\r\n", 431, "head_too_large"),
    ("too_many_headers", b"GET / HTTP/1.1\r\nHost: x\r\n"
     + b"".join(b"X-%d: %b\r\n" % (i, SECRET.encode()) for i in range(200)) + b"\r\n",
     431, "head_too_large"),
    ("bad_method", b"G(T /?access_token=" + SECRET.encode() + b" HTTP/1.1\r\nHost: x\r\n\r\n",
     400, "bad_request_line"),
    ("bad_version", b"GET /?t=" + SECRET.encode() + b" HTTP/9.x\r\nHost: x\r\n\r\n",
     400, "bad_request_line"),
    # Read as HTTP/0.9 and HTTP/2.0 by the parser; only 1.0 and 1.1 are served.
    ("no_version", b"GET /?access_token=" + SECRET.encode() + b"\r\nHost: x\r\n\r\n",
     400, "bad_request_line"),
    ("http_0_9", b"GET /?t=" + SECRET.encode() + b" HTTP/0.9\r\nHost: x\r\n\r\n",
     400, "bad_request_line"),
    ("http_2_0_in_text", b"POST /v1/messages HTTP/2.0\r\nHost: x\r\nContent-Length: 2"
     b"\r\n\r\n{}", 400, "bad_request_line"),
    ("tls_on_plain_port", b"\x16\x03\x01\x00\xa5" + SECRET.encode() + b"\r\n\r\n",
     400, "bad_request_line"),
    ("bad_header_name", b"GET / HTTP/1.1\r\nHost: x\r\nBad Header: " + SECRET.encode()
     + b"\r\n\r\n", 400, "bad_header"),
    ("bad_chunk_size", b"POST /v1/messages HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked"
     b"\r\n\r\nzz" + SECRET.encode() + b"\r\nabc\r\n0\r\n\r\n", 400, "bad_body_framing"),
    ("bad_content_length", b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 1" + SECRET.encode()
     + b"\r\n\r\n", 400, "bad_body_framing"),
    ("length_and_chunked", b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n"
     b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n", 400, "bad_body_framing"),
    # HTTP/1.0 has no transfer codings (RFC 9112 6.1): a proxy in front reading no body
    # would take the chunks for the next request on a kept-alive connection.
    ("chunked_in_http_1_0", b"POST / HTTP/1.0\r\nHost: x\r\nConnection: keep-alive\r\n"
     b"Transfer-Encoding: chunked\r\n\r\n3\r\n" + SECRET.encode()[:3]
     + b"\r\n0\r\n\r\nGET / HTTP/1.0\r\n\r\n", 400, "bad_body_framing"),
    ("coded_in_http_1_0", b"POST /v1/messages HTTP/1.0\r\nHost: x\r\n"
     b"Transfer-Encoding: gzip\r\nContent-Length: 2\r\n\r\n{}", 400, "bad_body_framing"),
    # A coding on top of chunked: the parser would hand the body on still coded, unlabelled.
    ("coded_and_chunked", b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip, chunked"
     b"\r\n\r\n3\r\n" + SECRET.encode()[:3] + b"\r\n0\r\n\r\n", 501,
     "unsupported_transfer_coding"),
    ("identity_and_chunked", b"POST /v1/messages HTTP/1.1\r\nHost: x\r\n"
     b"Transfer-Encoding: IDENTITY, chunked\r\n\r\n0\r\n\r\n", 501,
     "unsupported_transfer_coding"),
    # A `Host` that is no host: never the app's `Host` or `X-Forwarded-Host` (RFC 9112 3.2).
    ("host_with_a_space", b"GET /v1/models HTTP/1.1\r\nHost: a " + SECRET.encode()
     + b"\r\n\r\n", 400, "bad_header"),
    ("host_with_a_path", b"GET / HTTP/1.1\r\nHost: a.example/" + SECRET.encode()
     + b"\r\n\r\n", 400, "bad_header"),
    ("host_with_userinfo", b"GET / HTTP/1.1\r\nHost: " + SECRET.encode()
     + b"@a.example\r\n\r\n", 400, "bad_header"),
    ("host_port_not_a_number", b"GET / HTTP/1.1\r\nHost: a.example:8o\r\n\r\n", 400,
     "bad_header"),
    ("host_unclosed_literal", b"GET / HTTP/1.1\r\nHost: [::1\r\n\r\n", 400, "bad_header"),
]  # fmt: skip


@pytest.mark.parametrize(
    "host", ["", "a.example", "a.example:8080", "127.0.0.1:1", "[::1]:8080", "xn--bcher-kva.ch",
             "A-B.example.", "a.example:"],
)  # fmt: skip
async def test_every_valid_host_spelling_is_served(sidecar_for: SidecarFactory, host: str) -> None:
    async with sidecar_for() as sidecar:
        answer = await exchange(
            sidecar.port,
            b"GET /v1/models HTTP/1.1\r\nHost: %b\r\nConnection: close\r\n\r\n" % host.encode(),
        )
    assert answer.startswith(b"HTTP/1.1 200 "), answer[:80]


async def test_parser_errors_are_clean_counted_and_never_logged_raw(
    sidecar_for: SidecarFactory, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    answers: dict[str, bytes] = {}
    async with sidecar_for() as sidecar:
        for name, data, _, _ in MALFORMED:
            answers[name] = await exchange(sidecar.port, data)
        counted = await rejections(sidecar)
    for name, _, status, _reason in MALFORMED:
        head, _, body = answers[name].partition(b"\r\n\r\n")
        assert head.split(b" ", 2)[1] == b"%d" % status, (name, head)  # and closed: read() ended
        assert b"Content-Type: application/json" in head
        error = json.loads(body)["error"]
        assert error["type"] == "invalid_request"
        assert SECRET not in error["message"]
    expected: dict[tuple[str, str], float] = {}
    for _, _, status, reason in MALFORMED:
        expected[(reason, str(status))] = expected.get((reason, str(status)), 0) + 1
    assert counted == expected
    assert set(reason for reason, _ in counted) <= PARSER_REASONS
    # No record anywhere (message, arguments, traceback) carries the request's bytes.
    for record in caplog.records:
        assert SECRET not in record.getMessage()
        assert SECRET not in str(record.__dict__)
        assert record.exc_info is None, record.getMessage()
        assert record.levelno < logging.ERROR
    # Each refusal is one WARNING line naming its reason, never a traceback.
    refusals = [r for r in caplog.records if r.getMessage() == "request_rejected"]
    assert len(refusals) == len(MALFORMED)
    assert {r.levelno for r in refusals} == {logging.WARNING}
    assert SECRET not in caplog.text


async def test_bad_chunk_framing_mid_body_on_a_claude_route_is_a_400(
    sidecar_for: SidecarFactory,
) -> None:
    async with sidecar_for() as sidecar:
        reader, writer = await asyncio.open_connection("127.0.0.1", sidecar.port)
        writer.write(
            b"POST /v1/messages HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n1\r\n{\r\n"
        )
        await writer.drain()
        await asyncio.sleep(0.3)  # the handler is reading the body by now
        writer.write(b"zz\r\n}\r\n0\r\n\r\n")
        await writer.drain()
        answer = await asyncio.wait_for(reader.read(), 10)
        writer.close()
        counted = await rejections(sidecar)
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 400 ")
    assert json.loads(body)["error"]["type"] == "invalid_request_error"  # Anthropic's format
    assert counted == {("bad_body", "400"): 1}


async def test_a_slow_head_gets_408_and_the_connection_closes(
    sidecar_for: SidecarFactory,
) -> None:
    config = {"server": {"header_read_timeout_seconds": 0.5}}
    async with sidecar_for(config) as sidecar:
        reader, writer = await asyncio.open_connection("127.0.0.1", sidecar.port)
        writer.write(b"GET /v1/models HTTP/1.1\r\nHost: x\r\n")

        async def trickle() -> None:
            for i in range(100):  # a header line every 0.1 s: never quiet, never done
                writer.write(b"X-%d: y\r\n" % i)
                await writer.drain()
                await asyncio.sleep(0.1)

        trickling = asyncio.create_task(trickle())
        try:
            answer = await asyncio.wait_for(reader.read(), 10)
        finally:
            trickling.cancel()
            writer.close()
        silent = await exchange(sidecar.port, b"")  # connects and never sends a byte
        counted = await rejections(sidecar)
    for got in (answer, silent):
        head, _, body = got.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 408 ")
        assert json.loads(body)["error"]["type"] == "timeout"
    assert counted == {("header_timeout", "408"): 2}


async def test_an_idle_kept_alive_connection_is_not_a_slow_head(
    sidecar_for: SidecarFactory,
) -> None:
    config = {"server": {"header_read_timeout_seconds": 0.3}}
    request = b"GET /v1/models HTTP/1.1\r\nHost: x\r\n\r\n"
    async with sidecar_for(config) as sidecar:
        reader, writer = await asyncio.open_connection("127.0.0.1", sidecar.port)
        statuses = []
        for _ in range(2):
            writer.write(request)
            await writer.drain()
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
            statuses.append(head.split(b" ", 2)[1])
            length = int(head.lower().split(b"content-length: ")[1].split(b"\r\n")[0])
            await reader.readexactly(length)
            await asyncio.sleep(0.8)  # idle well past the head timeout, between requests
        writer.close()
    # The second request was answered like the first, on the same connection, after idling.
    assert len(statuses) == 2
    assert statuses[0] == statuses[1] != b"408"


async def test_a_refused_bodys_late_bytes_are_not_taken_for_a_slow_next_head(
    sidecar_for: SidecarFactory,
) -> None:
    """A body its route refused before reading (413 by its Content-Length) still arrives
    after the answer; aiohttp reads and drops it. Those bytes are no head: the connection
    then idles as any kept-alive one, with no unasked-for 408 on it."""
    config = {"server": {"header_read_timeout_seconds": 0.3, "max_body_bytes": 16}}
    body = b'{"prompt": "' + b"x" * 64 + b'"}'
    head = (
        b"POST /api/stream-response HTTP/1.1\r\nHost: x\r\n"
        b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n" % len(body)
    )
    request = b"GET /v1/models HTTP/1.1\r\nHost: x\r\n\r\n"
    async with sidecar_for(config) as sidecar:
        reader, writer = await asyncio.open_connection("127.0.0.1", sidecar.port)
        statuses = []
        for data, late in [(head, body), (request, b"")]:
            writer.write(data)
            await writer.drain()
            answer = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
            statuses.append(answer.split(b" ", 2)[1])
            length = int(answer.lower().split(b"content-length: ")[1].split(b"\r\n")[0])
            await reader.readexactly(length)
            writer.write(late)  # the refused body, after its answer
            await writer.drain()
            await asyncio.sleep(0.8)  # idle well past the head timeout, between requests
        writer.close()
    # The next request was answered on the same connection, after idling: no 408 came first.
    assert statuses == [b"413", b"200"]


async def test_an_idle_kept_alive_connection_is_closed_after_the_keepalive_timeout(
    sidecar_for: SidecarFactory,
) -> None:
    """aiohttp keeps an idle connection an hour by default: every client that sent one
    request could hold a socket that long. `server.keepalive_timeout_seconds` bounds it."""
    config = {"server": {"keepalive_timeout_seconds": 0.3}}
    request = b"GET /v1/models HTTP/1.1\r\nHost: x\r\n\r\n"
    async with sidecar_for(config) as sidecar:
        reader, writer = await asyncio.open_connection("127.0.0.1", sidecar.port)
        try:
            writer.write(request)
            await writer.drain()
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
            assert b"connection: close" not in head.lower()  # kept alive, then idle
            length = int(head.lower().split(b"content-length: ")[1].split(b"\r\n")[0])
            await reader.readexactly(length)
            # Idle: the sidecar closes its end (end of file, nothing more sent).
            assert await asyncio.wait_for(reader.read(), 20) == b""
        finally:
            writer.close()


@pytest.mark.parametrize("coding", ["gzip, chunked", "deflate,chunked", "x-gzip , chunked"])
async def test_a_coded_chunked_body_never_reaches_the_app(
    coding: str, sidecar_for: SidecarFactory
) -> None:
    """The parser undoes only the chunked framing: the app would read gzip bytes as the
    body itself, labelled as nothing. The request is refused before any route (501)."""
    body = gzip.compress(b"plain text the app would never see as such")
    request = (
        b"POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: %b\r\n\r\n%x\r\n%b\r\n0\r\n\r\n"
        % (coding.encode(), len(body), body)
    )
    async with running_app() as (app_url, _), sidecar_for({"app": {"url": app_url}}) as sidecar:
        head, _, answer = (await exchange(sidecar.port, request)).partition(b"\r\n\r\n")
        counted = await rejections(sidecar)
    assert head.split(b" ", 2)[1] == b"501", head
    assert json.loads(answer)["error"]["message"] == (
        "Transfer-Encoding other than chunked is not supported"
    )
    assert counted == {("unsupported_transfer_coding", "501"): 1}


def test_classify_is_a_closed_set() -> None:
    from aiohttp import http_exceptions as errors

    samples = [
        errors.LineTooLong(b"x" * 10, 5), errors.BadStatusLine("x"), errors.BadHttpMethod("x"),
        errors.InvalidHeader(b"x"), errors.TransferEncodingError("x"),
        errors.ContentLengthError("x"), errors.BadHttpMessage("Too many headers received"),
        errors.BadHttpMessage("Invalid character in chunk size:\n b'zz'"),
        errors.BadHttpMessage("anything else " + SECRET), errors.InvalidURLError("x"),
        UnsupportedTransferCoding(),
    ]  # fmt: skip
    assert {classify(exc)[0] for exc in samples} == PARSER_REASONS


async def test_aiohttp_internals_the_listener_relies_on() -> None:
    """Fails on an aiohttp upgrade that moves what `sidecar.listener` borrows."""
    runner = TrafficRunner(
        web.Application(), on_reject=lambda reason, status: None, header_timeout=lambda: 1.0
    )
    await runner.setup()
    try:
        server = runner.server
        assert server is not None
        protocol = server()
        assert isinstance(protocol, TrafficProtocol)
        for name in ("_request_count", "_messages", "_request_in_progress", "_upgraded",
                     "_close", "_force_close", "_current_request", "_loop"):  # fmt: skip
            assert hasattr(protocol, name), name
        assert isinstance(server._kwargs, dict)
        assert {"status", "exc", "message"} <= set(web_protocol._ErrInfo.__annotations__)
        assert hasattr(RawRequestMessage, "version")  # what the served versions are read from
        assert callable(web_protocol.RequestHandler.handle_error)
    finally:
        await runner.cleanup()


async def test_the_bare_handler_runner_builds_traffic_protocols_around_its_hooks() -> None:
    """`TrafficServerRunner` (the traffic listener: no `web.Application`) opens before its
    server exists, closes after it, and its connections are `TrafficProtocol`s."""
    calls: list[str] = []

    async def on_startup() -> None:
        calls.append("startup")

    async def on_cleanup() -> None:
        calls.append("cleanup")

    async def handler(request: web.BaseRequest) -> web.StreamResponse:
        return web.Response()

    def make_request(*args: Any) -> web.BaseRequest:
        raise AssertionError("no request is made here")

    runner = TrafficServerRunner(
        handler, request_factory=make_request, on_startup=on_startup,
        on_cleanup=on_cleanup, on_reject=lambda reason, status: None,
        header_timeout=lambda: 1.0, handler_cancellation=True, access_log=None,
    )  # fmt: skip
    await runner.setup()
    try:
        server = runner.server
        assert server is not None
        assert calls == ["startup"]
        assert server.handler_cancellation
        assert server.request_handler is handler
        assert isinstance(server(), TrafficProtocol)
    finally:
        await runner.cleanup()
    assert calls == ["startup", "cleanup"]


async def test_the_head_deadline_follows_a_reload(tmp_path: Path, fake: FakeServer) -> None:
    path = tmp_path / "sidecar.yaml"
    data = merge(
        BASE,
        {"claude": {"base_url": fake.url, "api_key": "k"}, "server": {"reload_poll_seconds": 0}},
    )
    path.write_text(yaml.safe_dump(merge(data, {"server": {"header_read_timeout_seconds": 60}})))
    server = SidecarServer(loader.load(path, {}), config_path=path, env={})
    await server.start()
    try:
        path.write_text(
            yaml.safe_dump(merge(data, {"server": {"header_read_timeout_seconds": 0.3}}))
        )
        assert await server.reload()
        silent = await exchange(server.port, b"", timeout=10)  # 60 s before the reload
    finally:
        await server.shutdown(grace=1.0)
    assert silent.startswith(b"HTTP/1.1 408 ")


async def test_the_admin_listener_refuses_the_same_way(
    sidecar_for: SidecarFactory, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    _, data, status, _ = MALFORMED[0]  # a credential in an over-long request line
    async with sidecar_for() as sidecar:
        answer = await exchange(sidecar.admin_port, data)
    assert answer.split(b" ", 2)[1] == b"%d" % status
    assert SECRET not in caplog.text
    assert all(record.exc_info is None for record in caplog.records)


VALID: list[bytes] = [
    b"GET /v1/models?access_token=" + SECRET.encode() + b" HTTP/1.1\r\nHost: x\r\n\r\n",
    b"POST /api/stream-response HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
    b"Content-Length: 15\r\nAuthorization: Bearer " + SECRET.encode() + b'\r\n\r\n{"prompt":"hi"}',
    b"POST /v1/messages HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
    b"Transfer-Encoding: chunked\r\nX-Api-Key: " + SECRET.encode() + b"\r\n\r\n"
    b'5\r\n{"a":\r\n2\r\n1}\r\n0\r\n\r\n',
]
_NOISE = b'\r\n\x00 :\t\x7f\xff%/?;,="\\\x16'


async def answered(port: int, data: bytes, seconds: float = 3) -> bytes:
    """What the sidecar answered within `seconds` (a kept-alive connection stays open)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    received = b""
    try:
        writer.write(data)
        await writer.drain()
        async with asyncio.timeout(seconds):
            while chunk := await reader.read(65536):
                received += chunk
    except TimeoutError:
        pass
    finally:
        writer.close()
    return received


def mutate(rng: random.Random, data: bytes) -> bytes:
    """`data` with a few random edits: bytes replaced, inserted or removed, lines repeated."""
    out = bytearray(data)
    for _ in range(rng.randint(1, 4)):
        at = rng.randrange(len(out) + 1)
        edit = rng.randrange(4)
        if edit == 0 and out:
            out[min(at, len(out) - 1)] = rng.choice(_NOISE + bytes([rng.randrange(256)]))
        elif edit == 1:
            out[at:at] = bytes(rng.choice(_NOISE) for _ in range(rng.randint(1, 8)))
        elif edit == 2:
            del out[at : at + rng.randint(1, 12)]
        else:
            line_end = out.find(b"\r\n", at)
            if line_end > 0:
                start = out.rfind(b"\r\n", 0, line_end) + 2
                out[line_end:line_end] = b"\r\n" + out[start:line_end] * rng.randint(1, 3)
    return bytes(out)


async def test_mutated_requests_never_get_a_5xx_or_reach_a_log_raw(
    sidecar_for: SidecarFactory, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    rng = random.Random(20261201)
    cases = [mutate(rng, rng.choice(VALID)) for _ in range(300)]
    config = {"server": {"header_read_timeout_seconds": 0.5, "body_read_timeout_seconds": 0.5}}
    answers: list[bytes] = []
    async with sidecar_for(config) as sidecar:
        for start in range(0, len(cases), 50):
            batch = cases[start : start + 50]
            answers += await asyncio.gather(*(answered(sidecar.port, case) for case in batch))
    statuses = [line.split(b" ", 2)[1] for a in answers for line in a.split(b"\r\n")
                if line.startswith(b"HTTP/1.")]  # fmt: skip
    # Answered, not dropped: 400s for the broken ones, and some still valid requests served.
    assert len(statuses) >= len(cases) * 0.8
    assert {b"400", b"200"} <= set(statuses)
    assert [s for s in statuses if s.startswith(b"5")] == []
    assert SECRET not in caplog.text
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR] == []


async def test_close_after_makes_the_response_say_close_and_end_the_connection() -> None:
    """What a draining sidecar does to each request: its response carries `Connection:
    close` (aiohttp's and the stream adapter's heads both read the parsed message)."""
    request = make_mocked_request("GET", "/", headers={"Connection": "keep-alive"})
    assert request.keep_alive
    close_after(request)
    assert not request.keep_alive
    assert request._message.should_close
    assert request.method == "GET"  # the rest of the message is kept
    assert request.path == "/"


def _http10(method: str, path: str, body: Any = None, headers: str = "") -> bytes:
    """An HTTP/1.0 request that asks to keep its connection alive."""
    data = b"" if body is None else json.dumps(body).encode()
    head = f"{method} {path} HTTP/1.0\r\nHost: x\r\nConnection: keep-alive\r\n{headers}"
    if body is not None:
        head += f"Content-Type: application/json\r\nContent-Length: {len(data)}\r\n"
    return (head + "\r\n").encode() + data


_MESSAGES = {"model": "claude-sonnet-5-5", "max_tokens": 20, "stream": True, "temperature": 0,
             "messages": [{"role": "user", "content": "hi"}]}  # fmt: skip
_CHAT = {"id": "c", "messages": [{"id": "m", "role": "user",
                                  "parts": [{"type": "text", "text": "hi"}]}]}  # fmt: skip
# (request, how its stream's last event ends)
_STREAMS = {
    "prompt_post": (_http10("POST", "/api/stream-response", {"prompt": "hi"}), b'"end_turn"}'),
    "prompt_get": (_http10("GET", "/api/stream-response?prompt=hi"), b'"end_turn"}'),
    "anthropic": (_http10("POST", "/v1/messages", _MESSAGES), b'{"type":"message_stop"}'),
    "anthropic_resumable": (
        _http10("POST", "/v1/messages", _MESSAGES, "Sidecar-Resume: on\r\n"),
        b'{"type":"message_stop"}',
    ),
    "anthropic_cached": (_http10("POST", "/v1/messages", _MESSAGES), b'{"type":"message_stop"}'),
    "ui": (_http10("POST", "/api/chat", _CHAT), b"data: [DONE]"),
    "app": (_http10("GET", "/sse"), b"data: 4"),
}


@pytest.mark.parametrize("name", list(_STREAMS))
async def test_a_stream_to_an_http_1_0_client_ends_by_closing_its_connection(
    name: str, fake: FakeServer, sidecar_for: SidecarFactory
) -> None:
    """HTTP/1.0 has no chunked framing: a stream's end is its connection's close, even when
    the client asked to keep the connection alive (else it waits for more forever)."""
    request, last = _STREAMS[name]
    async with (
        running_app() as (app_url, _),
        sidecar_for({"app": {"url": app_url}, "cache": {"enabled": True}}) as sidecar,
    ):
        if name == "anthropic_cached":  # answered from the cache: recorded by a call first
            await exchange(sidecar.port, request.replace(b"keep-alive", b"close"))
            assert sidecar.runtime.cache is not None
            await sidecar.runtime.cache.settled()
        calls = len(fake.state.requests)
        raw = await exchange(sidecar.port, request)  # read until the sidecar closes
        if name == "anthropic_cached":
            assert len(fake.state.requests) == calls  # replayed, not asked of Claude
    head, _, body = raw.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.0 200 "), head
    lowered = head.lower()
    assert b"transfer-encoding" not in lowered
    assert b"content-length" not in lowered
    assert b"connection: keep-alive" not in lowered
    assert body.rstrip(b"\n").endswith(last), body[-200:]


async def test_an_http_1_0_answer_with_a_length_keeps_its_connection_alive(
    sidecar_for: SidecarFactory,
) -> None:
    bad = _http10("POST", "/api/stream-response", {"prompt": 5})
    async with sidecar_for() as sidecar:
        reader, writer = await asyncio.open_connection("127.0.0.1", sidecar.port)
        try:
            statuses = []
            for _ in range(2):  # the second on the same connection
                writer.write(bad)
                await writer.drain()
                head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
                statuses.append(head.split(b" ", 2)[1])
                assert b"connection: keep-alive" in head.lower()
                length = int(head.lower().split(b"content-length: ")[1].split(b"\r\n")[0])
                await reader.readexactly(length)
        finally:
            writer.close()
    assert statuses == [b"400", b"400"]


_STALL: Final = {"base_url": "builtin:fake", "client_stall_timeout_seconds": 1}


@contextlib.asynccontextmanager
async def _never_reading(sidecar: SidecarServer, tokens: int) -> AsyncIterator[None]:
    """A client with a tiny receive buffer that asks for a whole `tokens`-token answer on
    /v1/messages and never reads it."""
    prompt = f"hi [[fake tokens={tokens} tps=0 ttft_ms=0]]"
    body = json.dumps(
        {"model": "claude-haiku-5-5", "max_tokens": tokens,
         "messages": [{"role": "user", "content": prompt}]}
    ).encode()  # fmt: skip
    request = (
        b"POST /v1/messages HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b"Content-Length: %d\r\n\r\n%b" % (len(body), body)
    )
    client = socket.socket()
    client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    client.setblocking(False)
    try:
        loop = asyncio.get_running_loop()
        await loop.sock_connect(client, ("127.0.0.1", sidecar.port))
        await loop.sock_sendall(client, request)
        yield
    finally:
        client.close()


async def test_a_client_that_never_reads_a_whole_answer_is_cut_after_the_stall_timeout(
    sidecar_for: SidecarFactory,
) -> None:
    """A non-streaming answer is written by aiohttp after the handler let go of its slot,
    with no deadline of its own: a client that takes none of it would hold the connection
    and the answer's bytes for good. Big enough to fill the kernel's buffers, it waits in
    the process; the stall timeout cuts it."""
    async with sidecar_for({"claude": _STALL}) as sidecar, _never_reading(sidecar, 1500000):
        # Never read: the sidecar lets go of the connection once the stall timeout is over.
        await eventually(lambda: holds(len(sidecar.connections()) == 1), timeout=30)
        await eventually(lambda: holds(not sidecar.connections()), timeout=30)


async def test_a_client_that_never_reads_an_answer_the_kernel_took_whole_is_cut(
    sidecar_for: SidecarFactory,
) -> None:
    """An answer small enough for the kernel's send buffer (Linux grows it to a few MB)
    leaves the process at once, where no stall watch of the process sees it: a client that
    never reads would pin those bytes and its connection until the keep-alive timeout (an
    hour). The kernel resets it once the client has accepted nothing for twice the stall
    timeout."""
    if not hasattr(socket, "TCP_USER_TIMEOUT"):
        pytest.skip("TCP_USER_TIMEOUT is Linux's")
    async with sidecar_for({"claude": _STALL}) as sidecar, _never_reading(sidecar, 20000):
        await eventually(lambda: holds(len(sidecar.connections()) == 1), timeout=30)
        # The whole answer is out of the process: the handler is done, the connection idle.
        await eventually(lambda: holds(not sidecar.connections()[0]._request_in_progress))
        await eventually(lambda: holds(not sidecar.connections()), timeout=30)
