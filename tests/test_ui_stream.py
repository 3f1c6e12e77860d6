"""Claude's events → UI message stream chunks: tables, no sockets."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from sidecar import deltas
from sidecar.handlers.ui_stream import (
    DONE,
    UNFINISHED_TOOL_INPUT,
    UiTranslator,
    chunk,
    closing_chunks,
    finish_reason,
)
from sidecar.record import StreamRecord
from sidecar.sse import event_name
from sidecar.stream.core import StopStream
from sidecar.stream.hub import Generation
from sidecar.stream.store import StreamLog
from tests.support.claude_streams import chunked, claude_streams, decoded, relayed, respaced


def block(name: str, data: dict[str, Any], *, compact: bool = True) -> bytes:
    """One upstream event block as Anthropic writes it (compact JSON), or spaced."""
    separators = (",", ":") if compact else (", ", ": ")
    return f"event: {name}\ndata: {json.dumps(data, separators=separators)}".encode()


def record(stop_reason: str | None = "end_turn") -> StreamRecord:
    new = StreamRecord(request_id="r", route="/api/chat", started=0.0)
    new.stop_reason = stop_reason
    return new


def chunks(out: bytes) -> list[Any]:
    """The chunks of translated bytes, `[DONE]` as the string."""
    events = [event for event in out.decode().split("\n\n") if event]
    parsed: list[Any] = []
    for event in events:
        assert event.startswith("data: ")
        data = event[6:]
        parsed.append(data if data == "[DONE]" else json.loads(data))
    return parsed


def run(blocks: list[bytes], stop_reason: str | None = "end_turn") -> list[Any]:
    translator = UiTranslator()
    rec = record(stop_reason)
    out = b"".join(translator.translate(b, event_name(b), rec) for b in blocks)
    return chunks(out + translator.finish(rec))


def start(index: int, content: dict[str, Any]) -> bytes:
    return block("content_block_start", {"type": "content_block_start", "index": index,
                                         "content_block": content})  # fmt: skip


def delta(index: int, kind: str, field: str, value: str, *, compact: bool = True) -> bytes:
    return block("content_block_delta", {"type": "content_block_delta", "index": index,
                                         "delta": {"type": kind, field: value}}, compact=compact)  # fmt: skip


def stop(index: int) -> bytes:
    return block("content_block_stop", {"type": "content_block_stop", "index": index})


MESSAGE_START = block("message_start", {"type": "message_start", "message": {"id": "msg_1"}})
HEAD = [{"type": "start"}, {"type": "start-step"}]  # no messageId: the client keeps its own


def tail(reason: str) -> list[Any]:
    return [{"type": "finish-step"}, {"type": "finish", "finishReason": reason}, "[DONE]"]


def test_text_turn() -> None:
    got = run([MESSAGE_START, start(0, {"type": "text", "text": ""}),
               delta(0, "text_delta", "text", "Hel"), delta(0, "text_delta", "text", 'lo "you"\n'),
               stop(0), block("message_delta", {"type": "message_delta"}),
               block("message_stop", {"type": "message_stop"})])  # fmt: skip
    assert got == [*HEAD, {"type": "text-start", "id": "0"},
                   {"type": "text-delta", "id": "0", "delta": "Hel"},
                   {"type": "text-delta", "id": "0", "delta": 'lo "you"\n'},
                   {"type": "text-end", "id": "0"}, *tail("stop")]  # fmt: skip


def test_reasoning_then_text_then_a_tool_call() -> None:
    got = run([MESSAGE_START, start(0, {"type": "thinking", "thinking": ""}),
               delta(0, "thinking_delta", "thinking", "plan"),
               delta(0, "signature_delta", "signature", "sig"), stop(0),
               start(1, {"type": "text", "text": ""}), delta(1, "text_delta", "text", "ok"), stop(1),
               start(2, {"type": "tool_use", "id": "toolu_1", "name": "get_weather", "input": {}}),
               delta(2, "input_json_delta", "partial_json", '{"city": '),
               delta(2, "input_json_delta", "partial_json", '"Paris"}'), stop(2)],
              stop_reason="tool_use")  # fmt: skip
    assert got == [*HEAD,
                   {"type": "reasoning-start", "id": "0"},
                   {"type": "reasoning-delta", "id": "0", "delta": "plan"},
                   {"type": "reasoning-delta", "id": "0", "delta": "",
                    "providerMetadata": {"anthropic": {"signature": "sig"}}},
                   {"type": "reasoning-end", "id": "0"},
                   {"type": "text-start", "id": "1"},
                   {"type": "text-delta", "id": "1", "delta": "ok"},
                   {"type": "text-end", "id": "1"},
                   {"type": "tool-input-start", "toolCallId": "toolu_1", "toolName": "get_weather"},
                   {"type": "tool-input-delta", "toolCallId": "toolu_1", "inputTextDelta": '{"city": '},
                   {"type": "tool-input-delta", "toolCallId": "toolu_1", "inputTextDelta": '"Paris"}'},
                   {"type": "tool-input-available", "toolCallId": "toolu_1",
                    "toolName": "get_weather", "input": {"city": "Paris"}},
                   *tail("tool-calls")]  # fmt: skip


def test_server_tool_is_provider_executed_and_bad_input_is_a_tool_input_error() -> None:
    got = run([start(0, {"type": "server_tool_use", "id": "srv_1", "name": "web_search"}),
               delta(0, "input_json_delta", "partial_json", '{"q": '), stop(0)])  # fmt: skip
    assert got[0] == {"type": "tool-input-start", "toolCallId": "srv_1", "toolName": "web_search",
                      "providerExecuted": True}  # fmt: skip
    assert got[2] == {"type": "tool-input-error", "toolCallId": "srv_1", "toolName": "web_search",
                      "input": '{"q": ', "errorText": "Claude's tool input is not valid JSON"}  # fmt: skip


@pytest.mark.parametrize(
    ("kind", "field", "value"),
    [("text_delta", "text", 'a "quoted" \\ é 😀 \u2028'), ("thinking_delta", "thinking", "x\ny"),
     ("input_json_delta", "partial_json", '{"a": "\\u00e9"')],
)  # fmt: skip
def test_the_fast_path_and_the_decoded_path_agree(kind: str, field: str, value: str) -> None:
    """Anthropic's compact deltas skip JSON decoding; any other spelling is decoded: same chunks."""
    head = start(0, {"type": "tool_use", "id": "t", "name": "n"} if field == "partial_json"
                 else {"type": "text" if field == "text" else "thinking"})  # fmt: skip
    fast = run([head, delta(0, kind, field, value)])
    slow = run([head, delta(0, kind, field, value, compact=False)])
    assert fast == slow
    deltas = [c for c in fast if isinstance(c, dict) and c["type"].endswith("-delta")]
    assert [c.get("delta", c.get("inputTextDelta")) for c in deltas] == [value]


