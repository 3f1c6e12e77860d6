"""The input-token estimate a call reserves before Claude answers: one function for every
route (anthropic, prompt, ui), settled to Claude's reported usage when the stream ends.

It leans high, never needing Claude: text at ~3.5 characters per token; an image at what
Claude charges for its size, read from the header of its base64 data
(`sidecar.quotas.image_size`), at most `quotas.image_tokens`, and that figure for an image
whose size is not in the request (a `url` or `file` source, or a header not read); an
inline document (a PDF) at ~1 token per 3 bytes; `quotas.remote_document_tokens` for each
document Claude reads from elsewhere; and the tool-use system prompt Claude adds whenever
tools are given.
"""

from __future__ import annotations

import math
from typing import Final

from sidecar.config import QuotaConfig
from sidecar.policy.claude_schema import Collected
from sidecar.quotas.image_size import image_tokens

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
    tokens = math.ceil((collected.chars + extra_chars) / 3.5) + BASE_TOKENS
    cap = quotas.image_tokens
    inline_bytes = collected.attachment_bytes
    for data in collected.inline_images:
        inline_bytes -= len(data)
        sized = image_tokens(data)
        tokens += cap if sized is None else min(sized, cap)
    # What is left is inline documents (PDFs): by their bytes.
    tokens += math.ceil(max(0, inline_bytes) / 3)
    if collected.remote_images:
        tokens += collected.remote_images * cap
    if collected.remote_documents:
        tokens += collected.remote_documents * quotas.remote_document_tokens
    if tools or collected.tools:
        tokens += TOOL_USE_SYSTEM_PROMPT_TOKENS
    return tokens
