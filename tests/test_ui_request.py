"""useChat's request body → one Claude request: a table of translations and refusals."""

from __future__ import annotations

import base64
import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sidecar.config import UiConfig
from sidecar.errors import Rejection
from sidecar.handlers.ui import client_part
from sidecar.handlers.ui_request import parse_ui_request
from sidecar.policy.claude_schema import collect_texts

PNG = base64.b64encode(b"\x89PNG\r\n\x1a\nfake").decode()
TEXT_FILE = base64.b64encode("notes: ünïcode".encode()).decode()
TOOL = {"name": "get_weather", "input_schema": {"type": "object"}}


def user(*parts: dict[str, Any]) -> dict[str, Any]:
    return {"id": "u", "role": "user", "parts": list(parts)}


def assistant(*parts: dict[str, Any]) -> dict[str, Any]:
    return {"id": "a", "role": "assistant", "parts": list(parts)}


def text(value: str) -> dict[str, Any]:
    return {"type": "text", "text": value}


def tool(state: str, **extra: Any) -> dict[str, Any]:
    return {"type": "tool-get_weather", "toolCallId": "call_1", "state": state,
            "input": {"city": "Paris"}, **extra}  # fmt: skip


def body(*messages: dict[str, Any], **fields: Any) -> dict[str, Any]:
    return {"id": "chat-1", "messages": list(messages), "trigger": "submit-message", **fields}


def translate(fields: dict[str, Any], **ui: Any) -> dict[str, Any]:
    return parse_ui_request(fields, UiConfig(**ui), "claude-default", 512).body


USE = {"type": "tool_use", "id": "call_1", "name": "get_weather", "input": {"city": "Paris"}}

# fmt: off
TRANSLATIONS: list[tuple[str, dict[str, Any], dict[str, Any], list[dict[str, Any]]]] = [
    ("text", body(user(text("hi"))), {}, [{"role": "user", "content": [text("hi")]}]),
    (
        "history with reasoning and step parts dropped",
        body(
            user(text("hi")),
            assistant({"type": "step-start"}, {"type": "reasoning", "text": "hmm"}, text("hello")),
            user(text("again")),
        ),
        {},
        [
            {"role": "user", "content": [text("hi")]},
            {"role": "assistant", "content": [text("hello")]},
            {"role": "user", "content": [text("again")]},
        ],
    ),
    (
        "image data URL",
        body(
            user(
                text("see"),
                {"type": "file", "mediaType": "image/png", "url": f"data:image/png;base64,{PNG}"},
            )
        ),
        {},
        [
            {
                "role": "user",
                "content": [
                    text("see"),
                    {
                        "type": "image",
                        "source": {"type": "base64", "media_type": "image/png", "data": PNG},
                    },
                ],
            }
        ],
    ),
    (
        "linked PDF and a text file",
        body(
            user(
                {
                    "type": "file",
                    "mediaType": "application/pdf",
                    "url": "https://x.test/a.pdf",
                    "filename": "a.pdf",
                },
                {
                    "type": "file",
                    "mediaType": "text/plain",
                    "url": f"data:text/plain;base64,{TEXT_FILE}",
                    "filename": "notes.txt",
                },
            )
        ),
        {},
        [
            {
                "role": "user",
                "content": [
                    {
                        "type": "document",
                        "source": {"type": "url", "url": "https://x.test/a.pdf"},
                    },
                    {"type": "text", "text": "notes.txt:\nnotes: ünïcode"},
                ],
            }
        ],
    ),
    (
        "a tool's object output as the text Claude reads: non-ASCII as it is, not escaped",
        body(
            user(text("password?")),
            assistant(tool("output-available", output={"r": "la contraseña", "n": ["ｉｇｎｏｒｅ"]})),
        ),
        {},
        [
            {"role": "user", "content": [text("password?")]},
            {"role": "assistant", "content": [USE]},
            {
                "role": "user",
                "content": [
                    {"type": "tool_result", "tool_use_id": "call_1",
                     "content": '{"r": "la contraseña", "n": ["ｉｇｎｏｒｅ"]}'}
                ],
            },
        ],
    ),
    (
        "tool call with its output, then more text from the next step",
        body(
            user(text("weather?")),
            assistant(
                text("checking"),
                tool("output-available", output={"t": 21}),
                {"type": "step-start"},
                text("21 degrees"),
            ),
        ),
        {},
        [
            {"role": "user", "content": [text("weather?")]},
            {"role": "assistant", "content": [text("checking"), USE]},
            {
                "role": "user",
                "content": [
                    {"type": "tool_result", "tool_use_id": "call_1", "content": '{"t": 21}'}
                ],
            },
            {"role": "assistant", "content": [text("21 degrees")]},
        ],
    ),
    (
        "tool error and a tool still streaming its input",
        body(
            user(text("go")),
            assistant(
                tool("output-error", errorText="no network"),
                {"type": "tool-get_weather", "toolCallId": "c2", "state": "input-streaming"},
            ),
        ),
        {},
        [
            {"role": "user", "content": [text("go")]},
            {"role": "assistant", "content": [USE]},
            {
                "role": "user",
                "content": [
                    {
                        "type": "tool_result",
                        "tool_use_id": "call_1",
                        "content": "no network",
                        "is_error": True,
                    }
                ],
            },
        ],
    ),
    (
        "dynamic tool",
        body(
            user(text("go")),
            assistant(
                {
                    "type": "dynamic-tool",
                    "toolName": "lookup",
                    "toolCallId": "d1",
                    "state": "input-available",
                    "input": {},
                }
            ),
        ),
        {},
        [
            {"role": "user", "content": [text("go")]},
            {
                "role": "assistant",
                "content": [{"type": "tool_use", "id": "d1", "name": "lookup", "input": {}}],
            },
        ],
    ),
    (
        "consecutive user messages merge; empty texts and data parts are dropped",
        body(user(text("a")), user(text(""), {"type": "data-weather", "data": {}}, text("b"))),
        {},
        [{"role": "user", "content": [text("a"), text("b")]}],
    ),
    (
        "an opening assistant message gets a user turn before it",
        body(assistant(text("Welcome!")), user(text("hi"))),
        {},
        [
            {"role": "user", "content": [text("(continue)")]},
            {"role": "assistant", "content": [text("Welcome!")]},
            {"role": "user", "content": [text("hi")]},
        ],
    ),
]
# fmt: on


