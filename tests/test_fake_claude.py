"""The fake Claude's Models API, through the official SDK, directly and via the sidecar."""

from __future__ import annotations

import asyncio
import json
import re
from pathlib import Path
from typing import Any

import aiohttp
import anthropic
import pytest

from sidecar.fake_claude import FakeServer, FakeSettings, running_fake_claude
from sidecar.fake_claude.knobs import FAULTS, KNOB_NAMES
from sidecar.fake_claude.models import MODELS, ModelQueryError, model_page
from sidecar.fake_claude.reply import sign
from tests.support.sidecars import running_sidecar

IDS = [entry["id"] for entry in MODELS]
DOC = Path(__file__).resolve().parent.parent / "docs" / "fake-claude.md"


async def test_the_sdk_lists_and_retrieves_models_from_the_fake(fake: FakeServer) -> None:
    client = anthropic.AsyncAnthropic(base_url=fake.url, api_key="unused", max_retries=0)
    page = await client.models.list()
    assert [model.id for model in page.data] == IDS
    assert all(model.type == "model" and model.display_name for model in page.data)
    assert page.has_more is False
    every = [model.id async for model in await client.models.list(limit=1)]  # SDK paging
    assert every == IDS
    model = await client.models.retrieve("claude-sonnet-5-5")
    assert (model.id, model.display_name) == ("claude-sonnet-5-5", "Claude Sonnet 5.5")
    assert model.created_at.year == 2026
    with pytest.raises(anthropic.NotFoundError):
        await client.models.retrieve("claude-nonexistent")
    with pytest.raises(anthropic.BadRequestError):
        await client.models.list(limit=0)
    assert fake.state.requests[-1].path == "/v1/models"


async def test_the_fake_checks_the_key_on_models_too() -> None:
    async with running_fake_claude(FakeSettings(api_key="sk-right")) as fake:
        wrong = anthropic.AsyncAnthropic(base_url=fake.url, api_key="sk-wrong", max_retries=0)
        with pytest.raises(anthropic.AuthenticationError):
            await wrong.models.list()
        right = anthropic.AsyncAnthropic(base_url=fake.url, api_key="sk-right", max_retries=0)
        assert len((await right.models.list()).data) == len(IDS)


async def test_models_through_the_embedded_default() -> None:
    """A tool that lists models at start works against `sidecar run` with no config."""
    async with running_sidecar({"claude": {"base_url": "builtin:fake"}}) as sidecar:
        client = anthropic.AsyncAnthropic(base_url=sidecar.url, api_key="unused", max_retries=0)
        page = await client.models.list()
        assert [model.id for model in page.data] == IDS
        assert (await client.models.retrieve(IDS[0])).id == IDS[0]


def test_paging_follows_the_api() -> None:
    first = model_page({"limit": "2"})
    assert ([m["id"] for m in first["data"]], first["has_more"]) == (IDS[:2], True)
    assert (first["first_id"], first["last_id"]) == (IDS[0], IDS[1])
    rest = model_page({"after_id": IDS[1]})
    assert ([m["id"] for m in rest["data"]], rest["has_more"]) == (IDS[2:], False)
    before = model_page({"before_id": IDS[2], "limit": "1"})
    assert ([m["id"] for m in before["data"]], before["has_more"]) == ([IDS[1]], True)
    configured = model_page({}, extra="claude-custom-1")
    assert configured["data"][0]["id"] == "claude-custom-1"
    for bad in ({"limit": "x"}, {"limit": "1001"}, {"after_id": "nope"},
                {"after_id": IDS[0], "before_id": IDS[1]}):  # fmt: skip
        with pytest.raises(ModelQueryError):
            model_page(bad)


def test_the_docs_table_every_fault_and_knob() -> None:
    """docs/fake-claude.md lists exactly the faults and knobs the fake accepts."""
    text = DOC.read_text()
    faults_table = text.split("### Faults", 1)[1].split("### Knobs", 1)[0]
    knobs_table = text.split("### Knobs", 1)[1].split("\n## ", 1)[0]
    row = re.compile(r"^\| `([a-z_]+)` \|", re.M)
    assert set(row.findall(faults_table)) == FAULTS
    assert set(row.findall(knobs_table)) == KNOB_NAMES


def documented_faults() -> dict[str, tuple[str, str]]:
    """fault -> (prompt route cell, anthropic route cell) of the docs' fault table."""
    table = DOC.read_text().split("### Faults", 1)[1].split("### Knobs", 1)[0]
    rows = {}
    for line in table.splitlines():
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if len(cells) == 4 and cells[0].startswith("`") and cells[0] != "`fault`":
            rows[cells[0].strip("`")] = (cells[2], cells[3])
    return rows


