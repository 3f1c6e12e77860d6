"""The listeners: graceful shutdown of a real `sidecar run` process with a stream in flight,
and HTTPS on the traffic listener (a certificate made at test time, HSTS on every response)."""

from __future__ import annotations

import asyncio
import json
import signal
import socket
import ssl
import subprocess
import sys
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml
from multidict import CIMultiDictProxy

from sidecar.fake_claude import FakeServer
from sidecar.loader import deep_merge as merge
from sidecar.server import EXIT_CANNOT_LISTEN, SHUTDOWN_MARGIN
from tests.support.certs import write_self_signed
from tests.support.policy import API_KEY, API_KEY_SHA256
from tests.support.sidecars import SidecarFactory, running_sidecar, sidecar_process
from tests.support.sockets import free_port
from tests.support.waiting import eventually, holds

pytestmark = pytest.mark.timeout(60)


def config(grace: float) -> dict[str, Any]:
    return {
        "server": {"shutdown_grace_seconds": grace},
        "claude": {
            "base_url": "builtin:fake",
            "fake": {"tokens": 5, "tokens_per_second": 0, "time_to_first_token_ms": 0},
        },
    }


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
    async with sidecar_process(config(grace=20), tmp_path) as running:
        url, process = running.url, running.process
        async with aiohttp.ClientSession() as http:
            params = {"prompt": "[[fake tokens=40 tps=20]] slow"}  # about two seconds
            async with http.get(url + "/api/stream-response", params=params) as stream:
                assert stream.status == 200
                head = await first_event(stream)
                process.send_signal(signal.SIGTERM)

                async def draining() -> bool:
                    status, body = await readyz_status(http, running.admin_url)
                    return status == 503 and body["checks"] == {"lifecycle": "draining"}

                await eventually(draining)
                # The listener no longer accepts: a new connection is refused.
                assert await refused(url + "/api/stream-response?prompt=hi")
                rest = await stream.read()
            exit_code = await asyncio.to_thread(process.wait, 30)
    logs = running.logs()
    events = (head + rest).decode().strip().split("\n\n")
    assert sum('"token"' in event for event in events) == 40  # nothing lost
    assert '"done": true' in events[-1] or '"done":true' in events[-1]
    assert exit_code == 0
    assert "Traceback" not in logs
    assert "shutdown grace over" not in logs


async def test_a_second_sigterm_ends_the_grace_with_final_events_and_exit_0(
    tmp_path: Path,
) -> None:
    """A second SIGTERM (or Ctrl-C twice) ends a drain whose grace would run for minutes:
    the stream still live gets its final `shutting_down` event at once, the process exits
    0, and the log says why."""
    async with sidecar_process(config(grace=600), tmp_path) as running:
        async with aiohttp.ClientSession() as http:
            params = {"prompt": "[[fake tokens=100000 tps=20]] far too long"}
            async with http.get(running.url + "/api/stream-response", params=params) as stream:
                head = await first_event(stream)
                running.process.send_signal(signal.SIGTERM)

                async def draining() -> bool:
                    status, _ = await readyz_status(http, running.admin_url)
                    return status == 503

                await eventually(draining)
                running.process.send_signal(signal.SIGINT)
                rest = await stream.read()
            # Within the test's timeout (60 s), far inside the 600 s grace.
            exit_code = await asyncio.to_thread(running.process.wait, 30)
    logs = running.logs()
    events = (head + rest).decode().strip().split("\n\n")
    final = json.loads(events[-1].split("data: ", 1)[1])
    assert "shutting down" in final["error"]["message"]
    assert exit_code == 0
    assert "shutdown hurried" in logs
    assert "shutdown grace over" not in logs
    assert "Traceback" not in logs


