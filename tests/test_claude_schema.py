"""Screening sees every text Claude reads: one case per text field of the walker's own tables.

The cases are generated from `BLOCK_FIELDS` / `SOURCE_FIELDS` / `REQUEST_FIELDS`, so a block
type added to the tables is tested here without a new case. Each case is sent over real
sockets to both Claude routes (prompt route: in the history; Anthropic route: in messages),
once with a denied phrase (refused, Claude never called) and once with a harmless one (not
refused by screening), so a case that screening ignored could not pass.
"""

from __future__ import annotations

import contextlib
import gzip
import json
from collections.abc import Iterator
from typing import Any

import aiohttp
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sidecar.fake_claude import FakeServer
from sidecar.policy.claude_schema import (
    BLOCK_FIELDS,
    PLAIN_FIELDS,
    REQUEST_FIELDS,
    SOURCE_FIELDS,
    Kind,
    UnknownBlock,
    collect_texts,
)
from tests.support.screening import LAUNCH_CODES, MODEL, PROMPT
from tests.support.screening import SECRET_WORDS as DENIED
from tests.support.sidecars import SidecarFactory

HARMLESS = "the weather is fine today"
RULE = f'"{LAUNCH_CODES["name"]}"'
CONFIG: dict[str, Any] = {
    "screening": {"max_prompt_chars": 100000, "deny_patterns": [LAUNCH_CODES]}
}


def _value(kind: Kind, phrase: str) -> list[tuple[str, Any]]:
    """Every shape a field of `kind` may carry `phrase` in: (shape name, value)."""
    if kind == "text":
        return [("string", phrase)]
    if kind == "blocks":
        return [
            ("string", phrase),
            ("text_block", [{"type": "text", "text": phrase}]),
            ("one_block", {"type": "text", "text": phrase}),
        ]
    if kind == "strings":
        return [("nested_value", {"a": [{"b": phrase}]}), ("key", {phrase: 1}), ("plain", phrase)]
    return []  # source and attachment fields are generated from SOURCE_FIELDS below


def block_cases(phrase: str) -> Iterator[tuple[str, dict[str, Any]]]:
    """(case id, content block) with `phrase` in one text-bearing field of one block type."""
    for block_type, fields in BLOCK_FIELDS.items():
        for name, kind in fields.items():
            if kind == "source":
                for source_type, source_fields in SOURCE_FIELDS.items():
                    for inner, inner_kind in source_fields.items():
                        for shape, value in _value(inner_kind, phrase):
                            source = {"type": source_type, inner: value}
                            block = {"type": block_type, name: source}
                            yield f"{block_type}.{name}[{source_type}].{inner}:{shape}", block
            for shape, value in _value(kind, phrase):
                yield f"{block_type}.{name}:{shape}", {"type": block_type, name: value}
    yield "unknown_type:nested", {"type": "brand_new_block", "payload": {"deep": [phrase]}}


def request_cases(phrase: str) -> Iterator[tuple[str, dict[str, Any]]]:
    """(case id, top-level fields) with `phrase` in one top-level field Claude reads."""
    for name, kind in REQUEST_FIELDS.items():
        for shape, value in _value(kind, phrase):
            if shape != "one_block":  # `system` is a string or a list, nothing else
                yield f"{name}:{shape}", {name: value}
    tool = {"name": "lookup", "description": phrase, "input_schema": {"type": "object"}}
    yield "tools.description", {"tools": [tool]}
    schema = {"type": "object", "properties": {"q": {"type": "string", "description": phrase}}}
    yield "tools.input_schema", {"tools": [{"name": "lookup", "input_schema": schema}]}
    yield "tools.name", {"tools": [{"name": phrase, "input_schema": {"type": "object"}}]}
    yield "future_field", {"output_format": {"schema": {"description": phrase}}}


def test_every_table_field_is_generated() -> None:
    """The generator covers every (type, field) of the tables that carries text."""
    ids = {case for case, _ in block_cases(DENIED)}
    for block_type, fields in BLOCK_FIELDS.items():
        for name, kind in fields.items():
            if kind not in ("attachment", "opaque"):
                assert any(i.startswith(f"{block_type}.{name}") for i in ids), (block_type, name)


