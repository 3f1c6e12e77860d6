"""Prompt screening: a length limit over all user text and RE2 deny rules, scanned once.

RE2 runs in linear time, so no prompt can make a rule backtrack catastrophically.
Rejections name the rule, never echo the text.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterable
from typing import Any

import re2

from sidecar.config import ScreeningConfig, re2_options
from sidecar.errors import Rejection


class Screener:
    """Length and deny-rule checks for one screening policy (compiled once)."""

    def __init__(self, config: ScreeningConfig) -> None:
        self.max_chars = config.max_prompt_chars
        self.max_attachment_bytes = config.max_attachment_bytes
        self._names = [rule.name for rule in config.deny_patterns]
        self._set: Any = None
        if config.deny_patterns:
            self._set = re2.Set.SearchSet(re2_options())
            for rule in config.deny_patterns:
                self._set.Add(rule.pattern)
            self._set.Compile()

    def screen(self, texts: Iterable[str], attachment_bytes: int = 0) -> None:
        """Raise a 400 Rejection for too much text, too large attachments, or a deny-rule hit."""
        texts = list(texts)
        chars = sum(len(text) for text in texts)
        if chars > self.max_chars:
            raise Rejection(
                400, "invalid_request_error",
                f"prompt too long: {chars} characters, the limit is {self.max_chars}",
                reason="screening_length",
            )  # fmt: skip
        if attachment_bytes > self.max_attachment_bytes:
            raise Rejection(
                400, "invalid_request_error",
                f"attachments too large: {attachment_bytes} bytes, the limit is "
                f"{self.max_attachment_bytes}",
                reason="screening_attachment",
            )  # fmt: skip
        if self._set is None:
            return
        for text in texts:
            hits = self._set.Match(text)
            if hits:
                name = self._names[min(hits)]
                raise Rejection(
                    400, "invalid_request_error", f'prompt matches deny rule "{name}"',
                    reason="screening_rule", code="prompt_rejected",
                )  # fmt: skip


def _walk_content(content: Any, texts: list[str], sizes: list[int]) -> None:
    if isinstance(content, str):
        texts.append(content)
        return
    if not isinstance(content, list):
        return
    for block in content:
        if isinstance(block, str):
            texts.append(block)
            continue
        if not isinstance(block, dict):
            continue
        kind = block.get("type")
        if isinstance(block.get("text"), str):
            texts.append(block["text"])
        if kind == "tool_result":
            _walk_content(block.get("content"), texts, sizes)
        elif kind == "tool_use" and "input" in block:
            with contextlib.suppress(TypeError, ValueError):
                texts.append(json.dumps(block["input"]))
        source = block.get("source")
        if isinstance(source, dict) and isinstance(source.get("data"), str):
            sizes.append(len(source["data"]))


def collect_texts(
    system: object, messages: object, prompt: str | None = None
) -> tuple[list[str], int]:
    """All user-supplied text of an Anthropic-shaped request, and attachment bytes.

    Tolerates any JSON shape (the parsers validate shape separately).
    """
    texts: list[str] = []
    sizes: list[int] = []
    _walk_content(system, texts, sizes)
    if isinstance(messages, list):
        for message in messages:
            if isinstance(message, dict):
                _walk_content(message.get("content"), texts, sizes)
    if prompt is not None:
        texts.append(prompt)
    return texts, sum(sizes)
