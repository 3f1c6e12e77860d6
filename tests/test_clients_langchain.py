"""LangChain's `ChatAnthropic` (langchain-anthropic) with its base URL pointed at the sidecar.

Answers and Claude's own errors must read the same to LangChain as straight from Claude (the
fake); the sidecar's own rejections must be LangChain's model errors with the status and
`retry-after` behind them; a stream must arrive while Claude generates, and a cancelled
LangChain call must stop Claude.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Callable, Sequence
from typing import Any

import anthropic
import pytest
from langchain_anthropic import ChatAnthropic
from langchain_core.exceptions import (
    ModelAPIError,
    ModelAuthenticationError,
    ModelInvalidRequestError,
    ModelRateLimitError,
)
from langchain_core.messages import AIMessageChunk, BaseMessage, HumanMessage, ToolMessage

from sidecar.fake_claude import FakeServer
from tests.support.clients import (
    AUTH,
    BROKEN,
    CLIENT_KEY,
    DENIED,
    MODEL,
    ONE_PER_MINUTE,
    OVERLOADED,
    RATE_LIMITED,
    SCREENING,
    STALLED,
    WRONG_KEY,
    release_stalls,
)
from tests.support.node import IDS
from tests.support.resume import stream_ends
from tests.support.sidecars import SidecarFactory
from tests.support.waiting import eventually, holds

PLAIN = "plain text please"
PLAIN_INPUT_TOKENS = 5  # the fake's estimate: ceil(len(PLAIN) / 4)
WEATHER_TOOL = {
    "name": "get_weather",
    "description": "Current weather for a city",
    "input_schema": {
        "type": "object",
        "properties": {"city": {"type": "string"}},
        "required": ["city"],
    },
}
TOOL_PROMPT = "weather? [[fake content=tool_use]]"

Outcome = dict[str, Any]


def chat(url: str, api_key: str = "client-key", **settings: Any) -> ChatAnthropic:
    """LangChain's chat model for `url`; it does not retry unless told (tests must not wait)."""
    options: dict[str, Any] = {"max_tokens": 64, "max_retries": 0, **settings}
    return ChatAnthropic(model_name=MODEL, base_url=url, api_key=api_key, **options)


def normalised(data: Any) -> Any:
    """`data` with Claude's random ids replaced by `id` (it reads the same direct and proxied)."""
    return json.loads(IDS.sub("id", json.dumps(data, ensure_ascii=False, default=str)))


LANGCHAIN_ERRORS = (ModelAuthenticationError, ModelRateLimitError, ModelInvalidRequestError,
                    ModelAPIError)  # fmt: skip


def described(error: BaseException) -> dict[str, Any]:
    """What a caller catching LangChain's error can tell from it: LangChain's error kind, the
    Anthropic SDK's class, the status, the API's error type and `retry-after`."""
    assert isinstance(error, anthropic.APIStatusError), repr(error)
    body = error.body if isinstance(error.body, dict) else {}
    kinds = [kind.__name__ for kind in LANGCHAIN_ERRORS if isinstance(error, kind)]
    sdk_class = next(cls for cls in type(error).__mro__ if cls.__module__.startswith("anthropic"))
    return {
        "langchain": kinds[0] if kinds else None,
        "sdk": sdk_class.__name__,
        "status": error.status_code,
        "type": body.get("error", {}).get("type"),
        "retry_after": error.response.headers.get("retry-after"),
    }


async def chunks_of(llm: Any, prompt: str) -> list[AIMessageChunk]:
    """`astream` to its end, LangChain's errors raised."""
    return [chunk async for chunk in llm.astream(prompt)]


def summary(message: BaseMessage) -> dict[str, Any]:
    """The parts of a (merged) answer a LangChain caller reads (the message's own id is
    LangChain's run id; Claude's, when it names one, is in the response metadata)."""
    usage = getattr(message, "usage_metadata", None)
    summarised: dict[str, Any] = normalised({
        "content": message.content,
        "tool_calls": getattr(message, "tool_calls", []),
        "usage": dict(usage) if usage else None,
        "stop_reason": message.response_metadata.get("stop_reason"),
        "id": message.response_metadata.get("id"),
    })  # fmt: skip
    return summarised