@pytest.mark.parametrize(
    ("fields", "ui", "messages"),
    [case[1:] for case in TRANSLATIONS],
    ids=[case[0] for case in TRANSLATIONS],
)
def test_ui_messages_translate_to_claude_messages(
    fields: dict[str, Any], ui: dict[str, Any], messages: list[dict[str, Any]]
) -> None:
    translated = translate(fields, **ui)
    assert translated["messages"] == messages
    assert translated["stream"] is True


def test_the_sidecar_decides_model_system_tools_and_thinking() -> None:
    translated = translate(
        body(user(text("hi")), metadata={"app": "field"}, customField=1),
        system="Be brief.", model="claude-ui", max_tokens=100, tools=[TOOL],
        thinking_budget_tokens=2048,
    )  # fmt: skip
    assert translated["model"] == "claude-ui"
    assert translated["system"] == "Be brief."
    assert translated["tools"] == [TOOL]
    assert translated["thinking"] == {"type": "enabled", "budget_tokens": 2048}
    assert translated["max_tokens"] == 2049  # above the thinking budget, as Claude requires
    assert "customField" not in translated  # app fields from useChat's body never reach Claude


def test_accepted_system_and_model_from_the_request() -> None:
    fields = body(
        {"id": "s", "role": "system", "parts": [text("Answer in French.")]},
        user(text("hi")),
        system="Be kind.",
        model="claude-chosen",
    )
    translated = translate(fields, system="Sidecar rules.", accept_system=True, accept_model=True)
    assert translated["system"] == "Sidecar rules.\n\nBe kind.\n\nAnswer in French."
    assert translated["model"] == "claude-chosen"
    assert translated["messages"] == [{"role": "user", "content": [text("hi")]}]


def signed(thought: str, signature: str = "c2ln") -> dict[str, Any]:
    return {"type": "reasoning", "text": thought, "state": "done",
            "providerMetadata": {"anthropic": {"signature": signature}}}  # fmt: skip


