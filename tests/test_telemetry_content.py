"""Prompt and completion text reach spans only with `telemetry.capture_content: true`, as
the GenAI conventions shape them: every kind of content block, never an image's bytes."""

from __future__ import annotations

import json

import pytest

from sidecar.record import StreamRecord
from sidecar.telemetry.content import output_messages, request_content
from tests.support.otel import make_otel, prompt
from tests.support.sidecars import SidecarFactory


async def test_content_is_not_captured_by_default(sidecar_for: SidecarFactory) -> None:
    otel = make_otel()
    async with sidecar_for(telemetry=otel.telemetry) as sidecar:
        await prompt(sidecar.url, "private words")
    attributes = otel.client_span().attributes or {}
    assert not [k for k in attributes if k.startswith(("gen_ai.input", "gen_ai.output"))]
    assert "private words" not in json.dumps(dict(attributes))


async def test_content_capture_records_prompt_and_completion(sidecar_for: SidecarFactory) -> None:
    otel = make_otel(capture_content=True)
    config = {"telemetry": {"capture_content": True}}
    async with sidecar_for(config, telemetry=otel.telemetry) as sidecar:
        _, events = await prompt(sidecar.url, "share words [[fake tokens=5]]")
    attributes = otel.client_span().attributes or {}
    inputs = json.loads(str(attributes["gen_ai.input.messages"]))
    assert inputs == [
        {"role": "user", "parts": [{"type": "text", "content": "share words [[fake tokens=5]]"}]}
    ]
    outputs = json.loads(str(attributes["gen_ai.output.messages"]))
    text = "".join(e["token"] for e in events if "token" in e)
    assert outputs == [{"role": "assistant", "finish_reason": "end_turn",
                        "parts": [{"type": "text", "content": text}]}]  # fmt: skip


def test_request_content_shapes_every_kind_of_block() -> None:
    body = {
        "system": [{"type": "text", "text": "be brief"}],
        "messages": [
            {"role": "user", "content": [
                {"type": "text", "text": "héllo"},
                {"type": "image", "source": {"type": "base64", "data": "AAAA"}},
                "not a block",
            ]},
            {"role": "assistant", "content": [
                {"type": "tool_use", "id": "t1", "name": "f", "input": {"x": 1}},
            ]},
            {"role": "user", "content": [
                {"type": "tool_result", "tool_use_id": "t1", "content": "done"},
            ]},
            "not a message",
        ],
    }  # fmt: skip
    system, messages = request_content(json.dumps(body).encode())
    assert system == '[{"type":"text","content":"be brief"}]'
    assert messages is not None
    assert "héllo" in messages  # not escaped
    assert "AAAA" not in messages  # an image is its kind, never its bytes
    assert json.loads(messages) == [
        {"role": "user", "parts": [{"type": "text", "content": "héllo"}, {"type": "image"}]},
        {"role": "assistant", "parts": [
            {"type": "tool_call", "id": "t1", "name": "f", "arguments": {"x": 1}},
        ]},
        {"role": "user", "parts": [{"type": "tool_call_response", "id": "t1", "response": "done"}]},
    ]  # fmt: skip


@pytest.mark.parametrize("body", [b"", b"not json", b"[1, 2]", b'"text"'])
def test_request_content_of_a_body_that_is_no_request_is_nothing(body: bytes) -> None:
    assert request_content(body) == (None, None)


def test_request_content_without_system_or_messages() -> None:
    assert request_content(b"{}") == (None, "[]")


def test_output_messages_join_the_completion_with_its_finish_reason() -> None:
    record = StreamRecord("r", "/", 0.0)
    record.completion_parts = ["Hel", "lo"]
    assert json.loads(output_messages(record)) == [
        {"role": "assistant", "parts": [{"type": "text", "content": "Hello"}]}
    ]
    record.stop_reason = "max_tokens"
    assert json.loads(output_messages(record))[0]["finish_reason"] == "max_tokens"
