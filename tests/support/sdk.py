"""The official Python SDK as a client of the sidecar (or of the fake Claude directly)."""

from __future__ import annotations

from typing import Any

import anthropic
from anthropic.types import MessageParam


def sdk(
    url: str, api_key: str = "client-key", *, max_retries: int = 0, **kwargs: Any
) -> anthropic.AsyncAnthropic:
    """An SDK client for `url`; it does not retry unless told (the sidecar's retries are
    what the tests watch)."""
    return anthropic.AsyncAnthropic(
        base_url=url, api_key=api_key, max_retries=max_retries, **kwargs
    )


def user(text: str) -> list[MessageParam]:
    """A conversation of one user message."""
    return [{"role": "user", "content": text}]


# A streaming call Claude accepts and then never finishes (the fake stalls after its start).
STALLED: dict[str, Any] = {
    "model": "claude-sonnet-5-5",
    "max_tokens": 8,
    "stream": True,
    "messages": user("[[fake fault=stall]]"),
}