def test_signed_thinking_goes_back_in_place_with_the_tool_call() -> None:
    """Extended thinking with tools: Claude wants the turn's thinking blocks back unchanged
    (signature, redacted data) before the tool_use; unsigned reasoning is dropped."""
    redacted = {"type": "reasoning", "text": "",
                "providerMetadata": {"anthropic": {"redactedData": "ZW5j"}}}  # fmt: skip
    got = translate(body(
        user(text("weather?")),
        assistant({"type": "step-start"}, signed("plan"), redacted,
                  {"type": "reasoning", "text": "unsigned"}, text("checking"),
                  tool("output-available", output="sunny"),
                  {"type": "step-start"}, signed("done", "c2ln2"), text("sunny")),
    ), thinking_budget_tokens=1024)["messages"]  # fmt: skip
    assert got == [
        {"role": "user", "content": [text("weather?")]},
        {"role": "assistant", "content": [
            {"type": "thinking", "thinking": "plan", "signature": "c2ln"},
            {"type": "redacted_thinking", "data": "ZW5j"}, text("checking"), USE]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "call_1",
                                      "content": "sunny"}]},
        {"role": "assistant", "content": [
            {"type": "thinking", "thinking": "done", "signature": "c2ln2"}, text("sunny")]},
    ]  # fmt: skip


@pytest.mark.parametrize(
    "metadata",
    [None, {}, {"anthropic": {}}, {"anthropic": {"signature": ""}}, {"openai": {"x": 1}},
     {"anthropic": {"signature": 7}}, {"anthropic": "sig"}, "sig"],
)  # fmt: skip
def test_reasoning_claude_did_not_sign_is_dropped(metadata: Any) -> None:
    part = {"type": "reasoning", "text": "hmm", "providerMetadata": metadata}
    got = translate(body(user(text("hi")), assistant(part, text("hello"))))["messages"]
    assert got[1] == {"role": "assistant", "content": [text("hello")]}


def test_reasoning_in_a_user_message_is_never_thinking() -> None:
    got = translate(body(user(signed("not mine"), text("hi"))))["messages"]
    assert got == [{"role": "user", "content": [text("hi")]}]


SERVER_RESULTS = ["web_search_tool_result", "web_fetch_tool_result",
                  "code_execution_tool_result", "bash_code_execution_tool_result",
                  "text_editor_code_execution_tool_result", "tool_search_tool_result"]  # fmt: skip


def server(name: str, state: str = "output-available", **extra: Any) -> dict[str, Any]:
    return {"type": f"tool-{name}", "toolCallId": "srv_1", "state": state,
            "input": {"query": "x"}, "providerExecuted": True, **extra}  # fmt: skip


@pytest.mark.parametrize("result_type", SERVER_RESULTS)
def test_a_server_tool_goes_back_as_claudes_call_and_result(result_type: str) -> None:
    output = [{"type": "web_search_result", "url": "https://a.example", "title": "A",
               "encrypted_content": "ZW5j"}]  # fmt: skip
    part = server("some_tool", output=output,
                  resultProviderMetadata={"anthropic": {"type": result_type}})  # fmt: skip
    got = translate(body(user(text("find")), assistant(part, text("found")), user(text("ok"))))
    assert got["messages"][1] == {"role": "assistant", "content": [
        {"type": "server_tool_use", "id": "srv_1", "name": "some_tool", "input": {"query": "x"}},
        {"type": result_type, "tool_use_id": "srv_1", "content": output}, text("found")]}  # fmt: skip


def test_a_server_tool_result_type_defaults_to_the_tools_name_and_keeps_its_error() -> None:
    part = server("web_fetch", output={"type": "web_fetch_tool_result_error",
                                       "error_code": "url_not_accessible"},
                  resultProviderMetadata={"anthropic": {"isError": True}})  # fmt: skip
    (_, (use, result)) = _assistant_blocks(part)
    assert use["type"] == "server_tool_use"
    assert result == {"type": "web_fetch_tool_result", "tool_use_id": "srv_1", "is_error": True,
                      "content": {"type": "web_fetch_tool_result_error",
                                  "error_code": "url_not_accessible"}}  # fmt: skip


def test_an_mcp_call_goes_back_with_its_server_and_mcp_tool_result() -> None:
    part = server("search_docs", output=[text("result")],
                  callProviderMetadata={"anthropic": {"type": "mcp_tool_use",
                                                      "serverName": "docs"}},
                  resultProviderMetadata={"anthropic": {"type": "mcp_tool_result"}})  # fmt: skip
    (_, blocks) = _assistant_blocks(part)
    assert blocks == [
        {"type": "mcp_tool_use", "id": "srv_1", "name": "search_docs", "server_name": "docs",
         "input": {"query": "x"}},
        {"type": "mcp_tool_result", "tool_use_id": "srv_1", "content": [text("result")]},
    ]  # fmt: skip


