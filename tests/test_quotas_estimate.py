"""The input-token estimate a call reserves: every block that carries media, every route's
additions, and the tool-use system prompt."""

from __future__ import annotations

import math
from typing import Any

import pytest

from sidecar.config import QuotaConfig
from sidecar.policy.claude_schema import collect_texts
from sidecar.quotas.estimate import (
    BASE_TOKENS,
    TOOL_USE_SYSTEM_PROMPT_TOKENS,
    estimate_input_tokens,
)
from sidecar.quotas.image_size import tokens_for
from tests.support.images import MALFORMED, png

QUOTAS = QuotaConfig(image_tokens=1000, remote_document_tokens=20000)


def _source(kind: str) -> dict[str, Any]:
    return {"type": "url", "url": "u"} if kind == "url" else {"type": "file", "file_id": "f"}


def _with(block: dict[str, Any], where: str) -> dict[str, Any]:
    """A request holding `block` in a user message, a tool result, or the system prompt."""
    if where == "tool_result":
        block = {"type": "tool_result", "tool_use_id": "t", "content": [block]}
    if where == "system":
        return {"system": [block], "messages": []}
    return {"messages": [{"role": "user", "content": [block]}]}


@pytest.mark.parametrize("where", ["message", "tool_result", "system"])
@pytest.mark.parametrize("source", ["url", "file"])
@pytest.mark.parametrize(("block", "figure"), [("image", 1000), ("document", 20000)])
def test_media_claude_reads_from_elsewhere_is_counted_by_its_figure(
    block: str, figure: int, source: str, where: str
) -> None:
    body = _with({"type": block, "source": _source(source)}, where)
    collected = collect_texts(body)
    text_only = estimate_input_tokens(
        collected, QuotaConfig(image_tokens=0, remote_document_tokens=0)
    )
    assert estimate_input_tokens(collected, QUOTAS) - text_only == figure


@pytest.mark.parametrize("data", MALFORMED.values(), ids=MALFORMED.keys())
def test_a_header_not_read_falls_back_to_the_cap(data: str) -> None:
    body = _with(
        {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": data}},
        "message",
    )
    assert estimate_input_tokens(collect_texts(body), QUOTAS) == 1000 + BASE_TOKENS


@pytest.mark.parametrize("where", ["message", "tool_result", "system"])
def test_an_inline_image_reserves_its_charge_not_its_bytes(where: str) -> None:
    """A 1 MB photo reserves what Claude charges for its size, at most the cap; a small
    image its own charge."""
    photo = png(4000, 3000, size=1_000_000)
    small = png(200, 100, size=1_000_000)
    for data, expected in ((photo, 1000), (small, tokens_for(200, 100))):
        source = {"type": "base64", "media_type": "image/png", "data": data}
        block = {"type": "image", "source": source}
        collected = collect_texts(_with(block, where))
        assert collected.attachment_bytes == len(data)  # the screening limit still sees it
        assert estimate_input_tokens(collected, QUOTAS) == expected + BASE_TOKENS


def test_an_inline_document_is_counted_by_its_bytes() -> None:
    data = "A" * 3000
    source = {"type": "base64", "media_type": "application/pdf", "data": data}
    body = _with({"type": "document", "source": source}, "message")
    assert estimate_input_tokens(collect_texts(body), QUOTAS) == 1000 + BASE_TOKENS


def test_tools_bring_the_tool_use_system_prompt_once() -> None:
    plain = estimate_input_tokens(collect_texts({"messages": []}), QUOTAS)
    tools = [{"name": "a", "input_schema": {}}, {"name": "b", "input_schema": {}}]
    collected = collect_texts({"messages": [], "tools": tools})
    with_tools = estimate_input_tokens(collected, QUOTAS)
    assert with_tools - plain == TOOL_USE_SYSTEM_PROMPT_TOKENS + math.ceil(collected.chars / 3.5)
    assert estimate_input_tokens(collect_texts({"messages": [], "tools": []}), QUOTAS) == plain
    # The ui route's tools come from its config, not the request: added by the caller.
    assert estimate_input_tokens(collect_texts({}), QUOTAS, tools=True) == plain + 530
