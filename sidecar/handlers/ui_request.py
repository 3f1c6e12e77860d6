"""The AI SDK's chat request (`useChat` → `DefaultChatTransport`) as one Claude request.

Pure functions, no I/O. The body `DefaultChatTransport` posts is
`{...body, id, messages, trigger, messageId}`; each UI message is `{id, role, parts}`:

| UI part | Claude content |
| --- | --- |
| `text` | `text` block (empty texts dropped) |
| `file` with an `image/*` data or http(s) URL | `image` block (`base64` or `url` source) |
| `file` with `application/pdf` | `document` block (the file name is not sent) |
| `file` with a `text/*` data URL | `text` block `<file name>:\n<content>`, screened like any text |
| `tool-<name>` / `dynamic-tool` with its input | `tool_use` in the assistant turn, and when it has an output or an error, a `tool_result` in the user turn right after it; a call left unanswered (no output, error or denial) with a later turn after it is dropped (Claude refuses it) |
| a tool part with `providerExecuted: true` and its output (a server tool Claude ran) | `server_tool_use` (`mcp_tool_use` when its `callProviderMetadata.anthropic.type` says so, with its `serverName`) and its result block, both in the assistant turn; the result's type is `resultProviderMetadata.anthropic.type` (else `<tool name>_tool_result`), the output its `content` |
| a provider-executed tool part in state `output-error` (a server tool that failed) | the same call and result block, whose content is the error: `{"type": "<result type>_error", "error_code": …}` from the part's `errorText` (`{"type", "errorCode"}` JSON, as `ui_stream` and the AI SDK's Anthropic provider write it; `unavailable` when it names no code); an MCP call's `mcp_tool_result` with `is_error` and its content |
| a provider-executed tool part without an output or an error | dropped (Claude refuses a server call with no result; its own text stays) |
| `reasoning` of an assistant message with `providerMetadata.anthropic.signature` | `thinking` block (text and signature), in place |
| `reasoning` with `providerMetadata.anthropic.redactedData` | `redacted_thinking` block (its data), in place |
| other `reasoning`, `step-start`, `source-*`, `data-*` | dropped (display only; Claude refuses unsigned thinking) |

With extended thinking and tools, Claude requires the thinking blocks of the turn that
called a tool back unchanged: `ui_stream` gives the reasoning parts the signature (or the
redacted data) as the AI SDK's Anthropic provider does, and the client sends them back.

Fields the transport adds from `useChat({body})` (app-specific) are ignored: they never
reach Claude. `system` and `model` are honoured only when the config accepts them.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from dataclasses import dataclass
from typing import Any

from sidecar.config import UiConfig
from sidecar.errors import Rejection, bad_request
from sidecar.handlers.request_body import parse_json_text, parse_model

TRIGGERS = frozenset({"submit-message", "regenerate-message"})
_ROLES = frozenset({"system", "user", "assistant"})
_IMAGE_TYPES = frozenset({"image/jpeg", "image/png", "image/gif", "image/webp"})
_TOOL_STATES_WITH_INPUT = frozenset({"input-available", "output-available", "output-error",
                                     "approval-requested", "approval-responded", "output-denied"})  # fmt: skip
_MAX_ID = 200  # chat and message ids are echoed in logs and URLs: bounded
# A server tool's result block type (`web_search_tool_result`, `mcp_tool_result`…); never a
# client `tool_result`, which the pattern cannot spell.
_SERVER_RESULT = re.compile(r"[a-z][a-z0-9_]{0,40}_tool_result")
_SERVER_ERROR = re.compile(r"[a-z][a-z0-9_]{0,40}_tool_result_error")


@dataclass(frozen=True, slots=True)
class UiRequest:
    """A parsed chat request: the chat id, the trigger and the Claude request body."""

    chat_id: str
    trigger: str
    body: dict[str, Any]


def parse_ui_request(
    fields: dict[str, Any], ui: UiConfig, default_model: str, default_max_tokens: int
) -> UiRequest:
    """Validate `useChat`'s body and translate it; a 400 naming the field for anything wrong."""
    chat_id = fields.get("id")
    if not isinstance(chat_id, str) or not chat_id or len(chat_id) > _MAX_ID:
        raise bad_request(f"id must be the chat id (a string of 1 to {_MAX_ID} characters)")
    trigger = fields.get("trigger", "submit-message")
    if not isinstance(trigger, str) or trigger not in TRIGGERS:
        raise bad_request("trigger must be 'submit-message' or 'regenerate-message'")
    model = fields.get("model")
    if model is not None and not ui.accept_model:
        raise bad_request("model is set by the sidecar on this route (ui.accept_model is off)")
    if model is not None:
        model = parse_model(model)  # bounded and printable, as on every route
    system_field = fields.get("system")
    if system_field is not None and not ui.accept_system:
        raise bad_request("system is set by the sidecar on this route (ui.accept_system is off)")
    if system_field is not None and not isinstance(system_field, str):
        raise bad_request("system must be a string")
    raw_messages = fields.get("messages")
    if not isinstance(raw_messages, list) or not raw_messages:
        raise bad_request("messages must be a non-empty list of UI messages")
    system_texts = [ui.system] if ui.system else []
    if system_field:
        system_texts.append(system_field)
    messages: list[dict[str, Any]] = []
    for i, message in enumerate(raw_messages):
        role, parts = _message(message, i)
        if role == "system":
            if not ui.accept_system:
                raise bad_request(
                    f"messages.{i}: system messages are not accepted (ui.accept_system is off)"
                )
            system_texts.extend(_system_texts(parts, i))
            continue
        for turn_role, content in _turns(role, parts, i):
            _append(messages, turn_role, content)
    messages = _answered_calls_only(messages)
    if not messages:
        raise bad_request("messages: no text, file or tool content to send")
    if messages[0]["role"] != "user":
        messages.insert(0, {"role": "user", "content": [{"type": "text", "text": "(continue)"}]})
    body: dict[str, Any] = {
        "model": model or ui.model or default_model,
        "max_tokens": ui.max_tokens or default_max_tokens,
        "stream": True,
        "messages": messages,
    }
    if system_texts:
        body["system"] = "\n\n".join(system_texts)
    if ui.tools:
        body["tools"] = ui.tools
    if ui.thinking_budget_tokens:
        body["thinking"] = {"type": "enabled", "budget_tokens": ui.thinking_budget_tokens}
        body["max_tokens"] = max(body["max_tokens"], ui.thinking_budget_tokens + 1)
    return UiRequest(chat_id=chat_id, trigger=trigger, body=body)