@pytest.mark.parametrize("result_type", SERVER_RESULTS)
def test_a_failed_server_tool_goes_back_as_claudes_call_and_its_error_result(
    result_type: str,
) -> None:
    error = {"type": f"{result_type}_error", "errorCode": "max_uses_exceeded"}
    part = server("some_tool", "output-error", errorText=json.dumps(error),
                  resultProviderMetadata={"anthropic": {"type": result_type}})  # fmt: skip
    got = translate(body(user(text("find")), assistant(part, text("sorry")), user(text("ok"))))
    assert got["messages"][1] == {"role": "assistant", "content": [
        {"type": "server_tool_use", "id": "srv_1", "name": "some_tool", "input": {"query": "x"}},
        {"type": result_type, "tool_use_id": "srv_1",
         "content": {"type": f"{result_type}_error", "error_code": "max_uses_exceeded"}},
        text("sorry")]}  # fmt: skip


@pytest.mark.parametrize(
    ("error_text", "result_type", "code"),
    [('{"type":"web_fetch_tool_result_error","errorCode":"url_not_accessible"}',
      "web_fetch_tool_result", "url_not_accessible"),  # its type names the result block
     ('{"type":"code_execution_tool_result_error","error_code":"too_many_requests"}',
      "code_execution_tool_result", "too_many_requests"),
     ("the search failed", "web_search_tool_result", "unavailable"),  # not JSON
     ('{"errorCode": 7}', "web_search_tool_result", "unavailable"),
     ('{"type":"tool_result_error","errorCode":"x"}', "web_search_tool_result", "x"),
     (None, "web_search_tool_result", "unavailable")],
)  # fmt: skip
def test_a_failed_server_tools_result_without_metadata_follows_its_error_text(
    error_text: str | None, result_type: str, code: str
) -> None:
    part = server("web_search", "output-error")
    if error_text is not None:
        part["errorText"] = error_text
    (_, (use, result)) = _assistant_blocks(part)
    assert use["type"] == "server_tool_use"
    assert result == {"type": result_type, "tool_use_id": "srv_1",
                      "content": {"type": f"{result_type}_error", "error_code": code}}  # fmt: skip


@pytest.mark.parametrize(
    ("error_text", "content"),
    [('[{"type":"text","text":"no"}]', [text("no")]), ("refused", "refused"),
     (None, "the tool failed")],
)  # fmt: skip
def test_a_failed_mcp_call_goes_back_as_its_error_result(
    error_text: str | None, content: Any
) -> None:
    part = server("lookup", "output-error",
                  callProviderMetadata={"anthropic": {"type": "mcp_tool_use", "serverName": "docs"}},
                  resultProviderMetadata={"anthropic": {"type": "mcp_tool_result"}})  # fmt: skip
    if error_text is not None:
        part["errorText"] = error_text
    (_, (use, result)) = _assistant_blocks(part)
    assert use["type"] == "mcp_tool_use"
    assert result == {"type": "mcp_tool_result", "tool_use_id": "srv_1", "is_error": True,
                      "content": content}  # fmt: skip


@pytest.mark.parametrize("state", ["input-available", "approval-requested", "approval-responded"])
def test_a_client_tool_call_left_unanswered_is_dropped_once_a_turn_follows(state: str) -> None:
    """Claude refuses a `tool_use` without its `tool_result` in the next message: a call
    the page never answered (the person wrote on) goes, and the turns around it merge."""
    got = translate(body(user(text("weather?")), assistant(tool(state)), user(text("no, hi")),
                         assistant(text("hello"), tool(state, toolCallId="call_2"))))  # fmt: skip
    assert got["messages"] == [
        {"role": "user", "content": [text("weather?"), text("no, hi")]},
        {"role": "assistant", "content": [text("hello"), {**USE, "id": "call_2"}]},
    ]
    answered = tool(state, toolCallId="call_2")
    kept = translate(body(user(text("weather?")), assistant(text("a"), tool(state), answered),
                          user(text("ok"))))["messages"]  # fmt: skip
    assert kept[1] == {"role": "assistant", "content": [text("a")]}
    answered = tool("output-available", output="sunny")
    kept = translate(body(user(text("weather?")), assistant(tool(state, toolCallId="call_2"),
                          answered), user(text("ok"))))["messages"]  # fmt: skip
    assert kept[1] == {"role": "assistant", "content": [USE]}
    assert kept[2]["content"][0]["tool_use_id"] == "call_1"


