"""The prompt route over real sockets: event shapes, multi-turn, errors and every bad input."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import aiohttp
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st
from yarl import URL

from sidecar import deltas
from sidecar.fake_claude import FakeServer
from sidecar.fake_claude.reply import Block, Reply, encode_events
from sidecar.handlers.prompt import PromptTranslator
from sidecar.record import StreamRecord
from sidecar.stream.core import StopStream, StreamCore
from sidecar.stream.store import StreamLog
from tests.support.claude_streams import chunked, claude_streams, decoded, relayed, respaced
from tests.support.metrics import counts
from tests.support.sidecars import SidecarFactory

ROUTE = "/api/stream-response"
RECORD = StreamRecord(request_id="req_1", route=ROUTE, started=0.0)


def data_of(raw: bytes) -> list[dict[str, Any]]:
    """The JSON `data:` payload of every event (comments skipped)."""
    events = []
    for block in raw.decode().strip().split("\n\n"):
        for line in block.split("\n"):
            if line.startswith("data: "):
                events.append(json.loads(line[6:]))
    return events


async def stream(sidecar_url: str, body: dict[str, Any]) -> tuple[int, bytes]:
    async with aiohttp.ClientSession() as http:
        async with http.post(sidecar_url + ROUTE, json=body) as response:
            return response.status, await response.read()


async def test_tokens_then_done_with_usage_and_ids(sidecar_for: SidecarFactory) -> None:
    async with sidecar_for() as sidecar:
        status, raw = await stream(sidecar.url, {"prompt": "hello there", "max_tokens": 64})
    assert status == 200
    blocks = raw.decode().strip().split("\n\n")
    ids = [b.split("\n")[0][4:].rpartition(":") for b in blocks if b.startswith("id: ")]
    assert len({stream_id for stream_id, _, _ in ids}) == 1  # one stream id, unguessable
    assert len(ids[0][0]) >= 22
    # One id per token (12 from the fake) and one for `done`: every event can be resumed from.
    assert [int(n) for _, _, n in ids] == list(range(1, 14))
    events = data_of(raw)
    assert all("token" in e for e in events[:-1])
    assert "".join(e["token"] for e in events[:-1]).strip()
    done = events[-1]
    assert done["done"] is True
    assert done["stop_reason"] == "end_turn"
    assert done["usage"]["output_tokens"] == 12
    assert done["usage"]["input_tokens"] > 0
    assert set(done["usage"]) == {
        "input_tokens", "output_tokens", "cache_creation_input_tokens", "cache_read_input_tokens"
    }  # fmt: skip


async def test_tool_use_and_thinking_have_their_own_events(sidecar_for: SidecarFactory) -> None:
    async with sidecar_for() as sidecar:
        _, tool_raw = await stream(sidecar.url, {"prompt": "[[fake content=tool_use]] weather"})
        _, think_raw = await stream(sidecar.url, {"prompt": "[[fake content=thinking]] hmm"})
    tool = data_of(tool_raw)
    starts = [e["tool_use"] for e in tool if "tool_use" in e]
    assert len(starts) == 1
    assert starts[0]["id"].startswith("toolu_")
    assert starts[0]["name"]
    partial = "".join(e["tool_input"] for e in tool if "tool_input" in e)
    assert isinstance(json.loads(partial), dict)
    assert tool[-1]["stop_reason"] == "tool_use"
    thinking = data_of(think_raw)
    assert any("thinking" in e and e["thinking"] for e in thinking)
    assert any("token" in e for e in thinking)
    assert thinking[-1]["done"] is True


@pytest.mark.parametrize("capture", [False, True], ids=["reused", "decoded"])
@pytest.mark.parametrize("content", ["web_search", "web_search_error"])
async def test_a_server_tools_input_is_not_shown_as_a_tool_call_of_the_page(
    sidecar_for: SidecarFactory, capture: bool, content: str
) -> None:
    # Claude runs a server tool (web search) itself: no `tool_use` announces it, so its
    # input deltas must not show up as `tool_input` of a call the page never saw start.
    async with sidecar_for({"telemetry": {"capture_content": capture}}) as sidecar:
        status, raw = await stream(sidecar.url, {"prompt": f"[[fake content={content}]] news"})
    assert status == 200
    events = data_of(raw)
    assert [e for e in events if "tool_input" in e or "tool_use" in e] == []
    assert any("token" in e for e in events)
    assert events[-1]["done"] is True
    ids = [b.split("\n")[0] for b in raw.decode().strip().split("\n\n") if b.startswith("id: ")]
    assert [i.rpartition(":")[2] for i in ids] == [str(n) for n in range(1, len(events) + 1)]


async def test_multi_turn_history_and_system_reach_claude(
    fake: FakeServer, sidecar_for: SidecarFactory
) -> None:
    history = [
        {"role": "user", "content": "first question"},
        {"role": "assistant", "content": [{"type": "text", "text": "first answer"}]},
    ]
    body = {"prompt": "second question", "system": "be brief", "messages": history,
            "model": "claude-haiku-5-5", "max_tokens": 7}  # fmt: skip
    async with sidecar_for() as sidecar:
        status, _ = await stream(sidecar.url, body)
    assert status == 200
    sent = fake.state.requests[-1]["body"]
    assert sent["messages"] == [*history, {"role": "user", "content": "second question"}]
    assert sent["system"] == "be brief"
    assert sent["model"] == "claude-haiku-5-5"
    assert sent["max_tokens"] == 7
    assert sent["stream"] is True


async def test_an_optional_field_given_as_null_is_not_given(
    fake: FakeServer, sidecar_for: SidecarFactory
) -> None:
    """`null` for `model`, `max_tokens`, `system` or `messages` means its default, for each
    alike (a client that writes an unset option as `null`), not a 400 that says a field
    given is missing."""
    body = {"prompt": "hi", "model": None, "max_tokens": None, "system": None, "messages": None}
    async with sidecar_for() as sidecar:
        status, _ = await stream(sidecar.url, body)
    assert status == 200
    sent = fake.state.requests[-1]["body"]
    assert (sent["model"], sent["max_tokens"]) == ("claude-sonnet-5-5", 1024)
    assert sent["messages"] == [{"role": "user", "content": "hi"}]
    assert "system" not in sent


async def test_get_for_event_source(sidecar_for: SidecarFactory) -> None:
    async with sidecar_for() as sidecar, aiohttp.ClientSession() as http:
        async with http.get(sidecar.url + ROUTE, params={"prompt": "hi", "max_tokens": "5"}) as r:
            assert r.status == 200
            assert r.headers["Content-Type"] == "text/event-stream; charset=utf-8"
            raw = await r.read()
    assert data_of(raw)[-1]["done"] is True


async def test_midstream_error_is_a_final_error_event(sidecar_for: SidecarFactory) -> None:
    async with sidecar_for() as sidecar:
        status, raw = await stream(sidecar.url, {"prompt": "[[fake fault=midstream_error]]"})
    assert status == 200
    events = data_of(raw)
    assert [e for e in events if "token" in e]  # tokens came first
    assert events[-1] == {"error": {"type": "overloaded", "message": "Overloaded"}}
    assert not any("done" in e for e in events)


async def test_dropped_upstream_connection_is_an_error_event(sidecar_for: SidecarFactory) -> None:
    async with sidecar_for() as sidecar:
        _, raw = await stream(sidecar.url, {"prompt": "[[fake fault=drop after=2]]"})
    last = data_of(raw)[-1]
    assert last["error"]["type"] == "upstream_error"


@pytest.mark.parametrize(
    ("fault", "status", "kind"),
    [("bad_request", 400, "invalid_request"), ("overloaded", 503, "overloaded"),
     ("rate_limit", 429, "rate_limited")],
)  # fmt: skip
async def test_upstream_errors_before_the_stream_use_the_prompt_shape(
    sidecar_for: SidecarFactory, fault: str, status: int, kind: str
) -> None:
    async with sidecar_for({"claude": {"max_retries": 0}}) as sidecar:
        got, raw = await stream(sidecar.url, {"prompt": f"[[fake fault={fault} retry_after=3]]"})
    assert got == status
    body = json.loads(raw)
    assert body["error"]["type"] == kind
    assert body["error"]["message"]


BAD_BODIES: list[tuple[Any, str]] = [
    ({}, "prompt is required"),
    ({"prompt": ""}, "must not be empty"),
    ({"prompt": "   "}, "must not be empty"),
    ({"prompt": 5}, "prompt is required and must be a string"),
    ({"prompt": ["a"]}, "must be a string"),
    ({"prompt": "x", "max_tokens": 0}, "max_tokens must be a positive integer"),
    ({"prompt": "x", "max_tokens": "many"}, "max_tokens must be a positive integer"),
    ({"prompt": "x", "max_tokens": True}, "max_tokens must be a positive integer"),
    ({"prompt": "x", "max_tokens": "64"}, "max_tokens must be a positive integer"),
    ({"prompt": "x", "max_tokens": 64.0}, "max_tokens must be a positive integer"),
    ({"prompt": "x", "model": 3}, "model must be a non-empty string"),
    ({"prompt": "x", "system": 3}, "system must be a string"),
    ({"prompt": "x", "messages": "hi"}, "messages must be a list"),
    ({"prompt": "x", "messages": [{"role": "tool", "content": "x"}]}, "messages.0"),
    ({"prompt": "x", "messages": [{"role": "user", "content": ""}]}, "messages.0.content"),
    ({"prompt": "x", "temperature": 1}, "unknown fields: temperature"),
    (
        {"prompt": "x", **{f"k{i:04}" + "z" * 90: 1 for i in range(2000)}},
        "unknown fields: 'k0000" + "z" * 59 + "', ",
    ),
    ([1, 2], "must be a JSON object"),
]


async def test_every_bad_body_is_a_clear_400_and_claude_is_not_called(
    fake: FakeServer, sidecar_for: SidecarFactory
) -> None:
    async with sidecar_for() as sidecar, aiohttp.ClientSession() as http:
        for body, reason in BAD_BODIES:
            async with http.post(sidecar.url + ROUTE, json=body) as response:
                assert response.status == 400, body
                error = (await response.json())["error"]
                assert error["type"] == "invalid_request"
                assert reason in error["message"], (body, error)
                assert len(error["message"]) < 1000  # a client's field names: bounded
                assert response.headers["X-Request-Id"]
        for raw, reason in ((b"{not json", "not valid JSON"), (b"\xff\xfe", "not UTF-8")):
            headers = {"Content-Type": "application/json"}
            async with http.post(sidecar.url + ROUTE, data=raw, headers=headers) as response:
                assert response.status == 400
                assert reason in (await response.json())["error"]["message"]
    assert not fake.state.requests


async def test_wrong_content_type_size_and_method(
    fake: FakeServer, sidecar_for: SidecarFactory
) -> None:
    async with sidecar_for({"server": {"max_body_bytes": 2048}}) as sidecar:
        async with aiohttp.ClientSession() as http:
            url = sidecar.url + ROUTE
            async with http.post(
                url, data="prompt=hi", headers={"Content-Type": "text/plain"}
            ) as r:
                assert r.status == 415
                assert (await r.json())["error"]["type"] == "unsupported_media_type"
            async with http.post(url, json={"prompt": "x" * 4096}) as r:
                assert r.status == 413
                assert (await r.json())["error"]["type"] == "request_too_large"
            async with http.put(url, json={"prompt": "x"}) as r:
                assert r.status == 405
                assert "GET" in r.headers["Allow"]
            async with http.get(url) as r:
                assert r.status == 400
    assert not fake.state.requests


async def test_model_allow_list(fake: FakeServer, sidecar_for: SidecarFactory) -> None:
    config = {"claude": {"allowed_models": ["claude-sonnet-5-5"]}}
    async with sidecar_for(config) as sidecar:
        status, raw = await stream(sidecar.url, {"prompt": "x", "model": "claude-opus-5-5"})
        assert status == 400
        assert "claude-opus-5-5" in json.loads(raw)["error"]["message"]
        assert not fake.state.requests
        status, _ = await stream(sidecar.url, {"prompt": "x", "model": "claude-sonnet-5-5"})
        assert status == 200


TRICKY = ["Hello", 'he said "hi" \\ ', "\u2028 line sep, emoji \U0001f389", "tab\tand\nnewline", ""]


def announced(translator: PromptTranslator, kind: str, index: int) -> int:
    """For a tool input delta, first the `tool_use` start of its block (a tool input is
    shown only for a call the page saw start); the number of events that took."""
    if kind != "input_json_delta":
        return 0
    start = {"type": "content_block_start", "index": index,
             "content_block": {"type": "tool_use", "id": "toolu_1", "name": "f", "input": {}}}  # fmt: skip
    block = b"event: content_block_start\ndata: " + json.dumps(start).encode()
    assert translator.translate(block, b"content_block_start", RECORD)
    return 1


@pytest.mark.parametrize("ensure_ascii", [True, False])
@pytest.mark.parametrize(
    ("kind", "field", "key"),
    [("text_delta", "text", "token"), ("thinking_delta", "thinking", "thinking"),
     ("input_json_delta", "partial_json", "tool_input")],
)  # fmt: skip
def test_delta_events_reuse_claudes_json_string_and_match_the_decoding_path(
    ensure_ascii: bool, kind: str, field: str, key: str
) -> None:
    for text in TRICKY:
        payload = {"type": "content_block_delta", "index": 2, "delta": {"type": kind, field: text}}
        data = json.dumps(payload, separators=(",", ":"), ensure_ascii=ensure_ascii)
        block = b"event: content_block_delta\ndata: " + data.encode()
        assert deltas.DELTA.match(block) is not None  # the no-decoding path is taken
        fast_translator, slow_translator = (
            PromptTranslator(capture=False),
            PromptTranslator(capture=True),
        )
        n = announced(fast_translator, kind, 2) + 1
        announced(slow_translator, kind, 2)
        fast = fast_translator.translate(block, b"content_block_delta", RECORD)
        slow = slow_translator.translate(block, b"content_block_delta", RECORD)
        assert fast.startswith(b"id: %d\ndata: " % n)
        assert fast.endswith(b"\n\n")
        assert data_of(fast) == data_of(slow) == [{key: text}]


KINDS = [("text_delta", "text", "token"), ("thinking_delta", "thinking", "thinking"),
         ("input_json_delta", "partial_json", "tool_input")]  # fmt: skip


@settings(max_examples=300, deadline=None)
@given(st.text(), st.sampled_from(KINDS), st.booleans(), st.booleans(), st.integers(0, 12))
@example('\u2028 "q" \\ \n \x00 \U0001f389 é', KINDS[0], True, True, 0)
def test_a_delta_event_is_the_decoding_paths_event_without_decoding(
    text: str, kind: tuple[str, str, str], ensure_ascii: bool, numbered: bool, index: int
) -> None:
    """The event is Claude's string literal in the route's frame: byte for byte the decoding
    path's event when Claude escapes like `json.dumps` (ASCII), the same JSON otherwise."""
    payload = {
        "type": "content_block_delta",
        "index": index,
        "delta": {"type": kind[0], kind[1]: text},
    }
    data = json.dumps(payload, separators=(",", ":"), ensure_ascii=ensure_ascii)
    block = b"event: content_block_delta\ndata: " + data.encode()
    # `numbered`: not resumable (`id: 1`); else a resumable stream's (`id: <stream id>:1`).
    fast = PromptTranslator(capture=False, log=None if numbered else StreamLog("S", "o", 1 << 20))
    slow = PromptTranslator(capture=True, log=None if numbered else StreamLog("S", "o", 1 << 20))
    n = announced(fast, kind[0], index) + 1
    announced(slow, kind[0], index)
    once = fast.translate(block, b"content_block_delta", RECORD)
    literal = json.dumps(text, ensure_ascii=ensure_ascii).encode()
    frame = b'id: %d\ndata: {"%%b":%%b}\n\n' if numbered else b'id: S:%d\ndata: {"%%b":%%b}\n\n'
    frame %= n
    assert once == frame.replace(b"%b", kind[2].encode(), 1).replace(b"%b", literal)
    decoded = slow.translate(block, b"content_block_delta", RECORD)
    if ensure_ascii:
        assert once == decoded
    assert data_of(once) == data_of(decoded) == [{kind[2]: text}]


