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
            # Bytes, with lone surrogates passed through: JSON may carry them, RE2 wants UTF-8.
            hits = self._set.Match(text.encode("utf-8", "surrogatepass"))
            if hits:
                name = self._names[min(hits)]
                raise Rejection(
                    400, "invalid_request_error", f'prompt matches deny rule "{name}"',
                    reason="screening_rule", code="prompt_rejected",
                )  # fmt: skip


def _walk_content(content: Any, texts: list[str], sizes: list[int]) -> None:
    # Iterative: nested tool results must not be able to exhaust the Python stack.
    pending = [content]
    while pending:
        item = pending.pop()
        if isinstance(item, str):
            texts.append(item)
            continue
        if isinstance(item, list):
            pending.extend(reversed(item))
            continue
        if not isinstance(item, dict):
            continue
        kind = item.get("type")
        if isinstance(item.get("text"), str):
            texts.append(item["text"])
        if kind == "tool_result":
            pending.append(item.get("content"))
        elif kind == "tool_use" and "input" in item:
            with contextlib.suppress(TypeError, ValueError, RecursionError):
                texts.append(json.dumps(item["input"]))
        source = item.get("source")
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