@pytest.mark.parametrize("state", ["input-streaming", "input-available"])
def test_a_server_tool_without_its_result_is_dropped_never_a_client_tool_use(state: str) -> None:
    got = translate(body(user(text("find")), assistant(server("web_search", state), text("hm")),
                         user(text("ok"))))["messages"]  # fmt: skip
    assert got[1] == {"role": "assistant", "content": [text("hm")]}
    assert all(block["type"] != "tool_use" for m in got for block in m["content"])


def _assistant_blocks(part: dict[str, Any]) -> tuple[str, list[dict[str, Any]]]:
    got = translate(body(user(text("find")), assistant(part)))["messages"]
    return got[1]["role"], got[1]["content"]


def test_the_translated_history_is_screened_by_the_schema_tables() -> None:
    """Thinking text is read; signatures, redacted data and encrypted results are opaque;
    every block the route sends back is a type the screener knows."""
    output = [{"type": "web_search_result", "url": "https://a.example", "title": "Title",
               "encrypted_content": "ENCRYPTED"}]  # fmt: skip
    fields = body(user(text("find")), assistant(
        signed("my thought", "SIGNATURE"),
        {"type": "reasoning", "text": "", "providerMetadata": {"anthropic": {"redactedData": "RED"}}},
        server("web_search", output=output,
               resultProviderMetadata={"anthropic": {"type": "web_search_tool_result"}}),
        {**server("web_search", "output-error",
                  errorText='{"type":"web_search_tool_result_error","errorCode":"unavailable"}'),
         "toolCallId": "srv_2"},
        text("found")))  # fmt: skip
    collected = collect_texts(client_part(translate(fields)), unknown="refuse")
    assert {"my thought", "Title", "https://a.example", "found"} <= set(collected.texts)
    assert not {"SIGNATURE", "RED", "ENCRYPTED"} & set(collected.texts)


REFUSALS: list[tuple[str, dict[str, Any], str]] = [
    ("no id", {"messages": [user(text("hi"))]}, "id must be the chat id"),
    ("long id", body(user(text("hi")), id="x" * 201), "id must be the chat id"),
    ("bad trigger", body(user(text("hi")), trigger="resume"), "trigger must be"),
    ("trigger an object", body(user(text("hi")), trigger={}), "trigger must be"),
    ("trigger a list", body(user(text("hi")), trigger=[]), "trigger must be"),
    ("tool state an object", body(user(text("hi")), assistant(tool({}))),  # type: ignore[arg-type]
     "parts.0.state must be a string"),
    ("no messages", body(), "messages must be a non-empty list"),
    ("messages not a list", {"id": "c", "messages": "hi"}, "messages must be a non-empty list"),
    ("message not an object", body("hi"), "messages.0 must be an object"),  # type: ignore[arg-type]
    ("bad role", body({"role": "tool", "parts": []}), "messages.0.role"),
    ("parts missing", body({"role": "user"}), "messages.0.parts must be a list"),
    ("part without type", body(user({"text": "x"})), "messages.0.parts.0 must be an object"),
    ("unknown part", body(user({"type": "video"})), "messages.0.parts.0: unknown part type"),
    ("text not a string", body(user({"type": "text", "text": 3})), "parts.0.text must be"),
    ("model not accepted", body(user(text("hi")), model="x"), "ui.accept_model is off"),
    ("system not accepted", body(user(text("hi")), system="x"), "ui.accept_system is off"),
    ("system message not accepted",
     body({"role": "system", "parts": [text("x")]}, user(text("hi"))), "system messages"),
    ("tool part from the user", body(user(tool("input-available"))), "belong to assistant"),
    ("file from the assistant", body(assistant({"type": "file", "mediaType": "image/png",
                                                "url": "https://x.test/a.png"})), "user messages"),
    ("file of another type", body(user({"type": "file", "mediaType": "video/mp4",
                                        "url": "data:video/mp4;base64,AAAA"})), "mediaType"),
    ("file not base64", body(user({"type": "file", "mediaType": "image/png",
                                   "url": "data:image/png,raw"})), "base64-encoded"),
    ("broken base64", body(user({"type": "file", "mediaType": "image/png",
                                 "url": "data:image/png;base64,***"})), "not valid base64"),
    ("file URL scheme", body(user({"type": "file", "mediaType": "image/png",
                                   "url": "file:///etc/passwd"})), "data: or http(s) URL"),
    ("nothing to send", body(user(text(""))), "no text, file or tool content"),
    ("server result spelled as a client one",
     body(user(text("x")), assistant(server("web_search", output="x",
          resultProviderMetadata={"anthropic": {"type": "tool_result"}}))),
     "not a server tool result block type"),
    ("server result of an mcp type for a server call",
     body(user(text("x")), assistant(server("web_search", output="x",
          resultProviderMetadata={"anthropic": {"type": "mcp_tool_result"}}))),
     "not a server tool result block type"),
    ("failed server call's error not a string",
     body(user(text("x")), assistant(server("web_search", "output-error", errorText=3))),
     "errorText must be a string"),
    ("failed server call's result spelled as a client one",
     body(user(text("x")), assistant(server("web_search", "output-error", errorText="x",
          resultProviderMetadata={"anthropic": {"type": "tool_result"}}))),
     "not a server tool result block type"),
    ("mcp call without its server",
     body(user(text("x")), assistant(server("q", output="x",
          callProviderMetadata={"anthropic": {"type": "mcp_tool_use"}}))),
     "serverName must be a string"),
]  # fmt: skip


