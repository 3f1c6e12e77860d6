"""The official Anthropic JS SDK (`tests/js/stream.mjs` under node) through the sidecar.

Each scenario runs once against the fake Claude directly and once through a sidecar; what the
SDK yields (every stream event, the final message, or the error it raised) must be the same.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import pytest

from sidecar.fake_claude import FakeServer
from tests.support.node import Line, run_script, skip_without
from tests.support.sidecars import SidecarFactory

skip_without("@anthropic-ai/sdk")


async def run_sdk(base_url: str, scenario: str, max_retries: int = 0) -> list[Line]:
    """What the JS SDK yields for `scenario` against `base_url`, ids normalised."""
    return await run_script("stream.mjs", base_url, scenario, str(max_retries))


async def direct_and_proxied(
    fake: FakeServer, sidecar_for: SidecarFactory, scenario: str
) -> tuple[list[Line], list[Line]]:
    async with sidecar_for() as sidecar:
        direct, proxied = await asyncio.gather(
            run_sdk(fake.url, scenario), run_sdk(sidecar.url, scenario)
        )
    return direct, proxied


def events(lines: list[Line], turn: int = 1) -> list[str]:
    return [line["event"]["type"] for line in lines if line["turn"] == turn and "event" in line]


def final(lines: list[Line], turn: int = 1) -> dict[str, Any]:
    (message,) = [line["final"] for line in lines if line["turn"] == turn and "final" in line]
    assert isinstance(message, dict)
    return message


def check_text(lines: list[Line]) -> None:
    kinds = events(lines)
    assert kinds[:2] == ["message_start", "content_block_start"]
    assert kinds.count("content_block_delta") == 12
    assert kinds[-2:] == ["message_delta", "message_stop"]
    (block,) = final(lines)["content"]
    assert block["type"] == "text"
    assert len(block["text"].split()) == 12


def check_tool_use(lines: list[Line]) -> None:
    message = final(lines)
    assert message["stop_reason"] == "tool_use"
    text, tool = message["content"]
    assert text["type"] == "text"
    assert tool["type"] == "tool_use"
    assert tool["name"] == "get_weather"
    assert tool["id"] == "id"
    assert list(tool["input"]) == ["city"]  # the SDK assembled the streamed input_json_delta


def check_thinking(lines: list[Line]) -> None:
    thinking, text = final(lines)["content"]
    assert thinking["type"] == "thinking"
    assert thinking["thinking"]
    assert thinking["signature"]
    assert text["type"] == "text"


def check_multi_turn(lines: list[Line]) -> None:
    assert final(lines, 1)["stop_reason"] == "tool_use"
    assert final(lines, 2)["stop_reason"] == "end_turn"
    assert final(lines, 3)["stop_reason"] == "end_turn"
    assert "error" not in {key for line in lines for key in line}


def check_midstream_error(lines: list[Line]) -> None:
    assert events(lines) == ["message_start", "content_block_start"] + ["content_block_delta"] * 3
    error = lines[-1]["error"]
    # An `event: error` inside a 200 stream has no HTTP status: the SDK raises a bare APIError.
    assert error["name"] == "APIError"
    assert error["status"] is None
    assert error["type"] == "overloaded_error"


def check_non_streaming(lines: list[Line]) -> None:
    (line,) = lines
    message = line["message"]
    assert message["id"] == "id"
    assert message["stop_reason"] == "end_turn"
    assert message["usage"]["output_tokens"] == 12


CHECKS: dict[str, Callable[[list[Line]], None]] = {
    "text": check_text,
    "tool_use": check_tool_use,
    "thinking": check_thinking,
    "multi_turn": check_multi_turn,
    "midstream_error": check_midstream_error,
    "non_streaming": check_non_streaming,
}


@pytest.mark.parametrize("scenario", list(CHECKS))
async def test_js_sdk_sees_the_same_thing_direct_and_through_the_sidecar(
    fake: FakeServer, sidecar_for: SidecarFactory, scenario: str
) -> None:
    direct, proxied = await direct_and_proxied(fake, sidecar_for, scenario)
    CHECKS[scenario](direct)
    assert proxied == direct


async def test_js_sdk_multi_turn_history_reaches_claude_through_the_sidecar(
    fake: FakeServer, sidecar_for: SidecarFactory
) -> None:
    async with sidecar_for() as sidecar:
        await run_sdk(sidecar.url, "multi_turn")
    first, second, third = (request["body"] for request in fake.state.requests)
    assert [m["role"] for m in third["messages"]] == ["user", "assistant"] * 2 + ["user"]
    call = second["messages"][1]["content"][1]
    result = second["messages"][2]["content"][0]
    assert call["type"] == "tool_use"
    assert result == {
        "type": "tool_result",
        "tool_use_id": call["id"],
        "content": f"18°C in {call['input']['city']}",
    }
    assert first["messages"] == second["messages"][:1]


@pytest.mark.parametrize(
    ("scenario", "fault", "name", "status", "error_type"),
    [
        ("error_429", "rate_limit", "RateLimitError", 429, "rate_limit_error"),
        ("error_529", "overloaded", "OverloadedError", 529, "overloaded_error"),
    ],
)
async def test_js_sdk_error_classes_after_the_sidecar_retried(
    fake: FakeServer,
    sidecar_for: SidecarFactory,
    scenario: str,
    fault: str,
    name: str,
    status: int,
    error_type: str,
) -> None:
    direct = await run_sdk(fake.url, scenario)
    assert fake.state.counters[f"faults_{fault}"] == 1
    async with sidecar_for() as sidecar:
        proxied = await run_sdk(sidecar.url, scenario)
    assert fake.state.counters[f"faults_{fault}"] == 1 + 3  # the sidecar: first try + 2 retries
    assert proxied == direct
    (line,) = proxied
    error = line["error"]
    assert (error["name"], error["status"], error["type"]) == (name, status, error_type)
    if status == 529:
        assert "InternalServerError" in error["classes"]  # OverloadedError is a 5xx error


async def test_js_sdk_retries_on_the_sidecars_529_and_retry_after(
    fake: FakeServer, sidecar_for: SidecarFactory
) -> None:
    async with sidecar_for({"claude": {"max_retries": 0}}) as sidecar:
        lines = await run_sdk(sidecar.url, "retried", max_retries=2)
    assert fake.state.counters["faults_overloaded"] == 2
    assert len(fake.state.requests) == 3  # two 529s passed back, then the SDK's third try
    assert final(lines)["stop_reason"] == "end_turn"
    assert "error" not in {key for line in lines for key in line}


@pytest.mark.parametrize("scenario", ["text", "tool_use", "non_streaming"])
async def test_a_cache_hit_reads_as_the_original_answer(
    fake: FakeServer, sidecar_for: SidecarFactory, scenario: str
) -> None:
    """The response cache replays through the SDK: same events, same final message, usage
    included, and Claude was called once."""
    cache = {"cache": {"enabled": True, "include_sampled": True}}
    async with sidecar_for(cache) as sidecar:
        original = await run_sdk(sidecar.url, scenario)
        replayed = await run_sdk(sidecar.url, scenario)
    assert replayed == original
    assert not [line for line in original if "error" in line]
    answer = original[-1].get("final") or original[-1].get("message")
    assert isinstance(answer, dict)
    assert answer["usage"]["output_tokens"] > 0
    assert fake.state.counters["requests"] == 1
