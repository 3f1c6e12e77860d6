"""What the fake answers: deterministic content from the prompt, as a Message or as SSE bytes."""

from __future__ import annotations

import base64
import hashlib
import json
import math
import secrets
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Final

from sidecar.fake_claude.knobs import Knobs

# A prime number of words, so every stride picked by the prompt's hash visits them all.
_VOCABULARY = (
    "the", "quick", "brown", "fox", "jumps", "over", "a", "lazy", "dog", "while", "streams", "of",
    "tokens", "flow", "through", "sidecars", "into", "browsers", "and", "every", "event",
    "arrives", "as", "soon", "it", "is", "sent", "by", "model", "so", "readers", "see", "words",
    "appear", "one", "after", "another", "with", "no", "buffering", "on", "way", "from", "claude",
    "to", "page", "here", "now", "today", "light", "river", "stone", "cloud", "green", "paper",
    "signal", "bright", "quiet", "garden", "window", "morning",
)  # fmt: skip
_TOOL_JSON_PIECE = 8  # characters of tool input per input_json_delta

# Compact like the real API; one reused encoder (json.dumps with options builds one per call).
_END: Final = object()  # `content_text`: a list walked to its end
_compact = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False).encode

PLAIN, DELTA, STAMPED = 0, 1, 2  # event kinds: DELTA is one output token; STAMPED is built at send
Event = tuple[str, bytes, int]  # (event name, SSE bytes, kind); STAMPED bytes are the prefix only

PING = b'event: ping\ndata: {"type": "ping"}\n\n'  # the API's own spacing, byte for byte
MESSAGE_STOP = b'event: message_stop\ndata: {"type":"message_stop"}\n\n'
MIDSTREAM_ERROR = (
    b"event: error\n"
    b'data: {"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}\n\n'
)


@dataclass(slots=True)
class Block:
    """One content block: its `content_block_start` body and one piece per delta."""

    kind: str  # text | thinking | tool_use | server_tool_use | web_search_tool_result
    start: dict[str, Any]
    pieces: list[str]  # none for a result block (whole in its start event)


@dataclass(slots=True)
class Reply:
    """The whole answer to one request, before it is sent either way."""

    message_id: str
    model: str
    input_tokens: int
    blocks: list[Block] = field(default_factory=list)
    stop_reason: str = "end_turn"
    stop_sequence: str | None = None  # the `stop_sequences` entry that ended the reply

    @property
    def output_tokens(self) -> int:
        return sum(len(block.pieces) for block in self.blocks)


def content_text(content: Any) -> str:
    """The text of a message content or system prompt: a string or a list of blocks, a
    block's own `content` (a tool_result's) read in place, at any depth. Walked with a
    stack of its own: a client chooses the depth, so no Python recursion limit applies."""
    if isinstance(content, str):
        return content
    parts: list[str] = []
    pending: list[Iterator[Any]] = [iter(content)] if isinstance(content, list) else []
    while pending:
        block = next(pending[-1], _END)
        if block is _END:
            pending.pop()
        elif isinstance(block, dict):
            text = next(
                (block[k] for k in ("text", "thinking") if isinstance(block.get(k), str)), None
            )
            inner = block.get("content")  # tool_result
            if text is not None:
                parts.append(text)
            elif isinstance(inner, str):
                parts.append(inner)
            elif isinstance(inner, list):
                pending.append(iter(inner))
    return "\n".join(part for part in parts if part)


def last_user_text(body: Mapping[str, Any]) -> str:
    for message in reversed(body.get("messages") or []):
        if isinstance(message, dict) and message.get("role") == "user":
            return content_text(message.get("content"))
    return ""


def estimate_input_tokens(body: Mapping[str, Any]) -> int:
    """ceil(chars / 4) over the system prompt and every message: cheap and deterministic."""
    chars = len(content_text(body.get("system")))
    for message in body.get("messages") or []:
        if isinstance(message, dict):
            chars += len(content_text(message.get("content")))
    return max(1, math.ceil(chars / 4))


def words_for(seed_text: str, count: int) -> list[str]:
    """`count` deltas (" word", the first without the space) picked by a hash of `seed_text`."""
    digest = hashlib.sha256(seed_text.encode()).digest()
    start = int.from_bytes(digest[:4], "big")
    stride = 1 + int.from_bytes(digest[4:8], "big") % (len(_VOCABULARY) - 1)
    size = len(_VOCABULARY)
    return [
        ("" if i == 0 else " ") + _VOCABULARY[(start + i * stride) % size] for i in range(count)
    ]


def sign(thinking: str) -> str:
    """The fake's signature of a thinking text (checked when it comes back, as the API does)."""
    return base64.b64encode(
        hashlib.sha256(b"fake-thinking\0" + thinking.encode()).digest()
    ).decode()


def thinking_enabled(body: Mapping[str, Any]) -> bool:
    thinking = body.get("thinking")
    return isinstance(thinking, dict) and thinking.get("type") == "enabled"