pieces = st.lists(st.text(min_size=1, max_size=12), min_size=1, max_size=8)


@settings(max_examples=60, deadline=None)
@given(pieces, pieces, pieces)
def test_the_fakes_whole_stream_translates_as_the_decoding_path_does(
    thoughts: list[str], words: list[str], tool_input: list[str]
) -> None:
    """Claude's bytes as the fake writes them (thinking, text, tool use, usage) through the
    stream core: every event the same JSON as with every event decoded."""
    reply = Reply("msg_1", "claude-sonnet-5-5", 3, [
        Block("thinking", {"type": "thinking", "thinking": "", "signature": ""}, thoughts),
        Block("text", {"type": "text", "text": ""}, words),
        Block("tool_use", {"type": "tool_use", "id": "toolu_1", "name": "f", "input": {}},
              tool_input),
    ])  # fmt: skip
    upstream = b"".join(data for _, data, _ in encode_events(reply))
    outputs = []
    for capture in (False, True):
        record = StreamRecord(request_id="req_1", route=ROUTE, started=0.0, capture=capture)
        core = StreamCore(record, PromptTranslator(capture=capture))
        outputs.append(core.feed(upstream) + core.end(None))
    assert data_of(outputs[0]) == data_of(outputs[1]) == [
        *({"thinking": piece} for piece in thoughts),
        *({"token": piece} for piece in words),
        {"tool_use": {"id": "toolu_1", "name": "f"}},
        *({"tool_input": piece} for piece in tool_input),
        {"done": True, "stop_reason": "end_turn", "usage": {
            "input_tokens": 3, "output_tokens": len(thoughts) + len(words) + len(tool_input),
            "cache_creation_input_tokens": 0, "cache_read_input_tokens": 0}},
    ]  # fmt: skip