def translated(blocks: list[bytes]) -> bytes:
    translator = UiTranslator()
    return b"".join(translator.translate(b, event_name(b), record()) for b in blocks)


@settings(max_examples=300, deadline=None)
@given(
    st.lists(st.text(), min_size=1, max_size=4),
    st.sampled_from([("text_delta", "text"), ("thinking_delta", "thinking"),
                     ("input_json_delta", "partial_json")]),
    st.booleans(),
    st.integers(0, 12),
)  # fmt: skip
@example(['\u2028 "q" \\ \n \x00 \U0001f389 é'], ("text_delta", "text"), False, 0)
def test_a_delta_chunk_is_the_decoding_paths_chunk_without_decoding(
    values: list[str], kind: tuple[str, str], ensure_ascii: bool, index: int
) -> None:
    """Claude's string literal in the chunk: byte for byte the decoded path's chunk when
    Claude escapes like `json.dumps` (ASCII), the same JSON otherwise; tool input collects."""
    content = {"text": {"type": "text"}, "thinking": {"type": "thinking"}}.get(
        kind[1], {"type": "tool_use", "id": "toolu_é", "name": "f"}
    )
    payloads = [{"type": "content_block_delta", "index": index, "delta": {"type": kind[0], kind[1]: v}}
                for v in values]  # fmt: skip
    compact = [
        b"event: content_block_delta\ndata: "
        + json.dumps(p, separators=(",", ":"), ensure_ascii=ensure_ascii).encode()
        for p in payloads
    ]
    spaced = [delta(index, kind[0], kind[1], v, compact=False) for v in values]
    opening, closing = start(index, content), stop(index)
    fast = translated([opening, *compact, closing])
    slow = translated([opening, *spaced, closing])
    assert all(deltas_match(b) for b in compact)
    assert not any(deltas_match(b) for b in spaced)
    if ensure_ascii:
        assert fast == slow
    assert chunks(fast) == chunks(slow)
    got = [c.get("delta", c.get("inputTextDelta")) for c in chunks(fast) if "-delta" in c["type"]]
    assert got == values


