"""The input-token estimate a call reserves before Claude answers: one function for every
route (anthropic, prompt, ui), settled to Claude's reported usage when the stream ends.

It leans high, never needing Claude: text at ~3.5 characters per token, inline (base64)
attachments at ~1 token per 3 bytes, a fixed figure for each image and document Claude
reads from elsewhere (`quotas.remote_image_tokens`, `quotas.remote_document_tokens`), and
the tool-use system prompt Claude adds whenever tools are given.
"""

from __future__ import annotations

import math
from typing import Final

from sidecar.config import QuotaConfig
from sidecar.policy.claude_schema import Collected

# The tool-use system prompt Claude adds to a call with `tools`: the largest figure in
# Anthropic's per-model table (530 tokens, Claude 3 Opus with tool_choice auto; later
# models list 346 or fewer), so it holds whatever the model and `tool_choice`.
TOOL_USE_SYSTEM_PROMPT_TOKENS: Final = 530
# Role markers and message framing of the smallest request.
BASE_TOKENS: Final = 8


def estimate_input_tokens(
    collected: Collected, quotas: QuotaConfig, extra_chars: int = 0, tools: bool = False
) -> int:
    """Tokens to reserve for a call's input: what screening `collected` from the request,
    plus `extra_chars` of text and `tools` the sidecar adds itself (the ui route's)."""
    tokens = math.ceil((collected.chars + extra_chars) / 3.5)
    tokens += math.ceil(collected.attachment_bytes / 3) + BASE_TOKENS
    if collected.remote_images:
        tokens += collected.remote_images * quotas.remote_image_tokens
    if collected.remote_documents:
        tokens += collected.remote_documents * quotas.remote_document_tokens
    if tools or collected.tools:
        tokens += TOOL_USE_SYSTEM_PROMPT_TOKENS
    return tokens