def _message(message: object, i: int) -> tuple[str, list[Any]]:
    if not isinstance(message, dict):
        raise bad_request(f"messages.{i} must be an object with role and parts")
    role = message.get("role")
    if not isinstance(role, str) or role not in _ROLES:
        raise bad_request(f"messages.{i}.role must be 'user', 'assistant' or 'system'")
    parts = message.get("parts")
    if not isinstance(parts, list):
        raise bad_request(f"messages.{i}.parts must be a list")
    return role, parts


def _system_texts(parts: list[Any], i: int) -> list[str]:
    texts = []
    for j, part in enumerate(parts):
        if not isinstance(part, dict) or part.get("type") != "text":
            raise bad_request(f"messages.{i}.parts.{j}: a system message holds text parts only")
        texts.append(_string(part, "text", f"messages.{i}.parts.{j}"))
    return texts


def _turns(role: str, parts: list[Any], i: int) -> list[tuple[str, list[dict[str, Any]]]]:
    """One UI message as Claude turns: an assistant message with tool outputs is split so
    each `tool_result` follows the turn holding its `tool_use`."""
    turns: list[tuple[str, list[dict[str, Any]]]] = []
    own: list[dict[str, Any]] = []
    results: list[dict[str, Any]] = []
    for j, part in enumerate(parts):
        where = f"messages.{i}.parts.{j}"
        if not isinstance(part, dict) or not isinstance(part.get("type"), str):
            raise bad_request(f"{where} must be an object with a type")
        kind = part["type"]
        blocks: list[dict[str, Any]]
        if kind.startswith("tool-") or kind == "dynamic-tool":
            if role != "assistant":
                raise bad_request(f"{where}: tool parts belong to assistant messages")
            if part.get("providerExecuted") is True:  # Claude ran it: its call and result
                blocks = _server_tool(part, kind, where)
            else:
                use, result = _tool(part, kind, where)
                if use is not None:
                    own.append(use)
                if result is not None:
                    results.append(result)
                continue
        elif kind == "reasoning":
            blocks = _thinking(part, where) if role == "assistant" else []
        else:
            block = _block(part, kind, role, where)
            blocks = [] if block is None else [block]
        if not blocks:
            continue
        if results:  # a new step after tool results: close this turn and its results first
            turns.extend([(role, own), ("user", results)])
            own, results = [], []
        own.extend(blocks)
    if own:
        turns.append((role, own))
    if results:
        turns.append(("user", results))
    return turns


def _block(part: dict[str, Any], kind: str, role: str, where: str) -> dict[str, Any] | None:
    if kind == "text":
        text = _string(part, "text", where)
        return {"type": "text", "text": text} if text else None
    if kind == "file":
        if role != "user":
            raise bad_request(f"{where}: files are accepted in user messages only")
        return _file(part, where)
    if kind in ("step-start", "source-url", "source-document", "reasoning-file"):
        return None
    if kind.startswith("data-") or kind == "custom":
        return None
    raise bad_request(f"{where}: unknown part type")


