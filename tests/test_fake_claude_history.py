"""What the fake refuses in a conversation's history, as the API does: a tool turn under
thinking without its signed thinking, a server tool call without its result."""

from __future__ import annotations

from typing import Any

import aiohttp

from sidecar.fake_claude import FakeServer
from sidecar.fake_claude.reply import sign


async def message(fake: FakeServer, **body: object) -> tuple[int, dict[str, Any]]:
    request = {"model": "claude-sonnet-5-5", "max_tokens": 256, **body}
    async with aiohttp.ClientSession() as http:
        async with http.post(fake.url + "/v1/messages", json=request) as response:
            return response.status, await response.json()


async def test_a_tool_turn_under_thinking_must_come_back_with_its_signed_thinking(
    fake: FakeServer,
) -> None:
    """As the API: a request with thinking enabled is answered with a signed thinking block
    first, and the tool round trip must send it back unchanged."""
    thinking = {"type": "enabled", "budget_tokens": 1024}
    tools = [{"name": "get_weather", "input_schema": {"type": "object"}}]
    asked = [{"role": "user", "content": "weather? [[fake content=tool_use]]"}]
    status, reply = await message(fake, thinking=thinking, tools=tools, messages=asked)
    assert status == 200
    first, _, use = reply["content"]
    assert first["type"] == "thinking"
    assert first["signature"] == sign(first["thinking"])
    result = {"role": "user", "content": [{"type": "tool_result", "tool_use_id": use["id"],
                                           "content": "sunny"}]}  # fmt: skip
    for content, error in [
        (reply["content"], None),
        (reply["content"][1:], "Expected `thinking` or `redacted_thinking`, but found `text`"),
        ([{**first, "signature": sign("other")}, *reply["content"][1:]], "Invalid `signature`"),
        ([{"type": "redacted_thinking", "data": "x"}, *reply["content"][1:]], None),
    ]:
        sent = [*asked, {"role": "assistant", "content": content}, result]
        status, answer = await message(fake, thinking=thinking, tools=tools, messages=sent)
        if error is None:
            assert status == 200, answer
        else:
            assert status == 400
            assert error in answer["error"]["message"]


async def test_a_web_search_is_claudes_call_and_its_result_block(fake: FakeServer) -> None:
    tools = [{"type": "web_search_20250305", "name": "web_search"}]
    asked = [{"role": "user", "content": "news [[fake content=web_search]]"}]
    status, reply = await message(fake, tools=tools, messages=asked)
    assert status == 200
    use, result, text = reply["content"]
    assert (use["type"], use["name"], set(use["input"])) == ("server_tool_use", "web_search",
                                                             {"query"})  # fmt: skip
    assert result["type"] == "web_search_tool_result"
    assert result["tool_use_id"] == use["id"]
    assert result["content"][0]["type"] == "web_search_result"
    assert text["type"] == "text"
    again = [*asked, {"role": "assistant", "content": reply["content"]},
             {"role": "user", "content": "thanks"}]  # fmt: skip
    assert (await message(fake, tools=tools, messages=again))[0] == 200
    again[1] = {"role": "assistant", "content": [use, text]}
    status, answer = await message(fake, tools=tools, messages=again)
    assert status == 400
    assert "has no corresponding result block" in answer["error"]["message"]
    async with aiohttp.ClientSession() as http:
        request = {"model": "m", "max_tokens": 256, "stream": True, "tools": tools,
                   "messages": asked}  # fmt: skip
        async with http.post(fake.url + "/v1/messages", json=request) as response:
            stream = await response.text()
    assert '"content_block":{"type":"server_tool_use"' in stream
    assert '"content_block":{"type":"web_search_tool_result"' in stream


async def test_a_client_tool_call_must_be_answered_in_the_next_message(fake: FakeServer) -> None:
    """As the API: a `tool_use` that another message follows needs its `tool_result` there;
    the last message's calls are the ones being answered next."""
    use = {"type": "tool_use", "id": "toolu_1", "name": "get_weather", "input": {}}
    result = {"type": "tool_result", "tool_use_id": "toolu_1", "content": "sunny"}
    asked = {"role": "user", "content": "weather?"}
    called = {"role": "assistant", "content": [{"type": "text", "text": "let me see"}, use]}
    for messages, error in [
        ([asked, called, {"role": "user", "content": [result]}], None),
        ([asked, called], None),
        ([asked, called, {"role": "user", "content": "never mind"}], "toolu_1"),
        ([asked, called, {"role": "user", "content": [{**result, "tool_use_id": "other"}]}],
         "toolu_1"),
    ]:  # fmt: skip
        status, answer = await message(fake, messages=messages)
        if error is None:
            assert status == 200, answer
        else:
            assert status == 400
            assert answer["error"]["message"] == (
                f"messages.1: `tool_use` ids were found without `tool_result` blocks "
                f"immediately after: {error}. Each `tool_use` block must have a "
                "corresponding `tool_result` block in the next message."
            )