def test_other_delta_shapes_are_decoded() -> None:
    spaced = b'event: content_block_delta\ndata: {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "hi"}}'
    extra = b'event: content_block_delta\ndata: {"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"hi","x":1}}'
    for block in (spaced, extra):
        assert deltas.DELTA.match(block) is None
        out = PromptTranslator(capture=False).translate(block, b"content_block_delta", RECORD)
        assert data_of(out) == [{"token": "hi"}]


async def test_an_event_source_reconnect_is_told_to_stop_not_charged_again(
    fake: FakeServer, sidecar_for: SidecarFactory
) -> None:
    # The second answer has no content events (no text, thinking or tool use): only its
    # final event can give the browser an id to reconnect with.
    prompts = ("hi", "hi [[fake tokens=0]]")
    for resumable in (True, False):
        async with (
            sidecar_for({"resume": {"enabled": resumable}}) as sidecar,
            aiohttp.ClientSession() as http,
        ):
            url = sidecar.url + ROUTE
            for prompt in prompts:
                async with http.get(url, params={"prompt": prompt}) as first:
                    raw = await first.read()
                    assert data_of(raw)[-1]["done"] is True
                ids = [line[4:] for line in raw.decode().split("\n") if line.startswith("id: ")]
                # The browser reconnects by itself once the stream closes, with the last id
                # it saw (none: no Last-Event-ID, a new request).
                headers = {"Last-Event-ID": ids[-1]} if ids else {}
                async with http.get(url, params={"prompt": prompt}, headers=headers) as r:
                    assert r.status == 204  # EventSource stops on 204
                    assert r.headers["X-Request-Id"]
    # One per prompt per sidecar: no reconnect re-ran it.
    assert fake.state.counters["requests"] == 2 * len(prompts)