@pytest.mark.parametrize(("case", "block"), list(block_cases(DENIED)))
def test_walker_finds_the_phrase(case: str, block: dict[str, Any]) -> None:
    collected = collect_texts({"messages": [{"role": "user", "content": [block]}]})
    assert any(DENIED in text for text in collected.texts), case
    harmless = dict(block_cases(HARMLESS))[case]
    clean = collect_texts({"messages": [{"role": "user", "content": [harmless]}]})
    assert not any(DENIED in text for text in clean.texts)


def test_plain_fields_carry_no_text_and_the_rest_is_read() -> None:
    body = {name: "x" for name in PLAIN_FIELDS}
    assert collect_texts(body).texts == []
    assert collect_texts({"anything_new": {"k": DENIED}}).texts == ["k", DENIED]


def test_opaque_fields_are_skipped_and_attachments_counted() -> None:
    content = [
        {"type": "thinking", "thinking": "t", "signature": "S" * 50},
        {"type": "redacted_thinking", "data": "R" * 50},
        {"type": "web_search_result", "title": "a", "url": "u", "encrypted_content": "E" * 50},
        {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "QUJD"}},
        {"type": "document", "source": {"type": "base64", "data": "QUJDRA=="}, "title": "d"},
    ]
    collected = collect_texts({"messages": [{"role": "user", "content": content}]})
    assert sorted(collected.texts) == ["a", "d", "t", "u"]
    assert collected.attachment_bytes == 12


@pytest.mark.parametrize("block_type", list(BLOCK_FIELDS))
def test_a_field_the_table_does_not_list_is_read_whole(block_type: str) -> None:
    """A field added to a known block type (or one the table missed) is screened: every
    string in it, as for an unknown block type; the ids and flags every block has are not."""
    block = {"type": block_type, "id": "toolu_1", "cache_control": {"type": "ephemeral"},
             "is_error": False, "added_later": {"note": [DENIED]}}  # fmt: skip
    texts = collect_texts({"messages": [{"role": "user", "content": [block]}]}).texts
    assert texts == ["note", DENIED]
    source = {"type": "file", "file_id": "file_1", "added_later": DENIED}
    document = {"type": "document", "source": source}
    assert collect_texts({"messages": [{"role": "user", "content": [document]}]}).texts == [DENIED]


async def test_a_message_field_beside_role_and_content_is_read_whole(
    fake: FakeServer, sidecar_for: SidecarFactory
) -> None:
    """A message's fields the walker does not know (one added to the API later, or one a
    model may be shown) are screened like an unknown block's, on both routes."""
    message = {"role": "user", "content": "hi", "added_later": {"note": [DENIED]}}
    assert collect_texts({"messages": [message]}).texts == ["hi", "note", DENIED]
    async with sidecar_for(CONFIG) as sidecar, aiohttp.ClientSession() as http:
        for path, body in _bodies([{"type": "text", "text": "hi"}], {}).items():
            body["messages"][0] = message
            assert await _status(http, sidecar.url + path, body) == (
                400, f"prompt matches deny rule {RULE}"
            )  # fmt: skip
    assert fake.state.counters["requests"] == 0


async def _status(http: aiohttp.ClientSession, url: str, body: dict[str, Any]) -> tuple[int, str]:
    async with http.post(url, json=body) as response:
        raw = await response.read()
    try:
        data = json.loads(raw)
    except ValueError:
        return response.status, ""
    error = data.get("error") if isinstance(data, dict) else None
    return response.status, str(error.get("message", "")) if isinstance(error, dict) else ""


def _bodies(content: list[dict[str, Any]], top: dict[str, Any]) -> dict[str, dict[str, Any]]:
    history = [{"role": "user", "content": content}, {"role": "assistant", "content": "ok"}]
    prompt_body = {"prompt": "go on", "messages": history, **top}
    anthropic_body = {
        "model": MODEL, "max_tokens": 8, "messages": [*history, {"role": "user", "content": "go"}],
        **top,
    }  # fmt: skip
    return {PROMPT: prompt_body, "/v1/messages": anthropic_body}