def deltas_match(block: bytes) -> bool:
    return deltas.DELTA.match(block) is not None


def test_claude_error_event_is_an_error_chunk_then_done_once() -> None:
    translator = UiTranslator()
    rec = record(None)
    error = block("error", {"type": "error", "error": {"type": "overloaded_error",
                                                        "message": "Overloaded"}})  # fmt: skip
    out = translator.translate(error, b"error", rec)
    out += translator.error_event("api_error", "connection to Claude was lost", "upstream_error")
    out += translator.finish(rec)
    assert chunks(out) == [{"type": "error", "errorText": "Overloaded"}, "[DONE]"]


def test_a_stream_ended_by_the_sidecar_is_an_error_chunk() -> None:
    translator = UiTranslator()
    out = translator.translate(MESSAGE_START, b"message_start", record())
    out += translator.error_event("timeout_error", "no data from Claude for 30 s", "idle_timeout")
    assert chunks(out)[-2:] == [{"type": "error", "errorText": "no data from Claude for 30 s"},
                                "[DONE]"]  # fmt: skip
    assert out.endswith(DONE)


def test_finish_closes_blocks_left_open() -> None:
    got = run([start(0, {"type": "text"}), delta(0, "text_delta", "text", "cut")], "max_tokens")
    assert got[-4:] == [{"type": "text-end", "id": "0"}, *tail("length")]


TOOL_CALL = {"type": "tool_use", "id": "toolu_1", "name": "get_weather", "input": {}}
SERVER_CALL = {"type": "server_tool_use", "id": "srvtoolu_1", "name": "web_search", "input": {}}


def test_finish_ends_a_tool_call_whose_input_was_still_streaming() -> None:
    """Every part left open, in the order it opened, the tool calls as `tool-input-error`
    with their input so far (a server tool's still provider-executed)."""
    got = run([start(0, {"type": "thinking"}), start(1, TOOL_CALL),
               delta(1, "input_json_delta", "partial_json", '{"city": "Pa'),
               start(2, SERVER_CALL), delta(2, "input_json_delta", "partial_json", '{"q'),
               start(3, {"type": "text"})], "max_tokens")  # fmt: skip
    assert got[-7:] == [
        {"type": "reasoning-end", "id": "0"},
        {"type": "tool-input-error", "toolCallId": "toolu_1", "toolName": "get_weather",
         "input": '{"city": "Pa', "errorText": UNFINISHED_TOOL_INPUT},
        {"type": "tool-input-error", "toolCallId": "srvtoolu_1", "toolName": "web_search",
         "input": '{"q', "errorText": UNFINISHED_TOOL_INPUT, "providerExecuted": True},
        {"type": "text-end", "id": "3"},
        *tail("length"),
    ]  # fmt: skip


@pytest.mark.parametrize("claude_said_it", [True, False], ids=["error_event", "sidecar_stop"])
def test_an_error_ends_the_parts_left_open_first(claude_said_it: bool) -> None:
    translator = UiTranslator()
    rec = record(None)
    opened = [start(0, {"type": "text"}), delta(0, "text_delta", "text", "Hi"), stop(0),
              start(1, TOOL_CALL), delta(1, "input_json_delta", "partial_json", '{"ci')]  # fmt: skip
    out = b"".join(translator.translate(b, event_name(b), rec) for b in opened)
    if claude_said_it:
        error = block("error", {"type": "error", "error": {"type": "overloaded_error",
                                                            "message": "Overloaded"}})  # fmt: skip
        out += translator.translate(error, b"error", rec)
    else:
        out += translator.error_event("timeout_error", "Overloaded", "idle_timeout")
    out += translator.finish(rec)  # after the error: nothing more
    assert chunks(out)[-3:] == [
        {"type": "tool-input-error", "toolCallId": "toolu_1", "toolName": "get_weather",
         "input": '{"ci', "errorText": UNFINISHED_TOOL_INPUT},
        {"type": "error", "errorText": "Overloaded"},
        "[DONE]",
    ]  # fmt: skip
    assert chunks(out).count({"type": "text-end", "id": "0"}) == 1  # closed once, by its stop


