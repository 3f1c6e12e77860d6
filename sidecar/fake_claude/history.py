"""What the real API refuses in a conversation's history, so clients are tested against it.

- A server tool call (`server_tool_use`, `mcp_tool_use`) must be followed, in the same
  assistant message, by its result block (`*_tool_result` with its `tool_use_id`).
- A client tool call (`tool_use`) that another message follows must be answered in that
  next message by a `tool_result` with its `tool_use_id`.
- With thinking enabled, the last assistant message, when it holds a `tool_use` (a tool
  round trip in progress), must start with its `thinking` or `redacted_thinking` block.
- A `thinking` block must carry the signature Claude gave it (the fake's `sign`).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from sidecar.fake_claude.reply import sign, thinking_enabled

_SERVER_CALLS = frozenset({"server_tool_use", "mcp_tool_use"})
_THINKING = frozenset({"thinking", "redacted_thinking"})


def history_error(body: Mapping[str, Any]) -> str | None:
    """The API's message for the first thing wrong in `messages`, else None."""
    messages = body.get("messages")
    if not isinstance(messages, list):
        return None
    last_assistant = None
    for i, message in enumerate(messages):
        content = message.get("content") if isinstance(message, dict) else None
        if not isinstance(content, list):
            continue
        if message.get("role") == "assistant":
            last_assistant = i
        error = _blocks_error(content, i) or _unanswered_error(messages, i)
        if error is not None:
            return error
    if thinking_enabled(body) and last_assistant is not None:
        content = messages[last_assistant]["content"]
        first = content[0] if content and isinstance(content[0], dict) else {}
        first_type = first.get("type")
        if any(isinstance(b, dict) and b.get("type") == "tool_use" for b in content) and not (
            isinstance(first_type, str) and first_type in _THINKING
        ):
            return (
                f"messages.{last_assistant}.content.0.type: Expected `thinking` or "
                f"`redacted_thinking`, but found `{first_type}`. When `thinking` is "
                "enabled, a final `assistant` message must start with a thinking block."
            )
    return None


def _unanswered_error(messages: list[Any], i: int) -> str | None:
    """The API's refusal of message `i`'s `tool_use` blocks left without a `tool_result` in
    the message right after (the last message's calls are the ones being answered next)."""
    if i + 1 >= len(messages) or messages[i].get("role") != "assistant":
        return None
    following = messages[i + 1]
    after = following.get("content") if isinstance(following, dict) else None
    answered = {
        str(block.get("tool_use_id"))
        for block in (after if isinstance(after, list) else [])
        if isinstance(block, dict) and block.get("type") == "tool_result"
    }
    missing = [
        str(block.get("id"))
        for block in messages[i]["content"]
        if isinstance(block, dict)
        and block.get("type") == "tool_use"
        and str(block.get("id")) not in answered
    ]
    if not missing:
        return None
    return (
        f"messages.{i}: `tool_use` ids were found without `tool_result` blocks immediately "
        f"after: {', '.join(missing)}. Each `tool_use` block must have a corresponding "
        "`tool_result` block in the next message."
    )


def _blocks_error(content: list[Any], i: int) -> str | None:
    for j, block in enumerate(content):
        if isinstance(block, dict) and not isinstance(block.get("type", ""), str):
            # As the API: a block's type names one of its kinds (a list or a number is no
            # name, and no set or dict key below could hold it).
            return f"messages.{i}.content.{j}.type: Input should be a valid string"
    answered = {
        str(block.get("tool_use_id"))
        for block in content
        if isinstance(block, dict) and block.get("type", "").endswith("_tool_result")
    }
    for j, block in enumerate(content):
        if not isinstance(block, dict):
            continue
        kind = block.get("type")
        if kind in _SERVER_CALLS and str(block.get("id")) not in answered:
            return (
                f"messages.{i}.content.{j}: `{kind}` block with id `{block.get('id')}` "
                "has no corresponding result block after it"
            )
        if kind == "thinking" and block.get("signature") != sign(str(block.get("thinking"))):
            return f"messages.{i}.content.{j}: Invalid `signature` in `thinking` block"
    return None