async def streamed(llm: Any, prompt: str | Sequence[BaseMessage]) -> Outcome:
    """`astream` to its end: each chunk's text and tool call chunks, the merged answer, or
    the error LangChain raised (with what had streamed before it)."""
    chunks: list[AIMessageChunk] = []
    outcome: Outcome = {}
    try:
        async for chunk in llm.astream(prompt):
            chunks.append(chunk)
    except anthropic.APIStatusError as error:
        outcome["error"] = described(error)
    outcome["texts"] = [chunk.text for chunk in chunks]
    outcome["tool_call_chunks"] = normalised([c.tool_call_chunks for c in chunks])
    if "error" not in outcome:
        merged = chunks[0]
        for chunk in chunks[1:]:
            merged += chunk
        outcome["message"] = summary(merged)
    return outcome


async def invoked(llm: Any, prompt: str | Sequence[BaseMessage]) -> Outcome:
    """`ainvoke` (one non-streaming call): the answer, or the error LangChain raised."""
    try:
        return {"message": summary(await llm.ainvoke(prompt))}
    except anthropic.APIStatusError as error:
        return {"error": described(error)}


def check_text(outcome: Outcome) -> None:
    texts = outcome["texts"]
    assert len([text for text in texts if text]) == 12  # one chunk per delta, as it came
    message = outcome["message"]
    assert message["content"] == "".join(texts)
    assert len(message["content"].split()) == 12
    assert message["stop_reason"] == "end_turn"
    usage = message["usage"]
    assert (usage["input_tokens"], usage["output_tokens"]) == (PLAIN_INPUT_TOKENS, 12)
    assert usage["total_tokens"] == PLAIN_INPUT_TOKENS + 12


def check_invoke(outcome: Outcome) -> None:
    message = outcome["message"]
    assert len(message["content"].split()) == 12
    assert message["stop_reason"] == "end_turn"
    assert message["id"] == "id"
    assert (message["usage"]["input_tokens"], message["usage"]["output_tokens"]) == (5, 12)


def check_tool_use(outcome: Outcome) -> None:
    pieces = [chunk for chunks in outcome["tool_call_chunks"] for chunk in chunks]
    first, *rest = pieces
    assert (first["name"], first["id"]) == ("get_weather", "id")
    assert len(rest) > 1  # the input arrived in pieces (input_json_delta), as Claude sent it
    arguments = json.loads("".join(piece["args"] for piece in pieces))
    message = outcome["message"]
    assert message["stop_reason"] == "tool_use"
    (call,) = message["tool_calls"]
    assert (call["name"], call["id"], call["args"]) == ("get_weather", "id", arguments)
    assert list(arguments) == ["city"]


def check_thinking(outcome: Outcome) -> None:
    thinking, text = outcome["message"]["content"]
    assert thinking["type"] == "thinking"
    assert thinking["thinking"].strip()
    assert thinking["signature"]  # the signature_delta reached LangChain
    assert text["type"] == "text"
    assert outcome["message"]["stop_reason"] == "end_turn"


def check_midstream_error(outcome: Outcome) -> None:
    assert [text for text in outcome["texts"] if text] == outcome["texts"][1:4]
    assert len(outcome["texts"]) == 4  # the first chunk (message_start) and three deltas
    error = outcome["error"]
    # An `event: error` inside a 200 stream: the SDK's status error, with the API's body.
    assert (error["status"], error["type"]) == (200, "overloaded_error")


def check_error(
    status: int, error_type: str, langchain: str, sdk: str
) -> Callable[[Outcome], None]:
    def check(outcome: Outcome) -> None:
        error = outcome["error"]
        assert (error["status"], error["type"], error["retry_after"]) == (status, error_type, "0")
        assert (error["langchain"], error["sdk"]) == (langchain, sdk)

    return check


OVERLOADED_ERROR = check_error(529, "overloaded_error", "ModelAPIError", "OverloadedError")
RATE_LIMIT_ERROR = check_error(429, "rate_limit_error", "ModelRateLimitError", "RateLimitError")


SCENARIOS: dict[str, tuple[Callable[..., Any], dict[str, Any], str, Callable[[Outcome], None]]] = {
    "text": (streamed, {}, PLAIN, check_text),
    "non_streaming": (invoked, {}, PLAIN, check_invoke),
    "thinking": (
        streamed,
        {"max_tokens": 2048, "thinking": {"type": "adaptive"}},
        "think first [[fake content=thinking]]",
        check_thinking,
    ),
    "midstream_error": (streamed, {}, BROKEN, check_midstream_error),
    "overloaded": (streamed, {}, OVERLOADED, OVERLOADED_ERROR),
    "overloaded_invoke": (invoked, {}, OVERLOADED, OVERLOADED_ERROR),
    "rate_limited": (streamed, {}, RATE_LIMITED, RATE_LIMIT_ERROR),
}


