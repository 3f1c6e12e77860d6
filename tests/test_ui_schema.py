"""Every chunk the `ui` route sends, in every kind of turn, read by the AI SDK's own parsing
(`parseJsonEventStream`, as DefaultChatTransport reads a response) and checked against its
own schema (`uiMessageChunkSchema`); the stream ends with one `data: [DONE]`, nothing after.

The route sends no `message-metadata` chunks; the schema would check them like the rest.
"""

from __future__ import annotations

import asyncio
import json
import signal
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from sidecar.fake_claude import FakeServer
from sidecar.handlers.ui_stream import UNFINISHED_TOOL_INPUT
from sidecar.stream.redis_store import keys, redis_client
from tests.support.node import Line, run_script, script_lines, skip_without
from tests.support.redis_server import RedisServer
from tests.support.resume import cutting_proxy, sse_request
from tests.support.sidecars import SidecarFactory, SidecarProcess, sidecar_process
from tests.support.waiting import eventually, holds

skip_without("ai")

CHAT = "/api/chat"
TOOL = {"name": "get_weather", "description": "Weather for a city",
        "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}}}  # fmt: skip
SEARCH = {"type": "web_search_20250305", "name": "web_search"}
CONFIG: dict[str, Any] = {"ui": {"tools": [TOOL, SEARCH]}}
CACHED: dict[str, Any] = {**CONFIG, "cache": {"enabled": True, "include_sampled": True}}
SLOW = "[[fake tokens=40 tps=20]] tell me"


def user(text: str, id_: str = "u1") -> dict[str, Any]:
    return {"id": id_, "role": "user", "parts": [{"type": "text", "text": text}]}


def body(*messages: dict[str, Any], chat_id: str = "chat-1") -> str:
    return json.dumps({"id": chat_id, "trigger": "submit-message", "messages": list(messages)})


def valid(line: Line, whole: bool = True) -> list[str]:
    """The chunk types of one finished answer, once every chunk passed the SDK's schema and
    the stream ended with exactly one `[DONE]`; a `whole` message (not a cursor's tail)
    also assembled by the SDK without an error."""
    assert line["status"] == 200, line
    assert line["rejected"] == [], line["rejected"]
    if whole:
        assert line["failure"] is None, line["failure"]
    raw = line["raw"]
    assert raw.count("[DONE]") == 1, raw[-3:]
    assert raw[-1] == "[DONE]", raw[-3:]
    chunks: list[str] = line["chunks"]
    assert len(chunks) == len(raw) - 1  # every event but `[DONE]` was a chunk
    return chunks


async def answer(url: str, method: str = "POST", data: str | None = None) -> tuple[Line, Line]:
    """The opening line (status, headers) and the final line of one request."""
    args = [url, method] if data is None else [url, method, data]
    opened, final = await run_script("ui_schema.mjs", *args)
    return opened, final


async def test_text_turn_with_resume_on_and_off(
    fake: FakeServer, sidecar_for: SidecarFactory
) -> None:
    for config in (CONFIG, {**CONFIG, "routes": [{"path": CHAT, "handler": "ui",
                                                  "resume": {"enabled": False}}]}):  # fmt: skip
        async with sidecar_for(config) as sidecar:
            opened, final = await answer(sidecar.url + CHAT, data=body(user("hello")))
        assert opened["protocol"] == "v1"
        assert valid(final) == ["start", "start-step", "text-start", *["text-delta"] * 12,
                                "text-end", "finish-step", "finish"]  # fmt: skip


async def test_reasoning_turn(fake: FakeServer, sidecar_for: SidecarFactory) -> None:
    async with sidecar_for(CONFIG) as sidecar:
        _, final = await answer(sidecar.url + CHAT, data=body(user("[[fake content=thinking]]")))
    chunks = valid(final)
    assert {"reasoning-start", "reasoning-delta", "reasoning-end"} <= set(chunks)
    assert chunks[-1] == "finish"


async def test_client_tool_call_and_the_turn_with_its_output(
    fake: FakeServer, sidecar_for: SidecarFactory
) -> None:
    first = user("weather please [[fake content=tool_use]]")
    async with sidecar_for(CONFIG) as sidecar:
        _, call = await answer(sidecar.url + CHAT, data=body(first))
        chunks = valid(call)
        assert {"tool-input-start", "tool-input-delta", "tool-input-available"} <= set(chunks)
        assert chunks[-1] == "finish"
        (call_id,) = {json.loads(raw)["toolCallId"] for raw in call["raw"][:-1]
                      if "toolCallId" in json.loads(raw)}  # fmt: skip
        # The client runs the tool and sends its output back (as `addToolOutput` does).
        answered = {"id": "a1", "role": "assistant", "parts": [
            {"type": "step-start"},
            {"type": "tool-get_weather", "toolCallId": call_id, "state": "output-available",
             "input": {"city": "Paris"}, "output": {"temperature": 21}}]}  # fmt: skip
        _, after = await answer(sidecar.url + CHAT, data=body(first, answered))
    assert "text-delta" in valid(after)


async def test_server_tool_that_succeeds_and_one_that_fails(
    fake: FakeServer, sidecar_for: SidecarFactory
) -> None:
    async with sidecar_for(CONFIG) as sidecar:
        _, found = await answer(sidecar.url + CHAT, data=body(user("[[fake content=web_search]]")))
        _, failed = await answer(
            sidecar.url + CHAT, data=body(user("[[fake content=web_search_error]]"))
        )
    assert "tool-output-available" in valid(found)
    assert "tool-output-error" in valid(failed)


def closed(line: Line) -> list[dict[str, Any]]:
    """The chunks of a valid answer once every part it opened was closed before its last
    chunk (`error` or `finish`), and the SDK's message has no part left streaming."""
    chunks = [json.loads(data) for data in line["raw"][:-1]]
    open_parts: set[tuple[str, str]] = set()
    for chunk in chunks[:-1]:
        kind = chunk["type"]
        if kind in ("text-start", "reasoning-start"):
            open_parts.add((kind.split("-")[0], chunk["id"]))
        elif kind in ("text-end", "reasoning-end"):
            open_parts.discard((kind.split("-")[0], chunk["id"]))
        elif kind == "tool-input-start":
            open_parts.add(("tool", chunk["toolCallId"]))
        elif kind in ("tool-input-available", "tool-input-error"):
            open_parts.discard(("tool", chunk["toolCallId"]))
    assert open_parts == set(), chunks[-6:]
    assert chunks[-1]["type"] in ("error", "finish")
    assert "streaming" not in line["states"], line["states"]
    return chunks


@pytest.mark.parametrize("fault", ["midstream_error", "stall_midstream", "drop"])
async def test_a_stream_that_breaks_mid_answer(
    fake: FakeServer, sidecar_for: SidecarFactory, fault: str
) -> None:
    config = {**CONFIG, "claude": {"idle_timeout_seconds": 0.3}}
    async with sidecar_for(config) as sidecar:
        _, final = await answer(
            sidecar.url + CHAT, data=body(user(f"[[fake fault={fault} after=3]]"))
        )
    chunks = valid(final)
    assert chunks[-1] == "error"
    assert chunks.count("text-delta") == 3
    assert chunks[-2] == "text-end"  # the text part ends before the error
    closed(final)


@pytest.mark.parametrize("fault", ["midstream_error", "stall_midstream", "drop"])
@pytest.mark.parametrize("content", ["tool_use", "thinking"])
async def test_a_stream_that_breaks_mid_tool_input_or_reasoning_closes_the_part(
    fake: FakeServer, sidecar_for: SidecarFactory, fault: str, content: str
) -> None:
    """Claude's turn cut while a tool call's input (or a thinking block) is streaming: the
    part is closed before the `error` (a tool call with `tool-input-error` and the input
    so far), never left streaming."""
    config = {**CONFIG, "claude": {"idle_timeout_seconds": 0.3}}
    # tool_use: 2 text deltas, then the tool input, cut after its first piece; thinking:
    # the thinking block (5 deltas) comes first, cut after its second delta.
    knobs = "tokens=2 after=3" if content == "tool_use" else "tokens=10 after=2"
    prompt = f"[[fake content={content} {knobs} fault={fault}]] Paris"
    async with sidecar_for(config) as sidecar:
        _, final = await answer(sidecar.url + CHAT, data=body(user(prompt)))
    kinds = valid(final)
    chunks = closed(final)
    assert kinds[-1] == "error"
    if content == "tool_use":
        assert kinds[-4:] == ["tool-input-start", "tool-input-delta", "tool-input-error", "error"]
        start, delta, error = chunks[-4:-1]
        assert error == {"type": "tool-input-error", "toolCallId": start["toolCallId"],
                         "toolName": "get_weather", "input": delta["inputTextDelta"],
                         "errorText": UNFINISHED_TOOL_INPUT}  # fmt: skip
        assert final["parts"][-1] == "tool-get_weather"
        assert final["states"][-1] == "output-error"
    else:
        assert kinds[-3:] == ["reasoning-delta", "reasoning-end", "error"]
        assert "done" in final["states"]


async def stopped_by_delete(fake: FakeServer, sidecar_for: SidecarFactory, turn: str) -> Line:
    """What the AI SDK made of `turn` stopped by a `DELETE` of its stream once Claude streams."""
    async with sidecar_for({**CONFIG, "resume": {"detach_grace_seconds": 30}}) as sidecar:
        async with script_lines("ui_schema.mjs", sidecar.url + CHAT, "POST", turn) as lines:
            (opened,) = await lines.until(lambda seen: len(seen) == 1)
            await eventually(lambda: holds(fake.state.open_streams == 1))
            async with aiohttp.ClientSession() as http:
                target = f"{sidecar.url}{CHAT}/{opened['streamId']}"
                async with http.delete(target) as response:
                    assert response.status == 204
            _, final = await lines.rest()
    return final


async def test_a_turn_cancelled_mid_tool_input_closes_the_tool_part(
    fake: FakeServer, sidecar_for: SidecarFactory
) -> None:
    """A turn the sidecar itself ends (here a `DELETE`; an idle timeout and shutdown end
    it the same way) while a tool call's input streams: `tool-input-error`, then `error`."""
    stalled = body(user("[[fake content=tool_use tokens=2 fault=stall_midstream after=3]] x"))
    final = await stopped_by_delete(fake, sidecar_for, stalled)
    closed(final)
    assert valid(final)[-2:] == ["tool-input-error", "error"]


async def test_an_answer_cut_at_max_tokens(fake: FakeServer, sidecar_for: SidecarFactory) -> None:
    async with sidecar_for({"ui": {"max_tokens": 4}}) as sidecar:
        _, final = await answer(sidecar.url + CHAT, data=body(user("[[fake tokens=20]]")))
    assert valid(final)[-1] == "finish"
    assert json.loads(final["raw"][-2])["finishReason"] == "length"


async def test_claude_refusing_before_the_stream_is_a_json_error_not_a_stream(
    fake: FakeServer, sidecar_for: SidecarFactory
) -> None:
    async with sidecar_for(CONFIG) as sidecar:
        answers = [
            await answer(sidecar.url + CHAT, data=body(user(f"[[fake fault={fault}]]")))
            for fault in ("rate_limit", "overloaded")
        ]
    for (opened, final), status in zip(answers, (429, 503), strict=True):
        assert opened["status"] == final["status"] == status
        assert opened["contentType"].startswith("application/json")
        assert json.loads(final["body"])["error"]["type"] in {"rate_limited", "overloaded"}


async def test_a_turn_stopped_by_delete_mid_stream(
    fake: FakeServer, sidecar_for: SidecarFactory
) -> None:
    long = body(user("[[fake tokens=400 tps=40]] go on"))
    final = await stopped_by_delete(fake, sidecar_for, long)
    assert valid(final)[-1] == "error"


async def test_a_dropped_turn_resumed_from_the_chats_stream(
    fake: FakeServer, sidecar_for: SidecarFactory
) -> None:
    async with sidecar_for({**CONFIG, "resume": {"detach_grace_seconds": 10}}) as sidecar:
        async with cutting_proxy(sidecar.port, after=6) as proxy:
            data = body(user(SLOW), chat_id="chat-cut").encode()
            cut = await sse_request(proxy.port, "POST", CHAT, {}, data)
        assert proxy.cut == 1
        _, resumed = await answer(f"{sidecar.url}{CHAT}/chat-cut/stream", "GET")
        # A client of its own resuming by cursor gets the tail, each chunk as valid.
        async with cutting_proxy(sidecar.port, after=6) as proxy:
            data = body(user(SLOW), chat_id="chat-tail").encode()
            tail_cut = await sse_request(proxy.port, "POST", CHAT, {}, data)
        _, tail = await answer(
            f"{sidecar.url}{CHAT}/chat-tail/stream?last_event_id={tail_cut.last_id}", "GET"
        )
    assert cut.stream_id
    chunks = valid(resumed)
    assert chunks[:3] == ["start", "start-step", "text-start"]
    assert chunks[-1] == "finish"
    assert valid(tail, whole=False)[-1] == "finish"


async def test_a_cached_replay_and_a_coalesced_follower(
    fake: FakeServer, sidecar_for: SidecarFactory
) -> None:
    for replay in ("instant", "paced"):
        config = {**CACHED, "cache": {**CACHED["cache"], "replay": replay}}
        async with sidecar_for(config) as sidecar:
            turn = body(user(f"the same question {replay} [[fake tokens=5]]"))
            _, first = await answer(sidecar.url + CHAT, data=turn)
            opened, again = await answer(sidecar.url + CHAT, data=turn)
        assert opened["cache"] == "HIT"
        assert valid(again) == valid(first)
    for prompt in (SLOW, "[[fake fault=midstream_error tokens=60 after=30 tps=20]] fail"):
        async with sidecar_for(CACHED) as sidecar:
            calls = fake.state.counters["requests"]
            turn = body(user(prompt))
            async with script_lines("ui_schema.mjs", sidecar.url + CHAT, "POST", turn) as lead:
                (led,) = await lead.until(lambda seen: len(seen) == 1)
                await eventually(lambda: holds(fake.state.open_streams == 1))
                opened, follower = await answer(sidecar.url + CHAT, data=turn)
                _, leader = await lead.rest()
            assert (led["cache"], opened["cache"]) == ("MISS", "HIT")
            assert fake.state.counters["requests"] == calls + 1
            assert valid(follower)[-1] == valid(leader)[-1]
            assert valid(follower)[0] == "start"


# Killed mid-part: the thinking block (5 deltas) after its second delta; the text after its
# third; the tool call's input (after 2 text deltas) after its first piece. Then the
# events stored: start, start-step, the part's start and its deltas (text-end and
# tool-input-start before the tool's).
KILLED_MID_PART = [
    ("thinking", "tokens=10 after=2", 5, "reasoning-end"),
    ("text", "tokens=40 after=3", 6, "text-end"),
    ("tool_use", "tokens=2 after=3", 8, "tool-input-error"),
]


@pytest.mark.parametrize(("content", "knobs", "stored", "closing"), KILLED_MID_PART)
async def test_a_resume_whose_producer_was_killed_closes_the_parts_it_left_open(
    fake: FakeServer,
    redis_server: RedisServer,
    tmp_path: Path,
    content: str,
    knobs: str,
    stored: int,
    closing: str,
) -> None:
    """The replica producing a turn is killed (SIGKILL: it writes no final event) with a
    part open; readers on another replica get the events it stored, then the part closed
    before `error` (as a live turn's end closes it), so the SDK keeps no part streaming:
    a reader from a cursor after the part's start, and then one from the start, which
    finds the final event the first stored (the chat's resume then has nothing left)."""
    config = {
        **CONFIG,
        "server": {"shutdown_grace_seconds": 1},
        "claude": {"base_url": fake.url, "api_key": "sk-sidecar"},
        "resume": {"store": "redis", "redis_url": redis_server.url, "detach_grace_seconds": 10},
    }
    prompt = f"[[fake content={content} {knobs} fault=stall_midstream]] Paris"
    redis = redis_client(redis_server.url, 2.0)
    async with (
        sidecar_process(config, tmp_path, name="producer") as producer,
        sidecar_process(config, tmp_path, name="reader") as reader,
    ):
        turn = asyncio.create_task(
            sse_request(
                port_of(producer), "POST", CHAT, {}, body(user(prompt), chat_id="chat-k").encode()
            )
        )

        async def streamed() -> str:
            named = await redis.keys("sidecar:resume:chat:*")
            value = await redis.get(named[0]) if named else None
            return value.decode() if isinstance(value, bytes) else ""

        async def stalled() -> bool:  # every event before the stall is in Redis
            stream_id = await streamed()
            return bool(stream_id) and int(await redis.xlen(keys(stream_id)[0])) >= stored

        try:
            await eventually(stalled)
            stream_id = await streamed()
        finally:
            await redis.aclose()
        producer.process.send_signal(signal.SIGKILL)
        await asyncio.to_thread(producer.process.wait, 10)
        cut = await turn
        tail = await sse_request(
            port_of(reader), target=CHAT, headers={"Last-Event-ID": f"{stream_id}:3"}
        )
        _, whole = await answer(f"{reader.url}{CHAT}?last_event_id={stream_id}:0", "GET")
        again = await sse_request(port_of(reader), target=f"{CHAT}/chat-k/stream")
    assert cut.stream_id == stream_id
    assert tail.status == 200
    tail_kinds = [e.data.get("type", e.data.get("done")) for e in tail.events]
    assert tail_kinds[-3:] == [closing, "error", "[DONE]"]  # the part opened before the cursor
    chunks = valid(whole)
    assert chunks[:2] == ["start", "start-step"]
    assert chunks[-2:] == [closing, "error"]
    parts = closed(whole)  # no part left open, none streaming in the SDK's message
    assert "producer stopped" in parts[-1]["errorText"]
    if content == "tool_use":
        start, delta, error = parts[-4:-1]
        assert error == {"type": "tool-input-error", "toolCallId": start["toolCallId"],
                         "toolName": "get_weather", "input": delta["inputTextDelta"],
                         "errorText": UNFINISHED_TOOL_INPUT}  # fmt: skip
        assert whole["states"][-1] == "output-error"
    assert again.status == 204  # the lost stream's final event is stored: nothing to resume


def port_of(running: SidecarProcess) -> int:
    return int(running.url.rsplit(":", 1)[1])