@pytest.mark.parametrize(
    "query",
    ["prompt=%FF", "prompt=caf%C3", "prompt=hi&system=%ED%A0%80", "prompt=hi&model=%FF"],
    ids=["not_utf8", "cut_short", "escaped_surrogate", "in_another_field"],
)
async def test_a_query_string_that_is_no_utf8_is_a_400_as_a_body_that_is_no_utf8_is(
    fake: FakeServer, sidecar_for: SidecarFactory, query: str
) -> None:
    """`?prompt=%FF` would reach Claude as U+FFFD, a prompt the client never wrote: refused
    (and counted) as a JSON body that is not UTF-8 is. UTF-8 escapes are the text they spell."""
    async with sidecar_for() as sidecar, aiohttp.ClientSession() as http:
        async with http.get(URL(f"{sidecar.url}{ROUTE}?{query}", encoded=True)) as response:
            status, error = response.status, (await response.json())["error"]
        async with http.get(sidecar.url + ROUTE + "?prompt=caf%C3%A9") as response:
            assert response.status == 200
            await response.read()
        async with http.get(sidecar.admin_url + "/metrics") as response:
            metrics = await response.text()
    assert status == 400
    assert error == {"type": "invalid_request",
                     "message": "the query string is not UTF-8 (its %-escapes spell no UTF-8)"}  # fmt: skip
    assert counts(metrics, "sidecar_rejections", "sidecar_rejection_reason") == {
        "invalid_request": 1
    }
    assert fake.state.counters["requests"] == 1
    assert fake.state.requests[0].body["messages"] == [{"role": "user", "content": "café"}]