async def test_every_field_is_screened_on_both_routes(
    fake: FakeServer, sidecar_for: SidecarFactory
) -> None:
    cases: list[tuple[str, str, dict[str, Any], dict[str, Any]]] = []
    harmless_blocks = dict(block_cases(HARMLESS))
    for case, block in block_cases(DENIED):
        for path, body in _bodies([block], {}).items():
            control = _bodies([harmless_blocks[case]], {})[path]
            cases.append((f"{path} {case}", path, body, control))
    harmless_tops = dict(request_cases(HARMLESS))
    for case, top in request_cases(DENIED):
        paths = ["/v1/messages"] if "system" not in top else [PROMPT, "/v1/messages"]
        for path in paths:
            body = _bodies([{"type": "text", "text": "hi"}], top)[path]
            control = _bodies([{"type": "text", "text": "hi"}], harmless_tops[case])[path]
            cases.append((f"{path} {case}", path, body, control))
    missed: list[str] = []
    async with sidecar_for(CONFIG) as sidecar, aiohttp.ClientSession() as http:
        for name, path, body, control in cases:
            status, message = await _status(http, sidecar.url + path, body)
            if (status, message) != (400, f"prompt matches deny rule {RULE}"):
                missed.append(f"{name}: {status} {message}")
            status, message = await _status(http, sidecar.url + path, control)
            if "deny rule" in message:
                missed.append(f"{name} (harmless control): {status} {message}")
    assert missed == []
    assert len(cases) > 60
    # Every denied request stopped before Claude; every control was sent on.
    assert fake.state.counters["requests"] == len(cases)


# DENIED and HARMLESS with look-alike letters (Cyrillic, Greek, Armenian, a click letter)
# and combining marks: as sent, no rule matches either.
DISGUISED = "the \u01c0\u0430u\u0301n\u0441\u04bb \u0441\u03bf\u0307\u0501\u0435\u0455 are 0000"
HARMLESS_DISGUISED = "the w\u0435\u0430th\u0435r i\u0307s fin\u0435 t\u043ed\u0430y"


async def test_under_normalize_every_field_is_read_through_lookalikes_and_sent_as_is(
    fake: FakeServer, sidecar_for: SidecarFactory
) -> None:
    """Look-alike letters and combining marks are folded for the deny rules in every field
    screening walks (each block type, system, tools, titles), on both routes; a request
    the rules let through reaches Claude with its characters as sent."""
    cases: list[tuple[str, str, dict[str, Any], dict[str, Any]]] = []
    harmless_blocks = dict(block_cases(HARMLESS_DISGUISED))
    for case, block in block_cases(DISGUISED):
        for path, body in _bodies([block], {}).items():
            cases.append((f"{path} {case}", path, body, _bodies([harmless_blocks[case]], {})[path]))
    harmless_tops = dict(request_cases(HARMLESS_DISGUISED))
    for case, top in request_cases(DISGUISED):
        paths = ["/v1/messages"] if "system" not in top else [PROMPT, "/v1/messages"]
        for path in paths:
            body = _bodies([{"type": "text", "text": "hi"}], top)[path]
            control = _bodies([{"type": "text", "text": "hi"}], harmless_tops[case])[path]
            cases.append((f"{path} {case}", path, body, control))
    plain = {"screening": {**CONFIG["screening"], "normalize": False}}
    normal = {"screening": {**CONFIG["screening"], "normalize": True}}
    missed: list[str] = []
    async with sidecar_for(plain) as sidecar, aiohttp.ClientSession() as http:
        body = _bodies([{"type": "text", "text": DISGUISED}], {})["/v1/messages"]
        assert (await _status(http, sidecar.url + "/v1/messages", body))[0] == 200
    async with sidecar_for(normal) as sidecar, aiohttp.ClientSession() as http:
        for name, path, body, control in cases:
            status, message = await _status(http, sidecar.url + path, body)
            if (status, message) != (400, f"prompt matches deny rule {RULE}"):
                missed.append(f"{name}: {status} {message}")
            sent = len(fake.state.requests)
            status, message = await _status(http, sidecar.url + path, control)
            if "deny rule" in message:  # the fake may refuse a shape it finds incomplete
                missed.append(f"{name} (harmless control): {status} {message}")
            received = json.dumps(
                [r.body for r in list(fake.state.requests)[sent:]], ensure_ascii=False
            )
            if HARMLESS_DISGUISED not in received:
                missed.append(f"{name} (harmless control): not sent as is")
    assert missed == []
    assert len(cases) > 60


