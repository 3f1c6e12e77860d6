"""Where text lives in a Claude Messages request: one table per block type, and its walker.

Screening must see every text Claude will see. The tables below say, for each
content block type of the Messages API, which fields carry text and how to read
them; `collect_texts` walks a request by them. A block type missing from the
table is not trusted to be text-free: every string in it (keys included) is
screened, or, with `unknown="refuse"`, the request is refused. Within a known type, a
field the table does not list is read as `strings` too (a field added to the API, or
one the table missed, is screened before it is understood); only the fields marked
`opaque` (signatures, encrypted search results, redacted thinking, file ids) and the
fields every block may carry (`COMMON_FIELDS`: its type, ids, cache control) are
skipped. The tests build one case per field of these tables, so a type added here is
tested without writing a new case.

Some of what Claude reads is not in the request at all: Claude fetches it itself (a `url`
source, a remote MCP server, the web search and fetch tools), or it is stored on Anthropic's
side (a `file` source, a container's files and skills, a web search result's encrypted page
text). The walker notes the first such reference it meets (`Collected.remote`, a bounded
description) wherever it sits, so `screening.remote_content: refuse` can refuse the request.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Final, Literal

# How a field is read:
#   text        a string Claude reads
#   blocks      a string, one block, or a list of blocks (each walked by its own type)
#   strings     any JSON: every string and every object key in it (tool inputs, schemas)
#   source      a document/image source, read by SOURCE_FIELDS
#   attachment  base64 data: counted as attachment bytes, not screened
#   opaque      not text a client writes for Claude (a signature, an encrypted blob, an id)
#   unknown     a field or block the tables do not know: read as `strings`, and any object in
#               it shaped like a remote reference (`file_id`, a `url` source) is noted
Kind = Literal["text", "blocks", "strings", "source", "attachment", "opaque", "unknown"]

BLOCK_FIELDS: Final[Mapping[str, Mapping[str, Kind]]] = {
    "text": {"text": "text", "citations": "strings"},
    "image": {"source": "source"},
    "document": {"source": "source", "title": "text", "context": "text"},
    "search_result": {"content": "blocks", "title": "text", "source": "text"},
    "tool_use": {"name": "text", "input": "strings"},
    "server_tool_use": {"name": "text", "input": "strings"},
    "mcp_tool_use": {"name": "text", "server_name": "text", "input": "strings"},
    "tool_result": {"content": "blocks"},
    "mcp_tool_result": {"content": "blocks"},
    "web_search_tool_result": {"content": "blocks"},
    "web_search_result": {
        "title": "text",
        "url": "text",
        "page_age": "text",
        "encrypted_content": "opaque",
    },
    "web_search_tool_result_error": {"error_code": "opaque"},
    "web_fetch_tool_result": {"content": "blocks"},
    "web_fetch_result": {"url": "text", "content": "blocks", "retrieved_at": "text"},
    "web_fetch_tool_result_error": {"error_code": "opaque"},
    "code_execution_tool_result": {"content": "strings"},
    "bash_code_execution_tool_result": {"content": "strings"},
    "text_editor_code_execution_tool_result": {"content": "strings"},
    "tool_search_tool_result": {"content": "strings"},
    "thinking": {"thinking": "text", "signature": "opaque"},
    "redacted_thinking": {"data": "opaque"},  # encrypted by Claude: nothing to write into
    "container_upload": {"file_id": "opaque"},
}

SOURCE_FIELDS: Final[Mapping[str, Mapping[str, Kind]]] = {
    "base64": {"data": "attachment"},
    "text": {"data": "text"},
    "content": {"content": "blocks"},
    "url": {"url": "text"},
    "file": {"file_id": "opaque"},  # its bytes are on Anthropic's side, beyond screening
}

# Block and source types whose content is not in the request: Claude fetches it or reads it
# from Anthropic's storage, where screening cannot see it (`screening.remote_content`).
# `mcp_tool_use` / `mcp_tool_result` and the web fetch results carry their content inline
# (screened like any text): only a call to a remote server (`mcp_servers`, a tool below)
# reaches beyond the request.
REMOTE_BLOCKS: Final[Mapping[str, str]] = {
    "container_upload": "a container_upload block (a file stored with Anthropic)",
    "web_search_result": "a web_search_result block (its page text is encrypted)",
}
REMOTE_SOURCES: Final[Mapping[str, str]] = {
    "url": "a url source (Claude fetches it)",
    "file": "a file source (stored with Anthropic)",
}
# Top-level fields that, when set, make Claude read what the request does not hold.
REMOTE_FIELDS: Final[Mapping[str, str]] = {
    "mcp_servers": "mcp_servers (remote MCP servers)",
    "container": "a container (its files and skills are stored with Anthropic)",
}
# Server tool types (`tools[].type`, versioned: `web_fetch_20250910`) that bring outside
# content into the conversation. Client tools (no type, `custom`) answer with a
# `tool_result` the next request carries, which is screened.
REMOTE_TOOL_PREFIXES: Final = ("web_search_", "web_fetch_", "mcp_toolset")

# Block types whose `source` may be media Claude reads from elsewhere (a `url` it fetches, a
# `file` stored with Anthropic): none of its bytes are in the request, so the input-token
# estimate counts each one by a fixed figure (`sidecar.quotas.estimate`). An inline image
# is noted too: Claude charges it by its size, not its bytes.
MEDIA_BLOCKS: Final = frozenset({"image", "document"})
REMOTE_MEDIA_SOURCES: Final = frozenset({"url", "file"})

# Fields any block or source may carry that hold no text for Claude.
COMMON_FIELDS: Final = frozenset(
    {"type", "id", "tool_use_id", "cache_control", "is_error", "media_type"}
)

# Top-level request fields that carry no text for Claude (numbers, flags, ids, settings).
# Every other top-level field is read: by REQUEST_FIELDS if listed, else as `strings`,
# so a field added to the API later is screened before it is understood.
PLAIN_FIELDS: Final = frozenset(
    {
        "model", "max_tokens", "stream", "temperature", "top_k", "top_p", "stop_sequences",
        "metadata", "thinking", "service_tier", "container", "tool_choice",
        "anthropic_version",
    }
)  # fmt: skip
REQUEST_FIELDS: Final[Mapping[str, Kind]] = {"system": "blocks", "tools": "strings"}
# A message's own fields; any other a message carries is read as `strings`.
_MESSAGE_FIELDS: Final = frozenset({"role", "content"})


class UnknownBlock(Exception):
    """A content block (or source) type that is not in the tables, under `unknown="refuse"`."""

    def __init__(self, kind: str) -> None:
        super().__init__(kind)
        self.kind = kind


@dataclass(slots=True)
class Collected:
    """The texts of a request: `texts` count towards the length limit, `joined` are screened
    only (adjacent text blocks of one list as one text, so a phrase split across blocks is
    seen whole)."""

    texts: list[str] = field(default_factory=list)
    joined: list[str] = field(default_factory=list)
    attachment_bytes: int = 0
    # The first reference to content the request does not hold (what it is, bounded), if any.
    remote: str | None = None
    # Images and documents whose bytes are not in the request (a `url` or `file` source),
    # wherever they sit (a message, a tool result): for the input-token estimate.
    remote_images: int = 0
    remote_documents: int = 0
    # The base64 data of each inline image (`image` block, `base64` source), wherever it
    # sits: the estimate reads its size from its header. Its bytes are in
    # `attachment_bytes` too (the screening limit).
    inline_images: list[str] = field(default_factory=list)
    # A non-empty `tools` list: Claude adds its tool-use system prompt to the input.
    tools: bool = False

    @property
    def chars(self) -> int:
        return sum(map(len, self.texts))


def collect_texts(body: Mapping[str, Any], unknown: str = "screen") -> Collected:
    """Every text of a Messages request body, by the tables above.

    Tolerates any JSON shape (the parsers validate shape separately; a value of the
    wrong type carries no text Claude would accept). Iterative: a deeply nested
    request cannot exhaust the Python stack.
    """
    out = Collected()
    pending: list[tuple[Kind, Any]] = []
    refuse = unknown == "refuse"
    for name, value in body.items():
        if name == "messages":
            if isinstance(value, list):
                _messages(value, pending, out, refuse)
            continue
        if out.remote is None:
            out.remote = _remote_field(name, value)
        if name == "tools" and isinstance(value, list) and value:
            out.tools = True
        if name not in PLAIN_FIELDS:
            pending.append((REQUEST_FIELDS.get(name, "unknown"), value))
    while pending:
        kind, value = pending.pop()
        if kind == "text":
            if isinstance(value, str):
                out.texts.append(value)
        elif kind == "blocks":
            run: list[str] = []
            _blocks(value, pending, out, refuse, run)
            _join(run, out.joined)
        elif kind == "strings":
            _strings(value, out.texts)
        elif kind == "unknown":
            _strings(value, out.texts, out)
        elif kind == "source":
            if isinstance(value, dict):
                _fields(value, SOURCE_FIELDS, pending, out, refuse)
        elif isinstance(value, str):  # attachment
            out.attachment_bytes += len(value)
    return out


def _messages(
    messages: list[Any], pending: list[tuple[Kind, Any]], out: Collected, refuse: bool
) -> None:
    # Claude merges consecutive messages of one role into one turn: their text runs on
    # across the message boundary, so it is joined across it too.
    run: list[str] = []
    role: object = None
    for message in messages:
        if not isinstance(message, dict):
            continue
        if message.get("role") != role:
            _join(run, out.joined)
            run = []
            role = message.get("role")
        _blocks(message.get("content"), pending, out, refuse, run)
        if len(message) > 2:  # a field beside role and content: read before it is understood
            for name, value in message.items():
                if name not in _MESSAGE_FIELDS:
                    pending.append(("unknown", value))
    _join(run, out.joined)


def _blocks(
    value: Any, pending: list[tuple[Kind, Any]], out: Collected, refuse: bool, run: list[str]
) -> None:
    """Read a string, a block or a list of blocks; text read in a row is added to `run`
    (which the caller joins), anything else ends the row."""
    for item in value if isinstance(value, list) else (value,):
        if isinstance(item, str):
            out.texts.append(item)
            run.append(item)
            continue
        text = item.get("text") if isinstance(item, dict) and item.get("type") == "text" else None
        if isinstance(text, str):
            run.append(text)
        else:
            _join(run, out.joined)
            run.clear()
        if isinstance(item, dict):
            _fields(item, BLOCK_FIELDS, pending, out, refuse)


def _join(run: list[str], joined: list[str]) -> None:
    if len(run) > 1:
        # Claude reads the blocks in a row; a split phrase may sit on either side of a space.
        joined.append("".join(run))
        joined.append(" ".join(run))


def _fields(
    item: dict[str, Any],
    table: Mapping[str, Mapping[str, Kind]],
    pending: list[tuple[Kind, Any]],
    out: Collected,
    refuse: bool,
) -> None:
    kind = item.get("type")
    if not isinstance(kind, str):
        kind = None
    fields = table.get(kind) if kind is not None else None
    if fields is None or kind is None:
        if refuse:
            raise UnknownBlock(kind or "")
        _strings(item, out.texts, out)
        return
    if out.remote is None:
        remote = REMOTE_SOURCES if table is SOURCE_FIELDS else REMOTE_BLOCKS
        out.remote = remote.get(kind)
    if kind in MEDIA_BLOCKS and table is BLOCK_FIELDS:
        source = item.get("source")
        source_kind = source.get("type") if isinstance(source, dict) else None
        if isinstance(source_kind, str) and source_kind in REMOTE_MEDIA_SOURCES:
            if kind == "image":
                out.remote_images += 1
            else:
                out.remote_documents += 1
        elif kind == "image" and isinstance(source, dict) and source.get("type") == "base64":
            data = source.get("data")
            if isinstance(data, str):
                out.inline_images.append(data)
    for name, value in item.items():
        how = fields.get(name)
        if how is not None:
            if how != "opaque":
                pending.append((how, value))
        elif name not in COMMON_FIELDS:
            pending.append(("unknown", value))  # a field the table does not know: read all


def _remote_field(name: str, value: Any) -> str | None:
    """What a top-level field makes Claude read from outside the request, if anything."""
    if name == "tools":
        for tool in value if isinstance(value, list) else ():
            kind = tool.get("type") if isinstance(tool, dict) else None
            if isinstance(kind, str) and kind.startswith(REMOTE_TOOL_PREFIXES):
                return f"tool type {kind[:64]!r} (Claude fetches its content)"
        return None
    remote = REMOTE_FIELDS.get(name)
    # An empty list or a null is the field left unset.
    return remote if remote is not None and value not in (None, [], {}, "") else None


def _strings(value: Any, texts: list[str], unknown: Collected | None = None) -> None:
    """Every string and object key in `value` (any JSON), iteratively. With `unknown` (a
    value the tables do not describe), an object shaped like a reference to content stored
    or fetched elsewhere (a `file_id`, a `url` source) is noted in `unknown.remote`."""
    pending = [value]
    while pending:
        item = pending.pop()
        if isinstance(item, str):
            texts.append(item)
        elif isinstance(item, dict):
            if unknown is not None and unknown.remote is None:
                unknown.remote = _remote_shape(item)
            for key, inner in item.items():
                if isinstance(key, str):
                    texts.append(key)
                pending.append(inner)
        elif isinstance(item, list):
            pending.extend(item)


def _remote_shape(item: dict[Any, Any]) -> str | None:
    if "file_id" in item:
        return "a file_id (a file stored with Anthropic)"
    kind = item.get("type")
    if kind == "url" and "url" in item:
        return REMOTE_SOURCES["url"]
    return None
