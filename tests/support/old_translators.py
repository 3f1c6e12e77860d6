"""The prompt and UI routes' translators as they were before their hot paths were tightened.

Kept verbatim (with the delta pattern they used) so tests can hold the current translators
to the same bytes, ids and accounting over generated Claude streams: a reference, not product
code.
"""

from __future__ import annotations

import json
import re
from types import SimpleNamespace
from typing import Any, Final

from sidecar import sse
from sidecar.errors import short_error_type
from sidecar.record import Outcome, StreamRecord
from sidecar.sse import json_object, parse_block
from sidecar.stream.core import Translator
from sidecar.stream.store import StreamLog

LITERAL: Final = rb'"[^"\\\n]*(?:\\.[^"\\\n]*)*"'

# Groups: 1 the block index (digits), 2 the delta kind (one of the three below, as it
# appears between `"type":"` and `":`), 3 the value's JSON string literal, quotes included.
DELTA: Final = re.compile(
    rb'event: content_block_delta\ndata: \{"type":"content_block_delta","index":(\d+),'
    rb'"delta":\{"type":"(text_delta","text|thinking_delta","thinking|input_json_delta",'
    rb'"partial_json)":(' + LITERAL + rb")\}\}\Z"
)
_TEXT: Final = b'text_delta","text'
_THINKING: Final = b'thinking_delta","thinking'
_TOOL_INPUT: Final = b'input_json_delta","partial_json'

deltas = SimpleNamespace(DELTA=DELTA, TEXT=_TEXT, THINKING=_THINKING, TOOL_INPUT=_TOOL_INPUT)
_PLAIN_PREFIX = b"id: "
_match_delta = DELTA.match

# A content delta's event, one template per delta kind: Claude's JSON string literal goes
# in as it is (`sidecar.deltas`), so the common event needs no JSON decoding or encoding.
_TEMPLATES = {
    deltas.TEXT: b'data: {"token":%b}\n\n',
    deltas.THINKING: b'data: {"thinking":%b}\n\n',
    deltas.TOOL_INPUT: b'data: {"tool_input":%b}\n\n',
}
# With its id: `id: N` (a stream that is not resumable), `id: <stream id>:<n>` (one that is).
_NUMBERED = {kind: b"%b%d\n" + template for kind, template in _TEMPLATES.items()}
_NUMBERED_TOKEN = _NUMBERED[deltas.TEXT]
_OWN_OUTCOMES = {"idle_timeout", "shutting_down", "client_stalled"}
# The sidecar's own error types, shown as they are (not mapped like Anthropic's).
_OWN_TYPES = {"stream_lost", "stream_abandoned", "cancelled"}


class OldPromptTranslator(Translator):
    """Claude's events → the prompt route's small JSON events, each with its id.

    A resumable stream's events are numbered from its log (`id: <stream id>:<n>`, the
    final `done` too), written in the same format step as the event; otherwise they are
    numbered `id: N` here (and `done` has none).
    """

    passthrough = False

    def __init__(self, *, capture: bool, log: StreamLog | None = None) -> None:
        """`log`: a resumable stream's log, whose ids the events carry."""
        self._next_id = 0
        self._capture = capture
        self._log = log

    def _id(self) -> tuple[bytes, int]:
        """The next event's id: (prefix, number)."""
        log = self._log
        if log is not None:
            n = log.numbered = log.numbered + 1
            return log.id_prefix, n
        self._next_id += 1
        return _PLAIN_PREFIX, self._next_id

    def _event(self, data: object) -> bytes:
        return b"%b%d\n" % self._id() + sse.encode(data)

    def translate(self, block: bytes, name: bytes, record: StreamRecord) -> bytes:
        if name == b"content_block_delta" and not self._capture:
            match = _match_delta(block)
            if match is not None:  # the JSON string Claude sent is reused as is: no decoding
                log = self._log
                if log is not None:  # the common event: one format, its id included
                    n = log.numbered = log.numbered + 1
                    kind = match[2]
                    if kind == deltas.TEXT:  # no hashing, no lookup
                        return _NUMBERED_TOKEN % (log.id_prefix, n, match[3])
                    return _NUMBERED[match[2]] % (log.id_prefix, n, match[3])
                self._next_id += 1
                return _NUMBERED[match[2]] % (_PLAIN_PREFIX, self._next_id, match[3])
        if name == b"content_block_delta":
            delta = json_object(parse_block(block)[1]).get("delta") or {}
            kind = delta.get("type")
            if kind == "text_delta":
                if self._capture:
                    record.completion_parts.append(str(delta.get("text", "")))
                return self._event({"token": delta.get("text", "")})
            if kind == "thinking_delta":
                return self._event({"thinking": delta.get("thinking", "")})
            if kind == "input_json_delta":
                return self._event({"tool_input": delta.get("partial_json", "")})
            return b""
        if name == b"content_block_start":
            block_data = json_object(parse_block(block)[1]).get("content_block") or {}
            if block_data.get("type") == "tool_use":
                return self._event(
                    {"tool_use": {"id": block_data.get("id"), "name": block_data.get("name")}}
                )
            return b""
        if name == b"error":
            error = json_object(parse_block(block)[1]).get("error") or {}
            return self._event(
                {
                    "error": {
                        "type": short_error_type(str(error.get("type", "api_error"))),
                        "message": str(error.get("message", "")),
                    }
                }
            )
        return b""

    def error_event(self, error_type: str, message: str, outcome: Outcome) -> bytes:
        if error_type in _OWN_TYPES:
            kind = error_type
        elif outcome in _OWN_OUTCOMES:
            kind = outcome
        else:
            kind = short_error_type(error_type)
        return self._event({"error": {"type": kind, "message": message}})

    def finish(self, record: StreamRecord) -> bytes:
        usage = {
            "input_tokens": record.input_tokens,
            "output_tokens": record.output_tokens,
            "cache_creation_input_tokens": record.cache_creation_input_tokens,
            "cache_read_input_tokens": record.cache_read_input_tokens,
        }
        done = sse.encode({"done": True, "usage": usage, "stop_reason": record.stop_reason})
        log = self._log
        if log is None:
            return done
        n = log.numbered = log.numbered + 1
        return b"%b%d\n" % (log.id_prefix, n) + done