async def test_unknown_block_types_can_be_refused(
    fake: FakeServer, sidecar_for: SidecarFactory
) -> None:
    refuse = {"screening": {**CONFIG["screening"], "unknown_blocks": "refuse"}}
    content = [{"type": "brand_new_block", "payload": "harmless"}]
    known = [{"type": "document", "source": {"type": "text", "data": HARMLESS}, "title": "t"}]
    async with sidecar_for(refuse) as sidecar, aiohttp.ClientSession() as http:
        results = {
            path: await _status(http, sidecar.url + path, body)
            for path, body in _bodies(content, {}).items()
        }
        nested = _bodies([{"type": "tool_result", "tool_use_id": "t", "content": content}], {})
        deep = await _status(http, sidecar.url + "/v1/messages", nested["/v1/messages"])
        allowed = await _status(http, sidecar.url + "/v1/messages", _bodies(known, {})[
            "/v1/messages"])  # fmt: skip
    for status, message in [*results.values(), deep]:
        assert status == 400
        assert message == "content type 'brand_new_block' is not accepted here"
    assert allowed[0] == 200
    assert fake.state.counters["requests"] == 1


def _json() -> st.SearchStrategy[Any]:
    kinds = st.sampled_from([*BLOCK_FIELDS, *SOURCE_FIELDS, "unknown_kind"])
    keys = st.sampled_from(["type", "text", "content", "source", "data", "input", "title", "x"])
    leaves = st.none() | st.booleans() | st.integers() | st.text(max_size=8) | kinds
    return st.recursive(
        leaves,
        lambda inner: (
            st.lists(inner, max_size=4) | st.dictionaries(keys | kinds, inner, max_size=4)
        ),
        max_leaves=30,
    )


@given(st.dictionaries(st.sampled_from(["system", "messages", "tools", "model", "new"]), _json()))
@settings(max_examples=300, deadline=None)
def test_any_json_shape_is_walked_without_error(body: dict[str, Any]) -> None:
    collected = collect_texts(body)
    assert all(isinstance(text, str) for text in collected.texts)
    assert collected.attachment_bytes >= 0
    try:
        refused = collect_texts(body, "refuse")
    except UnknownBlock:
        return
    assert refused.texts == collected.texts  # nothing unknown: both modes read the same


# Every JSON shape but the one a field should hold: a list or an object where a string
# belongs is unhashable, so it must never meet a set or a dict lookup unguarded.
_WRONG_SHAPES: list[Any] = [[], ["url"], {}, {"type": "url"}, 1, 1.5, True, None]


def _misshapen_blocks() -> Iterator[tuple[str, dict[str, Any]]]:
    """Each block type with each of its fields (its `type` and `source` too) holding each
    wrong shape, and each source type with each of its fields wrong inside a block."""
    for kind, fields in BLOCK_FIELDS.items():
        for name in ["type", "source", *fields]:
            for i, wrong in enumerate(_WRONG_SHAPES):
                yield f"{kind}.{name}.{i}", {"type": kind, name: wrong}
        for source_kind, source_fields in SOURCE_FIELDS.items():
            for name in ["type", *source_fields]:
                for i, wrong in enumerate(_WRONG_SHAPES):
                    source = {"type": source_kind, name: wrong}
                    yield (
                        f"{kind}.source.{source_kind}.{name}.{i}",
                        {"type": kind, "source": source},
                    )