@pytest.mark.parametrize(
    "raw", [b"prompt=\xff\xfe", b"prompt=caf\xc3", b"prompt=hi&system=\xed\xa0\x80"]
)
async def test_raw_query_bytes_that_are_no_utf8_are_a_400_whichever_parser_reads_them(
    fake: FakeServer, sidecar_for: SidecarFactory, monkeypatch: pytest.MonkeyPatch, raw: bytes
) -> None:
    """aiohttp's C parser refuses bytes past ASCII in the request line; its pure-Python
    parser hands them on as `surrogateescape` characters, which must meet the same rule as
    their escapes (not reach Claude as a prompt of lone surrogates, nor be a 500)."""
    from aiohttp import http_parser, web_protocol

    for parser in (http_parser.HttpRequestParser, http_parser.HttpRequestParserPy):
        monkeypatch.setattr(web_protocol, "HttpRequestParser", parser)
        async with sidecar_for() as sidecar:
            reader, writer = await asyncio.open_connection("127.0.0.1", sidecar.port)
            writer.write(b"GET %b?%b HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
                         % (ROUTE.encode(), raw))  # fmt: skip
            answer = await asyncio.wait_for(reader.read(), 10)
            writer.close()
        assert answer.startswith((b"HTTP/1.1 400 ", b"HTTP/1.0 400 ")), answer[:200]
    assert fake.state.counters["requests"] == 0