@pytest.mark.parametrize("name", list(SCENARIOS))
async def test_langchain_reads_the_same_answer_direct_and_through_the_sidecar(
    fake: FakeServer, sidecar_for: SidecarFactory, name: str
) -> None:
    call, settings, prompt, check = SCENARIOS[name]
    async with sidecar_for() as sidecar:
        direct, proxied = await asyncio.gather(
            call(chat(fake.url, **settings), prompt), call(chat(sidecar.url, **settings), prompt)
        )
    check(direct)
    assert proxied == direct


async def test_langchain_tool_calls_stream_through_the_sidecar(
    fake: FakeServer, sidecar_for: SidecarFactory
) -> None:
    async with sidecar_for() as sidecar:
        direct, proxied = await asyncio.gather(
            streamed(chat(fake.url).bind_tools([WEATHER_TOOL]), TOOL_PROMPT),
            streamed(chat(sidecar.url).bind_tools([WEATHER_TOOL]), TOOL_PROMPT),
        )
    check_tool_use(direct)
    assert proxied == direct


async def test_a_langchain_tool_round_trip_through_the_sidecar(
    fake: FakeServer, sidecar_for: SidecarFactory
) -> None:
    """The tool call comes back with its result as LangChain writes them; Claude answers."""
    async with sidecar_for() as sidecar:
        llm = chat(sidecar.url).bind_tools([WEATHER_TOOL])
        asked: list[BaseMessage] = [HumanMessage(TOOL_PROMPT)]
        call = await llm.ainvoke(asked)
        (tool_call,) = call.tool_calls
        result = ToolMessage(f"18°C in {tool_call['args']['city']}", tool_call_id=tool_call["id"])
        answer = await streamed(llm, [*asked, call, result])
    assert answer["message"]["stop_reason"] == "end_turn"
    sent = fake.state.requests[-1].body["messages"]
    assert [message["role"] for message in sent] == ["user", "assistant", "user"]
    assert sent[1]["content"][-1]["type"] == "tool_use"
    assert sent[2]["content"][0]["type"] == "tool_result"
    assert sent[2]["content"][0]["tool_use_id"] == tool_call["id"]


async def test_langchain_counts_tokens_through_the_sidecar(
    fake: FakeServer, sidecar_for: SidecarFactory
) -> None:
    # The count is a sync call in LangChain: off the loop, which serves the sidecar.
    messages: list[BaseMessage] = [HumanMessage(PLAIN)]
    async with sidecar_for(AUTH) as sidecar:
        count = chat(sidecar.url, CLIENT_KEY).get_num_tokens_from_messages
        assert await asyncio.to_thread(count, messages) == PLAIN_INPUT_TOKENS
        wrong = chat(sidecar.url, WRONG_KEY).get_num_tokens_from_messages
        with pytest.raises(anthropic.AuthenticationError):  # LangChain does not wrap this one
            await asyncio.to_thread(wrong, messages)
    (request,) = fake.state.requests
    assert request.path == "/v1/messages/count_tokens"


async def reading_three_deltas(
    llm: ChatAnthropic, chunks: list[AIMessageChunk]
) -> asyncio.Task[None]:
    """A task streaming `STALLED` into `chunks`, returned once its three text deltas (all
    Claude sends before it stalls) have arrived, or it ended."""

    async def consume() -> None:
        async for chunk in llm.astream(STALLED):
            chunks.append(chunk)

    reading = asyncio.create_task(consume())
    await eventually(lambda: holds(len([c for c in chunks if c.text]) == 3 or reading.done()))
    return reading


async def test_streamed_text_reaches_langchain_while_claude_is_still_generating(
    fake: FakeServer, sidecar_for: SidecarFactory
) -> None:
    """Claude stalls after three deltas: LangChain has them all before the stream goes on."""
    chunks: list[AIMessageChunk] = []
    async with sidecar_for() as sidecar:
        reading = await reading_three_deltas(chat(sidecar.url), chunks)
        assert not reading.done()
        (record,) = fake.state.streams.values()
        assert record.outcome == "open"  # Claude has not finished: nothing was held back
        assert record.events.count("content_block_delta") == 3
        await release_stalls(fake)
        await asyncio.wait_for(reading, 10)
    merged = chunks[0]
    for chunk in chunks[1:]:
        merged += chunk
    assert len(merged.text.split()) == 12
    assert merged.response_metadata["stop_reason"] == "end_turn"
    assert merged.usage_metadata is not None
    assert merged.usage_metadata["output_tokens"] == 12
    assert merged.usage_metadata["input_tokens"] > 0