async def test_a_running_sidecar_writes_a_calls_lines_within_the_flush_delay(
    tmp_path: Path,
) -> None:
    """The per-call lines of a running sidecar reach its stderr within
    `telemetry.log_flush_seconds` (not only at exit), in order, each line whole."""
    data = config(grace=5) | {"telemetry": {"log_flush_seconds": 0.3}}
    async with sidecar_process(data, tmp_path) as running, aiohttp.ClientSession() as http:
        async with http.get(running.url + "/api/stream-response?prompt=hi") as response:
            assert response.status == 200
            await response.read()

        def messages() -> list[str]:
            lines = running.logs().splitlines()
            return [json.loads(line)["message"] for line in lines if '"sidecar.' in line]

        async def written() -> bool:
            return "request" in messages()

        await eventually(written)
        logged = [m for m in messages() if m in ("stream_start", "stream_complete", "request")]
        assert logged == ["stream_start", "stream_complete", "request"]
        assert running.process.poll() is None  # written while it runs


async def test_a_stream_longer_than_the_grace_gets_a_final_event_and_exit_0(
    tmp_path: Path,
) -> None:
    async with sidecar_process(config(grace=0.3), tmp_path) as running:
        async with aiohttp.ClientSession() as http:
            params = {"prompt": "[[fake tokens=2000 tps=20]] far too long"}
            async with http.get(running.url + "/api/stream-response", params=params) as stream:
                head = await first_event(stream)
                running.process.send_signal(signal.SIGTERM)
                rest = await stream.read()
            exit_code = await asyncio.to_thread(running.process.wait, 30)
    logs = running.logs()
    events = (head + rest).decode().strip().split("\n\n")
    final = json.loads(events[-1].split("data: ", 1)[1])
    # Resumable, but its buffer lives in this process only: the client is told it is lost.
    assert final["error"]["type"] == "stream_lost"
    assert "shutting down" in final["error"]["message"]
    assert sum('"token"' in event for event in events) < 2000
    assert exit_code == 0
    assert "shutdown grace over" in logs
    assert "Traceback" not in logs


async def test_a_call_queued_when_the_grace_ends_is_turned_away_before_claude_is_called(
    fake: FakeServer, sidecar_for: SidecarFactory
) -> None:
    """One stream slot, held past the grace by a long stream; a second call queued for it.
    When the grace ends the stream gets its final event and the queued call a 503
    `shutting_down` with `Retry-After`: the freed slot is not handed to it, and Claude is
    called once."""
    data = {"claude": {"max_concurrent_streams": 1, "queue": {"max_waiting": 4}}}
    async with sidecar_for(data) as server, aiohttp.ClientSession() as http:
        url = server.url + "/api/stream-response"
        async with http.get(url, params={"prompt": "[[fake tokens=2000 tps=20]] long"}) as held:
            await first_event(held)
            queued = asyncio.ensure_future(http.post(url, json={"prompt": "queued"}))
            await eventually(lambda: holds(server.runtime.admission.waiting == 1))
            shutdown = asyncio.ensure_future(server.shutdown(grace=0.3))
            refused_call = await queued
            body = await refused_call.json()
            rest = await held.read()
        await shutdown
    assert refused_call.status == 503
    assert refused_call.headers["Retry-After"] == "1"
    assert body["error"]["type"] == "overloaded"
    assert b"shutting down" in rest
    assert fake.state.counters["requests"] == 1


