"""The `browser` and `ui` sections: the browser client module and the AI SDK's UI route."""

from __future__ import annotations

import re
from functools import cached_property
from typing import TYPE_CHECKING, Any

from pydantic import Field, field_validator

from sidecar.config.fields import Section
from sidecar.int64 import INT64

if TYPE_CHECKING:
    from sidecar.policy.claude_schema import Collected


class BrowserConfig(Section):
    """The browser client module (and the demo page) served under `path`."""

    enabled: bool = True
    path: str = "/_sidecar"
    demo: bool = False

    @field_validator("path")
    @classmethod
    def _prefix(cls, value: str) -> str:
        segments = value.split("/")[1:]
        if not re.fullmatch(r"(/[A-Za-z0-9._~-]+)+", value) or {".", ".."} & set(segments):
            raise ValueError("must be an absolute path like /_sidecar (no trailing slash)")
        return value


class UiConfig(Section):
    """The `ui` route (the AI SDK's UI message stream): what the sidecar adds to each call.

    Browsers are untrusted: the request's own `system` and `model` are refused unless
    accepted here, and the tools offered to Claude come from this file, never the body.
    """

    system: str | None = None  # a system prompt the sidecar puts first
    accept_system: bool = False  # the body's `system` and system-role messages
    accept_model: bool = False  # the body's `model` (still within claude.allowed_models)
    model: str | None = None  # defaults to claude.model
    max_tokens: int | None = Field(None, gt=0, lt=INT64)  # defaults to claude.max_tokens
    # Extended thinking when set (its max_tokens, the budget + 1, still an int64).
    thinking_budget_tokens: int | None = Field(None, ge=1024, lt=INT64 - 1)
    tools: list[dict[str, Any]] = Field(default_factory=list)  # Claude tool definitions

    @cached_property
    def tools_texts(self) -> Collected:
        """What Claude reads of `tools`, walked once per config: the config's check that no
        route refusing remote content offers a tool that fetches it reads `remote`."""
        from sidecar.policy.claude_schema import Collected, collect_texts  # (policy imports config)

        return collect_texts({"tools": self.tools}) if self.tools else Collected()

    @cached_property
    def tools_chars(self) -> int:
        """The characters of `tools`: Claude reads them as input on every call, so a call's
        input estimate (its token reservation) counts them; counted once per config."""
        return self.tools_texts.chars

    @field_validator("tools")
    @classmethod
    def _named_tools(cls, value: list[dict[str, Any]]) -> list[dict[str, Any]]:
        for tool in value:
            if not isinstance(tool.get("name"), str) or not tool["name"]:
                raise ValueError("every tool needs a name (and an input_schema)")
        return value
