"""A forwarded Anthropic answer's body (files content, batch results, models: whatever
`claude.forward_paths` opens) relayed as it arrives, over real sockets: byte for byte,
paced by the client, cut on silence, and errors still Anthropic's error JSON."""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import json
import logging

import aiohttp
import pytest
from opentelemetry.trace import SpanKind, StatusCode

from sidecar.http_client import Response
from tests.support.downloads import FILE_PATH, PIECE, Download, file_bytes, serving
from tests.support.otel import make_otel
from tests.support.scripted_claude import claude_config, messages_body, scripted_claude
from tests.support.sidecars import running_sidecar

_FILES = {"forward_paths": ["/v1/models", "/v1/files"]}
_GUARD = 10.0  # seconds Claude waits for the client before sending on (only a failure waits)


async def test_a_forwarded_download_reaches_the_client_before_claude_sent_it_all() -> None:
    """A file's content is relayed as it arrives, byte for byte with Claude's length and
    type: the client has its first bytes while Claude still holds back its last ones."""
    order: list[str] = []
    first_read = asyncio.Event()

    async def hold_last_piece(download: Download) -> None:
        if len(download.body) - download.sent <= PIECE:  # only the last piece is left
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(first_read.wait(), _GUARD)
            order.append("claude_sends_last")

    download = Download(file_bytes(8 * 1024 * 1024 + 5), hold_last_piece, b"request-id: req_f\r\n")
    async with (
        serving(download) as url,
        running_sidecar(claude_config(url, **_FILES)) as sidecar,
        aiohttp.ClientSession() as http,
        http.get(sidecar.url + FILE_PATH) as response,
    ):
        first = await response.content.readexactly(PIECE)
        order.append("client_has_first")
        first_read.set()
        received = first + await response.read()
        headers = response.headers
    assert order == ["client_has_first", "claude_sends_last"]
    assert received == download.body
    assert response.status == 200
    assert headers["Content-Length"] == str(len(download.body))
    assert headers["Content-Type"] == "application/octet-stream"
    assert headers["request-id"] == "req_f"


