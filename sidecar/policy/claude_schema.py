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
Kind = Literal["text", "blocks", "strings", "source", "attachment", "opaque"]

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
        elif name not in PLAIN_FIELDS:
            pending.append((REQUEST_FIELDS.get(name, "strings"), value))
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
                    pending.append(("strings", value))
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
    fields = table.get(kind) if isinstance(kind, str) else None
    if fields is None:
        if refuse:
            raise UnknownBlock(kind if isinstance(kind, str) else "")
        _strings(item, out.texts)
        return
    for name, value in item.items():
        how = fields.get(name)
        if how is not None:
            if how != "opaque":
                pending.append((how, value))
        elif name not in COMMON_FIELDS:
            pending.append(("strings", value))  # a field the table does not know: read all


def _strings(value: Any, texts: list[str]) -> None:
    """Every string and object key in `value` (any JSON), iteratively."""
    pending = [value]
    while pending:
        item = pending.pop()
        if isinstance(item, str):
            texts.append(item)
        elif isinstance(item, dict):
            for key, inner in item.items():
                if isinstance(key, str):
                    texts.append(key)
                pending.append(inner)
        elif isinstance(item, list):
            pending.extend(item)
