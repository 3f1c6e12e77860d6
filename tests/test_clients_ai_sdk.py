"""The AI SDK's Anthropic provider (`@ai-sdk/anthropic` under `ai`, `tests/js/ai_sdk.mjs`)
with its base URL pointed at the sidecar's anthropic route.

Answers and Claude's own errors must read the same to the SDK as straight from Claude (the
fake); the sidecar's own rejections must be the SDK's API call errors with their status,
retryability and `retry-after`; a stream must arrive while Claude generates, and an abort in
the SDK must stop Claude.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
from collections.abc import Callable
from typing import Any

import pytest

from sidecar.fake_claude import FakeServer
from tests.support.clients import (
    AUTH,
    BROKEN,
    CLIENT_KEY,
    DENIED,
    ONE_PER_MINUTE,
    OVERLOADED,
    RATE_LIMITED,
    SCREENING,
    STALLED,
    WRONG_KEY,
    release_stalls,
)
from tests.support.idle_proxy import idle_proxy
from tests.support.node import Line, run_script, script_lines, skip_without
from tests.support.resume import stream_ends
from tests.support.sidecars import SidecarFactory
from tests.support.waiting import eventually, holds

skip_without("@ai-sdk/anthropic")

# Claude's ids, and the ids the SDK makes up for the text of a later step.
IDS = re.compile(r"\b(?:msg|toolu|req)_[0-9a-f]+\b|\baitxt-[0-9A-Za-z]+")
PLAIN = "plain text please"
PLAIN_INPUT_TOKENS = 5  # the fake's estimate: ceil(len(PLAIN) / 4)


async def ai_sdk(url: str, scenario: str, **options: Any) -> list[Line]:
    """What the SDK yields for `scenario` (see ai_sdk.mjs) against `url`."""
    return await run_script("ai_sdk.mjs", url, scenario, json.dumps(options), ids=IDS)


def parts(lines: list[Line]) -> list[dict[str, Any]]:
    return [line["part"] for line in lines if "part" in line]


def kinds(lines: list[Line]) -> list[str]:
    return [part["type"] for part in parts(lines)]


def final(lines: list[Line]) -> dict[str, Any]:
    (answer,) = [line["final"] for line in lines if "final" in line]
    assert isinstance(answer, dict)
    return answer


def error(lines: list[Line]) -> dict[str, Any]:
    """The one error the SDK streamed or raised."""
    found = [part["error"] for part in parts(lines) if part["type"] == "error"]
    found += [line["error"] for line in lines if "error" in line]
    (only,) = found
    assert isinstance(only, dict)
    return only


def check_text(lines: list[Line]) -> None:
    assert kinds(lines) == ["start", "start-step", "text-start", *["text-delta"] * 12,
                            "text-end", "finish-step", "finish"]  # fmt: skip
    answer = final(lines)
    deltas = [part["text"] for part in parts(lines) if part["type"] == "text-delta"]
    assert answer["text"] == "".join(deltas)
    assert len(answer["text"].split()) == 12
    assert answer["finishReason"] == "stop"
    usage = answer["usage"]
    assert (usage["inputTokens"], usage["outputTokens"]) == (PLAIN_INPUT_TOKENS, 12)


def check_generate(lines: list[Line]) -> None:
    ((kind, result),) = [next(iter(line.items())) for line in lines]
    assert kind == "result"
    assert len(result["text"].split()) == 12
    assert result["finishReason"] == "stop"
    assert result["responseId"] == "id"
    assert (result["usage"]["inputTokens"], result["usage"]["outputTokens"]) == (5, 12)


def check_tool_use(lines: list[Line]) -> None:
    tool_parts = [part for part in parts(lines) if part["type"].startswith("tool-")]
    start, *deltas, end, call = tool_parts
    assert (start["type"], start["toolName"]) == ("tool-input-start", "get_weather")
    assert {part["type"] for part in deltas} == {"tool-input-delta"}
    assert len(deltas) > 1  # the input arrived in pieces (input_json_delta), as Claude sent it
    assert end["type"] == "tool-input-end"
    assert call["type"] == "tool-call"
    assert call["input"] == json.loads("".join(part["delta"] for part in deltas))
    assert list(call["input"]) == ["city"]
    assert isinstance(call["input"]["city"], str)
    assert final(lines)["finishReason"] == "tool-calls"
    assert final(lines)["toolCalls"] == [
        {"toolCallId": "id", "toolName": "get_weather", "input": call["input"]}
    ]


def check_tool_loop(lines: list[Line]) -> None:
    assert kinds(lines).count("start-step") == 2
    (result,) = [part for part in parts(lines) if part["type"] == "tool-result"]
    assert result["output"] == f"18°C in {result['input']['city']}"
    answer = final(lines)
    assert (answer["steps"], answer["finishReason"]) == (2, "stop")


def check_thinking(lines: list[Line]) -> None:
    found = kinds(lines)
    assert found.index("reasoning-start") < found.index("reasoning-end") < found.index("text-start")
    thoughts = [part["text"] for part in parts(lines) if part["type"] == "reasoning-delta"]
    assert "".join(thoughts).strip()
    (signed,) = [part for part in parts(lines) if "signature" in part]
    assert signed["type"] == "reasoning-delta"
    assert signed["signature"]  # the signature_delta reached the SDK
    assert final(lines)["finishReason"] == "stop"


def check_midstream_error(lines: list[Line]) -> None:
    found = kinds(lines)
    assert found[: found.index("error")] == ["start", "start-step", "text-start",
                                             *["text-delta"] * 3]  # fmt: skip
    assert error(lines)["type"] == "overloaded_error"
    assert [part["finishReason"] for part in parts(lines) if part["type"] == "finish"] == ["error"]
    assert not [line for line in lines if "final" in line]


def check_error(status: int, error_type: str) -> Callable[[list[Line]], None]:
    def check(lines: list[Line]) -> None:
        raised = error(lines)
        assert raised["name"] == "AI_APICallError"
        assert (raised["status"], raised["type"], raised["retryable"]) == (status, error_type, True)
        assert raised["retryAfter"] == "0"  # Claude's retry-after, passed on

    return check


SCENARIOS: dict[str, tuple[str, dict[str, Any], Callable[[list[Line]], None]]] = {
    "text": ("stream", {"prompt": PLAIN}, check_text),
    "non_streaming": ("generate", {"prompt": PLAIN}, check_generate),
    "tool_use": ("tool_use", {"prompt": "weather? [[fake content=tool_use]]"}, check_tool_use),
    "tool_loop": ("tool_loop", {"prompt": "weather? [[fake content=tool_use]]"}, check_tool_loop),
    "thinking": ("thinking", {"prompt": "think first [[fake content=thinking]]"}, check_thinking),
    "midstream_error": ("stream", {"prompt": BROKEN}, check_midstream_error),
    "overloaded": ("stream", {"prompt": OVERLOADED}, check_error(529, "overloaded_error")),
    "overloaded_generate": (
        "generate",
        {"prompt": OVERLOADED},
        check_error(529, "overloaded_error"),
    ),
    "rate_limited": ("stream", {"prompt": RATE_LIMITED}, check_error(429, "rate_limit_error")),
}


@pytest.mark.parametrize("name", list(SCENARIOS))
async def test_the_ai_sdk_reads_the_same_answer_direct_and_through_the_sidecar(
    fake: FakeServer, sidecar_for: SidecarFactory, name: str
) -> None:
    scenario, options, check = SCENARIOS[name]
    async with sidecar_for() as sidecar:
        direct, proxied = await asyncio.gather(
            ai_sdk(fake.url, scenario, **options), ai_sdk(sidecar.url, scenario, **options)
        )
    check(direct)
    assert proxied == direct


async def test_the_tool_result_the_ai_sdk_sends_back_reaches_claude(
    fake: FakeServer, sidecar_for: SidecarFactory
) -> None:
    async with sidecar_for() as sidecar:
        lines = await ai_sdk(sidecar.url, "tool_loop", prompt="weather? [[fake content=tool_use]]")
    check_tool_loop(lines)
    first, second = (request.body for request in fake.state.requests)
    assert [message["role"] for message in second["messages"]] == ["user", "assistant", "user"]
    call = second["messages"][1]["content"][-1]
    (result,) = second["messages"][2]["content"]
    assert call["type"] == "tool_use"
    assert result["type"] == "tool_result"
    assert result["tool_use_id"] == call["id"]
    assert second["messages"][0] == first["messages"][0]
    assert second["tools"] == first["tools"]


async def test_streamed_text_reaches_the_ai_sdk_while_claude_is_still_generating(
    fake: FakeServer, sidecar_for: SidecarFactory
) -> None:
    """Claude stalls after three deltas: the SDK has them all before the stream goes on."""
    async with sidecar_for() as sidecar:
        options = json.dumps({"prompt": STALLED})
        async with script_lines("ai_sdk.mjs", sidecar.url, "stream", options, ids=IDS) as lines:
            early = await lines.until(lambda seen: kinds(seen).count("text-delta") == 3)
            (record,) = fake.state.streams.values()
            assert record.outcome == "open"  # Claude has not finished: nothing was held back
            assert record.events.count("content_block_delta") == 3
            await release_stalls(fake)
            every = await lines.rest()
    assert kinds(early)[-1] == "text-delta"
    answer = final(every)
    assert len(answer["text"].split()) == 12
    assert answer["finishReason"] == "stop"
    assert answer["usage"]["outputTokens"] == 12
    assert answer["usage"]["inputTokens"] > 0
    assert fake.state.stats()["streams_completed"] == 1


async def test_an_abort_in_the_ai_sdk_stops_claude(
    fake: FakeServer, sidecar_for: SidecarFactory, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    async with sidecar_for() as sidecar:
        lines = await ai_sdk(sidecar.url, "abort", prompt=STALLED, abortAfter=3)
        await fake.state.wait_for(lambda state: state.counters["streams_cancelled"] == 1)
        await eventually(lambda: holds(stream_ends(caplog) == ["client_cancelled"]))
    assert kinds(lines)[-2:] == ["text-delta", "abort"]
    (record,) = fake.state.streams.values()
    assert record.outcome == "cancelled"  # Claude's generation stopped, not completed
    assert fake.state.stats()["open_streams"] == 0


async def test_an_error_the_sidecar_ends_a_stream_with_is_an_error_in_the_ai_sdk(
    fake: FakeServer, sidecar_for: SidecarFactory
) -> None:
    """Claude goes quiet past `claude.idle_timeout_seconds`: the sidecar's own `event: error`
    (not Claude's) ends the stream, and the SDK streams it as an error."""
    async with sidecar_for({"claude": {"idle_timeout_seconds": 0.2}}) as sidecar:
        lines = await ai_sdk(sidecar.url, "stream", prompt=STALLED)
        await fake.state.wait_for(lambda state: state.counters["streams_cancelled"] == 1)
    found = kinds(lines)
    assert found[: found.index("error")] == ["start", "start-step", "text-start",
                                             *["text-delta"] * 3]  # fmt: skip
    assert error(lines)["type"] == "timeout_error"
    assert [part["finishReason"] for part in parts(lines) if part["type"] == "finish"] == ["error"]


async def test_the_ai_sdk_key_passes_the_sidecars_auth_and_a_wrong_one_is_a_401(
    fake: FakeServer, sidecar_for: SidecarFactory
) -> None:
    await ai_sdk(fake.url, "generate", prompt=PLAIN, apiKey=CLIENT_KEY)
    (direct,) = fake.state.requests
    assert direct.headers["x-api-key"] == CLIENT_KEY  # how this client sends its key
    assert "authorization" not in direct.headers
    fake.state.reset()
    async with sidecar_for(AUTH) as sidecar:
        allowed = await ai_sdk(sidecar.url, "stream", prompt=PLAIN, apiKey=CLIENT_KEY)
        streamed = await ai_sdk(sidecar.url, "stream", prompt=PLAIN, apiKey=WRONG_KEY)
        generated = await ai_sdk(sidecar.url, "generate", prompt=PLAIN, apiKey=WRONG_KEY)
    check_text(allowed)
    (request,) = fake.state.requests  # the refused calls never reached Claude
    assert request.headers["x-api-key"] == "sk-sidecar"  # the sidecar's key, not the client's
    for lines in (streamed, generated):
        raised = error(lines)
        assert raised["name"] == "AI_APICallError"
        assert (raised["status"], raised["type"]) == (401, "authentication_error")
        assert raised["retryable"] is False


async def test_a_quota_rejection_is_a_retryable_429_with_retry_after_in_the_ai_sdk(
    fake: FakeServer, sidecar_for: SidecarFactory
) -> None:
    async with sidecar_for(ONE_PER_MINUTE) as sidecar:
        allowed = await ai_sdk(sidecar.url, "stream", prompt=PLAIN)
        refused = await ai_sdk(sidecar.url, "stream", prompt=PLAIN)
        refused_plain = await ai_sdk(sidecar.url, "generate", prompt=PLAIN)
    check_text(allowed)
    assert fake.state.stats()["requests"] == 1
    for lines in (refused, refused_plain):
        raised = error(lines)
        assert raised["name"] == "AI_APICallError"
        assert (raised["status"], raised["type"], raised["retryable"]) == (
            429, "rate_limit_error", True
        )  # fmt: skip
        assert int(raised["retryAfter"]) > 0


async def test_a_screened_prompt_is_a_400_the_ai_sdk_does_not_retry(
    fake: FakeServer, sidecar_for: SidecarFactory
) -> None:
    async with sidecar_for(SCREENING) as sidecar:
        streamed = await ai_sdk(sidecar.url, "stream", prompt=DENIED, maxRetries=2)
        generated = await ai_sdk(sidecar.url, "generate", prompt=DENIED, maxRetries=2)
    for lines in (streamed, generated):
        raised = error(lines)
        assert raised["name"] == "AI_APICallError"
        assert (raised["status"], raised["type"]) == (400, "invalid_request_error")
        assert raised["retryable"] is False
    assert fake.state.stats()["requests"] == 0


async def test_the_ai_sdk_retries_claudes_529_passed_back_by_the_sidecar(
    fake: FakeServer, sidecar_for: SidecarFactory
) -> None:
    prompt = "[[fake fault=overloaded retry_after=0.01 fail_times=2 fail_key=ai-sdk]] again"
    async with sidecar_for({"claude": {"max_retries": 0}}) as sidecar:
        lines = await ai_sdk(sidecar.url, "stream", prompt=prompt, maxRetries=2)
    assert fake.state.counters["faults_overloaded"] == 2
    assert fake.state.stats()["requests"] == 3  # two 529s passed back, then the SDK's third try
    assert final(lines)["finishReason"] == "stop"
    assert "error" not in kinds(lines)


async def test_the_ai_sdk_reads_a_stream_whose_head_went_out_with_pings_while_claude_waited(
    fake: FakeServer, sidecar_for: SidecarFactory
) -> None:
    """Claude's head comes after several `claude.heartbeat_seconds`, through a proxy that
    cuts a connection silent for twice that: the sidecar's head and its `: ping` comments
    keep it, and the SDK reads the answer as it always does."""
    config = {"claude": {"heartbeat_seconds": 0.1}}
    async with sidecar_for(config) as sidecar, idle_proxy(sidecar.port, 0.3) as proxy:
        lines = await ai_sdk(
            f"http://127.0.0.1:{proxy.port}",
            "stream",
            prompt="[[fake fault=slow_headers delay_ms=900]] " + PLAIN,
        )
    assert proxy.cut == 0
    assert kinds(lines) == ["start", "start-step", "text-start", *["text-delta"] * 12,
                            "text-end", "finish-step", "finish"]  # fmt: skip
    assert final(lines)["finishReason"] == "stop"


async def test_a_failure_after_the_early_head_is_an_error_part_in_the_ai_sdk(
    fake: FakeServer, sidecar_for: SidecarFactory
) -> None:
    """Claude answers 529 through the sidecar's retries, which outlast the heartbeat: the
    stream had begun, so the overload is its `event: error`, an error part in the SDK."""
    config = {"claude": {"heartbeat_seconds": 0.1, "max_retries": 1}}
    async with sidecar_for(config) as sidecar, idle_proxy(sidecar.port, 0.3) as proxy:
        lines = await ai_sdk(
            f"http://127.0.0.1:{proxy.port}",
            "stream",
            prompt="[[fake fault=overloaded retry_after=0.9]] hi",
        )
    assert proxy.cut == 0
    assert fake.state.counters["faults_overloaded"] == 2
    # The provider reads a stream's `overloaded_error` as Claude's 529, as it does straight
    # from Claude: an API call error that the stream ends with.
    assert kinds(lines) == ["start", "error"]
    raised = error(lines)
    assert (raised["name"], raised["status"], raised["message"]) == (
        "AI_APICallError",
        529,
        "Overloaded",
    )


async def test_the_ai_sdk_still_retries_an_overload_that_ended_a_stream_before_its_events(
    fake: FakeServer, sidecar_for: SidecarFactory
) -> None:
    """The sidecar's two tries get 529s that outlast the heartbeat, so its stream began and
    ends with `overloaded_error` before any event: the provider reads that as Claude's
    retryable 529, and its own retry gets the answer."""
    prompt = "[[fake fault=overloaded retry_after=0.5 fail_times=2 fail_key=early]] again"
    config = {"claude": {"heartbeat_seconds": 0.1, "max_retries": 1}}
    async with sidecar_for(config) as sidecar:
        lines = await ai_sdk(sidecar.url, "stream", prompt=prompt, maxRetries=2)
    assert fake.state.counters["faults_overloaded"] == 2
    assert fake.state.stats()["requests"] == 3  # the sidecar's two tries, then the SDK's
    assert final(lines)["finishReason"] == "stop"
    assert "error" not in kinds(lines)
