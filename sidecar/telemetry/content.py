"""Prompt and completion text for spans, only with `telemetry.capture_content: true`.

Shapes follow the GenAI conventions: `gen_ai.system_instructions`, `gen_ai.input.messages`
and `gen_ai.output.messages` are JSON strings of `{role, parts: [{type, ...}]}` objects.
"""

from __future__ import annotations

import json
from typing import Any

from sidecar.record import StreamRecord


def _parts(content: Any) -> list[dict[str, Any]]:
    if isinstance(content, str):
        return [{"type": "text", "content": content}]
    parts: list[dict[str, Any]] = []
    for block in content if isinstance(content, list) else ():
        if not isinstance(block, dict):
            continue
        kind = block.get("type")
        if kind == "text":
            parts.append({"type": "text", "content": block.get("text", "")})
        elif kind == "tool_use":
            parts.append(
                {"type": "tool_call", "id": block.get("id"), "name": block.get("name"),
                 "arguments": block.get("input")}
            )  # fmt: skip
        elif kind == "tool_result":
            parts.append(
                {"type": "tool_call_response", "id": block.get("tool_use_id"),
                 "response": block.get("content")}
            )  # fmt: skip
        else:
            parts.append({"type": str(kind)})  # images, documents: the kind, never the bytes
    return parts


def _dumps(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


def request_content(body: bytes) -> tuple[str | None, str | None]:
    """(system instructions, input messages) of a Messages request body, as JSON strings."""
    try:
        request = json.loads(body)
    except ValueError:
        return None, None
    if not isinstance(request, dict):
        return None, None
    system = request.get("system")
    instructions = _dumps(_parts(system)) if system else None
    messages = [
        {"role": message.get("role"), "parts": _parts(message.get("content"))}
        for message in request.get("messages") or ()
        if isinstance(message, dict)
    ]
    return instructions, _dumps(messages)


def output_messages(record: StreamRecord) -> str:
    """The completion as one assistant message with its finish reason."""
    message: dict[str, Any] = {
        "role": "assistant",
        "parts": [{"type": "text", "content": "".join(record.completion_parts)}],
    }
    if record.stop_reason is not None:
        message["finish_reason"] = record.stop_reason
    return _dumps([message])
