"""One Claude call's telemetry: its start written once, even for a call that ended first;
the active-stream count back to zero at its end; a failed call's span and log line; the
user and tenant on spans as configured; and telemetry that fails never breaks a response."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import logging
import re
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from opentelemetry.context import Context
from opentelemetry.trace import Span, StatusCode

from sidecar.record import StreamRecord
from sidecar.telemetry.bounded import MAX_TEXT
from sidecar.telemetry.streams import NOT_FAILED
from tests.support.otel import Otel, make_otel, prompt
from tests.support.policy import AUDIENCE, ISSUER, SECRET, mint
from tests.support.scripted_claude import (
    SSE_HEAD,
    START,
    chunk,
    claude_config,
    messages_body,
    scripted_claude,
)
from tests.support.sidecars import SidecarFactory, running_sidecar

MODEL = "claude-sonnet-5-5"


def call(**fields: Any) -> StreamRecord:
    record = StreamRecord(request_id="req-1", route="/v1", started=0.0, request_model=MODEL)
    record.server_address = "api.anthropic.com"
    for name, value in fields.items():
        setattr(record, name, value)
    return record


def server_span(otel: Otel) -> Span:
    return otel.telemetry.start_server_span(
        Context(), method="POST", route="/v1", path="/v1/messages", scheme="http"
    )


def lines(caplog: pytest.LogCaptureFixture, event: str) -> int:
    return sum(1 for record in caplog.records if record.getMessage() == event)


@pytest.fixture(autouse=True)
def sdk_on(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OTEL_SDK_DISABLED", raising=False)  # the SDK reads its environment


async def test_a_calls_start_is_written_once_and_its_slot_counted_until_its_end(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="sidecar.stream")
    otel = make_otel()
    telemetry, parent = otel.telemetry, server_span(otel)
    record = call()
    span = telemetry.start_stream(record, parent, b'{"messages": []}')
    telemetry.admitted(record)  # the start is pending: counted by `stream_started`
    assert otel.count("sidecar.streams.active") == 0
    telemetry.stream_started(record, span, parent)
    telemetry.stream_started(record, span, parent)  # again: no effect
    assert lines(caplog, "stream_start") == 1
    assert otel.count("sidecar.streams.active") == 1
    record.outcome = "completed"
    telemetry.finish_stream(record, span)
    assert otel.count("sidecar.streams.active") == 0
    assert (lines(caplog, "stream_start"), lines(caplog, "stream_complete")) == (1, 1)
    assert otel.client_span().name == f"chat {MODEL}"  # a known model: its own label
    telemetry.shutdown()


async def test_a_call_that_ended_before_its_start_was_written_starts_first(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="sidecar.stream")
    otel = make_otel()
    record = call(outcome="client_cancelled")
    span = otel.telemetry.start_stream(record, server_span(otel))
    otel.telemetry.finish_stream(record, span)
    events = [r.getMessage() for r in caplog.records if r.name == "sidecar.stream"]
    assert events == ["stream_start", "stream_complete"]  # a client leaving is no failure
    otel.telemetry.shutdown()


async def test_a_failed_call_marks_its_span_and_logs_a_stream_error(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="sidecar.stream")
    otel = make_otel()
    record = call(outcome="upstream_error", error_type="overloaded_error", upstream_status=529)
    span = otel.telemetry.start_stream(record, server_span(otel))
    otel.telemetry.finish_stream(record, span)
    client = otel.client_span()
    assert client.status.status_code is StatusCode.ERROR
    assert client.status.description == "overloaded_error"
    assert (client.attributes or {})["error.type"] == "overloaded_error"
    assert lines(caplog, "stream_error") == 1
    assert lines(caplog, "stream_complete") == 0
    otel.telemetry.shutdown()


async def test_telemetry_that_fails_is_logged_and_the_span_still_ends(
    caplog: pytest.LogCaptureFixture,
) -> None:
    otel = make_otel()
    record = call(outcome="completed")
    span = otel.telemetry.start_stream(record, server_span(otel))

    def broken(attributes: Any) -> None:
        raise RuntimeError("broken exporter")

    span.set_attributes = broken  # type: ignore[method-assign]
    otel.telemetry.finish_stream(record, span)  # raises nothing
    assert "telemetry failed for a stream" in caplog.text
    assert not span.is_recording()
    otel.telemetry.shutdown()


# One caller, user `ci-bot` of tenant `acme`, by its API key.
CI_BOT_KEY = "sk-client-secret"
CI_BOT_AUTH = {"mode": "required", "api_keys": [
    {"name": "ci", "sha256": hashlib.sha256(CI_BOT_KEY.encode()).hexdigest(), "user": "ci-bot",
     "tenant": "acme"}]}  # fmt: skip


async def test_user_is_hashed_on_spans_by_default(sidecar_for: SidecarFactory) -> None:
    otel = make_otel()
    async with sidecar_for({"auth": CI_BOT_AUTH}, telemetry=otel.telemetry) as sidecar:
        status, _ = await prompt(sidecar.url, "hello", {"x-api-key": CI_BOT_KEY})
    assert status == 200
    attributes = otel.client_span().attributes or {}
    assert attributes["sidecar.user"] == hashlib.sha256(b"ci-bot").hexdigest()[:16]
    assert attributes["sidecar.tenant"] == hashlib.sha256(b"acme").hexdigest()[:16]


async def test_with_a_user_hash_key_spans_and_lines_carry_keyed_pseudonyms(
    sidecar_for: SidecarFactory, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="sidecar.stream")
    secret = "telemetry-pseudonym-key-0123456789abcdef"
    otel = make_otel(user_hash_key=secret)
    async with sidecar_for({"auth": CI_BOT_AUTH}, telemetry=otel.telemetry) as sidecar:
        status, _ = await prompt(sidecar.url, "hello", {"x-api-key": CI_BOT_KEY})
    assert status == 200

    def keyed(value: bytes) -> str:
        return hmac.new(secret.encode(), value, hashlib.sha256).hexdigest()[:16]

    attributes = otel.client_span().attributes or {}
    assert attributes["sidecar.user"] == keyed(b"ci-bot")
    assert attributes["sidecar.tenant"] == keyed(b"acme")
    assert keyed(b"ci-bot") != hashlib.sha256(b"ci-bot").hexdigest()[:16]
    lines = [r for r in caplog.records if r.name == "sidecar.stream"]
    assert [r.getMessage() for r in lines] == ["stream_start", "stream_complete"]
    pseudonyms = (keyed(b"ci-bot"), keyed(b"acme"))
    assert [(line.__dict__["user"], line.__dict__["tenant"]) for line in lines] == [pseudonyms] * 2
    assert secret not in caplog.text


async def test_plain_names_a_token_chose_are_cut_on_spans_and_lines(
    sidecar_for: SidecarFactory, caplog: pytest.LogCaptureFixture
) -> None:
    """With `user_attribute: plain`, a token's `sub` and tenant claim of any length reach
    spans and stream lines as at most `MAX_TEXT` characters, and no metric."""
    caplog.set_level(logging.INFO, logger="sidecar.stream")
    otel = make_otel(user_attribute="plain")
    user, tenant = "u" * 3000 + "-tail", "t" * 2000 + "-tail"
    jwt_auth = {"mode": "required", "jwt": {
        "secret": SECRET, "algorithms": ["HS256"], "issuer": ISSUER, "audience": AUDIENCE,
        "tenant_claim": "org"}}  # fmt: skip
    token = mint(sub=user, org=tenant)
    async with sidecar_for({"auth": jwt_auth}, telemetry=otel.telemetry) as sidecar:
        status, _ = await prompt(sidecar.url, "hello", {"authorization": f"Bearer {token}"})
    assert status == 200
    attributes = otel.client_span().attributes or {}
    assert attributes["sidecar.user"] == user[:MAX_TEXT]
    assert attributes["sidecar.tenant"] == tenant[:MAX_TEXT]
    lines = [r for r in caplog.records if r.name == "sidecar.stream"]
    assert [r.getMessage() for r in lines] == ["stream_start", "stream_complete"]
    shown = (user[:MAX_TEXT], tenant[:MAX_TEXT])
    assert [(line.__dict__["user"], line.__dict__["tenant"]) for line in lines] == [shown] * 2
    assert "-tail" not in caplog.text
    for name, metric in otel.metrics().items():
        for point in metric.data.data_points:
            assert "uuuu" not in str(point.attributes), name


@pytest.mark.parametrize("error_type", ["x" * 500, "has spaces", "<script>"])
async def test_a_failure_label_a_call_cannot_choose_is_bounded(error_type: str) -> None:
    """An error type from upstream or an exception is a label value: one that is no known
    type and no short identifier is `_OTHER` on the record and its span, never itself."""
    otel = make_otel()
    record = call(outcome="upstream_error", error_type=error_type)
    span = otel.telemetry.start_stream(record, server_span(otel))
    otel.telemetry.finish_stream(record, span)
    assert record.error_label == "_OTHER"
    assert (otel.client_span().attributes or {})["error.type"] == "_OTHER"
    otel.telemetry.shutdown()


@pytest.mark.parametrize(
    "error",
    [{"kind": ["not", "a", "name"]}, 529, "x" * 5000],
    ids=["object", "number", "long_string"],
)
@pytest.mark.parametrize("status", [200, 529], ids=["midstream", "error_status"])
async def test_an_error_type_claude_chose_is_bounded_on_the_span_and_the_line(
    caplog: pytest.LogCaptureFixture, error: Any, status: int
) -> None:
    """Claude's (or a proxy's) error type, in a mid-stream `error` event or an error
    status's body, whatever its JSON type and length: the call still gets its span, with
    a bounded `error.type`, and its line a short text, never the value itself."""
    body = json.dumps({"type": "error", "error": {"type": error, "message": "m"}}).encode()
    if status == 200:
        answer = SSE_HEAD + chunk(START) + chunk(b"event: error\ndata: " + body + b"\n\n")
        answer += b"0\r\n\r\n"
    else:
        answer = (
            b"HTTP/1.1 529 Overloaded\r\nContent-Type: application/json\r\n"
            b"Content-Length: %d\r\n\r\n%b" % (len(body), body)
        )

    async def script(writer: asyncio.StreamWriter) -> None:
        writer.write(answer)
        await writer.drain()

    otel = make_otel()
    caplog.set_level(logging.INFO)
    async with (
        scripted_claude(script) as url,
        running_sidecar(claude_config(url), telemetry=otel.telemetry) as sidecar,
        aiohttp.ClientSession() as http,
        http.post(sidecar.url + "/v1/messages", json=messages_body()) as response,
    ):
        answered = await response.read()
    assert "telemetry failed for a stream" not in caplog.messages
    span = otel.client_span()
    assert span.status.status_code is StatusCode.ERROR
    # No type in a mid-stream error event: `api_error`; an error status whose body holds no
    # API error is the error its status means, as the client is answered.
    expected = "api_error" if status == 200 else "overloaded_error"
    if isinstance(error, str):
        expected = "_OTHER"
    elif status != 200:
        assert json.loads(answered)["error"]["type"] == expected
    assert (span.attributes or {})["error.type"] == expected
    (line,) = [r for r in caplog.records if r.getMessage() == "stream_error"]
    logged = line.__dict__["error_type"]
    assert isinstance(logged, str)
    assert len(logged) <= 128


@pytest.mark.parametrize(
    ("outcome", "error_type"),
    [("client_stalled", "client_stalled"), ("shutting_down", "stream_lost")],
)
async def test_the_error_types_of_streams_the_sidecar_ends_keep_their_label(
    outcome: str, error_type: str
) -> None:
    """Upstream error types and exception names take the few extra labels first come: the
    types of the streams the sidecar cuts itself still carry their own name after."""
    otel = make_otel()
    for n in range(40):
        record = call(outcome="upstream_error", error_type=f"OddError{n}")
        otel.telemetry.finish_stream(record, otel.telemetry.start_stream(record, server_span(otel)))
    record = call(outcome=outcome, error_type=error_type)
    otel.telemetry.finish_stream(record, otel.telemetry.start_stream(record, server_span(otel)))
    assert record.error_label == error_type
    assert otel.count("sidecar.streams", **{"error.type": error_type}) == 1
    otel.telemetry.shutdown()


def test_docs_name_the_outcomes_logged_as_stream_complete() -> None:
    """The log table's `stream_complete` outcomes are those the sidecar writes that line
    for (every other outcome is a `stream_error`), so a reader filtering on it misses none."""
    doc = (Path(__file__).resolve().parent.parent / "docs" / "observability.md").read_text()
    (row,) = [line for line in doc.splitlines() if line.startswith("| `stream_complete` (")]
    listed = row.split("(", 1)[1].split(")", 1)[0]
    assert set(re.findall(r"`([a-z_]+)`", listed)) == NOT_FAILED, listed
