"""Claude's stream events → the AI SDK's UI message stream (v1) chunks. No I/O.

Every chunk is one `data: {json}` event on the default event; the stream ends with
`data: [DONE]` (what the AI SDK's `JsonToSseTransformStream` writes, and what its
parser skips). A turn reads:

    start → start-step → (text-start, text-delta…, text-end | reasoning-start,
    reasoning-delta…, reasoning-end | tool-input-start, tool-input-delta…,
    tool-input-available [→ tool-output-available])… → finish-step → finish {finishReason}
    → [DONE]

and a failure after the first byte is `error {errorText}` then `[DONE]`. At the end (either
way), once per stream, every part still open is closed first: `text-end`, `reasoning-end`,
and for a tool call whose input was still streaming `tool-input-error` with the input so
far, so the client never keeps a part streaming. A resumable stream's chunks (`[DONE]`
too) each carry `id: <stream id>:<n>`. Part ids are the
content block's index (`"0"`, `"1"`…), unique within the message as the SDK requires.

What Claude needs back on the next turn rides on the parts as the AI SDK's Anthropic
provider carries it (`ui_request` reads it back):

- a `thinking` block's `signature_delta` is a `reasoning-delta` with an empty delta and
  `providerMetadata: {"anthropic": {"signature": …}}`; a `redacted_thinking` block is a
  reasoning part with no text whose `reasoning-start` has `{"anthropic": {"redactedData":
  …}}` (the client keeps the last metadata on the part);
- a server tool (`server_tool_use`, `mcp_tool_use`) is provider-executed: its `tool-input-*`
  chunks carry `providerExecuted: true` (an MCP call's `{"anthropic": {"type":
  "mcp_tool_use", "serverName": …}}` too), and its result block (`web_search_tool_result`,
  `code_execution_tool_result`, `mcp_tool_result`, any `*_tool_result` of a call of this
  stream) is a `tool-output-available` with `providerExecuted: true`, the block's `content`
  as the output and `{"anthropic": {"type": <block type>}}`. A failed call (a content of
  type `*_tool_result_error`, e.g. `web_search_tool_result_error`, or an `is_error` MCP
  result) is a `tool-output-error` instead, as the AI SDK's Anthropic provider reports it:
  its `errorText` is `{"type": …, "errorCode": …}` as JSON (an MCP result: its content,
  as JSON unless a string), with the same `providerExecuted` and `providerMetadata`.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from typing import Any, Final

from sidecar import deltas
from sidecar.record import Outcome, StreamRecord
from sidecar.relay import Translator
from sidecar.sse import parse_block
from sidecar.stream.store import StreamLog

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
_match_delta = deltas.DELTA.match
_DELTA: Final = b"content_block_delta"
_TEXT: Final = deltas.TEXT
_TOOL_KINDS = frozenset({"tool_use", "server_tool_use", "mcp_tool_use"})
_MAX_SERVER_CALLS = 1024  # server call ids kept to match their results (bounded memory)
_START: Final = b'data: {"type":"start"}\n\ndata: {"type":"start-step"}\n\n'
# A tool call whose input was still streaming when the turn ended (its `tool-input-error`).
UNFINISHED_TOOL_INPUT: Final = "the turn ended before Claude finished the tool call's input"
# A tool call being streamed: id, name, server-run, its input so far, its id as JSON.
_Tool = tuple[str, str, bool, list[str], bytes]


def _server_error(output: object) -> dict[str, Any] | None:
    """A server tool's error content (`{"type": "web_search_tool_result_error", "error_code":
    …}`) as the AI SDK's Anthropic provider reports it (`{type, errorCode}`); None for a result."""
    if not isinstance(output, dict):
        return None
    kind = output.get("type")
    if not isinstance(kind, str) or not kind.endswith("_tool_result_error"):
        return None
    code = output.get("error_code")
    return {"type": kind} if code is None else {"type": kind, "errorCode": code}


def _compact(value: object) -> str:
    """JSON as `JSON.stringify` writes it (the AI SDK's `errorText` of a server tool)."""
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


def chunk(data: dict[str, Any]) -> bytes:
    """One UI message chunk as an SSE event."""
    return b"data: " + json.dumps(data, separators=(",", ":")).encode() + b"\n\n"


def finish_reason(stop_reason: str | None) -> str:
    """The AI SDK finish reason for a Claude stop reason (`other` for anything new)."""
    return FINISH_REASONS.get(stop_reason or "", "other")


class UiTranslator(Translator):
    """One stream's translation state: the open blocks by index, and tool input so far.

    A resumable stream's chunks carry `id: <stream id>:<n>` from its log: the common text
    delta's written in its own format step, the others' added as they are made.
    """

    __slots__ = ("_ended", "_log", "_open", "_server_calls", "_tools")
    passthrough = False
    headers = HEADERS  # the protocol marker: on the stream's response only

    def __init__(self, log: StreamLog | None = None) -> None:
        self._log = log
        self._open: dict[bytes, str] = {}  # index → text | reasoning | tool
        # index → the tool call: id, name, server-run, its input so far, and its id as JSON
        # (encoded once, for every input delta's chunk)
        self._tools: dict[bytes, _Tool] = {}
        # the server tool calls of this stream: their result blocks become their output
        self._server_calls: set[str] = set()
        self._ended = False

    def translate(self, block: bytes, name: bytes, record: StreamRecord) -> bytes:
        if name == _DELTA:
            match = _match_delta(block)
            if match is not None:
                text = match[_TEXT]
                if text is not None:  # the common event: one lookup, one format
                    index = match[1]
                    if self._open.get(index) != "text":
                        return b""  # no text block open at its index: dropped, as decoded
                    log = self._log
                    if log is None:
                        return _TEXT_DELTA % (index, text)
                    n = log.numbered = log.numbered + 1
                    return _NUMBERED_TEXT_DELTA % (log.id_prefix, n, index, text)
                out = self._literal_delta(match)
            else:
                out = self._delta(_data(block))
        else:
            out = self._event(block, name)
        return self._numbered(out)

    def _literal_delta(self, match: re.Match[bytes]) -> bytes:
        """A thinking or tool input delta, its JSON string literal reused as is."""
        index, value = match[1], match[deltas.THINKING]
        if value is not None:
            if self._open.get(index) != "reasoning":
                return b""  # no thinking block open at its index: dropped, as decoded
            return _REASONING_DELTA % (index, value)
        value = match[deltas.TOOL_INPUT]
        tool = self._tools.get(index)
        if tool is not None:
            try:
                piece = json.loads(value)
            except ValueError:
                # Not JSON after all (an escape JSON has not, a control character, bytes
                # that are not UTF-8): dropped, as the decoding path drops the event.
                return b""
            tool[3].append(piece)
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
        if kind == "redacted_thinking":
            redacted = content.get("data")
            if not isinstance(redacted, str):
                return b""
            self._open[index] = "reasoning"
            return chunk({"type": "reasoning-start", "id": index.decode(),
                          "providerMetadata": {"anthropic": {"redactedData": redacted}}})  # fmt: skip
        if kind in _TOOL_KINDS:
            call_id, tool = str(content.get("id", "")), str(content.get("name", ""))
            server = kind != "tool_use"
            self._open[index] = "tool"
            self._tools[index] = (call_id, tool, server, [], json.dumps(call_id).encode())
            start: dict[str, Any] = {"type": "tool-input-start", "toolCallId": call_id,
                                     "toolName": tool}  # fmt: skip
            if server:
                start["providerExecuted"] = True
                if kind == "mcp_tool_use":
                    start["providerMetadata"] = _mcp_call(content)
                if len(self._server_calls) < _MAX_SERVER_CALLS:
                    self._server_calls.add(call_id)
            return chunk(start)
        if isinstance(kind, str) and kind.endswith("_tool_result"):
            return self._server_result(kind, content)
        return b""

    def _server_result(self, kind: str, content: dict[str, Any]) -> bytes:
        """A server tool's result block (complete in its start event) as the call's output."""
        call_id = content.get("tool_use_id")
        if call_id not in self._server_calls:
            return b""  # the client knows no such call: the SDK would throw on it
        self._server_calls.discard(call_id)
        output = content.get("content")
        metadata = {"anthropic": {"type": kind}}
        failed = content.get("is_error") is True
        error = output if failed else _server_error(output)
        if failed or error is not None:  # the tool failed: as the AI SDK's provider says it
            error_text = error if isinstance(error, str) else _compact(error)
            return chunk({"type": "tool-output-error", "toolCallId": call_id,
                          "errorText": error_text, "providerExecuted": True,
                          "providerMetadata": metadata})  # fmt: skip
        return chunk({"type": "tool-output-available", "toolCallId": call_id,
                      "output": output, "providerExecuted": True,
                      "providerMetadata": metadata})  # fmt: skip

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
        if kind == "signature_delta" and self._open.get(index) == "reasoning":
            signature = delta.get("signature")
            if not isinstance(signature, str):
                return b""
            return chunk({"type": "reasoning-delta", "id": index.decode(), "delta": "",
                          "providerMetadata": {"anthropic": {"signature": signature}}})  # fmt: skip
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

    def _close_open(self) -> bytes:
        """Close every part still open, in the order they opened: once, at the stream's
        end (its `finish` or its `error`), so no part is left streaming on the client."""
        if not self._open:
            return b""
        tools = self._tools
        closing = b"".join(
            _closed_part(index, kind, tools.get(index)) for index, kind in self._open.items()
        )
        self._open.clear()
        tools.clear()
        return closing

    def _error(self, message: str) -> bytes:
        if self._ended:
            return b""
        self._ended = True
        return self._close_open() + chunk({"type": "error", "errorText": message}) + DONE

    def error_event(self, error_type: str, message: str, outcome: Outcome) -> bytes:
        return self._numbered(self._error(message))

    def finish(self, record: StreamRecord) -> bytes:
        return self._numbered(self._finish(record))

    def _finish(self, record: StreamRecord) -> bytes:
        if self._ended:
            return b""
        self._ended = True
        reason = finish_reason(record.stop_reason)
        return (
            self._close_open()
            + chunk({"type": "finish-step"})
            + chunk({"type": "finish", "finishReason": reason})
            + DONE
        )


def _closed_part(index: bytes, kind: str, tool: _Tool | None) -> bytes:
    """The chunk that closes a part still open at the stream's end: `text-end`,
    `reasoning-end`, or for a tool call whose input was still streaming `tool-input-error`
    with the input so far (the part's state becomes `output-error`, not left streaming)."""
    if kind == "text":
        return chunk({"type": "text-end", "id": index.decode()})
    if kind == "reasoning":
        return chunk({"type": "reasoning-end", "id": index.decode()})
    if tool is None:
        return b""
    call_id, name, server, pieces, _ = tool
    error: dict[str, Any] = {"type": "tool-input-error", "toolCallId": call_id, "toolName": name,
                             "input": "".join(pieces), "errorText": UNFINISHED_TOOL_INPUT}  # fmt: skip
    if server:
        error["providerExecuted"] = True
    return chunk(error)


def closing_chunks(events: Iterable[bytes]) -> bytes:
    """The chunks that close every part `events` left open: a stream's chunks as sent
    (kept in the resume store), read when a reader ends it without its producer (which
    died, or goes on elsewhere while this replica stops), so its client keeps no part
    streaming, as a live stream's end closes them (`UiTranslator._close_open`). Read once,
    at that end, never per event.

    A part whose start left the store's bound (its oldest events go first) is known by
    its deltas: closed too, a tool call with the name it had then unknown (empty)."""
    opened: dict[str, str] = {}  # part id (a tool call's id) → text | reasoning | tool
    tools: dict[str, _Tool] = {}
    for event in events:
        for line in event.split(b"\n"):
            if not line.startswith(b"data: {"):
                continue
            try:
                data = json.loads(line[6:])
            except ValueError:
                continue
            if isinstance(data, dict):
                _follow(data, opened, tools)
    return b"".join(
        _closed_part(key.encode(), kind, tools.get(key)) for key, kind in opened.items()
    )


def _follow(data: dict[str, Any], opened: dict[str, str], tools: dict[str, _Tool]) -> None:
    """Update the open parts for one chunk as sent."""
    kind = data.get("type")
    if kind in ("text-start", "text-delta", "reasoning-start", "reasoning-delta"):
        opened.setdefault(str(data.get("id")), str(kind).partition("-")[0])
    elif kind in ("text-end", "reasoning-end"):
        opened.pop(str(data.get("id")), None)
    elif kind in ("tool-input-start", "tool-input-delta"):
        call_id = str(data.get("toolCallId"))
        if call_id not in tools:
            opened[call_id] = "tool"
            name = str(data.get("toolName", ""))
            server = data.get("providerExecuted") is True
            tools[call_id] = (call_id, name, server, [], b"")
        if kind == "tool-input-delta":
            tools[call_id][3].append(str(data.get("inputTextDelta", "")))
    elif kind in ("tool-input-available", "tool-input-error"):
        call_id = str(data.get("toolCallId"))
        opened.pop(call_id, None)
        tools.pop(call_id, None)


def _mcp_call(content: dict[str, Any]) -> dict[str, Any]:
    """What an MCP call needs to be sent back as one: its block type and server name."""
    return {
        "anthropic": {"type": "mcp_tool_use", "serverName": str(content.get("server_name", ""))}
    }


def _data(block: bytes) -> dict[str, Any]:
    try:
        value = json.loads(parse_block(block)[1])
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}