def test_every_field_of_every_block_in_a_wrong_shape_is_walked_without_error() -> None:
    cases = list(_misshapen_blocks())
    for case, block in cases:
        body = {"messages": [{"role": "user", "content": [block]}]}
        collected = collect_texts(body)
        assert all(isinstance(text, str) for text in collected.texts), case
        with contextlib.suppress(UnknownBlock):
            collect_texts(body, "refuse")
    assert len(cases) > 500


@pytest.mark.parametrize("kind", ["image", "document"])
@pytest.mark.parametrize("source_type", [["url"], {"type": "url"}])
async def test_a_media_source_whose_type_is_no_string_is_the_clients_400_never_a_500(
    fake: FakeServer, sidecar_for: SidecarFactory, kind: str, source_type: Any
) -> None:
    block = {"type": kind, "source": {"type": source_type, "url": "https://example.com/a"}}
    async with sidecar_for(CONFIG) as sidecar, aiohttp.ClientSession() as http:
        results = {
            path: await _status(http, sidecar.url + path, body)
            for path, body in _bodies([block], {}).items()
        }
    # Screened like any block, then Claude's to judge: never the sidecar's own 500.
    assert {path: status for path, (status, _) in results.items()} == {
        PROMPT: 200,
        "/v1/messages": 200,
    }


# ------------------------------------------------------------------ remote content

URL = "https://example.com/a.png"
URL_IMAGE = {"type": "image", "source": {"type": "url", "url": URL}}
URL_SOURCE = "a url source (Claude fetches it)"
FILE_SOURCE = "a file source (stored with Anthropic)"
FILE_ID = "a file_id (a file stored with Anthropic)"


def remote_blocks() -> Iterator[tuple[str, dict[str, Any], str]]:
    """(case id, content block, what the refusal names): a reference to content the request
    does not hold, in every place a block can carry one."""
    yield "image url", URL_IMAGE, URL_SOURCE
    yield "document url", {"type": "document", "source": {"type": "url", "url": URL}}, URL_SOURCE
    file_source = {"type": "file", "file_id": "file_1"}
    yield "image file", {"type": "image", "source": file_source}, FILE_SOURCE
    yield "document file", {"type": "document", "source": file_source}, FILE_SOURCE
    yield "in tool_result", {"type": "tool_result", "tool_use_id": "t",
                             "content": [{"type": "text", "text": "hi"}, URL_IMAGE]}, URL_SOURCE  # fmt: skip
    nested = {"type": "tool_result", "tool_use_id": "t",
              "content": [{"type": "search_result", "title": "t", "source": "s",
                           "content": [{"type": "text", "text": "x"}]},
                          {"type": "document", "source": {"type": "content",
                                                          "content": [URL_IMAGE]}}]}  # fmt: skip
    yield "in document content source in tool_result", nested, URL_SOURCE
    yield (
        "container_upload",
        {"type": "container_upload", "file_id": "file_1"},
        ("a container_upload block (a file stored with Anthropic)"),
    )
    search = {
        "type": "web_search_tool_result",
        "tool_use_id": "s",
        "content": [
            {"type": "web_search_result", "title": "t", "url": URL, "encrypted_content": "E"}
        ],
    }
    yield "web_search_result", search, "a web_search_result block (its page text is encrypted)"
    yield "unknown block with file_id", {"type": "brand_new", "data": {"file_id": "f"}}, FILE_ID
    yield "unknown field of a known block", {"type": "text", "text": "hi",
                                             "attached": {"type": "url", "url": URL}}, URL_SOURCE  # fmt: skip