@pytest.mark.parametrize(
    ("stop_reason", "reason"),
    [("end_turn", "stop"), ("stop_sequence", "stop"), ("max_tokens", "length"),
     ("tool_use", "tool-calls"), ("refusal", "content-filter"), ("pause_turn", "other"),
     ("model_context_window_exceeded", "length"), ("something_new", "other"), (None, "other")],
)  # fmt: skip
def test_finish_reasons(stop_reason: str | None, reason: str) -> None:
    assert finish_reason(stop_reason) == reason


def test_redacted_thinking_is_a_reasoning_part_carrying_its_data() -> None:
    got = run([MESSAGE_START, start(0, {"type": "redacted_thinking", "data": "ZW5j"}), stop(0),
               start(1, {"type": "thinking", "thinking": ""}),
               delta(1, "signature_delta", "signature", "c2ln", compact=False), stop(1)])  # fmt: skip
    assert got == [*HEAD,
                   {"type": "reasoning-start", "id": "0",
                    "providerMetadata": {"anthropic": {"redactedData": "ZW5j"}}},
                   {"type": "reasoning-end", "id": "0"},
                   {"type": "reasoning-start", "id": "1"},
                   {"type": "reasoning-delta", "id": "1", "delta": "",
                    "providerMetadata": {"anthropic": {"signature": "c2ln"}}},
                   {"type": "reasoning-end", "id": "1"}, *tail("stop")]  # fmt: skip


SERVER_RESULTS = ["web_search_tool_result", "web_fetch_tool_result",
                  "code_execution_tool_result", "bash_code_execution_tool_result",
                  "text_editor_code_execution_tool_result", "tool_search_tool_result"]  # fmt: skip


@pytest.mark.parametrize("result_type", SERVER_RESULTS)
def test_a_server_tools_result_is_its_provider_executed_output(result_type: str) -> None:
    content = [{"type": "web_search_result", "url": "https://a.example", "title": "A",
                "encrypted_content": "ZW5j", "page_age": None}]  # fmt: skip
    got = run([MESSAGE_START,
               start(0, {"type": "server_tool_use", "id": "srv_1", "name": "web_search",
                         "input": {}}),
               delta(0, "input_json_delta", "partial_json", '{"query": "x"}'), stop(0),
               start(1, {"type": result_type, "tool_use_id": "srv_1", "content": content}),
               stop(1),
               start(2, {"type": result_type, "tool_use_id": "srv_other", "content": []}),
               stop(2)])  # fmt: skip
    assert got == [*HEAD,
                   {"type": "tool-input-start", "toolCallId": "srv_1", "toolName": "web_search",
                    "providerExecuted": True},
                   {"type": "tool-input-delta", "toolCallId": "srv_1",
                    "inputTextDelta": '{"query": "x"}'},
                   {"type": "tool-input-available", "toolCallId": "srv_1",
                    "toolName": "web_search", "input": {"query": "x"}, "providerExecuted": True},
                   {"type": "tool-output-available", "toolCallId": "srv_1", "output": content,
                    "providerExecuted": True,
                    "providerMetadata": {"anthropic": {"type": result_type}}},
                   # a result of no call of this stream: the client would throw on it
                   *tail("stop")]  # fmt: skip


def test_an_mcp_call_carries_its_server_and_its_error_result() -> None:
    got = run([start(0, {"type": "mcp_tool_use", "id": "mcp_1", "name": "lookup",
                         "server_name": "docs", "input": {}}), stop(0),
               start(1, {"type": "mcp_tool_result", "tool_use_id": "mcp_1", "is_error": True,
                         "content": [{"type": "text", "text": "no"}]}), stop(1)])  # fmt: skip
    assert got[0] == {"type": "tool-input-start", "toolCallId": "mcp_1", "toolName": "lookup",
                      "providerExecuted": True, "providerMetadata": {"anthropic": {
                          "type": "mcp_tool_use", "serverName": "docs"}}}  # fmt: skip
    assert got[2] == {"type": "tool-output-error", "toolCallId": "mcp_1",
                      "errorText": '[{"type":"text","text":"no"}]', "providerExecuted": True,
                      "providerMetadata": {"anthropic": {"type": "mcp_tool_result"}}}  # fmt: skip


