"""What the fake answers: the usage a stream's message_delta carries, stop sequences."""

from __future__ import annotations

import json
from typing import Any

import aiohttp
import anthropic
import pytest

from sidecar.fake_claude import FakeServer


async def test_message_delta_carries_the_whole_usage_as_the_api_sends_it(fake: FakeServer) -> None:
    """The API's `message_delta` usage is cumulative and names the input tokens too (some
    clients read the input count from it alone); it equals the non-streaming usage."""
    request = {"model": "claude-sonnet-5-5", "max_tokens": 64,
               "messages": [{"role": "user", "content": "count me in, please"}]}  # fmt: skip
    async with aiohttp.ClientSession() as http:
        async with http.post(fake.url + "/v1/messages", json=request) as response:
            whole = (await response.json())["usage"]
        async with http.post(
            fake.url + "/v1/messages", json={**request, "stream": True}
        ) as response:
            blocks = (await response.text()).split("\n\n")
    (delta,) = [block for block in blocks if block.startswith("event: message_delta")]
    usage = json.loads(delta.split("data: ", 1)[1])["usage"]
    assert usage == whole
    assert usage["input_tokens"] == 5
    assert usage["output_tokens"] == 12


async def _reply(http: aiohttp.ClientSession, url: str, **extra: Any) -> dict[str, Any]:
    request = {"model": "claude-sonnet-5-5", "max_tokens": 64,
               "messages": [{"role": "user", "content": "where does it stop?"}], **extra}  # fmt: skip
    async with http.post(url + "/v1/messages", json=request) as response:
        assert response.status == 200, await response.text()
        reply: dict[str, Any] = await response.json()
        return reply


@pytest.mark.parametrize("cut", ["word", "mid_word"])
async def test_a_stop_sequence_ends_the_reply_before_it(fake: FakeServer, cut: str) -> None:
    """`stop_sequences`: the text ends just before the earliest match (left out), with
    stop_reason `stop_sequence` naming it, in the Message and in the stream (whose deltas
    add up to the same text), as the SDK's `get_final_message()` assembles it."""
    async with aiohttp.ClientSession() as http:
        whole = (await _reply(http, fake.url))["content"][0]["text"]
        words = whole.split(" ")
        sequence = " " + words[4] if cut == "word" else words[3][1:3]
        expected = whole[: whole.find(sequence)]
        stops = ["NEVER-THERE", sequence]
        message = await _reply(http, fake.url, stop_sequences=stops)
    assert message["content"] == [{"type": "text", "text": expected}]
    assert (message["stop_reason"], message["stop_sequence"]) == ("stop_sequence", sequence)
    assert message["usage"]["output_tokens"] == len(expected.split(" "))
    client = anthropic.AsyncAnthropic(base_url=fake.url, api_key="k", max_retries=0)
    async with client.messages.stream(
        model="claude-sonnet-5-5", max_tokens=64, stop_sequences=stops,
        messages=[{"role": "user", "content": "where does it stop?"}],
    ) as stream:  # fmt: skip
        streamed = "".join([text async for text in stream.text_stream])
        final = await stream.get_final_message()
    assert streamed == expected
    assert (final.stop_reason, final.stop_sequence) == ("stop_sequence", sequence)
    assert final.content[0].type == "text"
    assert final.content[0].text == expected


async def test_max_tokens_reached_before_a_stop_sequence_wins(fake: FakeServer) -> None:
    async with aiohttp.ClientSession() as http:
        words = (await _reply(http, fake.url))["content"][0]["text"].split(" ")
        message = await _reply(http, fake.url, max_tokens=2, stop_sequences=[" " + words[6]])
    assert (message["stop_reason"], message["stop_sequence"]) == ("max_tokens", None)
    assert message["content"][0]["text"] == " ".join(words[:2])


async def test_text_nested_deep_in_tool_results_is_read_without_recursion(
    fake: FakeServer,
) -> None:
    """A tool_result's content may hold tool_results to any depth the client chooses: the
    fake reads the text at the bottom (its directive applies; count_tokens counts it) and
    answers, instead of failing with a 500 and a logged RecursionError."""
    content: Any = "pick [[fake tokens=3]]"
    for _ in range(300):  # far within a JSON decoder's depth; past Python's recursion limit
        content = [{"type": "tool_result", "tool_use_id": "toolu_1", "content": content}]
    request = {"model": "claude-sonnet-5-5", "max_tokens": 64,
               "messages": [{"role": "user", "content": content}]}  # fmt: skip
    async with aiohttp.ClientSession() as http:
        message = await _reply(http, fake.url, **request)
        async with http.post(fake.url + "/v1/messages/count_tokens", json=request) as response:
            assert response.status == 200, await response.text()
            counted = await response.json()
    assert message["usage"]["output_tokens"] == 3
    assert counted == {"input_tokens": message["usage"]["input_tokens"]}
    assert counted["input_tokens"] == 6  # ceil(len("pick [[fake tokens=3]]") / 4)


async def test_a_body_nested_past_the_json_decoders_depth_is_a_400(fake: FakeServer) -> None:
    body = b'{"model": "claude-sonnet-5-5", "max_tokens": 8, "metadata": ' + b"[" * 100_000
    async with aiohttp.ClientSession() as http:
        async with http.post(
            fake.url + "/v1/messages", data=body, headers={"content-type": "application/json"}
        ) as response:
            assert response.status == 400
            error = (await response.json())["error"]
    assert error == {
        "type": "invalid_request_error",
        "message": "The request body is not valid JSON.",
    }