def remote_tops() -> Iterator[tuple[str, dict[str, Any], str]]:
    """(case id, top-level fields, what the refusal names): remote content by request field."""
    mcp = [{"type": "url", "url": "https://mcp.example.com/sse", "name": "docs"}]
    yield "mcp_servers", {"mcp_servers": mcp}, "mcp_servers (remote MCP servers)"
    for kind in ("web_search_20250305", "web_fetch_20250910", "mcp_toolset"):
        tools = [{"name": "lookup", "input_schema": {"type": "object"}},
                 {"type": kind, "name": "remote"}]  # fmt: skip
        yield f"tools {kind}", {"tools": tools}, f"tool type '{kind}' (Claude fetches its content)"
    yield (
        "container",
        {"container": "container_1"},
        ("a container (its files and skills are stored with Anthropic)"),
    )
    yield "system blocks", {"system": [{"type": "text", "text": "s"},
                                       {"type": "document", "source": {"type": "url", "url": URL}}]}, (
        URL_SOURCE
    )  # fmt: skip
    yield "field added later", {"new_feature": {"files": [{"file_id": "f"}]}}, FILE_ID
    yield "message field", {"messages": [{"role": "user", "content": "hi",
                                          "extra": {"file_id": "f"}}]}, FILE_ID  # fmt: skip


LOCAL_BLOCKS: list[dict[str, Any]] = [
    {"type": "text", "text": "see https://example.com/a.png"},
    {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "QUJD"}},
    {"type": "document", "source": {"type": "text", "data": "d"}, "title": URL},
    {"type": "document", "source": {"type": "content", "content": [{"type": "text", "text": "c"}]}},
    {"type": "tool_use", "id": "t", "name": "get", "input": {"file_id": "f", "type": "url", "url": URL}},
    {"type": "mcp_tool_use", "id": "m", "name": "q", "server_name": "docs", "input": {}},
    {"type": "mcp_tool_result", "tool_use_id": "m", "content": [{"type": "text", "text": "r"}]},
    {"type": "web_fetch_tool_result", "tool_use_id": "w", "content": {
        "type": "web_fetch_result", "url": URL,
        "content": {"type": "document", "source": {"type": "text", "data": "page"}}}},
    {"type": "search_result", "title": "t", "source": URL, "content": [{"type": "text", "text": "x"}]},
]  # fmt: skip
LOCAL_TOPS: list[dict[str, Any]] = [
    {"mcp_servers": []},
    {"container": None},
    {"tools": [{"name": "web_fetch", "description": "the app's own", "input_schema": {}},
               {"type": "bash_20250124", "name": "bash"}, {"type": "custom", "name": "c"}]},
]  # fmt: skip


def _in_message(block: dict[str, Any]) -> dict[str, Any]:
    return {"messages": [{"role": "user", "content": [block]}]}


@pytest.mark.parametrize(("case", "block", "what"), list(remote_blocks()))
def test_the_walker_notes_a_remote_reference_anywhere(case: str, block: Any, what: str) -> None:
    assert collect_texts(_in_message(block)).remote == what, case
    # In a later message, a tool result's content, the assistant's turn: still found.
    history = {"messages": [{"role": "user", "content": "hi"},
                            {"role": "assistant", "content": [block]}]}  # fmt: skip
    assert collect_texts(history).remote == what, case


@pytest.mark.parametrize(("case", "top", "what"), list(remote_tops()))
def test_the_walker_notes_a_remote_request_field(case: str, top: Any, what: str) -> None:
    assert collect_texts({"messages": [], **top}).remote == what, case


@pytest.mark.parametrize("body", [_in_message(block) for block in LOCAL_BLOCKS] + LOCAL_TOPS)
def test_content_the_request_holds_is_not_remote(body: dict[str, Any]) -> None:
    """Inline content (MCP and fetch results included), a URL as text, a client tool's input
    and a client tool named like a server tool refer to nothing beyond the request."""
    assert collect_texts(body).remote is None


def _refusal(what: str) -> str:
    return f"{what} is not accepted here: Claude would read content the sidecar cannot screen"


REFUSE_REMOTE: dict[str, Any] = {"screening": {"remote_content": "refuse"}}


async def _answer(
    http: aiohttp.ClientSession, url: str, body: dict[str, Any], gzipped: bool = False
) -> tuple[int, Any]:
    data = json.dumps(body).encode()
    headers = {"Content-Type": "application/json"}
    if gzipped:
        data, headers["Content-Encoding"] = gzip.compress(data), "gzip"
    async with http.post(url, data=data, headers=headers) as response:
        raw = await response.read()
        return response.status, json.loads(raw) if response.content_type.endswith("json") else raw