async def test_the_whole_exit_is_bounded_by_the_grace_plus_the_margin(tmp_path: Path) -> None:
    """A collector that accepts and never answers, and an export timeout of a minute: the
    last span export cannot end, and the thread blocked in it would hold the interpreter's
    exit. The process is still gone within the grace plus `SHUTDOWN_MARGIN`."""
    held: list[asyncio.StreamWriter] = []

    async def never_answer(_: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        held.append(writer)

    collector = await asyncio.start_server(never_answer, "127.0.0.1", 0)
    port = collector.sockets[0].getsockname()[1]
    data = config(grace=0.5) | {"telemetry": {"otlp_endpoint": f"http://127.0.0.1:{port}"}}
    env = {"OTEL_BSP_EXPORT_TIMEOUT": "60000", "OTEL_EXPORTER_OTLP_TIMEOUT": "60",
           "OTEL_BSP_SCHEDULE_DELAY": "60000"}  # fmt: skip
    try:
        async with sidecar_process(data, tmp_path, env=env) as running:
            async with aiohttp.ClientSession() as http:
                params = {"prompt": "hi"}
                async with http.get(running.url + "/api/stream-response", params=params) as got:
                    await got.read()
            running.process.send_signal(signal.SIGTERM)
            bound = 0.5 + SHUTDOWN_MARGIN + 2.0  # the slack: interpreter start-up of signals
            exit_code = await asyncio.to_thread(running.process.wait, bound)
    finally:
        collector.close()
        for writer in held:
            writer.close()
    assert exit_code == 0


@pytest.mark.parametrize(
    "schedule_delay_ms",
    ["60000", "50"],
    ids=["posted_at_exit", "post_stuck_since_before"],
)
async def test_the_last_exports_end_within_the_margin_against_a_collector_that_never_answers(
    tmp_path: Path, schedule_delay_ms: str
) -> None:
    """The last span and metric exports are given up by the shutdown's deadline, not their
    own timeouts (5 s for spans, the OTLP exporter's 10 s a post, 30 s for metrics): the
    process exits on its own within the margin, and the watchdog never has to end it.
    Spans are posted at exit, or were stuck in a post since before SIGTERM."""
    held: list[asyncio.StreamWriter] = []

    async def never_answer(_: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        held.append(writer)

    collector = await asyncio.start_server(never_answer, "127.0.0.1", 0)
    port = collector.sockets[0].getsockname()[1]
    data = config(grace=0.5) | {"telemetry": {"otlp_endpoint": f"http://127.0.0.1:{port}"}}
    env = {"OTEL_BSP_SCHEDULE_DELAY": schedule_delay_ms}
    try:
        async with sidecar_process(data, tmp_path, env=env) as running:
            async with aiohttp.ClientSession() as http:
                params = {"prompt": "hi"}
                async with http.get(running.url + "/api/stream-response", params=params) as got:
                    await got.read()
            if schedule_delay_ms != "60000":
                await eventually(lambda: holds(len(held) >= 1))  # a post is under way
            running.process.send_signal(signal.SIGTERM)
            bound = 0.5 + SHUTDOWN_MARGIN + 2.0  # the slack: interpreter start-up of signals
            exit_code = await asyncio.to_thread(running.process.wait, bound)
            logs = running.logs()
    finally:
        collector.close()
        for writer in held:
            writer.close()
    assert exit_code == 0
    assert "shutdown bound reached" not in logs  # the watchdog did not end it
    assert "shutdown close over" not in logs  # the closes ended within their share


async def test_during_the_grace_a_kept_alive_connection_is_told_to_close(
    fake: FakeServer, sidecar_for: SidecarFactory
) -> None:
    """Draining: the listener accepts no new connection, and a request on a kept-alive
    one is answered with `Connection: close` and that connection closed after it, so the
    client's next request goes to another replica."""
    short = {"prompt": "[[fake tokens=1]] hi"}
    async with sidecar_for() as server, aiohttp.ClientSession() as http:
        url = server.url + "/api/stream-response"
        async with http.get(url, params={"prompt": "[[fake tokens=400 tps=40]] long"}) as held:
            await first_event(held)  # holds the grace open
            async with http.get(url, params=short) as before:
                await before.read()  # its connection goes back to the pool, open
            assert "close" not in before.headers.get("Connection", "").lower()
            shutdown = asyncio.ensure_future(server.shutdown(grace=5))
            await eventually(lambda: refused(url))
            async with http.get(url, params=short) as during:  # the pooled connection
                body = await during.read()
            assert during.status == 200
            assert b'"done"' in body
            assert during.headers["Connection"].lower() == "close"
            held.close()
        await shutdown


# --------------------------------------------------------------------------- TLS


PROMPT = "/api/stream-response"


ORIGIN = "https://app.example.com"


def self_signed(directory: Path) -> tuple[Path, Path]:
    """A certificate for 127.0.0.1 and localhost, and its key, as PEM files."""
    cert_file, key_file = directory / "tls.crt", directory / "tls.key"
    write_self_signed(cert_file, key_file)
    return cert_file, key_file


@pytest.fixture
def tls_files(tmp_path: Path) -> tuple[Path, Path]:
    return self_signed(tmp_path)


def tls_config(files: tuple[Path, Path], **tls: Any) -> dict[str, Any]:
    return {
        "server": {"tls": {"cert_file": str(files[0]), "key_file": str(files[1]), **tls}},
        "auth": {"api_keys": [{"name": "k", "sha256": API_KEY_SHA256}]},
        "cors": {"allow_origins": [ORIGIN]},
    }


def trusting(files: tuple[Path, Path]) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=str(files[0]))


async def test_https_with_hsts_on_every_response(
    fake: FakeServer, sidecar_for: SidecarFactory, tls_files: tuple[Path, Path]
) -> None:
    seen: dict[str, CIMultiDictProxy[str] | dict[str, str]] = {}
    config = merge(
        tls_config(tls_files, hsts_max_age_seconds=600),
        {"server": {"header_read_timeout_seconds": 0.5}},
    )
    async with sidecar_for(config) as sidecar:
        assert sidecar.url.startswith("https://")
        connector = aiohttp.TCPConnector(ssl=trusting(tls_files))
        async with aiohttp.ClientSession(connector=connector) as http:
            url = sidecar.url + PROMPT
            auth = {"x-api-key": API_KEY}
            async with http.post(url, json={"prompt": "hi"}, headers=auth) as response:
                assert response.status == 200
                assert response.content_type == "text/event-stream"
                assert b'"done"' in await response.read()
                seen["stream"] = response.headers
            async with http.post(url, json={"prompt": "hi"}) as response:
                assert response.status == 401
                seen["unauthorized"] = response.headers
            async with http.post(url, json={"prompt": 5}, headers=auth) as response:
                assert response.status == 400
                seen["bad_request"] = response.headers
            async with http.get(sidecar.url + "/no/route") as response:
                assert response.status == 404
                seen["not_found"] = response.headers
            preflight = {"Origin": ORIGIN, "Access-Control-Request-Method": "POST"}
            async with http.options(url, headers=preflight) as response:
                assert response.status == 204
                seen["preflight"] = response.headers
            async with http.options(url, headers={**preflight, "Origin": "https://x.test"}) as r:
                assert r.status == 403
                seen["refused_preflight"] = r.headers
            # Refused by the listener before any route: a head too large, a head too slow.
            async with http.get(url, headers={"X-Big": "x" * 20000}) as response:
                assert response.status == 431
                seen["head_too_large"] = response.headers
        reader, writer = await asyncio.open_connection(
            "127.0.0.1", sidecar.port, ssl=trusting(tls_files)
        )
        try:
            head = (await asyncio.wait_for(reader.read(), 10)).partition(b"\r\n\r\n")[0]
        finally:
            writer.close()
        assert head.startswith(b"HTTP/1.1 408 ")
        seen["header_timeout"] = dict(
            line.decode().split(": ", 1) for line in head.split(b"\r\n")[1:]
        )
    for kind, headers in seen.items():
        assert headers.get("Strict-Transport-Security") == "max-age=600; includeSubDomains", kind
        assert headers.get("Vary") == "Origin", kind
    assert fake.state.counters["requests"] == 1


@pytest.mark.parametrize(
    ("request_bytes", "status"),
    [
        (b"GET /\x01 HTTP/1.1\r\nHost: a\r\n", b"400"),  # malformed request line
        (b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n", b"400"),  # two hosts
        (b"GET / HTTP/1.1\r\nHost: a\r\nX-Big: " + b"x" * 20000 + b"\r\n", b"431"),
        (b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip, chunked\r\n", b"501"),
    ],
)
async def test_the_listeners_own_refusals_vary_on_origin_too(
    sidecar_for: SidecarFactory, request_bytes: bytes, status: bytes
) -> None:
    """`Vary: Origin` is on every answer of the traffic listener, those it gives before any
    route is known included (plain HTTP: no HSTS there)."""
    async with sidecar_for() as sidecar:
        reader, writer = await asyncio.open_connection("127.0.0.1", sidecar.port)
        try:
            writer.write(request_bytes + b"Origin: https://app.test\r\n\r\n")
            head = (await asyncio.wait_for(reader.read(), 10)).partition(b"\r\n\r\n")[0]
        finally:
            writer.close()
    lines = head.split(b"\r\n")
    assert lines[0].split(b" ")[1] == status
    headers = dict(line.decode().split(": ", 1) for line in lines[1:])
    assert headers.get("Vary") == "Origin"
    assert "Strict-Transport-Security" not in headers


async def test_untrusted_clients_fail_the_handshake(
    sidecar_for: SidecarFactory, tls_files: tuple[Path, Path]
) -> None:
    async with sidecar_for(tls_config(tls_files)) as sidecar, aiohttp.ClientSession() as http:
        with pytest.raises(aiohttp.ClientConnectorCertificateError):
            await http.get(sidecar.url + PROMPT)
        plain = sidecar.url.replace("https://", "http://")
        with pytest.raises(aiohttp.ClientError):  # plain HTTP to a TLS port gets nowhere
            async with http.get(plain + PROMPT) as response:
                await response.read()


async def test_hsts_off_and_plain_http_send_none(
    sidecar_for: SidecarFactory, tls_files: tuple[Path, Path]
) -> None:
    async with sidecar_for(tls_config(tls_files, hsts=False)) as sidecar:
        connector = aiohttp.TCPConnector(ssl=trusting(tls_files))
        async with aiohttp.ClientSession(connector=connector) as http:
            async with http.get(sidecar.url + PROMPT) as response:
                assert response.status == 401
                assert "Strict-Transport-Security" not in response.headers
    async with sidecar_for() as sidecar, aiohttp.ClientSession() as http:
        async with http.get(sidecar.url + PROMPT, params={"prompt": "x"}) as response:
            assert response.status == 200
            # HSTS over plain HTTP is ignored by browsers and would only mislead.
            assert "Strict-Transport-Security" not in response.headers
            await response.read()


@pytest.mark.parametrize("taken", ["listen", "admin_listen"])
def test_a_port_in_use_exits_with_one_clear_message(tmp_path: Path, taken: str) -> None:
    """No traceback and no `Unclosed client session` after it: what was opened is closed."""
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        ports = {"listen": f"127.0.0.1:{free_port()}", "admin_listen": f"127.0.0.1:{free_port()}"}
        ports[taken] = f"127.0.0.1:{port}"
        path = tmp_path / "sidecar.yaml"
        path.write_text(yaml.safe_dump({"server": ports}))
        result = subprocess.run(
            [sys.executable, "-m", "sidecar", "run", "-c", str(path)],
            capture_output=True, text=True, timeout=60, check=False,
        )  # fmt: skip
    assert result.returncode == EXIT_CANNOT_LISTEN == 3  # distinct from a bad config's 2
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    line = json.loads(lines[0])
    assert line["level"] == "ERROR"
    assert line["message"] == f"address 127.0.0.1:{port} already in use"
    assert line["address"] == f"127.0.0.1:{port}"


def test_an_address_that_is_not_local_exits_3_with_one_line(tmp_path: Path) -> None:
    path = tmp_path / "sidecar.yaml"  # 192.0.2.1 (TEST-NET-1) is no address of this host
    path.write_text(yaml.safe_dump({"server": {"listen": "192.0.2.1:0"}}))
    result = subprocess.run(
        [sys.executable, "-m", "sidecar", "run", "-c", str(path)],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert result.returncode == EXIT_CANNOT_LISTEN
    (line,) = (json.loads(text) for text in result.stderr.splitlines())
    assert line["message"] == "cannot listen on 192.0.2.1:0: cannot assign requested address"


def test_a_host_name_that_does_not_resolve_exits_3_with_the_resolvers_reason(
    tmp_path: Path,
) -> None:
    host = "no-such-host.invalid"  # RFC 6761: never resolves
    with pytest.raises(socket.gaierror) as resolving:
        socket.getaddrinfo(host, 0)
    path = tmp_path / "sidecar.yaml"
    path.write_text(yaml.safe_dump({"server": {"listen": f"{host}:0"}}))
    result = subprocess.run(
        [sys.executable, "-m", "sidecar", "run", "-c", str(path)],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert result.returncode == EXIT_CANNOT_LISTEN
    (line,) = (json.loads(text) for text in result.stderr.splitlines())
    # The resolver's own words (`name or service not known`), not `unknown error -2`.
    reason = str(resolving.value.strerror).lower()
    assert line["message"] == f"cannot listen on {host}:0: {reason}"


async def test_every_request_target_is_answered_and_counted_by_the_pipeline() -> None:
    # No router stands before the pipeline: even a target that is not a path (`OPTIONS *`)
    # gets the pipeline's JSON answer and is counted, never a bare plain-text 404.
    cfg = {"claude": {"base_url": "builtin:fake"}, "telemetry": {"prometheus": True}}
    async with running_sidecar(cfg) as sidecar:
        answers = []
        for target in (b"*", b"/nowhere"):
            reader, writer = await asyncio.open_connection("127.0.0.1", sidecar.port)
            writer.write(b"OPTIONS %b HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n" % target)
            await writer.drain()
            answers.append(await asyncio.wait_for(reader.read(), 10))
            writer.close()
        async with aiohttp.ClientSession() as http, http.get(sidecar.admin_url + "/metrics") as got:
            metrics = await got.text()
    (star, nowhere) = (answer.partition(b"\r\n\r\n") for answer in answers)
    assert star[0].startswith(b"HTTP/1.1 400 ")
    assert b"Content-Type: application/json" in star[0]
    assert json.loads(star[2])["error"]["message"] == "the request path must start with '/'"
    assert nowhere[0].startswith(b"HTTP/1.1 404 ")
    assert json.loads(nowhere[2])["error"]["type"] == "not_found"
    assert 'sidecar_rejection_reason="path_invalid"' in metrics
    assert 'sidecar_rejection_reason="no_route"' in metrics


@pytest.mark.skipif(not hasattr(socket, "TCP_USER_TIMEOUT"), reason="TCP_USER_TIMEOUT is Linux's")
@pytest.mark.parametrize(("app_send", "bound_ms"), [(None, 14000), (30, 60000)])
async def test_the_kernel_keeps_unaccepted_bytes_twice_the_longest_stall_any_route_allows(
    app_send: float | None, bound_ms: int
) -> None:
    """Claude's stall timeout, or the app's send timeout where that is longer: on both the
    traffic and the admin listener's connections."""
    cfg: dict[str, Any] = {
        "claude": {"base_url": "builtin:fake", "client_stall_timeout_seconds": 7}
    }
    if app_send is not None:
        cfg["app"] = {"url": "http://127.0.0.1:9", "send_timeout_seconds": app_send}
    async with running_sidecar(cfg) as sidecar:
        for admin, port in ((False, sidecar.port), (True, sidecar.admin_port)):
            _, writer = await asyncio.open_connection("127.0.0.1", port)
            try:
                await eventually(lambda: holds(len(sidecar.connections(admin=admin)) == 1))  # noqa: B023
                transport = sidecar.connections(admin=admin)[0].transport
                assert transport is not None
                sock = transport.get_extra_info("socket")
                bound = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT)
            finally:
                writer.close()
            assert bound == bound_ms
            await eventually(lambda: holds(not sidecar.connections(admin=admin)))  # noqa: B023