async def test_a_forwarded_download_pauses_claude_while_the_client_takes_nothing(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A client that reads nothing gets no more than a high-water mark queued in the
    sidecar: Claude is paused (its writes block) long before its 64 MiB are sent, and
    resumed as the client reads."""
    paused = asyncio.Event()
    pause = Response.pause

    def noted_pause(self: Response) -> None:
        paused.set()
        pause(self)

    monkeypatch.setattr(Response, "pause", noted_pause)
    download = Download(file_bytes(64 * 1024 * 1024))
    async with (
        serving(download) as url,
        running_sidecar(claude_config(url, **_FILES)) as sidecar,
        aiohttp.ClientSession() as http,
        http.get(sidecar.url + FILE_PATH) as response,
    ):
        waits = [asyncio.ensure_future(e.wait()) for e in (paused, download.finished)]
        await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
        for wait in waits:
            wait.cancel()
        assert paused.is_set()
        assert not download.finished.is_set()  # Claude's writes wait on the sidecar
        received = await response.read()
    assert received == download.body
    assert download.finished.is_set()


async def test_a_client_leaving_mid_download_closes_claude_s_connection() -> None:
    """A download the client left is not read on: Claude's connection is closed (its
    answer unfinished, it can serve no other call), not kept in the pool."""
    left = asyncio.Event()

    async def wait_for_the_client(download: Download) -> None:
        if download.sent == PIECE:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(left.wait(), _GUARD)

    download = Download(file_bytes(4 * 1024 * 1024), wait_for_the_client)
    async with (
        serving(download) as url,
        running_sidecar(claude_config(url, **_FILES)) as sidecar,
        aiohttp.ClientSession() as http,
    ):
        async with http.get(sidecar.url + FILE_PATH) as response:
            await response.content.readexactly(1024)
            response.close()  # the client hangs up mid-body
        left.set()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(download.closed.wait(), _GUARD)
        closed_early = download.closed.is_set() and not download.finished.is_set()
        assert sidecar.runtime.claude.open_connections == 0
    assert closed_early


@pytest.mark.parametrize(
    ("head", "body", "error_type"),
    [
        (b"404 Not Found", b'{"type":"error","error":{"type":"not_found_error","message":"no"}}',
         "not_found_error"),
        (b"503 Service Unavailable", b"<html>busy</html>", "api_error"),
    ],
    ids=["claude_s_error", "gateway_page"],
)  # fmt: skip
async def test_a_forwarded_error_is_still_anthropic_s_error_json(
    head: bytes, body: bytes, error_type: str
) -> None:
    """An error answer is read whole (bounded) as before, never relayed as a download:
    Claude's error JSON as is, anything else made Anthropic's for its status."""

    async def answer(writer: asyncio.StreamWriter) -> None:
        writer.write(
            b"HTTP/1.1 %b\r\nContent-Type: text/html\r\nContent-Length: %d\r\n\r\n%b"
            % (head, len(body), body)
        )

    async with (
        scripted_claude(answer) as url,
        running_sidecar(claude_config(url, **_FILES)) as sidecar,
        aiohttp.ClientSession() as http,
        http.get(sidecar.url + FILE_PATH) as response,
    ):
        answer_json = await response.json()
        assert response.status == int(head[:3])
        assert response.content_type == "application/json"
    assert answer_json["error"]["type"] == error_type
    if error_type == "not_found_error":
        assert answer_json == json.loads(body)


async def test_a_compressed_download_passes_as_claude_coded_it() -> None:
    """A forwarded body is relayed as sent: a coded one keeps its `Content-Encoding`
    and its coded bytes (the client decodes it), never decoded whole in the sidecar."""
    plain = file_bytes(256 * 1024)
    coded = gzip.compress(plain)
    download = Download(coded, head=b"Content-Encoding: gzip\r\n")
    async with (
        serving(download) as url,
        running_sidecar(claude_config(url, **_FILES)) as sidecar,
        aiohttp.ClientSession(auto_decompress=False) as http,
        http.get(sidecar.url + FILE_PATH) as response,
    ):
        received = await response.read()
        headers = response.headers
    assert headers["Content-Encoding"] == "gzip"
    assert headers["Content-Length"] == str(len(coded))
    assert received == coded


async def test_a_forwarded_json_answer_past_its_bound_is_a_502_not_a_cut(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """count_tokens' answer (and a batch's) is read whole to be checked or rewritten,
    bounded: one past the bound is refused, never passed on cut (broken JSON)."""
    monkeypatch.setattr("sidecar.handlers.anthropic.MAX_JSON_ANSWER", 1024)
    body = json.dumps({"input_tokens": 5, "pad": "x" * 2048}).encode()

    async def answer(writer: asyncio.StreamWriter) -> None:
        writer.write(
            b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%b"
            % (len(body), body)
        )

    async with (
        scripted_claude(answer) as url,
        running_sidecar(claude_config(url)) as sidecar,
        aiohttp.ClientSession() as http,
        http.post(sidecar.url + "/v1/messages/count_tokens", json=messages_body(False)) as r,
    ):
        error = await r.json()
        assert r.status == 502
        assert r.headers["x-should-retry"] == "false"
    assert "larger than 1024 bytes" in error["error"]["message"]


async def test_a_download_claude_falls_silent_on_is_cut_after_the_idle_timeout() -> None:
    """A forwarded body has the idle timeout between Claude's bytes (not the whole-call
    deadline): Claude silent past it, the client's body ends short and Claude's
    connection is closed."""

    async def fall_silent(download: Download) -> None:
        await download.closed.wait()  # after the first piece: nothing more until hung up on

    download = Download(file_bytes(1024 * 1024), fall_silent)
    async with (
        serving(download) as url,
        running_sidecar(claude_config(url, **_FILES, idle_timeout_seconds=0.2)) as sidecar,
        aiohttp.ClientSession() as http,
        http.get(sidecar.url + FILE_PATH) as response,
    ):
        with pytest.raises(aiohttp.ClientPayloadError):
            await asyncio.wait_for(response.read(), _GUARD)
        await asyncio.wait_for(download.closed.wait(), _GUARD)
    assert not download.finished.is_set()


@pytest.mark.parametrize(
    ("end", "reason"),
    [("breaks_off", "upstream_lost"), ("falls_silent", "upstream_timeout")],
)
async def test_a_download_claude_cut_is_recorded_as_claude_s_error_not_a_client_gone(
    end: str, reason: str, caplog: pytest.LogCaptureFixture
) -> None:
    """A download cut for Claude's fault (it broke off, or fell silent past the idle
    timeout) is no success and no client that left: the span is an error whose
    `error.type` names the cut, and the access line says `cut`, not `client_gone`."""
    caplog.set_level(logging.INFO)
    otel = make_otel()

    async def cut(download: Download) -> None:
        if end == "breaks_off":
            download.closed.set()  # Claude stops sending and hangs up, its length unmet
        else:
            await download.closed.wait()

    download = Download(file_bytes(1024 * 1024), cut)
    async with serving(download) as url:
        config = claude_config(url, **_FILES, idle_timeout_seconds=0.2)
        async with (
            running_sidecar(config, telemetry=otel.telemetry) as sidecar,
            aiohttp.ClientSession() as http,
            http.get(sidecar.url + FILE_PATH) as response,
        ):
            with pytest.raises(aiohttp.ClientPayloadError):
                await asyncio.wait_for(response.read(), _GUARD)
            await otel.exporter.wait_for(lambda: len(otel.spans(SpanKind.SERVER)) == 1)
    (span,) = otel.spans(SpanKind.SERVER)
    attributes = span.attributes or {}
    assert attributes["http.response.status_code"] == 200
    assert attributes["error.type"] == reason
    assert span.status.status_code == StatusCode.ERROR
    assert "sidecar.client_gone" not in attributes
    (access,) = [r for r in caplog.records if getattr(r, "event", None) == "access"]
    assert getattr(access, "cut", None) == reason
    assert not hasattr(access, "client_gone")