def plan_reply(body: Mapping[str, Any], knobs: Knobs, model: str | None) -> Reply:
    """The blocks for a valid request, cut at `max_tokens` deltas like the real API."""
    prompt = last_user_text(body)
    reply = Reply(
        message_id="msg_" + secrets.token_hex(12),
        model=model or str(body["model"]),
        input_tokens=estimate_input_tokens(body),
    )
    if knobs.content == "thinking" or thinking_enabled(body):  # the API thinks first
        thoughts = words_for("thinking\0" + prompt, max(1, min(16, knobs.tokens // 2)))
        start = {"type": "thinking", "thinking": "", "signature": ""}
        reply.blocks.append(Block("thinking", start, thoughts))
    if knobs.content in ("web_search", "web_search_error"):
        reply.blocks.extend(_web_search_blocks(body, prompt, knobs.content == "web_search_error"))
    text = Block("text", {"type": "text", "text": ""}, words_for(prompt, knobs.tokens))
    reply.blocks.append(text)
    reply.stop_sequence = _cut_at_stop_sequence(text, body.get("stop_sequences"))
    if reply.stop_sequence is not None:  # generation ends there: no tool call follows
        reply.stop_reason = "stop_sequence"
    elif knobs.content == "tool_use":
        reply.blocks.append(_tool_block(body, prompt))
        reply.stop_reason = "tool_use"
    if _cut_to_budget(reply.blocks, int(body["max_tokens"])):
        reply.stop_reason, reply.stop_sequence = "max_tokens", None
    return reply


def _cut_at_stop_sequence(block: Block, stop_sequences: Any) -> str | None:
    """Cut the text before the earliest of `stop_sequences` (not sent, as the API leaves it
    out); return the sequence that matched, or None."""
    if not isinstance(stop_sequences, list):
        return None
    text = "".join(block.pieces)
    found = [(at, seq) for seq in stop_sequences
             if isinstance(seq, str) and seq and (at := text.find(seq)) >= 0]  # fmt: skip
    if not found:
        return None
    at, sequence = min(found, key=lambda match: match[0])
    kept, length = [], 0
    for piece in block.pieces:
        if length + len(piece) >= at:
            if at > length:
                kept.append(piece[: at - length])
            break
        kept.append(piece)
        length += len(piece)
    block.pieces[:] = kept
    return sequence


def _tool_block(body: Mapping[str, Any], prompt: str) -> Block:
    tools = body.get("tools")
    tool = tools[0] if isinstance(tools, list) and tools and isinstance(tools[0], dict) else {}
    schema = tool.get("input_schema")
    properties = schema.get("properties") if isinstance(schema, dict) else None
    names = list(properties)[:3] if isinstance(properties, dict) and properties else ["city"]
    words = [word.strip() for word in words_for("tool\0" + prompt, len(names))]
    arguments: dict[str, Any] = {}
    for name, word in zip(names, words, strict=True):
        kind = properties.get(name, {}).get("type") if isinstance(properties, dict) else None
        arguments[name] = len(word) if kind in ("integer", "number") else word
    text = json.dumps(arguments)  # the API's spacing: {"city": "Paris"}
    pieces = [text[i : i + _TOOL_JSON_PIECE] for i in range(0, len(text), _TOOL_JSON_PIECE)]
    start = {
        "type": "tool_use",
        "id": "toolu_" + secrets.token_hex(12),
        "name": str(tool.get("name", "get_weather")),
        "input": {},
    }
    return Block("tool_use", start, pieces)


def _web_search_blocks(body: Mapping[str, Any], prompt: str, failed: bool) -> list[Block]:
    """A server tool call Claude runs itself, and its result block (no deltas), as the API
    streams a web search; `failed`: the search's error result (`max_uses_exceeded`)."""
    tools = body.get("tools")
    names = [str(tool.get("name", "web_search")) for tool in tools or []
             if isinstance(tool, dict) and str(tool.get("type", "")).startswith("web_search_")]  # fmt: skip
    call_id = "srvtoolu_" + secrets.token_hex(12)
    query = " ".join(word.strip() for word in words_for("search\0" + prompt, 3))
    text = json.dumps({"query": query})
    pieces = [text[i : i + _TOOL_JSON_PIECE] for i in range(0, len(text), _TOOL_JSON_PIECE)]
    start = {"type": "server_tool_use", "id": call_id,
             "name": names[0] if names else "web_search", "input": {}}  # fmt: skip
    found = [{"type": "web_search_result", "url": f"https://example.com/{word.strip()}",
              "title": word.strip().title(), "page_age": None,
              "encrypted_content": sign(word)} for word in words_for("result\0" + prompt, 2)]  # fmt: skip
    content: object = found
    if failed:
        content = {"type": "web_search_tool_result_error", "error_code": "max_uses_exceeded"}
    result = {"type": "web_search_tool_result", "tool_use_id": call_id, "content": content}
    return [Block("server_tool_use", start, pieces), Block("web_search_tool_result", result, [])]


def _cut_to_budget(blocks: list[Block], budget: int) -> bool:
    """Keep the first `budget` pieces; True when anything was cut (stop_reason max_tokens)."""
    for position, block in enumerate(blocks):
        if len(block.pieces) > budget:
            del block.pieces[budget:]
            # A block cut to nothing is dropped, except the first: a reply has a block.
            del blocks[position + 1 if block.pieces or position == 0 else position :]
            return True
        budget -= len(block.pieces)
    return False


def _usage(reply: Reply, output_tokens: int) -> dict[str, int]:
    return {
        "input_tokens": reply.input_tokens,
        "cache_creation_input_tokens": 0,
        "cache_read_input_tokens": 0,
        "output_tokens": output_tokens,
    }


def message_json(reply: Reply) -> dict[str, Any]:
    """The non-streaming Message."""
    return {
        "id": reply.message_id,
        "type": "message",
        "role": "assistant",
        "content": [_final_block(block) for block in reply.blocks],
        "model": reply.model,
        "stop_reason": reply.stop_reason,
        "stop_sequence": reply.stop_sequence,
        "usage": _usage(reply, reply.output_tokens),
    }


def _final_block(block: Block) -> dict[str, Any]:
    joined = "".join(block.pieces)
    if block.kind == "thinking":
        return {"type": "thinking", "thinking": joined, "signature": sign(joined)}
    if block.kind == "web_search_tool_result":
        return block.start
    if block.kind in ("tool_use", "server_tool_use"):
        try:
            arguments = json.loads(joined)
        except ValueError:  # cut short by max_tokens
            arguments = {}
        return {**block.start, "input": arguments}
    return {"type": "text", "text": joined}


def encode(name: str, data: Mapping[str, Any]) -> bytes:
    return b"event: " + name.encode() + b"\ndata: " + _compact(data).encode() + b"\n\n"


def encode_events(reply: Reply, *, stamp: bool = False) -> list[Event]:
    """Every SSE event of the reply, encoded once (per request, not per write)."""
    start = {
        "type": "message_start",
        "message": {**message_json(reply), "content": [], "stop_reason": None,
                    "stop_sequence": None, "usage": _usage(reply, 1)},
    }  # fmt: skip
    events: list[Event] = [("message_start", encode("message_start", start), PLAIN)]
    for index, block in enumerate(reply.blocks):
        opening = {"type": "content_block_start", "index": index, "content_block": block.start}
        events.append(("content_block_start", encode("content_block_start", opening), PLAIN))
        if index == 0:
            events.append(("ping", PING, PLAIN))
        events.extend(_block_deltas(index, block, stamp))
        closing = {"type": "content_block_stop", "index": index}
        events.append(("content_block_stop", encode("content_block_stop", closing), PLAIN))
    ending = {
        "type": "message_delta",
        "delta": {"stop_reason": reply.stop_reason, "stop_sequence": reply.stop_sequence},
        "usage": _usage(reply, reply.output_tokens),  # cumulative, input included, as the API's
    }
    events.append(("message_delta", encode("message_delta", ending), PLAIN))
    events.append(("message_stop", MESSAGE_STOP, PLAIN))
    return events


_DELTA_TYPES = {"text": ("text_delta", "text"), "thinking": ("thinking_delta", "thinking"),
                "tool_use": ("input_json_delta", "partial_json"),
                "server_tool_use": ("input_json_delta", "partial_json")}  # fmt: skip


def _delta_prefix(index: int, delta_type: str, field_name: str) -> bytes:
    return (
        b'event: content_block_delta\ndata: {"type":"content_block_delta","index":%d,'
        b'"delta":{"type":"%s","%s":' % (index, delta_type.encode(), field_name.encode())
    )


def _block_deltas(index: int, block: Block, stamp: bool) -> list[Event]:
    if block.kind not in _DELTA_TYPES:  # a result block: whole in its start event
        return []
    prefix = _delta_prefix(index, *_DELTA_TYPES[block.kind])
    if stamp and block.kind == "text":
        return [("content_block_delta", prefix, STAMPED) for _ in block.pieces]
    events = [
        ("content_block_delta", prefix + _compact(piece).encode() + b"}}\n\n", DELTA)
        for piece in block.pieces
    ]
    if block.kind == "thinking":
        signature = {"type": "signature_delta", "signature": sign("".join(block.pieces))}
        data = {"type": "content_block_delta", "index": index, "delta": signature}
        events.append(("content_block_delta", encode("content_block_delta", data), PLAIN))
    return events


def stamped(prefix: bytes, monotonic_ns: int) -> bytes:
    """A text delta whose text is its send time: `"<ns> "` (benchmarks measure delay end to end)."""
    return prefix + b'"%d "}}\n\n' % monotonic_ns


def fault_position(events: list[Event], after: int) -> int:
    """Where a mid-stream fault replaces the stream: at delta number `after`, else message_delta."""
    seen = 0
    for position, (name, _, kind) in enumerate(events):
        if kind != PLAIN:
            if seen == after:
                return position
            seen += 1
        elif name == "message_delta":
            return position
    return len(events) - 1