@pytest.mark.parametrize(
    ("fields", "message"), [case[1:] for case in REFUSALS], ids=[case[0] for case in REFUSALS]
)
def test_bad_requests_are_400_naming_the_field(fields: dict[str, Any], message: str) -> None:
    with pytest.raises(Rejection) as refused:
        translate(fields)
    assert refused.value.status == 400
    assert refused.value.error_type == "invalid_request_error"
    assert message in refused.value.message


@pytest.mark.parametrize(
    ("model", "reason"),
    [("claude\nINJECTED log=1", "model_invalid"), ("m" * 100_000, "model_invalid"),
     (["claude"], "invalid_request"), ("", "invalid_request")],
)  # fmt: skip
def test_an_accepted_model_is_bounded_as_on_every_route(model: Any, reason: str) -> None:
    """`ui.accept_model` lets the client choose the model, not its length or its bytes: it
    becomes a log field and a label."""
    with pytest.raises(Rejection) as refused:
        translate(body(user(text("hi")), model=model), accept_model=True)
    assert (refused.value.status, refused.value.reason) == (400, reason)


JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=8),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3)
    ),
    max_leaves=8,
)
PART_TYPES = ["text", "file", "reasoning", "tool-x", "dynamic-tool", "step-start", "data-x"]
PART = st.fixed_dictionaries(
    {"type": st.sampled_from(PART_TYPES) | JSON},
    optional={key: JSON | st.sampled_from(["output-available", "input-available", "image/png"])
              for key in ("text", "state", "input", "output", "errorText", "toolCallId",
                          "toolName", "mediaType", "url", "filename", "providerExecuted",
                          "providerMetadata", "callProviderMetadata",
                          "resultProviderMetadata")},
)  # fmt: skip
MESSAGE = st.fixed_dictionaries(
    {}, optional={"id": JSON, "role": st.sampled_from(["user", "assistant", "system"]) | JSON,
                  "parts": st.lists(PART, max_size=3) | JSON},
)  # fmt: skip
BODY = st.fixed_dictionaries(
    {}, optional={"id": st.just("c") | JSON, "trigger": JSON, "model": JSON, "system": JSON,
                  "messages": st.lists(MESSAGE | JSON, max_size=3) | JSON},
)  # fmt: skip


@settings(max_examples=400, deadline=None)
@given(BODY)
def test_any_json_in_any_field_is_translated_or_a_400(fields: dict[str, Any]) -> None:
    """Every field, every part field, any JSON value in it: a request or a 400, never an
    exception of another kind (a 500)."""
    status = 200
    try:
        parse_ui_request(fields, UiConfig(accept_model=True, accept_system=True), "m", 8)
    except Rejection as refused:
        status = refused.status
    assert status in (200, 400)