HEADERS: Final[dict[str, str]] = {"x-vercel-ai-ui-message-stream": "v1"}
DONE: Final = b"data: [DONE]\n\n"
# Claude's stop reason → the AI SDK's finish reason (its closed set).
FINISH_REASONS: Final[dict[str, str]] = {
    "end_turn": "stop",
    "stop_sequence": "stop",
    "max_tokens": "length",
    "model_context_window_exceeded": "length",
    "tool_use": "tool-calls",
    "refusal": "content-filter",
    "pause_turn": "other",
}
# A text or reasoning delta's chunk: Claude's JSON string literal goes in as it is
# (`sidecar.deltas`), so the common event needs no JSON decoding or encoding.
_TEXT_DELTA: Final = b'data: {"type":"text-delta","id":"%b","delta":%b}\n\n'
_NUMBERED_TEXT_DELTA: Final = b"%b%d\n" + _TEXT_DELTA  # with a resumable stream's id
_REASONING_DELTA: Final = b'data: {"type":"reasoning-delta","id":"%b","delta":%b}\n\n'
_TOOL_DELTA: Final = b'data: {"type":"tool-input-delta","toolCallId":%b,"inputTextDelta":%b}\n\n'
_TOOL_KINDS = frozenset({"tool_use", "server_tool_use", "mcp_tool_use"})
_START: Final = b'data: {"type":"start"}\n\ndata: {"type":"start-step"}\n\n'


def chunk(data: dict[str, Any]) -> bytes:
    """One UI message chunk as an SSE event."""
    return b"data: " + json.dumps(data, separators=(",", ":")).encode() + b"\n\n"


def finish_reason(stop_reason: str | None) -> str:
    """The AI SDK finish reason for a Claude stop reason (`other` for anything new)."""
    return FINISH_REASONS.get(stop_reason or "", "other")