def _remote_requests() -> Iterator[tuple[str, str, dict[str, Any], str]]:
    """(case id, path, body, what is refused) for every remote case on every route it fits."""
    for case, block, what in remote_blocks():
        for path, body in _bodies([block], {}).items():
            yield f"{path} {case}", path, body, what
            if path == "/v1/messages":
                yield f"count_tokens {case}", path + "/count_tokens", body, what
    for case, top, what in remote_tops():
        body = _bodies([{"type": "text", "text": "hi"}], {})["/v1/messages"]
        if "messages" in top:
            top = {"messages": [*top["messages"], *body["messages"][1:]]}
        yield f"/v1/messages {case}", "/v1/messages", {**body, **top}, what
        if "system" in top:  # the prompt route takes system blocks too
            prompt_body = _bodies([{"type": "text", "text": "hi"}], top)[PROMPT]
            yield f"{PROMPT} {case}", PROMPT, prompt_body, what


async def test_remote_content_is_refused_on_every_claude_route_when_configured(
    fake: FakeServer, sidecar_for: SidecarFactory
) -> None:
    """With `remote_content: refuse`, every case is a 400 in the route's format, Claude never
    called; with the default `allow`, the same requests are sent on as before."""
    requests = list(_remote_requests())
    wrong: list[str] = []
    async with sidecar_for(REFUSE_REMOTE) as sidecar, aiohttp.ClientSession() as http:
        for case, path, body, what in requests:
            status, data = await _answer(http, sidecar.url + path, body, gzipped="file" in case)
            expected: dict[str, Any] = {"error": {"message": _refusal(what)}}
            if path == PROMPT:
                expected["error"]["type"] = "prompt_rejected"
            else:
                expected["error"]["type"] = "invalid_request_error"
                expected.update(type="error", request_id=data.get("request_id"))
            if (status, data) != (400, expected):
                wrong.append(f"{case}: {status} {data!r}")
    assert wrong == []
    assert fake.state.counters["requests"] == 0
    async with sidecar_for() as sidecar, aiohttp.ClientSession() as http:
        for case, path, body, _ in requests:
            status, _data = await _answer(http, sidecar.url + path, body)
            if status != 200:
                wrong.append(f"allowed {case}: {status}")
    assert wrong == []
    assert len(requests) > 30


async def test_a_url_file_on_the_ui_route_is_refused_in_its_format(
    fake: FakeServer, sidecar_for: SidecarFactory
) -> None:
    """useChat's linked file becomes a `url` source: refused as one, in the ui route's JSON."""
    part = {"type": "file", "mediaType": "image/png", "url": URL}
    body = {
        "id": "c",
        "trigger": "submit-message",
        "messages": [
            {"id": "u1", "role": "user", "parts": [{"type": "text", "text": "look"}, part]}
        ],
    }
    async with sidecar_for(REFUSE_REMOTE) as sidecar, aiohttp.ClientSession() as http:
        refused = await _answer(http, sidecar.url + "/api/chat", body)
    assert refused == (400, {"error": {"type": "prompt_rejected", "message": _refusal(URL_SOURCE)}})
    assert fake.state.counters["requests"] == 0
    async with sidecar_for() as sidecar, aiohttp.ClientSession() as http:
        assert (await _answer(http, sidecar.url + "/api/chat", body))[0] == 200


async def test_a_route_may_refuse_remote_content_alone(
    fake: FakeServer, sidecar_for: SidecarFactory
) -> None:
    routes = {"routes": [
        {"path": "/strict/v1/", "handler": "anthropic", "screening": {"remote_content": "refuse"}},
        {"path": "/v1/", "handler": "anthropic"}]}  # fmt: skip
    body = _bodies([URL_IMAGE], {})["/v1/messages"]
    async with sidecar_for(routes) as sidecar, aiohttp.ClientSession() as http:
        strict = await _answer(http, sidecar.url + "/strict/v1/messages", body)
        plain = await _answer(http, sidecar.url + "/v1/messages", body)
    assert strict[0] == 400
    assert plain[0] == 200
    assert fake.state.counters["requests"] == 1