def _file(part: dict[str, Any], where: str) -> dict[str, Any]:
    media = _string(part, "mediaType", where).lower()
    url = _string(part, "url", where)
    title = part.get("filename")
    if url.startswith("data:"):
        header, comma, payload = url[5:].partition(",")
        if not comma or not header.endswith(";base64"):
            raise bad_request(f"{where}.url: a data URL must be base64-encoded")
        try:
            raw = base64.b64decode(payload, validate=True)
        except (binascii.Error, ValueError):
            raise bad_request(f"{where}.url: not valid base64") from None
        if media in _IMAGE_TYPES:
            return {"type": "image", "source": {"type": "base64", "media_type": media,
                                                "data": payload}}  # fmt: skip
        if media == "application/pdf":
            block = {"type": "document", "source": {"type": "base64",
                     "media_type": media, "data": payload}}  # fmt: skip
        elif media.startswith("text/"):
            try:
                text = raw.decode()
            except UnicodeDecodeError:
                raise bad_request(f"{where}.url: a text file must be UTF-8") from None
            # A text block, not a text document: screening reads it like any other text.
            named = f"{title}:\n{text}" if isinstance(title, str) and title else text
            return {"type": "text", "text": named}
        else:
            raise bad_request(f"{where}.mediaType: images, PDF and text files are accepted")
    elif url.startswith(("https://", "http://")):
        if media in _IMAGE_TYPES:
            return {"type": "image", "source": {"type": "url", "url": url}}
        if media != "application/pdf":
            raise bad_request(f"{where}.mediaType: a linked file must be an image or a PDF")
        block = {"type": "document", "source": {"type": "url", "url": url}}
    else:
        raise bad_request(f"{where}.url must be a data: or http(s) URL")
    return block


def _thinking(part: dict[str, Any], where: str) -> list[dict[str, Any]]:
    """A reasoning part Claude signed as its thinking block; none for one it did not."""
    anthropic = _anthropic(part.get("providerMetadata"))
    signature = anthropic.get("signature")
    if isinstance(signature, str) and signature:
        text = _string(part, "text", where)
        return [{"type": "thinking", "thinking": text, "signature": signature}]
    data = anthropic.get("redactedData")
    if isinstance(data, str) and data:
        return [{"type": "redacted_thinking", "data": data}]
    return []


def _server_tool(part: dict[str, Any], kind: str, where: str) -> list[dict[str, Any]]:
    """A provider-executed tool part as Claude's own call and its result block; nothing
    without a result (only Claude can give one, and it refuses a call left without).

    A call that failed (`output-error`) goes back as its error result, as the AI SDK's
    Anthropic provider sends it: `errorText` is the `{"type": "…_tool_result_error",
    "errorCode": …}` JSON `ui_stream` (or the provider) wrote, and becomes the result
    block's `{"type", "error_code"}` content (`unavailable` when it says no code)."""
    state = part.get("state")
    if state not in ("output-available", "output-error"):
        return []
    failed = state == "output-error"
    call_id, name, tool_input = _call(part, kind, where)
    call = _anthropic(part.get("callProviderMetadata"))
    result_meta = _anthropic(part.get("resultProviderMetadata"))
    error = _error_of(part, where) if failed else None
    use: dict[str, Any]
    if call.get("type") == "mcp_tool_use":
        server = call.get("serverName")
        if not isinstance(server, str) or not server:
            raise bad_request(f"{where}.callProviderMetadata.anthropic.serverName must be a string")
        use = {"type": "mcp_tool_use", "id": call_id, "name": name, "server_name": server,
               "input": tool_input}  # fmt: skip
        result_type = "mcp_tool_result"
    else:
        use = {"type": "server_tool_use", "id": call_id, "name": name, "input": tool_input}
        given = result_meta.get("type")
        error_type = error.get("type") if isinstance(error, dict) else None
        if isinstance(given, str):
            result_type = given
        elif isinstance(error_type, str) and _SERVER_ERROR.fullmatch(error_type):
            result_type = error_type.removesuffix("_error")
        else:
            result_type = f"{name}_tool_result"
        if not _SERVER_RESULT.fullmatch(result_type) or result_type == "mcp_tool_result":
            raise bad_request(f"{where}.resultProviderMetadata.anthropic.type: "
                              "not a server tool result block type")  # fmt: skip
    if not failed:
        output = part.get("output")
    elif result_type == "mcp_tool_result":  # its content, as `ui_stream` wrote it
        text = part.get("errorText")
        output = error if isinstance(error, list) else text or "the tool failed"
    else:
        output = _server_error(result_type, error)
    result: dict[str, Any] = {"type": result_type, "tool_use_id": call_id, "content": output}
    if result_meta.get("isError") is True or (failed and result_type == "mcp_tool_result"):
        result["is_error"] = True
    return [use, result]