async def test_a_cancelled_langchain_stream_stops_claude(
    fake: FakeServer, sidecar_for: SidecarFactory, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    chunks: list[AIMessageChunk] = []
    async with sidecar_for() as sidecar:
        reading = await reading_three_deltas(chat(sidecar.url), chunks)
        reading.cancel()  # the caller gives up (a closed page, a timeout of its own)
        with pytest.raises(asyncio.CancelledError):
            await reading
        await fake.state.wait_for(lambda state: state.counters["streams_cancelled"] == 1)
        await eventually(lambda: holds(stream_ends(caplog) == ["client_cancelled"]))
    (record,) = fake.state.streams.values()
    assert record.outcome == "cancelled"  # Claude's generation stopped, not completed
    assert record.events.count("content_block_delta") == 3


async def test_an_error_the_sidecar_ends_a_stream_with_is_raised_by_langchain(
    fake: FakeServer, sidecar_for: SidecarFactory
) -> None:
    """Claude goes quiet past `claude.idle_timeout_seconds`: the sidecar's own `event: error`
    (not Claude's) ends the stream, and LangChain raises it after the text so far."""
    async with sidecar_for({"claude": {"idle_timeout_seconds": 0.2}}) as sidecar:
        outcome = await streamed(chat(sidecar.url), STALLED)
        await fake.state.wait_for(lambda state: state.counters["streams_cancelled"] == 1)
    assert len([text for text in outcome["texts"] if text]) == 3
    assert (outcome["error"]["status"], outcome["error"]["type"]) == (200, "timeout_error")


async def test_langchain_key_passes_the_sidecars_auth_and_a_wrong_one_is_an_auth_error(
    fake: FakeServer, sidecar_for: SidecarFactory
) -> None:
    await chat(fake.url, CLIENT_KEY).ainvoke(PLAIN)
    (direct,) = fake.state.requests
    # How this client sends its key: `Authorization: Bearer`, as the Anthropic SDK under it.
    assert direct.headers["authorization"] == f"Bearer {CLIENT_KEY}"
    fake.state.reset()
    async with sidecar_for(AUTH) as sidecar:
        allowed = await streamed(chat(sidecar.url, CLIENT_KEY), PLAIN)
        with pytest.raises(ModelAuthenticationError) as streaming:
            await chunks_of(chat(sidecar.url, WRONG_KEY), PLAIN)
        with pytest.raises(ModelAuthenticationError) as invoking:
            await chat(sidecar.url, WRONG_KEY).ainvoke(PLAIN)
    check_text(allowed)
    (request,) = fake.state.requests  # the refused calls never reached Claude
    assert request.headers["x-api-key"] == "sk-sidecar"  # the sidecar's key, not the client's
    for refused in (streaming.value, invoking.value):
        assert isinstance(refused, anthropic.AuthenticationError)
        assert described(refused)["type"] == "authentication_error"


async def test_a_quota_rejection_is_langchains_rate_limit_error_with_retry_after(
    fake: FakeServer, sidecar_for: SidecarFactory
) -> None:
    async with sidecar_for(ONE_PER_MINUTE) as sidecar:
        check_text(await streamed(chat(sidecar.url), PLAIN))
        with pytest.raises(ModelRateLimitError) as streaming:
            await chunks_of(chat(sidecar.url), PLAIN)
        with pytest.raises(ModelRateLimitError) as invoking:
            await chat(sidecar.url).ainvoke(PLAIN)
    assert fake.state.stats()["requests"] == 1
    for refused in (streaming.value, invoking.value):
        assert isinstance(refused, anthropic.RateLimitError)
        error = described(refused)
        assert (error["status"], error["type"]) == (429, "rate_limit_error")
        assert int(error["retry_after"]) > 0


async def test_a_screened_prompt_is_langchains_invalid_request_error(
    fake: FakeServer, sidecar_for: SidecarFactory
) -> None:
    async with sidecar_for(SCREENING) as sidecar:
        with pytest.raises(ModelInvalidRequestError) as streaming:
            await chunks_of(chat(sidecar.url, max_retries=2), DENIED)
        with pytest.raises(ModelInvalidRequestError) as invoking:
            await chat(sidecar.url, max_retries=2).ainvoke(DENIED)
    for refused in (streaming.value, invoking.value):
        assert isinstance(refused, anthropic.BadRequestError)
        assert described(refused)["status"] == 400
        assert described(refused)["type"] == "invalid_request_error"
    assert fake.state.stats()["requests"] == 0