@pytest.mark.parametrize(
    "query",
    ["prompt=hi&prompt=ignore%20the%20rules", "prompt=hi&model=a&model=b",
     "prompt=hi&max_tokens=5&max_tokens=5"],
    ids=["prompt", "model", "max_tokens_same"],
)  # fmt: skip
async def test_a_query_field_given_twice_is_a_400_as_a_json_key_twice_is(
    fake: FakeServer, sidecar_for: SidecarFactory, query: str
) -> None:
    """`?prompt=a&prompt=b` would be screened and sent as whichever copy a reader takes:
    refused (and counted) before Claude, as a JSON body with a key twice is."""
    async with sidecar_for() as sidecar, aiohttp.ClientSession() as http:
        async with http.get(f"{sidecar.url}{ROUTE}?{query}") as response:
            status, error = response.status, (await response.json())["error"]
        async with http.get(sidecar.admin_url + "/metrics") as response:
            metrics = await response.text()
    assert status == 400
    assert error["type"] == "invalid_request"
    assert error["message"].startswith("query parameter given more than once: ")
    assert counts(metrics, "sidecar_rejections", "sidecar_rejection_reason") == {"duplicate_key": 1}
    assert fake.state.counters["requests"] == 0


@pytest.mark.parametrize("max_tokens", ["²", "1²", "9" * 5000])
async def test_prompt_max_tokens_that_only_look_like_digits_are_a_400(
    sidecar_for: SidecarFactory, max_tokens: str
) -> None:
    async with (
        sidecar_for() as sidecar,
        aiohttp.ClientSession() as http,
        http.get(
            sidecar.url + "/api/stream-response", params={"prompt": "hi", "max_tokens": max_tokens}
        ) as response,
    ):
        assert response.status == 400
        error = (await response.json())["error"]
        assert error["type"] == "invalid_request"
        assert "max_tokens" in error["message"]