class OldUiTranslator(Translator):
    """One stream's translation state: the open blocks by index, and tool input so far.

    A resumable stream's chunks carry `id: <stream id>:<n>` from its log: the common text
    delta's written in its own format step, the others' added as they are made.
    """

    passthrough = False

    def __init__(self, log: StreamLog | None = None) -> None:
        self._log = log
        self._open: dict[bytes, str] = {}  # index → text | reasoning | tool
        # index → the tool call: id, name, server-run, its input so far, and its id as JSON
        # (encoded once, for every input delta's chunk)
        self._tools: dict[bytes, tuple[str, str, bool, list[str], bytes]] = {}
        self._ended = False

    def translate(self, block: bytes, name: bytes, record: StreamRecord) -> bytes:
        log = self._log
        if name == b"content_block_delta":
            match = _match_delta(block)
            if match is not None:
                index, kind, value = match[1], match[2], match[3]
                if kind == deltas.TEXT:  # the common event: no hashing, no lookup
                    if log is None:
                        return _TEXT_DELTA % (index, value)
                    n = log.numbered = log.numbered + 1
                    return _NUMBERED_TEXT_DELTA % (log.id_prefix, n, index, value)
                out = self._literal_delta(index, kind, value)
            else:
                out = self._delta(_data(block))
        else:
            out = self._event(block, name)
        return self._numbered(out)

    def _literal_delta(self, index: bytes, kind: bytes, value: bytes) -> bytes:
        """A thinking or tool input delta, its JSON string literal reused as is."""
        if kind == deltas.THINKING:
            return _REASONING_DELTA % (index, value)
        tool = self._tools.get(index)
        if tool is not None:
            tool[3].append(json.loads(value))
            return _TOOL_DELTA % (tool[4], value)
        return b""

    def _event(self, block: bytes, name: bytes) -> bytes:
        if name == b"content_block_start":
            return self._start(_data(block))
        if name == b"content_block_stop":
            return self._stop(_data(block))
        if name == b"message_start":
            # No messageId: the client keeps its own, and after a tool round trip it continues
            # its last assistant message (a new id would make it a second message).
            return _START
        if name == b"error":
            error = _data(block).get("error") or {}
            return self._error(str(error.get("message") or "Claude reported an error"))
        return b""

    def _numbered(self, out: bytes) -> bytes:
        log = self._log
        return out if log is None or not out else log.number(out)

    def _start(self, data: dict[str, Any]) -> bytes:
        index = str(data.get("index", "")).encode()
        content = data.get("content_block") or {}
        kind = content.get("type")
        if kind == "text":
            self._open[index] = "text"
            return chunk({"type": "text-start", "id": index.decode()})
        if kind == "thinking":
            self._open[index] = "reasoning"
            return chunk({"type": "reasoning-start", "id": index.decode()})
        if kind in _TOOL_KINDS:
            call_id, tool = str(content.get("id", "")), str(content.get("name", ""))
            server = kind != "tool_use"
            self._open[index] = "tool"
            self._tools[index] = (call_id, tool, server, [], json.dumps(call_id).encode())
            start: dict[str, Any] = {"type": "tool-input-start", "toolCallId": call_id,
                                     "toolName": tool}  # fmt: skip
            if server:
                start["providerExecuted"] = True
            return chunk(start)
        return b""

    def _delta(self, data: dict[str, Any]) -> bytes:
        index = str(data.get("index", "")).encode()
        delta = data.get("delta") or {}
        kind = delta.get("type")
        if kind == "text_delta" and self._open.get(index) == "text":
            return chunk(
                {"type": "text-delta", "id": index.decode(), "delta": delta.get("text", "")}
            )
        if kind == "thinking_delta" and self._open.get(index) == "reasoning":
            return chunk(
                {
                    "type": "reasoning-delta",
                    "id": index.decode(),
                    "delta": delta.get("thinking", ""),
                }
            )
        tool = self._tools.get(index)
        if kind == "input_json_delta" and tool is not None:
            piece = str(delta.get("partial_json", ""))
            tool[3].append(piece)
            return chunk(
                {"type": "tool-input-delta", "toolCallId": tool[0], "inputTextDelta": piece}
            )
        return b""

    def _stop(self, data: dict[str, Any]) -> bytes:
        index = str(data.get("index", "")).encode()
        kind = self._open.pop(index, None)
        if kind == "text":
            return chunk({"type": "text-end", "id": index.decode()})
        if kind == "reasoning":
            return chunk({"type": "reasoning-end", "id": index.decode()})
        tool = self._tools.pop(index, None)
        if tool is None:
            return b""
        call_id, name, server, pieces, _ = tool
        text = "".join(pieces)
        try:
            value = json.loads(text) if text.strip() else {}
        except ValueError:
            return chunk({"type": "tool-input-error", "toolCallId": call_id, "toolName": name,
                          "input": text, "errorText": "Claude's tool input is not valid JSON"})  # fmt: skip
        available: dict[str, Any] = {"type": "tool-input-available", "toolCallId": call_id,
                                     "toolName": name, "input": value}  # fmt: skip
        if server:
            available["providerExecuted"] = True
        return chunk(available)

    def _error(self, message: str) -> bytes:
        if self._ended:
            return b""
        self._ended = True
        return chunk({"type": "error", "errorText": message}) + DONE

    def error_event(self, error_type: str, message: str, outcome: Outcome) -> bytes:
        return self._numbered(self._error(message))

    def finish(self, record: StreamRecord) -> bytes:
        return self._numbered(self._finish(record))

    def _finish(self, record: StreamRecord) -> bytes:
        if self._ended:
            return b""
        self._ended = True
        closing = b"".join(
            chunk({"type": "text-end" if kind == "text" else "reasoning-end", "id": i.decode()})
            for i, kind in self._open.items()
            if kind != "tool"
        )
        reason = finish_reason(record.stop_reason)
        return (
            closing
            + chunk({"type": "finish-step"})
            + chunk({"type": "finish", "finishReason": reason})
            + DONE
        )


def _data(block: bytes) -> dict[str, Any]:
    try:
        value = json.loads(parse_block(block)[1])
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}
