"""Generated Claude streams (hypothesis): the bytes of a whole Messages API SSE stream.

Text, thinking and tool blocks whose deltas carry any text (quotes, backslashes, control
characters, U+2028, astral characters), escaped as Anthropic writes them (compact, raw
UTF-8) or as `json.dumps` does (ASCII), or spelled with spaces; signature deltas, pings,
blocks of kinds no route knows, a mid-stream `error`, a stream cut short; `\\r\\n` line ends
now and then. `chunked` splits the bytes anywhere, as reads would.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Callable
from dataclasses import fields
from typing import Any

from hypothesis import strategies as st

from sidecar.record import StreamRecord
from sidecar.stream.core import StreamCore, Translator
from sidecar.stream.hub import Generation
from sidecar.stream.store import StreamLog

TRICKY = st.text(
    st.one_of(
        st.characters(codec="utf-8"),
        st.sampled_from(['"', "\\", "\n", "\r", "\t", "\x00", "\u2028", "\U0001f389", "é", "/"]),
    ),
    max_size=16,
)
_DELTA_OF = {"text": ("text_delta", "text"), "thinking": ("thinking_delta", "thinking"),
             "tool_use": ("input_json_delta", "partial_json"),
             "server_tool_use": ("input_json_delta", "partial_json")}  # fmt: skip


@st.composite
def _event(draw: st.DrawFn, name: str, data: dict[str, Any]) -> bytes:
    """One event block and its blank line, compact (Anthropic's spelling) or spaced."""
    spelling = draw(st.sampled_from(["compact", "compact", "compact", "ascii", "spaced"]))
    if spelling == "spaced":
        text = json.dumps(data)
    else:
        text = json.dumps(data, separators=(",", ":"), ensure_ascii=spelling == "ascii")
    return f"event: {name}\ndata: {text}\n\n".encode()


@st.composite
def _block(draw: st.DrawFn, index: int) -> list[bytes]:
    kind = draw(st.sampled_from(["text", "text", "thinking", "tool_use", "server_tool_use",
                                 "redacted_thinking"]))  # fmt: skip
    content: dict[str, Any] = {"type": kind}
    if kind in ("text", "thinking"):
        content[kind] = ""
    elif kind != "redacted_thinking":
        content |= {"id": draw(st.sampled_from(["toolu_1", 'tool"é'])), "name": "f", "input": {}}
    start = {"type": "content_block_start", "index": index, "content_block": content}
    events = [draw(_event("content_block_start", start))]
    delta_type, field = _DELTA_OF.get(kind, ("text_delta", "text"))
    for value in draw(st.lists(TRICKY, max_size=5)):
        if draw(st.integers(0, 9)) == 0:  # a delta of another kind, or for another block
            delta_type, field = draw(st.sampled_from(list(_DELTA_OF.values())))
        at = index if draw(st.integers(0, 9)) else index + 1
        data = {
            "type": "content_block_delta",
            "index": at,
            "delta": {"type": delta_type, field: value},
        }
        events.append(draw(_event("content_block_delta", data)))
        if draw(st.integers(0, 6)) == 0:
            events.append(b'event: ping\ndata: {"type": "ping"}\n\n')
    if kind == "thinking":
        signature = {"type": "signature_delta", "signature": "c2ln"}
        data = {"type": "content_block_delta", "index": index, "delta": signature}
        events.append(draw(_event("content_block_delta", data)))
    stop = {"type": "content_block_stop", "index": index}
    events.append(draw(_event("content_block_stop", stop)))
    return events


@st.composite
def claude_streams(draw: st.DrawFn) -> bytes:
    """A whole stream's bytes: complete, failed by an `error` event, or cut short."""
    usage = {"input_tokens": draw(st.integers(0, 9999)), "output_tokens": 1}
    message: dict[str, Any] = {"id": "msg_1", "type": "message", "role": "assistant", "model": "claude-x",
               "content": [], "stop_reason": None, "usage": usage}  # fmt: skip
    events = [draw(_event("message_start", {"type": "message_start", "message": message}))]
    if draw(st.booleans()):
        events.append(b'event: ping\ndata: {"type": "ping"}\n\n')
    for index in range(draw(st.integers(0, 3))):
        events.extend(draw(_block(index)))
    reason = draw(st.sampled_from(["end_turn", "max_tokens", "tool_use", "refusal", "new"]))
    ending = {"type": "message_delta", "delta": {"stop_reason": reason, "stop_sequence": None},
              "usage": {"output_tokens": draw(st.integers(0, 9999))}}  # fmt: skip
    events.append(draw(_event("message_delta", ending)))
    events.append(b'event: message_stop\ndata: {"type":"message_stop"}\n\n')
    end = draw(st.sampled_from(["complete", "complete", "error", "cut"]))
    if end == "error":
        at = draw(st.integers(1, len(events) - 1))
        error = {"type": "error", "error": {"type": draw(st.sampled_from(
            ["overloaded_error", "api_error", "x"])), "message": draw(TRICKY)}}  # fmt: skip
        events[at:] = [draw(_event("error", error))]
    elif end == "cut":
        events = events[: draw(st.integers(1, len(events) - 1))]
    raw = b"".join(events)
    if end == "cut" and draw(st.booleans()):
        raw = raw[: draw(st.integers(0, len(raw)))]  # mid-event
    if draw(st.integers(0, 7)) == 0:
        raw = raw.replace(b"\n", b"\r\n")
    return raw


@st.composite
def chunked(draw: st.DrawFn, raw: bytes) -> list[bytes]:
    """`raw` split at arbitrary points (mostly one event per read, as Claude sends)."""
    if draw(st.booleans()):
        parts = raw.split(b"\n\n")
        return [part + b"\n\n" for part in parts[:-1]] + ([parts[-1]] if parts[-1] else [])
    cuts = sorted(draw(st.lists(st.integers(0, len(raw)), max_size=12)))
    return [raw[a:b] for a, b in zip([0, *cuts], [*cuts, len(raw)], strict=True) if b > a]


_TIMES = {"started", "first_chunk_at", "first_token_at", "last_chunk_at"}


def relayed(
    make: Callable[[StreamLog | None], Translator],
    chunks: list[bytes],
    end: BaseException | None,
    resumable: bool,
    capture: bool = False,
) -> dict[str, Any]:
    """What a stream's rules make of `chunks` with the translator `make` gives for its resume
    log (None: not resumable): every read's bytes, the final bytes, the log's events and ids,
    and the record's facts (all but its clock times)."""
    record = StreamRecord(request_id="r", route="/r", started=0.0, capture=capture)
    log = StreamLog("S-1", "owner", 1 << 20) if resumable else None
    translator = make(log)
    core = StreamCore(record, translator)
    generation = Generation(record, stream_id="S-1", owner="owner", log=log)
    reads = []
    for chunk in chunks:
        out = core.feed(chunk)
        reads.append(out)
        if out:
            generation.publish(out)
    final = core.end(end)
    generation.end(final)
    facts = {f.name: getattr(record, f.name) for f in fields(record) if f.name not in _TIMES}
    kept = (list(log.events), log.numbered, log.last, log.final) if log is not None else None
    return {"reads": reads, "final": final, "log": kept, "record": facts}


def respaced(chunks: list[bytes]) -> list[bytes]:
    """The same stream with every event's JSON written as `json.dumps` writes it (spaces
    after `,` and `:`, non-ASCII escaped): no delta keeps Anthropic's compact shape, so a
    translator takes its decoding path for each, never the byte-for-byte carry-over."""
    out = []
    for line in b"".join(chunks).split(b"\n"):
        if line.startswith(b"data: "):
            ending = b"\r" if line.endswith(b"\r") else b""
            with contextlib.suppress(ValueError):  # a line cut short is left as it is
                line = b"data: " + json.dumps(json.loads(line[6:])).encode() + ending
        out.append(line)
    return [b"\n".join(out)]


def decoded(relay: dict[str, Any]) -> dict[str, Any]:
    """A `relayed` result by meaning, not bytes: every event the client got (and the log
    kept) as its fields, each `data` decoded; the record's facts but how many reads came."""

    def events(data: bytes) -> list[list[tuple[str, Any]]]:
        parsed = []
        for block in data.replace(b"\r\n", b"\n").split(b"\n\n"):
            fields_of = []
            for line in block.split(b"\n"):
                name, _, value = line.partition(b": ")
                if not line:
                    continue
                try:
                    fields_of.append((name.decode(), json.loads(value)))
                except ValueError:  # not JSON (`[DONE]`, an event name, an id)
                    fields_of.append((name.decode(), value.decode()))
            if fields_of:
                parsed.append(fields_of)
        return parsed

    log = relay["log"]
    return {
        "events": events(b"".join(relay["reads"]) + relay["final"]),
        "log": None if log is None else (events(b"".join(log[0])), *log[1:]),
        "record": {k: v for k, v in relay["record"].items() if k != "chunks"},
    }


# One whole Claude stream: start (with the input usage), a text delta, a ping, the final
# usage and stop reason, stop.
STREAM = (
    b'event: message_start\ndata: {"type":"message_start","message":{"id":"msg_1","model":"m",'
    b'"usage":{"input_tokens":25,"cache_creation_input_tokens":3,"cache_read_input_tokens":2,'
    b'"output_tokens":1}}}\n\n'
    b'event: content_block_delta\ndata: {"type":"content_block_delta","index":0,'
    b'"delta":{"type":"text_delta","text":"Hi"}}\n\n'
    b'event: ping\ndata: {"type": "ping"}\n\n'
    b'event: message_delta\ndata: {"type":"message_delta","delta":{"stop_reason":"end_turn"},'
    b'"usage":{"output_tokens":42}}\n\n'
    b'event: message_stop\ndata: {"type":"message_stop"}\n\n'
)