@pytest.mark.parametrize("result_type", SERVER_RESULTS)
def test_a_failed_server_tool_is_its_provider_executed_output_error(result_type: str) -> None:
    error = {"type": f"{result_type}_error", "error_code": "max_uses_exceeded"}
    got = run([start(0, {"type": "server_tool_use", "id": "srv_1", "name": "web_search",
                         "input": {}}), stop(0),
               start(1, {"type": result_type, "tool_use_id": "srv_1", "content": error}),
               stop(1)])  # fmt: skip
    assert got[2] == {"type": "tool-output-error", "toolCallId": "srv_1",
                      "errorText": f'{{"type":"{result_type}_error",'
                                   '"errorCode":"max_uses_exceeded"}',
                      "providerExecuted": True,
                      "providerMetadata": {"anthropic": {"type": result_type}}}  # fmt: skip


def test_unknown_events_and_blocks_are_ignored() -> None:
    got = run([block("ping", {"type": "ping"}), start(0, {"type": "redacted_thinking"}),
               delta(0, "citations_delta", "citation", "x"), stop(0)])  # fmt: skip
    assert got == tail("stop")


def _groups() -> st.SearchStrategy[list[list[bytes]]]:
    """A turn's upstream blocks (text, thinking, a tool call) in chunks of 1-3 blocks."""
    word = st.text(max_size=6)
    body = st.lists(
        st.one_of(
            st.tuples(st.just({"type": "text"}), st.just(("text_delta", "text")), word),
            st.tuples(st.just({"type": "thinking"}), st.just(("thinking_delta", "thinking")),
                      word),
            st.tuples(st.just({"type": "tool_use", "id": "t1", "name": "f"}),
                      st.just(("input_json_delta", "partial_json")), st.just('{"a": 1}')),
        ),
        max_size=5,
    )  # fmt: skip

    def blocks(parts: list[tuple[dict[str, Any], tuple[str, str], str]]) -> list[bytes]:
        out = [MESSAGE_START]
        for i, (content, (kind, field), value) in enumerate(parts):
            out += [start(i, content), delta(i, kind, field, value), stop(i)]
        return out

    def grouped(out: list[bytes], sizes: list[int]) -> list[list[bytes]]:
        groups, at = [], 0
        for size in sizes:
            if at < len(out):
                groups.append(out[at : at + size])
                at += size
        return groups + ([out[at:]] if at < len(out) else [])

    return st.builds(grouped, body.map(blocks), st.lists(st.integers(1, 3), max_size=20))


@settings(max_examples=100, deadline=None)
@given(_groups(), st.booleans())
def test_a_resumable_streams_ids_are_those_the_generation_would_give(
    groups: list[list[bytes]], failed: bool
) -> None:
    """Written by the translator (the text delta in its own format step) or by the
    generation, each chunk of a resumable stream carries the same id, byte for byte."""
    kept = []
    for numbering in (False, True):
        log = StreamLog("S", "owner", max_bytes=1 << 20)
        translator = UiTranslator(log if numbering else None)
        gen = Generation(record(), stream_id="S", owner="owner", log=log)
        rec = record()
        for group in groups:
            out = b"".join(translator.translate(b, event_name(b), rec) for b in group)
            if out:
                gen.publish(out)
        gen.end(
            translator.error_event("api_error", "lost", "upstream_error")
            if failed
            else translator.finish(rec)
        )
        kept.append(list(log.events))
    assert kept[0] == kept[1]
    assert [e.split(b"\n", 1)[0] for e in kept[1]] == [
        b"id: S:%d" % n for n in range(1, len(kept[1]) + 1)
    ]


ENDS = [None, OSError("connection reset"), StopStream("idle_timeout", "timeout_error", "idle")]


@settings(max_examples=200, deadline=None)
@given(claude_streams().flatmap(chunked), st.sampled_from(ENDS), st.booleans())
def test_deltas_carried_over_as_bytes_mean_what_decoding_them_would(
    chunks: list[bytes], end: BaseException | None, resumable: bool
) -> None:
    """Over generated Claude streams (tricky strings, tool and thinking blocks, pings, errors,
    cuts, any reads): the UI stream's chunks, resume ids and accounting of the compact path
    (a delta's string literal carried over as bytes) are those of the decoding path, which
    the same stream spelled with spaces takes for every delta."""
    carried = relayed(UiTranslator, chunks, end, resumable)
    decoding = relayed(UiTranslator, respaced(chunks), end, resumable)
    assert decoded(carried) == decoded(decoding)


