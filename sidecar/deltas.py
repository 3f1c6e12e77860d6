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

# A byte of a string literal that is neither a quote, a backslash nor a line end
# (`[^"\\\n]`), and the byte after a backslash: any but a line end (`.`). Spelled as byte
# ranges, which the regex engine tests against one bitmap per byte.
_PLAIN: Final = rb"[\x00-\x09\x0b-\x21\x23-\x5b\x5d-\xff]"
_ESCAPED: Final = rb"[\x00-\x09\x0b-\xff]"

# The string literal: runs of plain bytes, each escape a backslash and any byte but a line
# end. Written unrolled (a run, then escape-and-run repeated) so the regex engine scans plain
# text in one tight loop instead of trying two branches per byte; the language is that of
# `"(?:[^"\\\n]|\\.)*"`.
LITERAL: Final = rb'"' + _PLAIN + rb"*(?:\\" + _ESCAPED + _PLAIN + rb'*)*"'

# Groups: 1 the block index (digits), then the value's JSON string literal (quotes
# included) in the group of its kind: 2 a text delta's `text` (the common one, read first),
# 3 a thinking delta's `thinking`, 4 a tool input delta's `partial_json`. The other two
# are None, so one group read both names the kind and gives the value.
DELTA: Final = re.compile(
    rb'event: content_block_delta\ndata: \{"type":"content_block_delta","index":(\d+),'
    rb'"delta":\{"type":"(?:text_delta","text":(' + LITERAL + rb')|thinking_delta",'
    rb'"thinking":(' + LITERAL + rb')|input_json_delta","partial_json":(' + LITERAL + rb"))"
    rb"\}\}\Z"
)
INDEX: Final = 1  # the block index's group
TEXT: Final = 2  # the group of each kind's value
THINKING: Final = 3
TOOL_INPUT: Final = 4