def _error_of(part: dict[str, Any], where: str) -> object:
    """A failed server call's `errorText`, read as JSON when it is (else the text): JSON by
    the request body's rules, so what is not (`NaN`, nesting too deep, a key twice) is the
    text, never a value no JSON encoder writes back for Claude."""
    text = part.get("errorText")
    if text is None:
        return None
    if not isinstance(text, str):
        raise bad_request(f"{where}.errorText must be a string")
    try:
        return parse_json_text(text)
    except Rejection:
        return text


def _server_error(result_type: str, error: object) -> dict[str, Any]:
    """A server tool's error content: `{"type": "<result type>_error", "error_code": …}`."""
    fields = error if isinstance(error, dict) else {}
    code = fields.get("errorCode", fields.get("error_code"))
    return {"type": f"{result_type}_error",
            "error_code": code if isinstance(code, str) and code else "unavailable"}  # fmt: skip


def _call(part: dict[str, Any], kind: str, where: str) -> tuple[str, str, dict[str, Any]]:
    """A tool part's call: its id, the tool's name and its input (`{}` unless an object)."""
    call_id = _string(part, "toolCallId", where)
    name = kind[5:] if kind != "dynamic-tool" else _string(part, "toolName", where)
    if not name:
        raise bad_request(f"{where}: the tool needs a name")
    tool_input = part.get("input")
    return call_id, name, tool_input if isinstance(tool_input, dict) else {}


def _anthropic(metadata: object) -> dict[str, Any]:
    """The `anthropic` entry of a part's provider metadata ({} when absent)."""
    entry = metadata.get("anthropic") if isinstance(metadata, dict) else None
    return entry if isinstance(entry, dict) else {}


def _tool(
    part: dict[str, Any], kind: str, where: str
) -> tuple[dict[str, Any] | None, dict[str, Any] | None]:
    """A tool part as (tool_use, tool_result); (None, None) while its input is still streaming."""
    state = part.get("state")
    if not isinstance(state, str):
        raise bad_request(f"{where}.state must be a string")
    if state not in _TOOL_STATES_WITH_INPUT:
        return None, None
    call_id, name, tool_input = _call(part, kind, where)
    use = {"type": "tool_use", "id": call_id, "name": name, "input": tool_input}
    if state == "output-available":
        output = part.get("output")
        content = output if isinstance(output, str) else json.dumps(output, ensure_ascii=False)
        return use, {"type": "tool_result", "tool_use_id": call_id, "content": content}
    if state == "output-error":
        error = part.get("errorText")
        content = error if isinstance(error, str) and error else "the tool failed"
        return use, {"type": "tool_result", "tool_use_id": call_id, "content": content,
                     "is_error": True}  # fmt: skip
    if state == "output-denied":
        return use, {"type": "tool_result", "tool_use_id": call_id,
                     "content": "the user denied this tool call", "is_error": True}  # fmt: skip
    return use, None


def _answered_calls_only(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Claude refuses a `tool_use` whose `tool_result` is not in the next message, so a
    client tool call the page never answered (no output, error or denial: the person wrote
    on instead) is dropped when a turn follows it, as the AI SDK's
    `ignoreIncompleteToolCalls` drops it; otherwise that chat would be refused for good.
    The last turn's calls stay (their results are what comes next)."""
    kept: list[dict[str, Any]] = []
    for i, message in enumerate(messages):
        content = message["content"]
        if message["role"] == "assistant" and i + 1 < len(messages):
            answered = {block["tool_use_id"] for block in messages[i + 1]["content"]
                        if block["type"] == "tool_result"}  # fmt: skip
            content = [block for block in content
                       if block["type"] != "tool_use" or block["id"] in answered]  # fmt: skip
        _append(kept, message["role"], content)
    return kept


def _append(messages: list[dict[str, Any]], role: str, content: list[dict[str, Any]]) -> None:
    """Claude alternates roles: consecutive turns of one role become one message."""
    if not content:
        return
    if messages and messages[-1]["role"] == role:
        messages[-1]["content"].extend(content)
    else:
        messages.append({"role": role, "content": list(content)})


def _string(part: dict[str, Any], key: str, where: str) -> str:
    value = part.get(key)
    if not isinstance(value, str):
        raise bad_request(f"{where}.{key} must be a string")
    return value