ENDS = [None, OSError("connection reset"), StopStream("idle_timeout", "timeout_error", "idle")]


@settings(max_examples=200, deadline=None)
@given(claude_streams().flatmap(chunked), st.sampled_from(ENDS), st.booleans(), st.booleans())
def test_deltas_carried_over_as_bytes_mean_what_decoding_them_would(
    chunks: list[bytes], end: BaseException | None, resumable: bool, capture: bool
) -> None:
    """Over generated Claude streams (tricky strings, tool and thinking blocks, pings, errors,
    cuts, any reads): the events, resume ids and accounting of the compact path (a delta's
    string literal carried over as bytes) are those of the decoding path, which the same
    stream spelled with spaces takes for every delta."""

    def make(log: StreamLog | None) -> PromptTranslator:
        return PromptTranslator(capture=capture, log=log)

    carried = relayed(make, chunks, end, resumable, capture)
    decoding = relayed(make, respaced(chunks), end, resumable, capture)
    assert decoded(carried) == decoded(decoding)


def test_a_stream_id_is_written_as_it_is_in_the_token_events_template() -> None:
    """The prefix goes into a per-stream format template: a `%` in it stays a `%`."""
    log = StreamLog("a%db%%", "owner", 1 << 20)
    translator = PromptTranslator(capture=False, log=log)
    block = b'event: content_block_delta\ndata: {"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"hi"}}'
    assert translator.translate(block, b"content_block_delta", RECORD) == (
        b'id: a%db%%:1\ndata: {"token":"hi"}\n\n'
    )
    assert log.numbered == 1


async def test_an_announced_stream_opens_with_an_id_only_block(
    sidecar_for: SidecarFactory,
) -> None:
    """`resume.announce_stream_id`: with the head, an id-only block naming event 0 (no
    event: it has no data), so an `EventSource` cut before the first token resumes instead
    of calling Claude again; off by default (above: the first id is event 1)."""
    async with sidecar_for({"resume": {"announce_stream_id": True}}) as sidecar:
        status, raw = await stream(sidecar.url, {"prompt": "hello there", "max_tokens": 64})
    assert status == 200
    blocks = raw.decode().strip().split("\n\n")
    ids = [b.split("\n")[0][4:].rpartition(":") for b in blocks if b.startswith("id: ")]
    assert blocks[0] == f"id: {ids[0][0]}:0"
    assert [int(n) for _, _, n in ids] == list(range(14))
    assert len(data_of(raw)) == 13  # the block is no event
