"""Server-Sent Events framing and scanning: bytes in, event blocks out.

Knows nothing of policy or telemetry. The relay forwards upstream bytes untouched
and feeds the same bytes here only to find event boundaries; a scanner keeps just
the tail of an event split across reads, so work per event is O(event size).
"""

from __future__ import annotations

import json
from typing import Any, Final

import orjson

CONTENT_TYPE: Final = "text/event-stream; charset=utf-8"
HEADERS: Final[dict[str, str]] = {
    "Content-Type": CONTENT_TYPE,
    "Cache-Control": "no-cache",
    "X-Accel-Buffering": "no",
}
PING: Final = b": ping\n\n"

_SEP: Final = b"\n\n"


def _normalise(data: bytes) -> bytes:
    """Fold `\\r\\n` and lone `\\r` line ends into `\\n` (SSE allows all three)."""
    return data.replace(b"\r\n", b"\n").replace(b"\r", b"\n")


class EventScanner:
    """Splits a byte stream into complete SSE event blocks (without the blank line).

    `feed` returns the blocks completed by a chunk. Lines are normalised to `\\n`
    only when a `\\r` is present, so the common case does no copying beyond the split.
    """

    __slots__ = ("_carry", "_cr", "_skip_lf")

    def __init__(self) -> None:
        self._carry = b""
        self._cr = False  # a \r was seen: normalise every later buffer too
        self._skip_lf = False  # the last read ended in \r: a leading \n completes that pair

    def feed(self, chunk: bytes) -> list[bytes]:
        if self._skip_lf:
            self._skip_lf = False
            chunk = chunk[1:] if chunk[:1] == b"\n" else chunk
        if self._carry:
            chunk = self._carry + chunk
        # `find`, not `in`: a bytes `in` tries the needle as an int first (raising and
        # clearing a TypeError inside) before it searches.
        if self._cr or chunk.find(b"\r") >= 0:
            self._cr = True
            # A \r ends a line whether or not a \n follows in the next read.
            self._skip_lf = chunk.endswith(b"\r")
            chunk = _normalise(chunk)
        end = len(chunk) - 2
        if chunk.find(_SEP) == end >= 0:
            # The common case: one whole event per read (its first blank line ends it).
            self._carry = b""
            return [chunk[:end]] if end else []
        blocks = chunk.split(_SEP)
        self._carry = blocks.pop()
        return [block for block in blocks if block]

    def ends_with_event(self, chunk: bytes, first_line: bytes) -> bool:
        """Whether `chunk`, fed next, ends with a whole event whose first line is
        `first_line` (which ends in `\\n`): that event is then the last block `feed`
        returns, and nothing is left pending.

        A look without the scan, and a cautious one: any `\\r`, an event split across
        reads, or a run of blank lines before the event answers False.
        """
        if self._cr or self._skip_lf or not chunk.endswith(_SEP):
            return False
        end = len(chunk) - 2
        if chunk[end - 1 : end] == b"\n" or chunk.find(b"\r") >= 0:
            return False  # more blank lines at the end, or line ends to normalise
        start = chunk.rfind(_SEP, 0, end)
        if start < 0:  # the chunk is the event: it must start one
            if self._carry:
                return False
            start = 0
        else:
            start += 2
            before = chunk[start - 3 : start - 2] if start > 2 else self._carry[-1:]
            if before == b"\n":
                return False  # three or more line ends: the scan's split may differ
        return chunk.startswith(first_line, start)

    @property
    def pending(self) -> bytes:
        """Bytes of an event not yet terminated (a stream cut short ends here)."""
        return self._carry


def parse_block(block: bytes) -> tuple[bytes, bytes]:
    """(event name, data) of one normalised event block; data lines joined by `\\n`."""
    name = b"message"
    data: list[bytes] = []
    for line in block.split(b"\n"):
        if not line or line[0] == 0x3A:  # ':' comment
            continue
        field, _, value = line.partition(b":")
        if value[:1] == b" ":
            value = value[1:]
        if field == b"event":
            name = value
        elif field == b"data":
            data.append(value)
    return name, b"\n".join(data)


def event_name(block: bytes) -> bytes:
    """The `event:` name of a block, cheaply when it is the first line (Anthropic's shape)."""
    if block.startswith(b"event: "):
        end = block.find(b"\n")
        return block[7:end] if end >= 0 else block[7:]
    return parse_block(block)[0]


def json_object(data: bytes) -> dict[str, Any]:
    """A JSON object from an event's data (orjson: strict JSON, UTF-8); {} for anything
    else, invalid text included (never raises)."""
    try:
        value = orjson.loads(data)
    except orjson.JSONDecodeError:
        return {}
    return value if isinstance(value, dict) else {}


def encode(data: object, *, event: str | None = None, event_id: int | None = None) -> bytes:
    """One SSE event with a JSON `data:` line."""
    head = b""
    if event_id is not None:
        head += b"id: %d\n" % event_id
    if event is not None:
        head += b"event: " + event.encode() + b"\n"
    return head + b"data: " + json.dumps(data, separators=(",", ":")).encode() + b"\n\n"