async def test_faults_reach_clients_as_the_docs_say() -> None:
    """Each fault through the sidecar, on both Claude routes: the status the table names,
    or for stream faults a 200 whose stream ends in an error event."""
    config = {"claude": {"base_url": "builtin:fake", "max_retries": 1,
                         "retry_base_seconds": 0.01, "idle_timeout_seconds": 1,
                         "fake": {"tokens_per_second": 0, "time_to_first_token_ms": 0}}}  # fmt: skip
    rows = documented_faults()
    assert set(rows) == FAULTS
    async with running_sidecar(config) as sidecar, aiohttp.ClientSession() as http:
        for fault, cells in rows.items():
            text = f"hi [[fake fault={fault} tokens=6 delay_ms=50]]"
            prompt = http.post(sidecar.url + "/api/stream-response", json={"prompt": text})
            messages = http.post(
                sidecar.url + "/v1/messages",
                json={"model": "claude-sonnet-5-5", "max_tokens": 16, "stream": True,
                      "messages": [{"role": "user", "content": text}]},
            )  # fmt: skip
            for request, cell in zip((prompt, messages), cells, strict=True):
                async with request as response:
                    body = await response.read()
                status = re.match(r"(\d{3})\b", cell)
                if status is not None:
                    assert response.status == int(status[1]), (fault, cell)
                elif fault == "slow_headers":
                    assert response.status == 200
                    assert b"error" not in body, fault
                else:  # a stream that breaks: 200, then an error event
                    assert response.status == 200, (fault, cell)
                    assert b'"error"' in body.rsplit(b"\n\n", 2)[-2], (fault, body[-200:])


@pytest.mark.parametrize(
    "fault", ["midstream_error", "drop", "stall", "stall_before_start", "stall_midstream"]
)
async def test_fail_times_limits_stream_faults_too(fault: str) -> None:
    """`fail_times`/`fail_key` spend a stream fault as they spend an error status: the
    first N requests with the key break, the next ones stream whole."""
    settings = FakeSettings(tokens=4)
    text = f"q [[fake fault={fault} after=2 fail_times=1 fail_key=k-{fault}]]"
    body = {"model": "claude-sonnet-5-5", "max_tokens": 16, "stream": True,
            "messages": [{"role": "user", "content": text}]}  # fmt: skip
    async with running_fake_claude(settings) as fake, aiohttp.ClientSession() as http:
        ended = []
        for _ in range(3):
            try:
                async with asyncio.timeout(0.5):
                    async with http.post(fake.url + "/v1/messages", json=body) as response:
                        ended.append(b"message_stop" in await response.read())
            except (TimeoutError, aiohttp.ClientPayloadError):
                ended.append(False)
    assert ended == [False, True, True]


async def test_a_release_ends_the_stalls_begun_before_it(fake: FakeServer) -> None:
    """`POST /_fake/release`: stalled replies (streaming or not) go on to their end."""
    stalled = {
        "model": "claude-sonnet-5-5", "max_tokens": 20, "stream": True,
        "messages": [{"role": "user", "content": "[[fake fault=stall tokens=3]] hi"}],
    }  # fmt: skip
    async with aiohttp.ClientSession() as session:
        response = await session.post(fake.url + "/v1/messages", json=stalled)
        assert b"message_start" in await response.content.readline()
        plain = asyncio.create_task(
            session.post(fake.url + "/v1/messages", json={**stalled, "stream": False})
        )
        await fake.state.wait_for(lambda state: state.counters["faults_stall"] == 2)
        async with session.post(fake.url + "/_fake/release") as released:
            assert (await released.json()) == {"releases": 1}
        rest = await asyncio.wait_for(response.read(), 10)
        assert b"event: message_stop" in rest
        answer = await asyncio.wait_for(plain, 10)
        assert answer.status == 200
        assert (await answer.json())["stop_reason"] == "end_turn"
        await fake.state.wait_for(lambda state: state.open_streams == 0)
    assert fake.state.stats()["streams_completed"] == 1


def stalled(after: int) -> dict[str, Any]:
    """A streamed request whose reply stalls after `after` deltas."""
    text = f"[[fake fault=stall_midstream after={after}]]"
    return {"model": "claude-sonnet-5-5", "max_tokens": 20, "stream": True,
            "messages": [{"role": "user", "content": text}]}  # fmt: skip


async def test_a_midstream_stall_holds_after_its_deltas_until_a_release(fake: FakeServer) -> None:
    """`stall_midstream`: `after` deltas reach the client, then nothing until a release;
    the reply then goes on to its end, every delta sent once."""
    async with aiohttp.ClientSession() as session:
        async with session.post(fake.url + "/v1/messages", json=stalled(2)) as response:
            seen = b""
            while seen.count(b"event: content_block_delta") < 2:
                seen += await asyncio.wait_for(response.content.readuntil(b"\n\n"), 10)
            (record,) = fake.state.streams.values()
            assert record.events.count("content_block_delta") == 2
            assert record.outcome == "open"
            async with session.post(fake.url + "/_fake/release") as released:
                assert released.status == 200
            seen += await asyncio.wait_for(response.content.read(), 10)
    assert seen.count(b"event: content_block_delta") == 12
    assert seen.endswith(b'event: message_stop\ndata: {"type":"message_stop"}\n\n')
    assert fake.state.stats()["streams_completed"] == 1


async def test_a_client_that_leaves_a_midstream_stall_cancels_the_stream(fake: FakeServer) -> None:
    async with aiohttp.ClientSession() as session:
        async with session.post(fake.url + "/v1/messages", json=stalled(1)) as response:
            async with asyncio.timeout(10):
                while b"content_block_delta" not in await response.content.readuntil(b"\n\n"):
                    pass
            response.close()
        await fake.state.wait_for(lambda state: state.counters["streams_cancelled"] == 1)
    (record,) = fake.state.streams.values()
    assert (record.outcome, record.events.count("content_block_delta")) == ("cancelled", 1)


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
