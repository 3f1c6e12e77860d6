"""Claude's content deltas read without decoding: the JSON string Claude wrote, reused as is.

Almost every event of a stream is a `content_block_delta` written exactly as

    event: content_block_delta
    data: {"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"..."}}

(`thinking_delta`/`thinking` and `input_json_delta`/`partial_json` alike). Its value is
one JSON string literal, already escaped, so a route that re-frames events (the prompt
route's `{"token": ...}`, the UI message stream's `text-delta`) can copy those bytes into
its own event: no `json.loads`, no `json.dumps`, one regex match per event. `DELTA`
accepts only that exact shape (this key order, no spaces, nothing after the value);
anything else is for the caller's decoding path.
"""

from __future__ import annotations

import re
from typing import Final

# The string literal: runs of bytes that are neither a quote, a backslash nor a line end,
# each escape a backslash and any byte but a line end. Written unrolled (a run, then
# escape-and-run repeated) so the regex engine scans plain text in one tight loop instead
# of trying two branches per byte; the language is that of `"(?:[^"\\\n]|\\.)*"`.
LITERAL: Final = rb'"[^"\\\n]*(?:\\.[^"\\\n]*)*"'

# Groups: 1 the block index (digits), 2 the delta kind (one of the three below, as it
# appears between `"type":"` and `":`), 3 the value's JSON string literal, quotes included.
DELTA: Final = re.compile(
    rb'event: content_block_delta\ndata: \{"type":"content_block_delta","index":(\d+),'
    rb'"delta":\{"type":"(text_delta","text|thinking_delta","thinking|input_json_delta",'
    rb'"partial_json)":(' + LITERAL + rb")\}\}\Z"
)
TEXT: Final = b'text_delta","text'
THINKING: Final = b'thinking_delta","thinking'
TOOL_INPUT: Final = b'input_json_delta","partial_json'
