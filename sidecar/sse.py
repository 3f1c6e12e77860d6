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
_BOM: Final = b"\xef\xbb\xbf"  # UTF-8's byte order mark: one at a stream's start is not text
# The longest upstream event the scanner keeps while waiting for its end. Claude streams
# its output as deltas of a few tokens each; only whole-block events (a server tool's
# result in `content_block_start`) are larger, and every block a client receives is one
# it sends back in its next request, which the Messages API caps at 32 MB. An event
# still open past this is a broken upstream (or a proxy in front of it), not Claude.
MAX_EVENT_BYTES: Final = 32 * 1024 * 1024


class EventTooLarge(ValueError):
    """An upstream event grew past the scanner's limit without ending."""

    def __init__(self, limit: int) -> None:
        super().__init__(f"an event of Claude's stream exceeded {limit} bytes without ending")
        self.limit = limit


def _normalise(data: bytes) -> bytes:
    """Fold `\\r\\n` and lone `\\r` line ends into `\\n` (SSE allows all three)."""
    return data.replace(b"\r\n", b"\n").replace(b"\r", b"\n")


class EventScanner:
    """Splits a byte stream into complete SSE event blocks (without the blank line).

    `feed` returns the blocks completed by a chunk. Lines are normalised to `\\n`
    only when a `\\r` is present, so the common case does no copying beyond the split.
    A byte order mark before the first event is dropped, as an `EventSource` drops it
    (else the first event's first field name would carry it). Each read is searched
    once: an event longer than two reads costs its length, not its length per read.

    An event kept across reads longer than `limit` bytes raises `EventTooLarge` (its
    reads are let go; `pending` still says an event was open). Only an event that spans
    reads is measured: one that ends in the read it started in costs no check.
    """

    __slots__ = ("_carry", "_cr", "_head", "_limit", "_more", "_size")

    def __init__(self, limit: int = MAX_EVENT_BYTES) -> None:
        self._carry = b""  # the start of an event not yet terminated
        # Its later reads, kept apart until its end arrives (None: none yet).
        self._more: list[bytes] | None = None
        self._size = 0  # bytes of the carry and its later reads, while there are some
        self._limit = limit
        self._cr = False  # a \r was seen: normalise every later buffer too
        # What the next read may start with that is not the stream's text: a byte order
        # mark before the first event, a \n after a read that ended in \r (that pair's end).
        self._head = _BOM

    def feed(self, chunk: bytes) -> list[bytes]:
        if self._head:
            chunk = self._drop_head(chunk)
            if not chunk:
                return []
        # `find`, not `in`: a bytes `in` tries the needle as an int first (raising and
        # clearing a TypeError inside) before it searches.
        if self._cr or chunk.find(b"\r") >= 0:
            self._cr = True
            # A \r ends a line whether or not a \n follows in the next read.
            if chunk.endswith(b"\r"):
                self._head = b"\n"
            chunk = _normalise(chunk)
        if self._carry:
            chunk = self._join(chunk)
            if not chunk:  # the carried event goes on
                return []
        end = len(chunk) - 2
        if chunk.find(_SEP) == end >= 0:
            # The common case: one whole event per read (its first blank line ends it).
            self._carry = b""
            return [chunk[:end]] if end else []
        blocks = chunk.split(_SEP)
        self._carry = blocks.pop()
        return [block for block in blocks if block]

    def _drop_head(self, chunk: bytes) -> bytes:
        """`chunk` without what `_head` says the stream's text does not start with."""
        if self._head is _BOM:  # the stream's first read (the carry: a mark's first bytes)
            if self._carry:
                chunk = self._carry + chunk
                self._carry = b""
            if len(chunk) < len(_BOM) and _BOM.startswith(chunk):
                self._carry = chunk  # perhaps the mark, split across reads: wait for the rest
                return b""
            self._head = b""
            return chunk[len(_BOM) :] if chunk.startswith(_BOM) else chunk
        if chunk:  # an empty read is not the next one
            self._head = b""
            if chunk[:1] == b"\n":
                return chunk[1:]
        return chunk

    def _join(self, chunk: bytes) -> bytes:
        """The carried event and `chunk`, once `chunk` ends it (else b"": kept aside)."""
        more = self._more
        if chunk.find(_SEP) < 0 and (chunk[:1] != b"\n" or self._last_byte() != b"\n"):
            if chunk:
                if more is None:
                    self._more = [chunk]
                    self._size = len(self._carry) + len(chunk)
                else:
                    more.append(chunk)
                    self._size += len(chunk)
                if self._size > self._limit:
                    self._more = None  # let go; the carry stays: an event is still open
                    raise EventTooLarge(self._limit)
            return b""
        if more is None:
            return self._carry + chunk
        self._more = None
        more.append(chunk)
        return self._carry + b"".join(more)

    def _last_byte(self) -> bytes:
        more = self._more
        return (more[-1] if more else self._carry)[-1:]

    def ends_with_event(self, chunk: bytes, first_line: bytes) -> bool:
        """Whether `chunk`, fed next, ends with a whole event whose first line is
        `first_line` (which ends in `\\n`): that event is then the last block `feed`
        returns, and nothing is left pending.

        A look without the scan, and a cautious one: any `\\r`, a byte order mark, an
        event split across reads, or a run of blank lines before the event answers False.
        """
        head = self._head
        if head and (head is not _BOM or self._carry or chunk[:1] == _BOM[:1]):
            return False
        if self._cr or not chunk.endswith(_SEP):
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
            before = chunk[start - 3 : start - 2] if start > 2 else self._last_byte()
            if before == b"\n":
                return False  # three or more line ends: the scan's split may differ
        return chunk.startswith(first_line, start)

    @property
    def in_event(self) -> bool:
        """An event has started and not ended (`pending` without joining its reads)."""
        return bool(self._carry)

    @property
    def pending(self) -> bytes:
        """Bytes of an event not yet terminated (a stream cut short ends here)."""
        more = self._more
        return self._carry if more is None else self._carry + b"".join(more)


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