@pytest.mark.parametrize(
    "literal",
    [b'"\\x"', b'"a\x01b"', b'"\xff\xfe"', b'"\\u12"'],
    ids=["escape", "control", "utf8", "short_u"],
)
def test_a_tool_input_delta_that_is_not_json_is_dropped_as_decoding_drops_it(
    literal: bytes,
) -> None:
    """The fast path's string literal is looser than JSON: one JSON refuses is dropped (the
    decoding path's answer), not an exception that would cut the stream."""
    bad = (
        b'event: content_block_delta\ndata: {"type":"content_block_delta","index":0,'
        b'"delta":{"type":"input_json_delta","partial_json":' + literal + b"}}"
    )
    assert deltas.DELTA.match(bad) is not None  # taken by the fast path
    got = run([start(0, {"type": "tool_use", "id": "toolu_1", "name": "f", "input": {}}),
               delta(0, "input_json_delta", "partial_json", '{"a": '), bad,
               delta(0, "input_json_delta", "partial_json", "1}"), stop(0)])  # fmt: skip
    assert got[1:4] == [
        {"type": "tool-input-delta", "toolCallId": "toolu_1", "inputTextDelta": '{"a": '},
        {"type": "tool-input-delta", "toolCallId": "toolu_1", "inputTextDelta": "1}"},
        {"type": "tool-input-available", "toolCallId": "toolu_1", "toolName": "f",
         "input": {"a": 1}},
    ]  # fmt: skip


def _stored(*chunks: dict[str, Any]) -> list[bytes]:
    """Chunks as a resumable stream keeps them: one numbered event each."""
    return [b"id: s:%d\n" % n + chunk(c) for n, c in enumerate(chunks, 1)]


def test_closing_chunks_close_the_parts_the_stored_chunks_left_open_in_their_order() -> None:
    events = _stored(
        {"type": "start"},
        {"type": "reasoning-start", "id": "0"},
        {"type": "reasoning-delta", "id": "0", "delta": "hm"},
        {"type": "reasoning-end", "id": "0"},
        {"type": "text-start", "id": "1"},
        {"type": "text-delta", "id": "1", "delta": "Hi"},
        {"type": "tool-input-start", "toolCallId": "t1", "toolName": "search",
         "providerExecuted": True},
        {"type": "tool-input-delta", "toolCallId": "t1", "inputTextDelta": '{"q":'},
        {"type": "tool-input-delta", "toolCallId": "t1", "inputTextDelta": ' "x'},
        {"type": "tool-input-start", "toolCallId": "t2", "toolName": "done"},
        {"type": "tool-input-available", "toolCallId": "t2", "toolName": "done", "input": {}},
    )  # fmt: skip
    closing = [json.loads(line[6:]) for line in closing_chunks(events).split(b"\n\n") if line]
    assert closing == [
        {"type": "text-end", "id": "1"},
        {"type": "tool-input-error", "toolCallId": "t1", "toolName": "search",
         "input": '{"q": "x', "errorText": UNFINISHED_TOOL_INPUT, "providerExecuted": True},
    ]  # fmt: skip
    ended = [chunk({"type": "text-end", "id": "1"}),
             chunk({"type": "tool-input-error", "toolCallId": "t1", "toolName": "search",
                    "input": "", "errorText": "x"})]  # fmt: skip
    assert closing_chunks([*events, *ended]) == b""


def test_closing_chunks_close_a_part_whose_start_left_the_stores_bound() -> None:
    """The oldest events go first: a part known only by its deltas is closed too."""
    deltas_only = _stored(
        {"type": "text-delta", "id": "0", "delta": "lo"},
        {"type": "tool-input-delta", "toolCallId": "t9", "inputTextDelta": "{"},
    )
    events = [*deltas_only, b": ping\n\n", b"id: s:3\ndata: {x\n\n", b"id: s:4\ndata: [1]\n\n"]
    closing = [json.loads(line[6:]) for line in closing_chunks(events).split(b"\n\n") if line]
    assert closing == [
        {"type": "text-end", "id": "0"},
        {"type": "tool-input-error", "toolCallId": "t9", "toolName": "", "input": "{",
         "errorText": UNFINISHED_TOOL_INPUT},
    ]  # fmt: skip
